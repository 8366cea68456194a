"""Stand-in for ComfyUI's `latent_preview` (tests only; same names and behaviour as ComfyUI 0.3.64, self-written).

`get_previewer(device, latent_format)` follows `--preview-method` (`comfy.cli_args.args.preview_method`): none ->
None; auto / latent2rgb -> a previewer from the format's latent->RGB factors; taesd -> the TAESD decoder from
models/vae_approx/, else (with a warning, as in ComfyUI) latent->RGB. `decode_latent_to_preview_image` returns
`("JPEG", PIL image, --preview-size)`, the tuple ComfyUI's progress bar sends to the browser.
"""
import logging

import numpy as np
import torch
from PIL import Image

import folder_paths
from comfy.cli_args import LatentPreviewMethod, args

MAX_PREVIEW_RESOLUTION = args.preview_size


class LatentPreviewer:
    def decode_latent_to_preview(self, x0):
        pass

    def decode_latent_to_preview_image(self, preview_format, x0):
        return ("JPEG", self.decode_latent_to_preview(x0), MAX_PREVIEW_RESOLUTION)


class Latent2RGBPreviewer(LatentPreviewer):
    def __init__(self, latent_rgb_factors, latent_rgb_factors_bias=None):
        self.factors = torch.tensor(latent_rgb_factors, dtype=torch.float32)               # [c, 3]
        self.bias = None if latent_rgb_factors_bias is None else torch.tensor(latent_rgb_factors_bias)

    def decode_latent_to_preview(self, x0):
        x0 = x0[0, :, 0] if x0.ndim == 5 else x0[0]                                       # [c, h, w]
        rgb = x0.float().cpu().movedim(0, -1) @ self.factors
        if self.bias is not None:
            rgb = rgb + self.bias
        return Image.fromarray(((rgb + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).numpy().astype(np.uint8))


def get_previewer(device, latent_format):
    method = args.preview_method
    if method == LatentPreviewMethod.NoPreviews:
        return None
    if method == LatentPreviewMethod.TAESD:
        name = latent_format.taesd_decoder_name
        if not any(f.startswith(name) for f in folder_paths.get_filename_list("vae_approx")):
            logging.warning("Warning: TAESD previews enabled, but could not find models/vae_approx/%s", name)
    return Latent2RGBPreviewer(latent_format.latent_rgb_factors, latent_format.latent_rgb_factors_bias)
