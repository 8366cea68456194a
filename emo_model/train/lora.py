"""LoRA adapters on the backbone (peft, the way diffusers adds them to a UNet): training, the file, applying it.

Targets: every attention projection `to_q`, `to_k`, `to_v`, `to_out.0` in the backbone UNet: its spatial self- and
cross-attention (reference-attention included), the audio-attention layers and the temporal modules (speed
attention too, when the model has it). ReferenceNet, the VAE and the audio encoder get none.

File: one safetensors, keys `<module path in the backbone UNet>.lora_A.weight` [r, in] / `.lora_B.weight` [out, r],
metadata {"format": "emo-lora", "version": "1", "rank", "alpha", "targets" (JSON list), "base_kind", "stage",
"whole_frame" ("true" when trained on `prepare-data --whole-frame` data)}.
Applying merges W += strength * alpha / rank * B @ A into the loaded model's weights (no peft at render time); a
whole-frame LoRA also sets the model's `config.whole_frame` (render then frames the whole picture).
"""
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import EMOCheckpointError
from ..models.model import EMOModel

FORMAT = "emo-lora"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_lora(model: EMOModel, rank: int, alpha: float | None = None) -> list[str]:
    """Injects LoRA adapters into model.backbone.unet and makes them the only trainable parameters.
    Returns their parameter names (relative to `model`)."""
    from peft import LoraConfig, inject_adapter_in_model
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=TARGETS)
    inject_adapter_in_model(config, model.backbone.unet, adapter_name="default")
    model.requires_grad_(False)
    names = []
    for name, p in model.named_parameters():
        if ".lora_" in name:
            p.requires_grad_(True)
            names.append(name)
    return names


def frozen_to(model: EMOModel, dtype: torch.dtype) -> int:
    """A LoRA run under fp16/bf16 mixed precision: the frozen weights of ReferenceNet and the backbone (99 % of
    the model) in `dtype`, as diffusers' LoRA scripts hold theirs; autocast computes in that dtype anyway and the
    adapters (trainable) stay fp32 for the optimizer. The VAE and audio encoder run without autograd as they are.
    Returns the bytes saved."""
    saved = 0
    for part in (model.reference_net, model.backbone):
        for p in part.parameters():
            if not p.requires_grad and p.dtype != dtype:
                before = p.data.nbytes
                p.data = p.data.to(dtype)
                saved += before - p.data.nbytes
    return saved


def lora_tensors(model: EMOModel) -> dict:
    """{module path.lora_A/B.weight: tensor} of the injected adapters (peft's adapter name dropped)."""
    from peft import get_peft_model_state_dict
    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(model.backbone.unet).items()}


def save_lora(model: EMOModel, path, rank: int, alpha: float | None, stage: int, whole_frame: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    meta = {"format": FORMAT, "version": "1", "rank": str(rank), "alpha": str(alpha or rank),
            "targets": json.dumps(TARGETS), "base_kind": model.config.kind, "stage": str(stage),
            "whole_frame": "true" if whole_frame else "false"}
    try:
        save_file(lora_tensors(model), str(tmp), metadata=meta)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def parse_lora_arg(text: str) -> tuple[str, float]:
    """'FILE' or 'FILE:STRENGTH' (the CLI's --lora) -> (file, strength)."""
    head, sep, tail = text.rpartition(":")
    if sep and head and not Path(text).exists():
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, 1.0


@torch.no_grad()
def apply_lora(model: EMOModel, file, strength: float = 1.0) -> EMOModel:
    """Merges the LoRA `file` into `model`'s backbone weights, scaled by `strength` (0 = no change, 1 = as
    trained). Changes `model` in place and returns it. A LoRA made for another architecture gives an
    EMOCheckpointError naming the first layer that does not fit."""
    file = Path(file)
    if not file.is_file():
        raise EMOCheckpointError(f"LoRA file not found: {file}: put it in ComfyUI/models/emo/loras/ (or give its path)")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several kinds for foreign/truncated files
        raise EMOCheckpointError(f"{file} is not a readable safetensors LoRA ({str(e).splitlines()[0][:120]})") from None
    if meta.get("format") != FORMAT:
        raise EMOCheckpointError(f"{file} is not an EMO LoRA (no '{FORMAT}' metadata): give a file written by "
                                 "`python -m emo_model train --lora RANK`")
    scale = strength * float(meta["alpha"]) / float(meta["rank"])
    modules = dict(model.backbone.unet.named_modules())
    for key in sorted(k for k in tensors if k.endswith(".lora_A.weight")):
        path = key[: -len(".lora_A.weight")]
        target = modules.get(path)
        a, b = tensors[key].float(), tensors.get(f"{path}.lora_B.weight")
        if target is None or b is None or not isinstance(target, torch.nn.Linear) \
                or tuple(target.weight.shape) != (b.shape[0], a.shape[1]):
            raise EMOCheckpointError(f"{file} does not fit this model (layer {path}): the LoRA was trained on "
                                     "another model; load the model it was made for")
        w = target.weight
        w.copy_((w.float() + scale * (b.float().to(w.device) @ a.to(w.device))).to(w.dtype))
    if meta.get("whole_frame") == "true" and strength != 0:
        model.config.whole_frame = True
    return model
