"""Square face crop for the model, and paste-back into the original picture.

Artists bring 16:9 stills, half-body shots and paintings; the model works on a square,
face-centred crop at ``resolution`` (512). The flow is::

    info = find_crop(image)                        # or plan_crop(image.shape[:2], boxes, mask, whole_image)
    ref = crop(image, info)                        # uint8 [res, res, 3]: the reference for the model
    face_mask = face_region_mask(info)             # float32 [res, res]: face-locator input
    match = None
    for clip in frames_of_each_clip:               # [f, res, res, 3] uint8 or float 0..1
        match = match or fit_color_match(image, clip[0], info)   # once, from the first frame: no flicker
        out = paste_back(image, clip, info, color_match=match)  # uint8 [f, H', W', 3]
    blend = paste_mask(info)                       # float32 [H, W]: where the crop went (MASK output)

Coordinates: source pixels, ``x`` right and ``y`` down; boxes are ``x0, y0`` inclusive and
``x1, y1`` exclusive. The crop square may extend past the image border; those pixels are made
by edge replication (``pad='replicate'``) or mirroring (``'reflect'``) and are dropped again
at paste-back. ``H', W'`` are ``H, W`` rounded up to even numbers (video codecs need it) by
repeating the last row/column. Pixels outside the crop square are copied from the input
unchanged (bit-exact); inside it the generated face is blended in with a ramp of
``feather * side`` pixels along the square's edges that lie inside the picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EMOInputError
from ..media.image import to_rgb_uint8, to_uint8_frames
from .detect import BUILTIN, DEFAULT_THRESHOLD, FaceBox, detect_faces, resolve_detector

DEFAULT_MARGIN = 0.5    # crop side = face size * (1 + 2 * margin): the face is half the crop's width
DEFAULT_FEATHER = 0.1   # blend ramp, as a fraction of the crop side
FACE_EXPAND = 1.2       # face-locator box = detector box scaled by this about its centre (Hallo's face_expand_ratio)


class NoFaceError(EMOInputError):
    """No face was found and the caller did not say what to do instead. The message names the fixes."""

    def __init__(self, detector: str | None = None, threshold: float | None = None, what: str = "the image"):
        used = f" with detector '{detector}'" if detector else ""
        used += f" at threshold {threshold:g}" if threshold is not None else ""
        super().__init__(
            f"no face found in {what}{used}. Fixes: (1) give a MASK that covers the face (it replaces "
            f"detection); (2) use a stronger detector or a lower threshold: YuNet finds small, turned, painted "
            f"and drawn faces -- put face_detection_yunet_2023mar.onnx in ComfyUI's models/emo/face_detectors/ "
            f"(CLI: --detector-file FILE), see docs/faces.md; (3) choose 'whole image' to use a centred square "
            f"crop of the whole picture without a face box.")


@dataclass(frozen=True)
class CropInfo:
    """Where the model's square crop sits in the source picture (the CROP_INFO output).

    source_hw:  (H, W) of the source picture, pixels.
    box:        (x0, y0, side) of the square crop in source pixels; may lie partly outside the picture.
    resolution: side of the model's crop, pixels (crop pixel = source pixel * resolution / side).
    face_box:   (x0, y0, x1, y1) of the face in crop pixels (the whole crop in 'whole' mode).
    pad:        how crop pixels outside the picture are made: 'replicate' | 'reflect'.
    mode:       'face' (detected), 'mask' (from a MASK) or 'whole' (whole image, no face box).
    mouth:      ((x, y), (x, y)) the mouth corners in crop pixels when the detector gives keypoints (YuNet, SCRFD),
                else None; Hallo's lip region is placed on them.
    """

    source_hw: tuple[int, int]
    box: tuple[int, int, int]
    resolution: int
    face_box: tuple[float, float, float, float]
    pad: str = "replicate"
    mode: str = "face"
    mouth: tuple | None = None

    @property
    def scale(self) -> float:
        """Crop pixels per source pixel."""
        return self.resolution / self.box[2]

    @property
    def output_hw(self) -> tuple[int, int]:
        """Size of pasted-back frames: the source size rounded up to even numbers."""
        h, w = self.source_hw
        return h + h % 2, w + w % 2

    def inside(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the part of the crop square that lies inside the picture, source pixels."""
        x0, y0, side = self.box
        h, w = self.source_hw
        return max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)

    def to_crop(self, b: FaceBox) -> tuple[float, float, float, float]:
        """A box in source pixels -> crop pixels."""
        x0, y0, _ = self.box
        s = self.scale
        return (b.x0 - x0) * s, (b.y0 - y0) * s, (b.x1 - x0) * s, (b.y1 - y0) * s


