"""Audio-attention layers: after each reference-attention, the backbone's features cross-attend to the audio tokens.

Same structure and key names as Hallo's `audio_modules.N` (a one-block transformer): GroupNorm -> 1x1 `proj_in` ->
h += attn1(norm1 h) -> audio cross-attention -> h += ff(norm3 h) -> 1x1 `proj_out` -> + residual.
The audio cross-attention is either one plain `attn2` (EMO) or, with `regions`, Hallo's hierarchical form: one
cross-attention per region (`attn2_0/1/2` = full/background, face, lip), each output multiplied by that region's mask
at this block's resolution, through a 1x1 `zero_conv_{full,face,lip}`, and weighted by the sampler's region weights.
EchoMimic has no such layers: its audio tokens take the UNet's cross-attention slot (`attn2`), whose output it
multiplies by a gain (`GainAttnProcessor`).
"""
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

from .attention import EMOAttnProcessor

REGIONS = ("full", "face", "lip")


class AudioAttentionBlock(nn.Module):
    def __init__(self, dim: int, audio_dim: int, heads: int, regions: bool):
        super().__init__()
        self.regions = regions
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, dim_head=dim // heads)
        self.norm2 = nn.LayerNorm(dim)
        if regions:
            for i, name in enumerate(REGIONS):
                setattr(self, f"attn2_{i}", Attention(dim, cross_attention_dim=audio_dim, heads=heads, dim_head=dim // heads))
                setattr(self, f"zero_conv_{name}", nn.Conv2d(dim, dim, 1))
        else:
            self.attn2 = Attention(dim, cross_attention_dim=audio_dim, heads=heads, dim_head=dim // heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, x, audio, masks=None, weights=(1.0, 1.0, 1.0)):
        """x: [n, hw, dim] tokens; audio: [n, T, audio_dim]; masks: 3 tensors [n or 1, hw] (regions only)."""
        x = self.attn1(self.norm1(x)) + x
        n = self.norm2(x)
        if not self.regions:
            x = self.attn2(n, encoder_hidden_states=audio) + x
            return self.ff(self.norm3(x)) + x
        side = int(round(x.shape[1] ** 0.5))
        for i, name in enumerate(REGIONS):
            a = getattr(self, f"attn2_{i}")(n, encoder_hidden_states=audio) * masks[i][:, :, None].to(x.dtype)
            a = rearrange(a, "n (h w) c -> n c h w", h=side)
            a = rearrange(getattr(self, f"zero_conv_{name}")(a), "n c h w -> n (h w) c")
            x = x + weights[i] * a
        return self.ff(self.norm3(x)) + x


class AudioAttention(nn.Module):
    """One audio-attention layer. `in_channels`: the block width; `dim`: its inner width (Hallo uses the block's
    input width here, which differs from the output width in some blocks: read it from the tensors)."""

    def __init__(self, in_channels: int, dim: int, audio_dim: int, heads: int = 8, norm_groups: int = 32,
                 regions: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, in_channels, eps=1e-6)
        self.proj_in = nn.Conv2d(in_channels, dim, 1)
        self.transformer_blocks = nn.ModuleList([AudioAttentionBlock(dim, audio_dim, heads, regions)])
        self.proj_out = nn.Conv2d(dim, in_channels, 1)

    def forward(self, x, audio, masks=None, weights=(1.0, 1.0, 1.0)):
        """x: [(b f), C, h, w]; audio: [(b f), T, audio_dim] (frame j's tokens on frame j's rows) -> [(b f), C, h, w]."""
        h = x.shape[2]
        t = rearrange(self.proj_in(self.norm(x)), "n c h w -> n (h w) c")
        t = self.transformer_blocks[0](t, audio, masks, weights)
        return self.proj_out(rearrange(t, "n (h w) c -> n c h w", h=h)) + x


class GainAttnProcessor(EMOAttnProcessor):
    """Cross-attention whose output is multiplied by `gain` (EchoMimic's audio in the attn2 slot, gain 3.0)."""

    def __init__(self, gain: float):
        super().__init__()
        self.gain = gain

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 conditions=None, record=None):
        return self.gain * super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
