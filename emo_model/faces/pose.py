"""Pose frames for EchoMimic's landmark-driven (`_pose`) sets: one drawing of face landmarks per video frame, which the
3-channel face locator turns into the features for that frame (in place of the audio sets' static face mask).

EchoMimic's own input (infer_audio2vid_pose*.py) is a folder `0.pkl, 1.pkl, ..., N-1.pkl`: frame i's mediapipe
face-mesh landmarks, a pickled numpy array [478, 3] (x, y, z; the demo files) or [478, 2] (motion_sync's output), x and
y in pixels of the 512 x 512 face crop. Each is drawn by its `FaceMeshVisualizer(draw_iris=False, draw_mouse=False)`
on a black 512 x 512 uint8 canvas, as `draw_pose` does here bit for bit (mediapipe 0.10.14's drawing code): the eye and
eyebrow contours (cv2 lines, 2 px, one colour per contour, no mouth, no face oval), then a 6 x 6 px square on each
pupil (landmarks 468 and 473, when present) and on the nose tip (4); the canvas is resized to the model's resolution
(cv2 bilinear) and divided by 255. Colours are written in the order mediapipe names them (B, G, R) and never swapped,
so channel 0 gets the first number; EchoMimic saves its drawings in its output videos (right half) read as RGB,
which gives the same order, so drawn frames read back from a video or pictures line up with drawn landmarks.

The frames are used one per video frame, from the first: extra frames are dropped, and fewer frames than the video
needs is an error (EchoMimic's script fails there too): nothing is looped or stretched, and a pose video's own frame
rate is not looked at (EchoMimic takes every frame).
"""
import logging
import os
import pickle
import re
from pathlib import Path

import cv2
import numpy as np
import torch

from ..errors import EMOInputError
from ..media.image import IMAGE_FORMATS, load_image, to_rgb_uint8
from .hand_pose import FRAME as HAND_FRAME
from .hand_pose import hand_pose_frame, is_dwpose_file, read_dwpose

logger = logging.getLogger(__name__)

CANVAS = 512  # px: EchoMimic draws on a 512 x 512 canvas, then resizes
LANDMARK_FILES = (".pkl", ".npy")
IMAGE_FILES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
HOW = ("EchoMimic's pose folder (0.pkl, 1.pkl, ... landmark files; EchoMimic v2: 0.npy, 1.npy, ... DWPose files), "
       "a folder of drawn pose frames (pictures), or a video of drawn pose frames")

# mediapipe 0.10.14 face_mesh_connections.py (Apache-2.0): built the same way, so they iterate in the same order.
LEFT_EYE = frozenset([(263, 249), (249, 390), (390, 373), (373, 374), (374, 380), (380, 381), (381, 382), (382, 362),
                      (263, 466), (466, 388), (388, 387), (387, 386), (386, 385), (385, 384), (384, 398), (398, 362)])
LEFT_EYEBROW = frozenset([(276, 283), (283, 282), (282, 295), (295, 285), (300, 293), (293, 334), (334, 296),
                          (296, 336)])
RIGHT_EYE = frozenset([(33, 7), (7, 163), (163, 144), (144, 145), (145, 153), (153, 154), (154, 155), (155, 133),
                       (33, 246), (246, 161), (161, 160), (160, 159), (159, 158), (158, 157), (157, 173), (173, 133)])
RIGHT_EYEBROW = frozenset([(46, 53), (53, 52), (52, 65), (65, 55), (70, 63), (63, 105), (105, 66), (66, 107)])

# EchoMimic's src/utils/draw_utils.py: colours, and the order its connection dict is filled (later lines paint over).
CONNECTIONS = {}
for _edges, _color in ((LEFT_EYE, (180, 200, 10)), (RIGHT_EYE, (10, 200, 180)),
                       (LEFT_EYEBROW, (180, 220, 10)), (RIGHT_EYEBROW, (10, 220, 180))):
    CONNECTIONS.update({edge: _color for edge in _edges})
LINE_WIDTH = 2
POINTS = ((468, (10, 200, 250)), (473, (250, 200, 10)), (4, (200, 200, 200)))  # right pupil, left pupil, nose tip
POINT_HALF = 3  # a square of 2 * POINT_HALF px
MIN_LANDMARKS = 1 + max(max(edge) for edge in CONNECTIONS)  # 467: mediapipe's face mesh has 468 (478 with irises)


