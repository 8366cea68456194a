"""Stand-ins for the core ComfyUI nodes the shipped workflows use: LoadImage, LoadAudio (V1 classes, as in
ComfyUI 0.3.64), LoadVideo and GetVideoComponents (V3), ImageScaleBy (V1). Same ids, inputs and outputs as core; the
decoding is PyAV/Pillow like core's (LoadAudio keeps the file's own sample rate and channels)."""
import os

import av
import numpy as np
import torch
from PIL import Image, ImageOps

import folder_paths
from comfy_api.latest import InputImpl, io


class LoadImage:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        d = folder_paths.get_input_directory()
        files = folder_paths.filter_files_content_types(sorted(os.listdir(d)), ["image"])
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image):
        img = ImageOps.exif_transpose(Image.open(folder_paths.get_annotated_filepath(image)))
        rgb = torch.from_numpy(np.array(img.convert("RGB")).astype(np.float32) / 255.0)[None]
        if "A" in img.getbands():
            mask = 1.0 - torch.from_numpy(np.array(img.getchannel("A")).astype(np.float32) / 255.0)
        else:
            mask = torch.zeros((64, 64), dtype=torch.float32)
        return rgb, mask[None]


class LoadAudio:
    CATEGORY = "audio"
    RETURN_TYPES = ("AUDIO",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        d = folder_paths.get_input_directory()
        files = folder_paths.filter_files_content_types(sorted(os.listdir(d)), ["audio", "video"])
        return {"required": {"audio": (files, {"audio_upload": True})}}

    def load(self, audio):
        with av.open(folder_paths.get_annotated_filepath(audio)) as c:
            stream = c.streams.audio[0]
            to_float = av.AudioResampler(format="fltp")  # any sample format -> planar float, rate and layout kept
            chunks = [f.to_ndarray() for frame in c.decode(stream) for f in to_float.resample(frame)]
            rate = stream.codec_context.sample_rate
        wav = np.concatenate(chunks, axis=1)
        return ({"waveform": torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None], "sample_rate": rate},)


class LoadVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        d = folder_paths.get_input_directory()
        files = folder_paths.filter_files_content_types(sorted(os.listdir(d)), ["video"])
        return io.Schema(node_id="LoadVideo", display_name="Load Video", category="image/video",
                         inputs=[io.Combo.Input("file", options=files, upload=io.UploadType.video)],
                         outputs=[io.Video.Output()])

    @classmethod
    def execute(cls, file):
        return io.NodeOutput(InputImpl.VideoFromFile(folder_paths.get_annotated_filepath(file)))


class GetVideoComponents(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GetVideoComponents", display_name="Get Video Components", category="image/video",
                         inputs=[io.Video.Input("video")],
                         outputs=[io.Image.Output(display_name="images"), io.Audio.Output(display_name="audio"),
                                  io.Float.Output(display_name="fps")])

    @classmethod
    def execute(cls, video):
        c = video.get_components()
        return io.NodeOutput(c.images, c.audio, float(c.frame_rate))




class ImageScaleBy:
    """Core's ImageScaleBy (an IMAGE node that needs no model; stands in for an upscaler or face restorer)."""
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",),
                             "upscale_method": (["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],),
                             "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})}}

    def upscale(self, image, upscale_method, scale_by):
        h, w = round(image.shape[1] * scale_by), round(image.shape[2] * scale_by)
        mode = {"nearest-exact": "nearest-exact", "lanczos": "bicubic"}.get(upscale_method, upscale_method)
        out = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(h, w), mode=mode)
        return (out.movedim(1, -1).clamp(0, 1),)


NODE_CLASS_MAPPINGS = {"LoadImage": LoadImage, "LoadAudio": LoadAudio, "LoadVideo": LoadVideo,
                       "GetVideoComponents": GetVideoComponents, "ImageScaleBy": ImageScaleBy}
