"""A tiny VAE for the learning check: a diffusers `AutoencoderKL` (the class SD's VAE is) shaped like the tiny test
model's (4 blocks: 8x down to a 4-channel latent, widths 8-16-32-32), trained in a few hundred steps on the
synthetic frames so that what the tiny EMO model learns in latent space can be seen in pixels again.

Training: Adam (lr 2e-3 with a cosine decay), batches of random frames in [-1, 1] at the data's resolution (64 px),
loss = L1 + MSE of the reconstruction from the posterior mean + KL_WEIGHT x KL (small: the latent only needs to stay
near a Gaussian scale, not to be a good prior), random horizontal flips and colour changes (`augment`: channel
permutations, gains, offsets; without them a VAE trained on six drawn faces turned an unseen face's colours to mud
and its mouth metric from r 1.0 to 0.19). `latent_scale` = 1 / std of the latents (the `vae_scale` the EMO config
multiplies latents by, as SD's 0.18215), measured on the training frames.

Frames: uint8 [N, H, W, 3] RGB or a prepared DATA folder (`frames_from_data`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

KL_WEIGHT = 1e-6


def tiny_autoencoder(widths=(8, 16, 32, 32)):
    from diffusers import AutoencoderKL
    return AutoencoderKL(block_out_channels=list(widths), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                         sample_size=64, down_block_types=["DownEncoderBlock2D"] * len(widths),
                         up_block_types=["UpDecoderBlock2D"] * len(widths))


def frames_from_data(data, max_frames: int = 4000, seed: int = 0) -> np.ndarray:
    """Up to `max_frames` frames (every k-th, spread over all clips) of a prepared DATA folder: uint8 [N, R, R, 3]."""
    from . import data_format as fmt
    from .dataset import read_all_frames
    entries = fmt.read_index(data)
    total = sum(e.num_frames for e in entries)
    step = max(1, math.ceil(total / max_frames))
    out = [read_all_frames(Path(data) / e.frames)[::step] for e in entries]
    return np.concatenate(out)[:max_frames]


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips, colour-channel permutations and per-channel gain (0.8..1.2) / offset (-0.15..0.15),
    per sample, of a batch [B, 3, H, W] in -1..1: a VAE trained on a few identities then also reconstructs faces and
    backgrounds of colours it has not seen (the learning check renders unseen faces)."""
    B = x.shape[0]
    flip = torch.rand(B, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    perm = torch.stack([torch.randperm(3, generator=g) for _ in range(B)])
    x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    gain = 0.8 + 0.4 * torch.rand(B, 3, 1, 1, generator=g)
    offset = 0.3 * torch.rand(B, 3, 1, 1, generator=g) - 0.15
    return ((x + 1) * gain - 1 + offset).clamp(-1, 1)


def train_tiny_vae(frames, steps: int = 300, batch: int = 8, lr: float = 2e-3, seed: int = 0, log_every: int = 0,
                   widths=(8, 16, 32, 32), colour_augment: bool = True):
    """Train a tiny AutoencoderKL on `frames` (uint8 [N, H, W, 3] or a DATA folder). Returns (vae in eval mode,
    latent_scale, final L1 error in [-1, 1] units on a held batch)."""
    if isinstance(frames, (str, Path)):
        frames = frames_from_data(frames, seed=seed)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = tiny_autoencoder(widths)
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    x_all = _to_tensor(frames)
    n = len(x_all)
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        x = x_all[idx]
        x = augment(x, g) if colour_augment else x
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mean + 0.1 * post.std * torch.randn(post.mean.shape, generator=g)).sample
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + KL_WEIGHT * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"tiny VAE step {step + 1}/{steps}: loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        held = x_all[torch.randperm(n, generator=g)[:64]]
        z = vae.encode(held).latent_dist.mean
        err = (vae.decode(z).sample.clamp(-1, 1) - held).abs().mean().item()
        scale = 1.0 / float(z.std().clamp_min(1e-4))
    return vae, scale, err


@torch.no_grad()
def reconstruct(vae, frames: np.ndarray) -> np.ndarray:
    """Round trip through the VAE (posterior mean): uint8 [N, H, W, 3] -> uint8 [N, H, W, 3]."""
    out = []
    for i in range(0, len(frames), 32):
        x = _to_tensor(frames[i:i + 32])
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        out.append(((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


@torch.no_grad()
def normalise_latents(vae, latent_scale: float, vae_scale: float = 0.18215) -> None:
    """Fold `latent_scale` into the VAE so that latents x `vae_scale` (the EMO config's, SD's 0.18215) have unit
    std: the encoder's mean output is multiplied by k = latent_scale / vae_scale (its log-variance shifted by
    2 ln k) and the decoder's input divided by k. Reconstructions are unchanged."""
    k = float(latent_scale) / float(vae_scale)
    c = vae.config.latent_channels
    q = vae.quant_conv
    q.weight[:c] *= k
    q.bias[:c] *= k
    q.bias[c:] += 2 * math.log(k)
    vae.post_quant_conv.weight /= k
