import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from emo_model.media.audio import load_audio
from emo_model.errors import EMOInputError
from emo_model.media.video import VideoWriter, probe


def frames(n, h=64, w=96, start=0):
    """Smooth moving gradient `[n, h, w, 3]` uint8 (cheap to encode)."""
    y, x = np.mgrid[:h, :w]
    return np.stack([np.stack([(x + i) % 256, (y + 2 * i) % 256, (x + y) % 256], -1)
                     for i in range(start, start + n)]).astype(np.uint8)


def tone(seconds, rate, channels):
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * (c + 1) * t) for c in range(channels)]).astype(np.float32)


@pytest.mark.parametrize("fps,rate,channels", [(25, 16000, 1), (29.97, 44100, 2), (23.976, 12345, 1)])
@pytest.mark.parametrize("audio_over", [0.7, -0.4])  # audio longer / shorter than the video (seconds)
def test_write_probe(tmp_path, fps, rate, channels, audio_over):
    n = 24
    exact = {25: Fraction(25), 29.97: Fraction(30000, 1001), 23.976: Fraction(24000, 1001)}[fps]
    duration = n / exact
    path = tmp_path / "out.mp4"
    audio = torch.from_numpy(tone(float(duration) + audio_over, rate, channels))
    with VideoWriter(path, fps, audio=audio, sample_rate=rate) as w:
        w.write(frames(10))
        w.write(torch.from_numpy(frames(n - 10, start=10)).float() / 255)  # float 0..1 tensors too
        assert w.frames_written == n
    p = probe(path)
    assert p["frames"] == n
    assert p["fps"] == exact and isinstance(p["fps"], Fraction)
    assert (p["width"], p["height"]) == (96, 64)
    assert p["video_codec"] == "h264" and p["audio_codec"] == "aac"
    assert p["audio_channels"] == channels
    assert abs(p["audio_duration"] - float(duration)) < float(1 / exact)
    assert abs(p["duration"] - float(duration)) < float(1 / exact)
    # and it decodes back to about the same audio length, at a rate AAC supports (12345 Hz is resampled)
    wav, sr = load_audio(path)
    assert sr == (rate if rate != 12345 else 48000)
    assert abs(wav.shape[1] / sr - float(duration)) < float(1 / exact)


def test_audio_shorter_is_padded_with_silence(tmp_path):
    path = tmp_path / "pad.mp4"
    with VideoWriter(path, 25, audio=tone(0.5, 16000, 1), sample_rate=16000) as w:
        w.write(frames(50))  # 2 s of video, 0.5 s of audio
    wav, sr = load_audio(path)
    assert abs(wav.shape[1] / sr - 2.0) < 0.04
    assert wav[0, : int(0.4 * sr)].abs().max() > 0.3  # tone at the start
    assert wav[0, int(0.7 * sr):].abs().max() < 0.01  # silence after it


def test_pixels_survive(tmp_path):
    path = tmp_path / "px.mp4"
    src = frames(5)
    with VideoWriter(path, 25, crf=0) as w:
        w.write(src)
    with av.open(str(path)) as c:
        got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert got.shape == src.shape
    assert np.abs(got.astype(int) - src).mean() < 3  # yuv420p chroma subsampling only


def test_odd_size_padded_by_repeating_edge(tmp_path):
    path = tmp_path / "odd.mp4"
    src = np.zeros((3, 65, 97, 3), np.uint8)
    src[:, -1, :] = 255  # white last row
    src[:, :, -1] = 255  # white last column
    with VideoWriter(path, 25, crf=0) as w:
        w.write(src)
    p = probe(path)
    assert (p["width"], p["height"], p["frames"]) == (98, 66, 3)
    with av.open(str(path)) as c:
        got = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert got[-1, :50].mean() > 240 and got[:50, -1].mean() > 240  # padding repeats the white edge
    assert got[10:50, 10:50].mean() < 10


def test_metadata_written(tmp_path):
    path = tmp_path / "meta.mp4"
    with VideoWriter(path, 25, metadata={"comment": "made by EMO", "prompt": '{"1": {"class_type": "X"}}'}) as w:
        w.write(frames(2))
    meta = probe(path)["metadata"]
    assert meta["comment"] == "made by EMO" and meta["prompt"] == '{"1": {"class_type": "X"}}'


def test_errors(tmp_path):
    with pytest.raises(EMOInputError, match="frame size changed"):
        with VideoWriter(tmp_path / "a.mp4", 25) as w:
            w.write(frames(2))
            w.write(frames(2, h=80))
    with pytest.raises(EMOInputError, match=r"\[frames, H, W, 3\]"):
        VideoWriter(tmp_path / "b.mp4", 25).write(np.zeros((2, 64, 64, 5), np.uint8))
    with pytest.raises(EMOInputError, match="sample rate"):
        VideoWriter(tmp_path / "c.mp4", 25, audio=tone(1, 16000, 1))
    with pytest.raises(EMOInputError, match="fps"):
        VideoWriter(tmp_path / "d.mp4", 0)
    with pytest.raises(EMOInputError, match="folder does not exist"):
        VideoWriter(tmp_path / "nope" / "e.mp4", 25)
    with pytest.raises(EMOInputError, match="no frames"):
        VideoWriter(tmp_path / "f.mp4", 25).close()
    assert not (tmp_path / "f.mp4").exists()


