"""The reference: one picture -> the face crop -> what the sampler needs of it (`EncodedReference`).

`prepare_reference` is the one path from a picture to an encoded reference, for the command line (`render`) and the
EMO Reference Encode node: face crop, Hallo's identity embedding, then `encode_reference`, which resizes the crop,
encodes it with the VAE and prepares the face locator's input and Hallo's region masks.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import EMOInputError
from ..faces.pose import pose_frames_uint8
from ..faces.crop import DEFAULT_MARGIN, CropInfo, crop, face_region_mask, find_crop
from ..faces.embedding import face_embedding, identity_embedding, identity_model_folders
from ..faces.region_masks import region_masks
from .vae import VAECodec

logger = logging.getLogger(__name__)


@dataclass
class EncodedReference:
    """What the sampler needs of the reference crop, on the CPU (no model state: any model of the same kind can
    sample it). latent: (1 4 h w) VAE-scaled; locator_mask: the face locator's input,
    (1 c 1 H W) float 0..1 (the face region) or (1 c L H W) uint8 0..255 (one pose drawing per video frame);
    masks: Hallo's region masks (full, face, lip) x 4 levels [1, hw], or None; identity_embedding: [1, 512] face
    embedding for Hallo's identity tokens, or None (the zero embedding); pixels: the crop at the model's size,
    (1 3 H W) float -1..1, what `latent` encodes (Hallo2's first clip masks these pixels for its motion frames), or
    None."""
    latent: torch.Tensor
    locator_mask: torch.Tensor
    masks: list | None = None
    identity_embedding: torch.Tensor | None = None
    pixels: torch.Tensor | None = None


@dataclass
class PreparedReference:
    reference: EncodedReference
    crop: CropInfo            # where the crop sits in the picture (for paste-back)
    face: np.ndarray          # the crop, uint8 [res, res, 3]
    picture: np.ndarray | None = None  # framing "whole": the picture at the model's size (the crop plan's picture)


_STRETCH_SAID = []


def whole_frame(picture: np.ndarray, res: int) -> np.ndarray:
    """EchoMimic v2's reference (infer.py: `Image.open(...).resize((W, H))`): the whole picture, uint8 [H, W, 3],
    resized to the model's square size uint8 [res, res, 3] (aspect ratio not kept, as the original; cv2 INTER_AREA
    when shrinking, bicubic when enlarging)."""
    import cv2
    rgb = np.ascontiguousarray(picture)
    h, w = rgb.shape[:2]
    if h != w and not _STRETCH_SAID:
        _STRETCH_SAID.append(True)
        logger.warning("the reference picture is %dx%d: EchoMimic v2 generates the whole frame at %dx%d, so it is "
                       "stretched to a square as EchoMimic v2's own script does; crop it to a square first to keep "
                       "its proportions", w, h, res, res)
    if (h, w) == (res, res):
        return rgb
    return cv2.resize(rgb, (res, res), interpolation=cv2.INTER_AREA if min(h, w) > res else cv2.INTER_CUBIC)


def prepare_reference(model, picture: np.ndarray, *, face_mask=None, detector: str = "auto", detector_file=None,
                      face_index: int = 0, margin: float = DEFAULT_MARGIN, whole_image: bool | None = None,
                      identity="auto", identity_roots=(), pose_frames=None) -> PreparedReference:
    """picture: uint8 [H, W, 3] RGB -> the encoded reference, the crop plan and the crop.

    face_mask: [H, W] 0..1 marking the face region (replaces detection); detector / detector_file / face_index /
    margin / whole_image: see `faces.crop.find_crop`; whole_image None = the model's choice (`whole_framing`: True
    for a model trained on whole-frame data, said once in the log), True / False = as told. identity (Hallo models;
    others ignore it): "auto" = ArcFace embedding when glintr100.onnx is beside the checkpoint or under
    `identity_roots`, else Hallo's no-face fallback (zero embedding); "zero" = always the fallback; or a folder /
    .onnx path. pose_frames: [L, H, W, 3] drawings
    (float 0..1 or uint8) for EchoMimic's pose models, one per video frame.
    A model whose framing is "whole" (EchoMimic v2) ignores detection, face_mask, margin and whole_image: the whole
    picture resized to the model's size is the reference, and the output frame (`PreparedReference.picture`; the crop
    plan covers all of it, so pasting back changes nothing).
    Raises: EMOInputError for a picture, mask or pose frames the model cannot use."""
    if model.config.framing == "whole":
        from ..media.image import to_rgb_uint8
        frame = whole_frame(to_rgb_uint8(picture, "the picture", min_side=1), model.config.resolution)
        info = find_crop(frame, whole_image=True, resolution=model.config.resolution)
        ref = encode_reference(model, torch.from_numpy(frame).float() / 255, face_region_mask(info), None,
                               pose_frames, None)
        return PreparedReference(ref, info, frame, frame)
    whole_image = whole_framing(model, whole_image, face_mask)
    info = find_crop(picture, mask=face_mask, detector=detector, model_path=detector_file, face_index=face_index,
                     margin=margin, resolution=model.config.resolution, whole_image=whole_image)
    face = crop(picture, info)
    emb = reference_identity(model, face, identity, identity_roots)
    ref = encode_reference(model, torch.from_numpy(face).float() / 255, face_region_mask(info), emb, pose_frames,
                           info.mouth)
    return PreparedReference(ref, info, face)


def whole_framing(model, whole_image: bool | None, face_mask=None) -> bool:
    """Whether the picture is framed whole (centred square, no face detection). whole_image True / False: as the user
    said; None: a given face_mask decides (no), else the model: True when it was trained on whole-frame data
    (`config.whole_frame`, `prepare-data --whole-frame`), said once in the log."""
    if whole_image is not None:
        return bool(whole_image)
    if face_mask is not None or not getattr(model.config, "whole_frame", False):
        return False
    logger.info("this model was trained on whole-frame data (prepare-data --whole-frame): the whole picture (its "
                "centred square) is animated without face detection. To detect the face instead: render "
                "--no-whole-image, or pick a detector in EMO Reference Encode")
    return True


def reference_identity(model, face: np.ndarray, identity="auto", identity_roots=()) -> np.ndarray | None:
    """Hallo's identity embedding [512] of the crop `face` (uint8 [res, res, 3]), or None (the zero embedding):
    see `prepare_reference`'s `identity`. None for models without identity tokens."""
    if model.identity_projection is None or identity == "zero":
        return None
    if identity != "auto":
        return face_embedding(face, Path(identity))
    # None: no glintr100.onnx found (said once by identity_embedding): Hallo's zero embedding
    return identity_embedding(face, identity_model_folders(model.sources.get("checkpoint"), identity_roots))


