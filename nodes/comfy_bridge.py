"""What the EMO nodes share: the ComfyUI API (versioned, with fallback), socket types, model folders,
the model bundle, and the model-management hooks.

Socket values: EMO_MODEL -> `EMOBundle`; EMO_AUDIO -> `emo_model.EncodedAudio`;
EMO_REFERENCE -> `emo_model.EncodedReference`; EMO_CROP_INFO -> `CropPlacement` (where the face crop sits in
the original picture, and that picture).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

try:  # the versioned alias keeps working when `latest` moves (comfyui.md §1)
    from comfy_api.v0_0_2 import ComfyExtension, InputImpl, Types, io, ui
except ImportError:  # a ComfyUI without that version (older, or one that dropped it): the same names from `latest`
    from comfy_api.latest import ComfyExtension, InputImpl, Types, io, ui

import comfy.model_management as model_management
import comfy.model_patcher
import folder_paths

from ..emo_model.errors import EMOCheckpointError, EMOInputError

CATEGORY = "EMO"
EMO_FOLDER = "emo"
FACE_DETECTOR_SUBFOLDER = "face_detectors"
LORA_SUBFOLDER = "loras"  # models/emo/loras/: LoRAs from `python -m emo_model train --lora`
FACE_ANALYSIS_SUBFOLDER = "face_analysis"  # Hallo's identity files (glintr100.onnx, scrfd_10g_bnkps.onnx)

EmoModel = io.Custom("EMO_MODEL")
EmoAudio = io.Custom("EMO_AUDIO")
EmoReference = io.Custom("EMO_REFERENCE")
EmoCropInfo = io.Custom("EMO_CROP_INFO")

# models/emo/ (plus whatever extra_model_paths.yaml lists under `emo:`); idempotent, keeps yaml entries.
folder_paths.add_model_folder_path(EMO_FOLDER, os.path.join(folder_paths.models_dir, EMO_FOLDER))

DOWNLOAD_HINT = ("queue the EMO Download Models node (connect its output to Load EMO Models' checkpoint), or run "
                 "`python -m emo_model download hallo` (`--list` shows every model) in the pack's folder")
CHECKPOINT_HINT = ("put an EMO checkpoint in ComfyUI/models/emo/: a native checkpoint folder (config.json + one "
                   ".safetensors per component), Hallo's net.pth or its folder, or an EchoMimic folder "
                   "(other locations: an `emo:` entry in extra_model_paths.yaml); to fetch one: " + DOWNLOAD_HINT)


def emo_roots() -> list[str]:
    return folder_paths.get_folder_paths(EMO_FOLDER)


def list_checkpoints() -> list[str]:
    """Top-level entries of every emo folder: checkpoint folders and single model files."""
    names = set()
    for root in emo_roots():
        if not os.path.isdir(root):
            continue
        for entry in os.listdir(root):
            full = os.path.join(root, entry)
            if entry.startswith(".") or entry in (FACE_DETECTOR_SUBFOLDER, FACE_ANALYSIS_SUBFOLDER, LORA_SUBFOLDER):
                continue
            if os.path.isdir(full) or os.path.splitext(entry)[1].lower() in folder_paths.supported_pt_extensions:
                names.add(entry)
    return sorted(names)


def checkpoint_path(name: str) -> str:
    for root in emo_roots():
        full = os.path.join(root, name)
        if name and os.path.normpath(name) == name and os.path.exists(full):
            return full
    raise EMOCheckpointError(f"EMO checkpoint '{name}' not found in {', '.join(emo_roots())}: {CHECKPOINT_HINT}")


def detector_folders() -> list[str]:
    return [os.path.join(r, FACE_DETECTOR_SUBFOLDER) for r in emo_roots()]


class _Patchable(nn.Module):
    """What ComfyUI's ModelPatcher manages: the EMOModel as a submodule, plus the plain `device` attribute
    the patcher writes (EMOModel.device is a read-only property)."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        self.emo = model
        self.device = device


@dataclass
class EMOBundle:
    """EMO_MODEL socket: the loaded model, its pipeline, and the ModelPatcher that moves it."""
    name: str
    model: object          # emo_model.EMOModel (nn.Module)
    pipeline: object       # emo_model.EMOPipeline
    patcher: object        # comfy.model_patcher.ModelPatcher
    dtype: torch.dtype

    @classmethod
    def wrap(cls, name, model, pipeline, load_device, offload_device, dtype) -> "EMOBundle":
        patcher = comfy.model_patcher.ModelPatcher(_Patchable(model, offload_device), load_device=load_device,
                                                   offload_device=offload_device)
        return cls(name, model, pipeline, patcher, dtype)

    def to_compute_device(self, memory_required: int = 0) -> None:
        """Load onto the compute device through ComfyUI: other models are offloaded when memory is short, and
        ours are offloaded the same way when a later node needs the room. Full load: our layers are plain torch
        modules, which cannot run partly offloaded."""
        model_management.load_models_gpu([self.patcher], memory_required=memory_required, force_full_load=True)


def first_image(image: torch.Tensor, index: int, what: str) -> torch.Tensor:
    """IMAGE `[B, H, W, C]` -> one `[H, W, 3]` float picture; negative index counts from the end."""
    if image is None:
        raise EMOInputError(f"{what}: no image connected: connect a Load Image (or video frames) output")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise EMOInputError(f"{what}: expected an IMAGE [batch, height, width, 3], got shape {list(image.shape)}")
    b = image.shape[0]
    if not -b <= index < b:
        raise EMOInputError(f"{what}: frame_index {index} is outside the batch of {b} image(s): use 0..{b - 1} "
                            "(or -1 for the last)")
    return image[index, ..., :3].float().cpu()
