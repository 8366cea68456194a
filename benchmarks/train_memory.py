"""Training memory of the full-size model, derived without a GPU: the model is built on PyTorch's `meta` device
(shapes only, no memory, no arithmetic) and one training forward of `emo_model.train.forward.denoise` is run under
`torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd keeps for the backward pass.

    python benchmarks/train_memory.py --stage 2 --lora 16 --resolution 512 --frames 12 --motion-frames 4

Prints: parameters per part, the bytes of weights (fp32, as the trainer holds them), gradients and AdamW state of
the trainable parameters, and the activations kept for the backward pass at bf16 (2 bytes per element; mixed
precision autocasts the matmuls and convolutions). Attention is counted as flash / memory-efficient attention keeps
it (q, k, v and the output; no [L, L] score matrix): `scaled_dot_product_attention` is replaced for the count by a
function that saves exactly those. Transient peaks (VAE encoding of the n + f + 1 frames, ReferenceNet, the
backward's own temporaries) are not in these numbers.

Checked against real tensors: on the tiny model on the CPU (where PyTorch's attention is its flash kernel) the count
of the same forward, with storages counted once, is within `--check`'s printed ratio of this method's count.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emo_model.config import EMOConfig  # noqa: E402
from emo_model.models.model import EMOModel  # noqa: E402
from emo_model.train.forward import TrainBatch, denoise  # noqa: E402
from emo_model.train.stages import is_trained_here, with_speed_layers  # noqa: E402

GB = 1e9


class _FlashLike(torch.autograd.Function):
    """scaled_dot_product_attention that keeps q, k, v and the output for backward, as flash attention does."""

    @staticmethod
    def forward(ctx, q, k, v, kwargs):
        with torch.no_grad():
            out = _SDPA(q, k, v, **kwargs)
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the count needs the forward only
        raise NotImplementedError


_SDPA = torch.nn.functional.scaled_dot_product_attention


def _flash_like(q, k, v, *args, **kwargs):
    names = ("attn_mask", "dropout_p", "is_causal", "scale")
    kwargs.update(zip(names, args))
    return _FlashLike.apply(q, k, v, kwargs)


def saved_elements(fn, dedupe_storage=False, flash_like=True, blocks=None):
    """Elements of the tensors autograd keeps for backward while `fn()` runs (parameters and scalars left out).
    flash_like: attention counted as flash attention keeps it; False: PyTorch's own attention kernel (real
    tensors). dedupe_storage: count each storage once (real tensors only). blocks: {name: module}: also returns the
    elements kept inside each (a forward hook per block), as (total, {name: elements})."""
    seen, per, where = {}, {}, []

    def pack(t):
        if isinstance(t, torch.nn.Parameter) or t.numel() <= 1:
            return t
        if where and not dedupe_storage and (id(t), tuple(t.shape)) not in seen:
            per[where[-1]] = per.get(where[-1], 0) + t.numel()
        if dedupe_storage:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes() // t.element_size())
        elif (id(t), tuple(t.shape)) not in seen:
            seen[(id(t), tuple(t.shape))] = t.numel()
        return t

    handles = []
    for name, block in (blocks or {}).items():  # the backbone calls a block's layers, not the block itself
        for m in block.modules():
            handles.append(m.register_forward_pre_hook(lambda mod, args, name=name: where.append(name)))
            handles.append(m.register_forward_hook(lambda mod, args, out: (where.pop(), None)[1]))
    if flash_like:
        torch.nn.functional.scaled_dot_product_attention = _flash_like
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    finally:
        torch.nn.functional.scaled_dot_product_attention = _SDPA
        for h in handles:
            h.remove()
    return (sum(seen.values()), per) if blocks is not None else sum(seen.values())


def parts(model) -> dict:
    out = {}
    for n, p in model.named_parameters():
        g = ("temporal modules" if ".motion_modules." in n else "audio attention" if ".audio_modules." in n
             else "speed layers" if ".speed_" in n or n.startswith("speed_encoder.") else
             "ReferenceNet" if n.startswith("reference_net.") else
             "backbone (spatial)" if n.startswith("backbone.") else n.split(".")[0])
        out[g] = out.get(g, 0) + p.numel()
    return out


class _CountingCheckpoint:
    """Stands in for `torch.utils.checkpoint.checkpoint` in the backbone (`--gradient-checkpointing`): what a
    checkpointed layer keeps is its inputs (counted here) while its own saved tensors exist only while the backward
    pass recomputes it: the largest of them is added once (the peak)."""

    def __init__(self, flash_like):
        self.inputs, self.peak, self.flash_like = 0, 0, flash_like

    def __call__(self, fn, *args, use_reentrant=False):
        self.inputs += sum(a.numel() for a in args if torch.is_tensor(a))
        box = []
        inner = saved_elements(lambda: box.append(fn(*args)), flash_like=self.flash_like)
        self.peak = max(self.peak, inner)
        return box[0]


def measure(stage=2, lora=None, resolution=512, frames=12, motion_frames=4, batch=1, act_bytes=2, cfg=None,
            dev="meta", checkpointing=False, half_frozen=False) -> dict:
    """cfg: the model's EMOConfig (default: SD1.5-sized, as EMO / Hallo); dev: "meta" (shapes only) or "cpu"
    (real tensors, small configs: the count then uses PyTorch's own attention and counts storages once).
    checkpointing: the backbone's gradient checkpointing (`train --gradient-checkpointing`; ReferenceNet is counted
    without it, an upper bound: in a LoRA run it keeps nothing anyway). half_frozen: with --lora, the frozen weights
    held in bf16 (`train --mixed-precision bf16 --lora`)."""
    cfg = cfg or EMOConfig(resolution=resolution, frames_per_clip=frames, motion_frames=motion_frames)
    resolution = cfg.resolution
    with torch.device(dev):
        torch.manual_seed(0)
        model = EMOModel(cfg)
        if stage == 3:
            import numpy as np
            model = with_speed_layers(model, np.linspace(0, 3, 100))
    model.requires_grad_(False)
    if lora:
        from emo_model.train.lora import TARGETS
        from peft import LoraConfig, inject_adapter_in_model
        with torch.device(dev):
            inject_adapter_in_model(LoraConfig(r=lora, lora_alpha=lora, target_modules=TARGETS), model.backbone.unet)
        trainable = [p for n, p in model.named_parameters() if ".lora_" in n]
    else:
        trainable = [p for n, p in model.named_parameters() if is_trained_here(n, stage)]
    for p in trainable:
        p.requires_grad_(True)
    h = resolution // 8
    n, f = motion_frames, frames
    ap = cfg.audio_projection
    z = (lambda *shape: torch.randn(*shape, device=dev))
    b = TrainBatch(latents=z(batch, 4, f, h, h), reference=z(batch, 4, h, h),
                   face_mask=torch.ones(batch, 1, 1, resolution, resolution, device=dev),
                   motion=z(batch, n, 4, h, h) if n else None,
                   audio=z(batch, f, ap["seq_len"], ap["blocks"], ap["channels"]) if stage >= 2 else None,
                   identity=z(batch, cfg.identity["embed_dim"]), speed=z(batch, f) if stage == 3 else None)
    real = dev != "meta"
    unet = model.backbone.unet
    blocks = {f"down_blocks.{i}": m for i, m in enumerate(unet.down_blocks)}
    blocks.update({"mid_block": unet.mid_block}, **{f"up_blocks.{i}": m for i, m in enumerate(unet.up_blocks)})
    import emo_model.models.backbone as backbone_module
    counting = _CountingCheckpoint(flash_like=not real)
    if checkpointing:
        model.backbone.gradient_checkpointing = True
        backbone_module.checkpoint, original = counting, backbone_module.checkpoint
        blocks = {}  # the per-block split is of the plain run
    try:
        rest, per_block = saved_elements(lambda: denoise(model, b, z(batch, 4, f, h, h),
                                                         torch.full((batch,), 500, device=dev)),
                                         dedupe_storage=real, flash_like=not real, blocks=blocks if not real else {})
    finally:
        if checkpointing:
            backbone_module.checkpoint = original
    rest += counting.inputs + counting.peak
    total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in trainable)
    weight_bytes = 4 * n_train + (2 if half_frozen and lora else 4) * (total - n_train)
    return dict(parts=parts(model), params=total, trainable=n_train, weights_gb=weight_bytes / GB,
                grads_gb=4 * n_train / GB, adam_gb=8 * n_train / GB, activations_gb=act_bytes * rest / GB,
                blocks_gb={k: act_bytes * v / GB for k, v in per_block.items()})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", type=int, default=2, choices=[1, 2, 3])
    ap.add_argument("--lora", type=int)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--motion-frames", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--gradient-checkpointing", action="store_true", help="as `train --gradient-checkpointing`")
    ap.add_argument("--bf16-frozen", action="store_true",
                    help="with --lora: frozen weights in bf16, as `train --lora R --mixed-precision bf16` holds them")
    ap.add_argument("--check", action="store_true",
                    help="check the method: the tiny model's count on the meta device against real CPU tensors")
    a = ap.parse_args()
    if a.check:
        from emo_model.formats.load import tiny_config
        torch.set_num_threads(1)
        for stage in (1, 2):
            kw = dict(frames=1, motion_frames=0, batch=2) if stage == 1 else dict(frames=4, motion_frames=2)
            meta = measure(stage, cfg=tiny_config(), **kw)["activations_gb"]
            cpu = measure(stage, cfg=tiny_config(), dev="cpu", **kw)["activations_gb"]
            print(f"tiny model, stage {stage}: meta-device count / real CPU tensors = {meta / cpu:.3f}")
        return
    if a.stage == 1:
        a.frames, a.motion_frames = 1, 0
    r = measure(a.stage, a.lora, a.resolution, a.frames, a.motion_frames, a.batch,
                checkpointing=a.gradient_checkpointing, half_frozen=a.bf16_frozen)
    for k, v in r["parts"].items():
        print(f"  {k:22s} {v / 1e6:8.1f} M parameters")
    print(f"stage {a.stage}{f' LoRA rank {a.lora}' if a.lora else ''}, {a.resolution} px, f={a.frames} "
          f"n={a.motion_frames}, "
          f"batch {a.batch}: {r['params'] / 1e9:.3f} B parameters ({r['trainable'] / 1e6:.1f} M trainable)")
    print(f"  weights {'fp32 + frozen bf16' if a.bf16_frozen and a.lora else 'fp32':18s} {r['weights_gb']:6.2f} GB")
    print(f"  gradients fp32          {r['grads_gb']:6.2f} GB")
    print(f"  AdamW state fp32        {r['adam_gb']:6.2f} GB")
    print(f"  activations kept, bf16  {r['activations_gb']:6.2f} GB (flash / memory-efficient attention)")
    if r["blocks_gb"]:
        print("  of which inside the backbone's blocks: " + ", ".join(f"{k} {v:.2f}" for k, v in r["blocks_gb"].items())
              + " GB")
    if a.gradient_checkpointing:
        print("  (with gradient checkpointing: each backbone layer's inputs, the rest outside the backbone's layers, "
              "and the largest layer's recomputation)")
    print(f"  total                   {r['weights_gb'] + r['grads_gb'] + r['adam_gb'] + r['activations_gb']:6.2f} GB "
          "(+ transient peaks, see the docstring)")


if __name__ == "__main__":
    main()
