"""EMOPipeline: audio + reference -> video frames, clip by clip.

Flow: the whole track is encoded once (`encode_audio`), the reference once (`encode_reference`: VAE latent,
face-locator mask, ReferenceNet features computed on first use), then `sample` denoises clips of f frames with DDIM
(the checkpoint's schedule) and yields each clip's decoded frames as soon as it is done. In "motion_frames" mode
(EMO, Hallo) the last n frames of a clip go through ReferenceNet and join the next clip's temporal layers; in
"context_windows" mode (EchoMimic) the whole video is denoised at once with overlapping, shifting windows.

Guidance, with s_r the reference scale and s_a the audio scale, over three passes (uncond: no reference, no audio,
no face locator; ref: reference without audio; full: everything):
    out = uncond + s_r (ref - uncond) + s_a (full - ref) = (1 - s_r) uncond + (s_r - s_a) ref + s_a full
A pass whose weight is zero is not run: s_r = s_a = 1 runs one pass; s_r = 1 skips uncond; s_r = s_a (Hallo's and
EchoMimic's single scale) skips ref. All passes of a step go through the backbone as one batch.
"""
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from einops import rearrange

from ..audio.wav2vec2 import Wav2VecAudioEncoder
from ..media.audio import count_frames, fps_fraction, mix_and_resample
from ..models.backbone import BackboneContext
from ..errors import EMOInputError
from ..models.model import EMOModel
from ..faces.region_masks import region_masks


@dataclass
class EncodedAudio:
    """What the sampler needs of a track, on the CPU: either `stored` = audio tokens per video frame [F_pad, T, D]
    (F_pad >= num_frames, padded to whole clips; EchoMimic's whisper chunks), or `features` = the audio encoder's
    features per video frame [F_feat, L, C] (wav2vec2, all layers), windowed +-`window` frames and projected to
    tokens clip by clip by the pipeline (`EMOPipeline.audio_tokens`): 12 x 768 values per frame instead of Hallo's
    32 x 768 tokens, ~2.7x less memory for a long track. Holds no reference to the model."""
    stored: torch.Tensor | None
    num_frames: int
    fps: Fraction
    waveform: torch.Tensor      # [channels, samples] as given (for muxing)
    sample_rate: int
    features: torch.Tensor | None = None
    padded_frames: int = 0      # F_pad when `features` are kept
    window: int = 2             # m: frame i's tokens see features i-m .. i+m

    @property
    def duration(self) -> float:
        return self.waveform.shape[-1] / self.sample_rate

    @property
    def length(self) -> int:
        """F_pad: frames with tokens (num_frames padded to whole clips in motion-frames mode)."""
        return self.stored.shape[0] if self.features is None else self.padded_frames


@dataclass
class EncodedReference:
    """The reference crop and everything derived from it. image: [1, 3, H, W] in -1..1; latent: [1, 4, h, w]
    (scaled); locator_mask: [1, c, 1, H, W] in 0..1; masks: Hallo's region masks or None."""
    image: torch.Tensor
    latent: torch.Tensor
    locator_mask: torch.Tensor
    masks: list | None = None
    identity_embedding: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False)


@dataclass
class SampleProgress:
    step: int               # 1-based, counted over all clips
    total_steps: int
    clip: int               # 0-based
    num_clips: int
    latents: torch.Tensor   # [1, 4, f, h, w] current latents of the clip (or window set)


@dataclass
class _Pass:
    ref: bool
    audio: bool
    face: bool
    cond_identity: bool


FULL, REF_ONLY, UNCOND = _Pass(True, True, True, True), _Pass(True, False, True, True), _Pass(False, False, False, False)


def guidance_passes(audio_cfg: float, ref_cfg: float) -> list[tuple[_Pass, float]]:
    """The passes to run and their weights (see the module docstring)."""
    weights = [(UNCOND, 1.0 - ref_cfg), (REF_ONLY, ref_cfg - audio_cfg), (FULL, audio_cfg)]
    return [(p, w) for p, w in weights if p is FULL or abs(w) > 1e-8]


