"""The trainer on a tiny in-memory set (conftest.TinyTalkingSet): loss falls, the saved model renders, resume
follows the same trajectory, each stage trains exactly its modules, bad input gives clear errors."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from emo_model import load_model
from emo_model.errors import EMOError, EMOInputError
from emo_model.train import checkpointing
from emo_model.train.batches import draw, make_batch, read_samples
from emo_model.train.config import TrainConfig
from emo_model.train.forward import denoise
from emo_model.train.losses import NoiseSchedule
from emo_model.train.stages import build_model, set_trainable
from emo_model.train.trainer import run_stage




def _eval_loss(model, cfg, ds, draws=3):
    """Mean loss over fixed draws (steps 10^6 + k, never used in training), no dropout."""
    sched = NoiseSchedule(model.config.scheduler)
    total = 0.0
    with torch.no_grad():
        for k in range(draws):
            d = draw(cfg, sched, len(ds), 2, model.config.latent_size, 10**6 + k)
            d.use_reference, d.use_audio = True, True
            b = make_batch(model, cfg, read_samples(ds, cfg, 10**6 + k, d.indices), d, 0, None, cfg.stage)
            noisy, target = sched.noisy_and_target(b.latents, d.noise, d.timesteps)
            total += sched.loss(denoise(model, b, noisy, d.timesteps), target, d.timesteps, cfg.snr_gamma).item()
    return total / draws


def test_stage1_loss_falls_and_model_renders(tmp_path, tiny_set):
    from emo_model.render import render
    ds = tiny_set()
    opts = dict(batch=2, lr=2e-3, device="cpu", save_every=100, drop_reference=0.0)
    r = run_stage(1, "memory", "tiny", tmp_path / "run", 12, dataset=ds, **opts)
    cfg = TrainConfig(stage=1, data="memory", init="tiny", out=str(tmp_path / "x"), steps=1, **opts)
    before = _eval_loss(build_model(cfg, tmp_path / "work").eval(), cfg, ds)
    trained = load_model(r["model"])
    after = _eval_loss(trained, cfg, ds)
    assert after < 0.7 * before, (before, after)
    assert (tmp_path / "run" / "logs").is_dir() and any((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))
    wave = np.sin(np.linspace(0, 400, 16000 * 6 // 25)).astype(np.float32)[None]
    s = render(trained, (ds.videos[0]["frames"][0].permute(1, 2, 0).numpy() * 127.5 + 127.5).astype(np.uint8),
               (wave, 16000), tmp_path / "out.mp4", steps=2, whole_image=True, framing="crop")
    assert s["frames"] == 6 and (tmp_path / "out.mp4").stat().st_size > 0


def test_resume_follows_the_same_trajectory(tmp_path, tiny_set, tiny_model, capfd):
    ds = tiny_set(frames=2, motion_frames=1)
    # resumed inside the warm-up: the learning rate must continue the ramp
    opts = dict(batch=1, frames=2, motion_frames=1, lr=1e-3, device="cpu", save_every=2, seed=3, warmup_steps=3)
    straight = run_stage(2, "memory", tiny_model, tmp_path / "a", 4, dataset=ds, **opts)
    first = run_stage(2, "memory", tiny_model, tmp_path / "b", 2, dataset=ds, **opts)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = run_stage(2, "memory", tiny_model, tmp_path / "b", 4, dataset=ds, resume="latest", **opts)
    err = capfd.readouterr().err
    assert not [w for w in caught if "lr_scheduler" in str(w.message) or "optimizer" in str(w.message)], \
        [str(w.message) for w in caught]
    assert "lr_scheduler" not in err and "Warning" not in err, err
    np.testing.assert_allclose(straight["lrs"], [1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(first["lrs"] + second["lrs"], straight["lrs"], rtol=1e-6)
    np.testing.assert_allclose(first["losses"] + second["losses"], straight["losses"], rtol=1e-4, atol=1e-6)
    for k, v in straight["weights"].items():
        torch.testing.assert_close(second["weights"][k], v, rtol=1e-4, atol=1e-6)
    assert [p.name for p in checkpointing.checkpoint_dirs(tmp_path / "b")] == ["step-00000002", "step-00000004"]


GROUPS = {1: ("reference_net.", "face_locator.", "backbone.unet.conv_in", "backbone.unet.down_blocks.0.attentions"),
          2: (".motion_modules.", ".audio_modules.", "audio_projection."),
          3: (".motion_modules.", ".speed_attn.", "speed_encoder.")}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_trains_exactly_its_modules(tmp_path, tiny_set, tiny_model, stage):
    ds = tiny_set(frames=1 if stage == 1 else 2, motion_frames=0 if stage == 1 else 1)
    kw = {} if stage == 1 else dict(frames=2, motion_frames=1)
    cfg = TrainConfig(stage=stage, data="memory", init="tiny" if stage == 1 else str(tiny_model), out=str(tmp_path),
                      steps=1, batch=2 if stage == 1 else 1, drop_reference=0.0, drop_audio=0.0, **kw)
    model = build_model(cfg, tmp_path / "work", ds.all_speeds())
    trainable = set(set_trainable(model, stage))
    from emo_model.train.audio_features import AudioFeatures
    sched = NoiseSchedule(model.config.scheduler)
    d = draw(cfg, sched, len(ds), cfg.batch, model.config.latent_size, 0)
    d.timesteps[:] = 500
    b = make_batch(model, cfg, read_samples(ds, cfg, 0, d.indices), d, 0, AudioFeatures(model, 25, None), stage)
    noisy, target = sched.noisy_and_target(b.latents, d.noise, d.timesteps)
    sched.loss(denoise(model, b, noisy, d.timesteps), target, d.timesteps, None).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad <= trainable
    for group in GROUPS[stage]:
        assert any(group in n for n in with_grad), f"stage {stage}: nothing of {group} learns"
    frozen = {1: (".motion_modules.", ".audio_modules.", "audio_projection."),
              2: ("reference_net.", "face_locator.", "backbone.unet.conv_in", ".attentions.", "speed"),
              3: (".audio_modules.", "audio_projection.", "reference_net.", ".attentions.")}[stage]
    assert not [n for n in trainable if any(g in n for g in frozen)]


def test_bad_input_gives_clear_errors(tmp_path, tiny_set, tiny_model):
    ds = tiny_set()
    with pytest.raises(EMOInputError, match="untrained starting point"):
        run_stage(2, "memory", "tiny", tmp_path / "r1", 2, dataset=ds)
    with pytest.raises(EMOInputError, match="training run folder"):
        (tmp_path / "run" / "model").mkdir(parents=True)
        (tmp_path / "run" / "model" / "config.json").write_text("{}")
        run_stage(2, "memory", tmp_path / "run", tmp_path / "r1", 2, dataset=ds)
    with pytest.raises(EMOInputError, match="no checkpoint to resume"):
        run_stage(1, "memory", "tiny", tmp_path / "r2", 2, dataset=ds, resume="latest")
    data = tmp_path / "data"
    data.mkdir()
    (data / "format.json").write_text(json.dumps({"format": "emo-train-data", "version": 0}))
    with pytest.raises(EMOInputError, match="version"):
        run_stage(1, data, "tiny", tmp_path / "r3", 2)
    (data / "format.json").write_text(json.dumps({"format": "emo-train-data", "version": 1}))
    (data / "index.jsonl").write_text("")
    with pytest.raises(EMOInputError, match="no prepared clips"):
        run_stage(1, data, "tiny", tmp_path / "r4", 2)
    from emo_model.cli import main
    assert main(["train", "--stage", "3", "--data", str(data), "--init", "tiny", "--out", str(tmp_path / "r5")]) == 2


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, tiny_set, monkeypatch):
    ds = tiny_set()
    opts = dict(batch=2, lr=1e-3, device="cpu", save_every=1)
    calls = {"n": 0}
    real = checkpointing.save_file

    def full_disk(*a, **k):
        calls["n"] += 1
        if calls["n"] > 3:  # the second checkpoint's first file
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(checkpointing, "save_file", full_disk)
    with pytest.raises(EMOError, match="step-00000001 is kept"):
        run_stage(1, "memory", "tiny", tmp_path / "run", 2, dataset=ds, **opts)
    monkeypatch.setattr(checkpointing, "save_file", real)
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001"]
    r = run_stage(1, "memory", "tiny", tmp_path / "run", 2, dataset=ds, resume="latest", **opts)
    assert len(r["losses"]) == 1 and (tmp_path / "run" / "model" / "config.json").is_file()


def test_disk_full_while_writing_the_model_then_resume_writes_it(tmp_path, tiny_set, monkeypatch):
    from emo_model.train import trainer
    ds = tiny_set()
    opts = dict(batch=2, lr=1e-3, device="cpu", save_every=100)
    real = trainer.save_native

    def full_disk(model, folder, *a, **k):
        (Path(folder) / "half.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (Path(folder) / "half.safetensors").write_bytes(b"x")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer, "save_native", full_disk)
    with pytest.raises(EMOError, match="step-00000002 is complete.*--resume latest"):
        run_stage(1, "memory", "tiny", tmp_path / "run", 2, dataset=ds, **opts)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints", "logs", "train_config.json", "work"]
    monkeypatch.setattr(trainer, "save_native", real)
    r = run_stage(1, "memory", "tiny", tmp_path / "run", 2, dataset=ds, resume="latest", **opts)
    assert r["losses"] == [] and load_model(r["model"]).config.resolution == 64


def test_bad_init_resume_and_data_are_clear_errors_before_anything_is_written(tmp_path, tiny_set, capsys):
    from emo_model.cli import main
    data = tmp_path / "data"
    data.mkdir()
    (data / "format.json").write_text(json.dumps({"format": "emo-train-data", "version": 1, "resolution": 64}))
    (data / "index.jsonl").write_text("")
    train = ["train", "--data", str(data), "--steps", "1"]
    # --init that is no model (here the DATA folder) for stage 2
    assert main(train + ["--stage", "2", "--init", str(data), "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(data) in err and "Traceback" not in err
    # --resume naming a folder that is not a checkpoint
    assert main(train + ["--stage", "1", "--init", "tiny", "--out", str(tmp_path / "r2"), "--resume",
                         str(tmp_path)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    # DATA that is not there / holds nothing: the error comes before RUN/ is made
    for bad, why in ((tmp_path / "missing", "no format.json"), (data, "no prepared clips")):
        with pytest.raises(EMOInputError, match=why):
            run_stage(1, bad, "tiny", tmp_path / "r3", 1)
        assert not (tmp_path / "r3").exists()


def test_identity_embedding_of_the_data_conditions_training_as_in_hallo(tmp_path, tiny_set):
    """Hallo trains its identity projection (imageproj) on each clip's ArcFace embedding (prepare-data
    --identity-model); a clip without one, and the reference-dropped step, get proj(zeros) as the sampler does."""
    ds = tiny_set()
    cfg = TrainConfig(stage=1, data="memory", init="tiny", out=str(tmp_path), steps=1, batch=2, drop_reference=0.0)
    model = build_model(cfg, tmp_path / "work")
    set_trainable(model, 1)
    dim = model.identity_projection.embed_dim
    sched = NoiseSchedule(model.config.scheduler)

    def proj_grad(with_identity, use_reference=True):
        d = draw(cfg, sched, len(ds), 2, model.config.latent_size, 0)
        d.use_reference = use_reference
        samples = read_samples(ds, cfg, 0, d.indices)
        for k, smp in enumerate(samples):
            smp["identity"] = torch.full((dim,), 0.5 + k) if with_identity else torch.zeros(512)
            smp["has_identity"] = with_identity
        b = make_batch(model, cfg, samples, d, 0, None, 1)
        if with_identity and use_reference:
            torch.testing.assert_close(b.identity[1], torch.full((dim,), 1.5))
        model.zero_grad()
        noisy, target = sched.noisy_and_target(b.latents, d.noise, d.timesteps)
        sched.loss(denoise(model, b, noisy, d.timesteps), target, d.timesteps, None).backward()
        g = model.identity_projection.proj.weight.grad
        return 0.0 if g is None else g.abs().sum().item()

    assert proj_grad(True) > 0
    assert proj_grad(False) == 0.0                       # zero embedding: the weight sees no input
    assert proj_grad(True, use_reference=False) == 0.0   # dropped step: proj(zeros), as the sampler's uncond pass
