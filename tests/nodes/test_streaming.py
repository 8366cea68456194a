"""Long tracks in ComfyUI: the streamed VIDEO path (sampler -> paste back -> video combine through files) and EMO
Frame Batches (a long VIDEO through IMAGE nodes a batch at a time), run along ComfyUI's execute path with a tiny
model (tests/comfy_stubs stands in for ComfyUI)."""
import contextlib
import importlib
import inspect
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comfy_stubs"))
import emo_comfy_harness as harness  # noqa: E402

FPS = 25
SECONDS = 0.44  # 11 frames: several clips of the tiny model


def write_wav(path, wave, rate):
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=rate, layout="mono")
        pcm = (np.clip(wave, -1, 1)[None] * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="s16", layout="mono")
        frame.sample_rate = rate
        for p in [*s.encode(frame), *s.encode(None)]:
            c.mux(p)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui")
    harness.use_stubs(base)
    import folder_paths
    from PIL import Image
    from emo_model.media.image import example_portrait
    _, classes = harness.load_pack()
    pack = sys.modules[harness.PACK_MODULE]
    pack.emo_model.make_tiny(Path(folder_paths.models_dir) / "emo" / "tiny")
    inputs = Path(folder_paths.get_input_directory())
    Image.fromarray(example_portrait()[:400, 40:470]).save(inputs / "portrait.png")  # 430 x 400 px
    rate = 16000
    t = np.arange(int(SECONDS * rate)) / rate
    write_wav(inputs / "voice.wav", (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))), rate)
    _, classes = harness.load_pack()
    return type("Comfy", (), dict(base=base, classes=harness.all_classes(classes), fp=folder_paths))


