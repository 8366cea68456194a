"""Hallo's three region masks (background "full", face, lip) at the four latent levels, from a face box.

Hallo draws them from MediaPipe landmarks: the face rectangle (expanded 1.2x) and the lip rectangle (expanded 2x),
each resized to the latent size, Gaussian-blurred (face 51 px, lip 31 px at 64x64) and min-max normalised;
full = 1 - face_blur, face = face_blur - lip, lip = lip_blur. Without MediaPipe the lip rectangle is estimated: from
the two mouth corners when the face detector gives keypoints (YuNet, SCRFD): the bounding box of the lips of a
closed mouth, as wide as the corners are apart and LIP_HEIGHT of that tall, turned with the mouth line; otherwise
where lips sit in a frontal face box (centre at 78 % of its height, 40 % of its width, 14 % of its height).
Each mask is resized to h/2^N (N = 0..3) and flattened row-major: [1, (h/2^N)^2].
"""
import cv2
import numpy as np
import torch


def _blur_norm(mask: np.ndarray, kernel: int) -> np.ndarray:
    k = max(3, kernel | 1)
    m = cv2.GaussianBlur(mask.astype(np.float32), (k, k), 0)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else m


LIP_HEIGHT = 0.45  # outer-lip height / mouth-corner distance of a closed mouth


def _lip_box(mouth, face_box) -> tuple[float, float, float, float]:
    """(cx, cy, width, height) of the lips before Hallo's 2x expansion, in mask pixels."""
    if mouth is not None:
        (xa, ya), (xb, yb) = mouth
        dx, dy = xb - xa, yb - ya
        length = max(float(np.hypot(dx, dy)), 1.0)
        nx, ny = -dy / length * LIP_HEIGHT * length / 2, dx / length * LIP_HEIGHT * length / 2  # half-height normal
        xs = [xa + nx, xa - nx, xb + nx, xb - nx]
        ys = [ya + ny, ya - ny, yb + ny, yb - ny]
        return (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
    y0, y1, x0, x1 = face_box
    fh, fw = y1 - y0, x1 - x0
    return (x0 + x1) / 2, y0 + 0.78 * fh, 0.40 * fw, 0.14 * fh


def region_masks(face_mask: np.ndarray, latent_size: int, mouth=None) -> list[list[torch.Tensor]]:
    """face_mask: [H, W] face-region box in {0,1} (pixels); mouth: ((x, y), (x, y)) mouth corners in the mask's
    pixels, or None -> [full, face, lip], each 4 levels of [1, (s/2^N)^2]."""
    H, W = face_mask.shape
    ys, xs = np.nonzero(face_mask > 0.5)
    if len(xs) == 0:
        y0, y1, x0, x1 = 0, H, 0, W
    else:
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    cx, cy, lw, lh = _lip_box(mouth, (y0, y1, x0, x1))
    lh, lw = lh * 2.0, lw * 2.0  # Hallo expands the lip box 2x
    lip = np.zeros((H, W), np.float32)
    lip[int(max(0, cy - lh / 2)):int(min(H, cy + lh / 2)), int(max(0, cx - lw / 2)):int(min(W, cx + lw / 2))] = 1
    s = latent_size
    scale = s / 64.0
    face_small = cv2.resize((face_mask > 0.5).astype(np.float32), (s, s), interpolation=cv2.INTER_AREA)
    lip_small = cv2.resize(lip, (s, s), interpolation=cv2.INTER_AREA)
    face_blur = _blur_norm(face_small, int(51 * scale))
    lip_blur = _blur_norm(lip_small, int(31 * scale))
    maps = [1 - face_blur, np.clip(face_blur - lip_blur, 0, 1), lip_blur]
    out = []
    for m in maps:
        levels = []
        for n in range(4):
            side = max(1, s // 2 ** n)
            levels.append(torch.from_numpy(cv2.resize(m, (side, side), interpolation=cv2.INTER_AREA).reshape(1, -1).copy()))
        out.append(levels)
    return out
