"""Audio in: decode any sound file PyAV reads, mix to mono, resample, and count video frames.

Decoding and resampling are PyAV's (libavformat / libswresample); nothing here filters by hand.
Waveforms are float32 in [-1, 1]: `[channels, samples]` as decoded, `[samples]` once mixed to mono.
"""

import math
import os
from fractions import Fraction

import av
import numpy as np
import torch

from ..errors import EMOInputError

AUDIO_FORMATS = "wav, mp3, flac, ogg/opus, m4a/aac, or a video with sound (mp4, mov, mkv, webm)"

# NTSC rates: k * 1000/1001 fps, written rounded (29.97, 23.976, ...).
_NTSC = (24, 30, 48, 60, 120)


def load_audio(path) -> tuple[torch.Tensor, int]:
    """Decode the first audio track of `path` (any container/codec PyAV reads).

    Returns (waveform `[channels, samples]` float32 in [-1, 1], sample rate in Hz, the file's own).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EMOInputError(f"audio file not found: {path}: check the path (formats that work: {AUDIO_FORMATS})")
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise EMOInputError(f"{path} has no audio track: use a file with sound ({AUDIO_FORMATS})")
            stream = container.streams.audio[0]
            # Converts any sample format (s16, s32p, fltp, ...) to planar float; keeps rate and layout.
            to_float = av.AudioResampler(format="fltp")
            sample_rate = stream.codec_context.sample_rate or stream.sample_rate
            declared = None
            if stream.duration and stream.time_base:
                declared = stream.duration * stream.time_base * sample_rate
            elif container.duration:
                declared = container.duration / av.time_base * sample_rate
            buf = _Samples(int(declared or 0) + 8192)
            for frame in container.decode(stream):
                frame.pts = None  # the converter needs no timestamps; some files have broken ones
                for f in to_float.resample(frame):
                    buf.append(f.to_ndarray())
            for f in to_float.resample(None):
                buf.append(f.to_ndarray())
    except EMOInputError:
        raise
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise EMOInputError(f"{path} could not be read as audio ({e}): use {AUDIO_FORMATS}") from e
    waveform = buf.array()
    if waveform is None or waveform.shape[1] == 0:
        raise EMOInputError(f"{path} has an audio track but no samples: use a file with sound ({AUDIO_FORMATS})")
    if declared and 0 < waveform.shape[1] - round(declared) <= 4096:
        waveform = waveform[:, :round(declared)]  # drop the encoder's padding of the last AAC/Opus frame
    np.clip(waveform, -1.0, 1.0, out=waveform)  # in place: long tracks are held once
    return torch.from_numpy(waveform), int(sample_rate)


class _Samples:
    """Decoded audio gathered into one preallocated float32 [channels, samples] buffer (sized from the declared
    duration, grown by half when short), so a long track is held once rather than as pieces plus their join.
    A layout change mid-file keeps the common channels."""

    def __init__(self, expected: int):
        self.expected, self.buf, self.n = expected, None, 0

    def append(self, x: np.ndarray):
        if self.buf is None:
            self.buf = np.empty((x.shape[0], max(self.expected, x.shape[1])), np.float32)
        ch = min(self.buf.shape[0], x.shape[0])
        if self.n + x.shape[1] > self.buf.shape[1] or ch < self.buf.shape[0]:
            grown = np.empty((ch, max(self.n + x.shape[1], self.buf.shape[1] * 3 // 2)), np.float32)
            grown[:, :self.n] = self.buf[:ch, :self.n]
            self.buf = grown
        self.buf[:, self.n:self.n + x.shape[1]] = x[:ch]
        self.n += x.shape[1]

    def array(self) -> np.ndarray | None:
        return None if self.buf is None else self.buf[:, :self.n]


def as_channels_samples(waveform) -> np.ndarray:
    """`[samples]` or `[channels, samples]` tensor/array -> float32 numpy `[channels, samples]`."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().to("cpu", torch.float32).numpy()
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.ndim != 2:
        raise EMOInputError(
            f"audio waveform has shape {list(waveform.shape)}; expected [channels, samples]: "
            "pass one track, not a batch")
    if waveform.shape[1] == 0 or waveform.shape[0] == 0:
        raise EMOInputError("the audio track is empty (0 samples): use a track with sound")
    if not np.isfinite(waveform).all():
        raise EMOInputError("the audio waveform contains NaN or infinite values: re-export the track")
    return waveform