def draw_pose(landmarks: np.ndarray | None, landmark_size: float = CANVAS) -> np.ndarray:
    """One frame's landmarks [N >= 467, 2 or 3] (x, y in pixels of a `landmark_size` square; z unused), or None (no
    face: a black frame) -> EchoMimic's drawing, uint8 [512, 512, 3] (channels in the colours' B, G, R order)."""
    image = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    if landmarks is None:
        return image
    # mediapipe keeps normalised coordinates as float32 (the landmark proto); points outside [0, 1] are not drawn
    norm = (np.asarray(landmarks, np.float64)[:, :2] / landmark_size).astype(np.float32).astype(np.float64)
    inside = ((norm >= 0) & (norm <= 1)).all(1)
    px = np.minimum(np.floor(norm * CANVAS), CANVAS - 1).astype(int)
    for (a, b), color in CONNECTIONS.items():
        if inside[a] and inside[b]:
            cv2.line(image, (int(px[a, 0]), int(px[a, 1])), (int(px[b, 0]), int(px[b, 1])), color, LINE_WIDTH)
    for i, color in POINTS:  # EchoMimic's draw_points: skips x or y >= 1; negative slice starts draw nothing
        if i < len(norm) and (0 <= norm[i]).all() and (norm[i] < 1).all():
            x, y = int(CANVAS * norm[i, 0]), int(CANVAS * norm[i, 1])
            image[y - POINT_HALF:y + POINT_HALF, x - POINT_HALF:x + POINT_HALF, :] = color
    return image


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (and None) only: any other global is refused, so a pose file cannot run code."""
    SAFE = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                      ("numpy", "ndarray"), ("numpy", "dtype")})

    def find_class(self, module, name):
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_landmarks(path) -> np.ndarray | None:
    """One EchoMimic landmark file -> float64 [N, 2 or 3] (pixels), or None (a frame without a face). `.pkl`: a
    pickled numpy array, read with a loader that refuses anything else; `.npy`: a numpy file (no pickles)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            value = np.load(path, allow_pickle=False)
        else:
            with open(path, "rb") as f:
                value = _ArrayUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise EMOInputError(f"refused to read {path}: it holds Python objects other than a numpy array ({e}); "
                            "landmark files must be plain arrays, as EchoMimic's motion_sync writes them") from e
    except (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as e:
        raise EMOInputError(f"{path} could not be read as a landmark file ({type(e).__name__}: {e}): write it again "
                            "(a pickled or .npy numpy array [478, 2 or 3])") from e
    if value is None:
        return None
    if (not isinstance(value, np.ndarray) or value.ndim != 2 or value.shape[0] < MIN_LANDMARKS
            or value.shape[1] not in (2, 3) or value.dtype.kind not in "fiu"):
        what = f"an array {list(value.shape)} of {value.dtype}" if isinstance(value, np.ndarray) else \
            f"a {type(value).__name__}"
        raise EMOInputError(f"{path} holds {what}; a landmark file holds one frame's mediapipe face-mesh landmarks, "
                            f"a number array [478 (at least {MIN_LANDMARKS}), 2 or 3] in pixels")
    if not np.isfinite(value).all():
        raise EMOInputError(f"{path} has NaN or infinite landmark coordinates: extract the landmarks of that frame "
                            "again")
    return value.astype(np.float64)


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _landmark_files(folder: Path, files: list) -> list:
    """EchoMimic's naming: 0.pkl ... N-1.pkl (or .npy), every index present."""
    by_index = {}
    for f in files:
        if not f.stem.isdigit():
            raise EMOInputError(f"{f} is not named by its frame number: name the landmark files 0{f.suffix}, "
                                f"1{f.suffix}, ... in {folder}, as EchoMimic does")
        if int(f.stem) in by_index:
            raise EMOInputError(f"{folder} has two landmark files for frame {int(f.stem)} "
                                f"({by_index[int(f.stem)].name}, {f.name}): keep one")
        by_index[int(f.stem)] = f
    missing = sorted(set(range(len(by_index))) - set(by_index))
    if missing:
        raise EMOInputError(f"{folder} has {len(by_index)} landmark files but frame {missing[0]} is missing "
                            f"(the files must be 0 ... {len(by_index) - 1}, one per video frame): add it or renumber")
    return [by_index[i] for i in range(len(by_index))]


def _read_video(path: Path, resolution: int, limit: int | None) -> list:
    import av
    frames = []
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise EMOInputError(f"{path} has no video track: give {HOW}")
            for frame in container.decode(container.streams.video[0]):
                frames.append(_square(frame.to_ndarray(format="rgb24"), resolution, f"{path} (frame {len(frames)})"))
                if limit is not None and len(frames) == limit:
                    break
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise EMOInputError(f"{path} could not be read as a video ({e}): give {HOW}") from e
    return frames


def _square(image: np.ndarray, resolution: int, name: str) -> np.ndarray:
    """A drawn pose frame uint8 [H, W, 3] -> [resolution, resolution, 3] (cv2 bilinear, as EchoMimic resizes)."""
    h, w = image.shape[:2]
    if h != w:
        raise EMOInputError(
            f"{name} is {w}x{h} px; pose frames are drawn on the square face crop: crop them to a square (if this is "
            f"EchoMimic's output video, its right half is the pose drawing)")
    return image if h == resolution else cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LINEAR)


