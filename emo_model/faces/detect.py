"""Face detection that installs as pure wheels and downloads nothing.

Detectors:

* ``lbp``   -- built in, always there (``lbp_cascade.py``): the LBP frontal-face cascade that ships inside the
  scikit-image wheel (``skimage/data/lbpcascade_frontalface_opencv.xml``), run by
  ``skimage.feature.Cascade`` on a working copy of the image whose short side is
  ``LBP_WORK_SIDE`` pixels (small images are upscaled, large ones downscaled), with
  OpenCV-style grouping of the raw hits and two more passes at +-20 degrees when the
  upright pass finds nothing (heads tilted up to ~35 degrees). Frontal faces of at least 10 %
  of the picture's short side; when there are none, finer passes (twice the resolution each, the
  finest where a 64 px face fills the smallest window; tiled) look for smaller upright ones, down to
  ``SMALL_FACE`` (64) px at any picture size. Misses drawn/emoji faces and profiles.
* ``yunet`` -- OpenCV's ``cv2.FaceDetectorYN`` running ``face_detection_yunet_2023mar.onnx``
  (opencv_zoo, MIT). Much better on small, turned and painted faces. No onnxruntime.
* ``scrfd`` -- insightface SCRFD with keypoints (``scrfd_10g_bnkps.onnx``, the file in Hallo's
  ``pretrained_models/face_analysis/models/``; insightface's ``det_10g.onnx`` is the same
  network) run by ``cv2.dnn`` with the SCRFD anchor decoding + NMS written out below.

YuNet looks at the picture shrunk to a 1280 px long side, SCRFD at 640 px; in larger pictures
(over 5120 / 2560 px) that makes a 64 px face smaller than they find, so when that look finds nothing
they look again, tile by tile, at the scale where a 64 px face is ``ONNX_MIN_FACE`` px
(``_small_face_pass``, ``tiles.tiled_detect``).

Put the ONNX file in the ComfyUI folder ``models/emo/face_detectors/`` (or pass
``--detector-file`` to the CLI); ``available_detectors(folder)`` lists what is usable.

Boxes are in source pixels, ``x0, y0`` inclusive and ``x1, y1`` exclusive (floats). YuNet and SCRFD
also give 5 keypoints per face (``FaceBox.keypoints`` [5, 2] x, y in source pixels, insightface's order:
eye, eye, nose tip, mouth corner, mouth corner, image-left first of each pair), which
``face_embedding`` aligns the face with.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..errors import EMOCheckpointError, EMOInputError
from ..media.image import to_rgb_uint8
from .face_box import FaceBox
from .lbp_cascade import LBP_SMALL_FACE, detect_lbp
from .tiles import nms as _nms
from .tiles import tiled_detect

BUILTIN = "lbp (built-in)"
# kind -> file name the README tells users to get (first) and other names we recognise.
DETECTOR_FILES = {
    "yunet": ("face_detection_yunet_2023mar.onnx",),
    "scrfd": ("scrfd_10g_bnkps.onnx", "det_10g.onnx"),
}
DEFAULT_THRESHOLD = {"lbp": 0.7, "yunet": 0.6, "scrfd": 0.5}
SMALL_FACE = LBP_SMALL_FACE  # px: every detector looks for faces down to this size, at any picture size
ONNX_MIN_FACE = 16           # px at the network's input: about the smallest face YuNet and SCRFD find reliably
YUNET_SIDE = 1280            # YuNet's first look: the long side shrunk to this (it finds faces down to ~10 px)
SCRFD_SIDE = 640             # SCRFD's input (insightface's letterbox)


# ----------------------------------------------------------------------------- choosing a detector

def _kind_of_file(name: str) -> str | None:
    low = name.lower()
    if not low.endswith(".onnx"):
        return None
    if "yunet" in low:
        return "yunet"
    if "scrfd" in low or low.startswith("det_"):
        return "scrfd"
    return None


def available_detectors(folder=None) -> list[str]:
    """Dropdown entries: ``'lbp (built-in)'`` always, then ``'yunet: <file>'`` / ``'scrfd: <file>'``
    for each recognised ONNX file in ``folder`` (YuNet first). A missing folder lists only the built-in."""
    found = []
    if folder is not None and Path(folder).is_dir():
        for p in sorted(Path(folder).iterdir()):
            kind = _kind_of_file(p.name)
            if kind and p.is_file():
                found.append((kind != "yunet", f"{kind}: {p.name}"))
    return [BUILTIN] + [label for _, label in sorted(found)]


def _missing_file(kind: str, where) -> EMOCheckpointError:
    return EMOCheckpointError(
        f"face detector '{kind}' needs its ONNX file ({DETECTOR_FILES[kind][0]}), not found in {where}. "
        f"Put it in ComfyUI's models/emo/face_detectors/ folder (CLI: --detector-file PATH), "
        f"or choose '{BUILTIN}'. See docs/faces.md.")


def resolve_detector(detector: str = "auto", model_path=None) -> tuple[str, Path | None]:
    """(kind, onnx path or None) from a detector name or dropdown label and a file or folder.

    ``detector``: 'auto' | 'lbp' | 'yunet' | 'scrfd' | a label from ``available_detectors``.
    ``model_path``: the ONNX file, or the folder that holds it. 'auto' picks the file's kind, else
    YuNet, then SCRFD from the folder, else the built-in LBP cascade.
    """
    det = (detector or "auto").strip()
    path = Path(model_path) if model_path is not None else None
    if det in ("lbp", BUILTIN):
        return "lbp", None
    if ":" in det:  # dropdown label "kind: file"
        kind, name = (s.strip() for s in det.split(":", 1))
        if kind not in DETECTOR_FILES:
            raise EMOInputError(f"unknown face detector '{detector}'; choose one of {available_detectors()} "
                                "or a yunet/scrfd entry listed for your models folder")
        file = path / name if path is not None and path.is_dir() else path
        if file is None or not file.is_file():
            raise _missing_file(kind, file if file is not None else "the models folder (no folder given)")
        return kind, file
    if det == "auto":
        if path is not None and path.is_file():
            det = _kind_of_file(path.name) or "auto"
            if det == "auto":
                raise EMOInputError(f"can't tell which detector {path.name} is: name the file *yunet*.onnx or "
                                    "*scrfd*.onnx, or choose the detector explicitly")
            return det, path
        for label in available_detectors(path)[1:]:
            return resolve_detector(label, path)
        return "lbp", None
    if det not in DETECTOR_FILES:
        raise EMOInputError(f"unknown face detector '{detector}'; use 'auto', 'lbp', 'yunet' or 'scrfd'")
    if path is not None and path.is_file():
        return det, path
    if path is not None and path.is_dir():
        for name in [*DETECTOR_FILES[det], *(p.name for p in sorted(path.iterdir()))]:
            if _kind_of_file(name) == det and (path / name).is_file():
                return det, path / name
    raise _missing_file(det, path if path is not None else "(no file or folder given)")


# ----------------------------------------------------------------------------- public entry point

def detect_faces(image, detector: str = "auto", model_path=None, threshold: float | None = None) -> list[FaceBox]:
    """Faces in ``image`` (uint8 [H, W, 3] RGB; float 0..1 and torch tensors are accepted too),
    sorted largest first. Boxes are in source pixels.

    ``threshold`` (0..1; None = the detector's default, ``DEFAULT_THRESHOLD``): lower finds more
    faces (and more false ones). For ``lbp`` the score is ``1 - 0.8**hits`` where ``hits`` is the
    number of overlapping cascade windows, so 0.7 means at least 6 hits.
    An empty list means no face: ``face_crop.plan_crop`` turns that into a ``NoFaceError``.
    """
    kind, path = resolve_detector(detector, model_path)
    rgb = to_rgb_uint8(image, "the picture for face detection", min_side=1)
    thr = DEFAULT_THRESHOLD[kind] if threshold is None else float(threshold)
    if kind == "lbp":
        boxes = detect_lbp(rgb, thr)
    elif kind == "yunet":
        boxes = (_detect_yunet(rgb, path, thr)
                 or _small_face_pass(rgb, YUNET_SIDE, lambda tile: _detect_yunet(tile, path, thr)))
    else:
        boxes = (_detect_scrfd(rgb, path, thr)
                 or _small_face_pass(rgb, SCRFD_SIDE, lambda tile: _detect_scrfd(tile, path, thr)))
    h, w = rgb.shape[:2]
    boxes = [FaceBox(float(max(b.x0, 0)), float(max(b.y0, 0)), float(min(b.x1, w)), float(min(b.y1, h)),
                     float(b.score), b.keypoints) for b in boxes]
    boxes = [b for b in boxes if b.width > 1 and b.height > 1]
    return sorted(boxes, key=lambda b: -b.area)


def _small_face_pass(rgb: np.ndarray, side: int, detect) -> list[FaceBox]:
    """YuNet's and SCRFD's second look, when the first (the picture's long side shrunk to ``side``) found nothing
    and shrank a SMALL_FACE px face below ONNX_MIN_FACE px (pictures over 4 x ``side``: 5120 px for YuNet, 2560 px
    for SCRFD): the picture at the scale where that face is ONNX_MIN_FACE px, in ``side`` px tiles sharing a
    quarter tile (faces of up to 4 x ``side`` source px lie whole in one; larger ones the first look saw)."""
    scale = ONNX_MIN_FACE / SMALL_FACE
    if side / max(rgb.shape[:2]) >= scale:
        return []
    return tiled_detect(rgb, scale, side, side // 4, detect)


# ----------------------------------------------------------------------------- YuNet (cv2.FaceDetectorYN)

@functools.lru_cache(maxsize=2)
def _yunet(path: str, mtime: float):
    import cv2
    try:
        return cv2.FaceDetectorYN.create(path, "", (320, 320), 0.5, 0.3, 5000)
    except cv2.error as e:
        raise EMOCheckpointError(f"OpenCV could not load the YuNet file {path} ({e.err or e}); "
                                 f"get {DETECTOR_FILES['yunet'][0]} again (see docs/faces.md)") from e


def _detect_yunet(rgb: np.ndarray, path: Path, threshold: float) -> list[FaceBox]:
    import cv2
    det = _yunet(str(path), path.stat().st_mtime)
    h, w = rgb.shape[:2]
    s = min(1.0, YUNET_SIDE / max(h, w))  # YuNet finds faces down to ~10 px; no need for 4K input
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if s < 1:
        img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    det.setInputSize((img.shape[1], img.shape[0]))
    det.setScoreThreshold(float(threshold))
    _, faces = det.detect(img)
    if faces is None:
        return []
    # row: x, y, w, h, then 5 points (subject's right eye, left eye, nose tip, right and left mouth corner), score
    return [FaceBox(x / s, y / s, (x + bw) / s, (y + bh) / s, float(f[-1]), f[4:14].reshape(5, 2) / np.float32(s))
            for f in faces for x, y, bw, bh in [f[:4]] if f[-1] >= threshold]


# ----------------------------------------------------------------------------- SCRFD (cv2.dnn)

@functools.lru_cache(maxsize=2)
def _scrfd(path: str, mtime: float):
    import cv2
    try:
        return cv2.dnn.readNetFromONNX(path)
    except cv2.error as e:
        raise EMOCheckpointError(f"OpenCV could not load the SCRFD file {path} ({e.err or e}); use "
                                 f"{DETECTOR_FILES['scrfd'][0]} from Hallo's face_analysis/models "
                                 "or pick YuNet (see docs/faces.md)") from e


def scrfd_decode(outputs: list[np.ndarray], input_size: int, threshold: float, nms_iou: float = 0.4,
                 keypoints: bool = False):
    """SCRFD head outputs -> (boxes [n, 4] x0 y0 x1 y1 in input pixels, scores [n]), and with
    ``keypoints=True`` a third item: keypoints [n, 5, 2] (x, y in input pixels) or None for a model without.

    ``outputs``: per stride (8, 16, 32) a score map [N, 1], distances [N, 4] (in units of the
    stride: left, top, right, bottom from the anchor centre) and optionally keypoints [N, 10];
    N = (input_size / stride)**2 * anchors. Outputs are matched by shape, so their order does not
    matter (cv2.dnn may list them differently from onnxruntime). Same decoding as insightface's
    ``SCRFD.forward``: anchor centres on a stride grid, 2 anchors per cell, keypoints = centre +
    offset * stride, NMS at IoU 0.4.
    """
    flat = [o.reshape(-1, o.shape[-1]) for o in outputs]
    by_n: dict[int, dict[int, np.ndarray]] = {}
    for o in flat:
        by_n.setdefault(o.shape[0], {})[o.shape[1]] = o
    boxes, scores, kps = [], [], []
    for stride in (8, 16, 32):
        g = input_size // stride
        for n, maps in by_n.items():
            if n % (g * g) or n // (g * g) not in (1, 2) or 1 not in maps or 4 not in maps:
                continue
            anchors = n // (g * g)
            ys, xs = np.mgrid[:g, :g]
            centers = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float32) * stride
            centers = np.repeat(centers, anchors, axis=0)
            sc, dist = maps[1][:, 0], maps[4] * stride
            keep = sc >= threshold
            c, d = centers[keep], dist[keep]
            boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            scores.append(sc[keep])
            if 10 in maps:
                kps.append(c[:, None] + maps[10][keep].reshape(-1, 5, 2) * stride)
    if not boxes:
        raise EMOCheckpointError("this ONNX file does not look like SCRFD (no score/box outputs at strides "
                                 f"8/16/32 for a {input_size} px input); use {DETECTOR_FILES['scrfd'][0]}")
    kps = np.concatenate(kps) if len(kps) == len(boxes) else None
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)
    keep = _nms(boxes, scores, nms_iou)
    if not keypoints:
        return boxes[keep], scores[keep]
    return boxes[keep], scores[keep], None if kps is None else kps[keep]


def _detect_scrfd(rgb: np.ndarray, path: Path, threshold: float, size: int = SCRFD_SIDE) -> list[FaceBox]:
    import cv2
    net = _scrfd(str(path), path.stat().st_mtime)
    h, w = rgb.shape[:2]
    # letterbox exactly as insightface's SCRFD.detect (sizes truncated, bilinear, pad right/bottom), so the
    # keypoints that align the face for ArcFace match Hallo's
    ratio = h / w
    nh, nw = (size, max(1, int(size / ratio))) if ratio > 1 else (max(1, int(size * ratio)), size)
    s = nh / h
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh))
    blob = cv2.dnn.blobFromImage(canvas, 1 / 128.0, (size, size), (127.5, 127.5, 127.5), swapRB=False)
    net.setInput(blob)
    outs = net.forward(net.getUnconnectedOutLayersNames())
    boxes, scores, kps = scrfd_decode(list(outs), size, threshold, keypoints=True)
    return [FaceBox(*(b / s), float(sc), None if kps is None else (kps[i] / s).astype(np.float32))
            for i, (b, sc) in enumerate(zip(boxes, scores))]


__all__ = ["FaceBox", "BUILTIN", "DETECTOR_FILES", "DEFAULT_THRESHOLD", "available_detectors",
           "resolve_detector", "detect_faces", "scrfd_decode"]
