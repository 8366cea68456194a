"""Learning-check metrics: loudness, mouth opening and head roll measured from frames, and the correlations.

* `frame_loudness`: RMS of the 16 kHz samples of each video frame, frame i = samples [i*sr/fps, (i+1)*sr/fps).
* `mouth_opening_from_frames`: for drawn faces (`synthetic.draw_face`) and for what a model renders of them. The head
  is the largest connected part of the frame that differs from the background colour (median of the frame's border),
  holes filled (`_head_component`: blotches elsewhere in the background are not head and not mouth); the face is
  its skin-coloured part (`_skin_colour`: the median of the frame's centre, where the drawn heads turn about), whose
  image moments give the centroid and orientation. The mouth is the part of the lower face that is not skin: pixels
  below the head centre (along the head's own down axis, more than 0.15 head lengths) and within 0.6 head widths of
  its centre line, weighted by their colour distance from the skin (0 below MOUTH_FROM, 1 from MOUTH_FROM +
  MOUTH_RAMP). Not darkness alone: a model may paint the open mouth in the background's colour, which is not dark
  on every face (session 8 measured r 0.14 on such a render whose mouth plainly followed the speech). Lips and
  mouth both grow with the opening. Opening = that weight / face area. Units are arbitrary (only correlations use
  it); 0 for a frame with no head.
* `head_roll_from_frames`: in-plane angle of the major axis of the head's whole silhouette (hair and face, holes
  filled: an opening mouth does not tilt it; degrees, 0 = upright). `head_motion`: the rotation between frames i and
  i + 3 found by registering the whole frame (rotations about the head's centroid, best correlation), / 3, degrees
  per frame: on renders, whose heads are soft and near round, moments jitter by degrees from frame to frame.
* `lipsync_r`: Pearson r between mouth opening and loudness over frames, the best of lags -1, 0, +1 frame
  (LAG_TOLERANCE; 40 ms at 25 fps: a frame's mouth may follow its audio window by a frame). Undefined (nan) when
  either series is constant.
* `speed_rank_r`: Spearman rank correlation between requested speeds and measured head motion.
* `seam_jumps`: the head's turn across the clip seams of a render against its turn between frames inside clips
  (a diagnostic: session 8 found renders whose every clip restarts from the reference's pose).
"""
from __future__ import annotations

import math

import numpy as np

LAG_TOLERANCE = 1     # frames
MOUTH_FROM, MOUTH_RAMP = 0.25, 0.35  # a lower-face pixel counts as mouth from this L1 colour distance to the skin,
                                    # fully at MOUTH_FROM + MOUTH_RAMP (0..3 scale)
MOTION_SPAN = 3       # frames: head motion is measured as the roll change over this many frames, / span
CENTRE_PATCH = 0.12   # the skin colour is the median of this central fraction of the frame (`_skin_colour`)
SKIN_TOL = 0.3        # a head pixel is skin within this L1 colour distance (0..1 per channel) of `_skin_colour`


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


def _head_component(mask: np.ndarray):
    """The head in a not-background mask [H, W] bool: opened with a 3x3 cross (thin bridges to blotches in the
    background break), the largest connected component kept, its holes (eyes, mouth, when they are close to the
    background colour) filled. None when nothing is left. Anything apart from the head (a blotchy background, a
    stray blob) is ignored, so it can neither move the head's moments nor count as mouth."""
    import cv2
    m = mask.astype(np.uint8)
    opened = cv2.morphologyEx(m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
    if opened.any():
        m = opened
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=4)
    if n < 2:
        return None
    comp = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    H, W = comp.shape
    outside = np.zeros((H + 2, W + 2), np.uint8)
    outside[1:-1, 1:-1] = comp
    cv2.floodFill(outside, None, (0, 0), 2)  # what the background reaches from outside; the rest is the head
    return (outside[1:-1, 1:-1] != 2)


def _not_background(frame: np.ndarray) -> np.ndarray:
    """Colour distance [H, W] (L1, 0..3) of each pixel from the background colour (median of the frame's border)."""
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
    return np.abs(frame - np.median(border, axis=0)).sum(-1)


def _largest_head(frame: np.ndarray):
    """The head's mask (`_head_component` of the not-background pixels) and the background distance, or (None, dist)
    when no head covers 2 % of the frame."""
    dist = _not_background(frame)
    head = _head_component(dist > 0.12)
    return (None if head is None or head.sum() < 0.02 * head.size else head), dist


