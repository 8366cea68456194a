"""`python -m emo_model prepare-data VIDEOS DATA`: ordinary videos -> the training folder of `data_format`.

Per video (file order by name), each step's failure is one line in DATA/report.jsonl and the video is skipped:

1. frames at exactly `fps`, upright (`video_source.iter_frames`), and the audio track as 16 kHz mono
   (`media.audio.load_audio` + `mix_and_resample`), aligned to the first video frame;
   skipped: "corrupt file", "no audio", "audio/video length mismatch" (|audio - video| > MAX_MISMATCH_FRAMES frames),
   "too short" (fewer than `min_frames` frames, default one clip: 4 motion + 12 target frames);
2. face track (unless `whole_frame`): `faces.detect.detect_faces` on every `detect_every`-th frame, following the
   face nearest to the previous one; missing frames interpolated. Skipped: "no face" (no face in more than half the
   looked-at frames), "two faces" (a second face at least TWO_FACES_AREA of the first in over 30 % of them);
3. one square crop for the whole video around the union of the face boxes (`faces.crop.plan_crop`, `margin`) at
   `resolution` px (whole frame: the centred square, as `render --whole-image` frames a picture);
4. per frame face box, lip box (from the mouth keypoints when the detector gives them, else where lips sit in a
   frontal face box, as `faces.region_masks` places them at render time), the union face mask, and the head-rotation
   speed in degrees per frame (`head_speed`); optional identity embedding (`--identity-model`, ArcFace);
5. files written under temporary names and renamed; the index line last.
"""
from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from safetensors.torch import save_file

from ..errors import EMOError, EMOInputError
from ..faces.crop import DEFAULT_MARGIN, crop, face_region_mask, plan_crop
from ..faces.detect import FaceBox, detect_faces, resolve_detector
from ..faces.region_masks import _lip_box
from ..media.audio import load_audio, mix_and_resample
from ..media.video import VideoWriter
from . import data_format as fmt
from .head_speed import head_speed
from .video_source import CorruptVideo, audio_start, iter_frames

logger = logging.getLogger(__name__)

WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # disk full, over quota, read-only file system
MAX_MISMATCH_FRAMES = 3   # Hallo drops |video frames - audio frames| > 3
TWO_FACES_AREA = 0.4
SPEED_SIDE = 128          # px: crops are scaled to at most this for the motion estimate


class Skip(Exception):
    """A video that cannot be used; the message is its reason line."""


