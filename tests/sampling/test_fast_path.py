"""Fast paths against reference paths on the tiny random model (CPU): half precision vs fp32, guidance passes batched
vs one by one, ReferenceNet work per video, and memory that stays flat for long tracks (the CLI's streaming render).

Everything runs with one torch thread (conftest.py): on a shared 2-core machine OpenMP's spinning threads make these tiny models
10-30x slower with 2 threads than with 1.
"""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emo_model import EMOPipeline, load_model
from emo_model.sampling.guidance import guidance_passes
from emo_model.sampling.motion_frames import MotionFrames

# A 5-minute track against a 30-second one (the check), at 1 fps so that the long track's 300 frames (75 clips)
# render in ~30 s on a shared CPU core; at 25 fps the same track is 1875 clips (~10 min here). The audio path (decode,
# wav2vec2 in 30 s chunks, resampling the features to the video rate, muxing) still sees the whole 5 minutes.
# Measured: peak RSS 522 MiB (30 s) vs 562 MiB (300 s), +7.6%. The excess is the track itself (19 MB of float32
# samples, held once: decoded into one buffer, mixed/resampled without a copy when already mono 16 kHz, shared with
# the mp4 writer) and the chunked audio encoding's transients; the clip loop is flat.
SHORT, LONG, FPS = 30.0, 300.0, 1


@pytest.fixture(scope="module")
def pipe64(tiny_dir):
    """float64: batching changes the order of float sums, and the random tiny model amplifies float32 rounding to
    ~2e-4 relative; in float64 that noise is ~1e-12, so any difference above 1e-5 is a real one."""
    return EMOPipeline(load_model(tiny_dir, dtype=torch.float64))


