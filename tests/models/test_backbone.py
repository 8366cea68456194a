"""The backbone and ReferenceNet as a training loop or a host app calls them: every transformer layer takes part in
reference-attention (also past the 8th), the conditions travel with the call, per-row timesteps, and gradients."""
import dataclasses

import pytest
import torch

from emo_model import EMOModel
from emo_model.formats.load import tiny_config
from emo_model.models.backbone import BackboneConditions


@pytest.fixture(scope="module")
def deep_model():
    """The tiny architecture with 9 transformer layers per spatial attention (SD1.5 has 1; diffusers allows more),
    cut to two levels (one attention down, one in the middle, one up) to stay fast."""
    cfg = tiny_config()
    unet = dict(cfg.unet, transformer_layers_per_block=9, block_out_channels=[32, 32],
                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
    cfg = dataclasses.replace(cfg, unet=unet)
    torch.manual_seed(0)
    model = EMOModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised outputs (speed attention) would hide wiring
            if p.ndim >= 2 and not p.any():
                p.normal_(0, p[0].numel() ** -0.5)
    return model


def _inputs(model, b=1, f=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = model.config.latent_size
    x = torch.randn(b, 4, f, s, s, generator=g)
    tokens = torch.randn(b * f, 2, 32, generator=g)
    ref = torch.randn(1, 4, s, s, generator=g)
    return x, tokens, ref


def test_every_transformer_layer_records_and_reads_the_reference(deep_model):
    """ReferenceNet records the input of all 9 layers of each attention, and the backbone reads each of them: a
    change in the 9th layer's features alone changes the output."""
    x, tokens, ref = _inputs(deep_model)
    with torch.no_grad():
        bank = deep_model.reference_net(ref, tokens[:1])
        n_blocks = sum(type(m).__name__ == "BasicTransformerBlock" for m in deep_model.backbone.unet.modules())
        assert len(bank) == n_blocks and any(p.endswith("transformer_blocks.8") for p in bank)
        c = BackboneConditions(tokens=tokens, ref_rows=[True], ref_bank=bank)
        out = deep_model.backbone(x, 500, c)
        for path in [p for p in bank if p.endswith("transformer_blocks.8")][:2]:
            changed = dict(bank, **{path: bank[path] + 1.0})
            assert not torch.allclose(deep_model.backbone(x, 500, dataclasses.replace(c, ref_bank=changed)), out,
                                      atol=1e-5), path


def test_conditions_travel_with_the_call(deep_model):
    """Two calls with different conditions do not see each other's (the model keeps none), and precomputed
    reference keys/values (`Backbone.reference_kv`, what the sampler passes) give what projecting them per call
    gives."""
    x, tokens, ref = _inputs(deep_model)
    with torch.no_grad():
        bank = deep_model.reference_net(ref, tokens[:1])
        with_ref = BackboneConditions(tokens=tokens, ref_rows=[True], ref_bank=bank)
        plain = BackboneConditions(tokens=tokens)
        a = deep_model.backbone(x, 300, with_ref)
        b = deep_model.backbone(x, 300, plain)
        assert not torch.allclose(a, b, atol=1e-4)
        torch.testing.assert_close(deep_model.backbone(x, 300, with_ref), a, atol=0, rtol=0)
        kv = deep_model.backbone.reference_kv(bank)
        torch.testing.assert_close(deep_model.backbone(x, 300, dataclasses.replace(with_ref, ref_kv=kv)), a,
                                   atol=1e-6, rtol=0)


def test_training_call(deep_model):
    """The call a training step makes: a batch of clips, each with its own timestep ([b]) and its own reference
    (bank rows picked by `ref_index`), equals each clip alone; the loss reaches ReferenceNet, the temporal modules
    and the audio layers."""
    x, tokens, _ = _inputs(deep_model, b=2)
    g = torch.Generator().manual_seed(4)
    s = deep_model.config.latent_size
    refs, audio = torch.randn(2, 4, s, s, generator=g), torch.randn(6, 2, 32, generator=g)
    t = torch.tensor([10, 900])
    bank = deep_model.reference_net(refs, tokens[[0, 3]])  # {path: [2, L, C]}
    c = BackboneConditions(tokens=tokens, ref_bank=bank, ref_index=torch.arange(2).repeat_interleave(3), audio=audio)
    out = deep_model.backbone(x, t, c)  # ref_rows empty: every row sees its reference
    with torch.no_grad():
        for i in range(2):
            rows = slice(3 * i, 3 * i + 3)
            one = BackboneConditions(tokens=tokens[rows], ref_bank={k: v[i:i + 1] for k, v in bank.items()},
                                     audio=audio[rows])
            torch.testing.assert_close(deep_model.backbone(x[i:i + 1], int(t[i]), one), out[i:i + 1].detach(),
                                       atol=1e-5, rtol=1e-5)
    out.square().mean().backward()
    grads = {name: p.grad for name, p in deep_model.named_parameters()}
    for part in ("reference_net.unet.down_blocks.0.attentions.0.transformer_blocks.8.attn1.to_q.weight",
                 "backbone.unet.down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight",
                 "backbone.unet.down_blocks.0.audio_modules.0.proj_in.weight"):
        assert grads[part] is not None and grads[part].abs().sum() > 0, part
    deep_model.zero_grad(set_to_none=True)
