"""Video out: stream frames into an H.264/AAC mp4 with PyAV (libavcodec/libavformat do the work).

Frames are encoded as they arrive, so memory does not grow with the video's length. The audio track is
trimmed or zero-padded to exactly the video's duration (frames / fps) and interleaved with the video.
"""

import os
from fractions import Fraction

import av
import numpy as np

from .audio import as_channels_samples, fps_fraction, resample, samples_for_frames
from .image import to_uint8_frames
from ..errors import EMOInputError

_H264 = ("libx264", "h264", "libopenh264")
_AUDIO_CHUNK = 1024  # samples per AAC frame


def _h264_codec() -> str:
    for name in _H264:
        try:
            av.Codec(name, "w")
            return name
        except Exception:  # unknown codec: try the next one
            continue
    raise EMOInputError("this PyAV build has no H.264 encoder (libx264, libopenh264): install the `av` wheel from PyPI")


class VideoWriter:
    """Write an mp4 (H.264 yuv420p + AAC) frame batch by frame batch.

    path: output file (.mp4); fps: frames per second (29.97 is stored as exactly 30000/1001);
    audio: `[channels, samples]` or `[samples]` float in [-1, 1] (1 or 2 channels kept, more are mixed to mono),
    sample_rate in Hz; crf: x264 quality (0 lossless .. 51 worst, 18 is visually lossless);
    metadata: string tags written into the container (e.g. {"comment": ..., "prompt": json}).
    Odd width/height are padded to even by repeating the last row/column.

        with VideoWriter("out.mp4", 25, audio=wav, sample_rate=16000) as w:
            for clip in clips:          # clip: [f, H, W, 3]
                w.write(clip)
    """

    def __init__(self, path, fps, audio=None, sample_rate=None, crf: int = 18, metadata: dict | None = None):
        self.path = os.fspath(path)
        self.fps = fps_fraction(fps)
        self.frames_written = 0
        self.size = None  # (width, height) of the frames given, before padding
        self.audio = None
        if audio is not None:
            if not sample_rate or sample_rate <= 0:
                raise EMOInputError("VideoWriter got audio without a sample rate: pass sample_rate in Hz")
            audio = as_channels_samples(audio)
            if audio.shape[0] > 2:
                audio = audio.mean(axis=0, keepdims=True)
            if audio.size and (audio.min() < -1 or audio.max() > 1):
                audio = np.clip(audio, -1, 1)  # a copy only when needed: the caller's array is never changed
            self.audio, self.sample_rate = audio, int(sample_rate)
        self.crf = int(crf)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise EMOInputError(f"output folder does not exist: {parent}: create it or choose another path")
        self.container = av.open(self.path, mode="w", format="mp4",
                                 options={"movflags": "+faststart+use_metadata_tags"})
        for key, value in (metadata or {}).items():
            self.container.metadata[str(key)] = str(value)
        self.video = None
        self.audio_stream = None
        self._audio_pos = 0  # samples of the (resampled) audio already sent to the encoder

    def _open_streams(self, width: int, height: int):
        self.video = self.container.add_stream(_h264_codec(), rate=self.fps)
        self.video.width, self.video.height = width + width % 2, height + height % 2
        self.video.pix_fmt = "yuv420p"
        self.video.codec_context.time_base = 1 / self.fps
        self.video.options = {"crf": str(self.crf)} if self.video.codec_context.name == "libx264" else {}
        cc = self.video.codec_context  # BT.709, limited range, tagged so that players convert back alike
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1
        if self.audio is not None:
            codec = av.Codec("aac", "w")
            rate = self.sample_rate if self.sample_rate in codec.audio_rates else 48000
            if rate != self.sample_rate:  # the AAC encoder takes a fixed list of rates: resample with swresample
                self.audio = resample(self.audio, self.sample_rate, rate)
                self.sample_rate = rate
            layout = "mono" if self.audio.shape[0] == 1 else "stereo"
            self.audio_stream = self.container.add_stream("aac", rate=rate, layout=layout)
            self.audio_stream.codec_context.time_base = Fraction(1, rate)
            self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate, frame_size=_AUDIO_CHUNK)

    def _write_audio(self, until: int):
        """Encode audio samples [_audio_pos, until): the track past its end is silence."""
        layout = "mono" if self.audio.shape[0] == 1 else "stereo"
        while self._audio_pos < until:
            end = min(until, self._audio_pos + 16 * _AUDIO_CHUNK)
            chunk = self.audio[:, self._audio_pos:end]
            if chunk.shape[1] < end - self._audio_pos:
                chunk = np.pad(chunk, ((0, 0), (0, end - self._audio_pos - chunk.shape[1])))
            chunk = np.ascontiguousarray(chunk, dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = self.sample_rate, self._audio_pos
            frame.time_base = Fraction(1, self.sample_rate)
            for f in self._resampler.resample(frame):  # re-chunks to the encoder's 1024-sample frames
                self.container.mux(self.audio_stream.encode(f))
            self._audio_pos = end

    def _audio_samples_at(self, frames: int) -> int:
        """Audio samples that last exactly `frames` video frames (`media.audio.samples_for_frames`)."""
        return samples_for_frames(frames, self.sample_rate, self.fps)

    def write(self, frames):
        """Encode `[f, H, W, 3]` frames (uint8, or float 0..1) now; nothing is kept in memory."""
        if self.container is None:
            raise EMOInputError(f"VideoWriter for {self.path} is already closed: open a new one")
        frames = to_uint8_frames(frames, "the video frames")
        h, w = frames.shape[1:3]
        if self.size is None:
            self.size = (w, h)
            self._open_streams(w, h)
        elif self.size != (w, h):
            raise EMOInputError(
                f"frame size changed from {self.size[0]}×{self.size[1]} to {w}×{h} px: every frame of a video "
                "must have the same size")
        pad = ((0, h % 2), (0, w % 2), (0, 0))
        for image in frames:
            if h % 2 or w % 2:
                image = np.pad(image, pad, mode="edge")
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace="itu709")
            frame.colorspace, frame.color_primaries, frame.color_trc, frame.color_range = 1, 1, 1, 1
            frame.pts = self.frames_written
            frame.time_base = self.video.codec_context.time_base
            self.container.mux(self.video.encode(frame))
            self.frames_written += 1
        if self.audio is not None:  # interleave: audio up to the video written so far
            self._write_audio(self._audio_samples_at(self.frames_written))

    def close(self):
        """Flush the encoders; the audio track ends exactly at frames / fps. Closing twice is harmless."""
        if self.container is None:
            return
        try:
            if self.video is not None:
                if self.audio is not None:
                    self._write_audio(self._audio_samples_at(self.frames_written))
                    for f in self._resampler.resample(None):
                        self.container.mux(self.audio_stream.encode(f))
                    self.container.mux(self.audio_stream.encode(None))
                self.container.mux(self.video.encode(None))
        finally:
            self.container.close()
            self.container = None
        if self.frames_written == 0:
            if os.path.exists(self.path):
                os.remove(self.path)
            raise EMOInputError(f"no frames were written to {self.path}: the video would be empty")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:  # an error while rendering: finish what was written, keep the original error
            try:
                self.close()
            except Exception:
                pass


