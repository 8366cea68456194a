"""Motion frames (EMO §3.2) and the clip-by-clip sampler built on them (EMO, Hallo).

A video is made clip after clip, f frames each. The last n frames of a clip are the next clip's motion frames: their
pixels (still on the device after decoding) are encoded by the VAE, the latents go through ReferenceNet once per clip,
and those features are put in front of the clip's frames in every temporal module of the backbone (and dropped after
it), so each clip continues the previous one. The first clip's motion frames are the reference latent repeated (or
zeros, as the checkpoint says).

Hallo2's motion-frame pixel drop (`motion_drop`, scripts/inference_long.py l.404-418): before each clip, the first
included, a fraction of the motion frames' pixels outside the face box is set to 0 (mid-grey in -1..1) before the VAE
encodes them: one mask of H x W pixels for all motion frames and channels, `rand(H, W) > drop` OR the face box, drawn
from the run's seeded generator right before the clip's initial noise (the original's order; drawing it after the
noise changes every clip). The first clip's motion frames are then the masked reference pixels, encoded.
"""
import math
from typing import Callable, Iterator

import torch
from einops import rearrange

from ..errors import EMOInputError
from .conditions import ConditionCache
from .guidance import GuidedDDIM, SampleProgress
from .vae import VAECodec


class MotionFrames:
    """The n motion frames of the clip being made: latents (n 4 h w) and their ReferenceNet features; with a pixel
    drop (Hallo2) also their pixels (n 3 H W, -1..1), masked and encoded anew for each clip (`prepare`)."""

    def __init__(self, model, cache: ConditionCache, vae: VAECodec, n: int, latents: torch.Tensor | None = None,
                 drop: float = 0.0):
        """latents: the first clip's motion latents (n 4 h w); by default what the checkpoint's sampler uses.
        drop: the motion-frame pixel drop (0 = off; see the module's docstring)."""
        self.model, self.cache, self.vae, self.n, self.drop = model, cache, vae, n, float(drop)
        ref, s = cache.ref, model.config.latent_size
        self.pixels = None
        if latents is not None:
            self.latents = latents.to(model.device, model.dtype)
        elif model.config.first_clip_motion == "reference":
            self.latents = ref.latent.to(model.device, model.dtype).expand(n, -1, -1, -1)
            if self.drop > 0:
                if ref.pixels is None:
                    raise EMOInputError("the motion-frame pixel drop needs the reference's pixels, and this encoded "
                                        "reference has none: encode the reference again (EMO Reference Encode), or "
                                        "set motion_drop to 0")
                self.pixels = ref.pixels.to(model.device, model.dtype).expand(n, -1, -1, -1)
        else:
            self.latents = torch.zeros(n, 4, s, s, device=model.device, dtype=model.dtype)

    def update(self, tail: torch.Tensor) -> None:
        """The decoded last frames of a clip, pixels (k 3 H W) in -1..1 on the device, become the next clip's motion
        frames; a clip shorter than n frames repeats its first frame in front. With a pixel drop they are encoded by
        `prepare`, masked, when the next clip starts."""
        if tail.shape[0] < self.n:
            tail = torch.cat([tail[:1].expand(self.n - tail.shape[0], -1, -1, -1), tail])
        if self.drop > 0:
            self.pixels = tail
        else:
            self.latents = self.vae.encode(tail)

    def prepare(self, gen: torch.Generator) -> None:
        """At the start of a clip, before its noise: with a pixel drop, draws the clip's mask from `gen` (the CPU
        generator of the run) and encodes the masked motion pixels. Without one (or without pixels) nothing."""
        if self.drop <= 0 or self.pixels is None:
            return
        h, w = self.pixels.shape[-2:]
        keep = torch.rand(h, w, generator=gen) > self.drop  # (H W), as `torch.rand(h, w) > mask_rate`
        face = self.cache.ref.locator_mask[0, :, 0]  # (c H W) the face box, the face locator's input
        if face.shape[-2:] != (h, w):
            raise EMOInputError(f"the reference's face box is {tuple(face.shape[-2:])} pixels but the motion frames "
                                f"are {(h, w)}: encode the reference again with this model")
        keep = keep | (face > 0)  # Hallo2: `mask | face_region.bool()`, per channel
        self.latents = self.vae.encode(self.pixels * keep.to(self.pixels.device, self.pixels.dtype))

    def features(self) -> dict:
        """ReferenceNet features of the motion latents for each guidance pass: {path: [B, n, L, C]}. Passes with
        the reference and (with Hallo's row tiling) passes without it see the latents with different identity
        tokens: rows n+2 ... 2n+1 and 1 ... n of Hallo's ReferenceNet batch."""
        n, passes = self.n, self.cache.passes
        variants = [True] + ([False] if any(not p.ref for p, _ in passes) else [])
        if not self.model.config.hallo_identity_tiling:
            variants = variants[:1]
        rows = {v: [(n + 1 + j + 1) if v else (j + 1) for j in range(n)] for v in variants}
        tokens = None
        if self.model.identity_projection is not None:
            tokens = torch.cat([self.cache.row_tokens(rows[v]) for v in variants])
        bank = self.model.reference_net(torch.cat([self.latents] * len(variants)), tokens)
        out = {}
        for path, feats in bank.items():
            by_variant = dict(zip(variants, feats.split(n)))
            out[path] = torch.stack([by_variant.get(p.ref, by_variant[True]) for p, _ in passes])
        return out


def sample_clips(model, vae: VAECodec, cache: ConditionCache, tokens: Callable, num_frames: int, settings,
                 callback: Callable[[SampleProgress], None] | None = None) -> Iterator[torch.Tensor]:
    """The clip-by-clip sampler: yields decoded clips (f H W 3) float 0..1 on the CPU, num_frames frames in all.
    tokens(start, end): the audio tokens of video frames start..end-1 on the device; settings: `SampleSettings`."""
    f, n = settings.frames_per_clip, settings.motion_frames
    num_clips = math.ceil(num_frames / f)
    ddim = GuidedDDIM(model, list(settings.passes), settings.steps)
    total = num_clips * len(ddim)
    gen = torch.Generator("cpu").manual_seed(settings.seed)
    cache.reference_bank(n)  # the reference through ReferenceNet once, before the first clip
    motion = MotionFrames(model, cache, vae, n, drop=settings.motion_drop) if n > 0 else None
    for k in range(num_clips):
        if motion is not None:
            motion.prepare(gen)  # Hallo2: the clip's pixel drop, drawn before its noise
        conditions = cache.clip(tokens(k * f, (k + 1) * f), n, motion.features() if motion else None,
                                settings.region_weights)

        def on_step(i, latents, k=k):
            if callback is not None:
                callback(SampleProgress(k * len(ddim) + i, total, k, num_clips, latents))
        latents = ddim.denoise(ddim.initial_latents(f, gen), conditions, on_step)
        frames, tail = vae.decode(rearrange(latents, "1 c f h w -> f c h w"), keep_last=n)
        if motion is not None:
            motion.update(tail)
        yield frames[: max(0, min(f, num_frames - k * f))]
