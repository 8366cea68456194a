"""Reference Encode: IMAGE (one frame of a batch) -> face crop -> encoded reference + where the crop sits."""
from dataclasses import dataclass

import numpy as np
import torch

from ..emo_model.faces import crop as face_crop
from ..emo_model.faces import detect as face_detect
from ..emo_model.faces.pose import pose_frames_from_images
from ..emo_model.sampling.reference import prepare_reference
from ..emo_model.media.image import to_rgb_uint8
from .comfy_bridge import (CATEGORY, EmoCropInfo, EmoModel, EmoReference, detector_folders, emo_roots, first_image,
                           io)

WHOLE_IMAGE = "whole image (no crop)"
AUTO = "auto"
ZERO_IDENTITY = "zero embedding"


@dataclass
class CropPlacement:
    """EMO_CROP_INFO socket: the crop plan (`face_crop.CropInfo`) and the picture it was cut from
    (`image` uint8 `[H, W, 3]`), so EMO Paste Back needs no second wire."""
    crop: face_crop.CropInfo
    image: np.ndarray


def detector_options() -> list[str]:
    labels = []
    for folder in detector_folders():
        for label in face_detect.available_detectors(folder)[1:]:
            if label not in labels:
                labels.append(label)
    return [AUTO, face_detect.BUILTIN, *labels, WHOLE_IMAGE]


def _detector_folder(detector: str) -> str | None:
    """The face_detectors folder holding the file a dropdown label names ('auto': the first with a file)."""
    for folder in detector_folders():
        found = face_detect.available_detectors(folder)[1:]
        if (detector == AUTO and found) or detector in found:
            return folder
    return None


def _whole_image(detector: str, mask) -> bool | None:
    """'whole image': yes; 'auto' without a mask: the model decides (a whole-frame model: yes); a named detector or
    a mask: no."""
    if mask is not None:
        return False
    if detector == WHOLE_IMAGE:
        return True
    return None if detector == AUTO else False


class EMOReferenceEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMOReferenceEncode",
            display_name="EMO Reference Encode",
            category=CATEGORY,
            description="Finds the face in the reference picture, cuts a square crop around it at the model's "
                        "resolution and encodes it for the EMO Sampler. A batch (e.g. frames of a video) is "
                        "allowed: frame_index picks one. Outputs where the crop sits, for EMO Paste Back.",
            inputs=[
                EmoModel.Input("emo_model", tooltip="From Load EMO Models."),
                io.Image.Input("image", tooltip="The portrait (IMAGE). A batch is allowed: frame_index picks one."),
                io.Int.Input("frame_index", default=0, min=-100000, max=100000,
                             tooltip="Which picture of the batch to use: 0 = first, -1 = last."),
                io.Combo.Input("detector", options=detector_options(), default=AUTO,
                               tooltip="Face detector. auto: a YuNet/SCRFD file from models/emo/face_detectors/ "
                                       "when there is one, else the built-in LBP cascade; for a model trained on "
                                       "whole-frame data (prepare-data --whole-frame) auto means 'whole image' "
                                       "(pick a detector to detect the face anyway). 'whole image': no "
                                       "detection, the picture (centre square) is the face crop."),
                io.Int.Input("face_index", default=0, min=0, max=63,
                             tooltip="Which face when there are several: 0 = the largest, 1 = the next, ..."),
                io.Float.Input("margin", default=face_crop.DEFAULT_MARGIN, min=0.0, max=3.0, step=0.05, round=0.01,
                               tooltip="Room around the face on each side, in face sizes: crop side = face "
                                       "size x (1 + 2 x margin). More leaves space for head motion."),
                io.Mask.Input("face_mask", optional=True,
                              tooltip="Optional MASK marking the face region (where the face may move). When "
                                      "given it replaces detection."),
                io.Combo.Input("identity", options=[AUTO, ZERO_IDENTITY], default=AUTO, optional=True,
                               tooltip="Hallo models only (others ignore it): the identity tokens. auto: from the "
                                       "face's ArcFace embedding when glintr100.onnx and scrfd_10g_bnkps.onnx (Hallo's "
                                       "pretrained_models/face_analysis/models/, non-commercial licence) are in "
                                       "models/emo/face_analysis/ or beside Hallo's checkpoint; without them, what "
                                       "Hallo's own script does when it has no face embedding: a zero embedding. "
                                       "zero embedding: always that fallback."),
                io.Image.Input("pose_frames", optional=True,
                               tooltip="EchoMimic _pose models and EchoMimic v2 only: one drawn pose frame per video "
                                       "frame (face landmarks; v2: hands) (EMO Load Pose reads their pose folders; a "
                                       "video of drawings works too). At least as many frames as the audio gives; "
                                       "extra ones are ignored. EchoMimic v2 generates the whole picture (resized to "
                                       "768x768): detector, margin and face_mask do not apply to it."),
            ],
            outputs=[
                EmoReference.Output(display_name="reference", tooltip="The encoded face for the EMO Sampler."),
                EmoCropInfo.Output(display_name="crop_info", tooltip="Where the crop sits in the picture: "
                                                                     "connect to EMO Paste Back."),
                io.Image.Output(display_name="face_crop", tooltip="The square crop that was encoded (to check).")
            ],
        )

    @classmethod
    def execute(cls, emo_model, image, frame_index, detector, face_index, margin, face_mask=None, identity=AUTO,
                pose_frames=None):
        picture = to_rgb_uint8(first_image(image, frame_index, "Reference Encode"), "the reference image",
                               min_side=1)  # uint8 [H, W, 3]
        mask = None
        if face_mask is not None:  # MASK [B, H, W]: the same frame as the image when the batches match
            mask = face_mask[frame_index] if face_mask.ndim == 3 and face_mask.shape[0] == image.shape[0] else face_mask
            mask = mask.reshape(mask.shape[-2:]).float().cpu().numpy()
        res = emo_model.model.config.resolution
        frames = None
        if pose_frames is not None:
            frames = pose_frames_from_images(pose_frames.cpu(), res, name="pose_frames")
        emo_model.to_compute_device()
        prepared = prepare_reference(
            emo_model.model, picture, face_mask=mask, detector=AUTO if detector == WHOLE_IMAGE else detector,
            detector_file=_detector_folder(detector), face_index=face_index, margin=margin,
            whole_image=_whole_image(detector, mask), identity="zero" if identity == ZERO_IDENTITY else "auto",
            identity_roots=emo_roots(), pose_frames=frames)
        reference, crop = prepared.reference, torch.from_numpy(prepared.face).float() / 255.0  # [res, res, 3]
        info = prepared.crop
        if prepared.picture is not None:  # EchoMimic v2: the whole picture at the model's size is the frame
            picture = prepared.picture
        return io.NodeOutput(reference, CropPlacement(info, picture), crop[None])
