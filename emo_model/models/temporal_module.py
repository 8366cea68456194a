"""Temporal modules: AnimateDiff v2 ("Vanilla") self-attention over frames, plus EMO's speed cross-attention.

Key names and shapes follow AnimateDiff's `mm_sd_v15_v2.ckpt` (and Hallo's / EchoMimic's fine-tunes), so those
state dicts load as they are. Per module (C = block width):
`temporal_transformer.{norm, proj_in, proj_out}`, `...transformer_blocks.0.attention_blocks.{0,1}.{to_q,to_k,to_v,to_out.0}`,
`...attention_blocks.N.pos_encoder.pe [1, max_len, C]`, `...norms.{0,1}`, `...ff.net.{0.proj,2}`, `...ff_norm`.
EMO's speed layers add `...transformer_blocks.0.{speed_norm, speed_attn}` (cross-attention to per-frame speed features).
"""
import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from einops import rearrange
from torch import nn


class PositionalEncoding(SinusoidalPositionalEmbedding):
    """diffusers' sinusoidal frame-position table (`pe`: [1, max_len, C], AnimateDiff's key and values), added to the
    tokens before attention; more frames than positions is a clear error instead of a broadcast error."""

    def forward(self, x):  # x: [(b h w), f, C]
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"{x.shape[1]} frames exceed the temporal module's {self.pe.shape[1]} positions: "
                             "lower frames per clip + motion frames")
        return super().forward(x)


class TemporalAttention(nn.Module):
    """Self-attention along the frame axis, with the position table added to its input."""

    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x):  # x: [(b h w), f, C]
        x = self.pos_encoder(x)
        q, k, v = (rearrange(p(x), "n f (h d) -> n h f d", h=self.heads) for p in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](rearrange(out, "n h f d -> n f (h d)"))


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, speed_dim: int | None = None):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim, heads, max_len) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)
        if speed_dim is not None:
            self.add_speed_attention(speed_dim)

    def add_speed_attention(self, speed_dim: int):
        """EMO's speed layers: cross-attention from each frame's tokens to the per-frame speed features."""
        dim = self.ff_norm.normalized_shape[0]
        self.speed_norm = nn.LayerNorm(dim)
        self.speed_attn = Attention(dim, cross_attention_dim=speed_dim, heads=self.attention_blocks[0].heads,
                                    dim_head=dim // self.attention_blocks[0].heads)
        nn.init.zeros_(self.speed_attn.to_out[0].weight)
        nn.init.zeros_(self.speed_attn.to_out[0].bias)

    def forward(self, x, speed=None):  # x: [(b h w), f, C]; speed: [(b h w), f, l], [(b h w), f, t, l] or None
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x)) + x
        if speed is not None and hasattr(self, "speed_attn"):
            h = self.speed_norm(x)
            if speed.dim() == 4:  # frame-local: each frame attends to its own t speed tokens
                n, f, c = h.shape
                out = self.speed_attn(h.reshape(n * f, 1, c), encoder_hidden_states=speed.flatten(0, 1))
                x = out.reshape(n, f, c) + x
            else:                 # every frame attends to all f frames' speed features (EMO's layout)
                x = self.speed_attn(h, encoder_hidden_states=speed) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, speed_dim: int | None = None):
        super().__init__()
        self.norm = nn.GroupNorm(32, dim, eps=1e-6)  # always 32 groups, whatever the UNet's norm_num_groups
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(dim, heads, max_len, speed_dim)])
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x, speed=None):
        """x: [b, C, f, h, w] -> same; speed: per-frame speed features [b, f, l] or [b, f, t, l] (frame-local), or
        None."""
        b, c, f, h, w = x.shape
        residual = x
        x = self.norm(rearrange(x, "b c f h w -> (b f) c h w").contiguous())  # statistics per frame (contiguous:
        # the strided view crashes GroupNorm's backward on the CPU in torch 2.13 when the norm is frozen)
        x = self.proj_in(rearrange(x, "(b f) c h w -> (b h w) f c", f=f))
        if speed is not None:
            speed = speed.to(x.dtype).repeat_interleave(h * w, dim=0)
        for block in self.transformer_blocks:
            x = block(x, speed)
        x = rearrange(self.proj_out(x), "(b h w) f c -> b c f h w", b=b, h=h, w=w)
        return x + residual


class TemporalModule(nn.Module):
    """One AnimateDiff v2 motion module: `temporal_transformer` over the frame axis of `b c f h w` features."""

    def __init__(self, dim: int, heads: int = 8, max_len: int = 32, speed_dim: int | None = None):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(dim, heads, max_len, speed_dim)

    def forward(self, x, speed=None):
        return self.temporal_transformer(x, speed)
