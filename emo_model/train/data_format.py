"""The prepared-data folder that `prepare-data` writes and training reads (format "emo-train-data", version 1).

Layout of a DATA folder (no pickles anywhere: JSON, JSON lines, safetensors, mp4)::

    DATA/format.json       {"format": "emo-train-data", "version": 1, "fps": 25, "resolution": 512,
                            "sample_rate": 16000, "whole_frame": false, "detector": "lbp",
                            "margin": 0.5, "speed_method": "keypoints" | "flow"}
    DATA/index.jsonl       one line per usable video, written only once every file of that video is complete:
                           {"name": NAME, "frames": "clips/NAME/frames.mp4", "audio": "clips/NAME/audio.safetensors",
                            "meta": "clips/NAME/meta.safetensors", "num_frames": T, "fps": 25,
                            "source": "original/file/name.mp4", "speed_method": "keypoints" | "flow",
                            "identity": true | false}
    DATA/report.jsonl      one line per skipped video: {"video": "file name", "reason": "..."}
    DATA/clips/NAME/frames.mp4
                           the square face crop, `resolution` x `resolution` px, exactly `fps` frames per second
                           (constant frame rate, frame i at i / fps s), H.264 yuv420p.
                           Frame i <-> audio samples [i * sr / fps, (i + 1) * sr / fps).
    DATA/clips/NAME/audio.safetensors
                           "waveform": float32 [samples], mono, `sample_rate` (16 kHz), in [-1, 1];
                           samples == round(T * sample_rate / fps) (trimmed / zero-padded by at most a frame).
    DATA/clips/NAME/meta.safetensors
                           "face_box"  float32 [T, 4]  x0, y0, x1, y1 of the face in crop pixels, per frame
                           "lip_box"   float32 [T, 4]  x0, y0, x1, y1 of the mouth region in crop pixels, per frame
                           "face_mask" uint8 [R, R]    1 inside the union of the face boxes over the video
                                                      (the static mask the face locator takes), else 0
                           "speed"     float32 [T]     head rotation in DEGREES PER FRAME (at `fps`) between frame
                                                      i-1 and i (speed[0] = speed[1]); see `prepare.head_speed`
                           "identity"  float32 [512]   optional: ArcFace embedding of the face (when available)
    DATA/clips/NAME/features/KEY.safetensors
                           optional cache of the model's own audio features for this clip (written by
                           `prepare-data --model` or by the trainer, `audio_features.AudioFeatures`; KEY =
                           `audio_features.encoder_key(model)`): "features" float32 [F, ...] as
                           `EMOPipeline.encode_audio` returns them for the whole track (`audio_features_path`).

NAME is the video's file stem made file-system safe (and unique). Every per-clip file is written to a temporary
name and renamed into place; the index line comes last, so a video is "finished" exactly when its index line
exists, and a rerun skips it. Readers must ignore unknown keys in JSON lines and unknown tensors (later versions
may add fields; a change that breaks readers raises `FORMAT_VERSION`).

Reading it for training: `emo_model.train.dataset.EMODataset(DATA, frames=f, motion_frames=n, resolution=R)`; each
sample is a dict:

    "pixels"      float32 [n + f, 3, R, R] in [-1, 1]: n motion frames, then f target frames (contiguous)
    "reference"   float32 [3, R, R] in [-1, 1]: another frame of the same video (at least `ref_margin` frames away
                  from the window when the video allows)
    "face_mask"   float32 [1, R, R] in {0, 1}: the video's union face mask (face-locator input)
    "lip_box"     float32 [f, 4] / "face_box" float32 [f, 4]: per target frame, in pixels of the R x R frames
    "speed"       float32 [f]: head rotation of the target frames, degrees per frame
    "frame_range" (start, end): target frames [start, end) of the video (motion frames are start-n .. start-1;
                  a window at the video's start has fewer real motion frames: those are copies of the first frame
                  and "first_clip" is True)
    "first_clip"  bool
    "video"       int: index of the clip in DATA/index.jsonl
    "name"        str: the clip's NAME (cache key of its audio features: `audio_features_path(DATA, NAME, key)`)
    "waveform"    float32 [samples] at 16 kHz: the whole video's track (features are computed for the whole
                  track, as `render` does, then cut to frame_range)
    "identity"    float32 [512] (zeros when the clip has none) and "has_identity" bool
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import EMOInputError

FORMAT_NAME = "emo-train-data"
FORMAT_VERSION = 1
FORMAT_FILE = "format.json"
INDEX_FILE = "index.jsonl"
REPORT_FILE = "report.jsonl"
CLIPS_DIR = "clips"
FRAMES_FILE, AUDIO_FILE, META_FILE = "frames.mp4", "audio.safetensors", "meta.safetensors"
SAMPLE_RATE = 16000
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".m4v", ".avi")


@dataclass
class DataFormat:
    """Contents of DATA/format.json (fps in frames per second, resolution in px, sample_rate in Hz)."""

    fps: int = 25
    resolution: int = 512
    sample_rate: int = SAMPLE_RATE
    whole_frame: bool = False
    detector: str = "auto"
    margin: float = 0.5
    speed_method: str = "flow"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **d, **extra}


@dataclass
class ClipEntry:
    """One line of DATA/index.jsonl; paths are relative to DATA."""

    name: str
    frames: str
    audio: str
    meta: str
    num_frames: int
    fps: int
    source: str = ""
    speed_method: str = ""
    identity: bool = False
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}

    @classmethod
    def from_json(cls, d: dict) -> "ClipEntry":
        known = {k: d[k] for k in ("name", "frames", "audio", "meta", "num_frames", "fps", "source",
                                   "speed_method", "identity") if k in d}
        return cls(**known, extra={k: v for k, v in d.items() if k not in known})


def clip_dir(data, name: str) -> Path:
    return Path(data) / CLIPS_DIR / name


def clip_entry(name: str, num_frames: int, fps: int, **kw) -> ClipEntry:
    base = f"{CLIPS_DIR}/{name}"
    return ClipEntry(name, f"{base}/{FRAMES_FILE}", f"{base}/{AUDIO_FILE}", f"{base}/{META_FILE}",
                     int(num_frames), int(fps), **kw)


def audio_features_path(data, name: str, key: str) -> Path:
    """Where the audio features of clip `name` for encoder `key` (letters, digits, -_.) are cached."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        raise ValueError(f"audio feature cache key {key!r} must be letters, digits, '-', '_' or '.'")
    return clip_dir(data, name) / "features" / f"{key}.safetensors"


