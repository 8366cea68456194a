"""Overlapping tiles for finding small faces in large pictures, and NMS across them.

Every detector shrinks a large picture before it looks (the LBP cascade's first pass to a 320 px short side, YuNet
to 1280 px, SCRFD to 640 px), so a small face in a big picture becomes too small for it. Their second passes look
at a larger copy, tile by tile (`tiles`, `tiled_detect`), so that memory and the network's input stay bounded at
any picture size. Boxes are in source pixels, ``x0, y0`` inclusive, ``x1, y1`` exclusive.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .face_box import FaceBox


def tiles(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles (y0, x0, y1, x1) that cover an h x w picture: as few as fit ``tile`` px a side, all of one
    size, neighbours sharing at least ``overlap`` px, so that any square of up to ``overlap`` px lies whole inside
    a tile."""
    def spans(n):
        k = max(1, -(-(n - overlap) // (tile - overlap)))  # tiles needed
        size = min(n, -(-(n - overlap) // k) + overlap)
        return [(round(i * (n - size) / (k - 1)) if k > 1 else 0) for i in range(k)], size
    (ys, th), (xs, tw) = spans(h), spans(w)
    return [(y, x, y + th, x + tw) for y in ys for x in xs]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS (``cv2.dnn.NMSBoxes``): boxes [n, 4] x0 y0 x1 y1 -> kept indices, best score first; a box is
    dropped when its IoU with a kept one exceeds ``iou``."""
    import cv2
    if not len(boxes):
        return []
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(np.float64).tolist(), 0.0, float(iou))
    return [int(i) for i in np.asarray(keep).reshape(-1)]


def tiled_detect(rgb: np.ndarray, scale: float, tile: int, overlap: int,
                 detect: Callable[[np.ndarray], list[FaceBox]], nms_iou: float = 0.4) -> list[FaceBox]:
    """Faces found by ``detect`` (an RGB uint8 [h, w, 3] picture -> boxes in its pixels) in ``rgb`` scaled by
    ``scale``, looked at in overlapping ``tile`` px tiles (neighbours share ``overlap`` px); boxes in source px.

    A box that touches a tile's edge inside the picture is dropped (the face is cut there: a face of up to
    ``overlap`` px lies whole in a neighbouring tile, which finds it), and a face found in two tiles comes back
    once (NMS across tiles at IoU ``nms_iou``, best score kept).
    """
    import cv2
    h, w = rgb.shape[:2]
    work = rgb if scale == 1 else cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    wh, ww = work.shape[:2]
    found: list[FaceBox] = []
    for y0, x0, y1, x1 in tiles(wh, ww, tile, overlap):
        for b in detect(np.ascontiguousarray(work[y0:y1, x0:x1])):
            cut = ((x0 > 0 and b.x0 <= 1) or (y0 > 0 and b.y0 <= 1)
                   or (x1 < ww and b.x1 >= x1 - x0 - 1) or (y1 < wh and b.y1 >= y1 - y0 - 1))
            if not cut:
                found.append(b.shifted(x0, y0).scaled(1 / scale))
    if not found:
        return []
    keep = nms(np.array([[b.x0, b.y0, b.x1, b.y1] for b in found]), np.array([b.score for b in found]), nms_iou)
    return [found[i] for i in keep]