def graph(sampler_out: str, tail: dict) -> dict:
    """Load image + audio -> models -> encoders -> sampler (steps 2), then `tail` (nodes 7.. of the prompt)."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": "voice.wav"}},
        "3": {"class_type": "EMOLoadModels", "inputs": {"checkpoint": "tiny", "vae": "from checkpoint",
                                                        "audio_encoder": "from checkpoint", "precision": "fp32",
                                                        "device": "auto"}},
        "4": {"class_type": "EMOAudioEncode", "inputs": {"emo_model": ["3", 0], "audio": ["2", 0], "fps": 25.0}},
        "5": {"class_type": "EMOReferenceEncode", "inputs": {"emo_model": ["3", 0], "image": ["1", 0],
                                                             "frame_index": 0, "detector": "whole image (no crop)",
                                                             "face_index": 0, "margin": 0.5}},
        "6": {"class_type": "EMOSampler", "inputs": {"emo_model": ["3", 0], "encoded_audio": ["4", 0],
                                                     "reference": ["5", 0], "seed": 3, "steps": 2, "audio_cfg": 2.0,
                                                     "reference_cfg": 2.0, "head_motion_speed": 1.0,
                                                     "frames_per_clip": 0, "motion_frames": -1}},
    }
    prompt.update(tail)
    return prompt


def temp_files(comfy):
    folder = Path(comfy.fp.get_temp_directory()) / "emo"
    return sorted(folder.glob("*")) if folder.is_dir() else []


def saved_mp4(comfy, result):
    saved = result["ui"]["images"][0]
    return Path(comfy.fp.get_output_directory()) / saved["subfolder"] / saved["filename"]


def test_streamed_path_equals_the_image_path_and_keeps_no_image_batch(comfy):
    from emo_model.media.video import probe, read_frames
    paste = {"crop_info": ["5", 1], "feather": 0.1, "color_match": True}
    combine = {"fps": ["6", 1], "filename_prefix": "emo/t", "crf": 18, "audio": ["4", 2]}
    images = graph("frames", {"7": {"class_type": "EMOPasteBack", "inputs": {"frames": ["6", 0], **paste}},
                              "8": {"class_type": "EMOVideoCombine", "inputs": {"frames": ["7", 0], **combine}}})
    streamed = graph("video", {"7": {"class_type": "EMOPasteBack", "inputs": {"video": ["6", 2], **paste}},
                               "8": {"class_type": "EMOVideoCombine", "inputs": {"video": ["7", 1], **combine}}})
    a = harness.run_prompt(images, comfy.classes)
    b = harness.run_prompt(streamed, comfy.classes)
    n = math.ceil(SECONDS * FPS)
    # the streamed run kept no IMAGE batch: its unconnected IMAGE outputs are a 1-pixel placeholder
    assert b["6"]["outputs"][0].shape == (1, 1, 1, 3) and b["7"]["outputs"][0].shape == (1, 1, 1, 3)
    assert a["6"]["outputs"][2] is None                      # and the IMAGE run wrote no file
    # the lossless intermediates hold exactly the IMAGE path's frames (quantised to 8 bits)
    sampled = np.concatenate(list(read_frames(b["6"]["outputs"][2].path, 4)))
    expect = (a["6"]["outputs"][0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert sampled.shape == (n, *expect.shape[1:]) and np.abs(sampled.astype(int) - expect).max() <= 1
    pasted = np.concatenate(list(read_frames(b["7"]["outputs"][1].path, 4)))
    expect = (a["7"]["outputs"][0] * 255).round().to(torch.uint8).numpy()
    assert pasted.shape == (n, 400, 430, 3) and np.abs(pasted.astype(int) - expect).max() <= 2
    info_a, info_b = probe(saved_mp4(comfy, a["8"])), probe(saved_mp4(comfy, b["8"]))
    assert info_b["frames"] == info_a["frames"] == n and (info_b["width"], info_b["height"]) == (430, 400)
    assert info_b["audio_codec"] == "aac" and abs(info_b["audio_duration"] - n / FPS) < 0.05
    assert "prompt" in info_b["metadata"]
    assert b["8"]["outputs"][0].frame_count == n


@contextlib.contextmanager
def cancel_when(decide):
    """ComfyUI's Cancel as the nodes see it: `throw_exception_if_processing_interrupted` raises (as after a click on
    Cancel) at the first check for which decide() is true. Yields the list of checks that raised."""
    mm = importlib.import_module("comfy.model_management")
    real = mm.throw_exception_if_processing_interrupted
    hits = []

    def check():
        if decide():
            hits.append(1)
            raise mm.InterruptProcessingException()
        return real()
    mm.throw_exception_if_processing_interrupted = check
    try:
        with pytest.raises(mm.InterruptProcessingException):
            yield hits
    finally:
        mm.throw_exception_if_processing_interrupted = real


def running(module_file: str):
    """decide() for cancel_when: true while a node of `module_file` (e.g. video_combine.py) makes the check."""
    return lambda: any(f.filename.endswith(module_file) for f in inspect.stack()[2:5])


def test_cancel_mid_sampling_leaves_no_temp_file(comfy):
    streamed = graph("video", {"8": {"class_type": "EMOVideoCombine", "inputs": {
        "video": ["6", 2], "fps": ["6", 1], "filename_prefix": "emo/cancel", "crf": 18}}})
    before = temp_files(comfy)
    calls = itertools.count(1)
    with cancel_when(lambda: next(calls) == 3) as hits:  # the sampler's third step
        harness.run_prompt(streamed, comfy.classes)
    assert hits == [1] and next(calls) == 4 and temp_files(comfy) == before
    assert not list(Path(comfy.fp.get_output_directory()).rglob("cancel*"))


def run_batches(comfy, prompt, monkeypatch, fail_on=None):
    """Run `prompt` as ComfyUI's queue would: once, then again for every run the pack queued."""
    fb = importlib.import_module(f"{harness.PACK_MODULE}.nodes.frame_batches")
    vc = importlib.import_module(f"{harness.PACK_MODULE}.nodes.video_combine")
    queued = []
    monkeypatch.setattr(vc, "requeue", lambda p, extra: queued.append(p))
    results, runs = [], 0
    queued.append(prompt)
    while queued:
        p = queued.pop(0)
        runs += 1
        if fail_on is not None and runs == fail_on:
            with pytest.raises(RuntimeError):
                harness.run_prompt(p, {**comfy.classes, "ImageScaleBy": failing_scale()})
            continue
        results.append(harness.run_prompt(p, comfy.classes))
    return results, runs, fb


