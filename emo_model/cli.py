"""Command line: `python -m emo_model render | make-tiny | convert | download`."""
import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import torch

from .errors import EMOError, EMOInputError

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _device(name: str) -> str:
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")


def _dtype(name: str, device: str):
    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return DTYPES[name]


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (as logging's own last-resort handler does)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Concise(logging.Formatter):
    """`note: ...` for INFO, `warning: ...` / `error: ...` above: one line each, like the CLI's own messages."""

    def format(self, record):
        level = "note" if record.levelno <= logging.INFO else record.levelname.lower()
        return f"{level}: {record.getMessage()}"


def setup_logging() -> None:
    """Show the pack's INFO lines (each fallback it takes, said once) on stderr; other libraries keep their own
    settings. Safe to call more than once."""
    pack = logging.getLogger(__package__)
    if not any(getattr(h, "_emo_cli", False) for h in pack.handlers):
        handler = _Stderr()
        handler._emo_cli = True
        handler.setFormatter(_Concise())
        pack.addHandler(handler)
    pack.setLevel(logging.INFO)


def _existing(path, flag: str, what: str, folder_ok: bool = False) -> None:
    """Refuse a missing input, or a folder where a file is expected, before anything slow happens."""
    if os.path.isdir(path) and not folder_ok:
        raise EMOInputError(f"{flag} {path} is a folder: give {what}")
    if not os.path.exists(path):
        raise EMOInputError(f"{flag} {path} not found: give {what}")


def check_render_inputs(a) -> Path:
    """Every path of `render` checked before the model is built (a typo costs no waiting); returns the output
    path to write (the next free name when --out exists and --overwrite is not given)."""
    from .faces.pose import HOW
    from .media.audio import AUDIO_FORMATS
    from .media.image import IMAGE_FORMATS
    from .media.video import check_output_path, free_name
    if a.image != "example":
        _existing(a.image, "--image", f"one picture file ({IMAGE_FORMATS}), or 'example'")
    _existing(a.audio, "--audio", f"one sound file ({AUDIO_FORMATS})")
    if a.pose is not None:
        _existing(a.pose, "--pose", HOW, folder_ok=True)
    if a.detector_file is not None:
        _existing(a.detector_file, "--detector-file", "the .onnx file of YuNet or SCRFD")
    if a.model != "tiny-random":
        _existing(a.model, "--model", "a model folder or file (README: 'Where model files go'), or 'tiny-random'",
                  folder_ok=True)
    check_output_path(a.out, [p for p in (a.image, a.audio, a.pose) if p != "example"])
    out = Path(a.out)
    if out.exists() and not a.overwrite:  # never replace a file the user has: take the next free name
        out = Path(free_name(out))
        logger.info("%s exists and is kept; writing %s (--overwrite replaces it)", a.out, out)
    return out


def _threads(model, device: str) -> None:
    """CPU: a toy-size model (tiny-random) runs on one thread. Its ops are microseconds long, and splitting them
    over cores costs more in waiting than it gives (benchmarks/README.md: 17x the CPU time on a busy 2-core
    machine); real models keep torch's default."""
    if device == "cpu" and sum(p.numel() for p in model.backbone.parameters()) < 5_000_000:
        torch.set_num_threads(1)


def _whole_image(a) -> bool | None:
    """--whole-image / --no-whole-image as given; unset: None (the model decides) unless a detector was named."""
    if a.whole_image is None and (a.detector != "auto" or a.detector_file):
        return False
    return a.whole_image


def cmd_render(a) -> int:
    out = check_render_inputs(a)
    from tqdm import tqdm

    from .formats.load import load_model
    from .render import render
    device = _device(a.device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes clip after clip: let cuDNN pick its fastest kernels
    if a.model == "tiny-random":
        logger.info("--model tiny-random is a tiny model with random weights: the video is noise. It shows that "
                    "everything runs; use a real model (README, 'Where model files go') for a real result.")
    out.parent.mkdir(parents=True, exist_ok=True)  # the folder the user named
    model = load_model(a.model, device=device, dtype=_dtype(a.dtype, device))
    if a.lora:
        from .train.lora import apply_lora, parse_lora_arg
        apply_lora(model, *parse_lora_arg(a.lora))
    _threads(model, device)
    if a.compile:  # the first clip pays for compiling; worth it for long tracks on a GPU (see benchmarks/)
        model.backbone.compile()
        if model.vae is not None:
            model.vae.decoder.compile()
    bar = None  # made at the first step, so that the notes printed before sampling are not cut by it

    def progress(p):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=p.total_steps, unit="step", desc="EMO", dynamic_ncols=True)
        bar.set_postfix_str(f"clip {p.clip + 1}/{p.num_clips}")
        bar.update(p.step - bar.n)

    try:
        s = render(model, a.image, a.audio, out, steps=a.steps, seed=a.seed, fps=a.fps, audio_cfg=a.audio_cfg,
                   ref_cfg=a.ref_cfg, speed=a.speed, frames_per_clip=a.frames_per_clip,
                   motion_frames=a.motion_frames, framing=a.framing, detector=a.detector,
                   detector_file=a.detector_file, face_index=a.face_index, margin=a.margin,
                   whole_image=_whole_image(a), identity=a.identity, pose=a.pose,
                   region_weights=(a.pose_weight, a.face_weight, a.lip_weight), motion_drop=a.motion_drop,
                   speed_cfg=a.speed_cfg,
                   progress=progress,
                   overwrite=a.overwrite)
    finally:
        if bar is not None:
            bar.close()
    w, h = s["size"]
    print(f"wrote {s['out']}: {s['frames']} frames at {float(s['fps']):.3f} fps ({s['duration']:.2f} s of audio), "
          f"{w}x{h}, in {s['seconds']:.1f} s")
    return 0


def cmd_make_tiny(a) -> int:
    from .formats.load import make_tiny
    path = make_tiny(Path(a.dir), seed=a.seed)
    print(f"wrote a tiny random EMO model to {path} (its output is noise; it is for tests and trying the nodes)")
    return 0


def cmd_convert(a) -> int:
    import json

    from .formats.load import convert
    dst = convert(a.src, a.dst, copy_files=not a.link, accelerated=a.accelerated or None)
    meta = json.loads((dst / "config.json").read_text())
    print(f"converted {meta['model']['kind']} model {a.src} -> native format in {dst}")
    if "vae" not in meta["files"]:
        print("note: the source has no VAE, so neither has the converted folder: put sd-vae-ft-mse (diffusers layout) "
              f"in {dst}/vae or beside it, or choose a VAE when loading", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m emo_model", description="EMO talking-head video from a portrait and a track.")
    sub = p.add_subparsers(dest="cmd", title="commands", metavar="COMMAND")
    r = sub.add_parser("render", help="render a video")
    r.add_argument("--image", required=True, help="portrait (any framing), or 'example' for scikit-image's astronaut")
    r.add_argument("--audio", required=True, help="speech or singing track (wav, mp3, flac, m4a, or a video with sound)")
    r.add_argument("--model", required=True, help="model folder or file (native, Hallo, EchoMimic) or 'tiny-random'")
    r.add_argument("--out", required=True, help="the .mp4 to write (.m4v, .mov, .mkv also work; its folder is "
                                                "created; an existing file is kept and the video gets the next free "
                                                "name, unless --overwrite; an input is never overwritten)")
    r.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    r.add_argument("--steps", type=int, help="denoising steps (default: the checkpoint's)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--fps", type=float, help="frame rate, e.g. 25 or 29.97 (default: the checkpoint's)")
    r.add_argument("--audio-cfg", type=float, help="audio guidance scale (1.0 = off)")
    r.add_argument("--ref-cfg", type=float, help="reference guidance scale (1.0 = off)")
    r.add_argument("--speed", type=float, help="head-motion speed (checkpoints with speed layers; talking 0.1-1.0, singing 1.0-1.3)")
    r.add_argument("--speed-cfg", type=float,
                   help="speed guidance (checkpoints with speed layers): above 1 the head follows --speed more "
                        "strongly, relative to a still head; 1 = off (default: the checkpoint's)")
    for region, what in (("pose", "background / head pose"), ("face", "face (expression)"), ("lip", "lips")):
        r.add_argument(f"--{region}-weight", type=float, default=1.0,
                       help=f"Hallo: weight of the audio in the {what} region (Hallo's {region}_weight)")
    r.add_argument("--frames-per-clip", type=int)
    r.add_argument("--motion-frames", type=int)
    r.add_argument("--motion-drop", type=float,
                   help="fraction of the motion frames' pixels outside the face box greyed before each clip (default: "
                        "the checkpoint's: Hallo2 0.25, others 0 = off)")
    r.add_argument("--framing", choices=["full", "crop"], default="full",
                   help="full: the video at the picture's own framing (face pasted back); crop: the square face crop")
    r.add_argument("--detector", default="auto", help="face detector: auto, lbp (built-in), yunet, scrfd")
    r.add_argument("--detector-file", help="ONNX file of the YuNet or SCRFD face detector")
    r.add_argument("--face-index", type=int, default=0, help="which face when there are several (0 = largest)")
    r.add_argument("--margin", type=float, default=0.5, help="space around the face in the crop, as a fraction of the face size")
    r.add_argument("--whole-image", action=argparse.BooleanOptionalAction, default=None,
                   help="no face detection: animate a centred square of the picture (the default for a model trained "
                        "on `prepare-data --whole-frame` data, unless --detector/--detector-file is given); "
                        "--no-whole-image: always detect the face")
    r.add_argument("--identity", default="auto",
                   help="Hallo identity tokens: auto (ArcFace glintr100.onnx + scrfd_10g_bnkps.onnx from Hallo's "
                        "pretrained_models/face_analysis/models/ when present, else Hallo's zero embedding), zero, or "
                        "the path of glintr100.onnx or its folder")
    r.add_argument("--pose", help="EchoMimic _pose models: EchoMimic's pose folder (per-frame landmark .pkl/.npy), or a "
                                  "video / folder of drawn pose frames, one per video frame")
    r.add_argument("--lora", help="a LoRA from `train --lora`, as FILE or FILE:STRENGTH (default strength 1.0)")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone and the VAE decoder (slow first clip; for long renders on a GPU)")
    r.add_argument("--device", default="auto")
    r.add_argument("--dtype", choices=["auto", *DTYPES], default="auto")
    r.set_defaults(func=cmd_render)
    t = sub.add_parser("make-tiny", help="write a tiny random model in the native format")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_make_tiny)
    c = sub.add_parser("convert", help="convert a Hallo or EchoMimic checkpoint to the native format")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--link", action="store_true", help="reference the VAE and audio encoder instead of copying them")
    c.add_argument("--accelerated", action="store_true", help="EchoMimic: take the _acc (6-step) files")
    c.set_defaults(func=cmd_convert)
    from .download import add_parser as add_download  # the `download` subcommand lives in emo_model/download/
    add_download(sub)
    from .train.prepare import add_parser as add_prepare_data
    add_prepare_data(sub)
    from .train.cli import add_train_parser
    add_train_parser(sub)
    a = p.parse_args(argv)
    if a.cmd is None:  # first contact: say what there is to do
        p.print_help()
        print("\nExample: python -m emo_model render --image example --audio assets/speech.wav --model tiny-random "
              "--out out/example.mp4\nHelp on one command: python -m emo_model render --help")
        return 2
    setup_logging()
    previous = signal.signal(signal.SIGTERM, _terminate)  # `kill` cleans up like Ctrl-C (no temporary file left)
    try:
        return a.func(a)
    except EMOError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted" + (": no video was written, and a file already at --out is as it was"
                               if a.cmd == "render" else ""), file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame):
    raise KeyboardInterrupt
