"""Face detection that installs as pure wheels and downloads nothing.

Detectors:

* ``lbp``   -- built in, always there: the LBP frontal-face cascade that ships inside the
  scikit-image wheel (``skimage/data/lbpcascade_frontalface_opencv.xml``), run by
  ``skimage.feature.Cascade`` on a working copy of the image whose short side is
  ``LBP_WORK_SIDE`` pixels (small images are upscaled, large ones downscaled), with
  OpenCV-style grouping of the raw hits and two more passes at +-20 degrees when the
  upright pass finds nothing (heads tilted up to ~35 degrees). Frontal faces of at least 10 %
  of the picture's short side; when there are none, finer passes (twice the resolution each) look for
  smaller ones, down to 64 px (1/40 of the short side in pictures over 2560 px). Misses drawn/emoji
  faces and profiles.
* ``yunet`` -- OpenCV's ``cv2.FaceDetectorYN`` running ``face_detection_yunet_2023mar.onnx``
  (opencv_zoo, MIT). Much better on small, turned and painted faces. No onnxruntime.
* ``scrfd`` -- insightface SCRFD with keypoints (``scrfd_10g_bnkps.onnx``, the file in Hallo's
  ``pretrained_models/face_analysis/models/``; insightface's ``det_10g.onnx`` is the same
  network) run by ``cv2.dnn`` with the SCRFD anchor decoding + NMS written out below.

Put the ONNX file in the ComfyUI folder ``models/emo/face_detectors/`` (or pass
``--detector-file`` to the CLI); ``available_detectors(folder)`` lists what is usable.

Boxes are in source pixels, ``x0, y0`` inclusive and ``x1, y1`` exclusive (floats). YuNet and SCRFD
also give 5 keypoints per face (``FaceBox.keypoints`` [5, 2] x, y in source pixels, insightface's order:
eye, eye, nose tip, mouth corner, mouth corner, image-left first of each pair), which
``face_embedding`` aligns the face with.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import EMOCheckpointError, EMOInputError
from ..media.image import to_rgb_uint8

BUILTIN = "lbp (built-in)"
# kind -> file name the README tells users to get (first) and other names we recognise.
DETECTOR_FILES = {
    "yunet": ("face_detection_yunet_2023mar.onnx",),
    "scrfd": ("scrfd_10g_bnkps.onnx", "det_10g.onnx"),
}
DEFAULT_THRESHOLD = {"lbp": 0.7, "yunet": 0.6, "scrfd": 0.5}
LBP_WORK_SIDE = 320        # short side (px) of the image the cascade scans
LBP_MIN_FACE = 32          # smallest window (px at work scale): the first pass skips faces < 10 % of the short side
LBP_SMALL_FACE = 64        # smallest face (source px) the finer passes look for when the first pass finds none
LBP_FINE_SIDE = 1280       # largest short side (px) of a finer pass's work image (bounds its time)
LBP_ANGLES = (-20.0, 20.0)  # extra passes when the upright pass finds nothing


@dataclass(frozen=True)
class FaceBox:
    """A face in source pixels: ``x0, y0`` inclusive, ``x1, y1`` exclusive; ``score`` in 0..1.

    ``keypoints``: float32 [5, 2] (x, y in source pixels, not clipped to the image) from YuNet / SCRFD, in
    insightface's order: left eye, right eye, nose tip, left mouth corner, right mouth corner (left = image
    left, i.e. the subject's right); None from the LBP cascade.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0
    keypoints: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def scaled(self, s: float) -> "FaceBox":
        kps = None if self.keypoints is None else (self.keypoints * s).astype(np.float32)
        return replace(self, x0=self.x0 * s, y0=self.y0 * s, x1=self.x1 * s, y1=self.y1 * s, keypoints=kps)


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
        boxes = _detect_lbp(rgb, thr)
    elif kind == "yunet":
        boxes = _detect_yunet(rgb, path, thr)
    else:
        boxes = _detect_scrfd(rgb, path, thr)
    h, w = rgb.shape[:2]
    boxes = [FaceBox(float(max(b.x0, 0)), float(max(b.y0, 0)), float(min(b.x1, w)), float(min(b.y1, h)),
                     float(b.score), b.keypoints) for b in boxes]
    boxes = [b for b in boxes if b.width > 1 and b.height > 1]
    return sorted(boxes, key=lambda b: -b.area)