def failing_scale():
    import comfy_core_nodes

    class Fails(comfy_core_nodes.ImageScaleBy):
        def upscale(self, image, upscale_method, scale_by):
            raise RuntimeError("an IMAGE node failed")
    return Fails


def batches_graph():
    return graph("video", {
        "7": {"class_type": "EMOFrameBatches", "inputs": {"video": ["6", 2], "frames_per_batch": 4}},
        "8": {"class_type": "ImageScaleBy", "inputs": {"image": ["7", 0], "upscale_method": "bilinear",
                                                       "scale_by": 2.0}},
        "9": {"class_type": "EMOVideoCombine", "inputs": {"frames": ["8", 0], "batch": ["7", 1], "fps": ["6", 1],
                                                          "filename_prefix": "emo/batches", "crf": 18,
                                                          "audio": ["4", 2]}}})


def test_frame_batches_take_a_long_video_through_an_image_node_batch_by_batch(comfy, monkeypatch):
    from emo_model.media.video import probe
    n = math.ceil(SECONDS * FPS)
    before = temp_files(comfy)
    results, runs, _ = run_batches(comfy, batches_graph(), monkeypatch)
    assert runs == math.ceil(n / 4) == 3
    sizes = [r["7"]["outputs"][0].shape[0] for r in results]
    assert sizes == [4, 4, 3]                                   # one batch of frames in memory per run
    assert [r["9"]["outputs"][0] is None for r in results] == [True, True, False]
    mp4 = saved_mp4(comfy, results[-1]["9"])
    info = probe(mp4)
    res = results[0]["6"]["outputs"][2].size[0]
    assert info["frames"] == n and info["width"] == 2 * res     # every frame, through the IMAGE node
    assert abs(info["audio_duration"] - n / FPS) < 0.05
    # left in temp/: only the sampler's finished VIDEOs (this stand-in has no cache, so each run sampled again; real
    # ComfyUI reuses the first), never the batches' intermediate or a partial file
    left = set(temp_files(comfy)) - set(before)
    assert left == {Path(r["6"]["outputs"][2].path) for r in results}
    # the mp4 appears only after the last batch: one file under the prefix
    assert len(list(Path(comfy.fp.get_output_directory()).rglob("batches*.mp4"))) == 1


def test_a_failed_batch_is_resumed_by_queueing_again(comfy, monkeypatch):
    from emo_model.media.video import probe
    n = math.ceil(SECONDS * FPS)
    # run 2 fails in the IMAGE node: nothing is queued after it, the pass stops at batch 2
    results, runs, fb = run_batches(comfy, batches_graph(), monkeypatch, fail_on=2)
    assert runs == 2 and len(results) == 1 and list(fb._STATE.values())[0][1] == 1
    # the artist queues again: batch 2 and 3 follow, and the video has every frame once
    results, runs, fb = run_batches(comfy, batches_graph(), monkeypatch)
    assert [r["7"]["outputs"][1].index for r in results] == [1, 2] and not fb._STATE
    assert probe(saved_mp4(comfy, results[-1]["9"]))["frames"] == n


def test_requeue_posts_the_prompt_without_comfyuis_fingerprints(comfy, monkeypatch):
    """The next batch is queued through the server's own /prompt; ComfyUI's per-run `is_changed` entries are left
    out (sent back, they would serve EMO Frame Batches from the cache and the pass would stop after one batch)."""
    import http.server
    import json
    import threading
    import types
    got = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.handle_request, daemon=True).start()
    instance = types.SimpleNamespace(address="0.0.0.0", port=httpd.server_address[1], client_id="browser-1")
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=instance)))
    fb = importlib.import_module(f"{harness.PACK_MODULE}.nodes.frame_batches")
    prompt = {"7": {"class_type": "EMOFrameBatches", "inputs": {"frames_per_batch": 4}, "is_changed": [3]}}
    fb.requeue(prompt, {"workflow": {"nodes": []}})
    for _ in range(100):
        if got:
            break
        threading.Event().wait(0.05)
    path, body = got[0]
    assert path == "/prompt" and body["client_id"] == "browser-1"
    assert body["prompt"] == {"7": {"class_type": "EMOFrameBatches", "inputs": {"frames_per_batch": 4}}}
    assert body["extra_data"] == {"extra_pnginfo": {"workflow": {"nodes": []}}}
    assert prompt["7"]["is_changed"] == [3]  # the running prompt itself is left as it was


