"""Reference-attention: the backbone's self-attention also attends to ReferenceNet's features.

ReferenceNet's `attn1` layers record their input (the `norm1` output, [n, L, C]) under their module path; the
backbone's `attn1` with the same path takes keys/values from [own tokens, reference tokens] (concatenated along
tokens). The bank holds [1, L, C] (one reference, repeated for every frame) or [(B f), L, C] (one reference row
per backbone row; Hallo tiles its ReferenceNet rows, so row r of the `(B f)` batch sees the ref row of guidance pass
r % B: the caller builds that layout). Rows of guidance passes without the reference get plain self-attention.
Audio in the cross-attention slot (EchoMimic) goes through `GainAttnProcessor`.
"""
import torch
import torch.nn.functional as F
from einops import rearrange


def _attend(attn, x, context):
    """Multi-head attention of diffusers `Attention` `attn`: queries from x [n, L, C], keys/values from context."""
    q, k, v = (rearrange(t, "n l (h d) -> n h l d", h=attn.heads)
               for t in (attn.to_q(x), attn.to_k(context), attn.to_v(context)))
    out = rearrange(F.scaled_dot_product_attention(q, k, v), "n h l d -> n l (h d)")
    return attn.to_out[0](out)


class ReferenceWriter:
    """Attention processor for ReferenceNet's attn1: records its input, then plain self-attention."""

    def __init__(self, store: dict, path: str):
        self.store, self.path = store, path

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        if self.store.get("recording", False):
            self.store[self.path] = hidden_states
        return _attend(attn, hidden_states, hidden_states)


class ReferenceReader:
    """Attention processor for the backbone's attn1. Reads `ctx.ref_bank[path]` ([1, L, C] or [(B f), L, C]),
    `ctx.ref_rows` ([B] bool, which guidance passes see the reference) and `ctx.frames` from the backbone's shared
    context."""

    def __init__(self, ctx, path: str):
        self.ctx, self.path = ctx, path

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        ctx = self.ctx
        bank = ctx.ref_bank.get(self.path) if ctx.ref_bank else None
        if bank is None or not any(ctx.ref_rows):
            return _attend(attn, hidden_states, hidden_states)
        x = rearrange(hidden_states, "(b f) l c -> b f l c", f=ctx.frames)
        out = torch.empty_like(x)
        rows = torch.tensor(ctx.ref_rows, device=x.device)
        with_ref = x[rows].flatten(0, 1)  # [(b' f), L, C]
        if bank.shape[0] == 1:
            bank = bank.expand(with_ref.shape[0], -1, -1)
        else:  # one reference row per backbone row
            bank = rearrange(bank, "(b f) l c -> b f l c", f=ctx.frames)[rows].flatten(0, 1)
        context = torch.cat([with_ref, bank.to(x.dtype)], dim=1)
        out[rows] = _attend(attn, with_ref, context).unflatten(0, (-1, ctx.frames))
        if not all(ctx.ref_rows):
            plain = x[~rows].flatten(0, 1)
            out[~rows] = _attend(attn, plain, plain).unflatten(0, (-1, ctx.frames))
        return out.flatten(0, 1)


class GainAttnProcessor:
    """Cross-attention whose output is multiplied by `gain` (EchoMimic's audio in the attn2 slot, gain 3.0)."""

    def __init__(self, gain: float):
        self.gain = gain

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return self.gain * _attend(attn, hidden_states, context)