def probe(path) -> dict:
    """Read back a video: frames (counted by decoding), fps (Fraction), duration (s), width, height (px),
    video_codec, audio_codec, audio_duration (s, the audio track's own), audio_sample_rate (Hz),
    audio_channels, metadata (dict). Audio entries are None without an audio track."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EMOInputError(f"video file not found: {path}")
    with av.open(path) as container:
        if not container.streams.video:
            raise EMOInputError(f"{path} has no video track")
        v = container.streams.video[0]
        a = container.streams.audio[0] if container.streams.audio else None
        info = dict(fps=v.average_rate, width=v.codec_context.width, height=v.codec_context.height,
                    video_codec=v.codec_context.name, audio_codec=a.codec_context.name if a else None,
                    audio_sample_rate=a.codec_context.sample_rate if a else None,
                    audio_channels=a.codec_context.layout.nb_channels if a else None,
                    duration=container.duration / av.time_base if container.duration else None,
                    metadata=dict(container.metadata))
        frames = sum(1 for _ in container.decode(v))
        # the track's own duration (the edit list drops the AAC encoder's priming and padding)
        audio_duration = float(a.duration * a.time_base) if a is not None and a.duration else None
    if a is not None and audio_duration is None:
        with av.open(path) as container:
            audio_duration = sum(f.samples for f in container.decode(audio=0)) / info["audio_sample_rate"]
    info.update(frames=frames, audio_duration=audio_duration)
    return info