def _voice(seconds, sr=16000, seed=0):
    """[1, samples] a buzzy 180 Hz tone with a 3 Hz envelope and a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    return (0.3 * torch.sin(2 * math.pi * 180 * t) * (1 + torch.sin(2 * math.pi * 3 * t)) +
            0.02 * torch.randn(t.shape, generator=g))[None]


def _portrait(seed=1):
    return torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(seed))


def _ref(pipe):
    mask = torch.zeros(64, 64)
    mask[12:52, 16:48] = 1
    return pipe.encode_reference(_portrait(), mask)


# ---------------------------------------------------------------- half precision
# |frames - fp32 frames| on the 0..1 scale, 8 frames (2 clips, the second fed by the first's motion frames), 3 steps,
# 3 guidance passes. Measured on this tiny random model (x86 CPU, torch 2.13): fp16 mean 0.0020, p99 0.013, max 0.042;
# bf16 mean 0.030, p99 0.17, max 0.48 (bf16 keeps 8 mantissa bits and the random model amplifies rounding; for scale,
# the fp32 frames have std 0.17). Bounds are ~2.5x the measurement. A trained model is far better conditioned.
TOL = {torch.float16: dict(mean=0.005, p99=0.03), torch.bfloat16: dict(mean=0.075, p99=0.4)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_frames_close_to_fp32(tiny_dir, pipe, dtype):
    kw = dict(steps=3, seed=0, audio_cfg=2.0, ref_cfg=1.5)  # 3 guidance passes, 2 clips (motion frames carried)
    ref32 = torch.cat(list(pipe.sample(pipe.encode_audio(_voice(0.32), 16000, 25), _ref(pipe), **kw)))
    half = EMOPipeline(load_model(tiny_dir, dtype=dtype))
    out = torch.cat(list(half.sample(half.encode_audio(_voice(0.32), 16000, 25), _ref(half), **kw)))
    assert half.dtype == dtype and out.shape == ref32.shape
    d = (out.float() - ref32).abs()
    mean, p99 = d.mean().item(), d.flatten().quantile(0.99).item()
    print(dtype, "mean", mean, "p99", p99, "max", d.max().item())
    assert mean <= TOL[dtype]["mean"] and p99 <= TOL[dtype]["p99"], (mean, p99)


# ---------------------------------------------------------------- guidance passes: batched vs one by one
@pytest.mark.parametrize("first_clip,speed_cfg", [(True, 1.0), (False, 1.0), (False, 3.0)])
def test_batched_guidance_passes_match_one_by_one(pipe64, first_clip, speed_cfg):
    """One backbone call on all passes (what `sample` does) vs one call per pass, each with the conditions of that
    pass alone; outputs and the guided prediction sum_i w_i out_i agree to 1e-5 (relative to the output's scale).
    With speed guidance a fourth pass, still (the full pass at speed 0), joins the batch."""
    pipe = pipe64
    cfg, model = pipe.config, pipe.model
    f, n, s = cfg.frames_per_clip, cfg.motion_frames, cfg.latent_size
    passes = guidance_passes(2.0, 1.5, speed_cfg)  # uncond, ref-only, (still,) full
    assert len(passes) == (3 if speed_cfg == 1.0 else 4)
    ref = _ref(pipe)
    tokens = pipe.audio_tokens(pipe.encode_audio(_voice(0.4), 16000, 25), f, 2 * f)
    g = torch.Generator().manual_seed(3)
    motion = ref.latent.expand(n, -1, -1, -1) if first_clip else torch.randn(n, 4, s, s, generator=g).double()

    def conditions(passes):  # what `sample` builds for a clip: ReferenceNet features, motion frames, speed 0.7
        cache = pipe.conditions(ref, passes, speed=0.7)
        return cache.clip(tokens, n, MotionFrames(model, cache, pipe.vae, n, motion).features())

    weights = torch.tensor([w for _, w in passes], dtype=torch.float64).view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        together = conditions(passes)
        alone = [conditions([pw]) for pw in passes]
    for t in (999, 500, 20):
        x = torch.randn(1, 4, f, s, s, generator=g).double()
        with torch.no_grad():
            batched = model.backbone(x.expand(len(passes), -1, -1, -1, -1), t, together)
            single = torch.cat([model.backbone(x, t, c) for c in alone])
        scale = single.abs().max()
        for i in range(len(passes)):  # the passes' conditions differ, so a mix-up of rows could not go unseen
            for j in range(i):
                assert (single[i] - single[j]).abs().max() > 1e-3 * scale
        print(t, "max |batched - single| / scale", ((batched - single).abs().max() / scale).item())
        assert (batched - single).abs().max() <= 1e-5 * scale
        guided_b, guided_s = (batched * weights).sum(0), (single * weights).sum(0)
        assert (guided_b - guided_s).abs().max() <= 1e-5 * guided_s.abs().max()


# ---------------------------------------------------------------- ReferenceNet work per video
def test_reference_features_once_per_video(pipe):
    """The reference goes through ReferenceNet once per video (not per step or clip); motion frames once per clip.
    Nothing is kept between videos (a second video makes the reference's features again: one ReferenceNet pass,
    cheap next to the denoising, and no tensors outlive a run)."""
    n, f, steps = pipe.config.motion_frames, pipe.config.frames_per_clip, 3
    audio = pipe.encode_audio(_voice(0.48), 16000, 25)
    clips = math.ceil(audio.num_frames / f)
    assert clips == 3 and n > 0
    ref = _ref(pipe)
    calls = []
    hook = pipe.model.reference_net.register_forward_hook(
        lambda m, args, out: calls.append(args[0].shape[0] == 1 and torch.equal(args[0], ref.latent)))
    try:
        list(pipe.sample(audio, ref, steps=steps, audio_cfg=2.0, ref_cfg=1.5))
        first = list(calls)
        calls.clear()
        list(pipe.sample(audio, ref, steps=steps, audio_cfg=2.0, ref_cfg=1.5, seed=1))
    finally:
        hook.remove()
    assert first.count(True) == 1 and first[0]       # the reference alone, once, before the first clip
    assert first.count(False) == clips               # motion frames: one batch per clip, whatever the steps
    assert calls == first                            # second video: the same work again


# ---------------------------------------------------------------- memory of the streaming render
# The child runs the real CLI (`python -m emo_model render`) and reports RSS after each clip written (observing
# VideoWriter.write) and its peak RSS (VmHWM: the high-water mark of its own address space over its life: imports,
# model, render), so nothing of the test process or of an earlier render (allocator pools) is counted. (ru_maxrss
# would not do: it keeps the RSS of the forking pytest process, which may be larger.)
_CHILD = """
import json, os, sys
import torch
torch.set_num_threads(1)
from emo_model.media import video as video_writer
from emo_model.cli import main
rss, write = [], video_writer.VideoWriter.write
def observed(self, frames):
    write(self, frames)
    with open('/proc/self/statm') as f:
        rss.append(int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE'))
video_writer.VideoWriter.write = observed
rc = main(sys.argv[1:])
hwm = next(int(ln.split()[1]) * 1024 for ln in open('/proc/self/status') if ln.startswith('VmHWM:'))
print('RSS', json.dumps(dict(peak=hwm, per_clip=rss)))
sys.exit(rc)
"""


def _write_wav(path, seconds, sr=16000):
    """A 16-bit mono wav of _voice-like sound, written in 10 s pieces (the test's own memory stays small)."""
    import wave
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
        for start in range(0, int(seconds * sr), 10 * sr):
            t = np.arange(start, min(start + 10 * sr, int(seconds * sr))) / sr
            x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
            w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def _cli_render(tiny_dir, tmp_path, seconds, fps):
    """Peak RSS (bytes), RSS after each clip, wall seconds of `python -m emo_model render` on a `seconds` track."""
    from PIL import Image
    wav, img = tmp_path / f"voice{seconds:g}.wav", tmp_path / "face.png"
    _write_wav(wav, seconds)
    Image.fromarray((_portrait().numpy() * 255).astype(np.uint8)).save(img)
    args = ["render", "--image", str(img), "--audio", str(wav), "--model", str(tiny_dir), "--out",
            str(tmp_path / f"out{seconds:g}.mp4"), "--steps", "1", "--fps", str(fps), "--audio-cfg", "1",
            "--ref-cfg", "1", "--framing", "crop", "--whole-image", "--device", "cpu", "--dtype", "fp32"]
    # A fixed mmap threshold makes glibc hand freed large buffers back at once, so RSS follows live memory rather
    # than what the allocator keeps after the chunked audio encoding (without it: 565 vs 669 MiB, the same flat loop).
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    rss = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RSS ")).split(" ", 1)[1])
    return rss["peak"], rss["per_clip"], time.perf_counter() - t0


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc (Linux)")
def test_streaming_render_memory_flat_for_long_tracks(tiny_dir, tmp_path):
    short_peak, _, short_s = _cli_render(tiny_dir, tmp_path, SHORT, FPS)
    long_peak, per_clip, long_s = _cli_render(tiny_dir, tmp_path, LONG, FPS)
    half = per_clip[len(per_clip) // 2:]
    M = 2 ** 20
    print(f"short {SHORT:g} s: peak {short_peak / M:.1f} MiB ({short_s:.1f} s); long {LONG:g} s: peak "
          f"{long_peak / M:.1f} MiB ({long_s:.1f} s), {len(per_clip)} clips, RSS over the second half "
          f"{min(half) / M:.1f}..{max(half) / M:.1f} MiB; first clip {per_clip[0] / M:.1f}, max {max(per_clip) / M:.1f}")
    assert len(per_clip) == math.ceil(LONG * FPS / 4)  # one write per clip of the tiny model's 4 frames
    assert long_peak <= 1.10 * short_peak
    # flat loop: the RSS of the last clips is that of the middle ones (medians: the writer's worker thread moves
    # a MiB or two up and down); keeping each clip's decoded frames alone would add 7 MiB per clip here
    assert np.median(per_clip[-8:]) - np.median(half[:8]) <= 2 * M




# ---------------------------------------------------------------- copies of the model
def test_deepcopy_runs_on_its_own_context(pipe):
    """copy.deepcopy(model) (what a host app may do to keep a patched copy) gives a model that runs on its own
    weights: same output as the original, and changing the copy's weights changes only the copy."""
    import copy
    model = pipe.model
    twin = copy.deepcopy(model)
    cfg = pipe.config
    f, n, s = cfg.frames_per_clip, cfg.motion_frames, cfg.latent_size
    ref = _ref(pipe)
    passes = guidance_passes(2.0, 1.5)
    tokens = pipe.audio_tokens(pipe.encode_audio(_voice(0.2), 16000, 25), 0, f)
    motion = torch.randn(n, 4, s, s, generator=torch.Generator().manual_seed(5))
    x = torch.randn(1, 4, f, s, s, generator=torch.Generator().manual_seed(6)).expand(len(passes), -1, -1, -1, -1)
    with torch.no_grad():
        cache = pipe.conditions(ref, passes)
        conditions = cache.clip(tokens, n, MotionFrames(model, cache, pipe.vae, n, motion).features())
        a = model.backbone(x, 500, conditions)
        b = twin.backbone(x, 500, conditions)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        for p in twin.backbone.unet.down_blocks[0].motion_modules.parameters():
            p.add_(0.5)
        c = twin.backbone(x, 500, conditions)
        torch.testing.assert_close(model.backbone(x, 500, conditions), a, atol=1e-6, rtol=0)
    assert (c - a).abs().max() > 1e-3


def test_decoded_tail_on_device_matches_the_frames(pipe):
    """The motion frames are re-encoded from the decoded pixels still on the device: the kept tail equals the last
    frames handed out (as -1..1 pixels), also when it spans two decode slices (8 frames per slice here)."""
    s = pipe.config.latent_size
    latents = torch.randn(10, 4, s, s, generator=torch.Generator().manual_seed(4))
    for keep in (3, 1, 10):
        frames, tail = pipe.vae.decode(latents, keep_last=keep)
        assert frames.shape[0] == 10 and tail.shape[0] == keep
        torch.testing.assert_close(tail.float().cpu(), frames[-keep:].permute(0, 3, 1, 2) * 2 - 1, atol=1e-5, rtol=0)
    assert pipe.vae.decode(latents)[1] is None
