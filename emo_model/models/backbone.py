"""Backbone: the SD1.5-shaped UNet that denoises a clip of f frames, with reference-attention, audio-attention,
face-locator input and temporal modules.

The spatial part is diffusers' `UNet2DConditionModel` run on frames folded into the batch (`(b f) c h w`; every conv
and GroupNorm then works per frame, as the "inflated" 3-D UNets of AnimateDiff, Hallo and EchoMimic do). Each down /
mid / up block gets `audio_modules` and `motion_modules` lists, so the state-dict keys are exactly Hallo's
`denoising_unet.*` keys. Forward hooks run them after each spatial transformer (resnet -> reference/self-attention ->
audio-attention -> temporal module), and after each resnet in blocks without attention.
Motion-frame features (ReferenceNet features of the previous clip's last n frames) are put in front of the clip's
frames before each temporal module and dropped after it.
"""
from dataclasses import dataclass, field

import torch
from diffusers import UNet2DConditionModel
from einops import rearrange
from torch import nn

from .audio_attention import AudioAttention
from ..config import EMOConfig
from .reference_attention import GainAttnProcessor, ReferenceReader
from .reference_net import transformer_block_paths
from .temporal_module import TemporalModule


@dataclass
class BackboneContext:
    """Conditions of one backbone call; B = guidance passes batched together, f = frames of the clip."""
    frames: int = 1
    ref_rows: list = field(default_factory=list)   # [B] bool: pass sees the reference (False ones first)
    ref_bank: dict | None = None                   # path -> [R, L, C] reference features (R distinct rows)
    ref_index: torch.Tensor | None = None          # [(B_ref f)] bank row per reference-seeing row (None: R = 1)
    ref_kv: dict | None = None                     # path -> projected (k, v) of the bank: a cache, filled lazily
    motion: dict | None = None                     # path -> [B, n, L, C] motion-frame features
    audio: torch.Tensor | None = None              # [(B f), T, D] tokens for the audio-attention layers
    masks: list | None = None                      # Hallo regions: 3 lists (full, face, lip) of 4 levels [1, hw]
    region_weights: tuple = (1.0, 1.0, 1.0)
    face: torch.Tensor | None = None               # [(B f), C0, h, w] face-locator features
    speed: torch.Tensor | None = None              # [B, f, l] speed features


def _blocks(unet):
    yield from ((f"down_blocks.{i}", b, i) for i, b in enumerate(unet.down_blocks))
    yield "mid_block", unet.mid_block, 3
    yield from ((f"up_blocks.{i}", b, 3 - i) for i, b in enumerate(unet.up_blocks))


class Backbone(nn.Module):
    def __init__(self, config: EMOConfig, audio_widths: dict | None = None):
        """audio_widths: {"down_blocks.1.audio_modules.0": inner_width} read from a checkpoint's tensors
        (Hallo uses the block's input width); by default the block width."""
        super().__init__()
        self.config = config
        self.unet = UNet2DConditionModel(**config.unet)
        self.ctx = BackboneContext()
        temporal, audio = config.temporal, config.audio_attention
        speed_dim = config.speed["dim"] if config.speed else None
        heads = config.unet.get("attention_head_dim", 8)
        groups = config.unet.get("norm_num_groups", 32)
        for name, block, level in _blocks(self.unet):
            attns = list(getattr(block, "attentions", None) or [])
            hosts = attns if attns else list(block.resnets)
            runs_temporal = bool(attns) or temporal.get("plain_blocks", True)
            block.motion_modules = nn.ModuleList(
                TemporalModule(self._width(h), temporal["heads"], temporal["max_len"], speed_dim) for h in hosts)
            if audio and attns:
                block.audio_modules = nn.ModuleList(
                    AudioAttention(self._width(a), (audio_widths or {}).get(f"{name}.audio_modules.{j}", self._width(a)),
                                   audio["audio_dim"], audio.get("heads", heads), groups, audio.get("regions", False))
                    for j, a in enumerate(attns))
            for j, host in enumerate(hosts):
                host.register_forward_hook(_BlockHook(self, block, j, level, runs_temporal, name))
        self.unet.conv_in.register_forward_hook(self._add_face)
        for path, tb in transformer_block_paths(self.unet):
            tb.attn1.set_processor(ReferenceReader(self.ctx, path))
            if config.cross_attention == "audio":
                tb.attn2.set_processor(GainAttnProcessor(config.audio_gain))

    @staticmethod
    def _width(module) -> int:
        return module.proj_out.out_channels if hasattr(module, "proj_out") else module.conv2.out_channels

    def _add_face(self, module, args, out):
        return out if self.ctx.face is None else out + self.ctx.face.to(out.dtype)

    def forward(self, sample: torch.Tensor, timestep, tokens: torch.Tensor | None, ctx: BackboneContext) -> torch.Tensor:
        """sample: [B, 4, f, h, w] noisy latents; timestep: scalar; tokens: [(B f), T, D] for the cross-attention
        slot (identity or audio tokens) or None; ctx: the other conditions. Returns the model output [B, 4, f, h, w]."""
        f = sample.shape[2]
        self.ctx.__dict__.update(ctx.__dict__, frames=f)
        try:
            out = self.unet(rearrange(sample, "b c f h w -> (b f) c h w"), timestep,
                            encoder_hidden_states=tokens, return_dict=False)[0]
        finally:
            self.ctx.__dict__.update(BackboneContext().__dict__)
        return rearrange(out, "(b f) c h w -> b c f h w", f=f)


class _BlockHook:
    """Forward hook after a block's j-th transformer (or resnet, in blocks without attention): audio-attention, then
    the temporal module, with the motion-frame features in front of the clip's frames. An object rather than a
    closure, so `copy.deepcopy` of the model gives hooks that read the copy's context."""

    def __init__(self, backbone, block, j, level, runs_temporal, name):
        self.backbone, self.block, self.j, self.level, self.runs_temporal = backbone, block, j, level, runs_temporal
        self.motion_path = f"{name}.attentions.{j}.transformer_blocks.0"

    def __call__(self, module, args, out):
        ctx, block, j = self.backbone.ctx, self.block, self.j
        x = out[0] if isinstance(out, tuple) else out  # [(b f), C, h, w]
        audio_modules = getattr(block, "audio_modules", None)
        if audio_modules is not None and ctx.audio is not None:
            masks = [m[self.level] for m in ctx.masks] if ctx.masks else None
            x = audio_modules[j](x, ctx.audio.to(x.dtype), masks, ctx.region_weights)
        if self.runs_temporal:
            x = rearrange(x, "(b f) c h w -> b c f h w", f=ctx.frames)
            motion = ctx.motion.get(self.motion_path) if ctx.motion else None
            n = 0
            speed = ctx.speed
            if motion is not None:
                n = motion.shape[1]
                x = torch.cat([rearrange(motion.to(x.dtype), "b n (h w) c -> b c n h w", h=x.shape[3]), x], dim=2)
                if speed is not None:
                    speed = torch.cat([speed[:, :1].expand(-1, n, -1), speed], dim=1)
            x = block.motion_modules[j](x, speed)[:, :, n:]
            x = rearrange(x, "b c f h w -> (b f) c h w")
        return (x,) + tuple(out[1:]) if isinstance(out, tuple) else x
