"""Head-rotation speed in degrees per frame (EMO's speed signal) from the face's frame-to-frame motion.

EMO takes "rotational degrees between successive frames" of a 6-DoF head pose from landmarks. Here the rotation
between two frames is fitted directly to the motion of points on the face, with the head modelled as a sphere:

* points: the 5 detector keypoints (eyes, nose, mouth corners) when the detector gives them in both frames
  (YuNet, SCRFD), else up to 120 corners inside the face box but away from the mouth (`mouth_zone`: an opening
  mouth would read as a nodding head) (``cv2.goodFeaturesToTrack``) tracked into the next
  frame by pyramidal Lucas-Kanade (``cv2.calcOpticalFlowPyrLK``), kept when tracking back lands within 1 px;
* model: a point (x, y) relative to the face-box centre sits on a sphere of radius r = half the box's larger side,
  depth z = sqrt(max(r^2 - x^2 - y^2, (0.3 r)^2)); a small rotation w (radians) plus a translation t moves it by
  dx = t_x + w_y z - w_z y,  dy = t_y - w_x z + w_z x  (orthographic projection). (t, w) is the least-squares fit
  (a light ridge on w_x, w_y), refitted twice without points whose residual is over 3x the median; turning
  (w_x, w_y) is kept only when the fit leaves under TURN_EVIDENCE of the squared residual of an in-plane fit
  (t_x, t_y, w_z): with points of similar depth, tracking noise alone would read as turning;
* speed = |w| in degrees of the rotation w from frame i-1 to i (speed[0] = speed[1]), after a 5-frame median filter
  of the signed w (x, y, z each; training.md §5: labels are noisy), so that tracking noise of either sign cancels
  instead of adding to a slow head's speed; frames with fewer than 4 usable points take the neighbours' value.

In-plane rotation (roll) is measured exactly; turning (yaw, pitch) is measured as well as the sphere fits the face.
Scale changes (zoom) are not rotation and are not modelled: they end up in the residual.
"""
from __future__ import annotations


import cv2
import numpy as np
from scipy.ndimage import median_filter

MIN_POINTS = 4
MEDIAN = 5  # frames
TURN_EVIDENCE = 0.6  # the full fit must leave under this fraction of the in-plane fit's squared residual


def fit_rotation(p0: np.ndarray, p1: np.ndarray, center, radius: float, ridge: float = 2e-4) -> tuple[float, int]:
    """Rotation angle (degrees) that moves points p0 -> p1 ([N, 2] pixels) on a sphere at `center` of `radius` px,
    and the number of points used; (nan, 0) when fewer than MIN_POINTS."""
    w, n = fit_rotation_vector(p0, p1, center, radius, ridge)
    return float(np.linalg.norm(w)), n


def fit_rotation_vector(p0: np.ndarray, p1: np.ndarray, center, radius: float,
                        ridge: float = 2e-4) -> tuple[np.ndarray, int]:
    """As `fit_rotation`, the signed rotation (w_x, w_y, w_z) in degrees; (nan x 3, 0) when fewer than
    MIN_POINTS."""
    p0, p1 = np.asarray(p0, np.float64).reshape(-1, 2), np.asarray(p1, np.float64).reshape(-1, 2)
    keep = np.ones(len(p0), bool)
    for _ in range(3):
        if keep.sum() < MIN_POINTS:
            return np.full(3, np.nan), 0
        A, b = _system(p0[keep], p1[keep], center, radius)
        n = len(b) // 2
        lam = ridge * n * radius ** 2
        w = np.linalg.solve(A.T @ A + np.diag([0, 0, lam, lam, 0]) + 1e-9 * np.eye(5), A.T @ b)
        res = np.hypot(*(A @ w - b).reshape(2, n))
        new = np.zeros(len(p0), bool)
        new[np.flatnonzero(keep)[res <= max(3 * np.median(res), 0.05)]] = True
        if new.sum() == keep.sum() or new.sum() < MIN_POINTS:
            break
        keep = new
    # turning (w_x, w_y) only when it explains clearly more than in-plane rotation + sliding does: with points of
    # similar depth, tracking noise alone would otherwise read as turning
    rss5 = float(((A @ w - b) ** 2).sum())
    A3 = A[:, [0, 1, 4]]
    w3 = np.linalg.lstsq(A3, b, rcond=None)[0]
    rss3 = float(((A3 @ w3 - b) ** 2).sum())
    if rss5 > TURN_EVIDENCE * rss3:
        return np.degrees(np.array([0.0, 0.0, float(w3[2])])), int(keep.sum())
    return np.degrees(np.asarray(w[2:], np.float64)), int(keep.sum())


