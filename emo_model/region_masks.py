"""Hallo's three region masks (background "full", face, lip) at the four latent levels, from a face box.

Hallo draws them from MediaPipe landmarks: the face rectangle (expanded 1.2x) and the lip rectangle (expanded 2x),
each resized to the latent size, Gaussian-blurred (face 51 px, lip 31 px at 64x64) and min-max normalised;
full = 1 - face_blur, face = face_blur - lip, lip = lip_blur. Without a landmark model the lip rectangle is placed
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


def region_masks(face_mask: np.ndarray, latent_size: int) -> list[list[torch.Tensor]]:
    """face_mask: [H, W] face-region box in {0,1} (pixels) -> [full, face, lip], each 4 levels of [1, (s/2^N)^2]."""
    H, W = face_mask.shape
    ys, xs = np.nonzero(face_mask > 0.5)
    if len(xs) == 0:
        y0, y1, x0, x1 = 0, H, 0, W
    else:
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fh, fw = y1 - y0, x1 - x0
    cy, cx = y0 + 0.78 * fh, (x0 + x1) / 2
    lh, lw = 0.14 * fh * 2.0, 0.40 * fw * 2.0
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
