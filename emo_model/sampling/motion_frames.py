"""Motion frames (EMO §3.2) and the clip-by-clip sampler built on them (EMO, Hallo).

A video is made clip after clip, f frames each. The last n frames of a clip are the next clip's motion frames: their
pixels (still on the device after decoding) are encoded by the VAE, the latents go through ReferenceNet once per clip,
and those features are put in front of the clip's frames in every temporal module of the backbone (and dropped after
it), so each clip continues the previous one. The first clip's motion frames are the reference latent repeated (or
zeros, as the checkpoint says).
"""
import math
from typing import Callable, Iterator

import torch
from einops import rearrange

from .conditions import ConditionCache
from .guidance import GuidedDDIM, SampleProgress
from .vae import VAECodec


class MotionFrames:
    """The n motion frames of the clip being made: latents (n 4 h w) and their ReferenceNet features."""

    def __init__(self, model, cache: ConditionCache, vae: VAECodec, n: int, latents: torch.Tensor | None = None):
        """latents: the first clip's motion latents (n 4 h w); by default what the checkpoint's sampler uses."""
        self.model, self.cache, self.vae, self.n = model, cache, vae, n
        ref, s = cache.ref, model.config.latent_size
        if latents is not None:
            self.latents = latents.to(model.device, model.dtype)
        elif model.config.first_clip_motion == "reference":
            self.latents = ref.latent.to(model.device, model.dtype).expand(n, -1, -1, -1)
        else:
            self.latents = torch.zeros(n, 4, s, s, device=model.device, dtype=model.dtype)

    def update(self, tail: torch.Tensor) -> None:
        """The decoded last frames of a clip, pixels (k 3 H W) in -1..1 on the device, become the next clip's motion
        frames; a clip shorter than n frames repeats its first frame in front."""
        latents = self.vae.encode(tail)
        if latents.shape[0] < self.n:
            latents = torch.cat([latents[:1].expand(self.n - latents.shape[0], -1, -1, -1), latents])
        self.latents = latents

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
    motion = MotionFrames(model, cache, vae, n) if n > 0 else None
    for k in range(num_clips):
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