def _system(p0, p1, center, radius):
    """Least-squares system A [2N, 5] (t_x, t_y, w_x, w_y, w_z), b [2N] of the sphere model."""
    q = p0 - np.asarray(center, np.float64)
    v = p1 - p0
    z = np.sqrt(np.maximum(radius ** 2 - (q ** 2).sum(1), (0.3 * radius) ** 2))
    n = len(q)
    A = np.zeros((2 * n, 5))
    A[:n, 0], A[:n, 3], A[:n, 4] = 1, z, -q[:, 1]
    A[n:, 1], A[n:, 2], A[n:, 4] = 1, -z, q[:, 0]
    return A, np.concatenate([v[:, 0], v[:, 1]])


def track_points(gray0: np.ndarray, gray1: np.ndarray, box, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """Corners inside `box` (x0, y0, x1, y1) of uint8 `gray0` [H, W], outside the box `exclude` (the mouth: it
    moves by itself), and where they are in `gray1`: ([N, 2], [N, 2]) pixels, forward-backward checked."""
    h, w = gray0.shape
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask = np.zeros((h, w), np.uint8)
    mask[max(0, y0):min(h, y1), max(0, x0):min(w, x1)] = 255
    if exclude is not None:
        a0, b0, a1, b1 = (int(round(v)) for v in exclude)
        mask[max(0, b0):max(0, b1), max(0, a0):max(0, a1)] = 0
    pts = cv2.goodFeaturesToTrack(gray0, maxCorners=120, qualityLevel=0.01, minDistance=2, mask=mask, blockSize=3)
    if pts is None or len(pts) < MIN_POINTS:
        return np.zeros((0, 2)), np.zeros((0, 2))
    lk = dict(winSize=(9, 9), maxLevel=2, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    nxt, st, _ = cv2.calcOpticalFlowPyrLK(gray0, gray1, pts, None, **lk)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(gray1, gray0, nxt, None, **lk)
    ok = (st[:, 0] == 1) & (st2[:, 0] == 1) & (np.linalg.norm((back - pts)[:, 0], axis=1) < 1.0)
    return pts[ok, 0].astype(np.float64), nxt[ok, 0].astype(np.float64)


def mouth_zone(lip_box) -> tuple[float, float, float, float]:
    """Where tracked points are not taken: the lip box (x0, y0, x1, y1) grown 1.5x across and 2.5x down/up."""
    x0, y0, x1, y1 = lip_box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * 0.75, (y1 - y0) * 1.25
    return cx - hw, cy - hh, cx + hw, cy + hh


def head_speed(grays, boxes, keypoints=None, lip_boxes=None) -> np.ndarray:
    """Head rotation speed, degrees per frame, float32 [T].

    grays: T uint8 [H, W] frames (one size); boxes: [T, 4] face boxes (x0, y0, x1, y1) in those frames' pixels;
    keypoints: optional [T, 5, 2] detector keypoints in the same pixels (nan where a frame has none);
    lip_boxes: optional [T, 4] mouth boxes: no points are tracked in `mouth_zone` of them (a talking mouth is not
    a turning head)."""
    T = len(grays)
    boxes = np.asarray(boxes, np.float64)
    raw = np.full((T, 3), np.nan)
    for i in range(1, T):
        b = boxes[i - 1]
        center = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
        radius = max(b[2] - b[0], b[3] - b[1]) / 2
        if keypoints is not None and np.isfinite(keypoints[i - 1]).all() and np.isfinite(keypoints[i]).all():
            p0, p1 = keypoints[i - 1], keypoints[i]
        else:
            ex = None if lip_boxes is None else mouth_zone(lip_boxes[i - 1])
            p0, p1 = track_points(grays[i - 1], grays[i], b, ex)
        raw[i], _ = fit_rotation_vector(p0, p1, center, radius)
    if T > 1:
        raw[0] = raw[1]
    good = np.isfinite(raw).all(1)
    if not good.any():
        return np.zeros(T, np.float32)
    idx = np.arange(T)
    raw = np.stack([np.interp(idx, idx[good], raw[good, k]) for k in range(3)], 1)
    # filter the signed rotation, then take its size: tracking noise, of either sign, cancels instead of adding up
    # (|w + noise| over-reads a slow head: 0.65 for 0.5 deg/frame when the sizes were filtered)
    smooth = median_filter(raw, size=(min(MEDIAN, T), 1), mode="nearest")
    return np.linalg.norm(smooth, axis=1).astype(np.float32)
