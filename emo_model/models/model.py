"""EMOModel: the bundle of modules one checkpoint provides, and how to build it from an EMOConfig."""
import torch
from torch import nn

from .backbone import Backbone
from ..config import EMOConfig
from .face_locator import FaceLocator
from .identity_projection import IdentityProjection
from .reference_net import ReferenceNet
from .speed_layers import SpeedEncoder


class EMOModel(nn.Module):
    """reference_net, backbone, face_locator, and where the checkpoint has them: audio_projection,
    identity_projection, speed_encoder; vae (diffusers AutoencoderKL) and audio_encoder are attached by the loader.

    One denoising call, as a training step makes it (the sampler builds the same in `sampling/conditions.py`):
        bank = model.reference_net(ref_latents, identity_tokens)          # {path: (R, h w, C)}
        out = model.backbone(noisy_latents, timesteps, BackboneConditions(
            tokens=..., ref_bank=bank, ref_index=..., audio=..., face=..., motion=..., speed=...))
    noisy_latents (b c f h w), timesteps [b] or a number; see `models.backbone.BackboneConditions`."""

    def __init__(self, config: EMOConfig, audio_widths: dict | None = None):
        super().__init__()
        self.config = config
        self.reference_net = ReferenceNet(config.unet, cross_attention=config.cross_attention != "audio")
        self.backbone = Backbone(config, audio_widths)
        fl = config.face_locator
        self.face_locator = FaceLocator(config.unet["block_out_channels"][0], fl["in_channels"], fl["block_out_channels"])
        self.audio_projection = None
        if config.audio_projection:
            from .audio_projection import AudioProjection
            self.audio_projection = AudioProjection(**config.audio_projection)
        self.identity_projection = None
        if config.identity and config.cross_attention == "identity":
            self.identity_projection = IdentityProjection(config.unet["cross_attention_dim"], config.identity["embed_dim"],
                                                          config.identity["tokens"])
        self.speed_encoder = SpeedEncoder(**config.speed) if config.speed else None
        self.vae = None
        self.audio_encoder = None
        self.sources: dict = {}  # where the VAE and audio encoder were loaded from

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def device(self) -> torch.device:
        return self.backbone.unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.unet.conv_in.weight.dtype

    def enable_gradient_checkpointing(self, on: bool = True) -> None:
        """Training memory: the backbone keeps only each layer's input for the backward pass and recomputes the
        layer (`Backbone.gradient_checkpointing`); ReferenceNet does the same per block through diffusers'
        `UNet2DConditionModel` checkpointing. About one more forward pass of compute per step."""
        self.backbone.gradient_checkpointing = on
        if on:
            self.reference_net.unet.enable_gradient_checkpointing()
        else:
            self.reference_net.unet.disable_gradient_checkpointing()

    def component_state_dicts(self) -> dict:
        """{component: state dict} as stored in the native format (speed-layer weights kept apart)."""
        backbone = self.backbone.unet.state_dict()
        speed = {k: v for k, v in backbone.items() if ".speed_" in k}
        parts = {
            "reference_net": self.reference_net.unet.state_dict(),
            "backbone": {k: v for k, v in backbone.items() if k not in speed},
            "face_locator": self.face_locator.state_dict(),
        }
        if self.audio_projection is not None:
            parts["audio_projection"] = self.audio_projection.state_dict()
        if self.identity_projection is not None:
            parts["identity_projection"] = self.identity_projection.state_dict()
        if self.speed_encoder is not None:
            parts["speed_layers"] = {**{f"encoder.{k}": v for k, v in self.speed_encoder.state_dict().items()},
                                     **{f"backbone.{k}": v for k, v in speed.items()}}
        return parts