def pose_frames_from_images(frames, resolution: int, num_frames: int | None = None,
                            name: str = "the pose frames") -> torch.Tensor:
    """Already-drawn pose frames, a batch [L, H, W, 3] (uint8 or float 0..1; e.g. a ComfyUI IMAGE) or a list of
    [H, W, 3] pictures -> uint8 [min(L, num_frames), resolution, resolution, 3] (0..255). Checks that they are square,
    mostly black drawings (not a regular video) and enough for `num_frames` video frames."""
    if isinstance(frames, (torch.Tensor, np.ndarray)) and np.ndim(frames) == 4:
        frames = list(frames)
    if not isinstance(frames, (list, tuple)) or not frames:
        raise EMOInputError(f"{name}: no frames; give {HOW}")
    frames = frames[:num_frames] if num_frames else frames
    out = _stack_uint8((_square(to_rgb_uint8(f, f"{name} (frame {i})"), resolution, f"{name} (frame {i})")
                        for i, f in enumerate(frames)), len(frames), resolution)
    return _finish(out, num_frames, name, drawn=True)


def pose_frames_uint8(frames, resolution: int, name: str = "the pose frames") -> torch.Tensor:
    """Pose frames [L, H, W, 3] (square; uint8 0..255 or float 0..1, numpy or torch) -> uint8 tensor
    [L, resolution, resolution, 3], returned as it is when it already is one (no copy, never float32)."""
    if (isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8
            and tuple(frames.shape[1:]) == (resolution, resolution, 3)):
        return frames
    if np.ndim(frames) != 4 or np.shape(frames)[-1] != 3 or len(frames) < 1:
        raise EMOInputError(f"{name} must be [frames, H, W, 3], got shape {tuple(np.shape(frames))}")
    squares = (_square(to_rgb_uint8(f, name, min_side=1), resolution, name) for f in frames)
    return torch.from_numpy(_stack_uint8(squares, len(frames), resolution))


def _stack_uint8(frames, count: int, resolution: int) -> np.ndarray:
    """`count` uint8 [resolution, resolution, 3] frames (an iterable, consumed lazily) -> uint8 [count, resolution,
    resolution, 3], written into one array made up front: a long sequence is held once as uint8 (0.75 MB a frame at
    512²), never as a list plus its stacked copy, never as float32."""
    out = np.empty((count, resolution, resolution, 3), np.uint8)
    for i, f in enumerate(frames):
        out[i] = f
    return out


def _finish(frames: np.ndarray, num_frames: int | None, name: str, drawn: bool) -> torch.Tensor:
    if num_frames is not None and len(frames) < num_frames:
        raise EMOInputError(
            f"{name} has {len(frames)} pose frames but the video needs {num_frames} (one per video frame; EchoMimic "
            f"neither loops nor stretches them): give at least {num_frames} pose frames, or shorten the audio (or "
            f"the maximum length) to {len(frames)} frames")
    if drawn:  # a drawing is a few thin lines on black: a mostly bright picture is a regular video, not a drawing
        dark = (frames.max(axis=3) <= 25).mean()
        if dark < 0.5:
            raise EMOInputError(
                f"{name} do not look like pose drawings (only {dark:.0%} of the pixels are black; EchoMimic's are "
                "thin coloured lines on black): give drawn pose frames or EchoMimic's landmark files, not a video of "
                "a face (extract its landmarks with EchoMimic's motion_sync first)")
        if not frames.any():
            raise EMOInputError(f"{name} are all black: they hold no landmark drawings; give drawn pose frames")
    return torch.from_numpy(np.ascontiguousarray(frames))


