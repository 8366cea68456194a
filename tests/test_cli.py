"""The command line as a new user meets it: what it says with no arguments or a wrong path, that inputs are checked
before the model is built, that no file the user had is lost (--overwrite, errors, Ctrl-C), that the pack's notes
are shown and diffusers' install advice is not."""
import os
import shutil

import numpy as np
import pytest

from emo_model.cli import main
from emo_model.media.audio import load_audio
from emo_model.media.video import VideoWriter, probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """0.3 s of the example speech as a wav (8 frames at 25 fps: two clips of the tiny model)."""
    import av
    wav, sr = load_audio(os.path.join(ROOT, "assets", "speech.wav"))
    path = tmp_path_factory.mktemp("in") / "speech.wav"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=sr, layout="mono")
        pcm = (wav[:, int(0.3 * sr): int(0.6 * sr)].numpy() * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="s16", layout="mono")
        frame.sample_rate = sr
        for packet in [*s.encode(frame), *s.encode(None)]:
            c.mux(packet)
    return path


@pytest.fixture
def broken_model(tmp_path):
    """A model folder that fails to load: an error about it means the model was tried before the inputs."""
    folder = tmp_path / "broken_model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_no_arguments_lists_the_commands(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    for command in ("render", "make-tiny", "convert"):
        assert command in out
    assert "python -m emo_model render --image example" in out
    assert "required" not in out + err


@pytest.mark.parametrize("flag", ["--image", "--audio"])
def test_folder_given_as_a_file(tmp_path, speech, broken_model, capsys, flag):
    args = {"--image": "example", "--audio": str(speech)}
    args[flag] = str(tmp_path)
    rc = main(["render", *sum(args.items(), ()), "--model", str(broken_model), "--out", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{flag} {tmp_path} is a folder: give one" in err and "not found" not in err
    assert "broken_model" not in err  # refused before the model was loaded
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("flag", ["--image", "--audio", "--pose", "--detector-file", "--model"])
def test_missing_input_reported_before_the_model(tmp_path, speech, broken_model, capsys, flag):
    args = {"--image": "example", "--audio": str(speech), "--model": str(broken_model)}
    args[flag] = str(tmp_path / "typo.png")
    rc = main(["render", *sum(args.items(), ()), "--out", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{flag} {tmp_path / 'typo.png'} not found" in err
    if flag != "--model":
        assert "broken_model" not in err


def test_output_that_is_an_input_or_not_a_video(tmp_path, speech, broken_model, capsys):
    video_with_sound = tmp_path / "take.mp4"  # a video with sound is a valid --audio
    with VideoWriter(video_with_sound, 25, audio=np.zeros((1, 16000), np.float32), sample_rate=16000) as w:
        w.write(np.zeros((2, 64, 64, 3), np.uint8))
    before = video_with_sound.read_bytes()
    for out, audio, message in ((video_with_sound, video_with_sound, "same file as the input"),
                                (tmp_path / "speech_2.wav", speech, "is not a video file ending"),
                                (tmp_path / "a.webm", speech, "webm holds only VP8/VP9")):
        rc = main(["render", "--image", "example", "--audio", str(audio), "--model", str(broken_model),
                   "--out", str(out), "--overwrite"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err, err
    assert video_with_sound.read_bytes() == before
    assert not (tmp_path / "speech_2.wav").exists() and not (tmp_path / "a.webm").exists()


def render_args(tiny_dir, speech, out, *extra):
    return ["render", "--image", "example", "--audio", str(speech), "--model", str(tiny_dir), "--out", str(out),
            "--steps", "2", *extra]


def test_overwrite_and_a_failure_before_the_first_clip(tmp_path, tiny_dir, speech, capsys):
    out = tmp_path / "mine.mp4"
    out.write_bytes(b"the user's video")
    assert main(render_args(tiny_dir, speech, out, "--overwrite", "--steps", "0")) == 2  # fails in the sampler
    assert "steps must be at least 1" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's video"
    assert leftovers(tmp_path) == []


def test_motion_drop_reaches_the_sampler(tmp_path, tiny_dir, speech, capsys):
    out = tmp_path / "o.mp4"
    assert main(render_args(tiny_dir, speech, out, "--motion-drop", "1.5")) == 2  # refused by the sampler's check
    assert "motion_drop" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("at_step", [1, 3])  # in the first clip; in the second, after the first clip was written
def test_ctrl_c_keeps_the_users_file(tmp_path, tiny_dir, speech, capsys, monkeypatch, at_step):
    import tqdm
    update = tqdm.tqdm.update

    def ctrl_c(bar, n=1):  # the user presses Ctrl-C while the progress bar moves
        update(bar, n)
        if bar.n >= at_step:
            raise KeyboardInterrupt
    monkeypatch.setattr(tqdm.tqdm, "update", ctrl_c)
    out = tmp_path / "mine.mp4"
    out.write_bytes(b"the user's video")
    assert main(render_args(tiny_dir, speech, out, "--overwrite")) == 130
    assert "interrupted: no video was written" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's video"
    assert leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["mine.mp4"]


def test_render_keeps_or_replaces_and_says_why(tmp_path, tiny_dir, speech, capfd, monkeypatch):
    """A fresh environment has no accelerate: diffusers' 'pip install accelerate' advice must not appear. The pack's
    own fallbacks (here: Hallo-style identity tokens without an ArcFace model -> zero embedding) are said once."""
    import diffusers.models.modeling_utils
    import diffusers.utils
    monkeypatch.setattr(diffusers.utils, "is_accelerate_available", lambda: False)
    monkeypatch.setattr(diffusers.models.modeling_utils, "is_accelerate_available", lambda: False)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the user's video")
    assert main(render_args(tiny_dir, speech, out)) == 0
    o, err = capfd.readouterr()
    assert out.read_bytes() == b"the user's video"  # kept: the video took the next free name
    assert f"wrote {tmp_path / 'out_2.mp4'}: 8 frames" in o and probe(tmp_path / "out_2.mp4")["frames"] == 8
    assert f"note: {out} exists and is kept; writing {tmp_path / 'out_2.mp4'}" in err
    assert err.count("note: identity: no ArcFace model") == 1
    assert "accelerate" not in err
    assert main(render_args(tiny_dir, speech, out, "--overwrite")) == 0
    assert probe(out)["frames"] == 8 and leftovers(tmp_path) == []


def test_kill_leaves_no_temporary_file(tmp_path, tiny_dir):
    """SIGTERM (`kill`, a closed terminal's supervisor) cleans up like Ctrl-C: the user's file stays, no .part."""
    import signal
    import subprocess
    import sys
    import time
    wav = os.path.join(ROOT, "assets", "speech.wav")  # 7.6 s: long enough to be caught while writing
    out = tmp_path / "mine.mp4"
    out.write_bytes(b"the user's video")
    proc = subprocess.Popen([sys.executable, "-m", "emo_model", *render_args(tiny_dir, wav, out, "--overwrite")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert leftovers(tmp_path), "the render ended before it was writing"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted: no video was written" in err
    assert out.read_bytes() == b"the user's video" and leftovers(tmp_path) == []
