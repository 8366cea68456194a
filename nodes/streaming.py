"""Long tracks in ComfyUI: frames that go through files, not through one IMAGE batch.

An IMAGE batch holds every frame as float32 (3.1 MB per 512² frame, 24.9 MB per 1920×1080 frame), so a song does not
fit in RAM. On the streamed path the sampler writes each clip, as it is made, into a lossless intermediate video
(RGB H.264 at qp 0, `.mkv`) in ComfyUI's temp folder and outputs it as a core VIDEO (`VideoFromFile`); Paste Back
and Video Combine read such a VIDEO batch by batch and write the next file the same way. Memory holds one batch.

Temp files: a failed or cancelled node removes its partial file at once; finished intermediates stay while ComfyUI's
cache may hand them to a later run, and ComfyUI empties its temp folder at every start. A video being written is a
hidden `.NAME.xxxxxxxx.part` file beside its final name (`media.video.VideoWriter`), renamed only when complete; one
left by a process that was killed outright (no chance to clean up) is removed from output/ when the pack next loads
(`remove_stale_parts`).
"""
from __future__ import annotations

import logging
import os
import re
import time
import uuid
from fractions import Fraction

import torch

import folder_paths

from ..emo_model.errors import EMOInputError
from ..emo_model.media.video import VideoWriter, read_frames
from .comfy_bridge import InputImpl

log = logging.getLogger(__name__)

BATCH = 16  # frames decoded / pasted / encoded at a time on the streamed path
TEMP_SUBFOLDER = "emo"


class StreamedVideo(InputImpl.VideoFromFile):
    """A core VIDEO backed by one of the pack's files, with what the pack knows without decoding it:
    `path`, `frame_rate` (Fraction, frames per second), `frame_count` and `size` ((width, height) in px)."""

    def __init__(self, path: str, frame_rate: Fraction, frame_count: int, size: tuple[int, int]):
        super().__init__(path)
        self.path, self.frame_rate, self.frame_count, self.size = path, frame_rate, frame_count, size


def temp_folder() -> str:
    folder = os.path.join(folder_paths.get_temp_directory(), TEMP_SUBFOLDER)
    os.makedirs(folder, exist_ok=True)
    return folder


class TempVideo:
    """Write frames into a new lossless intermediate in ComfyUI's temp folder:

        with TempVideo(fps, "sampler") as out:
            out.write(frames)            # IMAGE-style float 0..1 or uint8 [n, H, W, 3]
        video = out.video                # StreamedVideo, set only when the block ended without an error

    On an error or Cancel inside the block the partial file is deleted and the error goes on."""

    def __init__(self, fps, what: str):
        self.fps = Fraction(fps)
        self.path = os.path.join(temp_folder(), f"{what}_{uuid.uuid4().hex[:12]}.mkv")
        self.writer = None
        self.video = None

    def __enter__(self) -> "TempVideo":
        self.writer = VideoWriter(self.path, self.fps, lossless=True)
        return self

    def write(self, frames) -> None:
        if isinstance(frames, torch.Tensor) and frames.is_floating_point():
            frames = (frames[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8)
        self.writer.write(frames)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.writer.close()
            self.video = StreamedVideo(self.path, self.writer.fps, self.writer.frames_written, self.writer.size)
            return False
        self.writer.abort()  # the writer's temporary file goes; nothing was ever at self.path
        return False


def video_frame_rate(video) -> Fraction:
    if isinstance(video, StreamedVideo):
        return video.frame_rate
    return Fraction(video.get_components().frame_rate)


def video_batches(video, batch: int = BATCH, start: int = 0):
    """Frames of any core VIDEO as IMAGE batches `[n <= batch, H, W, 3]` float32 0..1. A file-backed VIDEO is decoded
    batch by batch from frame `start` (flat memory); a VIDEO made from components already holds its frames and is
    sliced."""
    if video is None:
        raise EMOInputError("no VIDEO connected")
    if isinstance(video, StreamedVideo):
        source = video.path
    elif isinstance(video, InputImpl.VideoFromFile):  # e.g. core Load Video: a path or an in-memory file
        source = video.get_stream_source() if hasattr(video, "get_stream_source") else video._file
    else:  # VideoFromComponents: its frames are in memory already (get_stream_source would encode them all)
        source = None
    if source is not None:
        for chunk in read_frames(source, batch, start):
            yield torch.from_numpy(chunk).float() / 255.0
        return
    images = video.get_components().images
    for first in range(start, images.shape[0], batch):
        yield images[first:first + batch, ..., :3].float().cpu()


def output_linked(prompt: dict | None, unique_id, index: int) -> bool:
    """Whether output `index` of node `unique_id` feeds any input in the API prompt. Unknown (no prompt): True."""
    if prompt is None or unique_id is None:
        return True
    link = [str(unique_id), index]
    for node in prompt.values():
        for value in (node.get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and [str(value[0]), value[1]] == link:
                return True
    return False


def placeholder_image() -> torch.Tensor:
    """What an IMAGE output that nothing reads returns: one black pixel (the frames went to the VIDEO output)."""
    return torch.zeros(1, 1, 1, 3)


# what VideoWriter._reserve_temp names a video while it is written: ".NAME.EXT.<8 hex>.part"
_PART = re.compile(r"^\..+\.(mp4|m4v|mov|mkv)\.[0-9a-f]{8}\.part$")
STALE_SECONDS = 600  # a .part untouched this long is no render's (a render appends to it every few seconds)


def remove_stale_parts(folder: str | None = None, older_than: float = STALE_SECONDS) -> list[str]:
    """Delete the pack's partial videos that a killed process left in `folder` (default: ComfyUI's output folder) and
    its subfolders: only hidden files named as VideoWriter names them and not written to for `older_than` seconds
    (another ComfyUI sharing the folder may be writing one now). Returns the paths removed; errors are logged."""
    folder = folder or folder_paths.get_output_directory()
    removed, now = [], time.time()
    for root, _, files in os.walk(folder):
        for name in files:
            if not _PART.match(name):
                continue
            path = os.path.join(root, name)
            try:
                if now - os.stat(path).st_mtime > older_than:
                    os.remove(path)
                    removed.append(path)
            except OSError as e:
                log.warning("EMO: could not remove the partial video %s left by an earlier run: %s", path, e)
    if removed:
        log.info("EMO: removed %d partial video(s) left in %s by a run that was killed: %s", len(removed), folder,
                 ", ".join(os.path.relpath(p, folder) for p in removed))
    return removed
