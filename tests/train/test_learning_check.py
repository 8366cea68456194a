"""benchmarks/learning_check.py on your own set (`--videos DIR --heldout DIR --out DIR`), at `--quick` size: what it
writes and how (the full check's numbers are in benchmarks/README.md; it takes about half an hour)."""
import importlib.util
import json
from pathlib import Path

import numpy as np

from emo_model.train import synthetic as s

ROOT = Path(__file__).resolve().parents[2]


def _learning_check():
    spec = importlib.util.spec_from_file_location("learning_check", ROOT / "benchmarks" / "learning_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_videos_mode_writes_the_model_and_every_video_in_the_pictures_framing(tmp_path):
    from emo_model import load_model
    from emo_model.train.dataset import read_all_frames
    videos, heldout, out = tmp_path / "videos", tmp_path / "heldout", tmp_path / "out"
    videos.mkdir()
    for i, speed in enumerate((0.5, 2.0)):
        s.talking_video(videos / f"v{i}.mp4", identity=i, speaker=i, seconds=1.6, size=64, speed=speed)
    for name in ("c", "a", "b"):  # three pairs; speed videos for the first two in name order (a, b)
        s.make_heldout(heldout, identity=90, speaker=90, seconds=0.4, size=80, name=name)
    rc = _learning_check().main(["--videos", str(videos), "--heldout", str(heldout), "--out", str(out),
                                 "--whole-frame", "--quick"])
    assert rc in (0, 1)  # 1: targets not reached (a quick run learns nothing)
    model = load_model(str(out / "model"))
    assert model.config.whole_frame and model.speed_encoder is not None
    from emo_model.train.config import SPEED_CFG
    assert model.config.speed_cfg == SPEED_CFG != 1.0  # stage 3's model samples with speed guidance by default
    expected = {f"{n}.mp4" for n in "abc"} | {f"{n}_speed{k}.mp4" for n in "ab" for k in range(5)}
    assert expected <= {p.name for p in out.glob("*.mp4")} and not list(out.glob("c_speed*.mp4"))
    for name in expected:
        frames = read_all_frames(out / name)
        assert frames.shape == (10, 80, 80, 3), (name, frames.shape)  # the whole 0.4 s, at the picture's 80 px
    res = json.loads((out / "learning_check.json").read_text())
    assert len(res["speeds"]) == 5 and np.all(np.diff(res["speeds"]) >= 0)  # slowest first
    assert {"lipsync_r", "lipsync_r_silent", "speed_rank_r", "curve", "minutes", "seams"} <= set(res)
    assert np.asarray(res["seams"], dtype=float).shape == (10, 2)  # [seam, inside] per speed render
    # A rerun into the same OUT replaces its renders and measures the new ones (render keeps an existing file and
    # writes NAME_2.mp4 unless told to overwrite: the check measured the stale file before session 8).
    from emo_model.train import metrics
    lc = _learning_check()
    before = read_all_frames(out / "a.mp4")
    wave = lc.load_wave(heldout / "a.wav")
    m = lc.render_and_measure(model, heldout / "a_ref.png", wave, out / "a.mp4", steps=1, seed=7)
    after = read_all_frames(out / "a.mp4")
    assert not list(out.glob("*_2.mp4"))
    assert not np.array_equal(before, after)  # another seed and step count: another video, written in place
    assert np.allclose(m["opening"], metrics.mouth_opening_from_frames(after))
