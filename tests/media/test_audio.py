import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from emo_model.media.audio import count_frames, fps_fraction, load_audio, mix_and_resample
from emo_model.errors import EMOInputError

SPEECH = Path(__file__).resolve().parents[2] / "assets" / "speech.wav"


def write_audio(path, samples: np.ndarray, rate: int, codec: str, fmt: str):
    """Encode float `[channels, samples]` with PyAV (test inputs are made here, not shipped)."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32), format="fltp", layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate, frame_size=1152)  # codec's format
        for f in resampler.resample(frame) + resampler.resample(None):
            c.mux(s.encode(f))
        c.mux(s.encode(None))


def sine(freq, rate, seconds, channels=1, amp=0.5):
    t = np.arange(round(rate * seconds)) / rate
    return np.stack([amp * np.sin(2 * np.pi * freq * (k + 1) * t) for k in range(channels)]).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


@pytest.mark.parametrize("ext,codec,fmt,rate,channels", [
    ("wav", "pcm_s16le", "s16", 44100, 2),
    ("wav", "pcm_s16le", "s16", 8000, 1),
    ("flac", "flac", "s16", 44100, 2),
    ("mp3", "libmp3lame", "fltp", 44100, 2),
])
def test_load_audio_formats(tmp_path, ext, codec, fmt, rate, channels):
    x = sine(440, rate, 0.5, channels)
    path = tmp_path / f"a.{ext}"
    write_audio(path, x, rate, codec, fmt)
    w, sr = load_audio(path)
    assert sr == rate and w.dtype == torch.float32 and w.shape[0] == channels
    assert w.abs().max() <= 1.0
    if ext in ("wav", "flac"):  # lossless: same samples (to 16-bit precision)
        assert w.shape[1] == x.shape[1]
        np.testing.assert_allclose(w.numpy(), x, atol=2 / 32768)
    else:  # lossy with encoder delay: length within a codec frame, same pitch
        assert abs(w.shape[1] - x.shape[1]) < 2400
        assert abs(peak_hz(w[0].numpy(), sr) - 440) < 5


def test_load_audio_shipped_example():
    w, sr = load_audio(SPEECH)
    assert sr == 16000 and w.shape[0] == 1 and 5 <= w.shape[1] / sr <= 8
    assert SPEECH.stat().st_size < 300_000
    assert w.abs().max() > 0.1  # not silence


def test_load_audio_errors(tmp_path):
    with pytest.raises(EMOInputError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not a sound file")
    with pytest.raises(EMOInputError, match="notes.wav.*mp3, flac"):
        load_audio(bad)
    silent_video = tmp_path / "silent.mp4"
    from emo_model.media.video import VideoWriter
    with VideoWriter(silent_video, 25) as w:
        w.write(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(EMOInputError, match="no audio track"):
        load_audio(silent_video)


@pytest.mark.parametrize("rate,channels", [(44100, 2), (8000, 1), (48000, 1), (16000, 2), (22050, 3)])
def test_mix_and_resample_length_and_pitch(rate, channels):
    n = round(rate * 0.7) + 3
    t = np.arange(n) / rate
    x = np.repeat((0.5 * np.sin(2 * np.pi * 1000 * t))[None], channels, 0).astype(np.float32)
    y = mix_and_resample(torch.from_numpy(x), rate, 16000)
    assert y.dtype == torch.float32 and y.ndim == 1
    assert len(y) == math.floor(Fraction(n * 16000, rate) + Fraction(1, 2))
    assert abs(peak_hz(y.numpy(), 16000) - 1000) < 3
    # amplitude kept (no gain change from mixing identical channels / resampling)
    assert abs(float(y[2000:-2000].abs().max()) - 0.5) < 0.02


def test_mix_and_resample_mixes_channels():
    x = torch.stack([torch.full((4800,), 0.6), torch.full((4800,), -0.2)])
    y = mix_and_resample(x, 48000, 16000)
    assert len(y) == 1600
    np.testing.assert_allclose(y[200:-200].numpy(), 0.2, atol=1e-3)


def test_mix_and_resample_errors():
    with pytest.raises(EMOInputError, match="empty"):
        mix_and_resample(torch.zeros(1, 0), 16000)
    with pytest.raises(EMOInputError, match="channels, samples"):
        mix_and_resample(torch.zeros(1, 1, 100), 16000)


def test_fps_fraction():
    assert fps_fraction(29.97) == Fraction(30000, 1001)
    assert fps_fraction(23.976) == Fraction(24000, 1001)
    assert fps_fraction(59.94) == Fraction(60000, 1001)
    assert fps_fraction(119.88) == Fraction(120000, 1001)
    assert fps_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert fps_fraction(25) == 25 and fps_fraction(25.0).denominator == 1 and fps_fraction(240) == 240
    assert fps_fraction(12.5) == Fraction(25, 2)
    for bad in (0, -1, 240.5, float("nan"), "fast"):
        with pytest.raises(EMOInputError):
            fps_fraction(bad)


def test_count_frames_hand_computed():
    assert count_frames(16000, 16000, 29.97) == 30  # 29.97 frames -> 30
    assert count_frames(16016, 16000, 29.97) == 30  # 1.001 s * 30000/1001 = 30 exactly
    assert count_frames(16017, 16000, 29.97) == 31
    assert count_frames(16000, 16000, 25) == 25
    assert count_frames(16001, 16000, 25) == 26
    assert count_frames(640, 16000, 25) == 1  # exactly one frame (40 ms)
    assert count_frames(44100 * 10, 44100, 23.976) == 240  # 239.76 -> 240
    assert count_frames(48048, 48000, 23.976) == 24  # 1.001 s * 24000/1001 = 24 exactly


@pytest.mark.parametrize("fps,exact", [(29.97, (30000, 1001)), (23.976, (24000, 1001)), (25, (25, 1)), (30, (30, 1))])
@pytest.mark.parametrize("samples,rate", [(1, 8000), (1601, 16000), (16016, 16000), (44100 * 3 + 1, 44100),
                                          (160_160, 16000), (48048 * 7, 48000)])
def test_count_frames_matches_fraction_math(fps, exact, samples, rate):
    num, den = exact
    frames_times_den = samples * num  # frames = samples * num / (rate * den), ceiled with integers only
    expected = -(-frames_times_den // (rate * den))
    if samples * num < rate * den:
        with pytest.raises(EMOInputError, match="shorter than one frame"):
            count_frames(samples, rate, fps)
    else:
        assert count_frames(samples, rate, fps) == expected


def test_count_frames_too_short():
    with pytest.raises(EMOInputError, match=r"lasts 0\.030 s, shorter than one frame at 25 fps.*longer track"):
        count_frames(480, 16000, 25)
    with pytest.raises(EMOInputError, match="shorter than one frame"):
        count_frames(0, 16000, 25)


def test_one_cut_pad_rule_half_up():
    """Video Combine's VIDEO and VideoWriter's mp4 cut/pad audio with one rule: frames / fps * rate, half up.
    3 frames at 12 fps of 22050 Hz audio are 5512.5 samples: 5513 (Python's round() gave 5512)."""
    from emo_model.media.audio import fit_to_frames, samples_for_frames
    assert samples_for_frames(3, 22050, 12) == 5513 and samples_for_frames(1, 22050, 12) == 1838
    assert samples_for_frames(30, 16000, 29.97) == 16016  # 30 frames at 30000/1001 = 1.001 s
    wave = torch.ones(2, 6000)
    cut = fit_to_frames(wave, 22050, 3, 12)
    assert cut.shape == (2, 5513) and torch.equal(cut, wave[:, :5513])
    padded = fit_to_frames(wave, 22050, 4, 12)
    assert padded.shape == (2, 7350) and padded[:, 6000:].abs().max() == 0 and padded[:, :6000].min() == 1


def test_resample_keeps_channels():
    from emo_model.media.audio import resample
    t = np.arange(48000) / 48000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 880 * t)]).astype(np.float32)
    y = resample(stereo, 48000, 16000)
    assert y.shape == (2, 16000) and y.dtype == np.float32
    np.testing.assert_allclose(y[0], mix_and_resample(stereo[:1], 48000, 16000).numpy(), atol=1e-6)
    assert resample(stereo, 48000, 48000) is stereo