def _hw(image_hw) -> tuple[int, int]:
    h, w = (int(v) for v in tuple(image_hw)[:2])
    if h < 1 or w < 1:
        raise EMOInputError(f"image size must be at least 1x1 pixels, got {h}x{w}")
    return h, w


def _mask_box(mask, hw) -> FaceBox:
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask, dtype=np.float32)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.shape != hw:
        raise EMOInputError(f"MASK is {m.shape[1] if m.ndim > 1 else '?'}x{m.shape[0]} (W x H) but the image is "
                            f"{hw[1]}x{hw[0]}: draw the mask on this image (or resize it to the image)")
    ys, xs = np.nonzero(m > 0.5)
    if not len(xs):
        raise EMOInputError("the face MASK is empty (no pixel above 0.5): paint the face white, or disconnect "
                            "the MASK to detect the face automatically")
    return FaceBox(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def plan_crop(image_hw, boxes: list[FaceBox] | FaceBox | None = None, mask=None, whole_image: bool = False,
              margin: float = DEFAULT_MARGIN, resolution: int = 512, face_index: int = 0,
              pad: str = "replicate") -> CropInfo:
    """Square crop around one face.

    image_hw: (H, W) of the source picture (``image.shape[:2]``).
    boxes:    faces in source pixels, largest first (``detect_faces``); ``face_index`` picks one (0 = largest).
    mask:     [H, W] (or [1, H, W]) float 0..1: the face region; overrides ``boxes``.
    whole_image: no face box: a centred square of side min(H, W); the face box is the whole crop.
    margin:   crop side = max(face width, face height) * (1 + 2 * margin), centred on the face.
    Raises ``NoFaceError`` when there is no box, mask or whole_image.
    """
    h, w = _hw(image_hw)
    if pad not in ("replicate", "reflect"):
        raise EMOInputError(f"pad must be 'replicate' or 'reflect', got {pad!r}")
    if int(resolution) < 8 or int(resolution) % 8:
        raise EMOInputError(f"resolution must be a multiple of 8 (e.g. 512), got {resolution}")
    if not 0 <= margin <= 4:
        raise EMOInputError(f"margin must be between 0 and 4 (face sizes added on each side), got {margin}")
    res = int(resolution)
    if mask is not None:
        face, mode = _mask_box(mask, (h, w)), "mask"
    elif whole_image:
        side = min(h, w)
        x0, y0 = (w - side) // 2, (h - side) // 2
        return CropInfo((h, w), (x0, y0, side), res, (0.0, 0.0, float(res), float(res)), pad, "whole")
    else:
        if isinstance(boxes, FaceBox):
            boxes = [boxes]
        if not boxes:
            raise NoFaceError()
        if not 0 <= face_index < len(boxes):
            raise EMOInputError(f"face_index {face_index} asks for face #{face_index + 1} but {len(boxes)} "
                                f"face(s) were found (0 = largest): use 0..{len(boxes) - 1}")
        face, mode = boxes[face_index], "face"
    size = max(face.width, face.height)
    side = max(8, int(round(size * (1 + 2 * margin))))
    cx, cy = face.center
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = res / side
    face_box = ((face.x0 - x0) * s, (face.y0 - y0) * s, (face.x1 - x0) * s, (face.y1 - y0) * s)
    mouth = None
    kps = getattr(face, "keypoints", None) if mode == "face" else None
    if kps is not None:  # insightface's 5-point order: eyes, nose tip, left and right mouth corner
        mouth = tuple((float((x - x0) * s), float((y - y0) * s)) for x, y in kps[3:5])
    return CropInfo((h, w), (x0, y0, side), res, tuple(float(v) for v in face_box), pad, mode, mouth)


def find_crop(image, mask=None, detector: str = "auto", model_path=None, threshold: float | None = None,
              face_index: int = 0, margin: float = DEFAULT_MARGIN, resolution: int = 512,
              whole_image: bool = False, pad: str = "replicate") -> CropInfo:
    """Detect (unless ``mask`` or ``whole_image`` is given) and plan the crop in one call.

    image: uint8 [H, W, 3] RGB (float 0..1 / torch accepted). Raises ``NoFaceError`` naming the
    detector and threshold used when nothing is found.
    """
    rgb = to_rgb_uint8(image, "the picture", min_side=1)
    boxes = None
    if mask is None and not whole_image:
        boxes = detect_faces(rgb, detector, model_path, threshold)
        if not boxes:
            kind, path = resolve_detector(detector, model_path)
            name = BUILTIN if kind == "lbp" else f"{kind}: {path.name}"
            raise NoFaceError(name, DEFAULT_THRESHOLD[kind] if threshold is None else threshold)
    return plan_crop(rgb.shape[:2], boxes, mask, whole_image, margin, resolution, face_index, pad)


def crop(image, info: CropInfo) -> np.ndarray:
    """The model's reference: uint8 [res, res, 3] RGB cut from ``image`` (uint8 [H, W, 3]) as ``info`` says."""
    import cv2
    rgb = to_rgb_uint8(image, "the picture", min_side=1)
    if rgb.shape[:2] != tuple(info.source_hw):
        raise EMOInputError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but the crop was planned for "
                            f"{info.source_hw[1]}x{info.source_hw[0]}: plan the crop on this image")
    x0, y0, side = info.box
    ix0, iy0, ix1, iy1 = info.inside()
    if ix1 <= ix0 or iy1 <= iy0:
        raise EMOInputError("the crop box lies entirely outside the image: check the MASK or face box")
    part = rgb[iy0:iy1, ix0:ix1]
    border = cv2.BORDER_REPLICATE if info.pad == "replicate" else cv2.BORDER_REFLECT_101
    if info.pad == "reflect" and min(part.shape[:2]) < 2:
        border = cv2.BORDER_REPLICATE
    top, left = iy0 - y0, ix0 - x0
    bottom, right = y0 + side - iy1, x0 + side - ix1
    if top or left or bottom or right:
        part = cv2.copyMakeBorder(part, top, bottom, left, right, border)
    res = info.resolution
    interp = cv2.INTER_AREA if side > res else cv2.INTER_CUBIC
    return cv2.resize(part, (res, res), interpolation=interp) if side != res else np.ascontiguousarray(part)


