"""The backbone's conditions for each clip (or window) of a sampling run, and what they share.

A `ConditionCache` belongs to one sampling run of one model on one encoded reference: `EMOPipeline.sample` makes it
(or `EMOPipeline.conditions`, for a caller that drives the backbone itself) and drops it when the run ends. It holds
what every clip, window and step share, made on first use on the model's device: the reference's ReferenceNet
features and their projected keys/values, the face-locator features, Hallo's identity tokens and row tables, the
region masks. Nothing is stored in the caller's `EncodedReference`, and nothing outlives the run: a reference sampled
with a second model gets that model's features, and an unloaded model leaves no tensors behind.
"""
import torch
from einops import rearrange

from ..models.backbone import BackboneConditions
from .guidance import Pass
from .reference import EncodedReference


class ConditionCache:
    def __init__(self, model, ref: EncodedReference, passes: list[tuple[Pass, float]], speed: float | None = None,
                 offload_idle: bool = False):
        """passes: from `guidance_passes` (those without the reference first); speed: the head-motion speed for
        models with speed layers (None: the checkpoint's default); offload_idle: see `EMOPipeline`."""
        ref_rows = [p.ref for p, _ in passes]
        if ref_rows != sorted(ref_rows):
            raise ValueError("guidance passes without the reference must come first")
        self.model, self.ref, self.passes, self.offload_idle = model, ref, passes, offload_idle
        self.speed_value = model.config.speed_value if speed is None else float(speed)
        self.device, self.dtype = model.device, model.dtype
        self._made: dict = {}

    def _once(self, key, make):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    # ------------------------------------------------------------------ identity tokens (Hallo)
    def identity_tokens(self, cond: bool) -> torch.Tensor | None:
        """Identity tokens [1, T, D] of the reference's face embedding (cond) or of the zero embedding, or None
        without an identity projection. Hallo without a face embedding uses the zero embedding's for both."""
        proj = self.model.identity_projection
        if proj is None:
            return None

        def make():
            emb = self.ref.identity_embedding
            if not cond or emb is None:
                emb = torch.zeros(1, proj.embed_dim)
            return proj(emb.to(self.device, self.dtype))
        return self._once(("identity", cond), make)

    def row_tokens(self, rows: list[int]) -> torch.Tensor | None:
        """Identity tokens for ReferenceNet rows [len(rows), T, D]; Hallo tiles [uncond, cond] over its rows (odd rows
        conditional; see hallo-tiny's README)."""
        if self.model.identity_projection is None:
            return None
        cond, uncond = self.identity_tokens(True), self.identity_tokens(False)
        if not self.model.config.hallo_identity_tiling:
            return cond.expand(len(rows), -1, -1)
        return torch.cat([cond if r % 2 else uncond for r in rows])

    # ------------------------------------------------------------------ reference
    def reference_bank(self, n_motion: int) -> dict:
        """ReferenceNet features of the reference, once per run: {path: [R, L, C]}. With Hallo's row tiling R = 2:
        the reference seen with the uncond tokens (row 0) and with row n+1's tokens (n = motion frames)."""
        def make():
            self.model.reference_net.to(self.device)  # a no-op unless offloaded
            latent = self.ref.latent.to(self.device, self.dtype)
            rows = [0, n_motion + 1] if self.model.config.hallo_identity_tiling else [n_motion + 1]
            bank = self.model.reference_net(latent.expand(len(rows), -1, -1, -1), self.row_tokens(rows))
            if self.offload_idle and n_motion == 0:  # no motion frames will need ReferenceNet again
                self.model.reference_net.to("cpu")
            return bank
        return self._once(("bank", n_motion), make)

    def reference_kv(self, n_motion: int) -> dict:
        """The reference features' keys and values under the backbone's self-attention projections, once per run:
        {path: (k, v)} (`Backbone.reference_kv`)."""
        return self._once(("kv", n_motion), lambda: self.model.backbone.reference_kv(self.reference_bank(n_motion)))

    def ref_index(self, f: int) -> torch.Tensor | None:
        """Which reference row each backbone row that sees the reference attends to: None (one row for all), or
        with Hallo's row tiling a LongTensor [(B_ref f)]. Hallo's read hook tiles its two CFG rows over the (B f)
        rows, so frame j sees bank row (f + j) % 2 (verified against the original code): the conditional half's
        even frames see the reference with the unconditional identity tokens."""
        if not self.model.config.hallo_identity_tiling:
            return None
        n_ref = sum(p.ref for p, _ in self.passes)
        return self._once(("ref_index", f), lambda: torch.tensor([(f + j) % 2 for j in range(f)] * n_ref).to(self.device))

    # ------------------------------------------------------------------ face locator
    def face_features(self, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Face-locator features [1, C, 1 or f, h, w]: of the static face mask (once per run), or, for per-frame
        drawings (EchoMimic's pose sets: `ref.locator_mask` uint8 [1, c, L, H, W]), of the video frames `frames`."""
        mask = self.ref.locator_mask
        if mask.dtype == torch.uint8:  # on the device once per run (0.75 MB a frame at 512²), made float per window
            src = self._once("pose", lambda: mask.to(self.device))
            sel = src[:, :, frames.to(src.device)] if frames is not None else src
            return self.model.face_locator(sel.to(self.dtype) / 255)
        return self._once("face", lambda: self.model.face_locator(mask.to(self.device, self.dtype)))

    def face_rows(self, f: int, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Face-locator features per backbone row [(B f), C, h, w] (zeros for passes without the face). A static
        mask gives the same rows for every clip or window of f frames: made once per run."""
        def make():
            feats = self.face_features(frames).expand(-1, -1, f, -1, -1)  # [1, C, f, h, w]
            face = torch.cat([feats if p.face else torch.zeros_like(feats) for p, _ in self.passes])
            return rearrange(face, "b c f h w -> (b f) c h w")
        if self.ref.locator_mask.dtype == torch.uint8:
            return make()
        return self._once(("face_rows", f), make)

    # ------------------------------------------------------------------ speed layers, region masks
    def speed(self, f: int) -> torch.Tensor | None:
        """Speed features [B, f, l] ([B, f, t, l] with phase buckets) of a clip or window of f frames at the run's
        speed (0 deg/frame for the still pass of speed guidance), or None without speed layers."""
        enc = self.model.speed_encoder
        if enc is None:
            return None
        def feats(value):
            return self._once(("speed", f, value), lambda: enc(torch.full((1, f), value, device=self.device)))
        if not any(p.still for p, _ in self.passes):
            one = feats(self.speed_value)
            return one.expand(len(self.passes), *one.shape[1:])
        return torch.cat([feats(0.0 if p.still else self.speed_value) for p, _ in self.passes])

    def masks(self) -> list | None:
        """Hallo's region masks (full, face, lip) x 4 levels on the device, or None."""
        if self.ref.masks is None:
            return None
        return self._once("masks", lambda: [[m.to(self.device, self.dtype) for m in levels]
                                            for levels in self.ref.masks])

    # ------------------------------------------------------------------ one clip
    def clip(self, tokens: torch.Tensor, n_motion: int = 0, motion: dict | None = None,
             region_weights=(1.0, 1.0, 1.0), frames: torch.Tensor | None = None) -> BackboneConditions:
        """The backbone's conditions for one clip or window of f frames, all passes batched.

        tokens: [f, T, D] the frames' audio tokens on the device; n_motion: motion frames of the run (which
        ReferenceNet rows Hallo tiles); motion: {path: [B, n, L, C]} motion-frame features (`MotionFrames.features`)
        or None; region_weights: (full, face, lip) audio weights (Hallo); frames: the frames' video-frame indices
        [f] (per-frame locator drawings only)."""
        cfg = self.model.config
        f = tokens.shape[0]
        zeros = torch.zeros_like(tokens)
        audio_rows = torch.cat([tokens if p.audio else zeros for p, _ in self.passes])  # [(B f), T, D]
        cross = None
        if cfg.cross_attention == "identity":
            cross = torch.cat([self.identity_tokens(p.cond_identity).expand(f, -1, -1) for p, _ in self.passes])
        elif cfg.cross_attention == "audio":
            cross = audio_rows
        return BackboneConditions(
            tokens=cross, ref_rows=[p.ref for p, _ in self.passes], ref_bank=self.reference_bank(n_motion),
            ref_index=self.ref_index(f), ref_kv=self.reference_kv(n_motion), motion=motion, audio=audio_rows if cfg.audio_attention else None,
            masks=self.masks(), region_weights=tuple(region_weights), face=self.face_rows(f, frames),
            speed=self.speed(f), frames=f)
