"""prepare-data end to end on tiny synthetic videos, and EMODataset on its output
(emo_model/train/prepare.py, data_format.py, dataset.py)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from emo_model.errors import EMOInputError
from emo_model.train import data_format as fmt
from emo_model.train import synthetic as s
from emo_model.train.dataset import EMODataset, read_all_frames, read_frames
from emo_model.train.prepare import prepare_data

sys.path.insert(0, str(Path(__file__).parent))
from test_video_source import write_video  # noqa: E402

R = 64


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    v = root / "videos"
    v.mkdir()
    drawn = {"talk a.mp4": s.talking_video(v / "talk a.mp4", 1, 1, 1.6, size=80),
             "move_b.mp4": s.talking_video(v / "move_b.mp4", 2, 2, 2.0, size=80, speed=2.0, phase=0.3)}
    s.talking_video(v / "short.mp4", 3, 3, 0.4, size=64)
    frames = np.stack([s.draw_face(s.face_style(4), 64, 0.2)] * 25)
    write_video(v / "silent.mp4", frames, np.arange(25) / 25)
    write_video(v / "mismatch.mkv", frames, np.arange(25) / 25, audio=s.synth_speech(2.0, speaker=4))
    (v / "junk.webm").write_bytes(b"\x1aE\xdf\xa3 not really webm" * 50)
    (v / "notes.txt").write_text("not a video")
    data = root / "data"
    summary = prepare_data(v, data, resolution=R, whole_frame=True, progress=False)
    return dict(root=root, videos=v, data=data, drawn=drawn, summary=summary)


def test_layout_index_and_report(prepared):
    data, summ = prepared["data"], prepared["summary"]
    f = fmt.read_format(data)
    assert (f.fps, f.resolution, f.sample_rate, f.whole_frame) == (25, R, 16000, True)
    idx = fmt.read_index(data)
    assert sorted(e.source for e in idx) == ["move_b.mp4", "talk a.mp4"]
    assert {e.name for e in idx} == {"talk_a", "move_b"}  # file-system safe names
    reasons = {r["video"]: r["reason"] for r in fmt.read_report(data)}
    assert set(reasons) == {"short.mp4", "silent.mp4", "mismatch.mkv", "junk.webm"}
    assert reasons["short.mp4"].startswith("too short")
    assert reasons["silent.mp4"].startswith("no audio")
    assert reasons["mismatch.mkv"].startswith("audio/video length mismatch")
    assert reasons["junk.webm"].startswith("corrupt file")
    assert len(summ["skipped"]) == 4 and sorted(summ["done"]) == ["move_b", "talk_a"]


def test_clip_files_follow_the_contract(prepared):
    data = prepared["data"]
    e = {e.name: e for e in fmt.read_index(data)}["talk_a"]
    assert e.num_frames == 40 and e.fps == 25
    frames = read_all_frames(data / e.frames)
    assert frames.shape == (40, R, R, 3)
    wave = load_file(str(data / e.audio))["waveform"]
    assert wave.dtype == torch.float32 and wave.shape == (40 * 640,)
    drawn = prepared["drawn"]["talk a.mp4"]["waveform"]
    assert np.corrcoef(wave.numpy()[2000:20000], drawn[2000:20000])[0, 1] > 0.95  # same track, aligned
    meta = load_file(str(data / e.meta))
    assert meta["face_box"].shape == (40, 4) and meta["lip_box"].shape == (40, 4) and meta["speed"].shape == (40,)
    assert meta["face_mask"].dtype == torch.uint8 and meta["face_mask"].shape == (R, R)
    assert meta["face_mask"].all()  # whole frame: the whole crop is the face region (as render --whole-image)
    lb = meta["lip_box"][0]
    assert 0 < lb[0] < lb[2] < R and R / 2 < lb[1] < lb[3] <= R
    assert not list((data / "clips" / "talk_a").glob("*.tmp*"))
    assert "identity" not in meta


def test_head_speed_of_a_video_turning_at_a_known_rate(prepared):
    data = prepared["data"]
    by = {e.name: e for e in fmt.read_index(data)}
    moving = load_file(str(data / by["move_b"].meta))["speed"].numpy()
    still = load_file(str(data / by["talk_a"].meta))["speed"].numpy()
    assert np.median(moving) == pytest.approx(2.0, rel=0.25)  # degrees per frame
    assert np.median(still) < 0.2


def test_rerun_skips_finished_videos_and_redoes_half_written_ones(prepared, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(prepared["data"], data)
    again = prepare_data(prepared["videos"], data, resolution=R, whole_frame=True, progress=False)
    assert again["done"] == [] and again["kept"] == 2
    assert len(fmt.read_report(data)) == 4  # the skipped ones were tried again, their lines replaced
    # a run killed while writing move_b: its index line is gone (and a cut line is left behind)
    lines = (data / fmt.INDEX_FILE).read_text().splitlines()
    keep = [x for x in lines if '"move_b"' not in x]
    (data / fmt.INDEX_FILE).write_text("\n".join(keep) + '\n{"name": "move_b", "fra')
    assert [e.name for e in fmt.read_index(data)] == ["talk_a"]
    third = prepare_data(prepared["videos"], data, resolution=R, whole_frame=True, progress=False)
    assert third["done"] == ["move_b"]
    assert sorted(e.name for e in fmt.read_index(data)) == ["move_b", "talk_a"]
    with pytest.raises(EMOInputError, match="fps=25"):
        prepare_data(prepared["videos"], data, fps=30, resolution=R, whole_frame=True, progress=False)


def test_bad_data_folders_and_nothing_usable(prepared, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / fmt.FORMAT_FILE).write_text(json.dumps({"format": fmt.FORMAT_NAME, "version": 0}))
    with pytest.raises(EMOInputError, match="version 0"):
        prepare_data(prepared["videos"], old, resolution=R, whole_frame=True, progress=False)
    with pytest.raises(EMOInputError, match="version 0"):
        EMODataset(old)
    other = tmp_path / "other"
    other.mkdir()
    (other / fmt.FORMAT_FILE).write_text(json.dumps({"format": "hallo"}))
    with pytest.raises(EMOInputError, match="expected 'emo-train-data'"):
        fmt.read_format(other)
    full = tmp_path / "full"
    full.mkdir()
    (full / "something.txt").write_text("x")
    with pytest.raises(EMOInputError, match="not empty"):
        prepare_data(prepared["videos"], full, resolution=R, whole_frame=True, progress=False)
    bad = tmp_path / "bad_videos"
    bad.mkdir()
    with pytest.raises(EMOInputError, match="no videos"):
        prepare_data(bad, tmp_path / "d1", resolution=R, whole_frame=True, progress=False)
    (bad / "junk.mp4").write_bytes(b"junk" * 100)
    with pytest.raises(EMOInputError, match="nothing usable.*junk.mp4: corrupt file"):
        prepare_data(bad, tmp_path / "d2", resolution=R, whole_frame=True, progress=False)
    assert fmt.read_report(tmp_path / "d2")[0]["video"] == "junk.mp4"


def test_face_track_crop_and_skips_with_the_builtin_detector(tmp_path):
    """A real face (scikit-image's astronaut) drifting across a wider frame is tracked and cropped; two faces and
    no face are skipped. The LBP detector takes ~1 s a frame here: it runs on every 10th frame."""
    import cv2
    from skimage import data as skd
    face = cv2.resize(skd.astronaut()[:256, 96:352], (72, 72), interpolation=cv2.INTER_AREA)
    n = 20
    one = np.zeros((n, 96, 160, 3), np.uint8)
    two = np.zeros((n, 96, 160, 3), np.uint8)
    for k in range(n):
        one[k, 10:82, 20 + k:92 + k] = face
        two[k, 10:82, 4:76] = face
        two[k, 10:82, 84:156] = face
    audio = s.synth_speech(n / 25, speaker=1)
    v, w = tmp_path / "v", tmp_path / "w"
    v.mkdir()
    w.mkdir()
    write_video(v / "one.mp4", one, np.arange(n) / 25, audio=audio)
    write_video(w / "two.mp4", two, np.arange(n) / 25, audio=audio)
    out = prepare_data(v, tmp_path / "d", resolution=R, detector="lbp", progress=False, min_frames=16,
                       detect_every=10)
    assert out["done"] == ["one"]
    with pytest.raises(EMOInputError, match="nothing usable"):
        prepare_data(w, tmp_path / "e", resolution=R, detector="lbp", progress=False, detect_every=n)
    reasons = {r["video"]: r["reason"] for r in fmt.read_report(tmp_path / "e")}
    assert reasons["two.mp4"].startswith("two faces")
    e = fmt.read_index(tmp_path / "d")[0]
    meta = load_file(str(tmp_path / "d" / e.meta))
    fb = meta["face_box"].numpy()
    assert fb.shape == (n, 4)
    centers = (fb[:, :2] + fb[:, 2:]) / 2
    assert centers[-1, 0] - centers[0, 0] > 3  # the face moves right in the (fixed) crop
    mask = meta["face_mask"].numpy()
    assert 0.1 < mask.mean() < 0.9  # the union face region, not the whole crop
    frames = read_all_frames(tmp_path / "d" / e.frames)
    assert frames.shape == (n, R, R, 3) and frames[:, R // 2, R // 2].mean() > 60  # the face is in the crop


def test_face_track_rules():
    from emo_model.faces.detect import FaceBox
    from emo_model.train.prepare import Skip, _track
    a, b, small = FaceBox(10, 10, 30, 30), FaceBox(40, 10, 60, 30), FaceBox(0, 0, 5, 5)
    with pytest.raises(Skip, match="^no face$"):
        _track({0: [], 5: [], 10: []}, 12)
    with pytest.raises(Skip, match="no face in 2 of 3"):
        _track({0: [a], 5: [], 10: []}, 12)
    with pytest.raises(Skip, match="two faces"):
        _track({0: [a, b], 5: [b, a], 10: [a]}, 12)
    # a small second face (a poster in the background) is not a second speaker; the track follows the nearest face
    moved = FaceBox(44, 10, 64, 30)
    boxes, kps = _track({0: [b, small], 5: [moved, a], 10: [a], 15: [a]}, 20)  # two faces in 1 of 4: allowed
    assert kps is None
    assert boxes[5].tolist() == [44, 10, 64, 30] and boxes[2].tolist() == pytest.approx([41.6, 10, 61.6, 30])
    assert boxes[19].tolist() == [10, 10, 30, 30]  # held after the last detection


def test_cli_prepare_data(prepared, tmp_path, capsys):
    from emo_model.cli import main
    assert main(["prepare-data", str(prepared["videos"]), str(tmp_path / "d"), "--whole-frame", "--resolution",
                 str(R), "--min-frames", "16"]) == 0
    assert "prepared 2 video(s)" in capsys.readouterr().out
    assert main(["prepare-data", str(tmp_path / "missing"), str(tmp_path / "d3"), "--whole-frame"]) == 2
    assert "videos folder not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- EMODataset

def test_dataset_windows_match_the_prepared_frames(prepared):
    data = prepared["data"]
    ds = EMODataset(data, frames=12, motion_frames=4, ref_margin=10, windows_per_video=3, seed=1)
    assert len(ds) == 6
    for i in range(len(ds)):
        smp = ds[i]
        v = smp["video"]
        e = ds.entries[v]
        a, b = smp["frame_range"]
        assert b - a == 12 and a >= 4 and b <= e.num_frames and not smp["first_clip"]
        clip = read_all_frames(data / e.frames)
        want = torch.from_numpy(clip[a - 4:b]).permute(0, 3, 1, 2).float() / 127.5 - 1
        assert smp["pixels"].shape == (16, 3, R, R) and torch.equal(smp["pixels"], want)
        ref = [k for k in range(e.num_frames) if torch.equal(torch.from_numpy(clip[k]).permute(2, 0, 1).float() / 127.5 - 1,
                                                               smp["reference"])]
        assert ref and all(k <= a - 4 - 10 or k >= b - 1 + 10 for k in ref[:1])
        meta = load_file(str(data / e.meta))
        assert torch.equal(smp["speed"], meta["speed"][a:b])
        assert smp["face_mask"].shape == (1, R, R) and smp["waveform"].shape == (e.num_frames * 640,)
        assert smp["name"] == e.name and smp["identity"].shape == (512,) and not smp["has_identity"]
    assert [ds.window(i) for i in range(6)] == [ds.window(i) for i in range(6)]  # reproducible
    first = [ds.window(i) for i in range(6)]
    ds.set_epoch(1)
    assert [ds.window(i) for i in range(6)] != first
    batch = EMODataset.collate([ds[0], ds[1]])
    assert batch["pixels"].shape == (2, 16, 3, R, R) and batch["speed"].shape == (2, 12)
    assert len(batch["waveform"]) == 2 and batch["video"].shape == (2,)
    speeds = ds.video_speeds()  # per video, for stage 3's balanced drawing
    assert len(speeds) == 2 and all(torch.equal(sp, load_file(str(data / e.meta))["speed"])
                                    for sp, e in zip(speeds, ds.entries))


def test_dataset_stage1_resize_seek_and_errors(prepared):
    data = prepared["data"]
    ds = EMODataset(data, frames=1, motion_frames=0, resolution=32, cache_bytes=0)  # no cache: reads by seeking
    smp = ds[0]
    assert smp["pixels"].shape == (1, 3, 32, 32) and smp["reference"].shape == (3, 32, 32)
    assert smp["face_mask"].shape == (1, 32, 32) and smp["pixels"].min() >= -1 and smp["pixels"].max() <= 1
    e = ds.entries[0]
    clip = read_all_frames(data / e.frames)
    assert np.array_equal(read_frames(data / e.frames, [30, 7, 31, 7], 25), clip[[30, 7, 31, 7]])
    with pytest.raises(EMOInputError, match="no video .* has 60 frames"):
        EMODataset(data, frames=60)
    short = EMODataset(data, frames=40, motion_frames=4)  # talk_a has exactly 40: no room for motion frames
    smp = next(short[i] for i in range(len(short)) if short.entries[short[i]["video"]].name == "talk_a")
    assert smp["first_clip"] and smp["frame_range"] == (0, 40)


def test_disk_full_while_preparing_keeps_finished_videos(tmp_path, monkeypatch):
    from emo_model.errors import EMOError
    from emo_model.train import prepare
    v = tmp_path / "videos"
    v.mkdir()
    for i, name in enumerate(("a.mp4", "b.mp4")):
        s.talking_video(v / name, i, i, 0.8, size=64)
    real, calls = prepare.save_file, {"n": 0}

    def full_disk(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:  # the second video's first file
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(prepare, "save_file", full_disk)
    data = tmp_path / "data"
    with pytest.raises(EMOError, match="could not write .*clips.b .*No space left.*rerun the same command"):
        prepare_data(v, data, resolution=R, whole_frame=True, progress=False)
    assert [e.name for e in fmt.read_index(data)] == ["a"] and not (data / "clips" / "b").exists()
    monkeypatch.setattr(prepare, "save_file", real)
    again = prepare_data(v, data, resolution=R, whole_frame=True, progress=False)
    assert again["done"] == ["b"] and again["kept"] == 1