def _soft_moments(mask: np.ndarray, rim_weight: np.ndarray):
    """Centroid (x, y), roll (degrees from vertical, counter-clockwise on screen positive, as `synthetic.draw_face`)
    and semi-axes (ry >= rx, of a filled ellipse) of `mask` [H, W] bool, from image moments weighted 1 inside and
    `rim_weight` [H, W] on its one-pixel rim (anti-aliased edges move by less than a pixel when the head turns by
    half a degree; a binary mask would not see it)."""
    import cv2
    k = np.ones((3, 3), np.uint8)
    interior = cv2.erode(mask.astype(np.uint8), k).astype(bool)
    rim = cv2.dilate(mask.astype(np.uint8), k).astype(bool) & ~interior
    w = np.where(interior, 1.0, np.where(rim, rim_weight, 0.0))
    ys, xs = np.nonzero(w)
    w = w[ys, xs]
    cx, cy = np.average(xs, weights=w), np.average(ys, weights=w)
    dx, dy = xs - cx, ys - cy
    mxx, myy, mxy = np.average(dx * dx, weights=w), np.average(dy * dy, weights=w), np.average(dx * dy, weights=w)
    theta = 0.5 * math.atan2(2 * mxy, mxx - myy)  # major axis angle from +x (image coords, y down)
    up = math.degrees(theta) - 90.0 if theta > 0 else math.degrees(theta) + 90.0  # from vertical, clockwise +
    lam1 = (mxx + myy) / 2 + math.sqrt(((mxx - myy) / 2) ** 2 + mxy * mxy)
    lam2 = (mxx + myy) / 2 - math.sqrt(((mxx - myy) / 2) ** 2 + mxy * mxy)
    return (cx, cy), -up, 2 * math.sqrt(max(lam1, 1e-6)), 2 * math.sqrt(max(lam2, 1e-6))


def _skin_colour(frame: np.ndarray) -> np.ndarray:
    """The face's colour [3]: the median of the frame's central patch (CENTRE_PATCH of the side around the drawn
    head's centre, (0.5, 0.53) of the frame, which a turning head keeps: only skin and the small nose there). Not
    the median of the whole head mask: a model's render may darken the background around the head (a smeared halo
    of hair), which joins the head mask and pulled that median off the skin, so that no face, and no mouth, was
    found on frames whose mouth was plainly open."""
    H, W = frame.shape[:2]
    r = max(1, int(round(CENTRE_PATCH * min(H, W) / 2)))
    cy, cx = int(round(0.53 * H)), int(round(0.5 * W))
    return np.median(frame[max(0, cy - r):cy + r + 1, max(0, cx - r):cx + r + 1].reshape(-1, 3), axis=0)


def _head(frame: np.ndarray):
    """(face mask [H, W] bool, centroid (x, y), major-axis angle from vertical in degrees, ry, rx) or None.

    The head: the largest not-background part (`_head_component`). The face: within it, the pixels near the face's
    colour (`_skin_colour`, within SKIN_TOL), largest part, holes (eyes, nose, a closed-in mouth) filled; the centroid,
    roll and semi-axes (ry >= rx) are the face's image moments (rim weighted by skin membership), and the returned
    mask is the ellipse they describe (an open mouth reaching the chin still lies inside it; a dark blot touching
    the head from outside does not)."""
    head, _ = _largest_head(frame)
    if head is None:
        return None
    skin_colour = _skin_colour(frame)
    d_skin = np.abs(frame - skin_colour).sum(-1)
    face = _head_component(head & (d_skin < SKIN_TOL))
    if face is None or face.sum() < 0.02 * face.size:
        return None
    (cx, cy), roll, ry, rx = _soft_moments(face, np.clip(1.5 - d_skin / SKIN_TOL, 0.0, 1.0))
    down, side = _head_axes(frame.shape[:2], cx, cy, roll)
    ellipse = (down / ry) ** 2 + (side / rx) ** 2 <= 1.0
    return ellipse, (cx, cy), roll, ry, rx


def _head_axes(shape, cx: float, cy: float, roll: float):
    """Per-pixel coordinates [H, W] along the head's own down and sideways axes (pixels from the centroid)."""
    H, W = shape
    yy, xx = np.mgrid[:H, :W]
    a = math.radians(-roll)
    down = (xx - cx) * -math.sin(a) + (yy - cy) * math.cos(a)
    side = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
    return down, side


