"""LoRA: the file is small, loads with a strength, and merging it equals running the adapters. Distribution: two
accelerate processes (gloo, CPU) end with identical weights, equal to one process with the same global batch."""
import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from emo_model import load_model
from emo_model.errors import EMOCheckpointError
from emo_model.train.batches import draw, make_batch, read_samples
from emo_model.train.config import TrainConfig
from emo_model.train.forward import denoise
from emo_model.train.lora import add_lora, apply_lora, parse_lora_arg, save_lora
from emo_model.train.losses import NoiseSchedule
from emo_model.train.trainer import run_stage




def _output(model, cfg, ds):
    sched = NoiseSchedule(model.config.scheduler)
    d = draw(cfg, sched, len(ds), 1, model.config.latent_size, 0)
    d.use_reference = d.use_audio = True
    with torch.no_grad():
        b = make_batch(model, cfg, read_samples(ds, cfg, 0, d.indices), d, 0, None, 1)  # no audio: merge test
        noisy, _ = sched.noisy_and_target(b.latents, d.noise, d.timesteps)
        return denoise(model, b, noisy, d.timesteps)


def test_lora_trains_to_a_small_file_and_merges_exactly(tmp_path, tiny_set, tiny_model):
    ds = tiny_set(frames=2, motion_frames=1)
    r = run_stage(2, "memory", tiny_model, tmp_path / "run", 1, dataset=ds, lora=2, frames=2, motion_frames=1,
                  lr=1e-2, device="cpu")
    f = r["lora"]
    assert f.stat().st_size < 0.25 * (tiny_model / "backbone.safetensors").stat().st_size
    assert not (tmp_path / "run" / "model").exists()
    tensors = load_file(str(f))
    assert tensors and all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)
    assert any(".motion_modules." in k for k in tensors) and any(".audio_modules." in k for k in tensors)
    assert max(v.abs().max().item() for k, v in tensors.items() if "lora_B" in k) > 0  # it learned something

    # merging == running the adapters (peft), at strength 1; strength 0 changes nothing; 0.5 moves half-way
    cfg = TrainConfig(stage=2, data="memory", init=str(tiny_model), out=str(tmp_path), steps=1, batch=1, frames=2,
                      motion_frames=1)
    base = load_model(tiny_model)
    adapted = copy.deepcopy(base)
    add_lora(adapted, 2)
    with torch.no_grad():
        for n, p in adapted.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    path = save_lora(adapted, tmp_path / "char.safetensors", 2, None, 2)
    out0 = _output(base, cfg, ds)
    torch.testing.assert_close(_output(apply_lora(copy.deepcopy(base), path, 0.0), cfg, ds), out0)
    merged = _output(apply_lora(copy.deepcopy(base), path, 1.0), cfg, ds)
    effect = (merged - out0).abs().max().item()
    assert effect > 1e-2
    assert (merged - _output(adapted, cfg, ds)).abs().max().item() < 0.01 * effect  # float rounding only
    half = apply_lora(copy.deepcopy(base), path, 0.5)
    full = apply_lora(copy.deepcopy(base), path, 1.0)
    key = next(k for k in load_file(str(path)) if k.endswith("lora_A.weight")).removesuffix(".lora_A.weight")
    w0, w5, w1 = (dict(m.backbone.unet.named_modules())[key].weight for m in (base, half, full))
    torch.testing.assert_close(w5 - w0, (w1 - w0) / 2, rtol=1e-4, atol=1e-6)
    assert (w1 - w0).abs().max() > 0 and parse_lora_arg(f"{path}:0.5") == (str(path), 0.5)
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(EMOCheckpointError, match="not an EMO LoRA"):
        apply_lora(base, bad)


def _worker(rank, port, out, result_dir, tiny_set_cls, init):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    r = run_stage(2, "memory", init, out, 2, dataset=tiny_set_cls(frames=2, motion_frames=1), batch=1, frames=2,
                  motion_frames=1, lr=1e-3, device="cpu", seed=5, adam_eps=1e-2)
    save_file(r["weights"], os.path.join(result_dir, f"rank{rank}.safetensors"))


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, tiny_set, tiny_model):
    """adam_eps 1e-2: Adam's update g / (sqrt(v) + eps) is then smooth in g, so float-rounding differences of
    the all-reduced gradient (near-zero entries) cannot flip an update's sign."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path / "two"), str(tmp_path), tiny_set, str(tiny_model)), nprocs=2, join=True)
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    one = run_stage(2, "memory", tiny_model, tmp_path / "one", 2, dataset=tiny_set(frames=2, motion_frames=1),
                    batch=2, frames=2, motion_frames=1, lr=1e-3, device="cpu", seed=5, adam_eps=1e-2)["weights"]
    init = load_model(tmp_path / "one" / "model")  # noqa: F841  (the one-process run wrote a loadable model)
    moved = 0
    for k, v in one.items():
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0)
        torch.testing.assert_close(w0[k], v, rtol=1e-4, atol=1e-5)
        moved += 1
    assert moved > 100
