"""Learning-check metrics: loudness, mouth opening and head roll measured from frames, and the correlations.

* `frame_loudness`: RMS of the 16 kHz samples of each video frame, frame i = samples [i*sr/fps, (i+1)*sr/fps).
* `mouth_opening_from_frames`: for drawn faces (`synthetic.draw_face`) and for what a model renders of them. The head
  is the part of the frame that differs from the background colour (median of the frame's border); its centroid
  and orientation come from image moments. The mouth is the dark part of the lower face: pixels below the head
  centre (along the head's own down axis, more than 0.15 head lengths) and within 0.6 head widths of its centre
  line, weighted by how much darker than DARK x (median head brightness) they are. Opening = that weight / head
  area. Units are arbitrary (only correlations use it); 0 for a frame with no head.
* `head_roll_from_frames`: in-plane angle of the head's major axis (degrees, 0 = upright) from the same moments;
  `head_motion` = |roll(i) - roll(i-1)|, degrees per frame.
* `lipsync_r`: Pearson r between mouth opening and loudness over frames, the best of lags -1, 0, +1 frame
  (LAG_TOLERANCE; 40 ms at 25 fps: a frame's mouth may follow its audio window by a frame). Undefined (nan) when
  either series is constant.
* `speed_rank_r`: Spearman rank correlation between requested speeds and measured head motion.
"""
from __future__ import annotations

import math

import numpy as np

LAG_TOLERANCE = 1     # frames
DARK = 0.45           # a pixel is "dark" below this fraction of the head's median brightness


def frame_loudness(waveform, num_frames: int, fps: float, sr: int = 16000) -> np.ndarray:
    """RMS per video frame: float64 [num_frames]; frames past the end of the track are 0."""
    w = np.asarray(waveform, np.float64).reshape(-1)
    out = np.zeros(num_frames)
    for i in range(num_frames):
        a, b = int(round(i * sr / fps)), int(round((i + 1) * sr / fps))
        seg = w[a:b]
        out[i] = math.sqrt(float(np.mean(seg * seg))) if len(seg) else 0.0
    return out


def _frames(frames) -> np.ndarray:
    """[T, H, W, 3] uint8 / float 0..1 (numpy or torch; [T, 3, H, W] too) -> float32 [T, H, W, 3] in 0..1."""
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().float().numpy()
    f = np.asarray(frames)
    if f.ndim == 3:
        f = f[None]
    if f.shape[-1] != 3 and f.shape[1] == 3:
        f = f.transpose(0, 2, 3, 1)
    f = f.astype(np.float32)
    return f / 255.0 if f.max() > 1.5 else f


def _head(frame: np.ndarray):
    """(mask of the head [H, W] bool, centroid (x, y), major-axis angle from vertical in degrees, ry, rx) or None."""
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.abs(frame - bg).sum(-1)
    mask = dist > 0.12
    if mask.sum() < 0.02 * mask.size:
        return None
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean(), ys.mean()
    dx, dy = xs - cx, ys - cy
    mxx, myy, mxy = (dx * dx).mean(), (dy * dy).mean(), (dx * dy).mean()
    theta = 0.5 * math.atan2(2 * mxy, mxx - myy)  # major axis angle from +x (image coords, y down)
    up = math.degrees(theta) - 90.0 if theta > 0 else math.degrees(theta) + 90.0  # from vertical, clockwise +
    roll = -up  # counter-clockwise on screen positive (as `synthetic.draw_face`)
    lam1 = (mxx + myy) / 2 + math.sqrt(((mxx - myy) / 2) ** 2 + mxy * mxy)
    lam2 = (mxx + myy) / 2 - math.sqrt(((mxx - myy) / 2) ** 2 + mxy * mxy)
    return mask, (cx, cy), roll, 2 * math.sqrt(max(lam1, 1e-6)), 2 * math.sqrt(max(lam2, 1e-6))


def mouth_opening_from_frames(frames) -> np.ndarray:
    """Mouth opening per frame, float64 [T] (see the module docstring)."""
    f = _frames(frames)
    out = np.zeros(len(f))
    for t, frame in enumerate(f):
        h = _head(frame)
        if h is None:
            continue
        mask, (cx, cy), roll, ry, rx = h
        lum = frame @ np.array([0.299, 0.587, 0.114], np.float32)
        ref = float(np.median(lum[mask]))
        H, W = lum.shape
        yy, xx = np.mgrid[:H, :W]
        a = math.radians(-roll)
        down = (xx - cx) * -math.sin(a) + (yy - cy) * math.cos(a)   # along the head's down axis
        side = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
        region = mask & (down > 0.15 * ry) & (np.abs(side) < 0.6 * rx)
        dark = np.clip((DARK * ref - lum) / max(DARK * ref, 1e-3), 0, 1)
        out[t] = float(dark[region].sum()) / max(float(mask.sum()), 1.0)
    return out


def head_roll_from_frames(frames) -> np.ndarray:
    """Head roll per frame in degrees (0 = upright), float64 [T]; nan where no head is found."""
    f = _frames(frames)
    out = np.full(len(f), np.nan)
    for t, frame in enumerate(f):
        h = _head(frame)
        if h is not None:
            out[t] = h[2]
    return out


def head_motion(frames) -> np.ndarray:
    """|roll(i) - roll(i-1)| in degrees per frame, float64 [T - 1]."""
    r = head_roll_from_frames(frames)
    return np.abs(np.diff(r))


def pearson(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.std() < 1e-12 or y.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def lipsync_r(opening, loudness, max_lag: int = LAG_TOLERANCE) -> float:
    """Pearson r of mouth opening vs loudness (both [T]), best over lags -max_lag..max_lag frames
    (positive lag: the mouth follows the sound)."""
    o, l = np.asarray(opening, np.float64), np.asarray(loudness, np.float64)
    n = min(len(o), len(l))
    o, l = o[:n], l[:n]
    best = float("nan")
    for lag in range(-max_lag, max_lag + 1):
        r = pearson(o[lag:], l[:n - lag]) if lag >= 0 else pearson(o[:n + lag], l[-lag:])
        if not math.isnan(r) and (math.isnan(best) or r > best):
            best = r
    return best


def speed_rank_r(requested, measured) -> float:
    """Spearman rank correlation of requested speeds vs measured motion (one value each per video)."""
    from scipy.stats import spearmanr
    r = spearmanr(np.asarray(requested, np.float64), np.asarray(measured, np.float64)).statistic
    return float(r)