def output_files(comfy, pattern):
    return sorted(p.name for p in Path(comfy.fp.get_output_directory()).rglob(pattern))


def test_cancel_while_the_mp4_is_written_leaves_no_half_mp4(comfy):
    """Cancel during EMO Video Combine (streamed VIDEO in): no mp4 under any name, no hidden .part in output/, and
    temp/ holds only the sampler's finished VIDEO (reusable from ComfyUI's cache; temp/ is emptied at start)."""
    streamed = graph("video", {"8": {"class_type": "EMOVideoCombine", "inputs": {
        "video": ["6", 2], "fps": ["6", 1], "filename_prefix": "emo/cancel_write", "crf": 18}}})
    before = temp_files(comfy)
    with cancel_when(running("video_combine.py")) as hits:
        harness.run_prompt(streamed, comfy.classes)
    assert hits and output_files(comfy, "*cancel_write*") == []
    left = set(temp_files(comfy)) - set(before)
    assert len(left) == 1 and next(iter(left)).name.startswith("sampler_")


def test_cancel_while_the_last_batch_is_written_leaves_nothing_and_the_next_queue_starts_over(comfy, monkeypatch):
    """EMO Frame Batches: Cancel while the last batch's mp4 is written leaves no mp4, no .part and no batches
    intermediate; queueing the workflow again makes a whole new pass with every frame."""
    from emo_model.media.video import probe
    prompt = batches_graph()
    prompt["9"]["inputs"]["filename_prefix"] = "emo/cancel_batches"
    before = temp_files(comfy)
    vc = importlib.import_module(f"{harness.PACK_MODULE}.nodes.video_combine")
    real_append, last = vc._append_batch, []

    def append(frames, fps, info):  # the real append, noting when the last batch is in
        video = real_append(frames, fps, info)
        last.append(video is not None)
        return video
    monkeypatch.setattr(vc, "_append_batch", append)
    in_combine = running("video_combine.py")
    with cancel_when(lambda: any(last) and in_combine()) as hits:  # Cancel while the mp4 is written
        run_batches(comfy, prompt, monkeypatch)
    assert hits and last == [False, False, True] and output_files(comfy, "*cancel_batches*") == []
    assert not [p for p in set(temp_files(comfy)) - set(before) if not p.name.startswith("sampler_")]
    monkeypatch.setattr(vc, "_append_batch", real_append)
    results, runs, fb = run_batches(comfy, prompt, monkeypatch)
    assert runs == 3 and [r["7"]["outputs"][1].index for r in results] == [0, 1, 2] and not fb._STATE
    assert probe(saved_mp4(comfy, results[-1]["9"]))["frames"] == math.ceil(SECONDS * FPS)


def test_partial_videos_of_a_killed_server_are_removed_when_the_pack_loads(comfy):
    """A server killed outright (no chance to clean up) leaves a hidden `.NAME.mp4.xxxxxxxx.part` in output/: the pack
    removes it at the next start, when it is older than STALE_SECONDS. A fresh one (another server may be writing it)
    and files that are not the pack's are kept."""
    import os
    import time
    streaming = importlib.import_module(f"{harness.PACK_MODULE}.nodes.streaming")
    out = Path(comfy.fp.get_output_directory()) / "emo" / "killed"
    out.mkdir(parents=True, exist_ok=True)
    stale, fresh = out / ".take_00001_.mp4.0a1b2c3d.part", out / ".take_00002_.mp4.4e5f6a7b.part"
    mine = [out / "take_00001_.mp4", out / ".notes.part", out / ".take.mp4.part", out / ".take.wav.0a1b2c3d.part"]
    for p in [stale, fresh, *mine]:
        p.write_bytes(b"x")
    old = time.time() - streaming.STALE_SECONDS - 60
    for p in [stale, *mine]:
        os.utime(p, (old, old))
    harness.load_pack()  # what ComfyUI does at start
    assert not stale.exists() and fresh.exists() and all(p.exists() for p in mine)
