"""Backbone Network (EMO §3.2): the SD1.5-shaped UNet that denoises a clip of f frames, with reference-attention,
audio-attention, face-locator input and temporal modules.

The spatial layers are diffusers' (`UNet2DConditionModel`'s resnets, transformers, down/upsamplers), run on frames
folded into the batch (`(b f) c h w`; every conv and GroupNorm then works per frame, as the "inflated" 3-D UNets of
AnimateDiff, Hallo and EchoMimic do). Each down / mid / up block gets `audio_modules` and `motion_modules` lists, so
the state-dict keys are exactly Hallo's `denoising_unet.*` keys. `Backbone.forward` walks the blocks itself, as
diffusers' `UNetMotionModel` does, so that every layer's inputs are visible where it is called: per layer
resnet -> spatial transformer (reference-attention in attn1, identity or audio tokens in attn2) -> audio-attention ->
temporal module; blocks without spatial transformers run resnet -> temporal module. Motion-frame features
(ReferenceNet features of the previous clip's last n frames) are put in front of the clip's frames before each
temporal module and dropped after it.

All per-call inputs come in one `BackboneConditions` argument; the model keeps no state between calls, so one model
may serve several pipelines or threads at once.
"""
from dataclasses import dataclass, field, replace

import torch
from diffusers import UNet2DConditionModel
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import EMOConfig
from .attention import EMOAttnProcessor
from .audio_attention import AudioAttention, GainAttnProcessor
from .reference_attention import ReferenceReader, project_reference
from .reference_net import transformer_block_paths
from .temporal_module import TemporalModule


@dataclass
class BackboneConditions:
    """Everything a backbone call is conditioned on besides the noisy latents and the timestep.
    B = the batch of the call (guidance passes, or training samples), f = frames of the clip. Every field is
    optional: an empty `BackboneConditions()` runs the plain video UNet."""
    tokens: torch.Tensor | None = None             # [(B f), T, D] cross-attention (attn2) tokens: identity or audio
    ref_rows: list = field(default_factory=list)   # [B] bool: row sees the reference (False ones first; empty: all)
    ref_bank: dict | None = None                   # path -> [R, L, C] ReferenceNet features (R distinct rows)
    ref_index: torch.Tensor | None = None          # [(B_ref f)] bank row per reference-seeing row (None: R = 1;
                                                   # one reference per clip: arange(B).repeat_interleave(f))
    ref_kv: dict | None = None                     # path -> (k, v) [R, L, C] of the bank, projected (optional)
    motion: dict | None = None                     # path -> [B, n, L, C] motion-frame features
    audio: torch.Tensor | None = None              # [(B f), T, D] tokens for the audio-attention layers
    masks: list | None = None                      # Hallo regions: 3 lists (full, face, lip) of 4 levels [1, hw]
    region_weights: tuple = (1.0, 1.0, 1.0)        # (full/pose, face, lip) weights of the audio per region
    face: torch.Tensor | None = None               # [(B f), C0, h, w] face-locator features (added after conv_in)
    speed: torch.Tensor | None = None              # [B, f, l] speed features ([B, f, t, l]: frame-local)
    frames: int = 0                                # f; set by `Backbone.forward` from the latents


