"""From dataset samples to a TrainBatch: VAE latents, motion frames (first-clip rule), audio rows, identity, speed,
and the step's conditioning-dropout draws.

All randomness of a step is drawn for the GLOBAL batch (every process draws the same numbers from a generator seeded
by (seed, step)) and each process takes its slice: N processes with batch B follow the same trajectory as one
process with batch N x B, and a resumed run the same as an uninterrupted one.
"""
import random
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..faces.region_masks import region_masks
from .forward import TrainBatch, encode_pixels


@dataclass
class StepDraws:
    """The random choices of one step for the global batch of G samples."""
    indices: list             # [G] dataset indices
    use_reference: bool
    use_audio: bool
    first_clip: torch.Tensor  # [G] bool
    timesteps: torch.Tensor   # [G] long
    noise: torch.Tensor       # [G, 4, f, h, w]


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def draw(cfg, schedule, num_samples: int, global_batch: int, latent_size: int, step: int,
         weights: torch.Tensor | None = None) -> StepDraws:
    """weights: [num_samples] sampling weights (`speed_balance`), or None for uniform."""
    g = step_generator(cfg.seed, step)
    if weights is None:
        indices = torch.randint(0, num_samples, (global_batch,), generator=g).tolist()
    else:
        indices = torch.multinomial(weights, global_batch, replacement=True, generator=g).tolist()
    drops = torch.rand(2, generator=g)
    first = torch.rand(global_batch, generator=g) < cfg.first_clip
    shape = torch.zeros(global_batch, 4, cfg.frames, latent_size, latent_size)
    t, noise = schedule.sample(shape, g, cfg.noise_offset, cfg.timesteps)
    return StepDraws(indices, bool(drops[0] >= cfg.drop_reference), bool(drops[1] >= cfg.drop_audio), first, t, noise)


def speed_balance(dataset, centers) -> torch.Tensor | None:
    """Sampling weights [len(dataset)] that draw videos evenly over the speed buckets: each video goes to the bucket
    centre nearest its median head speed (deg/frame), and every non-empty bucket gets the same share. Talking-head
    footage is mostly slow, so without this the fast buckets of the speed layers are rarely seen. The dataset says
    its videos' per-frame speeds with `video_speeds()` (item i belongs to video i % V, as in EMODataset); None when
    it cannot, or when every video falls in one bucket."""
    if not hasattr(dataset, "video_speeds"):
        return None
    med = np.array([float(torch.as_tensor(s).float().median()) for s in dataset.video_speeds()])
    bucket = np.abs(med[:, None] - np.asarray(centers, np.float64)[None]).argmin(1)
    counts = np.bincount(bucket)
    if (counts > 0).sum() < 2:
        return None
    per_video = 1.0 / counts[bucket]
    V = len(med)
    return torch.tensor([per_video[i % V] for i in range(len(dataset))], dtype=torch.float64)


@contextmanager
def seeded(seed: int):
    """Python, NumPy and torch global RNGs seeded for a dataset read (a dataset that draws its window with them
    then gives the same sample on every process and after a resume), restored afterwards."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def read_samples(dataset, cfg, step: int, indices: list, lo: int = 0) -> list:
    """The samples at global batch positions lo, lo + 1, ... (dataset indices `indices`)."""
    out = []
    for j, i in enumerate(indices, start=lo):
        with seeded(cfg.seed * 7_919 + step * 104_729 + j):
            out.append(dataset[i])
    return out


def make_batch(model, cfg, samples: list, draws: StepDraws, lo: int, audio, stage: int) -> TrainBatch:
    """samples: this process's samples (global positions lo .. lo + len - 1). audio: AudioFeatures or None."""
    mc = model.config
    n, f = cfg.motion_frames, cfg.frames
    B = len(samples)
    dev = model.device
    pixels = torch.stack([torch.as_tensor(s["pixels"]) for s in samples])             # [B, n + f, 3, R, R]
    ref_px = torch.stack([torch.as_tensor(s["reference"]) for s in samples])          # [B, 3, R, R]
    R = pixels.shape[-1]
    if R != mc.resolution:
        raise ValueError(f"samples are {R} px but the model trains at {mc.resolution} px")
    lat = encode_pixels(model, torch.cat([pixels.flatten(0, 1), ref_px]).to(dev))
    frames_lat = lat[: B * (n + f)].unflatten(0, (B, n + f))
    reference = lat[B * (n + f):]
    latents = frames_lat[:, n:].permute(0, 2, 1, 3, 4).contiguous()                  # [B, 4, f, h, w]
    motion = None
    if n:
        motion = frames_lat[:, :n].clone()
        first = draws.first_clip[lo:lo + B].clone()
        first |= torch.tensor([bool(s.get("first_clip", False)) for s in samples])
        for b in range(B):
            if not draws.use_reference:  # uncond: no reference to repeat, zero maps
                motion[b] = 0
            elif first[b]:  # the sampler's first clip: the reference latent repeated, or zeros
                if cfg.first_clip_start == "hold":  # ... where the reference is the pose the clip starts from
                    reference[b] = frames_lat[b, n - 1]
                motion[b] = reference[b].expand(n, -1, -1, -1) if mc.first_clip_motion == "reference" else 0
    face = torch.stack([torch.as_tensor(s["face_mask"]).float() for s in samples])[:, :, None]  # [B, 1, 1, R, R]
    audio_rows = None
    if audio is not None and (stage >= 2 or mc.cross_attention == "audio"):
        audio_rows = torch.stack([audio.rows(s["name"], s["waveform"], *map(int, s["frame_range"])) for s in samples])
    identity = None
    proj = model.identity_projection
    if proj is not None:
        rows = []
        for s in samples:
            e = s.get("identity")
            ok = e is not None and s.get("has_identity", True) and torch.as_tensor(e).numel() == proj.embed_dim
            rows.append(torch.as_tensor(e).float().reshape(-1) if ok else torch.zeros(proj.embed_dim))
        identity = torch.stack(rows)
    speed = torch.stack([torch.as_tensor(s["speed"]).float() for s in samples]) if stage == 3 else None
    regions = None
    if mc.audio_attention and mc.audio_attention.get("regions"):
        per = [region_masks(face[b, 0, 0].numpy(), mc.latent_size) for b in range(B)]
        regions = [[torch.cat([p[r][lv] for p in per]) for lv in range(4)] for r in range(3)]
    return TrainBatch(latents=latents, reference=reference, face_mask=face, motion=motion, audio=audio_rows,
                      identity=identity, speed=speed, regions=regions, use_reference=draws.use_reference,
                      use_audio=draws.use_audio).to(dev)
