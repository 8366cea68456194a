"""Hand-pose drawings for EchoMimic v2: one frame's DWPose result -> the picture its pose encoder sees.

EchoMimic v2's pose folders (`assets/halfbody_demo/pose/<name>/`) hold `0.npy, 1.npy, ...`, one per video frame, each
a pickled dict of its DWPose detector's output: `bodies` (candidate [18, 2], subset, score), `hands` [2, 21, 2]
(x, y normalised to 0..1 of the drawing box; -1 = not detected), `hands_score` [2, 21], `faces`, `faces_score`,
`num` and `draw_pose_params` = (imh, imw, rb, re, cb, ce): the drawing box's size and where it sits in the frame.
`infer.py` draws each frame with `draw_pose_select_v2(pose, imh, imw, ref_w=800)` (src/utils/dwpose_util.py) and pastes
it at rows rb:re, columns cb:ce of a black square frame of the model's size (768 x 768). Only the **hands** are drawn
(bodies and faces are read, not drawn): on a black canvas scaled so that its shorter side is 800 px, for each hand
the 20 bone lines (2 px, colour hue ie/20 at full saturation and value, times int(score_a * score_b * 255)) and then
the 21 points (radius 4, filled, colour (0, 0, int(score * 255))); a coordinate is truncated to a pixel with int(), and
a line or point is drawn only where every pixel coordinate is above 0.01 (so 0 and -1 are skipped). The canvas is
treated as BGR: it is resized to the box with cv2 bilinear and converted BGR -> RGB, so the hue order is reversed and
the points come out red. Done here with the same cv2 calls, so the pixels are identical (tested against drawings made
by the original code). The `.npy` files are pickles: they are read with a loader that admits numpy arrays and plain
Python values only, so a pose file cannot run code.
"""
import pickle
from pathlib import Path

import cv2
import numpy as np

from ..errors import EMOInputError

REF_W = 800  # px: the shorter side of the canvas draw_pose_select_v2 draws on (infer.py passes ref_w=800)
FRAME = 768  # px: infer.py's -W / -H, the frame the drawing boxes are placed in
EPS = 0.01
EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
         (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
FIX = "extract the poses again with EchoMimic v2's DWPose script (one <frame>.npy per video frame)"


def _hsv_to_rgb(h: float) -> np.ndarray:
    """matplotlib.colors.hsv_to_rgb([h, 1, 1]) with its float64 arithmetic (s = v = 1), as draw_handpose uses it."""
    s = v = 1.0
    i = int(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6], np.float64)


BONE_COLORS = [_hsv_to_rgb(ie / float(len(EDGES))) for ie in range(len(EDGES))]


def _draw_hands(canvas: np.ndarray, hands, scores) -> np.ndarray:
    H, W = canvas.shape[:2]
    for peaks, sc in zip(hands, scores):
        for ie, (a, b) in enumerate(EDGES):
            x1, y1 = peaks[a]
            x2, y2 = peaks[b]
            x1, y1, x2, y2 = int(x1 * W), int(y1 * H), int(x2 * W), int(y2 * H)
            score = int(sc[a] * sc[b] * 255)
            if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
                cv2.line(canvas, (x1, y1), (x2, y2), BONE_COLORS[ie] * score, thickness=2)
        for i, (x, y) in enumerate(peaks):
            x, y = int(x * W), int(y * H)
            score = int(sc[i] * 255)
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), 4, (0, 0, score), thickness=-1)
    return canvas


def draw_hands(pose: dict, H: int, W: int, ref_w: int = REF_W) -> np.ndarray:
    """EchoMimic v2's draw_pose_select_v2: one frame's DWPose dict -> uint8 [H, W, 3] RGB, hands only (see the module
    docstring). H, W: the drawing box (draw_pose_params' imh, imw)."""
    sz = min(H, W)
    sr = (ref_w / sz) if sz != ref_w else 1
    canvas = np.zeros((int(H * sr), int(W * sr), 3), np.uint8)
    canvas = _draw_hands(canvas, pose["hands"], pose["hands_score"])
    return cv2.cvtColor(cv2.resize(canvas, (W, H)), cv2.COLOR_BGR2RGB)


