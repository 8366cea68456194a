"""Paste Back: generated face-crop frames -> full-size frames of the original picture, blended in."""
import numpy as np
import torch

from ..emo_model.faces import crop as face_crop
from ..emo_model.errors import EMOInputError
from ..emo_model.media.image import to_rgb_uint8
from .comfy_bridge import CATEGORY, EmoCropInfo, io, model_management

CHUNK = 32  # frames pasted at a time (bounds the float working memory)


class EMOPasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMOPasteBack",
            display_name="EMO Paste Back",
            category=CATEGORY,
            description="Puts the generated face frames back into the original picture at its full size (rounded "
                        "up to even numbers for video), with a feathered edge and colours matched to the "
                        "original. Put face restorers or upscalers before this node, frame interpolators after it.",
            inputs=[
                io.Image.Input("frames", tooltip="Face-crop frames IMAGE [frames, S, S, 3] from EMO Sampler "
                                                 "(optionally restored or upscaled: any square size)."),
                EmoCropInfo.Input("crop_info", tooltip="From EMO Reference Encode: where the crop came from."),
                io.Float.Input("feather", default=face_crop.DEFAULT_FEATHER, min=0.0, max=0.5, step=0.01,
                               tooltip="Width of the blend along the crop's edges, as a fraction of its side."),
                io.Boolean.Input("color_match", default=True,
                                 tooltip="Match the generated face's colours to the original picture (fitted "
                                         "once on the first frame, so colours do not flicker)."),
                io.Image.Input("background", optional=True,
                               tooltip="Optional pictures to paste into instead of the reference picture, same size "
                                       "as it (e.g. the frames of the source video). Used frame by frame; the last "
                                       "one repeats."),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="Full-size frames IMAGE [frames, H, W, 3].")],
        )

    @classmethod
    def execute(cls, frames, crop_info, feather, color_match, background=None):
        if frames is None or frames.ndim != 4 or frames.shape[0] == 0:
            raise EMOInputError("Paste Back: expected IMAGE frames [frames, H, W, 3]")
        info, original = crop_info.crop, crop_info.image
        frames = frames[..., :3].float().cpu()
        res = info.resolution
        if frames.shape[1] != frames.shape[2]:
            raise EMOInputError(f"Paste Back: frames are {frames.shape[2]}×{frames.shape[1]} px; they must be the "
                                "square face crop (resize them back to a square before pasting)")
        if frames.shape[1] != res:  # a face restorer / upscaler changed the size: back to the crop's grid
            frames = torch.nn.functional.interpolate(frames.movedim(-1, 1), size=(res, res), mode="bicubic",
                                                     antialias=True, align_corners=False).movedim(1, -1).clamp(0, 1)
        if background is not None and tuple(background.shape[1:3]) != tuple(original.shape[:2]):
            raise EMOInputError(f"Paste Back: background is {background.shape[2]}×{background.shape[1]} px but the "
                                f"reference picture is {original.shape[1]}×{original.shape[0]} px: use pictures "
                                "of the reference's size")
        match = face_crop.fit_color_match(original, frames[0], info) if color_match else False
        out = []
        for start in range(0, frames.shape[0], CHUNK):
            clip = frames[start:start + CHUNK]
            if background is None:
                out.append(face_crop.paste_back(original, clip, info, feather=feather, color_match=match))
                continue
            for i, frame in enumerate(clip, start):
                base = to_rgb_uint8(background[min(i, background.shape[0] - 1)], "the background", min_side=1)
                out.append(face_crop.paste_back(base, frame[None], info, feather=feather, color_match=match))
        result = torch.from_numpy(np.concatenate(out)).float() / 255.0
        return io.NodeOutput(result.to(model_management.intermediate_device()))
