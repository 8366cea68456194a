"""Training throughput: steps/s and peak memory of each EMO stage, on the tiny model (CPU) or the full-size one (GPU).

Tiny (default): the real architecture at toy size (`tiny` init, 64 px) on an in-memory talking-face set
(tests/train/tiny_talking_set.py). Full (--full, GPU): SD1.5-sized EMO model with random weights at --resolution, stage 2
with --lora RANK or full training (random weights: speed does not depend on their values; nothing is downloaded).

    python benchmarks/bench_train.py --threads 1                         # CPU tiny, stages 1-3
    python benchmarks/bench_train.py --full --resolution 512 --lora 64   # GPU: a 512² stage-2 LoRA step
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "train"))


def tiny(args):
    from tiny_talking_set import TinyTalkingSet

    from emo_model import make_tiny
    from emo_model.train import run_stage
    work = Path(tempfile.mkdtemp(prefix="emo-bench-train-"))
    model = make_tiny(work / "tiny")
    rows = []
    for stage, f, n, b in ((1, 1, 0, 4), (2, args.frames, args.motion_frames, 1), (3, args.frames, args.motion_frames, 1)):
        init = "tiny" if stage == 1 else model
        ds = TinyTalkingSet(frames=f, motion_frames=n, length=max(24, f + n + 2))
        kw = {} if stage == 1 else dict(frames=f, motion_frames=n)
        marks = []  # (wall, CPU time of this process) after each step: the first step is the warm-up
        r = run_stage(stage, "memory", init, work / f"run{stage}", args.steps + 1, dataset=ds, batch=b, device="cpu",
                      save_every=10**6, log_every=10**6,
                      on_step=lambda step, loss: marks.append((time.perf_counter(), time.process_time())), **kw)
        wall, cpu = (marks[-1][i] - marks[0][i] for i in (0, 1))
        rows.append(dict(stage=stage, batch=b, frames=f, motion_frames=n, resolution=64,
                         steps_per_s=round(args.steps / wall, 3), s_per_step=round(wall / args.steps, 2),
                         cpu_s_per_step=round(cpu / args.steps, 2), peak_rss_mb=round(r["peak_memory_mb"])))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def full(args):
    """One SD1.5-sized stage-2 training step (LoRA or full) on the GPU, peak memory measured."""
    from emo_model.config import EMOConfig
    from emo_model.models.model import EMOModel
    from emo_model.train.forward import TrainBatch, denoise
    from emo_model.train.lora import add_lora
    from emo_model.train.losses import NoiseSchedule
    from emo_model.train.stages import set_trainable
    dev = "cuda"
    cfg = EMOConfig(resolution=args.resolution)
    model = EMOModel(cfg).to(dev)
    if args.lora:
        add_lora(model, args.lora)
        model.to(dev)
    else:
        set_trainable(model, 2)
    dtype = torch.bfloat16
    if args.lora:  # as `train --lora R --mixed-precision bf16` holds them
        from emo_model.train.lora import frozen_to
        frozen_to(model, dtype)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    f, n, s = args.frames, args.motion_frames, cfg.latent_size
    sched = NoiseSchedule(cfg.scheduler)
    times = []
    torch.cuda.reset_peak_memory_stats()
    for i in range(args.steps + 1):
        batch = TrainBatch(latents=torch.randn(1, 4, f, s, s), reference=torch.randn(1, 4, s, s),
                           face_mask=torch.ones(1, 1, 1, args.resolution, args.resolution),
                           motion=torch.randn(1, n, 4, s, s) if n else None,
                           audio=torch.randn(1, f, 5, 12, 768), identity=torch.zeros(1, 512)).to(dev)
        t = torch.randint(0, 1000, (1,))
        noise = torch.randn_like(batch.latents)
        noisy, target = sched.noisy_and_target(batch.latents, noise, t)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype):
            pred = denoise(model, batch, noisy, t.to(dev))
        loss = sched.loss(pred, target, t, 5.0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    row = dict(mode=f"stage 2 {'LoRA r' + str(args.lora) if args.lora else 'full'}"
                    f"{' checkpointing' if args.gradient_checkpointing else ''}", resolution=args.resolution,
               frames=f, motion_frames=n, batch=1, s_per_step=round(sum(times) / len(times), 3),
               peak_vram_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2), gpu=torch.cuda.get_device_name())
    print(json.dumps(row), flush=True)
    return [row]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--lora", type=int)
    p.add_argument("--gradient-checkpointing", action="store_true", help="--full: as `train --gradient-checkpointing`")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--motion-frames", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed steps (one more, untimed, warms up)")
    p.add_argument("--threads", type=int)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    full(a) if a.full else tiny(a)


if __name__ == "__main__":
    main()