def face_region_mask(info: CropInfo, boxes: list[FaceBox] | None = None, expand: float = FACE_EXPAND) -> np.ndarray:
    """Face-locator input: float32 [res, res], 1 inside the face box, 0 elsewhere.

    boxes:  face boxes in source pixels, e.g. one per frame of a clip: the mask is their union
            (as EMO does over a clip); None -> the crop's own face box.
    expand: each box is scaled by this about its centre, then clipped to the crop.
    In 'whole' mode with no boxes the mask is all ones.
    """
    res = info.resolution
    rects = [info.face_box] if boxes is None else [info.to_crop(b) for b in boxes]
    m = np.zeros((res, res), np.float32)
    if boxes is None and info.mode == "whole":
        m[:] = 1
        return m
    for x0, y0, x1, y1 in rects:
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * expand / 2, (y1 - y0) * expand / 2
        a0, b0 = max(int(round(cx - hw)), 0), max(int(round(cy - hh)), 0)
        a1, b1 = min(int(round(cx + hw)), res), min(int(round(cy + hh)), res)
        if a1 > a0 and b1 > b0:
            m[b0:b1, a0:a1] = 1
    return m


def _ramp(n: int, start: int, length: int, fade_lo: bool, fade_hi: bool, f: float) -> np.ndarray:
    """1-D blend weights for source pixels start..start+length-1 of a crop edge of ``n`` pixels."""
    pos = np.arange(length, dtype=np.float32) + start + 0.5
    w = np.ones(length, np.float32)
    if f > 0:
        if fade_lo:
            w = np.minimum(w, np.clip(pos / f, 0, 1))
        if fade_hi:
            w = np.minimum(w, np.clip((n - pos) / f, 0, 1))
    return w * w * (3 - 2 * w)  # smoothstep


def _local_mask(info: CropInfo, feather: float) -> np.ndarray:
    """Blend weights float32 [iy1-iy0, ix1-ix0] over the in-picture part of the crop square."""
    if not 0 <= feather <= 0.5:
        raise EMOInputError(f"feather must be between 0 and 0.5 (fraction of the crop side), got {feather}")
    x0, y0, side = info.box
    h, w = info.source_hw
    ix0, iy0, ix1, iy1 = info.inside()
    f = feather * side
    # only edges inside the picture are faded: at the picture border there is no seam to hide
    wx = _ramp(side, ix0 - x0, ix1 - ix0, x0 > 0, x0 + side < w, f)
    wy = _ramp(side, iy0 - y0, iy1 - iy0, y0 > 0, y0 + side < h, f)
    return wy[:, None] * wx[None, :]


def paste_mask(info: CropInfo, feather: float = DEFAULT_FEATHER, even: bool = False) -> np.ndarray:
    """Where ``paste_back`` puts the generated crop: float32 [H, W] in 0..1 (``[H', W']`` with ``even``).

    0 outside the crop square (those pixels stay bit-exact), 1 in its interior, a smoothstep ramp
    of ``feather * side`` pixels along the square's edges that lie inside the picture.
    """
    h, w = info.output_hw if even else info.source_hw
    m = np.zeros((h, w), np.float32)
    ix0, iy0, ix1, iy1 = info.inside()
    m[iy0:iy1, ix0:ix1] = _local_mask(info, feather)
    if even:
        sh, sw = info.source_hw
        m[sh:] = m[sh - 1:sh]
        m[:, sw:] = m[:, sw - 1:sw]
    return m


