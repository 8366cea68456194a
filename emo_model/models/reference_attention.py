"""Reference-attention: the backbone's self-attention also attends to ReferenceNet's features.

ReferenceNet's `attn1` layers record their input (the `norm1` output, [n, L, C]) under their module path; the
backbone's `attn1` with the same path takes keys/values from [own tokens, reference tokens] (concatenated along
tokens). The bank holds R distinct reference rows per path, [R, L, C]: one (repeated for every frame) or, with
Hallo's row tiling, two, picked per backbone row by `ctx.ref_index`. The reference's keys and values are projected
once (cached in `ctx.ref_kv`, which lives as long as the bank: one video), not at every step.
Guidance passes without the reference come first in the batch and get plain self-attention; the split is a slice,
so nothing in the step loop waits on the GPU.
Audio in the cross-attention slot (EchoMimic) goes through `GainAttnProcessor`.
"""
import torch
import torch.nn.functional as F
from einops import rearrange


def _heads_attend(attn, q, k, v):
    """q: [n, Lq, (h d)], k/v: [n, Lk, (h d)] -> attention output through `to_out`, [n, Lq, C]."""
    q, k, v = (rearrange(t, "n l (h d) -> n h l d", h=attn.heads) for t in (q, k, v))
    return attn.to_out[0](rearrange(F.scaled_dot_product_attention(q, k, v), "n h l d -> n l (h d)"))


def _attend(attn, x, context):
    """Multi-head attention of diffusers `Attention` `attn`: queries from x [n, L, C], keys/values from context."""
    return _heads_attend(attn, attn.to_q(x), attn.to_k(context), attn.to_v(context))


class ReferenceWriter:
    """Attention processor for ReferenceNet's attn1: records its input, then plain self-attention."""

    def __init__(self, store: dict, path: str):
        self.store, self.path = store, path

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        if self.store.get("recording", False):
            self.store[self.path] = hidden_states
        return _attend(attn, hidden_states, hidden_states)


class ReferenceReader:
    """Attention processor for the backbone's attn1. Reads from the backbone's shared context: `ref_bank[path]`
    [R, L, C], `ref_index` (None when R = 1, else a LongTensor [(B_ref f)]: the bank row of each backbone row that
    sees the reference), `ref_rows` ([B] bool per guidance pass: False passes first, then True ones), `frames`,
    and `ref_kv` (the cache of projected reference keys/values)."""

    def __init__(self, ctx, path: str):
        self.ctx, self.path = ctx, path

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        ctx = self.ctx
        bank = ctx.ref_bank.get(self.path) if ctx.ref_bank else None
        n_plain = ctx.ref_rows.count(False)
        if bank is None or n_plain == len(ctx.ref_rows):
            return _attend(attn, hidden_states, hidden_states)
        split = n_plain * ctx.frames  # hidden_states: [(B f), L, C], passes without the reference first
        x = hidden_states[split:]
        kv = ctx.ref_kv.get(self.path) if ctx.ref_kv is not None else None
        if kv is None or kv[0].dtype != x.dtype:
            b = bank.to(x.dtype)
            kv = (attn.to_k(b), attn.to_v(b))  # [R, L, C] each
            if ctx.ref_kv is not None:
                ctx.ref_kv[self.path] = kv
        if kv[0].shape[0] == 1:
            kb, vb = (t.expand(x.shape[0], -1, -1) for t in kv)
        else:
            kb, vb = (t[ctx.ref_index] for t in kv)
        out = _heads_attend(attn, attn.to_q(x), torch.cat([attn.to_k(x), kb], 1), torch.cat([attn.to_v(x), vb], 1))
        if split == 0:
            return out
        plain = hidden_states[:split]
        return torch.cat([_attend(attn, plain, plain), out])


class GainAttnProcessor:
    """Cross-attention whose output is multiplied by `gain` (EchoMimic's audio in the attn2 slot, gain 3.0)."""

    def __init__(self, gain: float):
        self.gain = gain

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return self.gain * _attend(attn, hidden_states, context)
