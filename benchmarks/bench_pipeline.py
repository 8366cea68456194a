"""Speed and memory of a whole render: audio track + portrait -> frames -> mp4, timed phase by phase.

The full-size architecture (SD1.5-sized ReferenceNet and backbone, sd-vae-ft-mse-sized VAE, wav2vec2-base-sized audio
encoder) is built with random weights: speed does not depend on the weight values, and nothing is downloaded.

    python benchmarks/bench_pipeline.py --tiny                          # CPU smoke check (toy sizes, seconds)
    python benchmarks/bench_pipeline.py --device cuda --dtype fp16      # full size, both scenarios
    python benchmarks/bench_pipeline.py --device cuda --dtype fp16 --scenario distilled --seconds 8 --compile

Scenarios: "hallo" = 40 DDIM steps, audio and reference guidance 3.5 (Hallo's settings; 2 backbone passes per step);
"distilled" = 6 steps, no guidance (1 pass, EchoMimic-accelerated style). --steps / --audio-cfg / --ref-cfg override.

Phase times come from hooks on the modules (CUDA events on a GPU, read after the render, so no sync is added inside
the step loop): audio = `encode_audio`, refnet = ReferenceNet calls (reference once + motion frames per clip),
backbone = denoising steps, vae_dec / vae_enc = VAE decode / encode (encode: reference + motion frames), write = H.264
muxing (PyAV, on the render's writer thread, so it overlaps the sampling of the next clip and is not on the critical
path unless it is the slower of the two), other = the rest (conditions, scheduler, transfers). s/frame and fps use
the wall time of the render (audio encoding through the closed mp4), without model building and the warm-up render.
"""
import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emo_model import EMOConfig, EMOModel, EMOPipeline  # noqa: E402
from emo_model.sampling.guidance import guidance_passes  # noqa: E402
from emo_model.render import render  # noqa: E402
from emo_model.media.video import VideoWriter  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCENARIOS = {"hallo": dict(steps=40, audio_cfg=3.5, ref_cfg=3.5), "distilled": dict(steps=6, audio_cfg=1.0, ref_cfg=1.0)}
PHASES = ("audio", "refnet", "backbone", "vae_dec", "vae_enc", "write")
HOST_PHASES = ("write",)  # CPU work (on the render's writer thread): timed with perf_counter, not CUDA events


# ---------------------------------------------------------------------------------------------------- models
def build_full() -> EMOModel:
    """EMOModel(EMOConfig()) at SD1.5 size with a full-size VAE (sd-vae-ft-mse config) and wav2vec2-base, random."""
    from diffusers import AutoencoderKL
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from emo_model.audio.wav2vec2 import Wav2VecAudioEncoder
    model = EMOModel(EMOConfig())
    model.vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                              sample_size=512, down_block_types=["DownEncoderBlock2D"] * 4,
                              up_block_types=["UpDecoderBlock2D"] * 4)
    model.audio_encoder = Wav2VecAudioEncoder(Wav2Vec2Model(Wav2Vec2Config()))
    return model


def build_tiny() -> EMOModel:
    """The tiny random model of the tests (checkpoint.make_tiny), loaded back from a temporary folder."""
    from emo_model import load_model, make_tiny
    with tempfile.TemporaryDirectory(prefix="emo-bench-") as d:
        return load_model(make_tiny(Path(d) / "tiny"))