def _hand_frames(files: list, resolution: int) -> np.ndarray:
    """EchoMimic v2's DWPose files -> uint8 [L, resolution, resolution, 3], each drawn as its infer.py draws it in a
    frame of the model's size. Poses whose drawing boxes lie outside that frame but inside EchoMimic v2's own
    768 x 768 (e.g. a model run at another size) are drawn at 768 and resized (cv2 bilinear), said once in the log."""
    poses = [(read_dwpose(f), str(f)) for f in files]
    side = resolution
    if resolution != HAND_FRAME and any(max(p["draw_pose_params"][3], p["draw_pose_params"][5]) > resolution
                                        for p, _ in poses):
        side = HAND_FRAME
        logger.info("the pose drawings of %s are placed for a %dx%d frame: drawn at that size and resized to the "
                    "model's %dx%d", Path(files[0]).parent, side, side, resolution, resolution)
    frames = (hand_pose_frame(p, side, name) for p, name in poses)
    return _stack_uint8((f if side == resolution else cv2.resize(f, (resolution, resolution)) for f in frames),
                        len(poses), resolution)


def is_dwpose_folder(path) -> bool:
    """True for EchoMimic v2's pose folder: `0.npy` there is a pickled DWPose dict (not a landmark array)."""
    path = Path(path)
    return path.is_dir() and is_dwpose_file(path / "0.npy")


def load_pose_frames(source, resolution: int, num_frames: int | None = None,
                     landmark_size: float = CANVAS) -> torch.Tensor:
    """Pose input -> uint8 [L, resolution, resolution, 3] (0..255; frame, pixel row, pixel column, channel), the
    face locator's input for video frames 0 ... L-1 (L = num_frames when given, else every frame of the source).

    source: EchoMimic's pose folder (`0.pkl` ... or `0.npy` ..., one frame's landmarks each; drawn by `draw_pose`),
    EchoMimic v2's pose folder (`0.npy` ..., one frame's DWPose dict each; its hands drawn by
    `hand_pose.hand_pose_frame` into a frame of side `resolution`, as its infer.py does at the model's size),
    one `.npy` file [L, N, 2 or 3] of landmarks, a folder of drawn pose frames (pictures, in natural name order), or
    a video of drawn pose frames. landmark_size: the side (px) of the square crop the landmark coordinates are
    measured in (EchoMimic's: 512). num_frames: the number of video frames to render; extra pose frames are dropped,
    fewer are an EMOInputError."""
    path = Path(source)
    if not path.exists():
        raise EMOInputError(f"pose input not found: {path}: give {HOW}")
    name = str(path)
    if path.is_file() and path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise EMOInputError(f"{path} could not be read as a numpy file ({e}): write it again") from e
        if (array.ndim != 3 or array.shape[1] < MIN_LANDMARKS or array.shape[2] not in (2, 3)
                or array.dtype.kind not in "fiu" or not np.isfinite(array).all()):
            raise EMOInputError(f"{path} holds an array {list(array.shape)} of {array.dtype}; a landmark sequence is "
                                f"finite numbers [frames, 478 (at least {MIN_LANDMARKS}), 2 or 3] in pixels")
        landmarks = list(array[:num_frames] if num_frames else array)
    elif path.is_file():
        frames = _read_video(path, resolution, num_frames)
        if not frames:
            raise EMOInputError(f"{path} has no video frames: give {HOW}")
        return _finish(np.stack(frames), num_frames, name, drawn=True)
    else:
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
        marks = [f for f in files if f.suffix.lower() in LANDMARK_FILES]
        images = [f for f in files if f.suffix.lower() in IMAGE_FILES]
        if marks and images:
            raise EMOInputError(f"{path} holds both landmark files ({len(marks)}) and pictures ({len(images)}): keep "
                                "one kind in the pose folder")
        if images:
            images = sorted(images, key=_natural_key)[:num_frames] if num_frames else sorted(images, key=_natural_key)
            out = _stack_uint8((_square(load_image(f), resolution, str(f)) for f in images), len(images), resolution)
            return _finish(out, num_frames, name, drawn=True)
        if not marks:
            raise EMOInputError(f"{path} holds no pose frames (no .pkl/.npy landmark files, no {IMAGE_FORMATS} "
                                f"pictures): give {HOW}")
        marks = _landmark_files(path, marks)
        marks = marks[:num_frames] if num_frames else marks
        if is_dwpose_folder(path):  # EchoMimic v2: hands drawn into a frame of the model's size
            return _finish(_hand_frames(marks, resolution), num_frames, name, drawn=False)
        landmarks = [read_landmarks(f) for f in marks]
    drawn = (draw_pose(lm, landmark_size) for lm in landmarks)
    frames = _stack_uint8((f if resolution == CANVAS else cv2.resize(f, (resolution, resolution)) for f in drawn),
                          len(landmarks), resolution)
    return _finish(frames, num_frames, name, drawn=False)
