"""Paste Back: generated face-crop frames -> full-size frames of the original picture, blended in."""
import contextlib

import numpy as np
import torch

from ..emo_model.faces import crop as face_crop
from ..emo_model.errors import EMOInputError
from ..emo_model.media.image import to_rgb_uint8
from .comfy_bridge import CATEGORY, EmoCropInfo, io, model_management
from .streaming import TempVideo, output_linked, placeholder_image, video_batches, video_frame_rate

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
                io.Image.Input("frames", optional=True,
                               tooltip="Face-crop frames IMAGE [frames, S, S, 3] from EMO Sampler (optionally "
                                       "restored or upscaled: any square size). Connect this or `video`."),
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
                io.Video.Input("video", optional=True,
                               tooltip="The face-crop frames as a VIDEO (EMO Sampler's `video` output): read batch by "
                                       "batch, for tracks of any length. Connect this or `frames`."),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="Full-size frames IMAGE [frames, H, W, 3]."),
                     io.Video.Output(display_name="video",
                                     tooltip="The full-size frames as a VIDEO streamed to a lossless file in "
                                             "ComfyUI's temp folder (RAM stays flat): connect it to EMO Video "
                                             "Combine's `video` input. When only this output is connected, no "
                                             "IMAGE batch is kept.")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, crop_info, feather, color_match, frames=None, background=None, video=None):
        if (frames is None) == (video is None):
            raise EMOInputError("Paste Back: connect either `frames` (IMAGE) or `video` (VIDEO, for long tracks), "
                                "not both and not neither")
        if frames is not None and (frames.ndim != 4 or frames.shape[0] == 0):
            raise EMOInputError("Paste Back: expected IMAGE frames [frames, H, W, 3]")
        info, original = crop_info.crop, crop_info.image
        if background is not None and tuple(background.shape[1:3]) != tuple(original.shape[:2]):
            raise EMOInputError(f"Paste Back: background is {background.shape[2]}×{background.shape[1]} px but the "
                                f"reference picture is {original.shape[1]}×{original.shape[0]} px: use pictures "
                                "of the reference's size")
        hidden = cls.hidden
        prompt, node_id = (hidden.prompt, hidden.unique_id) if hidden is not None else (None, None)
        want_images = output_linked(prompt, node_id, 0)
        want_video = prompt is not None and output_linked(prompt, node_id, 1)
        source = video_batches(video) if video is not None else (
            frames[start:start + CHUNK] for start in range(0, frames.shape[0], CHUNK))
        fps = video_frame_rate(video) if video is not None else 25
        out, match, done = [], None, 0
        with contextlib.ExitStack() as stack:
            stream = stack.enter_context(TempVideo(fps, "paste_back")) if want_video else None
            for clip in source:
                model_management.throw_exception_if_processing_interrupted()
                clip = _to_crop_grid(clip, info.resolution)
                if match is None:
                    match = face_crop.fit_color_match(original, clip[0], info) if color_match else False
                pasted = _paste(original, clip, info, feather, match, background, done)
                if stream is not None:
                    stream.write(pasted)
                if want_images:
                    out.append(pasted)
                done += clip.shape[0]
        result = (torch.from_numpy(np.concatenate(out)).float() / 255.0).to(model_management.intermediate_device()) \
            if out else placeholder_image()
        return io.NodeOutput(result, stream.video if stream is not None else None)


def _to_crop_grid(clip: torch.Tensor, res: int) -> torch.Tensor:
    """IMAGE batch `[n, S, S, 3]` -> float `[n, res, res, 3]` on the crop's grid (a restorer may have resized it)."""
    clip = clip[..., :3].float().cpu()
    if clip.shape[1] != clip.shape[2]:
        raise EMOInputError(f"Paste Back: frames are {clip.shape[2]}×{clip.shape[1]} px; they must be the "
                            "square face crop (resize them back to a square before pasting)")
    if clip.shape[1] != res:
        clip = torch.nn.functional.interpolate(clip.movedim(-1, 1), size=(res, res), mode="bicubic",
                                               antialias=True, align_corners=False).movedim(1, -1).clamp(0, 1)
    return clip


def _paste(original, clip, info, feather, match, background, first: int) -> np.ndarray:
    """Paste `clip` (frames `first`.. of the video) into the picture, or into the background frames: uint8 `[n, H, W, 3]`."""
    if background is None:
        return face_crop.paste_back(original, clip, info, feather=feather, color_match=match)
    out = []
    for i, frame in enumerate(clip, first):
        base = to_rgb_uint8(background[min(i, background.shape[0] - 1)], "the background", min_side=1)
        out.append(face_crop.paste_back(base, frame[None], info, feather=feather, color_match=match))
    return np.concatenate(out)