def safe_name(stem: str, taken: set[str]) -> str:
    """A file-system safe clip name from a video's stem, unique among `taken` (which it joins)."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "video"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


# ----------------------------------------------------------------------------- reading and writing

def _bad_folder(data: Path, why: str) -> EMOInputError:
    return EMOInputError(f"{data} is not a prepared-data folder this version can read ({why}): run "
                         "`python -m emo_model prepare-data VIDEOS DATA` into a new folder (or an empty one)")


def read_format(data) -> DataFormat:
    """DATA/format.json -> DataFormat; a missing file, another format or another version is a clear error."""
    data = Path(data)
    f = data / FORMAT_FILE
    if not f.is_file():
        raise _bad_folder(data, f"no {FORMAT_FILE}")
    try:
        d = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad_folder(data, f"{FORMAT_FILE} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
        raise _bad_folder(data, f"{FORMAT_FILE} says format {d.get('format') if isinstance(d, dict) else d!r}, "
                                f"expected '{FORMAT_NAME}'")
    if d.get("version") != FORMAT_VERSION:
        raise _bad_folder(data, f"format version {d.get('version')!r}, this code reads version {FORMAT_VERSION}")
    known = {k: d[k] for k in ("fps", "resolution", "sample_rate", "whole_frame", "detector", "margin",
                               "speed_method") if k in d}
    extra = {k: v for k, v in d.items() if k not in known and k not in ("format", "version")}
    return DataFormat(**known, extra=extra)


def write_format(data, fmt: DataFormat) -> None:
    data = Path(data)
    data.mkdir(parents=True, exist_ok=True)
    atomic_write_text(data / FORMAT_FILE, json.dumps(fmt.to_json(), indent=1) + "\n")


def read_index(data) -> list[ClipEntry]:
    """The finished clips of DATA, in index order (a half-written last line from a killed run is ignored)."""
    f = Path(data) / INDEX_FILE
    if not f.is_file():
        return []
    out = []
    for line in f.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(ClipEntry.from_json(json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue  # a line cut short by a kill: that video is not finished and is redone
    return out


def append_jsonl(path, record: dict) -> None:
    """Append one JSON line and flush it to disk (the line is the commit point of a video)."""
    path = Path(path)
    cut = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as fh:
        fh.write(("\n" if cut else "") + json.dumps(record) + "\n")  # after a line cut short by a kill
        fh.flush()
        os.fsync(fh.fileno())


def append_index(data, entry: ClipEntry) -> None:
    append_jsonl(Path(data) / INDEX_FILE, entry.to_json())


def append_report(data, video: str, reason: str) -> None:
    append_jsonl(Path(data) / REPORT_FILE, {"video": video, "reason": reason})


def read_report(data) -> list[dict]:
    f = Path(data) / REPORT_FILE
    if not f.is_file():
        return []
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()]


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def temp_path(path) -> Path:
    """A temporary sibling of `path` keeping its suffix (PyAV picks the container from it): a.mp4 -> a.tmp.mp4."""
    path = Path(path)
    return path.with_name(f"{path.stem}.tmp{path.suffix}")
