"""Training videos read upright and at a fixed frame rate (emo_model/train/video_source.py)."""
from fractions import Fraction

import av
import numpy as np
import pytest

from emo_model.train.video_source import CorruptVideo, iter_frames


def write_video(path, frames, times, rotation=None, audio=None, sr=16000):
    """frames: uint8 [N, H, W, 3]; times: seconds of each frame (any spacing: variable frame rate)."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=1000)
        v.width, v.height = frames.shape[2], frames.shape[1]
        v.pix_fmt = "yuv420p"
        v.codec_context.time_base = Fraction(1, 1000)
        v.options = {"crf": "10", "bf": "0"}
        if rotation is not None:
            v.set_display_rotation(rotation)
        a = None
        if audio is not None:
            a = c.add_stream("aac", rate=sr, layout="mono")
        for img, t in zip(frames, times):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = int(round(t * 1000)), Fraction(1, 1000)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        if a is not None:
            res = av.AudioResampler(format="fltp", layout="mono", rate=sr, frame_size=1024)
            fr = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts, fr.time_base = sr, 0, Fraction(1, sr)
            for x in res.resample(fr) + res.resample(None):
                c.mux(a.encode(x))
            c.mux(a.encode(None))


def numbered(n, h=32, w=48):
    """Frame k has brightness 10 + 8 k (readable after compression) and a white mark top-left."""
    out = np.zeros((n, h, w, 3), np.uint8)
    for k in range(n):
        out[k] = 10 + 8 * k
        out[k, :8, :8] = 255
    return out


def which(img):
    return int(round((np.median(img[12:, 12:, 1]) - 10) / 8))


def test_variable_frame_rate_is_resampled_by_timestamps(tmp_path):
    # 12 source frames at irregular times (0.000 .. 0.463 s); 25 fps output = every 0.04 s, nearest source frame
    times = np.array([0, 0.031, 0.052, 0.117, 0.133, 0.201, 0.259, 0.303, 0.337, 0.381, 0.437, 0.463])
    write_video(tmp_path / "vfr.mp4", numbered(12), times)
    info = {}
    got = [(i, which(img)) for i, img in iter_frames(tmp_path / "vfr.mp4", 25, info)]
    expect = [int(np.argmin(np.abs(times - i / 25) + 1e-9 * np.arange(12))) for i in range(len(got))]
    assert [k for _, k in got] == expect
    assert [i for i, _ in got] == list(range(len(got)))
    # the last frame lasts the median gap (0.044 s): output frames up to 0.463 + 0.022 s, i.e. 0.00 .. 0.48 s
    assert len(got) == 13 and got[-1][1] == 11 and got[7][1] == 6  # 0.28 s: 0.259 is nearer than 0.303
    assert info["frames"] == 13 and info["fps"] == 25 and info["start"] == pytest.approx(0, abs=1e-3)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_phone_video_comes_out_upright(tmp_path, rotation):
    frames = numbered(3, 32, 48)
    write_video(tmp_path / "rot.mp4", frames, [0, 0.04, 0.08], rotation=rotation)
    info = {}
    imgs = [img for _, img in iter_frames(tmp_path / "rot.mp4", 25, info)]
    want = np.rot90(frames[0], k=rotation // 90)  # counterclockwise, as the display matrix says
    assert imgs[0].shape == want.shape
    assert np.abs(imgs[0].astype(int) - want).mean() < 6  # the white mark lands in the displayed corner
    assert info["rotation"] == rotation % 360 and (info["width"], info["height"]) == (want.shape[1], want.shape[0])


def test_not_a_video(tmp_path):
    p = tmp_path / "junk.mp4"
    p.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(CorruptVideo):
        list(iter_frames(p, 25))
