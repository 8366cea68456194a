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
from .tiles import tiles

LBP_WORK_SIDE = 320        # short side (px) of the image the cascade scans
LBP_MIN_FACE = 32          # smallest window (px at work scale): the first pass skips faces < 10 % of the short side
LBP_SMALL_FACE = 64        # smallest face (source px) the finer passes look for when the first pass finds none
LBP_TILE = 2048            # side (work px) of the tiles the finer passes' proposal scans run over (bounds memory)
LBP_PROPOSAL_STEP = 1.5    # step_ratio of the finer passes' proposal scans (1 = exhaustive)
LBP_PROPOSAL_HITS = 2      # windows that must fire for a place to be proposed (a 64 px face: 4 to 8 at step 1.5)
LBP_FINE_EXTRA_HITS = 6    # hits the finer passes ask for beyond the threshold's (0.7: 6 -> 12)
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


def _fine_pass(full: np.ndarray, f: float, threshold: float, top: int) -> list[FaceBox]:
    """Faces of LBP_MIN_FACE to ``top`` px in the gray picture ``full`` scaled by ``f`` (boxes in source px).

    These passes scan many more windows than the first (a 6000 px picture at f = 0.5: 9 Mpx of 32 px windows), so
    a face must pass more: scans with longer strides (step_ratio LBP_PROPOSAL_STEP) over overlapping LBP_TILE px
    tiles propose places where at least LBP_PROPOSAL_HITS windows fire (proposals of all tiles are grouped, so a
    face on a tile seam is one); each is scanned exhaustively in a crop three windows wide around it (scored as in
    `_lbp_pass`, with LBP_FINE_EXTRA_HITS more hits than ``threshold`` asks), and again, as strictly, at twice the
    resolution (`_confirm`; at most the source's). Boxes found twice are suppressed (`_suppress_inner`)."""
    gray = _work_gray(full, f)
    proposals = []
    for y0, x0, y1, x1 in tiles(*gray.shape, LBP_TILE, top + 1):
        proposals += [(x + x0, y + y0, w, h) for (x, y, w, h), n in
                      _lbp_groups(gray[y0:y1, x0:x1], top, step=LBP_PROPOSAL_STEP) if n >= LBP_PROPOSAL_HITS]
    if not proposals:
        return []
    strict = 1.0 - (1.0 - threshold) * 0.8 ** LBP_FINE_EXTRA_HITS
    boxes = []
    for (x, y, w, h), _ in _group(np.array(proposals, np.float64)):
        x0, y0 = max(0, int(x - w)), max(0, int(y - h))
        crop = gray[y0:int(y + 2 * h) + 1, x0:int(x + 2 * w) + 1]
        for b in _lbp_pass(crop, strict, top):
            b = b.shifted(x0, y0).scaled(1 / f)
            score = _confirm(full, b, min(1.0, 2 * f))
            if score >= strict:
                boxes.append(replace(b, score=min(b.score, score)))
    return _suppress_inner(boxes)


def _confirm(full: np.ndarray, box: FaceBox, k: float) -> float:
    """Score (``1 - 0.8**hits``) of the best group of cascade hits centred inside ``box`` (source px) when a crop
    three boxes wide around it is scanned at scale ``k``: a face still looks like one at another resolution, while
    most of the texture patches that fire at one window size do not."""
    side = box.width
    x0, y0 = max(0, int(box.x0 - side)), max(0, int(box.y0 - side))
    crop = _work_gray(full[y0:int(box.y1 + side) + 1, x0:int(box.x1 + side) + 1], k)
    best = 0
    for (x, y, w, h), n in _lbp_groups(crop):
        cx, cy = (x + w / 2) / k + x0, (y + h / 2) / k + y0
        if box.x0 <= cx <= box.x1 and box.y0 <= cy <= box.y1:
            best = max(best, n)
    return 1.0 - 0.8 ** best


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
    for fine, top in _fine_scales(h, w, s):  # smaller faces: each pass at twice the resolution of the last
        boxes = _fine_pass(full, fine, threshold, top)
        if boxes:
            return boxes
    return []


def _fine_scales(h: int, w: int, s: float) -> list[tuple[float, int]]:
    """(work scale, largest window in work px) of the passes for faces smaller than the first pass (at scale ``s``)
    sees, coarse to fine: the finest puts a face of LBP_SMALL_FACE source px in the smallest window
    (LBP_MIN_FACE), each coarser one is half the last, and each scans windows up to 1.1 x the smallest face the
    next coarser pass (or the first) sees, so the passes overlap. At any picture size faces of LBP_SMALL_FACE px and
    up are covered; the work images grow with the picture (a 6000 px square: 750, 1500 and 3000 px)."""
    scales, f = [], LBP_MIN_FACE / LBP_SMALL_FACE
    while f > 1.25 * s:  # a pass barely finer than the last would add little: the next one reaches further up
        scales.insert(0, f)
        f /= 2
    coarser = [s] + scales[:-1]
    return [(f, max(round(LBP_MIN_FACE * f / c * 1.1), LBP_MIN_FACE + 4)) for f, c in zip(scales, coarser)]