# ---------------------------------------------------------------------------------------------------- timing
class PhaseTimer:
    """Accumulates time spent in wrapped modules/functions. On CUDA it records events and sums them in `totals()`
    (one sync at the end); on the CPU it uses perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: dict[str, list] = {p: [] for p in PHASES}
        self.depth: dict[str, int] = {p: 0 for p in PHASES}

    def _now(self, phase=None):
        if self.cuda and phase not in HOST_PHASES:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def start(self, phase):
        self.depth[phase] += 1
        if self.depth[phase] == 1:
            self.spans[phase].append([self._now(phase), None])

    def stop(self, phase):
        self.depth[phase] -= 1
        if self.depth[phase] == 0:
            self.spans[phase][-1][1] = self._now(phase)

    def hook_module(self, module, phase):
        module.register_forward_pre_hook(lambda *a: self.start(phase))
        module.register_forward_hook(lambda *a: self.stop(phase))

    def wrap(self, obj, name, phase):
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            self.start(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stop(phase)

        setattr(obj, name, timed)

    def reset(self):
        for p in PHASES:
            self.spans[p].clear()

    def totals(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
        return {p: sum(a.elapsed_time(b) / 1000 if isinstance(a, torch.cuda.Event) else b - a for a, b in s)
                for p, s in self.spans.items()}


class PeakRSS:
    """Peak resident memory of this process while active, sampled every 5 ms from /proc (ru_maxrss elsewhere)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __enter__(self):
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


# ---------------------------------------------------------------------------------------------------- render
def inputs(res: int, seconds: float, seed: int = 0):
    """A random 16 kHz mono track [1, samples] and a random uint8 portrait [res, res, 3]."""
    g = np.random.default_rng(seed)
    wave = torch.from_numpy(g.standard_normal((1, int(16000 * seconds))).astype(np.float32) * 0.1)
    image = (g.random((res, res, 3)) * 255).astype(np.uint8)
    return wave, image


def render_clip(model, wave, image, out_path, steps, audio_cfg, ref_cfg, fps=25) -> int:
    """The CLI's streaming render (`emo_model.render.render`, square crop written as is); returns frames written."""
    return render(model, image, (wave, 16000), out_path, steps=steps, audio_cfg=audio_cfg, ref_cfg=ref_cfg, fps=fps,
                  framing="crop", whole_image=True)["frames"]


