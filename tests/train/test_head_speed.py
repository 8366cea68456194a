"""Head-rotation speed (degrees per frame) from frame-to-frame motion (emo_model/train/head_speed.py)."""
import math

import cv2
import numpy as np
import pytest

from emo_model.train import synthetic as s
from emo_model.train.head_speed import fit_rotation, head_speed


def _rot(axis, deg):
    a = math.radians(deg)
    c, si = math.cos(a), math.sin(a)
    if axis == "y":
        return np.array([[c, 0, si], [0, 1, 0], [-si, 0, c]])
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -si], [0, si, c]])
    return np.array([[c, -si, 0], [si, c, 0], [0, 0, 1]])


@pytest.mark.parametrize("axis,deg", [("z", 2.0), ("y", 3.0), ("x", 1.5), ("y", 0.7)])
def test_fit_rotation_recovers_a_known_rotation_of_points_on_a_sphere(axis, deg):
    rng = np.random.default_rng(1)
    r = 50.0
    # points on the front of the face (|x|, |y| < 0.7 r), plus a translation the fit must not call rotation
    xy = rng.uniform(-0.7, 0.7, (40, 2)) * r
    z = np.sqrt(r ** 2 - (xy ** 2).sum(1))
    p = np.column_stack([xy, z]) @ _rot(axis, deg).T
    center = np.array([100.0, 80.0])
    moved = p[:, :2] + center + (1.5, -0.8)
    got, n = fit_rotation(xy + center, moved, center, r)
    assert n >= 30
    assert got == pytest.approx(deg, rel=0.1)


def test_fit_rotation_pure_translation_is_no_rotation():
    rng = np.random.default_rng(2)
    xy = rng.uniform(-30, 30, (40, 2))
    got, _ = fit_rotation(xy, xy + (2.0, 1.0), (0, 0), 50)
    assert got < 0.2


def _lips(side):
    """The lip box prepare-data gives a whole-frame crop (where lips sit in a frontal face box)."""
    from emo_model.faces.region_masks import _lip_box
    cx, cy, w, h = _lip_box(None, (0, side, 0, side))
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


@pytest.mark.parametrize("speed,motion", [(0.5, "swing"), (1.0, "swing"), (2.0, "swing"), (3.0, "swing"),
                                          (1.0, "sweep"), (3.0, "sweep")])
def test_drawn_head_rotating_at_a_known_rate_is_measured_within_25_percent(speed, motion):
    T = 40
    roll = s.roll_track(T, speed, 14.0 if motion == "swing" else 3 * speed, phase=0.3, motion=motion)
    op = s.mouth_opening(np.abs(np.sin(np.arange(T) * 0.7)) * 0.3)  # the mouth moves too
    st = s.face_style(4)
    grays = [cv2.cvtColor(s.draw_face(st, 64, o, r), cv2.COLOR_RGB2GRAY) for o, r in zip(op, roll)]
    lips = np.tile(_lips(64), (T, 1))
    est = head_speed(grays, np.tile([0, 0, 64, 64], (T, 1)), lip_boxes=lips)
    assert est.shape == (T,) and est.dtype == np.float32
    assert np.median(est) == pytest.approx(speed, rel=0.25)


def test_still_head_reads_near_zero_and_keypoints_are_used():
    T = 12
    st = s.face_style(5)
    grays = [cv2.cvtColor(s.draw_face(st, 64, 0.5 * (i % 2)), cv2.COLOR_RGB2GRAY) for i in range(T)]
    assert np.median(head_speed(grays, np.tile([0, 0, 64, 64], (T, 1)), lip_boxes=np.tile(_lips(64), (T, 1)))) < 0.15
    # keypoints turning 2 deg/frame in-plane about the box centre: taken instead of the (still) pixels
    base = np.array([[-10, -8], [10, -8], [0, 2], [-8, 12], [8, 12]], float)
    kps = np.stack([base @ _rot("z", 2.0 * i)[:2, :2].T + 32 for i in range(T)])
    est = head_speed(grays, np.tile([0, 0, 64, 64], (T, 1)), kps)
    assert np.median(est) == pytest.approx(2.0, rel=0.05)