def mix_and_resample(waveform, sample_rate: int, target_rate: int = 16000) -> torch.Tensor:
    """Mix to mono (mean of channels) and resample with libswresample (`av.AudioResampler`).

    waveform: `[channels, samples]` (or `[samples]`), float in [-1, 1], sample_rate in Hz.
    Returns float32 `[round(samples * target_rate / sample_rate)]` at target_rate Hz.
    """
    mono = as_channels_samples(waveform)
    if mono.shape[0] > 1:  # a mono track is used as it is (no copy: long tracks are held once)
        mono = mono.mean(axis=0, keepdims=True)
    return torch.from_numpy(np.ascontiguousarray(resample(mono, sample_rate, target_rate)[0]))


def resample(waveform: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Resample float32 `[channels, samples]` (1 or 2 channels) with libswresample (`av.AudioResampler`), in chunks.

    Returns float32 `[channels, round(samples * target_rate / sample_rate)]` (half up), the filter's delay flushed
    and the end trimmed or zero-padded to that length; the input itself when the rates are equal.
    """
    sample_rate, target_rate = int(sample_rate), int(target_rate)
    if sample_rate <= 0 or target_rate <= 0:
        raise EMOInputError(f"sample rate must be positive (got {sample_rate} Hz -> {target_rate} Hz)")
    if sample_rate == target_rate:  # used as it is (no copy: long tracks are held once)
        return waveform
    n = waveform.shape[1]
    n_out = math.floor(Fraction(n * target_rate, sample_rate) + Fraction(1, 2))
    layout = "mono" if waveform.shape[0] == 1 else "stereo"
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=target_rate)
    out, step = [], 1 << 16
    for start in range(0, n, step):
        chunk = np.ascontiguousarray(waveform[:, start:start + step], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        out += [f.to_ndarray() for f in resampler.resample(frame)]
    out += [f.to_ndarray() for f in resampler.resample(None)]  # flush the filter's delay
    y = np.concatenate(out, axis=1) if out else np.zeros((waveform.shape[0], 0), np.float32)
    y = y[:, :n_out] if y.shape[1] >= n_out else np.pad(y, ((0, 0), (0, n_out - y.shape[1])))
    return np.ascontiguousarray(y, dtype=np.float32)


def samples_for_frames(frames: int, sample_rate: int, fps) -> int:
    """Audio samples that last exactly `frames` video frames: frames / fps * sample_rate, rounded half up (exact)."""
    return math.floor(Fraction(int(frames) * int(sample_rate)) / fps_fraction(fps) + Fraction(1, 2))


def fit_to_frames(waveform: torch.Tensor, sample_rate: int, frames: int, fps) -> torch.Tensor:
    """Cut or zero-pad `[..., samples]` to `samples_for_frames(frames, sample_rate, fps)`: the audio of a video of
    `frames` frames, as `VideoWriter` writes it."""
    n = samples_for_frames(frames, sample_rate, fps)
    if waveform.shape[-1] >= n:
        return waveform[..., :n]
    return torch.nn.functional.pad(waveform, (0, n - waveform.shape[-1]))


def fps_fraction(fps) -> Fraction:
    """Frame rate as an exact Fraction: 29.97 -> 30000/1001, 23.976 -> 24000/1001, 59.94 -> 60000/1001,
    119.88 -> 120000/1001; whole numbers exact; anything else `Fraction(fps).limit_denominator(1001)`."""
    try:
        if isinstance(fps, (bool, str, bytes)):
            raise TypeError
        value = float(fps)
    except (TypeError, ValueError) as e:
        raise EMOInputError(f"fps must be a number (got {fps!r}): use e.g. 25 or 29.97") from e
    if not math.isfinite(value) or value <= 0 or value > 240:
        raise EMOInputError(f"fps {fps} is out of range: use a frame rate above 0 and at most 240 (e.g. 25 or 30)")
    if isinstance(fps, Fraction):
        return fps
    if abs(value - round(value)) < 1e-6:
        return Fraction(round(value))
    for k in _NTSC:
        if abs(value - k * 1000 / 1001) < 1e-3:
            return Fraction(k * 1000, 1001)
    return Fraction(value).limit_denominator(1001)


def count_frames(num_samples: int, sample_rate: int, fps) -> int:
    """Video frames that cover the audio: ceil(num_samples / sample_rate * fps), exact (Fractions).

    num_samples at sample_rate Hz; fps in frames per second (29.97 means 30000/1001).
    """
    rate = fps_fraction(fps)
    if sample_rate <= 0:
        raise EMOInputError(f"sample rate must be positive (got {sample_rate} Hz)")
    duration = Fraction(int(num_samples), int(sample_rate))
    if duration * rate < 1:
        raise EMOInputError(
            f"the audio lasts {float(duration):.3f} s, shorter than one frame at {float(rate):.5g} fps "
            f"({float(1 / rate):.3f} s): use a longer track")
    return math.ceil(duration * rate)
