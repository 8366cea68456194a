"""Images in: any picture Pillow reads, or an array/tensor from elsewhere -> uint8 RGB `[H, W, 3]`.

Transparency is composited over white; grayscale, palette, CMYK and 16-bit pictures are converted.
`to_uint8_frames` holds the pack's one pixel rule (floats are ComfyUI's 0..1); every module converts through it.
"""

import logging
import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import EMOInputError

logger = logging.getLogger(__name__)

MIN_SIDE = 64  # px, the smallest picture EMO accepts on each side
IMAGE_FORMATS = "png, jpg, webp, bmp or tiff"


def load_image(path) -> np.ndarray:
    """Read a picture (EXIF orientation applied) -> uint8 RGB `[H, W, 3]`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EMOInputError(f"image file not found: {path}: check the path ({IMAGE_FORMATS})")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            elif img.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
                img = img.convert("RGBA" if img.mode in ("PA", "RGBa", "La") else "RGB")
            array = np.array(img)
            if img.mode == "F":  # 32-bit float TIFF: 0..255 or 0..1
                array = array / 255 if array.max(initial=0) > 1.5 else array
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise EMOInputError(f"{path} could not be read as an image ({e}): use {IMAGE_FORMATS}") from e
    return to_rgb_uint8(array, name=path)


def to_rgb_uint8(array, name: str = "the image", min_side: int = MIN_SIDE) -> np.ndarray:
    """One picture -> uint8 RGB `[H, W, 3]` by the pixel rules of `to_uint8_frames` (`[H, W]`, `[H, W, 1|2|3|4]`
    or ComfyUI's `[1, H, W, C]`). Each side must be at least `min_side` px. `name` is used in error messages."""
    array = _as_array(array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise EMOInputError(
            f"{name} has shape {list(array.shape)}; expected one picture [H, W, 3] (or [H, W], [H, W, 4]): "
            "pass a single RGB image")
    h, w = array.shape[:2]
    if min(h, w) < max(1, min_side):
        raise EMOInputError(
            f"{name} is {w}×{h} px; EMO needs at least {max(1, min_side)} px on each side: use a larger picture")
    return _pixels_to_uint8(array, name)


def to_uint8_frames(frames, name: str = "the frames") -> np.ndarray:
    """Frames `[f, H, W, C]` (or one `[H, W, C]`), C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA); numpy or
    torch -> uint8 numpy RGB `[f, H, W, 3]`. The one pixel rule of the pack:

    * uint8 is kept (no copy for contiguous RGB); uint16 is divided by 257; bool is 0 / 255; other integers must lie
      in 0..255 (or 0..65535, then read as 16-bit).
    * float is ComfyUI's IMAGE range 0..1. Values within `FLOAT_SLACK` outside it (resampling overshoot) are clipped;
      further out is an error (0..255 floats: divide by 255; -1..1 floats: x / 2 + 0.5), as are NaN and inf.
    * alpha is composited over white; gray is repeated into R, G and B.
    """
    a = _as_array(frames)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] not in (1, 2, 3, 4):
        raise EMOInputError(
            f"{name} have shape {list(a.shape)}; expected [frames, H, W, 3] (RGB; 1, 2 or 4 channels also work)")
    return _pixels_to_uint8(a, name)


FLOAT_SLACK = 0.5  # how far outside 0..1 a float picture may stray (and is clipped) before it is refused


_said: set[str] = set()


def _say_once(key: str, message: str):
    """Log a fallback once per process (per `key`), not once per frame."""
    if key not in _said:
        _said.add(key)
        logger.warning(message)


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float().numpy() if x.is_floating_point() and x.dtype != torch.float32 else x.numpy()
    return np.asarray(x)


def _pixels_to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    """`[..., C]` pixels (C = 1..4) -> uint8 `[..., 3]` by the rules of `to_uint8_frames`."""
    if a.dtype == np.uint8 and a.shape[-1] == 3:
        return np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(a.dtype, np.floating):
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise EMOInputError(f"{name} contains NaN or infinite values: check the node that made it")
        if hi > 1 + FLOAT_SLACK:
            raise EMOInputError(
                f"{name} is a float image with values up to {hi:.1f}; floats must be in 0..1: divide by 255")
        if lo < -FLOAT_SLACK:
            raise EMOInputError(
                f"{name} is a float image with values down to {lo:.2f}; floats must be in 0..1: for -1..1 "
                "images use x / 2 + 0.5")
        if hi > 1 + 1 / 255 or lo < -1 / 255:
            _say_once("clip", f"{name}: float pixels outside 0..1 (from {lo:.3f} to {hi:.3f}) were clipped to "
                              "0..1 (said once)")
        a = np.clip(a, 0, 1).astype(np.float32, copy=False)
        if a.shape[-1] == 3:
            return np.rint(a * 255).astype(np.uint8)
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / 65535
    elif np.issubdtype(a.dtype, np.integer):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise EMOInputError(f"{name} has integer values outside 0..65535: save it as an 8- or 16-bit picture")
        a = a.astype(np.float32) / (255 if hi <= 255 else 65535)
    else:
        raise EMOInputError(f"{name} has pixel type {a.dtype}; use uint8, uint16 or float 0..1")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255
    if a.shape[-1] in (2, 4):  # composite over white
        alpha = a[..., -1:]
        a = a[..., :-1] * alpha + (1 - alpha)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.rint(a * 255).astype(np.uint8)


def example_portrait() -> np.ndarray:
    """The astronaut Eileen Collins (NASA, public domain) shipped with scikit-image -> uint8 `[512, 512, 3]`."""
    from skimage.data import astronaut
    import cv2

    image = astronaut()
    if image.shape[:2] != (512, 512):
        image = cv2.resize(image, (512, 512), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)
