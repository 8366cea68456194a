"""Images in: any picture Pillow reads, or an array/tensor from elsewhere -> uint8 RGB `[H, W, 3]`.

Transparency is composited over white; grayscale, palette, CMYK and 16-bit pictures are converted.
"""

import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import EMOInputError

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
        raise EMOInputError(f"{path} could not be read as an image ({e}): use {IMAGE_FORMATS}") from None
    return to_rgb_uint8(array, name=path)


def to_rgb_uint8(array, name: str = "the image") -> np.ndarray:
    """Array or tensor `[H, W]`, `[H, W, 1|2|3|4]` (or `[1, H, W, C]`), uint8, uint16, or float in 0..1
    -> uint8 RGB `[H, W, 3]`. Alpha is composited over white. `name` is used in error messages."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        array = array.float().numpy() if array.is_floating_point() else array.numpy()
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise EMOInputError(
            f"{name} has shape {list(array.shape)}; expected one picture [H, W, 3] (or [H, W], [H, W, 4]): "
            "pass a single RGB image")
    if array.dtype == np.bool_:
        x = array.astype(np.float32)
    elif array.dtype == np.uint8:
        x = array.astype(np.float32) / 255
    elif array.dtype == np.uint16:
        x = array.astype(np.float32) / 65535
    elif np.issubdtype(array.dtype, np.floating):
        x = array.astype(np.float32)
        if not np.isfinite(x).all():
            raise EMOInputError(f"{name} contains NaN or infinite values: check the node that made it")
        if x.max(initial=0) > 1.5:
            raise EMOInputError(
                f"{name} is a float image with values up to {x.max():.1f}; floats must be in 0..1: divide by 255")
        x = x.clip(0, 1)
    elif np.issubdtype(array.dtype, np.integer):
        hi = array.max(initial=0)
        if array.min(initial=0) < 0 or hi > 65535:
            raise EMOInputError(f"{name} has integer values outside 0..65535: save it as an 8- or 16-bit picture")
        x = array.astype(np.float32) / (255 if hi <= 255 else 65535)
    else:
        raise EMOInputError(f"{name} has pixel type {array.dtype}; use uint8, uint16 or float 0..1")
    h, w = x.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise EMOInputError(
            f"{name} is {w}×{h} px; EMO needs at least {MIN_SIDE} px on each side: use a larger picture")
    if x.shape[2] in (2, 4):  # composite over white
        alpha = x[..., -1:]
        x = x[..., :-1] * alpha + (1 - alpha)
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    return np.ascontiguousarray(np.rint(x * 255), dtype=np.uint8)


def example_portrait() -> np.ndarray:
    """The astronaut Eileen Collins (NASA, public domain) shipped with scikit-image -> uint8 `[512, 512, 3]`."""
    from skimage.data import astronaut
    import cv2

    image = astronaut()
    if image.shape[:2] != (512, 512):
        image = cv2.resize(image, (512, 512), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)
