"""The built-in face detector: the LBP frontal-face cascade that ships inside the scikit-image wheel
(``skimage/data/lbpcascade_frontalface_opencv.xml``), run by ``skimage.feature.Cascade``.

A first pass scans a working copy whose short side is ``LBP_WORK_SIDE`` px (faces of at least 10 % of the short
side), upright and, when that finds nothing, at +-20 degrees. When there is still nothing, finer passes (twice the
resolution each) look for smaller faces down to ``LBP_SMALL_FACE`` px. Raw hits are grouped by OpenCV's rule.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np

from .face_box import FaceBox

LBP_WORK_SIDE = 320        # short side (px) of the image the cascade scans
LBP_MIN_FACE = 32          # smallest window (px at work scale): the first pass skips faces < 10 % of the short side
LBP_SMALL_FACE = 64        # smallest face (source px) the finer passes look for when the first pass finds none
LBP_FINE_SIDE = 1280       # largest short side (px) of a finer pass's work image (bounds its time)
LBP_ANGLES = (-20.0, 20.0)  # extra passes when the upright pass finds nothing


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


def detect_lbp(rgb: np.ndarray, threshold: float) -> list[FaceBox]:
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
