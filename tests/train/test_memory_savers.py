"""Training memory savers: gradient checkpointing gives the same outputs and gradients while autograd keeps a
fraction of the activations; a LoRA run with mixed precision holds the frozen weights in half precision."""
import torch
from safetensors.torch import load_file

from emo_model import load_model
from emo_model.formats.load import tiny_config
from emo_model.models.model import EMOModel
from emo_model.train.forward import TrainBatch, denoise
import copy

from emo_model.train.lora import add_lora, apply_lora, frozen_to
from emo_model.train.trainer import run_stage


def _forward_backward(model, batch, noisy, t, checkpointing):
    """(output, {name: grad}, elements autograd saved for backward, parameters left out)."""
    model.zero_grad(set_to_none=True)
    model.enable_gradient_checkpointing(checkpointing)
    saved = [0]

    def pack(x):
        if not isinstance(x, torch.nn.Parameter):
            saved[0] += x.numel()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = denoise(model, batch, noisy, t)
    out.pow(2).mean().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}, saved[0]


def test_gradient_checkpointing_same_gradients_a_fraction_of_the_activations():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = EMOModel(cfg)
    B, f, n, h = 2, 4, 2, cfg.latent_size
    g = torch.Generator().manual_seed(1)
    z = (lambda *s: torch.randn(*s, generator=g))
    ap = cfg.audio_projection
    batch = TrainBatch(latents=z(B, 4, f, h, h), reference=z(B, 4, h, h), motion=z(B, n, 4, h, h),
                       face_mask=torch.ones(B, 1, 1, cfg.resolution, cfg.resolution),
                       audio=z(B, f, ap["seq_len"], ap["blocks"], ap["channels"]),
                       identity=z(B, cfg.identity["embed_dim"]) if cfg.identity else None)
    noisy, t = z(B, 4, f, h, h), torch.tensor([500, 200])
    out, grads, saved = _forward_backward(model, batch, noisy, t, False)
    out_c, grads_c, saved_c = _forward_backward(model, batch, noisy, t, True)
    torch.testing.assert_close(out_c, out, rtol=0, atol=0)
    assert set(grads_c) == set(grads)
    # every part gets its gradients through the recomputed layers, ReferenceNet's through the features it gives
    for part in ("reference_net.", "backbone.", "face_locator.", "audio_projection."):
        assert any(k.startswith(part) for k in grads), part
    for k, v in grads.items():
        torch.testing.assert_close(grads_c[k], v, rtol=1e-5, atol=1e-7, msg=k)
    assert saved_c < saved / 4, (saved_c, saved)  # measured: 1.05 M of 13.3 M elements
    model.enable_gradient_checkpointing(False)
    with torch.no_grad():  # off again: the same as never on
        torch.testing.assert_close(denoise(model, batch, noisy, t), out)


def test_lora_with_bf16_and_checkpointing_trains_and_loads(tmp_path, tiny_set, tiny_model):
    ds = tiny_set(frames=2, motion_frames=1)
    r = run_stage(2, "memory", tiny_model, tmp_path / "run", 2, dataset=ds, lora=2, frames=2, motion_frames=1,
                  lr=1e-2, device="cpu", mixed_precision="bf16", gradient_checkpointing=True)
    assert all(torch.isfinite(torch.tensor(r["losses"])))
    tensors = load_file(str(r["lora"]))
    assert {v.dtype for v in tensors.values()} == {torch.float32}  # the adapters trained in fp32
    assert max(v.abs().max().item() for k, v in tensors.items() if "lora_B" in k) > 0
    model = apply_lora(load_model(tiny_model), r["lora"], 1.0)  # renders as any LoRA
    assert model.dtype == torch.float32


def test_frozen_weights_in_bf16_halve_the_weights_and_keep_the_output(tiny_model):
    model = load_model(tiny_model)
    add_lora(model, 2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    big = [p for part in (model.reference_net, model.backbone) for p in part.parameters() if not p.requires_grad]
    fp32_bytes = sum(p.nbytes for p in big)
    cfg = model.config
    B, f, h = 1, 2, cfg.latent_size
    g = torch.Generator().manual_seed(2)
    z = (lambda *s: torch.randn(*s, generator=g))
    batch = TrainBatch(latents=z(B, 4, f, h, h), reference=z(B, 4, h, h), motion=z(B, 1, 4, h, h),
                       face_mask=torch.ones(B, 1, 1, cfg.resolution, cfg.resolution))
    noisy, t = z(B, 4, f, h, h), torch.tensor([300])
    with torch.no_grad():
        exact = denoise(model, batch, noisy, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # what a bf16 run computes with fp32 weights
            mixed = denoise(model, batch, noisy, t).float()
        half = copy.deepcopy(model)
        assert frozen_to(half, torch.bfloat16) == fp32_bytes // 2
        assert all(p.dtype == torch.float32 for n, p in half.named_parameters() if ".lora_" in n)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = denoise(half, batch, noisy, t).float()
    # autocast casts the weights of matmuls and convolutions to bf16 anyway; holding them in bf16 adds rounding only
    # in the ops it leaves alone (norms, additions): the error stays of the order of bf16 autocast's own
    # (measured on this model: mean |error| 1.02x autocast's, which is 1.9 % of the output's spread)
    base = (mixed - exact).abs().mean()
    err = (out - exact).abs().mean()
    assert 0 < base < 0.05 * exact.std() and err < 1.5 * base, (err, base, exact.std())
