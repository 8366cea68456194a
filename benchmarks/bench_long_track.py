"""Peak RAM of a long-track render, in real ComfyUI (the server process) and on the command line.

    # ComfyUI: a running server whose custom_nodes holds this pack and whose models/emo/ holds CHECKPOINT
    python benchmarks/bench_long_track.py comfyui --comfy-dir /path/to/ComfyUI --pid SERVER_PID \
        --seconds 30 600 --picture 1920x1080 --fps 25 [--checkpoint tiny] [--workflow emo_long_track_upscale]
    # the CLI (render with paste-back at the picture's full size)
    python benchmarks/bench_long_track.py cli --seconds 30 600 --picture 1920x1080 --fps 25 [--model tiny-random]

For each length it writes a portrait of the given size (the example face in a larger canvas) and a track of that
length (the example speech repeated) into ComfyUI's input folder (or a temp folder for the CLI), renders it through
the streamed path (`example_workflows/api/emo_long_track.json`: Sampler -> Paste Back -> Video Combine by VIDEO; or
`--workflow emo_long_track_upscale`: the same through EMO Frame Batches and an upscaler, one queued run per batch, all
of them measured) and prints the peak resident memory during the render: for ComfyUI sampled from /proc/PID/status
every 0.1 s, for the CLI the child's maximum RSS (getrusage). The frames of the mp4 are counted to check that every
frame is there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_inputs(folder: Path, seconds: float, size: tuple[int, int], stem: str) -> tuple[Path, Path]:
    from PIL import Image
    from emo_model.media.audio import load_audio
    from emo_model.media.image import example_portrait
    w, h = size
    canvas = np.full((h, w, 3), 90, np.uint8)
    face = example_portrait()
    side = min(512, h, w)
    face = np.asarray(Image.fromarray(face).resize((side, side)))
    y, x = (h - side) // 2, (w - side) // 2
    canvas[y:y + side, x:x + side] = face
    picture = folder / f"{stem}.png"
    Image.fromarray(canvas).save(picture)
    wav, sr = load_audio(speech_file())
    reps = math.ceil(seconds * sr / wav.shape[1])
    track = np.tile(wav.numpy(), (1, reps))[:, :int(seconds * sr)]
    audio = folder / f"{stem}.wav"
    write_wav(audio, track, sr)
    return picture, audio


def speech_file() -> Path:
    for p in (ROOT / "assets" / "speech.wav",):
        if p.is_file():
            return p
    raise FileNotFoundError("the example speech.wav is not in the repo")


def write_wav(path, wave, rate):
    import av
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=rate, layout=layout)
        for start in range(0, wave.shape[1], rate * 10):
            chunk = wave[:, start:start + rate * 10]
            pcm = (np.clip(chunk, -1, 1).T.reshape(1, -1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="s16", layout=layout)
            frame.sample_rate, frame.pts = rate, start
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def rss_peak_sampler(pid: int):
    """Start sampling VmRSS of `pid`; returns stop() -> peak in MiB."""
    peak, done = [0], threading.Event()

    def loop():
        while not done.is_set():
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.1)
    t = threading.Thread(target=loop, daemon=True)
    t.start()

    def stop():
        done.set()
        t.join()
        return peak[0] / 1024
    return stop


def run_comfyui(args, seconds):
    comfy = Path(args.comfy_dir)
    stem = f"bench_{int(seconds)}s"
    picture, audio = make_inputs(comfy / "input", seconds, args.picture, stem)
    prompt = json.loads((ROOT / "example_workflows" / "api" / f"{args.workflow}.json").read_text())
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "LoadImage":
            inputs["image"] = picture.name
        elif kind == "LoadAudio":
            inputs["audio"] = audio.name
        elif kind == "EMOLoadModels":
            inputs["checkpoint"] = args.checkpoint
        elif kind == "EMOAudioEncode":
            inputs["fps"] = float(args.fps)
        elif kind == "EMOSampler":
            inputs["steps"] = args.steps
        elif kind == "EMOVideoCombine":
            inputs["filename_prefix"] = f"bench/{stem}"
    stop = rss_peak_sampler(args.pid)
    t0 = time.time()
    body = json.dumps({"prompt": prompt}).encode()
    answer = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{args.server}/prompt", body, {"Content-Type": "application/json"})).read())
    pid = answer["prompt_id"]
    while True:
        history = json.loads(urllib.request.urlopen(f"{args.server}/history/{pid}").read())
        if pid in history and history[pid].get("status", {}).get("status_str") == "error":
            raise RuntimeError(json.dumps(history[pid]["status"])[:2000])
        if pid in history and history[pid].get("status", {}).get("completed") is not None:
            break
        time.sleep(1)
    runs = 1
    if any(n["class_type"] == "EMOFrameBatches" for n in prompt.values()):
        pid, runs = wait_for_requeued_runs(args.server, pid)
        history = json.loads(urllib.request.urlopen(f"{args.server}/history/{pid}").read())
    wall = time.time() - t0
    peak = stop()
    if runs > 1:
        print(f"  {runs} queued runs (EMO Frame Batches)")
    outputs = history[pid]["outputs"]
    saved = next(v["images"][0] for v in outputs.values() if "images" in v)
    mp4 = comfy / "output" / saved["subfolder"] / saved["filename"]
    return peak, wall, mp4


def wait_for_requeued_runs(server: str, first: str) -> tuple[str, int]:
    """EMO Frame Batches queues the workflow again for each batch: wait until the queue stays empty, then return the
    last run's prompt id and the number of runs (each must have succeeded)."""
    empty = 0
    while empty < 3:
        queue = json.loads(urllib.request.urlopen(f"{server}/queue").read())
        empty = 0 if queue["queue_running"] or queue["queue_pending"] else empty + 1
        time.sleep(2)
    history = json.loads(urllib.request.urlopen(f"{server}/history?max_items=100000").read())
    start = history[first]["prompt"][0]
    runs = sorted((v["prompt"][0], k) for k, v in history.items() if v["prompt"][0] >= start)
    bad = [k for _, k in runs if history[k]["status"]["status_str"] != "success"]
    if bad:
        raise RuntimeError(json.dumps(history[bad[0]]["status"])[:2000])
    return runs[-1][1], len(runs)


