"""Face embedding (ArcFace, 512-d) for Hallo's identity tokens, run by ``cv2.dnn``: no insightface, no onnxruntime.

Hallo feeds ``imageproj(face_emb)`` to both UNets' cross-attention, where ``face_emb`` is insightface's
``FaceAnalysis(antelopev2).get(bgr)`` -> largest face (bbox area) -> ``face.embedding``: the raw (not
L2-normalised) 512-d output of ``glintr100.onnx`` on the face aligned by its 5 SCRFD keypoints
(``scrfd_10g_bnkps.onnx``, det_size 640, det_thresh 0.5). This module reproduces that chain:

* keypoints: ``face_detect`` SCRFD (or YuNet, close but not Hallo's detector), ``FaceBox.keypoints``;
* alignment: insightface ``face_align.norm_crop``: the similarity transform (scikit-image's Umeyama
  estimate, as insightface) from the 5 points to ``ARCFACE_DST``, ``cv2.warpAffine`` to 112 x 112
  (bilinear, black border);
* input: ``ArcFaceONNX.get_feat``: ``(pixel - 127.5) / 127.5`` in RGB order (insightface is given BGR and
  swaps to RGB in ``blobFromImages``; we warp the RGB image, so no swap), except mxnet-converted files
  (a ``Sub``/``_minus`` and a ``Mul``/``_mul`` among the first 8 graph nodes), which take raw 0..255 pixels.

The files are Hallo's ``pretrained_models/face_analysis/models/glintr100.onnx`` (~250 MB) and
``scrfd_10g_bnkps.onnx``; insightface's model-zoo terms: non-commercial research only.
"""

from __future__ import annotations

import functools
import logging
import mmap
from pathlib import Path

import numpy as np

from ..errors import EMOCheckpointError, EMOInputError
from ..media.image import to_rgb_uint8
from .detect import DETECTOR_FILES, detect_faces, resolve_detector

logger = logging.getLogger(__name__)

# Hallo's model first: its imageproj was trained on glintr100 embeddings; w600k_r50 (buffalo_l) is another space.
EMBEDDING_FILES = ("glintr100.onnx", "w600k_r50.onnx")
INPUT_SIZE = 112
# insightface utils/face_align.py ``arcface_dst``: where the 5 keypoints go in the 112 x 112 crop (x, y px).
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
FIX = ("give the path of Hallo's pretrained_models/face_analysis/models/glintr100.onnx (or of its folder), or leave "
       "the face-embedding model empty to use Hallo's no-face fallback (zero embedding)")


def find_embedding_model(folder, names=EMBEDDING_FILES) -> Path | None:
    """The first of ``names`` found in ``folder`` or ``folder/models`` (Hallo's layout), else None."""
    if folder is None:
        return None
    for d in (Path(folder), Path(folder) / "models"):
        for name in names:
            if (d / name).is_file():
                return d / name
    return None


def find_keypoint_detector(folder) -> Path | None:
    """A detector that gives 5 keypoints in ``folder``: SCRFD (Hallo's) first, then YuNet, else None."""
    if folder is None or not Path(folder).is_dir():
        return None
    for name in (*DETECTOR_FILES["scrfd"], *DETECTOR_FILES["yunet"]):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def alignment_matrix(keypoints) -> np.ndarray:
    """insightface ``estimate_norm``: float64 [2, 3] mapping source pixels to the 112 x 112 crop, the
    least-squares similarity (rotation, uniform scale, shift) taking ``keypoints`` [5, 2] to ``ARCFACE_DST``."""
    from skimage.transform import SimilarityTransform

    kps = np.asarray(keypoints, dtype=np.float32)
    if kps.shape != (5, 2) or not np.isfinite(kps).all():
        raise EMOInputError(f"face keypoints must be 5 (x, y) points in pixels, got an array of shape {kps.shape}")
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tf = SimilarityTransform.from_estimate(kps, ARCFACE_DST)
        ok = bool(tf)
    else:
        tf = SimilarityTransform()
        ok = tf.estimate(kps, ARCFACE_DST)
    if not ok or not np.isfinite(tf.params).all() or np.ptp(kps, axis=0).max() < 1e-3:
        raise EMOInputError(f"face keypoints {kps.tolist()} do not span a face (all in one spot); "
                            "check the detector's output")
    return tf.params[:2]


def align_face(rgb, keypoints) -> np.ndarray:
    """insightface ``norm_crop(img, kps, 112)``: uint8 [112, 112, 3] crop of ``rgb`` [H, W, 3] (same colour
    order as the input), eyes, nose and mouth on ``ARCFACE_DST``; outside the picture is black."""
    import cv2
    return cv2.warpAffine(to_rgb_uint8(rgb, "the face picture", min_side=1), alignment_matrix(keypoints),
                          (INPUT_SIZE, INPUT_SIZE), borderValue=0.0)


