"""Reading training videos: frames upright and at a fixed frame rate, whatever the file's own rate.

`iter_frames(path, fps)` decodes the first video track with PyAV and yields (i, frame) for i = 0, 1, ... where
frame i is the source frame whose timestamp is nearest to t0 + i / fps (t0 = the first frame's timestamp; ties take
the earlier frame). That is how a variable-frame-rate phone video becomes constant-rate without drift: frames are
picked by time, not by count (a source frame may be repeated or dropped). The last output frame is the last one
whose time lies before the end of the source's last frame.

Rotation: phones store portrait video as landscape pixels plus a display matrix; `frame.rotation` (PyAV: the angle
the display matrix turns the picture counterclockwise, from the stream's side data) is applied with `np.rot90`, so
frames come out as a player shows them. Frames: uint8 [H, W, 3] RGB.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import av
import numpy as np


class CorruptVideo(Exception):
    """The file is not a video PyAV can decode (or has no video track)."""


@dataclass
class VideoInfo:
    frames: int          # output frames at `fps`
    fps: int
    start: float         # t0, seconds: the first frame's timestamp (audio is aligned to it)
    duration: float      # seconds covered by the video track from t0
    width: int           # upright (after rotation)
    height: int
    rotation: int        # degrees counterclockwise applied


def _upright(frame: av.VideoFrame) -> tuple[np.ndarray, int]:
    img = frame.to_ndarray(format="rgb24")
    try:
        rot = int(round((frame.rotation or 0) / 90)) % 4
    except (AttributeError, TypeError, ValueError):
        rot = 0
    return (np.ascontiguousarray(np.rot90(img, k=rot)) if rot else img), rot * 90


def _timed_frames(path):
    """(time in seconds, av.VideoFrame) in presentation order; frames without a timestamp get the previous + 1/rate."""
    try:
        container = av.open(os.fspath(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        raise CorruptVideo(f"cannot open: {e}") from None
    with container:
        if not container.streams.video:
            raise CorruptVideo("no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        last = None
        try:
            for frame in container.decode(stream):
                t = frame.time
                if t is None:
                    t = 0.0 if last is None else last + 1 / rate
                if last is not None and t <= last - 1e-6:  # broken timestamps: keep order
                    t = last + 1 / rate
                last = t
                yield t, frame
        except av.FFmpegError as e:
            if last is None:
                raise CorruptVideo(f"cannot decode: {e}") from None
            # a truncated tail: what decoded so far is kept (the length check against the audio decides)


def iter_frames(path, fps: int, info: dict | None = None):
    """Yield (i, uint8 [H, W, 3] upright RGB) at exactly `fps` (see the module docstring). If `info` is a dict it is
    filled with VideoInfo fields once the video is read to the end."""
    step = 1.0 / fps
    prev = None   # (time, frame)
    t0 = None
    i = 0
    n_src, gaps = 0, []
    shape, rotation = None, 0
    for t, frame in _timed_frames(path):
        n_src += 1
        if t0 is None:
            t0 = t
        if prev is not None:
            gaps.append(t - prev[0])
        while prev is not None and t0 + i * step <= t:  # target time between prev and this frame
            target = t0 + i * step
            pick = prev[1] if target - prev[0] <= t - target else frame
            img, rotation = _upright(pick)
            shape = img.shape
            yield i, img
            i += 1
        prev = (t, frame)
    if prev is None:
        raise CorruptVideo("no frames")
    frame_dur = float(np.median(gaps)) if gaps else step
    end = prev[0] + frame_dur
    while t0 + i * step < end - 1e-6 and t0 + i * step <= prev[0] + frame_dur / 2 + 1e-9:
        img, rotation = _upright(prev[1])
        shape = img.shape
        yield i, img
        i += 1
    if info is not None:
        info.update(VideoInfo(frames=i, fps=fps, start=float(t0), duration=float(end - t0), width=shape[1],
                              height=shape[0], rotation=rotation).__dict__)


def audio_start(path) -> float | None:
    """Start time (s) of the first audio track, None without one."""
    try:
        with av.open(os.fspath(path)) as c:
            if not c.streams.audio:
                return None
            a = c.streams.audio[0]
            return float(a.start_time * a.time_base) if a.start_time is not None else 0.0
    except (av.FFmpegError, OSError):
        return None
