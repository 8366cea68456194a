"""The attention processor every attention layer of our two UNets uses: diffusers' `AttnProcessor2_0`, plus the
per-call keyword arguments those UNets pass through diffusers' `cross_attention_kwargs`.

diffusers hands `cross_attention_kwargs` to every `attn1` and `attn2` of a transformer block and drops, with a warning
per call, any keyword the processor's `__call__` does not name. So every processor of ours names both:
`conditions` (the backbone's `BackboneConditions` of this call) and `record` (ReferenceNet's dict that collects the
self-attention inputs of this call). Subclasses use the one they need; the base ignores both.
"""
from diffusers.models.attention_processor import AttnProcessor2_0


class EMOAttnProcessor(AttnProcessor2_0):
    """diffusers' scaled-dot-product attention; `conditions` and `record` are accepted and ignored."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 conditions=None, record=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