@dataclass(frozen=True)
class ColorMatch:
    """Per-channel affine colour transfer ``out = gen * scale + shift`` (RGB, 0..255 units)."""

    scale: tuple[float, float, float]
    shift: tuple[float, float, float]

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """float32 [..., 3] 0..255 -> same, matched."""
        return frames * np.asarray(self.scale, np.float32) + np.asarray(self.shift, np.float32)


def fit_color_match(original, generated_frame, info: CropInfo, max_gain: float = 2.0) -> ColorMatch:
    """Colour transfer that maps a generated frame's per-channel mean/std onto the original crop's.

    Fit once (from the first generated frame) and reuse it for every clip, so colours do not flicker.
    Only crop pixels that lie inside the picture count. ``generated_frame``: [res, res, 3] uint8 or float.
    """
    ref = crop(original, info).astype(np.float32)
    gen = to_uint8_frames(generated_frame, "the generated frames")[0].astype(np.float32)
    res = info.resolution
    if gen.shape[:2] != (res, res):
        raise EMOInputError(f"generated frames are {gen.shape[1]}x{gen.shape[0]} but the crop is {res}x{res}")
    x0, y0, side = info.box
    ix0, iy0, ix1, iy1 = info.inside()
    s = info.scale
    a0, b0 = int(np.ceil((ix0 - x0) * s)), int(np.ceil((iy0 - y0) * s))
    a1, b1 = max(int((ix1 - x0) * s), a0 + 1), max(int((iy1 - y0) * s), b0 + 1)
    ref, gen = ref[b0:b1, a0:a1].reshape(-1, 3), gen[b0:b1, a0:a1].reshape(-1, 3)
    scale = np.clip(ref.std(0) / np.maximum(gen.std(0), 1e-3), 1 / max_gain, max_gain)
    shift = ref.mean(0) - scale * gen.mean(0)
    return ColorMatch(tuple(float(v) for v in scale), tuple(float(v) for v in shift))


def paste_back(original, frames, info: CropInfo, feather: float = DEFAULT_FEATHER,
               color_match: bool | ColorMatch = True) -> np.ndarray:
    """Generated crops back into the original picture at full size.

    original: uint8 [H, W, 3] RGB (the picture the crop was planned on).
    frames:   [f, res, res, 3] (or one [res, res, 3]) uint8 or float 0..1, numpy or torch; one clip at a time.
    color_match: True = fit from ``frames[0]`` (pass a ``ColorMatch`` from ``fit_color_match`` to keep
              colours identical across clips), False = no colour change.
    Returns uint8 [f, H', W', 3] with H', W' = H, W rounded up to even. Pixels outside the crop square
    equal ``original`` exactly.
    """
    import cv2
    rgb = to_rgb_uint8(original, "the original picture", min_side=1)
    h, w = info.source_hw
    if rgb.shape[:2] != (h, w):
        raise EMOInputError(f"original is {rgb.shape[1]}x{rgb.shape[0]} but the crop was planned for {w}x{h}: "
                            "paste back into the picture the crop was cut from")
    gen = to_uint8_frames(frames, "the generated frames")
    res = info.resolution
    if gen.shape[1:3] != (res, res):
        raise EMOInputError(f"generated frames are {gen.shape[2]}x{gen.shape[1]} but the crop is {res}x{res}: "
                            "render at the crop's resolution")
    if color_match is True:
        color_match = fit_color_match(rgb, gen[0], info)
    x0, y0, side = info.box
    ix0, iy0, ix1, iy1 = info.inside()
    m = _local_mask(info, feather)[..., None]
    base = rgb[iy0:iy1, ix0:ix1].astype(np.float32)
    interp = cv2.INTER_AREA if side < res else cv2.INTER_CUBIC
    oh, ow = info.output_hw
    out = np.empty((len(gen), oh, ow, 3), np.uint8)
    for i, g in enumerate(gen):
        big = g if side == res else cv2.resize(g, (side, side), interpolation=interp)
        part = big[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0].astype(np.float32)
        if color_match:
            part = color_match.apply(part)
        blended = np.clip(np.rint(base + m * (part - base)), 0, 255).astype(np.uint8)
        o = out[i]
        o[:h, :w] = rgb
        o[iy0:iy1, ix0:ix1] = np.where(m > 0, blended, rgb[iy0:iy1, ix0:ix1])
        if oh > h:
            o[h:] = o[h - 1:h]
        if ow > w:
            o[:, w:] = o[:, w - 1:w]
    return out


__all__ = ["CropInfo", "ColorMatch", "NoFaceError", "plan_crop", "find_crop", "crop", "face_region_mask",
           "paste_mask", "paste_back", "fit_color_match", "DEFAULT_MARGIN", "DEFAULT_FEATHER", "FACE_EXPAND"]
