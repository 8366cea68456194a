"""Video out: stream frames into an H.264/AAC mp4 with PyAV (libavcodec/libavformat do the work).

Frames are encoded as they arrive, so memory does not grow with the video's length. The audio track is
trimmed or zero-padded to exactly the video's duration (frames / fps) and interleaved with the video.
The video is written under a temporary name beside the target and renamed only once it is complete: a failed or
interrupted render leaves nothing behind, and a file the pack did not create is never deleted.
"""

import logging
import math
import os
import secrets
from fractions import Fraction

import av
import numpy as np

from .audio import as_channels_samples, fps_fraction, resample, samples_for_frames
from .image import to_uint8_frames
from ..errors import EMOInputError

logger = logging.getLogger(__name__)

_H264 = ("libx264", "h264", "libopenh264")
KEY_INTERVAL = 32  # frames between key frames of a lossless intermediate: a seek decodes at most this many extra
LOSSLESS_CODEC = "libx264rgb"  # H.264 on RGB at qp 0: bit-exact frames, ~20-300 KB per 512² frame, fast to decode
_AUDIO_CHUNK = 1024  # samples per AAC frame
# File name endings the writer accepts -> the container it writes (H.264 + AAC fit each of them; webm does not).
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


def container_format(path) -> str:
    """The container for an output path, from its ending (.mp4, .m4v, .mov, .mkv); anything else is refused, so
    that a video is never written under a name such as `speech.wav`."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in CONTAINERS:
        return CONTAINERS[ext]
    why = ("webm holds only VP8/VP9 video, and the pack writes H.264" if ext == ".webm"
           else f"'{ext}' is not a video file ending" if ext else "it has no file ending")
    raise EMOInputError(f"cannot write the video to {path}: {why}: name it .mp4 (or {', '.join(list(CONTAINERS)[1:])})")


def check_output_path(out, inputs=()) -> None:
    """Refuse an output path that would destroy an input or could not hold the video: not a video ending, an
    existing folder, or the same file as (or a file inside) one of `inputs` (the picture, the track, pose files)."""
    out = os.path.abspath(os.fspath(out))
    if os.path.isdir(out):
        raise EMOInputError(f"the output {out} is a folder: give a file name such as {os.path.join(out, 'video.mp4')}")
    container_format(out)
    for given in inputs:
        if given is None or not isinstance(given, (str, os.PathLike)):
            continue
        path = os.path.abspath(os.fspath(given))
        same = os.path.exists(out) and os.path.exists(path) and os.path.samefile(out, path)
        if same or path == out:
            raise EMOInputError(f"the output {out} is the same file as the input {given}: writing it would destroy "
                                "the input; choose another output name")
        if os.path.isdir(path) and os.path.commonpath([path, out]) == path:
            raise EMOInputError(f"the output {out} is inside the input folder {given}: it would be taken for one of "
                                "its files next time; choose a name outside it")


def free_name(path) -> str:
    """`path` when nothing is there, else the first free `name_2.ext`, `name_3.ext`, ..."""
    path = os.fspath(path)
    stem, ext = os.path.splitext(path)
    n = 2
    while os.path.lexists(path):
        path, n = f"{stem}_{n}{ext}", n + 1
    return path


def _h264_codec() -> str:
    for name in _H264:
        try:
            av.Codec(name, "w")
            return name
        except ValueError:  # av's UnknownCodecError: this build lacks it, try the next one
            continue
    raise EMOInputError("this PyAV build has no H.264 encoder (libx264, libopenh264): install the `av` wheel from PyPI")


class VideoWriter:
    """Write an mp4 (H.264 yuv420p + AAC) frame batch by frame batch.

    path: output file (.mp4); fps: frames per second (29.97 is stored as exactly 30000/1001);
    audio: `[channels, samples]` or `[samples]` float in [-1, 1] (1 or 2 channels kept, more are mixed to mono),
    sample_rate in Hz; crf: x264 quality (0 lossless .. 51 worst, 18 is visually lossless);
    metadata: string tags written into the container (e.g. {"comment": ..., "prompt": json}).
    Odd width/height are padded to even by repeating the last row/column. The container follows the ending of
    `path` (.mp4, .m4v, .mov, .mkv; others are refused).

    Frames go to a hidden temporary file beside `path` (`.name.xxxx.part`); `close()` renames it to `path` once the
    video is complete. overwrite=False: a file at `path` (one that appeared meanwhile, too) is kept and the video takes
    the next free name (`name_2.mp4`; `self.path` says which); overwrite=True replaces it. An error or Ctrl-C inside the
    `with` block (or `abort()`) deletes the temporary file and leaves `path` as it was.

        with VideoWriter("out.mp4", 25, audio=wav, sample_rate=16000) as w:
            for clip in clips:          # clip: [f, H, W, 3]
                w.write(clip)
    """

    def __init__(self, path, fps, audio=None, sample_rate=None, crf: int = 18, metadata: dict | None = None,
                 overwrite: bool = False, lossless: bool = False):
        self.path = os.fspath(path)
        self.overwrite = overwrite
        self.lossless = bool(lossless)  # an intermediate file: RGB H.264 at qp 0 (.mkv: bit-exact frames)
        fmt = container_format(self.path)
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
        if os.path.isdir(self.path):
            raise EMOInputError(f"the output {self.path} is a folder: give a file name ending in .mp4")
        self.container = None
        self._tmp = self._reserve_temp(parent, os.path.basename(self.path))
        try:
            options = {"movflags": "+faststart+use_metadata_tags"} if fmt in ("mp4", "mov") else {}
            self.container = av.open(self._tmp, mode="w", format=fmt, options=options)
            for key, value in (metadata or {}).items():
                self.container.metadata[str(key)] = str(value)
        except BaseException:
            self.abort()
            raise
        self.video = None
        self.audio_stream = None
        self._audio_pos = 0  # samples of the (resampled) audio already sent to the encoder

    @staticmethod
    def _reserve_temp(folder: str, name: str) -> str:
        """Create an empty, hidden, uniquely named file beside the target (so the final rename stays on one file
        system) with the usual permissions (0666 less the umask), and return its path."""
        while True:
            tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part")
            try:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                return tmp
            except FileExistsError:
                continue

    def _open_streams(self, width: int, height: int):
        self.video = self.container.add_stream(LOSSLESS_CODEC if self.lossless else _h264_codec(), rate=self.fps)
        self.video.width, self.video.height = width + width % 2, height + height % 2
        self.video.codec_context.time_base = 1 / self.fps
        if self.lossless:
            self.video.pix_fmt = "rgb24"
            self.video.options = {"qp": "0", "preset": "veryfast", "g": str(KEY_INTERVAL)}
            if self.audio is not None:
                raise EMOInputError("a lossless intermediate video carries no audio: mux the audio into the final mp4")
            return
        self.video.pix_fmt = "yuv420p"
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
            if not self.lossless:
                frame = frame.reformat(format="yuv420p", dst_colorspace="itu709")
                frame.colorspace, frame.color_primaries, frame.color_trc, frame.color_range = 1, 1, 1, 1
            frame.pts = self.frames_written
            frame.time_base = self.video.codec_context.time_base
            self.container.mux(self.video.encode(frame))
            self.frames_written += 1
        if self.audio is not None:  # interleave: audio up to the video written so far
            self._write_audio(self._audio_samples_at(self.frames_written))

    def close(self):
        """Flush the encoders (the audio track ends exactly at frames / fps) and move the finished video to its
        name. Without any frame nothing is written and EMOInputError is raised. Closing twice is harmless."""
        if self.container is None:
            return
        try:
            if self.frames_written == 0:
                raise EMOInputError(f"no frames were written to {self.path}: the video would be empty")
            if self.audio is not None:
                self._write_audio(self._audio_samples_at(self.frames_written))
                for f in self._resampler.resample(None):
                    self.container.mux(self.audio_stream.encode(f))
                self.container.mux(self.audio_stream.encode(None))
            self.container.mux(self.video.encode(None))
            self.container.close()
            self.container = None
            self.path = self._publish()
        except BaseException:
            self.abort()
            raise

    def _publish(self) -> str:
        """Move the complete temporary file to its name; returns the name it got."""
        tmp, self._tmp = self._tmp, None
        if self.overwrite:
            os.replace(tmp, self.path)
            return self.path
        target = self.path
        while True:
            try:
                os.link(tmp, target)  # fails, rather than replaces, when the name is taken
                break
            except FileExistsError:
                target = free_name(target)
            except OSError:  # a file system without hard links: check, then rename
                target = free_name(target)
                os.replace(tmp, target)
                tmp = None
                break
        if tmp is not None:
            os.remove(tmp)
        if target != self.path:
            logger.warning("%s exists and is kept; the video is %s", self.path, target)
        return target

    def abort(self):
        """Drop the video being written: the temporary file is deleted, the target path is left as it was."""
        container, self.container = self.container, None
        if container is not None:
            try:
                container.close()
            except Exception as e:  # a half-written container may fail to finalise: it is deleted anyway
                logger.debug("closing the unfinished video %s failed: %s", self._tmp, e)
        tmp, self._tmp = self._tmp, None
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:  # an error or Ctrl-C while rendering: nothing is kept, the original error propagates
            self.abort()

    def __del__(self):
        if getattr(self, "_tmp", None) is not None:  # never closed (no `with`): leave no temporary file behind
            self.abort()


def read_frames(path, batch: int = 16, start: int = 0):
    """Decode a video (a path or a binary file object) batch by batch from frame `start`: yields uint8 numpy
    `[n <= batch, H, W, 3]` RGB; memory holds one batch, never the whole video. A `start` past 0 seeks to the key
    frame before it (the pack's intermediates have one every KEY_INTERVAL frames), so reading batch k of a long
    video does not decode the k-1 batches before it. The pack's lossless intermediates decode bit-exact."""
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise EMOInputError(f"video file not found: {path}: it may have been removed from ComfyUI's temp folder "
                            "(ComfyUI empties it at start): run the node that made it again")
    with av.open(path) as container:
        if not container.streams.video:
            raise EMOInputError(f"{path} has no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        if start > 0 and rate:
            container.seek(int(Fraction(start) / Fraction(rate) / stream.time_base), stream=stream, backward=True)
        chunk, index = [], None
        for frame in container.decode(stream):
            if start > 0:  # after a seek: the frame's index from its time stamp
                index = round(Fraction(frame.pts * stream.time_base) * Fraction(rate)) if frame.pts is not None \
                    else (0 if index is None else index + 1)
                if index < start:
                    continue
            chunk.append(frame.to_ndarray(format="rgb24"))
            if len(chunk) == batch:
                yield np.stack(chunk)
                chunk = []
        if chunk:
            yield np.stack(chunk)


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