# ----------------------------------------------------------------------------- LBP (scikit-image)

@functools.lru_cache(maxsize=1)
def _cascade():
    from skimage import data
    from skimage.feature import Cascade
    return Cascade(data.lbp_frontal_face_cascade_filename())


def _group(rects: np.ndarray, eps: float = 0.2) -> list[tuple[np.ndarray, int]]:
    """OpenCV's groupRectangles rule (gone from OpenCV 5's main module): [x, y, w, h] rects are similar when each
    edge differs by at most eps * mean(min width, min height); groups are the connected sets of similar rects
    (scipy's connected components). Returns (mean rect, count) per group."""
    from scipy.sparse.csgraph import connected_components
    x0, y0, w, h = (rects[:, i:i + 1] for i in range(4))
    d = eps * (np.minimum(w, w.T) + np.minimum(h, h.T)) * 0.5
    similar = ((abs(x0 - x0.T) <= d) & (abs(y0 - y0.T) <= d)
               & (abs(x0 + w - (x0 + w).T) <= d) & (abs(y0 + h - (y0 + h).T) <= d))
    _, labels = connected_components(similar, directed=False)
    return [(rects[labels == g].mean(axis=0), int((labels == g).sum())) for g in np.unique(labels)]


def _suppress_inner(boxes: list[FaceBox], overlap: float = 0.5) -> list[FaceBox]:
    """Drop a box when more than ``overlap`` of its area lies inside a better-scored box."""
    keep: list[FaceBox] = []
    for b in sorted(boxes, key=lambda b: (-b.score, -b.area)):
        ok = True
        for k in keep:
            iw = min(b.x1, k.x1) - max(b.x0, k.x0)
            ih = min(b.y1, k.y1) - max(b.y0, k.y0)
            if iw > 0 and ih > 0 and iw * ih > overlap * min(b.area, k.area):
                ok = False
                break
        if ok:
            keep.append(b)
    return keep


def _lbp_groups(gray: np.ndarray, max_face: int | None = None, step: float = 1.0) -> list[tuple[np.ndarray, int]]:
    """Cascade hits (windows from LBP_MIN_FACE px up to ``max_face``, default the short side; ``step_ratio`` = step)
    grouped: [(mean [x, y, w, h], hits)]."""
    side = min(gray.shape)
    if side < LBP_MIN_FACE:
        return []
    top = min(side, max_face or side)
    hits = _cascade().detect_multi_scale(img=gray.astype(np.float32) / 255.0, scale_factor=1.1, step_ratio=step,
                                         min_size=(LBP_MIN_FACE, LBP_MIN_FACE), max_size=(top, top),
                                         min_neighbor_number=1, intersection_score_threshold=1.01)
    if not hits:
        return []
    return _group(np.array([[d["c"], d["r"], d["width"], d["height"]] for d in hits], np.float64))


def _lbp_pass(gray: np.ndarray, threshold: float, max_face: int | None = None) -> list[FaceBox]:
    """One exhaustive cascade scan (every position, windows from LBP_MIN_FACE px up to ``max_face``), hits grouped.

    Keeps groups scoring >= threshold and with at least 40 % of the best group's hits: next to a
    real face (~20 hits) the 5-6-hit groups that picture edges and textures make are dropped.
    """
    groups = _lbp_groups(gray, max_face)
    if not groups:
        return []
    best = max(n for _, n in groups)
    return [FaceBox(x, y, x + w, y + h, 1.0 - 0.8 ** n) for (x, y, w, h), n in groups
            if 1.0 - 0.8 ** n >= threshold and n >= 0.4 * best]