def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_memory_does_not_grow_with_length(tmp_path):
    # 300 frames of 160x160 are 22 MiB as uint8 (88 MiB as float tensors): a writer that kept them would show.
    clip = torch.from_numpy(frames(10, 160, 160)).float() / 255
    with VideoWriter(tmp_path / "long.mp4", 25, audio=tone(13, 16000, 1), sample_rate=16000) as w:
        for i in range(5):  # warm up the encoder's lookahead and the allocator
            w.write(clip)
        before = rss_mib()
        for i in range(30):
            w.write(clip)
        grown = rss_mib() - before
    assert w.frames_written == 350
    assert grown < 10, f"RSS grew by {grown:.1f} MiB while writing 300 frames"


# --- the user's files are never lost; a failed render leaves nothing behind -------------------------------------

def leftovers(folder):
    """Temporary files the writer left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


@pytest.mark.parametrize("when", ["before the first frame", "after some frames"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_keeps_the_users_file(tmp_path, when, error):
    """--overwrite and then an error or Ctrl-C: the file that was there is untouched, no temp file is left."""
    path = tmp_path / "mine.mp4"
    path.write_bytes(b"the user's own video")
    with pytest.raises(error):
        with VideoWriter(path, 25, audio=tone(1, 16000, 1), sample_rate=16000, overwrite=True) as w:
            if when == "after some frames":
                w.write(frames(5))
            raise error()
    assert path.read_bytes() == b"the user's own video"
    assert leftovers(tmp_path) == []


def test_failure_leaves_no_truncated_video(tmp_path):
    path = tmp_path / "new.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(path, 25) as w:
            w.write(frames(5))
            raise RuntimeError("the sampler failed")
    assert list(tmp_path.iterdir()) == []


def test_no_frames_keeps_the_users_file(tmp_path):
    path = tmp_path / "mine.mp4"
    path.write_bytes(b"the user's own video")
    with pytest.raises(EMOInputError, match="no frames"):
        VideoWriter(path, 25, overwrite=True).close()
    assert path.read_bytes() == b"the user's own video"
    assert leftovers(tmp_path) == []


def test_video_appears_only_when_complete(tmp_path):
    path = tmp_path / "out.mp4"
    with VideoWriter(path, 25) as w:
        w.write(frames(3))
        assert not path.exists()  # still under the temporary name
        assert len(leftovers(tmp_path)) == 1
    assert probe(path)["frames"] == 3
    assert leftovers(tmp_path) == []
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # the usual permissions, not mkstemp's 0600


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_existing_file_kept_without_overwrite(tmp_path):
    """A file at the name (made while the video was written, too) is kept; the video takes the next free name."""
    path = tmp_path / "out.mp4"
    with VideoWriter(path, 25) as w:
        w.write(frames(3))
        path.write_bytes(b"made meanwhile")
    assert path.read_bytes() == b"made meanwhile"
    assert w.path == str(tmp_path / "out_2.mp4") and probe(w.path)["frames"] == 3
    with VideoWriter(path, 25, overwrite=True) as w:
        w.write(frames(4))
    assert w.path == str(path) and probe(path)["frames"] == 4


@pytest.mark.parametrize("name,fmt", [("a.mov", "mov"), ("a.mkv", "matroska"), ("a.M4V", "mp4")])
def test_other_containers(tmp_path, name, fmt):
    with VideoWriter(tmp_path / name, 25, audio=tone(1, 16000, 1), sample_rate=16000) as w:
        w.write(frames(3))
    p = probe(tmp_path / name)
    assert p["frames"] == 3 and p["audio_codec"] == "aac"
    with av.open(str(tmp_path / name)) as c:
        assert fmt in c.format.name.split(",")


@pytest.mark.parametrize("name", ["speech_2.wav", "video.webm", "noending", "clip.png"])
def test_non_video_name_refused(tmp_path, name):
    with pytest.raises(EMOInputError, match=r"cannot write the video .* name it \.mp4"):
        VideoWriter(tmp_path / name, 25)
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_an_input_refused(tmp_path):
    from emo_model.media.video import check_output_path
    audio = tmp_path / "speech.mp4"  # a video with sound is a valid --audio
    audio.write_bytes(b"track")
    with pytest.raises(EMOInputError, match="same file as the input"):
        check_output_path(audio, [tmp_path / "face.png", audio])
    with pytest.raises(EMOInputError, match="same file as the input"):  # another spelling of the same path
        check_output_path(tmp_path / "sub" / ".." / "speech.mp4", [audio])
    (tmp_path / "sub").mkdir()
    with pytest.raises(EMOInputError, match="same file as the input"):  # a link to it
        os.symlink(audio, tmp_path / "sub" / "link.mp4")
        check_output_path(tmp_path / "sub" / "link.mp4", [audio])
    pose = tmp_path / "pose"
    pose.mkdir()
    with pytest.raises(EMOInputError, match="inside the input folder"):
        check_output_path(pose / "out.mp4", [pose])
    with pytest.raises(EMOInputError, match="is a folder"):
        check_output_path(pose, [])
    check_output_path(tmp_path / "out.mp4", [audio, pose])  # a fresh name is fine
    assert audio.read_bytes() == b"track"