# ----------------------------------------------------------------------------- ONNX graph node names

def _varint(buf, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf, start: int, end: int):
    """Protobuf wire format: yields (field number, int for varints / (start, end) for bytes / None)."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        kind = key & 7
        if kind == 0:
            value, i = _varint(buf, i)
        elif kind == 2:
            n, i = _varint(buf, i)
            value, i = (i, i + n), i + n
        elif kind in (1, 5):
            value, i = None, i + (8 if kind == 1 else 4)
        else:
            raise ValueError(f"protobuf wire type {kind}")
        yield key >> 3, value


def onnx_node_names(path, n: int = 8) -> list[str]:
    """Names of the first ``n`` nodes of an ONNX graph (ModelProto.graph = field 7, GraphProto.node = 1,
    NodeProto.name = 3), read without the onnx package; the big weight tensors are skipped, not read."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        graph = next(v for k, v in _fields(buf, 0, len(buf)) if k == 7)
        names = []
        for k, node in _fields(buf, *graph):
            if k == 1:
                names.append(next((bytes(buf[slice(*v)]).decode("utf-8", "replace")
                                   for kk, v in _fields(buf, *node) if kk == 3), ""))
                if len(names) == n:
                    break
        return names


def input_normalisation(path) -> tuple[float, float]:
    """(mean, std) as insightface's ``ArcFaceONNX`` picks them: (0, 1) for mxnet-converted files (a Sub and
    a Mul node among the first 8), else (127.5, 127.5) (glintr100, w600k_r50 and other PyTorch exports)."""
    names = onnx_node_names(path)
    sub = any(s.startswith(("Sub", "_minus")) for s in names)
    mul = any(s.startswith(("Mul", "_mul")) for s in names)
    return (0.0, 1.0) if sub and mul else (127.5, 127.5)


# ----------------------------------------------------------------------------- the embedder

class FaceEmbedder:
    """An ArcFace ONNX file (``[1, 3, 112, 112]`` RGB -> ``[1, 512]``) run by ``cv2.dnn``."""

    def __init__(self, path):
        import cv2

        self.path = Path(path)
        if not self.path.is_file():
            raise EMOCheckpointError(f"face-embedding model {self.path} not found; {FIX}")
        bad = (f"{self.path.name} is not an ArcFace face-recognition model (input [1, 3, 112, 112], "
               f"output [1, 512]); use {EMBEDDING_FILES[0]} from Hallo's pretrained_models/face_analysis/models/")
        try:
            self.net = cv2.dnn.readNetFromONNX(str(self.path))
            self.mean, self.std = input_normalisation(self.path)
            outputs = self.net.getUnconnectedOutLayersNames()
            self.net.setInput(np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32))
            out = self.net.forward()
        except (cv2.error, ValueError, IndexError, StopIteration) as e:
            raise EMOCheckpointError(f"{bad}. OpenCV could not run it: {getattr(e, 'err', None) or e}") from e
        if len(outputs) != 1 or out.shape != (1, 512):
            raise EMOCheckpointError(f"{bad}. It gives {len(outputs)} output(s), the first of shape {tuple(out.shape)}")

    def embed(self, rgb, keypoints) -> np.ndarray:
        """Raw ArcFace embedding (what Hallo uses; not L2-normalised): float32 [512].

        rgb: uint8 [H, W, 3] RGB (float 0..1 and torch tensors are accepted); keypoints: [5, 2] x, y in
        ``rgb``'s pixels, insightface's order (``FaceBox.keypoints``).
        """
        import cv2
        crop = align_face(rgb, keypoints)
        self.net.setInput(cv2.dnn.blobFromImage(crop, 1.0 / self.std, (INPUT_SIZE, INPUT_SIZE),
                                                (self.mean,) * 3, swapRB=False))
        return self.net.forward().reshape(-1).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _embedder(path: str, mtime: float) -> FaceEmbedder:
    return FaceEmbedder(path)


