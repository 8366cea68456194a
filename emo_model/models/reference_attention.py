"""Reference-attention (EMO §3.2): the backbone's self-attention also attends to ReferenceNet's features.

ReferenceNet's `attn1` layers record their input (the `norm1` output, [n, L, C]) under their module path into the
call's `record` dict; the backbone's `attn1` with the same path takes keys/values from [own tokens, reference tokens]
(concatenated along tokens). Both processors get what they need through the call (`cross_attention_kwargs`), so one
model can run several calls at once. The bank holds R distinct reference rows per path, [R, L, C]: one (repeated for
every frame) or, with Hallo's row tiling, two, picked per backbone row by `conditions.ref_index`. The sampler may give
the reference's keys and values already projected (`conditions.ref_kv`, made once per video by
`Backbone.reference_kv`); without them they are projected at each call (training, where they need gradients).
Guidance passes without the reference come first in the batch and get plain self-attention; the split is a slice,
so nothing in the step loop waits on the GPU.
"""
import torch
import torch.nn.functional as F
from einops import rearrange

from .attention import EMOAttnProcessor


def _heads_attend(attn, q, k, v):
    """q: [n, Lq, (h d)], k/v: [n, Lk, (h d)] -> attention output through `to_out`, [n, Lq, C]."""
    q, k, v = (rearrange(t, "n l (h d) -> n h l d", h=attn.heads) for t in (q, k, v))
    return attn.to_out[0](rearrange(F.scaled_dot_product_attention(q, k, v), "n h l d -> n l (h d)"))


class ReferenceWriter(EMOAttnProcessor):
    """ReferenceNet's attn1: records its input under its module path in the call's `record` dict (when given),
    then plain self-attention."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 conditions=None, record=None):
        if record is not None:
            record[self.path] = hidden_states
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ReferenceReader(EMOAttnProcessor):
    """The backbone's attn1. Reads from the call's `conditions` (`BackboneConditions`): `ref_bank[path]` [R, L, C],
    `ref_kv[path]` (its projected keys/values, optional), `ref_index` (None when R = 1, else a LongTensor
    [(B_ref f)]: the bank row of each backbone row that sees the reference), `ref_rows` ([B] bool per batch row:
    False rows first, then True ones; empty: every row sees the reference) and `frames`."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 conditions=None, record=None):
        c = conditions
        bank = c.ref_bank.get(self.path) if c is not None and c.ref_bank else None
        n_plain = c.ref_rows.count(False) if bank is not None else 0
        if bank is None or (c.ref_rows and n_plain == len(c.ref_rows)):
            return super().__call__(attn, hidden_states, None, attention_mask, temb)
        split = n_plain * c.frames  # hidden_states: [(B f), L, C], passes without the reference first
        x = hidden_states[split:]
        kv = c.ref_kv.get(self.path) if c.ref_kv else None
        if kv is None or kv[0].dtype != x.dtype:
            kv = project_reference(attn, bank.to(x.dtype))
        if kv[0].shape[0] == 1:
            kb, vb = (t.expand(x.shape[0], -1, -1) for t in kv)
        else:
            kb, vb = (t[c.ref_index] for t in kv)
        out = _heads_attend(attn, attn.to_q(x), torch.cat([attn.to_k(x), kb], 1), torch.cat([attn.to_v(x), vb], 1))
        if split == 0:
            return out
        plain = super().__call__(attn, hidden_states[:split], None, attention_mask, temb)
        return torch.cat([plain, out])


def project_reference(attn, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of reference features `bank` [R, L, C] under `attn`'s projections: ([R, L, C], [R, L, C])."""
    return attn.to_k(bank), attn.to_v(bank)