@torch.no_grad()
def encode_reference(model, image, face_mask, identity_embedding=None, locator_frames=None,
                     mouth=None) -> EncodedReference:
    """image: [H, W, 3] float 0..1 (the square face crop; resized to the model's resolution if needed);
    face_mask: [H, W] 0..1, the face-region box (union over the clip). identity_embedding: [512] face embedding for
    Hallo's identity tokens, or None. locator_frames: [L, H, W, 3] float 0..1 or uint8, one drawing per video frame
    for a face locator driven by pose images (EchoMimic's `_pose` sets; `faces.pose.load_pose_frames` reads them);
    frame i drives video frame i. mouth: ((x, y), (x, y)) mouth corners in `face_mask` pixels (`CropInfo.mouth`),
    to place Hallo's lip region.
    Raises: EMOInputError for inputs of the wrong shape, an empty mask, or pose frames the model does not take."""
    cfg = model.config
    res = cfg.resolution
    _check_locator_kind(cfg, locator_frames)
    img = _reference_pixels(image, res)
    mask = _tensor(face_mask)
    scale = res / mask.shape[-1]  # face-mask pixels -> model pixels
    if mask.ndim != 2:
        raise EMOInputError(f"the face mask must be [H, W], got shape {tuple(mask.shape)}")
    if mask.max() <= 0:
        raise EMOInputError("the face mask is empty: give a MASK that covers the face, or let detection find it")
    mask = (F.interpolate(mask[None, None], size=(res, res), mode="bilinear", align_corners=False) > 0.5).float()
    latent = VAECodec(model).encode(img)
    locator = _locator_input(mask, model.face_locator.in_channels, locator_frames, res)
    masks = _region_masks(cfg, mask, scale, mouth)
    emb = None if identity_embedding is None else torch.as_tensor(identity_embedding, dtype=torch.float32).reshape(1, -1)
    return EncodedReference(latent.cpu(), locator, masks, emb, img.cpu())


def _tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)


def _check_locator_kind(cfg, locator_frames) -> None:
    pose = cfg.locator_input == "pose"
    if pose and locator_frames is None:
        raise EMOInputError("this is EchoMimic's pose-driven model: it needs pose frames (EchoMimic's pose folder "
                            "of per-frame landmark .pkl files, or a video / IMAGE batch of drawn landmarks). Give "
                            "them, or load the audio-driven files (denoising_unet.pth ...) instead")
    if not pose and locator_frames is not None:
        raise EMOInputError("pose frames were given, but this model's face locator takes the face box, not pose "
                            "drawings: remove them, or load EchoMimic's _pose files")


def _reference_pixels(image, res: int) -> torch.Tensor:
    """[H, W, 3] 0..1 (or 0..255, said once in the log) -> (1 3 res res) in -1..1."""
    image = _tensor(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise EMOInputError(f"the reference must be an RGB image [H, W, 3], got shape {tuple(image.shape)}")
    if image.max() > 1.5:
        logger.warning("the reference picture has values up to %.0f: read as 0..255 and divided by 255 (give "
                       "0..1 floats to avoid this guess)", float(image.max()))
        image = image / 255.0
    return F.interpolate(rearrange(image, "h w c -> 1 c h w"), size=(res, res), mode="bilinear", antialias=True,
                         align_corners=False) * 2 - 1


def _locator_input(mask: torch.Tensor, channels: int, locator_frames, res: int) -> torch.Tensor:
    """The face locator's input: the face mask (1 1 res res) as (1 c 1 res res) float, or the pose drawings as
    (1 3 L res res) uint8 on the CPU (0.75 MB a frame at 512², made float per window)."""
    if locator_frames is None:
        return mask.expand(1, channels, res, res)[:, :, None]
    return rearrange(pose_frames_uint8(locator_frames, res), "l h w c -> 1 c l h w")


def _region_masks(cfg, mask: torch.Tensor, scale: float, mouth) -> list | None:
    """Hallo's region masks from the face mask (1 1 res res) and the mouth corners (scaled by `scale` from
    face-mask pixels to model pixels), or None for models without regions."""
    if not (cfg.audio_attention and cfg.audio_attention.get("regions")):
        return None
    corners = None if mouth is None else tuple((x * scale, y * scale) for x, y in mouth)
    return region_masks(mask[0, 0].numpy(), cfg.latent_size, corners)