def hand_pose_frame(pose: dict, side: int = FRAME, name: str = "the pose") -> np.ndarray:
    """One video frame's pose picture as infer.py makes it: a black uint8 [side, side, 3] frame with the hand
    drawing pasted at draw_pose_params' rows rb:re and columns cb:ce."""
    imh, imw, rb, re, cb, ce = (int(v) for v in pose["draw_pose_params"])
    if not (0 <= rb < re <= side and 0 <= cb < ce <= side and re - rb == imh and ce - cb == imw):
        raise EMOInputError(
            f"{name}: draw_pose_params (imh {imh}, imw {imw}, rows {rb}:{re}, columns {cb}:{ce}) do not fit a "
            f"{side}x{side} frame: the poses were extracted for another frame size; {FIX} at {side}x{side}")
    frame = np.zeros((side, side, 3), np.uint8)
    frame[rb:re, cb:ce] = draw_hands(pose, imh, imw)
    return frame


class _PoseUnpickler(pickle.Unpickler):
    """numpy arrays and scalars, dicts, lists, numbers: nothing else (a pose file cannot run code)."""
    SAFE = frozenset({(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                      for n in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")})

    def find_class(self, module, name):
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def is_dwpose_file(path) -> bool:
    """True for a `.npy` holding a pickled object (EchoMimic v2's DWPose dicts), False for a plain number array."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return read(f)[2].hasobject
    except (OSError, ValueError):
        return False


def read_dwpose(path) -> dict:
    """One EchoMimic v2 pose file -> {"hands": float64 [n, 21, 2], "hands_score": float64 [n, 21],
    "draw_pose_params": (imh, imw, rb, re, cb, ce)} (float arrays keep the file's dtype); an EMOInputError naming the file and the fix when it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            read(f)
            value = _PoseUnpickler(f).load()
        value = value.tolist() if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 0 else value
    except pickle.UnpicklingError as e:
        raise EMOInputError(f"refused to read {path}: it holds Python objects other than numbers and arrays ({e}); "
                            f"EchoMimic v2's pose files are dicts of arrays: {FIX}") from e
    except (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as e:
        raise EMOInputError(f"{path} could not be read as an EchoMimic v2 pose file ({type(e).__name__}: {e}): "
                            f"{FIX}") from e
    if not isinstance(value, dict) or not {"hands", "hands_score", "draw_pose_params"} <= set(value):
        keys = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise EMOInputError(f"{path} is not a DWPose result (it holds {keys}; EchoMimic v2's have hands, "
                            f"hands_score and draw_pose_params): {FIX}")
    try:
        hands = np.asarray(value["hands"])  # dtypes kept (float32 or float64 in the demo files): the pixel
        scores = np.asarray(value["hands_score"])  # coordinates and colours are computed in them, as the original
        params = tuple(int(v) for v in value["draw_pose_params"])
    except (TypeError, ValueError) as e:
        raise EMOInputError(f"{path}: hands / hands_score / draw_pose_params are not numbers ({e}): {FIX}") from e
    if (hands.dtype.kind != "f" or scores.dtype.kind != "f" or hands.ndim != 3 or hands.shape[1:] != (21, 2) or scores.shape != hands.shape[:2] or len(params) != 6
            or not (np.isfinite(hands).all() and np.isfinite(scores).all())):
        raise EMOInputError(f"{path}: hands {list(hands.shape)}, hands_score {list(scores.shape)}, "
                            f"draw_pose_params {len(params)} values; expected float [n, 21, 2], float [n, 21] and 6 "
                            f"finite numbers: {FIX}")
    return {"hands": hands, "hands_score": scores, "draw_pose_params": params}