def mouth_opening_from_frames(frames) -> np.ndarray:
    """Mouth opening per frame, float64 [T] (see the module docstring)."""
    f = _frames(frames)
    out = np.zeros(len(f))
    for t, frame in enumerate(f):
        h = _head(frame)
        if h is None:
            continue
        mask, (cx, cy), roll, ry, rx = h
        d_skin = np.abs(frame - _skin_colour(frame)).sum(-1)
        down, side = _head_axes(d_skin.shape, cx, cy, roll)
        region = mask & (down > 0.15 * ry) & (np.abs(side) < 0.6 * rx)
        mouth = np.clip((d_skin - MOUTH_FROM) / MOUTH_RAMP, 0, 1)
        out[t] = float(mouth[region].sum()) / max(float(mask.sum()), 1.0)
    return out


def _silhouette_roll(frame: np.ndarray) -> float:
    """Roll (degrees, counter-clockwise positive) of the head's whole silhouette (`_head_component`: hair and face,
    holes filled, so an opening mouth does not tilt it), from image moments with a soft rim; nan without a head."""
    head, dist = _largest_head(frame)
    if head is None:
        return float("nan")
    return _soft_moments(head, np.clip(dist / 0.24, 0.0, 1.0))[1]


def head_roll_from_frames(frames) -> np.ndarray:
    """Head roll per frame in degrees (0 = upright), float64 [T]; nan where no head is found."""
    f = _frames(frames)
    return np.array([_silhouette_roll(frame) for frame in f], np.float64)


def _rotation_between(a: np.ndarray, b: np.ndarray, centre, max_deg: float) -> float:
    """The in-plane rotation (degrees) that best turns frame `a` into frame `b` about `centre` (x, y): the angle of
    highest correlation of b with a rotated, searched in 1-degree steps over +-max_deg, then 0.1-degree steps."""
    import cv2
    ga, gb = a.mean(-1), b.mean(-1)
    bb = gb - gb.mean()
    H, W = ga.shape

    def score(deg):
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(deg), 1.0)
        r = cv2.warpAffine(ga, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        r = r - r.mean()
        return float((r * bb).sum() / (np.sqrt((r * r).sum() * (bb * bb).sum()) + 1e-9))

    coarse = np.arange(-max_deg, max_deg + 0.5, 1.0)
    best = coarse[int(np.argmax([score(d) for d in coarse]))]
    fine = np.arange(best - 1.0, best + 1.05, 0.1)
    return float(fine[int(np.argmax([score(d) for d in fine]))])


def head_motion(frames, span: int = MOTION_SPAN, max_deg: float = 15.0) -> np.ndarray:
    """Head turning speed in degrees per frame, float64 [T - span]: the rotation between frame i and frame i + span
    (whole-frame registration about the head's centroid, `_rotation_between`), / span. Registration uses every
    pixel, so it holds on a model's soft, jittery renders where the moments of a near-round head do not; over `span`
    frames the jitter counts 1/span. nan where frame i has no head."""
    f = _frames(frames)
    span = max(1, min(span, len(f) - 1))
    out = np.full(max(0, len(f) - span), np.nan)
    for i in range(len(out)):
        head = _head_component(_not_background(f[i]) > 0.12)
        if head is None:
            continue
        ys, xs = np.nonzero(head)
        out[i] = abs(_rotation_between(f[i], f[i + span], (xs.mean(), ys.mean()), max_deg)) / span
    return out


def seam_jumps(frames, clip: int, max_deg: float = 40.0) -> tuple[float, float]:
    """How a clip-by-clip render turns across its clip seams: (median |rotation| from the last frame of a clip to the
    first of the next, median |rotation| between neighbouring frames inside clips), degrees; frames come in clips
    of `clip`. A head that keeps turning gives about equal values; one that each clip turns from the reference's
    pose and the next clip puts back (a sawtooth) gives a seam jump far above the within-clip step. nan without
    a seam or without a head."""
    turns = head_motion(frames, span=1, max_deg=max_deg)  # turn from frame i to i + 1
    seam = (np.arange(len(turns)) + 1) % clip == 0
    return tuple(float(np.nanmedian(t)) if np.isfinite(t).any() else float("nan") for t in (turns[seam], turns[~seam]))


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
    if np.ptp(np.asarray(requested, np.float64)) == 0 or np.ptp(np.asarray(measured, np.float64)) == 0:
        return float("nan")  # a constant series has no rank correlation
    r = spearmanr(np.asarray(requested, np.float64), np.asarray(measured, np.float64)).statistic
    return float(r)
