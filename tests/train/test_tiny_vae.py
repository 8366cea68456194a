"""The learning check's tiny VAE (emo_model/train/tiny_vae.py)."""
import numpy as np
import torch

from emo_model.train import synthetic as s
from emo_model.train.tiny_vae import normalise_latents, reconstruct, train_tiny_vae


def _frames(n=24, size=32):
    rng = np.random.default_rng(0)
    return np.stack([s.draw_face(s.face_style(i % 3), size, rng.uniform(0, 1), rng.uniform(-10, 10)) for i in range(n)])


def test_training_lowers_the_reconstruction_error_and_scaling_keeps_it():
    fr = _frames()
    _, _, err0 = train_tiny_vae(fr, steps=1, batch=4, widths=(8, 8))
    vae, scale, err = train_tiny_vae(fr, steps=20, batch=4, widths=(8, 8))
    assert err < 0.8 * err0
    before = reconstruct(vae, fr[:4]).astype(int)
    normalise_latents(vae, scale)
    with torch.no_grad():
        x = torch.from_numpy(fr).permute(0, 3, 1, 2).float() / 127.5 - 1
        z = vae.encode(x).latent_dist.mean * 0.18215
    assert abs(float(z.std()) - 1.0) < 0.15  # unit-std latents after the EMO config's vae_scale
    assert np.abs(reconstruct(vae, fr[:4]).astype(int) - before).max() <= 2  # same pictures