def face_embedding(rgb, model_path, detector_path=None, face_index: int = 0,
                   threshold: float | None = None) -> np.ndarray:
    """Hallo's ``face_emb`` for a portrait: float32 [512], the raw ArcFace embedding of the largest face.

    rgb: the reference picture, uint8 [H, W, 3] RGB (float 0..1 / torch accepted). model_path: the ArcFace
    ONNX file, or a folder holding one (``find_embedding_model``). detector_path: an SCRFD / YuNet ONNX file
    or a folder; None looks beside the embedding model (Hallo keeps scrfd_10g_bnkps.onnx there). SCRFD at
    640 px is what Hallo uses; YuNet's keypoints are close but not identical. face_index: 0 = largest face
    (Hallo), 1 = the next... threshold: detection score 0..1 (None = 0.5 for SCRFD, as insightface).
    """
    model = Path(model_path)
    if model.is_dir():
        found = find_embedding_model(model)
        if found is None:
            raise EMOCheckpointError(f"no face-embedding model ({' or '.join(EMBEDDING_FILES)}) in {model}; {FIX}")
        model = found
    if not model.is_file():
        raise EMOCheckpointError(f"face-embedding model {model} not found; {FIX}")
    embedder = _embedder(str(model), model.stat().st_mtime)
    where = Path(detector_path) if detector_path is not None else model.parent
    det = where if where.is_file() else find_keypoint_detector(where)
    if det is None:
        raise EMOInputError(
            f"the face-embedding model {model.name} needs 5 face keypoints from a detector file: "
            f"{DETECTOR_FILES['scrfd'][0]} (Hallo ships it next to {EMBEDDING_FILES[0]} in "
            f"pretrained_models/face_analysis/models/) or {DETECTOR_FILES['yunet'][0]}; none found in {where}. "
            "Put one there or in ComfyUI's models/emo/face_detectors/ (CLI: --detector-file), or leave the "
            "face-embedding model empty to use Hallo's no-face fallback (zero embedding).")
    kind, det = resolve_detector("auto", det)
    faces = detect_faces(rgb, kind, det, threshold)
    if not faces:
        raise EMOInputError(f"no face found by {kind} ({det.name}) in the reference image, so there is no identity "
                            "embedding. Use a picture with a clear face, lower the detection threshold, or leave the "
                            "face-embedding model empty to use Hallo's no-face fallback (zero embedding).")
    if not 0 <= face_index < len(faces):
        raise EMOInputError(f"face_index {face_index} but {len(faces)} face(s) found (0 = largest); "
                            f"use 0..{len(faces) - 1}")
    face = faces[face_index]
    if face.keypoints is None:
        raise EMOInputError(f"{det.name} gives no face keypoints; use {DETECTOR_FILES['scrfd'][0]} "
                            f"(with keypoints, 'bnkps') or {DETECTOR_FILES['yunet'][0]}")
    return embedder.embed(rgb, face.keypoints)


__all__ = ["EMBEDDING_FILES", "ARCFACE_DST", "find_embedding_model", "find_keypoint_detector", "alignment_matrix",
           "align_face", "onnx_node_names", "input_normalisation", "FaceEmbedder", "face_embedding"]


def identity_model_folders(checkpoint=None, roots=()) -> list[Path]:
    """Where Hallo's face-analysis files may be: beside the checkpoint (Hallo's layout: pretrained_models/hallo/net.pth
    and pretrained_models/face_analysis/models/) and, for each root (e.g. ComfyUI's models/emo/), its
    face_analysis/models/, face_analysis/ and face_detectors/ folders."""
    folders = []
    if checkpoint is not None:
        c = Path(checkpoint)
        base = c.parent if c.is_file() else c
        folders += [base / "face_analysis" / "models", base.parent / "face_analysis" / "models"]
    for r in roots:
        r = Path(r)
        folders += [r / "face_analysis" / "models", r / "face_analysis", r / "face_detectors"]
    return [f for f in folders if f.is_dir()]


def identity_embedding(rgb, folders, face_index: int = 0) -> np.ndarray | None:
    """Hallo's identity embedding for `rgb` (uint8 [H, W, 3], the square reference crop, as Hallo's script takes a
    square portrait) from the first folder holding glintr100.onnx, with keypoints from an SCRFD (or YuNet) file in
    any of the folders; None when no folder holds glintr100.onnx (the caller then uses Hallo's zero embedding)."""
    model = next((m for f in folders if (m := find_embedding_model(f, names=EMBEDDING_FILES[:1]))), None)
    if model is None:
        where = f" in {', '.join(str(f) for f in folders)}" if folders else ""
        logger.info("identity: no ArcFace model (glintr100.onnx) found%s: Hallo's identity tokens use a zero "
                    "embedding (what Hallo's script does without one). For the face's own embedding, put "
                    "glintr100.onnx and scrfd_10g_bnkps.onnx (Hallo's pretrained_models/face_analysis/models/) "
                    "beside the checkpoint or in models/emo/face_analysis/", where)
        return None
    det = find_keypoint_detector(model.parent) or next(
        (d for f in folders if (d := find_keypoint_detector(f))), None)
    return face_embedding(rgb, model, det, face_index=face_index)