def _track(detections: dict[int, list[FaceBox]], num_frames: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-frame box [T, 4] and keypoints [T, 5, 2] (nan where unknown) of one face followed over the video."""
    looked = sorted(detections)
    found = [i for i in looked if detections[i]]
    if len(found) <= len(looked) / 2:
        raise Skip("no face" if not found else f"no face in {len(looked) - len(found)} of {len(looked)} frames looked at")
    two = sum(1 for i in found if len(detections[i]) > 1 and detections[i][1].area >= TWO_FACES_AREA * detections[i][0].area)
    if two > 0.3 * len(found):
        raise Skip(f"two faces (in {two} of {len(found)} frames with a face)")
    boxes = np.full((num_frames, 4), np.nan)
    kps = np.full((num_frames, 5, 2), np.nan)
    prev = None
    for i in found:
        cands = detections[i]
        if prev is None:
            b = cands[0]
        else:
            b = min(cands, key=lambda c: np.hypot(c.center[0] - prev.center[0], c.center[1] - prev.center[1]))
        prev = b
        boxes[i] = (b.x0, b.y0, b.x1, b.y1)
        if b.keypoints is not None:
            kps[i] = b.keypoints
    idx = np.arange(num_frames)
    for k in range(4):
        boxes[:, k] = np.interp(idx, found, boxes[found, k])
    has_kps = np.isfinite(kps).all(axis=(1, 2))
    return boxes, (kps if has_kps.sum() > 0.5 * num_frames else None)


def _lip_boxes(face_boxes: np.ndarray, mouths: np.ndarray | None) -> np.ndarray:
    out = np.zeros_like(face_boxes)
    for i, (x0, y0, x1, y1) in enumerate(face_boxes):
        m = None
        if mouths is not None and np.isfinite(mouths[i]).all():
            m = tuple(map(tuple, mouths[i]))
        cx, cy, w, h = _lip_box(m, (y0, y1, x0, x1))
        out[i] = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return out.astype(np.float32)


class Preparer:
    """Prepares one video after another into DATA (see the module docstring)."""

    def __init__(self, data, f: fmt.DataFormat, detector_file=None, detect_every: int | None = None,
                 min_frames: int = 16, identity_model=None, threshold: float | None = None):
        self.data, self.f = Path(data), f
        self.detector_file, self.threshold = detector_file, threshold
        self.min_frames, self.identity_model = min_frames, identity_model
        self.kind = None if f.whole_frame else resolve_detector(f.detector, detector_file)[0]
        self.detect_every = detect_every or (10 if self.kind == "lbp" else 1)

    # -- steps -------------------------------------------------------------------------------------------------
    def _audio(self, video: Path, start: float, num_frames: int) -> np.ndarray:
        a0 = audio_start(video)
        if a0 is None:
            raise Skip("no audio (the file has no sound track)")
        try:
            wave, sr = load_audio(video)
        except EMOInputError as e:
            raise Skip(f"no audio ({e})") from None
        w = mix_and_resample(wave, sr, self.f.sample_rate).numpy()
        off = int(round((start - a0) * self.f.sample_rate))  # audio sample at the first video frame
        w = w[off:] if off >= 0 else np.concatenate([np.zeros(-off, np.float32), w])
        audio_frames = len(w) * self.f.fps / self.f.sample_rate
        if abs(audio_frames - num_frames) > MAX_MISMATCH_FRAMES:
            raise Skip(f"audio/video length mismatch: audio {len(w) / self.f.sample_rate:.2f} s, video "
                       f"{num_frames / self.f.fps:.2f} s ({num_frames} frames at {self.f.fps} fps)")
        return w

    def _scan(self, video: Path) -> tuple[dict, dict]:
        """First pass: video info and detections {frame: [FaceBox...]} on every detect_every-th frame."""
        info, det = {}, {}
        for i, img in iter_frames(video, self.f.fps, info):
            if not self.f.whole_frame and i % self.detect_every == 0:
                det[i] = detect_faces(img, self.kind, self.detector_file, self.threshold)
        return info, det

    def prepare(self, video: Path, name: str) -> fmt.ClipEntry:
        f, res = self.f, self.f.resolution
        try:
            info, det = self._scan(video)
        except CorruptVideo as e:
            raise Skip(f"corrupt file ({e})") from None
        T = info["frames"]
        wave = self._audio(video, info["start"], T)
        T = min(T, int(len(wave) * f.fps // f.sample_rate))
        if T < self.min_frames:
            raise Skip(f"too short: {T} frames at {f.fps} fps, one clip needs {self.min_frames}")
        n_samples = int(round(T * f.sample_rate / f.fps))
        wave = np.pad(wave[:n_samples], (0, max(0, n_samples - len(wave)))).astype(np.float32)
        hw = (info["height"], info["width"])
        if f.whole_frame:
            cinfo = plan_crop(hw, whole_image=True, resolution=res)
            face_boxes = np.tile(np.array(cinfo.face_box, np.float32), (T, 1))
            mask, mouths, kps_src = face_region_mask(cinfo), None, None
        else:
            boxes, kps_src = _track({i: d for i, d in det.items() if i < T}, T)
            union = FaceBox(*boxes[:, :2].min(0), *boxes[:, 2:].max(0))
            cinfo = plan_crop(hw, union, margin=f.margin, resolution=res)
            fb = [FaceBox(*b) for b in boxes]
            face_boxes = np.array([cinfo.to_crop(b) for b in fb], np.float32)
            mask = face_region_mask(cinfo, fb)
            mouths = None
            if kps_src is not None:
                x0, y0, _ = cinfo.box
                mouths = (kps_src[:, 3:5] - (x0, y0)) * cinfo.scale
        lip_boxes = _lip_boxes(face_boxes, mouths)
        cdir = fmt.clip_dir(self.data, name)
        cdir.mkdir(parents=True, exist_ok=True)
        s = min(1.0, SPEED_SIDE / res)
        grays, mid = [], None
        tmp = fmt.temp_path(cdir / fmt.FRAMES_FILE)
        try:
            with _ClipWriter(tmp, f.fps) as w:
                for i, img in iter_frames(video, f.fps):
                    if i >= T:
                        break
                    c = crop(img, cinfo)
                    w.write(c[None])
                    g = cv2.cvtColor(c, cv2.COLOR_RGB2GRAY)
                    grays.append(cv2.resize(g, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else g)
                    if i == T // 2:
                        mid = c
        except CorruptVideo as e:
            raise Skip(f"corrupt file (second pass: {e})") from None
        if len(grays) < T:
            raise Skip(f"corrupt file (decoded {len(grays)} frames on the second pass, {T} on the first)")
        kps_crop = None
        if kps_src is not None:
            x0, y0, _ = cinfo.box
            kps_crop = (kps_src - (x0, y0)) * cinfo.scale * s
        speed = head_speed(grays, face_boxes * s, kps_crop, lip_boxes * s)
        tensors = {"face_box": torch.from_numpy(face_boxes), "lip_box": torch.from_numpy(lip_boxes),
                   "face_mask": torch.from_numpy((mask > 0.5).astype(np.uint8)), "speed": torch.from_numpy(speed)}
        ident = self._identity(mid)
        if ident is not None:
            tensors["identity"] = torch.from_numpy(ident.astype(np.float32))
        _save_atomic({"waveform": torch.from_numpy(wave)}, cdir / fmt.AUDIO_FILE)
        _save_atomic(tensors, cdir / fmt.META_FILE)
        tmp.replace(cdir / fmt.FRAMES_FILE)
        return fmt.clip_entry(name, T, f.fps, source=video.name, identity=ident is not None,
                              speed_method="keypoints" if kps_crop is not None else "flow")

    def _identity(self, rgb) -> np.ndarray | None:
        if self.identity_model is None or rgb is None:
            return None
        from ..faces.embedding import identity_embedding
        e = identity_embedding(rgb, [Path(self.identity_model)])
        if e is None:
            raise EMOInputError(f"--identity-model {self.identity_model}: no glintr100.onnx there (Hallo's "
                                "pretrained_models/face_analysis/models/); leave the option out to store no identity")
        return e


class _ClipWriter(VideoWriter):
    """frames.mp4 with a key frame every second, so a training window is reached by a short seek."""

    def _open_streams(self, width: int, height: int):
        super()._open_streams(width, height)
        self.video.codec_context.gop_size = max(1, int(round(float(self.fps))))


def _save_atomic(tensors: dict, path: Path) -> None:
    tmp = fmt.temp_path(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


# ----------------------------------------------------------------------------- the whole folder

def _check_data_folder(data: Path, f: fmt.DataFormat) -> None:
    """A new/empty DATA gets format.json; an existing one must be this format with the same settings."""
    if (data / fmt.FORMAT_FILE).exists():
        old = fmt.read_format(data)  # older/unknown format: a clear error
        for key in ("fps", "resolution", "sample_rate", "whole_frame"):
            if getattr(old, key) != getattr(f, key):
                raise EMOInputError(f"{data} was prepared with {key}={getattr(old, key)}, this run asks for "
                                    f"{key}={getattr(f, key)}: use the same settings to add videos, or a new DATA folder")
        return
    if data.exists() and any(data.iterdir()):
        raise EMOInputError(f"{data} is not empty and has no {fmt.FORMAT_FILE}: it is not a prepared-data folder. "
                            "Choose a new (or empty) folder for DATA")
    fmt.write_format(data, f)


def list_videos(videos) -> list[Path]:
    videos = Path(videos)
    if videos.is_file():
        return [videos]
    if not videos.is_dir():
        raise EMOInputError(f"videos folder not found: {videos}")
    found = sorted(p for p in videos.iterdir() if p.is_file() and p.suffix.lower() in fmt.VIDEO_SUFFIXES)
    if not found:
        raise EMOInputError(f"no videos in {videos}: put talking-face videos with sound there "
                            f"({', '.join(fmt.VIDEO_SUFFIXES)})")
    return found


def prepare_data(videos, data, fps: int = 25, resolution: int = 512, detector: str = "auto",
                 detector_file=None, whole_frame: bool = False, margin: float = DEFAULT_MARGIN,
                 min_frames: int = 16, detect_every: int | None = None, identity_model=None,
                 progress: bool = True) -> dict:
    """Prepare every video in `videos` into `data`; returns {"done": [names], "skipped": [(video, reason)],
    "kept": n already finished}. Raises EMOInputError when nothing in the folder is usable."""
    from tqdm import tqdm
    data = Path(data)
    if int(fps) != fps or not 1 <= fps <= 120:
        raise EMOInputError(f"--fps must be a whole number of frames per second from 1 to 120 (got {fps})")
    if resolution < 32 or resolution % 8:
        raise EMOInputError(f"--resolution must be a multiple of 8, at least 32 (got {resolution})")
    files = list_videos(videos)
    kind = "whole-frame" if whole_frame else resolve_detector(detector, detector_file)[0]
    f = fmt.DataFormat(fps=int(fps), resolution=int(resolution), whole_frame=bool(whole_frame), detector=kind,
                       margin=float(margin), speed_method="keypoints" if kind in ("yunet", "scrfd") else "flow")
    _check_data_folder(data, f)
    index = fmt.read_index(data)
    finished = {e.source for e in index}
    todo = [p for p in files if p.name not in finished]
    report = [r for r in fmt.read_report(data) if r.get("video") not in {p.name for p in todo}]
    fmt.atomic_write_text(data / fmt.REPORT_FILE, "".join(json.dumps(r) + "\n" for r in report))
    taken = {e.name for e in index}
    prep = Preparer(data, f, detector_file, detect_every, min_frames, identity_model)
    done, skipped = [], []
    for video in tqdm(todo, desc="prepare-data", unit="video", disable=not progress, dynamic_ncols=True):
        name = fmt.safe_name(video.stem, taken)
        try:
            entry = prep.prepare(video, name)
        except Skip as e:
            shutil.rmtree(fmt.clip_dir(data, name), ignore_errors=True)  # nothing half-written is left
            fmt.append_report(data, video.name, str(e))
            skipped.append((video.name, str(e)))
            continue
        except (OSError, av.error.FFmpegError) as e:  # the disk filled up (or DATA became unwritable) mid-video
            shutil.rmtree(fmt.clip_dir(data, name), ignore_errors=True)
            if getattr(e, "errno", None) not in WRITE_ERRNOS:
                raise
            raise EMOError(f"could not write {fmt.clip_dir(data, name)} ({e.strerror or e}): that video was removed, "
                           f"the {len(index) + len(done)} finished before it are kept. Free disk space and rerun the "
                           "same command: it continues with the videos not yet done") from None
        fmt.append_index(data, entry)
        done.append(name)
    if not index and not done:
        reasons = "; ".join(f"{v}: {r}" for v, r in skipped[:5])
        raise EMOInputError(f"nothing usable in {videos} ({len(skipped)} video(s) skipped: {reasons}). Each needs one "
                            f"talking face (or --whole-frame), a sound track and at least {min_frames} frames; "
                            f"reasons are in {data / fmt.REPORT_FILE}")
    return {"done": done, "skipped": skipped, "kept": len(index)}


def cmd_prepare_data(a) -> int:
    s = prepare_data(a.videos, a.data, fps=a.fps, resolution=a.resolution, detector=a.detector,
                     detector_file=a.detector_file, whole_frame=a.whole_frame, margin=a.margin,
                     min_frames=a.min_frames, detect_every=a.detect_every, identity_model=a.identity_model)
    if a.model:
        cache_audio_features(a.data, a.model)
    print(f"prepared {len(s['done'])} video(s) into {a.data} ({s['kept']} already there, {len(s['skipped'])} "
          f"skipped{': see ' + str(Path(a.data) / fmt.REPORT_FILE) if s['skipped'] else ''})")
    return 0


def add_parser(sub) -> None:
    """Registers `prepare-data` on the CLI's subparsers (emo_model/cli.py calls this)."""
    p = sub.add_parser("prepare-data", help="turn talking-face videos into training data (see docs/prepare-data.md)")
    p.add_argument("videos", help="folder of videos with sound (mp4, mov, mkv, webm), or one video")
    p.add_argument("data", help="the prepared-data folder to write (created; a rerun adds new videos)")
    p.add_argument("--fps", type=int, default=25, help="frame rate of the prepared frames (default 25)")
    p.add_argument("--resolution", type=int, default=512, help="side of the square face crop, px (default 512)")
    p.add_argument("--detector", default="auto", help="face detector: auto, lbp (built-in), yunet, scrfd")
    p.add_argument("--detector-file", help="ONNX file (or folder) of the YuNet or SCRFD face detector")
    p.add_argument("--whole-frame", action="store_true",
                   help="videos are already framed on the face (cartoons, drawn faces): no face detection")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help="space around the face's union box in the crop, as a fraction of the face size")
    p.add_argument("--min-frames", type=int, default=16, help="skip videos shorter than this (default one clip: 16)")
    p.add_argument("--detect-every", type=int, help="run the detector on every Nth frame (default 10 for lbp, else 1)")
    p.add_argument("--identity-model", help="folder with ArcFace glintr100.onnx: store an identity embedding per video")
    p.add_argument("--model", help="also compute and cache the audio features of this model's audio encoder")
    p.set_defaults(func=cmd_prepare_data)


def cache_audio_features(data, model, device: str = "cpu") -> int:
    """`--model`: compute and cache the audio features of every clip in DATA with `model`'s own encoder (the
    trainer's `audio_features.AudioFeatures`, the call `render` makes); returns the number of clips."""
    from safetensors.torch import load_file
    from tqdm import tqdm

    from ..formats.load import load_model
    from .audio_features import AudioFeatures
    f = fmt.read_format(data)
    m = load_model(str(model), device=device, dtype=torch.float32)
    feats = AudioFeatures(m, f.fps, Path(data))
    entries = fmt.read_index(data)
    for e in tqdm(entries, desc="audio features", unit="video", dynamic_ncols=True):
        feats.features(e.name, load_file(str(Path(data) / e.audio))["waveform"])
    return len(entries)
