"""benchmarks/train_memory.py: the meta-device count of what autograd keeps agrees with real tensors, and the full-size
model it sizes is SD1.5-shaped (its ReferenceNet is SD1.5's UNet: 859.5 M parameters, the published size)."""
import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("train_memory", ROOT / "benchmarks" / "train_memory.py")
tm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tm)


def test_meta_count_agrees_with_real_tensors_on_the_tiny_model():
    from emo_model.formats.load import tiny_config
    kw = dict(stage=2, frames=4, motion_frames=2)
    meta = tm.measure(cfg=tiny_config(), **kw)
    real = tm.measure(cfg=tiny_config(), dev="cpu", **kw)
    assert 0.95 < meta["activations_gb"] / real["activations_gb"] < 1.15
    assert meta["trainable"] == real["trainable"] > 0
    # LoRA keeps more: the spatial attention's inputs are needed too
    lora = tm.measure(cfg=tiny_config(), lora=4, **kw)
    assert lora["activations_gb"] > meta["activations_gb"] and lora["trainable"] < meta["trainable"]
    assert torch.nn.functional.scaled_dot_product_attention is tm._SDPA  # restored after counting


def test_full_size_parts():
    from emo_model.config import EMOConfig
    from emo_model.models.model import EMOModel
    with torch.device("meta"):
        parts = tm.parts(EMOModel(EMOConfig()))
    assert abs(parts["ReferenceNet"] - 859.5e6) < 0.5e6
    assert 2.4e9 < sum(parts.values()) < 2.6e9


def test_gradient_checkpointing_and_bf16_frozen_weights_in_the_estimate():
    from emo_model.formats.load import tiny_config
    import emo_model.models.backbone as backbone_module
    kw = dict(stage=2, frames=4, motion_frames=2, lora=4)
    plain = tm.measure(cfg=tiny_config(), **kw)
    ckpt = tm.measure(cfg=tiny_config(), checkpointing=True, **kw)
    real = tm.measure(cfg=tiny_config(), checkpointing=True, dev="cpu", **kw)
    assert backbone_module.checkpoint is torch.utils.checkpoint.checkpoint  # restored after counting
    assert ckpt["activations_gb"] < plain["activations_gb"] / 3
    assert 0.9 < ckpt["activations_gb"] / real["activations_gb"] < 1.2
    half = tm.measure(cfg=tiny_config(), half_frozen=True, **kw)
    frozen = plain["params"] - plain["trainable"]
    assert abs((plain["weights_gb"] - half["weights_gb"]) * tm.GB - 2 * frozen) < 1