def run_cli(args, seconds):
    folder = Path(tempfile.mkdtemp(prefix="emo_bench_"))
    try:
        picture, audio = make_inputs(folder, seconds, args.picture, f"bench_{int(seconds)}s")
        out = folder / "out.mp4"
        cmd = [sys.executable, "-m", "emo_model", "render", "--image", str(picture), "--audio", str(audio),
               "--model", args.model, "--out", str(out), "--fps", str(args.fps), "--steps", str(args.steps)]
        t0 = time.time()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if peak <= before / 1024:
            print("  (note: an earlier child had a higher peak; run one length per invocation for exact numbers)")
        wall = time.time() - t0
        kept = ROOT / "benchmarks" / f"_last_{out.name}"
        shutil.copy(out, kept)
        return peak, wall, kept
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["comfyui", "cli"])
    p.add_argument("--seconds", type=float, nargs="+", default=[30, 600])
    p.add_argument("--picture", default="1920x1080", help="WxH of the portrait (paste-back size)")
    p.add_argument("--fps", type=float, default=25)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--comfy-dir")
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--pid", type=int)
    p.add_argument("--checkpoint", default="tiny")
    p.add_argument("--workflow", default="emo_long_track", help="ComfyUI: which example_workflows/api/ prompt")
    p.add_argument("--model", default="tiny-random")
    args = p.parse_args()
    args.picture = tuple(int(v) for v in args.picture.lower().split("x"))
    from emo_model.media.video import probe
    print(f"{args.mode}: picture {args.picture[0]}x{args.picture[1]}, {args.fps:g} fps, {args.steps} step(s)")
    for seconds in args.seconds:
        peak, wall, mp4 = (run_comfyui if args.mode == "comfyui" else run_cli)(args, seconds)
        info = probe(mp4)
        print(f"{seconds:7.0f} s track: peak RSS {peak:8.0f} MiB, {wall:7.0f} s wall, {info['frames']} frames "
              f"(expected {math.ceil(seconds * args.fps)}), audio {info['audio_duration']:.2f} s")


if __name__ == "__main__":
    main()