class EMOPipeline:
    def __init__(self, model: EMOModel, offload_idle: bool = False):
        """offload_idle: keep modules that are idle during sampling in host memory (the audio encoder outside
        `encode_audio`; ReferenceNet once the reference's features are made, when no motion frames need it), to
        lower peak VRAM. For callers that manage devices themselves (ComfyUI does) leave it off."""
        self.model = model
        self.config = model.config
        self.offload_idle = offload_idle
        self._cache = {}  # small per-pipeline tensors (index tables)

    @property
    def device(self):
        return self.model.device

    @property
    def dtype(self):
        return self.model.dtype

    # ------------------------------------------------------------------ audio
    @torch.no_grad()
    def encode_audio(self, waveform, sample_rate: int, fps, frames_per_clip: int | None = None) -> EncodedAudio:
        """waveform: [channels, samples] (or [samples]) float in -1..1, any rate; fps: video frame rate (29.97 ok).
        The whole track is encoded once; frame count = ceil(duration x fps)."""
        cfg = self.config
        if self.model.audio_encoder is None:
            raise EMOInputError("this model has no audio encoder loaded: put the audio encoder folder beside the model "
                                "(see README, 'Where model files go')")
        waveform = torch.as_tensor(waveform, dtype=torch.float32)
        if waveform.ndim == 1:
            waveform = waveform[None]
        fps_q = fps_fraction(fps)
        num_frames = count_frames(waveform.shape[-1], sample_rate, fps_q)
        f = frames_per_clip or cfg.frames_per_clip
        wave16 = mix_and_resample(waveform, sample_rate, 16000)
        enc = self.model.audio_encoder
        if self.offload_idle:
            enc.to(self.device)
        try:
            out = self._audio_features(enc, wave16, fps_q, num_frames, f)
        finally:
            if self.offload_idle:
                enc.to("cpu")
        n_pad = math.ceil(num_frames / f) * f if cfg.temporal_mode == "motion_frames" else num_frames
        n_pad = max(n_pad, num_frames)
        if cfg.audio_encoder["kind"] == "whisper":
            return EncodedAudio(out.to(self.dtype), num_frames, fps_q, waveform, sample_rate)
        return EncodedAudio(None, num_frames, fps_q, waveform, sample_rate, out.to(self.dtype), n_pad,
                            cfg.audio_encoder.get("window", 2))

    @torch.no_grad()
    def audio_tokens(self, audio: EncodedAudio, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Audio tokens of video frames start..end-1 (default: all F_pad), [end - start, T, D] on the model's
        device; frames past the encoded ones repeat the last. Kept features are windowed and projected here."""
        end = audio.length if end is None else end
        self._check_audio(audio)
        if audio.features is None:
            t = audio.stored[start:end].to(self.device, self.dtype)
        else:
            out = []
            n = audio.features.shape[0]
            for a in range(start, end, 256):  # in pieces: a whole track's tokens at once could be large
                b = min(a + 256, end)
                s0, e0 = min(a, n - 1), min(max(b, a + 1), n)
                win = Wav2VecAudioEncoder.window(audio.features, audio.window, s0, e0)  # [b - a, 2m+1, L, C]
                t = self.model.audio_projection(win.to(self.device, self.dtype))
                out.append(t[(torch.arange(a, b).clamp(max=n - 1) - s0).to(t.device)])
            t = torch.cat(out)
        if t.shape[0] < end - start:
            t = torch.cat([t, t[-1:].expand(end - start - t.shape[0], -1, -1)])
        return t

    def _check_audio(self, audio: EncodedAudio) -> None:
        """An encoded track made with another kind of model gets a clear error, not a shape error in the UNet."""
        cfg = self.config
        proj = cfg.audio_projection
        if audio.features is not None:
            ok = proj is not None and tuple(audio.features.shape[1:]) == (proj["blocks"], proj["channels"])
        else:
            width = (cfg.audio_attention or {}).get("audio_dim") or cfg.unet.get("cross_attention_dim")
            ok = proj is None and audio.stored.shape[-1] == width
        if not ok:
            raise EMOInputError("the encoded audio was made with a different kind of model (its audio features do not "
                                "fit this one): encode the audio again with the model you sample with (connect EMO "
                                "Audio Encode to the same Load EMO Models)")

    def _audio_features(self, enc, wave16, fps_q, num_frames, f):
        """16 kHz mono [samples] -> whisper tokens [>= num_frames, 50, 384], or wav2vec features [F, L, C] at the
        video rate (F padded as the model's audio settings say), on the CPU."""
        cfg = self.config
        if cfg.audio_encoder["kind"] == "whisper":
            return enc.chunks(enc.features(wave16), float(fps_q), num_frames)
        else:
            enc_fps = fps_fraction(cfg.audio_encoder.get("fps") or fps_q)
            pad = f if cfg.audio_encoder.get("pad_to_clip") else 1
            if enc_fps == fps_q:
                feats = enc.encode(wave16, fps_q, pad_multiple=pad)
            else:  # encode at the rate the model was trained with, then resample features to the video rate
                feats = enc.encode(wave16, enc_fps)
                n_out = math.ceil(num_frames / pad) * pad
                feats = F.interpolate(rearrange(feats, "f l c -> 1 (l c) f"), size=n_out, mode="linear",
                                      align_corners=True)
                feats = rearrange(feats, "1 (l c) f -> f l c", l=enc.num_layers)
            return feats

    # ------------------------------------------------------------------ reference
    @torch.no_grad()
    def encode_reference(self, image, face_mask, identity_embedding=None, locator_frames=None,
                         mouth=None) -> EncodedReference:
        """image: [H, W, 3] float 0..1 (the square face crop; resized to the model's resolution if needed);
        face_mask: [H, W] 0..1, the face-region box (union over the clip). identity_embedding: [512] face embedding
        for Hallo's identity tokens, or None (Hallo then uses a zero embedding, as its own script does without a face).
        locator_frames: [L, H, W, 3] float 0..1, one drawing per video frame for a face locator driven by pose
        images (EchoMimic's `_pose` sets; `pose_frames.load_pose_frames` reads them); frame i drives video frame i.
        mouth: ((x, y), (x, y)) mouth corners in `face_mask` pixels (`CropInfo.mouth`), to place Hallo's lip region."""
        res = self.config.resolution
        pose = self.config.locator_input == "pose"
        if pose and locator_frames is None:
            raise EMOInputError("this is EchoMimic's pose-driven model: it needs pose frames (EchoMimic's pose folder "
                                "of per-frame landmark .pkl files, or a video / IMAGE batch of drawn landmarks). Give "
                                "them, or load the audio-driven files (denoising_unet.pth ...) instead")
        if not pose and locator_frames is not None:
            raise EMOInputError("pose frames were given, but this model's face locator takes the face box, not pose "
                                "drawings: remove them, or load EchoMimic's _pose files")
        image = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image, dtype=torch.float32)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise EMOInputError(f"the reference must be an RGB image [H, W, 3], got shape {tuple(image.shape)}")
        if image.max() > 1.5:
            image = image / 255.0
        mask = torch.as_tensor(np.asarray(face_mask) if not torch.is_tensor(face_mask) else face_mask, dtype=torch.float32)
        if mask.ndim != 2:
            raise EMOInputError(f"the face mask must be [H, W], got shape {tuple(mask.shape)}")
        if mask.max() <= 0:
            raise EMOInputError("the face mask is empty: give a MASK that covers the face, or let detection find it")
        img = F.interpolate(rearrange(image, "h w c -> 1 c h w"), size=(res, res), mode="bilinear", antialias=True,
                            align_corners=False) * 2 - 1
        mask = (F.interpolate(mask[None, None], size=(res, res), mode="bilinear", align_corners=False) > 0.5).float()
        latent = self._vae_encode(img)
        c = self.model.face_locator.in_channels
        locator = mask.expand(1, c, res, res)[:, :, None]
        if pose:  # kept as uint8 [1, 3, L, res, res] on the CPU (0.75 MB a frame at 512²), made float per window
            frames = torch.as_tensor(np.asarray(locator_frames) if not torch.is_tensor(locator_frames) else locator_frames)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
                raise EMOInputError(f"pose frames must be [frames, H, W, 3], got shape {tuple(frames.shape)}")
            frames = rearrange(frames.float(), "l h w c -> l c h w")
            if frames.shape[-2:] != (res, res):
                frames = F.interpolate(frames, size=(res, res), mode="bilinear", align_corners=False)
            locator = rearrange((frames.clamp(0, 1) * 255).round().to(torch.uint8), "l c h w -> 1 c l h w")
        masks = None
        if self.config.audio_attention and self.config.audio_attention.get("regions"):
            k = res / face_mask.shape[-1]  # mouth corners: face-mask pixels -> model pixels
            corners = None if mouth is None else tuple((x * k, y * k) for x, y in mouth)
            masks = region_masks(mask[0, 0].numpy(), self.config.latent_size, corners)
        emb = None if identity_embedding is None else torch.as_tensor(identity_embedding, dtype=torch.float32).reshape(1, -1)
        return EncodedReference(img, latent.cpu(), locator, masks, emb)

    def _vae(self):
        if self.model.vae is None:
            raise EMOInputError("this model was loaded without a VAE: load it with its sd-vae-ft-mse folder "
                                "(or choose a VAE in the loader)")
        return self.model.vae

    def _vae_encode(self, pixels):  # [n, 3, H, W] in -1..1 -> [n, 4, h, w] scaled latents
        vae = self._vae()
        out = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mean
        return (out * self.config.vae_scale).to(self.dtype)

    def _decode_slice(self) -> int:
        """Frames per VAE decode call: up to 8 (enough to fill a GPU), fewer when ~60 % of the free accelerator
        memory would not hold them (a 512² frame needs ~0.5 GB at 16-bit in diffusers' decoder, scaling with
        pixels and bytes per value)."""
        dev = self.device
        if dev.type != "cuda":
            return 8
        free, _ = torch.cuda.mem_get_info(dev)
        per_frame = 0.5e9 * (self.config.resolution / 512) ** 2 * self._vae().dtype.itemsize / 2
        return max(1, min(8, int(0.6 * free / per_frame)))

    def _decode(self, latents, keep_last: int = 0):
        """latents [n, 4, h, w] -> (frames [n, H, W, 3] float 0..1 on the CPU, the last `keep_last` frames as
        pixels [k, 3, H, W] in -1..1 still on the device, or None). The device copy feeds the next clip's motion
        frames without a round trip through host memory."""
        vae = self._vae()
        step = self._decode_slice()
        out, tail = [], []
        for s in range(0, latents.shape[0], step):
            x = vae.decode((latents[s:s + step] / self.config.vae_scale).to(vae.dtype)).sample.clamp(-1, 1)
            if keep_last and s + x.shape[0] > latents.shape[0] - keep_last:
                tail.append(x[max(0, latents.shape[0] - keep_last - s):])
            out.append(rearrange((x.float() + 1) / 2, "n c h w -> n h w c").cpu())
        return torch.cat(out), (torch.cat(tail) if tail else None)

    def _vae_decode(self, latents):  # [n, 4, h, w] -> [n, H, W, 3] float 0..1 on the CPU
        return self._decode(latents)[0]

    # ------------------------------------------------------------------ conditions
    def _identity_tokens(self, ref: EncodedReference, cond: bool):
        proj = self.model.identity_projection
        if proj is None:
            return None
        emb = ref.identity_embedding if (cond and ref.identity_embedding is not None) else torch.zeros(1, proj.embed_dim)
        return proj(emb.to(self.device, self.dtype))

    def _row_tokens(self, ref, rows: list[int]):
        """Identity tokens for ReferenceNet rows; Hallo tiles [uncond, cond] over its rows (see hallo-tiny README)."""
        if self.model.identity_projection is None:
            return None
        cond, uncond = self._identity_tokens(ref, True), self._identity_tokens(ref, False)
        if not self.config.hallo_identity_tiling:
            return cond.expand(len(rows), -1, -1)
        return torch.cat([cond if r % 2 else uncond for r in rows])

    def _reference_bank(self, ref: EncodedReference, n_motion: int) -> dict:
        """ReferenceNet features of the reference, computed once per video: {path: [1, L, C]}. With Hallo's row
        tiling, two rows: the reference seen with the uncond tokens (row 0) and with row n+1's tokens."""
        key = (str(self.device), self.dtype, n_motion)
        if key not in ref._cache or n_motion > 0:
            self.model.reference_net.to(self.device)  # a no-op unless offloaded
        if key not in ref._cache:
            ref._cache.clear()
            latent = ref.latent.to(self.device, self.dtype)
            rows = [0, n_motion + 1] if self.config.hallo_identity_tiling else [n_motion + 1]
            bank = self.model.reference_net(latent.expand(len(rows), -1, -1, -1), self._row_tokens(ref, rows))
            ref._cache[key] = bank
        if self.offload_idle and n_motion == 0:
            self.model.reference_net.to("cpu")
        return ref._cache[key]

    def _ref_index(self, f: int, n_ref_passes: int):
        """Which reference row each backbone row that sees the reference attends to: None (one row for all), or
        with Hallo's row tiling a LongTensor [(B_ref f)]. Hallo's read hook tiles its two CFG rows over the (B f)
        rows, so frame j sees bank row (f + j) % 2 (verified against the original code): the conditional half's
        even frames see the reference with the unconditional identity tokens."""
        if not self.config.hallo_identity_tiling:
            return None
        key = ("ref_index", f, n_ref_passes, str(self.device))
        if key not in self._cache:
            self._cache[key] = torch.tensor([(f + j) % 2 for j in range(f)] * n_ref_passes).to(self.device)
        return self._cache[key]

    def _face_features(self, ref: EncodedReference, frames=None):
        """Face-locator features [1, C, 1 or f, h, w]. A static face mask: computed once per video (cached).
        Per-frame locator images (EchoMimic's pose set, `ref.locator_mask` [1, c, L, H, W]): frames `frames`."""
        if ref.locator_mask.dtype == torch.uint8:  # per-frame drawings, uint8 on the device once per video
            key = ("pose", str(self.device))  # (0.75 MB a frame at 512²: 180 MB for EchoMimic's 240 frames)
            if key not in ref._cache:
                ref._cache[key] = ref.locator_mask.to(self.device)
            src = ref._cache[key]
            sel = src[:, :, frames.to(src.device)] if frames is not None else src
            return self.model.face_locator(sel.to(self.dtype) / 255)
        key = ("face", str(self.device), self.dtype)
        if key not in ref._cache:
            ref._cache[key] = self.model.face_locator(ref.locator_mask.to(self.device, self.dtype))
        return ref._cache[key]

    def _motion_bank(self, ref, motion_latents, n: int, variants: list[bool]) -> dict:
        """ReferenceNet features of the n motion latents for each variant (True: passes with the reference,
        False: uncond). Returns {path: {variant: [n, L, C]}}."""
        rows_by_variant = {v: [(n + 1 + j + 1) if v else (j + 1) for j in range(n)] for v in variants}
        if not self.config.hallo_identity_tiling:
            variants = variants[:1]
        lat = torch.cat([motion_latents] * len(variants))
        tokens = None
        if self.model.identity_projection is not None:
            tokens = torch.cat([self._row_tokens(ref, rows_by_variant[v]) for v in variants])
        bank = self.model.reference_net(lat, tokens)
        out = {}
        for path, feats in bank.items():
            chunks = feats.split(n)
            out[path] = {v: chunks[i if i < len(chunks) else 0] for i, v in enumerate(variants)}
            if len(variants) == 1:
                out[path] = {True: chunks[0], False: chunks[0]}
        return out

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, audio: EncodedAudio, ref: EncodedReference, steps: int | None = None, seed: int = 0,
               audio_cfg: float | None = None, ref_cfg: float | None = None, speed: float | None = None,
               frames_per_clip: int | None = None, motion_frames: int | None = None,
               region_weights=(1.0, 1.0, 1.0), callback: Callable[[SampleProgress], None] | None = None
               ) -> Iterator[torch.Tensor]:
        """Yields decoded clips [f, H, W, 3] float 0..1 on the CPU, in order, audio.num_frames frames in all.
        None takes the checkpoint's default. `callback` runs after every denoising step; raising from it stops
        sampling there (nothing further is computed)."""
        cfg = self.config
        steps = cfg.steps if steps is None else int(steps)
        if steps < 1:
            raise EMOInputError(f"steps must be at least 1 (got {steps}); the checkpoint's default is {cfg.steps}")
        audio_cfg = cfg.audio_cfg if audio_cfg is None else float(audio_cfg)
        ref_cfg = cfg.ref_cfg if ref_cfg is None else float(ref_cfg)
        f = frames_per_clip or cfg.frames_per_clip
        n = cfg.motion_frames if motion_frames is None else int(motion_frames)
        if f < 1 or n < 0:
            raise EMOInputError(f"frames per clip must be >= 1 and motion frames >= 0 (got {f}, {n})")
        max_len = cfg.temporal["max_len"]
        if cfg.temporal_mode == "motion_frames" and f + n > max_len:
            raise EMOInputError(f"frames per clip + motion frames = {f + n} exceeds the temporal modules' {max_len} "
                                "positions: lower one of them")
        self._check_audio(audio)
        passes = guidance_passes(audio_cfg, ref_cfg)
        speed_feats = None
        if self.model.speed_encoder is not None:
            value = cfg.speed_value if speed is None else float(speed)
            speed_feats = self.model.speed_encoder(torch.full((1, f), value, device=self.device))
        gen = torch.Generator("cpu").manual_seed(int(seed))
        if cfg.temporal_mode == "context_windows":
            yield from self._sample_windows(audio, ref, steps, passes, f, n, gen, callback)
            return
        num_clips = math.ceil(audio.num_frames / f)
        total = num_clips * steps
        ref_bank = self._reference_bank(ref, n)
        motion_latents = None
        latent_size = cfg.latent_size
        for k in range(num_clips):
            if n > 0 and motion_latents is None:
                motion_latents = (ref.latent.to(self.device, self.dtype).expand(n, -1, -1, -1)
                                  if cfg.first_clip_motion == "reference" else
                                  torch.zeros(n, 4, latent_size, latent_size, device=self.device, dtype=self.dtype))
            tokens = self.audio_tokens(audio, k * f, (k + 1) * f)
            ctx, ehs = self.clip_conditions(ref, tokens, passes, ref_bank, motion_latents if n > 0 else None,
                                            region_weights, speed_feats)
            noise = torch.randn((1, 4, f, latent_size, latent_size), generator=gen)
            if cfg.init_noise_clamp:
                noise = noise.clamp(-cfg.init_noise_clamp, cfg.init_noise_clamp)
            latents = self._denoise(noise.to(self.device, self.dtype), steps, passes, ctx, ehs,
                                    lambda i, lat: callback and callback(SampleProgress(k * steps + i, total, k, num_clips, lat)))
            frames, last = self._decode(rearrange(latents, "1 c f h w -> f c h w"), keep_last=n)
            if n > 0:
                motion_latents = self._vae_encode(last)
                if motion_latents.shape[0] < n:
                    motion_latents = torch.cat([motion_latents[:1].expand(n - motion_latents.shape[0], -1, -1, -1),
                                                motion_latents])
            yield frames[: max(0, min(f, audio.num_frames - k * f))]

    def clip_conditions(self, ref, tokens, passes, ref_bank, motion_latents=None, region_weights=(1.0, 1.0, 1.0),
                        speed_feats=None):
        """Backbone context and cross-attention tokens for one clip. tokens: [f, T, D] audio tokens of the clip;
        ref_bank: from `_reference_bank`; motion_latents: [n, 4, h, w] or None (no motion frames)."""
        f = tokens.shape[0]
        motion = None
        if motion_latents is not None:
            variants = [True] + ([False] if any(not p.ref for p, _ in passes) else [])
            mbank = self._motion_bank(ref, motion_latents, motion_latents.shape[0], variants)
            motion = {path: torch.stack([mb[p.ref] for p, _ in passes]) for path, mb in mbank.items()}
        return self._conditions(ref, tokens, passes, f, ref_bank, motion, region_weights, speed_feats)

    def _face_rows(self, ref, passes, f, frames=None):
        """Face-locator features per backbone row [(B f), C, h, w] (zeros for passes without the face). A static
        mask gives the same rows for every clip or window of f frames: made once per video (EchoMimic builds
        conditions per window and step)."""
        key = ("face_rows", f, tuple(p.face for p, _ in passes), str(self.device), self.dtype)
        static = ref.locator_mask.dtype != torch.uint8
        if static and key in ref._cache:
            return ref._cache[key]
        feats = self._face_features(ref, frames).expand(-1, -1, f, -1, -1)  # [1, C, f, h, w]
        face = torch.cat([feats if p.face else torch.zeros_like(feats) for p, _ in passes])
        face = rearrange(face, "b c f h w -> (b f) c h w")
        if static:
            ref._cache[key] = face
        return face

    def _conditions(self, ref, tokens, passes, f, ref_bank, motion, region_weights, speed_feats, frames=None):
        """The backbone context and cross-attention tokens for a clip. tokens: [f, T, D] audio tokens (on the
        device); ref_bank: from `_reference_bank`; frames: the clip's video-frame indices (per-frame locator
        images only). Passes without the reference must come first (as `guidance_passes` orders them)."""
        cfg = self.config
        B = len(passes)
        ref_rows = [p.ref for p, _ in passes]
        if ref_rows != sorted(ref_rows):
            raise ValueError("guidance passes without the reference must come first")
        zeros = torch.zeros_like(tokens)
        audio_rows = torch.cat([tokens if p.audio else zeros for p, _ in passes])  # [(B f), T, D]
        face = self._face_rows(ref, passes, f, frames)  # [(B f), C, h, w]
        ehs = None
        if cfg.cross_attention == "identity":
            ehs = torch.cat([self._identity_tokens(ref, p.cond_identity).expand(f, -1, -1) for p, _ in passes])
        elif cfg.cross_attention == "audio":
            ehs = audio_rows
        masks = None
        if ref.masks is not None:
            masks = [[m.to(self.device, self.dtype) for m in levels] for levels in ref.masks]
        ctx = BackboneContext(
            ref_rows=ref_rows, ref_bank=ref_bank, ref_index=self._ref_index(f, sum(ref_rows)),
            ref_kv=ref._cache.setdefault(("kv", id(ref_bank)), {}), motion=motion,
            audio=audio_rows if cfg.audio_attention else None, masks=masks, region_weights=tuple(region_weights),
            face=face, speed=None if speed_feats is None else speed_feats.expand(B, -1, -1))
        return ctx, ehs

    def _denoise(self, latents, steps, passes, ctx, ehs, on_step):
        """DDIM over one clip. The scheduler stays on the CPU (its tables are indexed by Python ints, so no step
        waits on the GPU); the backbone gets the timestep as a device tensor made before the loop."""
        sched = DDIMScheduler.from_config(self.config.scheduler)
        sched.set_timesteps(steps)
        t_dev = sched.timesteps.to(self.device)
        latents = latents * sched.init_noise_sigma
        weights = torch.tensor([w for _, w in passes], dtype=self.dtype).view(-1, 1, 1, 1, 1).to(self.device)
        B = len(passes)
        for i, t in enumerate(sched.timesteps):
            x = sched.scale_model_input(latents, t).expand(B, -1, -1, -1, -1)
            out = self.model.backbone(x, t_dev[i], ehs, ctx)
            pred = (out * weights).sum(0, keepdim=True)
            latents = sched.step(pred, int(t), latents).prev_sample
            on_step(i + 1, latents)
        return latents

    def _sample_windows(self, audio, ref, steps, passes, f, overlap, gen, callback):
        """EchoMimic: the latents of the whole video, [1, 4, L, h, w] with L = audio.num_frames, are denoised
        together. At step i every window of `context_windows(L, f, overlap, i)` runs as its own backbone batch (all
        guidance passes), the guided predictions are averaged per frame, then one DDIM step updates the full latent.
        Yields the decoded video in chunks of f frames [f, H, W, 3]."""
        cfg = self.config
        L, s = audio.num_frames, cfg.latent_size
        schedule = [context_windows(L, f, overlap, i, cfg.window_shift) for i in range(steps)]  # checks the settings
        if ref.locator_mask.dtype == torch.uint8 and ref.locator_mask.shape[2] < L:
            raise EMOInputError(f"there are {ref.locator_mask.shape[2]} pose frames for {L} video frames of audio: "
                                "give at least as many pose frames as video frames (extra ones are ignored), or "
                                "shorten the audio")
        if min(f, L) > cfg.temporal["max_len"]:
            raise EMOInputError(f"windows of {min(f, L)} frames exceed the temporal modules' {cfg.temporal['max_len']} "
                                "positions: lower frames per clip")
        noise = torch.randn((1, 4, L, s, s), generator=gen)
        if cfg.init_noise_clamp:
            noise = noise.clamp(-cfg.init_noise_clamp, cfg.init_noise_clamp)
        ref_bank = self._reference_bank(ref, 0)
        sched = DDIMScheduler.from_config(cfg.scheduler)
        sched.set_timesteps(steps)
        t_dev = sched.timesteps.to(self.device)
        latents = noise.to(self.device, self.dtype) * sched.init_noise_sigma
        weights = torch.tensor([w for _, w in passes], dtype=self.dtype).view(-1, 1, 1, 1, 1).to(self.device)
        # Everything indexed per window is made before the loop: no host->device copy inside it.
        tokens_all = self.audio_tokens(audio, 0, L)                                    # [L, T, D]
        index = [[torch.tensor(w).to(self.device) for w in windows] for windows in schedule]
        counts = []
        for windows in schedule:
            c = torch.zeros(L)
            for w in windows:
                c.index_add_(0, torch.tensor(w), torch.ones(len(w)))
            counts.append(c.to(self.device, self.dtype).view(1, 1, -1, 1, 1))
        for i, t in enumerate(sched.timesteps):
            pred = torch.zeros_like(latents)
            for idx in index[i]:
                ctx, ehs = self._conditions(ref, tokens_all[idx], passes, idx.shape[0], ref_bank, None, (1.0, 1.0, 1.0),
                                            None, frames=idx)
                x = sched.scale_model_input(latents[:, :, idx], t).expand(len(passes), -1, -1, -1, -1)
                out = self.model.backbone(x, t_dev[i], ehs, ctx)
                pred.index_add_(2, idx, (out * weights).sum(0, keepdim=True))
            latents = sched.step(pred / counts[i], int(t), latents).prev_sample
            if callback:
                callback(SampleProgress(i + 1, steps, 0, 1, latents))
        frames = rearrange(latents, "1 c f h w -> f c h w")
        for s0 in range(0, L, f):
            yield self._vae_decode(frames[s0:s0 + f])


def context_windows(length: int, size: int, overlap: int, step: int = 0, shift: int = 2) -> list[list[int]]:
    """EchoMimic's context windows at denoising step `step` (AnimateDiff's "uniform" schedule, closed loop, stride
    1): the latent-frame indices of each window, [n_windows][min(size, length)]. At step 0 the windows start at 0,
    size - overlap, 2 (size - overlap), ... while start < length, each wrapping modulo length (one window of all
    frames when length <= size); at step i every index is shifted by shift * i modulo length (a single window
    rotates too). EchoMimic's audio-driven sets shift 2 frames a step, its pose sets 3."""
    if length < 1 or size < 1:
        raise EMOInputError(f"context windows need at least one frame and a window of at least one frame "
                            f"(got {length} frames, window {size})")
    if not 0 <= overlap < size:
        raise EMOInputError(f"the context overlap ({overlap} frames: the 'motion frames' setting) must be at least 0 "
                            f"and smaller than the window ({size} frames: 'frames per clip')")
    if length <= size:
        windows = [list(range(length))]
    else:
        windows = [[(s + j) % length for j in range(size)] for s in range(0, length, size - overlap)]
    return [[(j + shift * step) % length for j in w] for w in windows]
