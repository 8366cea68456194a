"""Synthetic talking faces for the learning check: drawn heads whose mouth opening follows the loudness of speech
made here in Python, and heads that turn (roll) at known speeds. Written as ordinary mp4 files with sound, so
`prepare-data` takes them like any video (use `--whole-frame`: the built-in detector does not see drawn faces).

* Speech (`synth_speech`): a formant synthesizer: a glottal pulse train at the speaker's pitch (with drift and
  jitter) through three two-pole resonators at the formants of a random vowel (a e i o u, scaled per speaker), one
  syllable at a time with a raised-cosine envelope, an optional noise burst for a consonant onset, gaps and pauses.
  No espeak-ng needed. float32 [samples] at 16 kHz in [-1, 1].
* Loudness (`frame_loudness`, in metrics): RMS of the samples of each video frame.
  Mouth opening drawn = `mouth_opening(loudness)` = clip(rms / RMS_FULL, 0, 1): a fixed function of the audio of
  that frame alone, the same for every speaker.
* Faces (`face_style`, `draw_face`): per identity a head ellipse (aspect ratio), skin, hair, background and eye
  colours, eye spacing and size, mouth width. The mouth is a dark ellipse (height grows with the opening); eyes and
  mouth are the only dark parts of a face (`metrics.mouth_opening_from_frames` relies on this).
* Head motion (`roll_track`): in-plane rotation (roll) about the head's centre at a constant |speed| in degrees per
  frame: "swing", back and forth between +-ROLL_AMPLITUDE degrees, or "sweep", one way from -SWEEP_AMPLITUDE to
  +SWEEP_AMPLITUDE (the learning check's default: a first clip that starts still then has one way to turn, not a
  coin toss between two).

Frames: uint8 [H, W, 3] RGB, square (size x size px).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.signal import lfilter

SAMPLE_RATE = 16000
RMS_FULL = 0.35          # frame RMS at which the mouth is fully open
ROLL_AMPLITUDE = 14.0    # degrees: heads turn back and forth between +- this
SWEEP_AMPLITUDE = 40.0   # degrees: a sweeping head turns from -this to +this (then its video ends)
VOWELS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010), "o": (570, 840, 2410),
          "u": (300, 870, 2240)}
BANDWIDTHS = (90, 110, 170)  # Hz, of the three formants


# ----------------------------------------------------------------------------- speech

@dataclass(frozen=True)
class Voice:
    f0: float             # mean pitch, Hz
    formant_scale: float  # vocal-tract length: formants x this
    rate: float           # syllable duration x this
    breath: float         # noise mixed into the source (0..1)


def voice(speaker: int) -> Voice:
    rng = np.random.default_rng(10_000 + speaker)
    return Voice(f0=float(rng.uniform(95, 230)), formant_scale=float(rng.uniform(0.9, 1.17)),
                 rate=float(rng.uniform(0.8, 1.25)), breath=float(rng.uniform(0.02, 0.12)))


def _resonator(freq: float, bw: float, sr: int):
    r = math.exp(-math.pi * bw / sr)
    th = 2 * math.pi * freq / sr
    a = [1.0, -2 * r * math.cos(th), r * r]
    return [sum(a)], a  # unit gain at DC


def synth_speech(seconds: float, speaker: int = 0, seed: int = 0, sr: int = SAMPLE_RATE,
                 pause_every: float = 0.15) -> np.ndarray:
    """Speech-like sound: float32 [round(seconds * sr)] in [-1, 1] (peak 0.8). Syllables 0.1-0.35 s with gaps of
    0.03-0.15 s and, with probability `pause_every` per syllable, a pause of 0.25-0.6 s (the mouth closes)."""
    v = voice(speaker)
    rng = np.random.default_rng(seed * 7919 + speaker)
    n = int(round(seconds * sr))
    out = np.zeros(n, np.float64)
    t = int(rng.uniform(0.05, 0.2) * sr)
    while t < n:
        dur = int(rng.uniform(0.10, 0.35) * v.rate * sr)
        seg = min(dur, n - t)
        if seg < 0.04 * sr:
            break
        idx = np.arange(seg)
        f0 = v.f0 * (1 + 0.08 * math.sin(rng.uniform(0, 6.3)) + 0.05 * np.sin(2 * np.pi * idx / seg))
        phase = np.cumsum(f0 * (1 + 0.01 * rng.standard_normal(seg)) / sr) % 1.0
        source = (2 * phase - 1) + v.breath * rng.standard_normal(seg)
        y = source
        for f, bw in zip(VOWELS[rng.choice(list(VOWELS))], BANDWIDTHS):
            b, a = _resonator(f * v.formant_scale, bw, sr)
            y = lfilter(b, a, y)
        y /= np.abs(y).max() + 1e-9
        env = np.sin(np.pi * np.minimum(1.0, np.minimum(idx, seg - idx) / (0.35 * seg) * 0.5)) ** 2
        env = np.minimum(env, 1.0)
        y *= env * rng.uniform(0.35, 1.0)
        if rng.random() < 0.5:  # consonant onset: a short noise burst
            k = int(min(seg, rng.uniform(0.015, 0.04) * sr))
            y[:k] += 0.25 * rng.standard_normal(k) * np.hanning(2 * k)[:k]
        out[t:t + seg] += y
        t += seg + int(rng.uniform(0.03, 0.15) * sr)
        if rng.random() < pause_every:
            t += int(rng.uniform(0.25, 0.6) * sr)
    out += 1e-4 * rng.standard_normal(n)
    out *= 0.8 / (np.abs(out).max() + 1e-9)
    return out.astype(np.float32)


def mouth_opening(loudness: np.ndarray) -> np.ndarray:
    """Mouth opening 0..1 drawn for frames of RMS `loudness` (see `metrics.frame_loudness`)."""
    return np.clip(np.asarray(loudness, np.float64) / RMS_FULL, 0.0, 1.0)


# ----------------------------------------------------------------------------- faces

@dataclass(frozen=True)
class FaceStyle:
    skin: tuple
    hair: tuple
    background: tuple
    iris: tuple
    aspect: float        # head height / width
    head: float          # head half-width as a fraction of the frame side
    eye_spacing: float   # eye offset from the centre line, fraction of the head half-width
    eye_size: float
    mouth_width: float   # mouth half-width, fraction of the head half-width


def face_style(identity: int) -> FaceStyle:
    """A distinct drawn face per identity (deterministic). Skin is light enough that eyes and mouth are the only
    dark parts of the face."""
    rng = np.random.default_rng(identity)
    skin = tuple(int(c) for c in rng.uniform([170, 120, 90], [255, 225, 200]))
    hair = tuple(int(c) for c in rng.uniform([20, 10, 0], [200, 160, 120]))
    bg = tuple(int(c) for c in rng.uniform([30, 60, 80], [120, 170, 230]))
    if identity % 3 == 1:
        bg = bg[::-1]
    iris = tuple(int(c) for c in rng.uniform([30, 40, 60], [90, 120, 140]))
    return FaceStyle(skin, hair, bg, iris, aspect=float(rng.uniform(1.15, 1.4)), head=float(rng.uniform(0.27, 0.33)),
                     eye_spacing=float(rng.uniform(0.32, 0.45)), eye_size=float(rng.uniform(0.13, 0.18)),
                     mouth_width=float(rng.uniform(0.3, 0.45)))


def draw_face(style: FaceStyle, size: int, opening: float, roll: float = 0.0) -> np.ndarray:
    """One frame: uint8 [size, size, 3] RGB. opening: mouth 0 (closed) .. 1 (wide open); roll: head rotation in
    degrees (positive = counter-clockwise on screen) about the head centre (frame centre, a little low)."""
    ss = 4  # supersampling, then INTER_AREA down: smooth edges at 64 px
    S = size * ss
    img = np.empty((S, S, 3), np.uint8)
    img[:] = style.background
    cx, cy = S / 2, S * 0.53
    rx = style.head * S
    a = math.radians(roll)
    ca, sa = math.cos(a), math.sin(a)

    u = np.linspace(0, 2 * np.pi, 96, endpoint=False)

    def ell(x, y, ax, ay, color):  # a polygon, not cv2.ellipse, which rounds its angle to whole degrees
        px, py = (x + ax * np.cos(u)) * rx, (y + ay * np.sin(u)) * rx
        pts = np.stack([cx + ca * px + sa * py, cy - sa * px + ca * py], -1)
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], color, cv2.LINE_AA, 4)

    ell(0, -0.25 * style.aspect, 1.06, style.aspect * 0.8, style.hair)  # hair behind the top of the head
    ell(0, 0, 1.0, style.aspect, style.skin)
    ey = -0.22 * style.aspect
    for sx in (-1, 1):
        ex = sx * style.eye_spacing
        ell(ex, ey, style.eye_size * 1.3, style.eye_size, (245, 245, 245))
        ell(ex, ey, style.eye_size * 0.62, style.eye_size * 0.62, style.iris)
        ell(ex, ey, style.eye_size * 0.3, style.eye_size * 0.3, (10, 10, 10))
        ell(ex, ey - style.eye_size * 2.0, style.eye_size * 1.4, style.eye_size * 0.28,
            tuple(int(c * 0.6) for c in style.hair))
    nose = tuple(int(c * 0.8) for c in style.skin)
    ell(0, 0.12 * style.aspect, 0.09, 0.16, nose)
    my = 0.5 * style.aspect
    op = float(np.clip(opening, 0, 1))
    lips = (int(style.skin[0] * 0.75), int(style.skin[1] * 0.45), int(style.skin[2] * 0.45))
    ell(0, my, style.mouth_width * 1.08, 0.05 + 0.36 * op + 0.03, lips)
    ell(0, my, style.mouth_width, 0.035 + 0.36 * op, (40, 8, 14))  # the dark mouth: taller when open
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def roll_track(num_frames: int, speed: float, amplitude: float = ROLL_AMPLITUDE, phase: float = 0.0,
               motion: str = "swing") -> np.ndarray:
    """Roll angles (degrees) [num_frames] at |d roll / d frame| = speed (degrees per frame).
    motion "swing": back and forth between +-amplitude (a triangle wave; the speed holds except at the turning
    points), phase 0..1 picks where in the swing frame 0 is. "sweep": one way only, counter-clockwise from
    -amplitude (phase 0) on, so a clip that starts still has one way to go (`sweep_frames`: how many frames stay
    within +-amplitude)."""
    if speed <= 0:
        return np.zeros(num_frames)
    if motion == "sweep":
        return amplitude * (2 * phase - 1) + speed * np.arange(num_frames)
    if motion != "swing":
        raise ValueError(f"motion is 'swing' or 'sweep' (got {motion!r})")
    period = 4 * amplitude / speed
    u = (np.arange(num_frames) / period + phase) % 1.0
    return amplitude * (4 * np.abs(u - 0.5) - 1)  # triangle wave, slope 4*amplitude/period = speed


def sweep_frames(speed: float, amplitude: float = SWEEP_AMPLITUDE) -> int:
    """Frames of a sweep from -amplitude to +amplitude at `speed` degrees per frame."""
    return int(2 * amplitude / speed) + 1


# ----------------------------------------------------------------------------- videos

def frame_loudness(waveform: np.ndarray, num_frames: int, fps: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    from .metrics import frame_loudness as fl
    return fl(waveform, num_frames, fps, sr)


def talking_video(path, identity: int, speaker: int, seconds: float, fps: int = 25, size: int = 96,
                  speed: float = 0.0, seed: int = 0, phase: float = 0.0, motion: str = "swing") -> dict:
    """Write a drawn talking face to `path` (mp4, H.264 + AAC, 16 kHz mono speech); the head turns at `speed`
    deg/frame as `roll_track`'s `motion` (a "sweep" video ends when the head reaches +SWEEP_AMPLITUDE, however
    long `seconds` is). Returns what was drawn:
    {"opening" [T], "roll" [T] degrees, "speed" deg/frame, "loudness" [T], "waveform", "fps", "frames" T}."""
    from ..media.video import VideoWriter
    t = int(math.floor(seconds * fps))
    amplitude = ROLL_AMPLITUDE
    if motion == "sweep" and speed > 0:  # the video ends when the head reaches +SWEEP_AMPLITUDE
        amplitude = SWEEP_AMPLITUDE
        t = min(t, sweep_frames(speed))
        seconds = t / fps
    wave = synth_speech(seconds, speaker=speaker, seed=seed)
    loud = frame_loudness(wave, t, fps)
    opening = mouth_opening(loud)
    roll = roll_track(t, speed, amplitude, phase=phase, motion=motion)
    style = face_style(identity)
    with VideoWriter(path, fps, audio=wave, sample_rate=SAMPLE_RATE, crf=16) as w:
        for i in range(0, t, 25):
            w.write(np.stack([draw_face(style, size, opening[j], roll[j]) for j in range(i, min(t, i + 25))]))
    return {"opening": opening, "roll": roll, "speed": speed, "loudness": loud, "waveform": wave, "fps": fps,
            "frames": t}


def make_synthetic_set(folder, identities=range(6), speeds=(0.0, 0.5, 1.0, 2.0, 3.0), seconds: float = 8.0,
                       fps: int = 25, size: int = 96, moving_seconds: float | None = None,
                       motion: str = "swing", sweeps: int = 1) -> dict:
    """The learning check's training videos in `folder`: `talk_IDxx.mp4` (one per identity, still head, each with its
    own voice) and `move_IDxx_S.mp4` (identities taking turns, one per speed in `speeds` deg/frame, also talking;
    heads `motion` "swing" or "sweep" (`roll_track`); a sweeping head's video ends at the far side, so each speed
    above 0 gets `sweeps` of them). Returns {file name: talking_video's dict}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    ids = list(identities)
    for k, i in enumerate(ids):
        out[f"talk_ID{i:02d}.mp4"] = talking_video(folder / f"talk_ID{i:02d}.mp4", i, i, seconds, fps, size, seed=1)
    for k, s in enumerate(speeds):
        for j in range(sweeps if motion == "sweep" and s > 0 else 1):
            i = ids[(k + j * len(speeds)) % len(ids)]
            name = f"move_ID{i:02d}_{s:g}".replace(".", "p") + (f"_{j}" if j else "") + ".mp4"
            out[name] = talking_video(folder / name, i, i, moving_seconds or seconds, fps, size, speed=s,
                                      seed=2 + k + 100 * j, phase=0.25 if motion == "swing" else 0.0, motion=motion)
    return out


def make_heldout(folder, identity: int = 99, speaker: int = 99, seconds: float = 4.0, size: int = 96,
                 name: str = "heldout") -> tuple[Path, Path]:
    """A held-out pair as `learning_check --heldout` takes it: NAME.wav (speech of an unseen voice) and
    NAME_ref.png (a closed-mouth, upright face not seen in training). Returns (wav, png)."""
    import av
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wave = synth_speech(seconds, speaker=speaker, seed=5)
    wav = folder / f"{name}.wav"
    with av.open(str(wav), "w") as c:
        st = c.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray((np.clip(wave, -1, 1) * 32767).astype(np.int16)[None], format="s16",
                                           layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for p in st.encode(frame):
            c.mux(p)
        for p in st.encode(None):
            c.mux(p)
    png = folder / f"{name}_ref.png"
    cv2.imwrite(str(png), cv2.cvtColor(draw_face(face_style(identity), size, 0.0), cv2.COLOR_RGB2BGR))
    return wav, png
