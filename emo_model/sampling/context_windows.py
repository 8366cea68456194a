"""Context windows (EchoMimic): the whole video's latents denoised at once in overlapping, shifting windows.

At step i every window of `context_windows(L, f, overlap, i)` runs as its own backbone batch (all guidance passes),
the guided predictions are averaged per frame, then one DDIM step updates the full latent.
"""
from typing import Callable, Iterator

import torch
from einops import rearrange

from ..errors import EMOInputError
from .conditions import ConditionCache
from .guidance import GuidedDDIM, SampleProgress
from .vae import VAECodec


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


def sample_windows(model, vae: VAECodec, cache: ConditionCache, tokens: Callable, num_frames: int, settings,
                   callback: Callable | None = None) -> Iterator[torch.Tensor]:
    """The context-window sampler: latents (1 4 L h w), L = num_frames, denoised together; yields the decoded video
    in chunks of f frames (f H W 3) float 0..1 on the CPU. tokens(start, end): audio tokens of video frames
    start..end-1 on the device; settings: `SampleSettings` (f = the window, motion frames = the overlap)."""
    L, f = num_frames, settings.frames_per_clip
    ddim = GuidedDDIM(model, list(settings.passes), settings.steps)
    schedule = [context_windows(L, f, settings.motion_frames, i, model.config.window_shift) for i in range(len(ddim))]
    latents = ddim.initial_latents(L, torch.Generator("cpu").manual_seed(settings.seed))
    cache.reference_bank(0)
    # Everything indexed per window is made before the loop: no host->device copy inside it.
    tokens_all = tokens(0, L)                                                           # [L, T, D]
    index = [[torch.tensor(w).to(model.device) for w in windows] for windows in schedule]
    counts = []
    for windows in schedule:
        c = torch.zeros(L)
        for w in windows:
            c.index_add_(0, torch.tensor(w), torch.ones(len(w)))
        counts.append(c.to(model.device, model.dtype).view(1, 1, -1, 1, 1))
    for i in range(len(ddim)):
        pred = torch.zeros_like(latents)
        for idx in index[i]:
            conditions = cache.clip(tokens_all[idx], 0, None, settings.region_weights, frames=idx)
            pred.index_add_(2, idx, ddim.prediction(latents[:, :, idx], i, conditions))
        latents = ddim.step(pred / counts[i], i, latents)
        if callback is not None:
            callback(SampleProgress(i + 1, len(ddim), 0, 1, latents))
    frames = rearrange(latents, "1 c f h w -> f c h w")
    for s0 in range(0, L, f):
        yield vae.decode(frames[s0:s0 + f])[0]
