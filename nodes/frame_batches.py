"""EMO Frame Batches: a long VIDEO through IMAGE nodes (face restorers, upscalers) a batch at a time.

ComfyUI runs a graph once per queued prompt, and an IMAGE batch holds all its frames, so a whole song cannot pass
through an IMAGE node at once. This node uses the mechanism of VideoHelperSuite's Meta Batch Manager, without its
browser extension: each run outputs the next `frames_per_batch` frames of the VIDEO; EMO Video Combine (given this
node's `batch`) appends them to an intermediate file and, once they are safely written, queues the same prompt again,
until the last batch, after which it writes the mp4 with the audio. Nodes upstream (the sampler) come from ComfyUI's
cache, nodes downstream run once per batch. Memory holds one batch.

A batch that fails or is cancelled is not counted: queueing the workflow again resumes at that batch.
"""
from __future__ import annotations

import itertools
import json
import logging
import threading
import urllib.request
import uuid
from dataclasses import dataclass

import torch

from ..emo_model.errors import EMOInputError
from .comfy_bridge import CATEGORY, io
from .streaming import StreamedVideo, video_batches

log = logging.getLogger(__name__)

EmoBatch = io.Custom("EMO_BATCH")


@dataclass(frozen=True)
class BatchInfo:
    """EMO_BATCH socket: which batch of which run this is. `run` names one pass over the video (all its batches),
    `index` counts from 0, `count` batches in all, `first_frame` the batch's first frame in the video."""
    run: str
    index: int
    count: int
    first_frame: int
    total_frames: int
    key: tuple

    @property
    def last(self) -> bool:
        return self.index == self.count - 1


# (node id, frames_per_batch, frames in the video) -> (run id, next batch index): the one piece of state that lives between
# prompts. EMO Video Combine moves it on once a batch is written (`advance`) and removes it after the last.
_STATE: dict[tuple, tuple[str, int]] = {}
_TICK = itertools.count()


def advance(info: BatchInfo) -> None:
    """The batch `info` is written: the next run gets the next batch (or, after the last, a new pass starts)."""
    if info.last:
        _STATE.pop(info.key, None)
    else:
        _STATE[info.key] = (info.run, info.index + 1)


def _frame_count(video) -> int:
    if isinstance(video, StreamedVideo):
        return video.frame_count
    return sum(b.shape[0] for b in video_batches(video))


def requeue(prompt: dict, extra_pnginfo) -> None:
    """Queue `prompt` again on this ComfyUI server (its HTTP API, as the browser would), after this run."""
    from server import PromptServer
    server = PromptServer.instance
    # ComfyUI writes each node's fingerprint into the prompt it runs ("is_changed"): sent back as it is, the next run
    # would reuse this run's fingerprint and serve EMO Frame Batches from the cache
    prompt = {nid: {k: v for k, v in node.items() if k != "is_changed"} for nid, node in prompt.items()}
    body = {"prompt": prompt, "extra_data": {"extra_pnginfo": extra_pnginfo or {}}}
    if getattr(server, "client_id", None):
        body["client_id"] = server.client_id  # progress and previews go to the browser that queued the first run
    host = server.address if server.address not in ("0.0.0.0", "::", "") else "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{server.port}/prompt"

    def post():
        try:
            request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=30).read()
        except OSError as e:
            log.error("EMO Frame Batches could not queue the next batch at %s: %s", url, e)

    threading.Thread(target=post, daemon=True).start()


class EMOFrameBatches(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMOFrameBatches",
            display_name="EMO Frame Batches",
            category=CATEGORY,
            description="Sends a long VIDEO (EMO Sampler's or Paste Back's `video`) through IMAGE nodes such as face "
                        "restorers or upscalers a batch at a time: each queued run outputs the next batch of frames "
                        "and queues the workflow again until the video is done (the sampler is not run again: "
                        "ComfyUI reuses its result). Connect `batch` to EMO Video Combine, which joins the batches "
                        "into one mp4. RAM holds one batch, so a song of any length works.",
            inputs=[
                io.Video.Input("video", tooltip="The frames to process, e.g. EMO Sampler's `video` output."),
                io.Int.Input("frames_per_batch", default=64, min=1, max=4096,
                             tooltip="Frames per run. More is faster but needs more memory in the IMAGE nodes "
                                     "downstream (a 512² frame is 3 MB as IMAGE, 1080p 25 MB)."),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="This run's batch of frames, IMAGE [n, H, W, 3]."),
                EmoBatch.Output(display_name="batch", tooltip="Which batch this is: connect to EMO Video Combine's "
                                                             "`batch` input."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return next(_TICK)  # a new batch every run: never served from ComfyUI's cache

    @classmethod
    def execute(cls, video, frames_per_batch):
        hidden = cls.hidden
        node_id = hidden.unique_id if hidden is not None else None
        total = _frame_count(video)
        if total == 0:
            raise EMOInputError("EMO Frame Batches: the video has no frames")
        count = -(-total // frames_per_batch)
        # keyed by node, batch size and length, not by the VIDEO object: when ComfyUI runs the sampler again for a
        # queued batch (no cache, e.g. --cache-none) the same seed gives the same video under another temp name
        key = (node_id, frames_per_batch, total)
        run, index = _STATE.setdefault(key, (uuid.uuid4().hex[:12], 0))
        first = index * frames_per_batch
        frames = next(video_batches_from(video, first, frames_per_batch))
        info = BatchInfo(run, index, count, first, total, key)
        log.info("EMO Frame Batches: batch %d of %d (frames %d-%d of %d)", index + 1, count, first,
                 first + frames.shape[0] - 1, total)
        return io.NodeOutput(frames, info)


def video_batches_from(video, first: int, size: int):
    """The IMAGE batch of (at most) `size` frames starting at frame `first`."""
    batch = next(video_batches(video, size, start=first), None)
    if batch is None:
        raise EMOInputError(f"EMO Frame Batches: frame {first} is past the end of the video: queue the workflow "
                            "again from the start (the video changed between runs)")
    yield batch