def run(args, model, timer, device, name, steps, audio_cfg, ref_cfg, out_dir) -> dict:
    res = model.config.resolution
    if args.warmup:  # one short clip with 1 step: kernels, cuDNN autotuning, torch.compile
        wave, image = inputs(res, model.config.frames_per_clip / 25)
        render_clip(model, wave, image, out_dir / "warmup.mp4", 1, audio_cfg, ref_cfg)
    wave, image = inputs(res, args.seconds)
    timer.reset()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as ram:
        t0 = time.perf_counter()
        frames = render_clip(model, wave, image, out_dir / f"{name}.mp4", steps, audio_cfg, ref_cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    split = timer.totals()
    split["other"] = max(0.0, wall - sum(split.values()))
    return dict(name=name, res=res, steps=steps, passes=len(guidance_passes(audio_cfg, ref_cfg)), frames=frames,
                wall=wall, spf=wall / frames, fps=frames / wall, ram=ram.peak / 2**30,
                vram=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
                split=split)


def sync_check(model, steps, audio_cfg, ref_cfg, out_dir) -> dict:
    """One short render with `torch.cuda.set_sync_debug_mode("warn")`: every operation that makes the host wait for
    the GPU raises a warning at the Python line that caused it. Returns {file:line: count}; the lines inside the
    step loops (`GuidedDDIM.denoise`, `sample_windows`) should never appear (decoding a finished clip to the host
    is expected, once per clip)."""
    import warnings
    res = model.config.resolution
    wave, image = inputs(res, 2 * model.config.frames_per_clip / 25)
    seen: dict[str, int] = {}
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            render_clip(model, wave, image, out_dir / "synccheck.mp4", steps, audio_cfg, ref_cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            key = f"{Path(w.filename).name}:{w.lineno}"
            seen[key] = seen.get(key, 0) + 1
    return seen


def table(rows) -> str:
    cols = ["scenario", "res", "steps", "passes", "frames", "s/frame", "fps", "VRAM GiB", "RAM GiB"] + \
           [f"{p} %" for p in PHASES + ("other",)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [r["name"], f"{r['res']}²", r["steps"], r["passes"], r["frames"], f"{r['spf']:.3f}", f"{r['fps']:.2f}",
                "-" if r["vram"] != r["vram"] else f"{r['vram']:.2f}", f"{r['ram']:.2f}"]
        vals += [f"{100 * r['split'][p] / r['wall']:.1f}" for p in PHASES + ("other",)]
        lines.append("| " + " | ".join(str(v) for v in vals) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny test model (CPU smoke check) instead of full size")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=DTYPES, default=None, help="default: fp16 on cuda, fp32 on cpu")
    ap.add_argument("--scenario", choices=list(SCENARIOS) + ["all"], default="all")
    ap.add_argument("--seconds", type=float, default=None, help="audio length (default 2.0; 1.0 with --tiny)")
    ap.add_argument("--steps", type=int, default=None, help="override the scenario's DDIM steps")
    ap.add_argument("--audio-cfg", type=float, default=None)
    ap.add_argument("--ref-cfg", type=float, default=None)
    ap.add_argument("--resolution", type=int, default=None, help="pixel side (default: the config's, 512 full size)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone UNet and the VAE decoder")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--check-syncs", action="store_true",
                    help="CUDA: also run a short render in sync-debug mode and list the lines that made the host wait")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None, help="keep the mp4 files in this folder (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the CLI does
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    args.seconds = args.seconds or (1.0 if args.tiny else 2.0)

    t = time.perf_counter()
    model = build_tiny() if args.tiny else build_full()
    if args.resolution:
        model.config.resolution = args.resolution
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    print(f"built {'tiny' if args.tiny else 'full-size'} model in {time.perf_counter() - t:.1f} s: "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params (+ VAE "
          f"{sum(p.numel() for p in model.vae.parameters()) / 1e6:.0f}M, audio "
          f"{sum(p.numel() for p in model.audio_encoder.parameters()) / 1e6:.0f}M), {device}, {dtype}", flush=True)
    if args.compile:
        model.backbone.compile()
        model.vae.decoder.compile()
    timer = PhaseTimer(device)  # benchmark-only wrappers: class methods of this process, hooks on this model
    timer.wrap(EMOPipeline, "encode_audio", "audio")
    timer.wrap(VideoWriter, "write", "write")
    timer.hook_module(model.reference_net, "refnet")
    timer.hook_module(model.backbone, "backbone")
    timer.wrap(model.vae, "decode", "vae_dec")
    timer.wrap(model.vae, "encode", "vae_enc")

    rows = []
    with tempfile.TemporaryDirectory(prefix="emo-bench-") as tmp:
        out_dir = args.out or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in SCENARIOS if args.scenario == "all" else [args.scenario]:
            s = SCENARIOS[name]
            steps = args.steps or (s["steps"] if not args.tiny else min(s["steps"], 8))
            audio_cfg = s["audio_cfg"] if args.audio_cfg is None else args.audio_cfg
            ref_cfg = s["ref_cfg"] if args.ref_cfg is None else args.ref_cfg
            rows.append(run(args, model, timer, device, name, steps, audio_cfg, ref_cfg, out_dir))
            if args.check_syncs and device.type == "cuda":
                syncs = sync_check(model, steps, audio_cfg, ref_cfg, out_dir)
                print(f"{name}: host<->GPU syncs by source line (steps {steps}, 2 clips): " +
                      (", ".join(f"{k} x{v}" for k, v in sorted(syncs.items())) or "none"), flush=True)
            elif args.check_syncs:
                print("--check-syncs needs a CUDA device; skipped", flush=True)
            r = rows[-1]
            print(f"{name}: {r['frames']} frames in {r['wall']:.1f} s  " +
                  "  ".join(f"{k} {v:.2f}s" for k, v in r["split"].items()), flush=True)
    print(f"\n{'tiny' if args.tiny else 'full-size'}, {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"{str(dtype).removeprefix('torch.')}, {args.seconds:g} s of audio at 25 fps{', compiled' if args.compile else ''}")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
