"""`EMODataset`: training windows from a prepared-data folder (`data_format`), as a torch Dataset.

Sample i (see `data_format` for every key and layout) is a window of one video: `motion_frames` (n) frames then
`frames` (f) target frames, contiguous, plus a reference frame of the same video, the union face mask, the target
frames' boxes and head speed (degrees per frame) and the video's whole 16 kHz track. Stage 1 uses frames=1,
motion_frames=0 (one target frame and a reference).

Which video and where: the dataset has `windows_per_video` x (number of usable videos) items; item i belongs to video
i % V and its target start is drawn uniformly from [n, T - f] (from [0, T - f] when the video is shorter than n + f:
missing motion frames are copies of the first frame and "first_clip" is True) by a generator seeded with
(seed, epoch, i), so a run is reproducible and `set_epoch` gives new windows each epoch. The reference is a random
frame at least `ref_margin` frames from the window (Hallo: 30) when the video is long enough, else the farthest
frame from it. Videos shorter than f frames are left out (said once in the log).

Frames: decoded from frames.mp4 with PyAV; whole clips are kept in memory up to `cache_bytes` in total (the learning
check's clips all fit), longer data is read by seeking (frames.mp4 has a key frame every second).
`collate` stacks a list of samples into a batch (tensors stacked; "waveform", "name", "frame_range" kept as lists).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from ..errors import EMOInputError
from . import data_format as fmt

logger = logging.getLogger(__name__)


def read_frames(path, indices, fps: int) -> np.ndarray:
    """Frames `indices` (sorted or not, repeats allowed) of a constant-rate mp4: uint8 [len, H, W, 3] RGB."""
    want = sorted(set(int(i) for i in indices))
    got: dict[int, np.ndarray] = {}
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        first = want[0]
        if first > 0:
            c.seek(int(first / fps / s.time_base), stream=s, backward=True, any_frame=False)
        for frame in c.decode(s):
            k = int(round(frame.time * fps))
            if k in got or k < first:
                continue
            if k in want:
                got[k] = frame.to_ndarray(format="rgb24")
            if k >= want[-1]:
                break
    missing = [i for i in want if i not in got]
    if missing:
        raise EMOInputError(f"{path} has no frame {missing[0]}: the prepared data is damaged; delete that clip's "
                            "line from index.jsonl and its folder, and run prepare-data again")
    return np.stack([got[int(i)] for i in indices])


def read_all_frames(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


class EMODataset(Dataset):
    """Windows of n motion + f target frames from DATA (see the module docstring).

    data: the prepared-data folder; frames: f; motion_frames: n; resolution: R (default: the data's; other sizes
    are resized with cv2 INTER_AREA / INTER_CUBIC); windows_per_video: items per video per epoch."""

    def __init__(self, data, frames: int = 12, motion_frames: int = 4, resolution: int | None = None,
                 ref_margin: int = 30, windows_per_video: int = 1, seed: int = 0, cache_bytes: int = 2 << 30,
                 names: list[str] | None = None):
        self.data = Path(data)
        self.format = fmt.read_format(self.data)
        self.f, self.n = int(frames), int(motion_frames)
        if self.f < 1 or self.n < 0:
            raise EMOInputError(f"frames must be >= 1 and motion frames >= 0 (got {frames}, {motion_frames})")
        self.resolution = int(resolution or self.format.resolution)
        self.ref_margin, self.seed, self.epoch = int(ref_margin), int(seed), 0
        self.windows_per_video = max(1, int(windows_per_video))
        entries = fmt.read_index(self.data)
        if names is not None:
            entries = [e for e in entries if e.name in set(names)]
        self.entries = [e for e in entries if e.num_frames >= self.f]
        short = len(entries) - len(self.entries)
        if short:
            logger.info("%d video(s) in %s are shorter than %d frames and are left out", short, self.data, self.f)
        if not self.entries:
            raise EMOInputError(f"no video in {self.data} has {self.f} frames or more: prepare more or longer videos "
                                f"(python -m emo_model prepare-data VIDEOS {self.data}) or lower --frames")
        self._meta: dict[int, dict] = {}
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_bytes = int(cache_bytes)

    def __len__(self) -> int:
        return len(self.entries) * self.windows_per_video

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- per-video data -------------------------------------------------------------------------------------------
    def meta(self, v: int) -> dict:
        if v not in self._meta:
            e = self.entries[v]
            m = load_file(str(self.data / e.meta))
            m["waveform"] = load_file(str(self.data / e.audio))["waveform"]
            self._meta[v] = m
        return self._meta[v]

    def video_speeds(self) -> list[torch.Tensor]:
        """Per-frame head speed (deg/frame) of each video, in video order (item i belongs to video i % V). Read
        alone from each meta file (not through `meta`, which also loads and keeps the video's waveform)."""
        from safetensors import safe_open
        out = []
        for e in self.entries:
            with safe_open(str(self.data / e.meta), framework="pt") as f:
                out.append(f.get_tensor("speed"))
        return out

    def frames(self, v: int, indices) -> np.ndarray:
        e = self.entries[v]
        path = self.data / e.frames
        size = e.num_frames * self.format.resolution ** 2 * 3
        if v in self._frames:
            self._frames.move_to_end(v)
            return self._frames[v][np.asarray(indices)]
        if size <= self.cache_bytes:
            clip = read_all_frames(path)
            self._frames[v] = clip
            while sum(c.nbytes for c in self._frames.values()) > self.cache_bytes and len(self._frames) > 1:
                self._frames.popitem(last=False)
            return clip[np.asarray(indices)]
        return read_frames(path, indices, e.fps)

    # -- one sample -----------------------------------------------------------------------------------------------
    def window(self, i: int) -> tuple[int, int, int, bool]:
        """(video, target start, reference frame, first_clip) of item i."""
        v = i % len(self.entries)
        T = self.entries[v].num_frames
        rng = np.random.default_rng([self.seed, self.epoch, i])
        lo = self.n if T >= self.n + self.f else 0
        start = int(rng.integers(lo, T - self.f + 1))
        a, b = start - self.n, start + self.f  # window span [a, b)
        far = [k for k in range(T) if k <= a - self.ref_margin or k >= b - 1 + self.ref_margin]
        if far:
            ref = int(rng.choice(far))
        else:
            ref = 0 if a + b - 1 > T - 1 else T - 1  # the end farther from the window's centre
        return v, start, ref, start < self.n

    def _to_tensor(self, frames: np.ndarray) -> torch.Tensor:
        R = self.resolution
        if frames.shape[1] != R:
            interp = cv2.INTER_AREA if frames.shape[1] > R else cv2.INTER_CUBIC
            frames = np.stack([cv2.resize(f, (R, R), interpolation=interp) for f in frames])
        return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        v, start, ref, first = self.window(i)
        idx = [max(0, k) for k in range(start - self.n, start + self.f)]
        pix = self.frames(v, idx + [ref])
        pix = self._to_tensor(pix)
        m = self.meta(v)
        s = self.resolution / self.format.resolution
        mask = torch.from_numpy(m["face_mask"].numpy().astype(np.float32))
        if mask.shape[-1] != self.resolution:
            mask = torch.from_numpy(cv2.resize(mask.numpy(), (self.resolution,) * 2, interpolation=cv2.INTER_NEAREST))
        ident = m.get("identity")
        return {"pixels": pix[:-1], "reference": pix[-1], "face_mask": mask[None],
                "face_box": m["face_box"][start:start + self.f] * s, "lip_box": m["lip_box"][start:start + self.f] * s,
                "speed": m["speed"][start:start + self.f].clone(), "frame_range": (start, start + self.f),
                "first_clip": first, "video": v, "name": self.entries[v].name, "waveform": m["waveform"],
                "identity": ident if ident is not None else torch.zeros(512), "has_identity": ident is not None}

    @staticmethod
    def collate(batch: list[dict]) -> dict:
        out = {}
        for k in batch[0]:
            vals = [b[k] for b in batch]
            if k in ("waveform", "name", "frame_range"):
                out[k] = vals
            elif torch.is_tensor(vals[0]):
                out[k] = torch.stack(vals)
            else:
                out[k] = torch.tensor(vals)
        return out


def speed_range(data, quantiles=(0.05, 0.5, 0.95)) -> list[float]:
    """Quantiles of the per-frame head speed (degrees per frame) over every clip in DATA: e.g. for the speed
    buckets' centres and radii, and for the speeds a learning check asks for."""
    vals = [load_file(str(Path(data) / e.meta))["speed"] for e in fmt.read_index(data)]
    if not vals:
        raise EMOInputError(f"{data} has no prepared clips")
    return [float(q) for q in torch.quantile(torch.cat(vals).float(), torch.tensor(quantiles))]
