"""The training loop for all three stages, on accelerate (one process, several GPUs, several machines: launch with
`accelerate launch ... -m emo_model train ...`; nothing here is distribution code of its own).

RUN/ (the --out folder):
    train_config.json   the run's TrainConfig (a resume must match it on everything that shapes the trajectory)
    checkpoints/        step-NNNNNNNN/ resumable checkpoints (checkpointing.py), the newest `keep_checkpoints`
    logs/               TensorBoard event files (loss, lr, steps/s)
    model/              the trained model in the native format (full training), written when the run ends
    lora.safetensors    the LoRA (with --lora), written when the run ends
"""
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EMOError, EMOInputError
from ..formats.load import save_native
from . import checkpointing
from .audio_features import AudioFeatures
from .batches import draw, make_batch, read_samples, speed_balance
from .config import TrainConfig
from .forward import denoise
from .losses import NoiseSchedule
from .stages import build_model, check_init, set_trainable, speed_centers


class _Step(nn.Module):
    """The module accelerate wraps (DDP): one training forward of the model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, noisy, timesteps):
        return denoise(self.model, batch, noisy, timesteps)


def open_data(cfg: TrainConfig, dataset=None):
    """(dataset, fps, per-frame speeds of all clips, DATA folder or None, whole_frame). `dataset`: an object giving
    the samples of `data_format.py` (tests; its `whole_frame` attribute, default False); by default EMODataset(DATA).
    whole_frame: the data was prepared with --whole-frame (recorded in the trained model's config)."""
    from .data_format import read_format, read_index
    if dataset is not None:
        speeds = np.asarray(dataset.all_speeds() if hasattr(dataset, "all_speeds") else [], dtype=np.float32)
        return dataset, float(getattr(dataset, "fps", 25)), speeds, None, bool(getattr(dataset, "whole_frame", False))
    data = Path(cfg.data)
    fmt = read_format(data)  # missing / older format: a clear error
    entries = read_index(data)
    if not entries:
        raise EMOInputError(f"{data} holds no prepared clips (index.jsonl is empty): see {data / 'report.jsonl'} for "
                            "why each video was skipped, and run prepare-data on usable videos")
    from safetensors.torch import load_file

    from .dataset import EMODataset
    res = cfg.resolution or fmt.resolution
    ds = EMODataset(data, frames=cfg.frames, motion_frames=cfg.motion_frames, resolution=res)
    if len(ds) == 0:
        raise EMOInputError(f"no clip of {data} is long enough for {cfg.motion_frames} motion + {cfg.frames} frames: "
                            "lower --frames / --motion-frames or prepare longer videos")
    speeds = None
    if cfg.stage == 3 or (cfg.stage == 2 and cfg.balance_speed):
        speeds = np.concatenate([load_file(str(data / e.meta))["speed"].numpy() for e in entries])
    return ds, float(fmt.fps), speeds, data, bool(fmt.whole_frame)


def _check_resume(cfg: TrainConfig, out: Path) -> None:
    saved = out / "train_config.json"
    if cfg.resume is None:
        if checkpointing.checkpoint_dirs(out):
            raise EMOInputError(f"{out} already holds checkpoints of a run: pass --resume latest to continue it, or "
                                "choose a new --out")
        return
    checkpointing.find_checkpoint(out, cfg.resume)  # nothing to resume: a clear error
    if saved.is_file():
        old = TrainConfig.from_json(saved)
        diff = [k for k in TrainConfig.TRAJECTORY_KEYS if getattr(old, k) != getattr(cfg, k)]
        if diff:
            raise EMOInputError(f"--resume: these settings differ from the run in {out}: "
                                + ", ".join(f"{k} {getattr(old, k)!r} -> {getattr(cfg, k)!r}" for k in diff)
                                + ". Resume with the run's settings, or start a new --out")


def run(cfg: TrainConfig, dataset=None, on_step=None) -> dict:
    """Trains one stage. on_step(step, loss) is called on every process after each step (tests).
    Returns {"losses": [...], "lrs": [...] (per step), "model": path or None, "lora": path or None,
    "weights": trainable tensors, "steps_per_s": ..., "peak_memory_mb": ...}."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    out = Path(cfg.out)
    if cfg.resolution is None and dataset is None and Path(cfg.data).is_dir():
        from .data_format import read_format
        cfg.resolution = read_format(cfg.data).resolution
    _check_resume(cfg, out)
    check_init(cfg)
    ds, fps, speeds, data, whole_frame = open_data(cfg, dataset)  # bad DATA: an error before RUN/ is made
    from accelerate.state import AcceleratorState
    # accelerate keeps its settings per process: a second run in one Python process (tests, a notebook, the learning
    # check) with another --mixed-precision would be refused. Forget them (the distributed set-up stays).
    AcceleratorState._reset_state()
    acc = Accelerator(cpu=cfg.device == "cpu", mixed_precision=cfg.mixed_precision, log_with="tensorboard",
                      project_dir=str(out / "logs"),
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_json(out / "train_config.json")
    else:  # each note is said once, by the main process (errors still by every process)
        logging.getLogger("emo_model").setLevel(logging.ERROR)
    with acc.main_process_first():
        model = build_model(cfg, out / "work", speeds)
    model.config.fps = fps
    model.config.whole_frame = whole_frame  # render then frames the whole picture (no face detection)
    if cfg.stage == 3 and model.speed_encoder is not None:
        model.config.speed_cfg = float(cfg.speed_cfg)  # the sampler's default speed guidance for this model
    if cfg.frames * cfg.batch < 2 and model.config.latent_size <= 8:
        raise EMOInputError(f"at {model.config.resolution} px the temporal modules' GroupNorm sees one value per "
                            "channel with a single frame: use --batch 2 or more (or a larger --resolution)")
    if cfg.lora:
        from .lora import add_lora
        names = add_lora(model, cfg.lora, cfg.lora_alpha)
    else:
        names = set_trainable(model, cfg.stage)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.lora and acc.mixed_precision in ("fp16", "bf16"):
        from .lora import frozen_to
        frozen_to(model, torch.float16 if acc.mixed_precision == "fp16" else torch.bfloat16)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
                                  eps=cfg.adam_eps)
    start = 0
    if cfg.resume:
        ckpt = checkpointing.find_checkpoint(out, cfg.resume)
        start, weights, opt_state, _ = checkpointing.load_checkpoint(ckpt)
        own = dict(model.named_parameters())
        missing = [k for k in names if k not in weights]
        if missing:
            raise EMOInputError(f"{ckpt} does not hold this run's trainable weights (e.g. {missing[0]}): it belongs to "
                                "another run; start a new --out")
        with torch.no_grad():
            for k in names:
                own[k].copy_(weights[k])
        optimizer.load_state_dict(opt_state)
        acc.print(f"resumed from {ckpt} at step {start}")
    step_module, optimizer = acc.prepare(_Step(model), optimizer)
    model = acc.unwrap_model(step_module).model
    model.vae.to(acc.device)
    schedule = NoiseSchedule(model.config.scheduler)
    audio = None
    if model.audio_encoder is not None and (cfg.stage >= 2 or model.config.cross_attention == "audio"):
        audio = AudioFeatures(model, fps, data)
    acc.init_trackers("emo-train", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                            for k, v in cfg.__dict__.items()})
    world, rank = acc.num_processes, acc.process_index
    global_batch = cfg.batch * world
    lo = rank * cfg.batch
    losses, lrs, t_last, n_last = [], [], time.perf_counter(), 0
    t0 = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    weights = None
    if cfg.stage >= 2 and cfg.balance_speed:  # stage 2 has no speed layers yet: the buckets stage 3 will make
        centers = (model.speed_encoder.centers.tolist() if model.speed_encoder is not None
                   else speed_centers(speeds if speeds is not None else np.zeros(0)).tolist())
        weights = speed_balance(ds, centers)
    for step in range(start, cfg.steps):
        d = draw(cfg, schedule, len(ds), global_batch, model.config.latent_size, step, weights)
        samples = read_samples(ds, cfg, step, d.indices[lo:lo + cfg.batch], lo)
        batch = make_batch(model, cfg, samples, d, lo, audio, cfg.stage)
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t = d.timesteps[lo:lo + cfg.batch]
        noisy, target = schedule.noisy_and_target(batch.latents, d.noise[lo:lo + cfg.batch].to(acc.device), t)
        with acc.autocast():
            pred = step_module(batch, noisy, t.to(acc.device))
        loss = schedule.loss(pred, target, t, cfg.snr_gamma)
        acc.backward(loss)
        if acc.sync_gradients and cfg.max_grad_norm:
            acc.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean_loss = acc.gather(loss.detach()[None]).mean().item()
        losses.append(mean_loss)
        lrs.append(lr)
        if on_step is not None:
            on_step(step + 1, mean_loss)
        n_last += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            rate = n_last / max(now - t_last, 1e-9)
            acc.log({"loss": mean_loss, "lr": lr, "steps_per_s": rate}, step=done)
            acc.print(f"step {done}/{cfg.steps}  loss {mean_loss:.4f}  lr {lr:.2e}  {rate:.3f} steps/s")
            t_last, n_last = now, 0
        if done % cfg.save_every == 0 or done == cfg.steps:
            _save(acc, cfg, out, done, model, names, optimizer)
    result = dict(losses=losses, lrs=lrs, model=None, lora=None,
                  steps_per_s=(cfg.steps - start) / (time.perf_counter() - t0),
                  weights={k: v.detach().cpu().clone() for k, v in model.named_parameters() if k in set(names)},
                  peak_memory_mb=_peak_memory_mb())
    if acc.is_main_process:
        if cfg.lora:
            from .lora import save_lora
            try:
                result["lora"] = save_lora(model, out / "lora.safetensors", cfg.lora, cfg.lora_alpha, cfg.stage,
                                           whole_frame=whole_frame)
            except OSError as e:
                raise _save_error(out / "lora.safetensors", e, out) from None
        else:
            try:
                result["model"] = _save_model(model, out / "model")
            except OSError as e:
                raise _save_error(out / "model", e, out) from None
    acc.wait_for_everyone()
    acc.end_training()
    return result


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of (0-based) step `step`: linear warm-up over `warmup_steps`, then constant (Hallo).

    A pure function of the step, set on the optimizer before each step, rather than an LRScheduler object: a resumed
    run gets exactly the uninterrupted run's rate with no scheduler state to store or fast-forward. (Fast-forwarding
    torch's LambdaLR by calling `step()` `start` times before this process's first `optimizer.step()` is what made
    torch warn "Detected call of `lr_scheduler.step()` before `optimizer.step()`" on every resume; it had been hidden
    behind a warnings filter.)"""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def _save(acc, cfg, out, step, model, names, optimizer) -> None:
    acc.wait_for_everyone()
    if acc.is_main_process:
        own = dict(model.named_parameters())
        checkpointing.save_checkpoint(out, step, {k: own[k] for k in names}, optimizer.state_dict(),
                                      {"world_size": acc.num_processes}, cfg.keep_checkpoints)
    acc.wait_for_everyone()


def _save_error(what: Path, e: OSError, out: Path) -> EMOError:
    """A failure writing the trained model or LoRA (e.g. a full disk): nothing half-written is left under its name,
    and the last checkpoint (written at the last step) can write it again."""
    kept = checkpointing.checkpoint_dirs(out)
    return EMOError(f"could not write {what} ({e.strerror or e}); nothing half-written was left there"
                    + (f". The run's last checkpoint {kept[-1]} is complete: free disk space and rerun the same "
                       "command with --resume latest to write it" if kept else ""))


def _save_model(model, folder: Path) -> Path:
    """save_native into a temporary folder, then renamed into place (a failure leaves the old model/ intact)."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_native(model, tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:
        return math.nan


def run_stage(stage: int, data, init, out, steps: int, dataset=None, on_step=None, **opts) -> dict:
    """Python entry point (the learning check calls it): trains `stage` on DATA from `init` into `out` for
    `steps` steps. opts: any TrainConfig field (batch, frames, motion_frames, resolution, lr, save_every, resume,
    seed, lora, vae, audio_encoder, drop_audio, ...). Returns what `run` returns."""
    cfg = TrainConfig(stage=int(stage), data=str(data), init=str(init), out=str(out), steps=int(steps), **opts)
    return run(cfg, dataset=dataset, on_step=on_step)