def _blocks(unet):
    """(checkpoint prefix, block, resolution level 0..3) of every block in order: down, mid, up."""
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
        # Training: keep only each layer's input for the backward pass and recompute the layer (resnet, spatial
        # transformer, audio-attention, temporal module) when its gradients are needed. Set by
        # `EMOModel.enable_gradient_checkpointing`; no effect without autograd (sampling).
        self.gradient_checkpointing = False
        temporal, audio = config.temporal, config.audio_attention
        speed_dim = config.speed["dim"] if config.speed else None
        heads = config.unet.get("attention_head_dim", 8)
        groups = config.unet.get("norm_num_groups", 32)
        self._runs_temporal = {}
        for name, block, _ in _blocks(self.unet):
            attns = list(getattr(block, "attentions", None) or [])
            hosts = attns if attns else list(block.resnets)
            self._runs_temporal[name] = bool(attns) or temporal.get("plain_blocks", True)
            block.motion_modules = nn.ModuleList(
                TemporalModule(self._width(h), temporal["heads"], temporal["max_len"], speed_dim) for h in hosts)
            if audio and attns:
                block.audio_modules = nn.ModuleList(
                    AudioAttention(self._width(a), (audio_widths or {}).get(f"{name}.audio_modules.{j}", self._width(a)),
                                   audio["audio_dim"], audio.get("heads", heads), groups, audio.get("regions", False))
                    for j, a in enumerate(attns))
        for path, tb in transformer_block_paths(self.unet):
            tb.attn1.set_processor(ReferenceReader(path))
            tb.attn2.set_processor(GainAttnProcessor(config.audio_gain) if config.cross_attention == "audio"
                                   else EMOAttnProcessor())

    @staticmethod
    def _width(module) -> int:
        return module.proj_out.out_channels if hasattr(module, "proj_out") else module.conv2.out_channels

    def forward(self, sample: torch.Tensor, timestep, conditions: BackboneConditions) -> torch.Tensor:
        """The model output (v-prediction for Hallo's and EchoMimic's schedules) for noisy latents.

        Shapes: sample (b c f h w) VAE-scaled noisy latents, c = 4; timestep: a number, a 0-d tensor, or a [b]
        tensor (one per batch row, e.g. in training); conditions: see `BackboneConditions`, its per-row tensors laid
        out for b rows of f frames. Returns (b c f h w)."""
        unet = self.unet
        f = sample.shape[2]
        c = replace(conditions, frames=f)
        x = rearrange(sample, "b c f h w -> (b f) c h w")
        if torch.is_tensor(timestep) and timestep.ndim == 1 and timestep.shape[0] > 1:
            timestep = timestep.repeat_interleave(f)  # one per (b f) row
        emb = unet.time_embedding(unet.get_time_embed(sample=x, timestep=timestep))
        h = unet.conv_in(x)
        if c.face is not None:
            h = h + c.face.to(h.dtype)
        resize = any(s % 2 ** unet.num_upsamplers for s in x.shape[-2:])  # odd sizes: upsample to the skip's size
        skips = [h]
        for i, block in enumerate(unet.down_blocks):
            for j, resnet in enumerate(block.resnets):
                h = self._unit(self._resnet_then_layer, f"down_blocks.{i}", block, j, i, resnet, c, h, emb)
                skips.append(h)
            for downsampler in block.downsamplers or []:
                h = downsampler(h)
                skips.append(h)
        mid = unet.mid_block
        h = self._unit(lambda h, emb: mid.resnets[0](h, emb), h, emb)
        for j, resnet in enumerate(mid.resnets[1:]):
            h = self._unit(self._layer_then_resnet, "mid_block", mid, j, 3, resnet, c, h, emb)
        for i, block in enumerate(unet.up_blocks):
            for j, resnet in enumerate(block.resnets):
                h = self._unit(self._resnet_then_layer, f"up_blocks.{i}", block, j, 3 - i, resnet, c,
                               torch.cat([h, skips.pop()], 1), emb)
            for upsampler in block.upsamplers or []:
                h = upsampler(h, skips[-1].shape[2:] if resize else None)
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return rearrange(unet.conv_out(h), "(b f) c h w -> b c f h w", f=f)

    def _unit(self, fn, *args):
        """fn(*args), through `torch.utils.checkpoint` (non-reentrant: gradients also reach the tensors the
        conditions carry, e.g. ReferenceNet features) when gradient checkpointing is on and autograd records."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _resnet_then_layer(self, name, block, j, level, resnet, c, h, emb):
        return self._layer(name, block, j, level, resnet(h, emb), c)

    def _layer_then_resnet(self, name, block, j, level, resnet, c, h, emb):
        return resnet(self._layer(name, block, j, level, h, c), emb)

    def _layer(self, name, block, j, level, x, c: BackboneConditions):
        """After a block's j-th resnet: its spatial transformer (if any), audio-attention, then the temporal module
        with the motion-frame features in front of the clip's frames. x: [(b f), C, h, w] -> same."""
        attns = getattr(block, "attentions", None)
        if attns:
            x = attns[j](x, encoder_hidden_states=c.tokens, cross_attention_kwargs={"conditions": c},
                         return_dict=False)[0]
        audio_modules = getattr(block, "audio_modules", None)
        if audio_modules is not None and c.audio is not None:
            masks = [m[level] for m in c.masks] if c.masks else None
            x = audio_modules[j](x, c.audio.to(x.dtype), masks, c.region_weights)
        if not self._runs_temporal[name]:
            return x
        x = rearrange(x, "(b f) c h w -> b c f h w", f=c.frames)
        motion = c.motion.get(f"{name}.attentions.{j}.transformer_blocks.0") if c.motion else None
        n, speed = 0, c.speed
        if motion is not None:
            n = motion.shape[1]
            x = torch.cat([rearrange(motion.to(x.dtype), "b n (h w) c -> b c n h w", h=x.shape[3]), x], dim=2)
            if speed is not None:
                speed = torch.cat([speed[:, :1].expand(-1, n, *speed.shape[2:]), speed], dim=1)
        x = block.motion_modules[j](x, speed)[:, :, n:]
        return rearrange(x, "b c f h w -> (b f) c h w")

    def reference_kv(self, bank: dict) -> dict:
        """The keys and values of ReferenceNet features `bank` ({path: [R, L, C]}) under each self-attention's
        projections, {path: (k, v)}: made once per video by the sampler (`BackboneConditions.ref_kv`) instead of
        at every step."""
        attn1 = {path: tb.attn1 for path, tb in transformer_block_paths(self.unet)}
        return {path: project_reference(attn1[path], feats.to(self.unet.dtype)) for path, feats in bank.items()
                if path in attn1}
