"""Stand-in for `comfy.latent_formats`: only what latent previews read. The factors here are made up for
the tests (any 4x3 matrix gives a valid preview); real ComfyUI supplies its own."""


class SD15:
    latent_channels = 4

    def __init__(self):
        self.scale_factor = 0.18215
        self.latent_rgb_factors = [[0.3, 0.2, 0.3], [0.3, 0.5, 0.2], [-0.3, 0.2, 0.3], [-0.2, -0.3, -0.7]]
        self.latent_rgb_factors_bias = None
        self.taesd_decoder_name = "taesd_decoder"