def _fine_pass(gray: np.ndarray, threshold: float) -> list[FaceBox]:
    """Faces of 1 to 2.2 x LBP_MIN_FACE px in a large work image, at a fraction of an exhaustive scan's cost: a
    scan with longer strides (step_ratio 1.5) proposes places, and each is scanned exhaustively (and scored as in
    `_lbp_pass`) in a crop three windows wide around it."""
    top = round(2.2 * LBP_MIN_FACE)
    boxes = []
    for (x, y, w, h), _ in _lbp_groups(gray, top, step=1.5):
        x0, y0 = max(0, int(x - w)), max(0, int(y - h))
        crop = gray[y0:int(y + 2 * h) + 1, x0:int(x + 2 * w) + 1]
        boxes += [replace(b, x0=b.x0 + x0, y0=b.y0 + y0, x1=b.x1 + x0, y1=b.y1 + y0)
                  for b in _lbp_pass(crop, threshold, top)]
    return _suppress_inner(boxes)


def _work_gray(gray: np.ndarray, s: float) -> np.ndarray:
    """The gray picture scaled by ``s`` (area averaging down, bilinear up)."""
    import cv2
    h, w = gray.shape
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def _detect_lbp(rgb: np.ndarray, threshold: float) -> list[FaceBox]:
    """The first pass sees faces of at least 10 % of the short side (upright, then +-20 degrees); when it finds none,
    finer passes look for smaller faces, down to LBP_SMALL_FACE px (see `_fine_scales`)."""
    import cv2
    h, w = rgb.shape[:2]
    s = min(LBP_WORK_SIDE / min(h, w), 4 * LBP_WORK_SIDE / max(h, w))
    full = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    gray = _work_gray(full, s)
    boxes = _lbp_pass(gray, threshold)
    if not boxes:  # tilted heads: rotate the image, scan again, rotate the box centres back
        gh, gw = gray.shape
        for angle in LBP_ANGLES:
            m = cv2.getRotationMatrix2D((gw / 2, gh / 2), angle, 1.0)
            cos, sin = abs(m[0, 0]), abs(m[0, 1])
            nw, nh = int(gw * cos + gh * sin), int(gw * sin + gh * cos)
            m[0, 2] += nw / 2 - gw / 2
            m[1, 2] += nh / 2 - gh / 2
            rot = cv2.warpAffine(gray, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            inv = cv2.invertAffineTransform(m)
            for b in _lbp_pass(rot, threshold):
                cx, cy = inv @ np.array([*b.center, 1.0])
                r = b.width / 2
                boxes.append(FaceBox(cx - r, cy - r, cx + r, cy + r, b.score))
    if boxes:
        return [b.scaled(1 / s) for b in _suppress_inner(boxes)]
    for fine in _fine_scales(h, w, s):  # small faces in a large picture: each pass at twice the resolution
        boxes = _fine_pass(_work_gray(full, fine), threshold)
        if boxes:
            return [b.scaled(1 / fine) for b in boxes]
    return []


def _fine_scales(h: int, w: int, s: float) -> list[float]:
    """Work scales of the passes for faces smaller than the first pass (at scale ``s``) sees: each doubles the last
    and scans windows of 1 to 2.2 x LBP_MIN_FACE (faces down to half the last pass's smallest), until faces of
    LBP_SMALL_FACE source px are covered, with the work image's short side at most LBP_FINE_SIDE px (so in pictures
    with a short side over 2560 px the smallest face found is 1/40 of it: 150 px at 6000 px)."""
    top = min(LBP_MIN_FACE / LBP_SMALL_FACE, LBP_FINE_SIDE / min(h, w))
    scales = []
    while s * 1.01 < top:
        s = min(2 * s, top)
        scales.append(s)
    return scales


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
    s = min(1.0, 1280 / max(h, w))  # YuNet finds faces down to ~10 px; no need for 4K input
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


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS (``cv2.dnn.NMSBoxes``): boxes [n, 4] x0 y0 x1 y1 -> kept indices, best score first; a box is
    dropped when its IoU with a kept one exceeds ``iou``."""
    import cv2
    if not len(boxes):
        return []
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(np.float64).tolist(), 0.0, float(iou))
    return [int(i) for i in np.asarray(keep).reshape(-1)]


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


def _detect_scrfd(rgb: np.ndarray, path: Path, threshold: float, size: int = 640) -> list[FaceBox]:
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
