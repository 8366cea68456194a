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


def test_train_vae_tiny_trains_it_on_data_once_and_the_model_keeps_it(tmp_path, monkeypatch):
    """`train --init tiny --vae tiny`: a tiny VAE trained on DATA's frames (not a random one), in the written model;
    a resumed run loads it instead of training again; other inits refuse it."""
    import pytest

    from emo_model import load_model
    from emo_model.errors import EMOInputError
    from emo_model.train import stages
    from emo_model.train.prepare import prepare_data
    from emo_model.train.trainer import run_stage
    v = tmp_path / "videos"
    v.mkdir()
    s.talking_video(v / "a.mp4", 1, 1, 1.0, size=64)
    data = tmp_path / "DATA"
    prepare_data(v, data, resolution=64, whole_frame=True, progress=False)
    monkeypatch.setattr(stages, "TINY_VAE_STEPS", 20)
    calls = []
    import emo_model.train.tiny_vae as tv
    monkeypatch.setattr(tv, "train_tiny_vae", lambda *a, **k: calls.append(1) or train_tiny_vae(*a, **k))
    r = run_stage(1, data, "tiny", tmp_path / "run", 2, batch=2, vae="tiny", save_every=1, device="cpu")
    vae_dir = tmp_path / "run" / "work" / "tiny_vae"
    assert calls == [1] and (vae_dir / "config.json").is_file()
    model = load_model(r["model"])
    fr = s.draw_face(s.face_style(1), 64, 0.5)[None]
    rec = reconstruct(model.vae.float(), fr).astype(int)
    assert np.abs(rec - fr.astype(int)).mean() < 40  # trained: a random VAE's output is nothing like the input
    run_stage(1, data, "tiny", tmp_path / "run", 2, batch=2, vae="tiny", save_every=1, device="cpu", resume="latest")
    assert calls == [1]  # loaded, not trained again
    with pytest.raises(EMOInputError, match="--vae tiny .* belongs with --init tiny"):
        run_stage(2, data, r["model"], tmp_path / "run2", 1, vae="tiny", device="cpu")
