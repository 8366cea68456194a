"""Load EMO Models: a checkpoint from models/emo/ -> EMO_MODEL (model + pipeline + ModelPatcher)."""
import os

import torch

import folder_paths

from .. import emo_model
from ..emo_model.errors import EMOCheckpointError
from .comfy_bridge import (CATEGORY, CHECKPOINT_HINT, LORA_SUBFOLDER, EMOBundle, EmoModel, checkpoint_path, emo_roots,
                           io, list_checkpoints, model_management)

PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FROM_CHECKPOINT = "from checkpoint"


def _audio_encoders() -> list[str]:
    """Top-level folders (HF layout) and files in ComfyUI's audio_encoders folders."""
    names = set()
    for root in folder_paths.get_folder_paths("audio_encoders"):
        if os.path.isdir(root):
            names.update(e for e in os.listdir(root) if not e.startswith("."))
    return sorted(names)


NO_LORA = "none"


def _loras() -> list[str]:
    """LoRA files in models/emo/loras/ and in ComfyUI's models/loras/."""
    names = set()
    for root in emo_roots():
        d = os.path.join(root, LORA_SUBFOLDER)
        if os.path.isdir(d):
            names.update(e for e in os.listdir(d) if e.endswith(".safetensors"))
    names.update(n for n in folder_paths.get_filename_list("loras") if n.endswith(".safetensors"))
    return sorted(names)


def _lora_path(name: str) -> str:
    for root in emo_roots():
        full = os.path.join(root, LORA_SUBFOLDER, name)
        if os.path.normpath(name) == name and not os.path.isabs(name) and os.path.isfile(full):
            return full
    full = folder_paths.get_full_path("loras", name)
    if full is None:
        raise EMOCheckpointError(f"LoRA '{name}' not found in models/emo/{LORA_SUBFOLDER}/ or models/loras/: put it "
                                 f"there, or choose '{NO_LORA}'")
    return full


# EchoMimic file sets: option -> (pose, accelerated) for load_model (None: the loader's default)
ECHOMIMIC_SETS = {"auto": (None, None), "audio": (False, False), "audio accelerated": (False, True),
                  "pose": (True, False), "pose accelerated": (True, True)}


def _core_file(folder: str, name: str) -> str | None:
    if name == FROM_CHECKPOINT:
        return None
    for root in folder_paths.get_folder_paths(folder):
        full = os.path.join(root, name)
        if os.path.normpath(name) == name and not os.path.isabs(name) and os.path.exists(full):
            return full
    raise EMOCheckpointError(f"{folder} file '{name}' not found in {', '.join(folder_paths.get_folder_paths(folder))}: "
                             f"put it in ComfyUI/models/{folder}/, or choose '{FROM_CHECKPOINT}'")


class EMOLoadModels(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMOLoadModels",
            display_name="Load EMO Models",
            category=CATEGORY,
            description="Loads an EMO talking-head checkpoint (native EMO, Hallo, Hallo2, EchoMimic v1 or "
                        "EchoMimic v2, recognised automatically) from ComfyUI/models/emo/. The weights stay on the "
                        "offload device until a "
                        "node needs them; ComfyUI's model management moves them.",
            inputs=[
                io.Combo.Input("checkpoint", options=list_checkpoints(),
                               tooltip="A checkpoint folder or file in ComfyUI/models/emo/ (or an `emo:` path in "
                                       "extra_model_paths.yaml). Native: a folder with config.json; Hallo: net.pth "
                                       "or its folder; Hallo2: its pretrained_models folder (hallo2/net.pth) or "
                                       "that file; EchoMimic: its folder (v2: the one with pose_encoder.pth)."),
                io.Combo.Input("vae", options=[FROM_CHECKPOINT, *folder_paths.get_filename_list("vae")],
                               default=FROM_CHECKPOINT,
                               tooltip="The VAE (sd-vae-ft-mse): 'from checkpoint' uses the one inside or beside the "
                                       "checkpoint; or pick a file from ComfyUI/models/vae/."),
                io.Combo.Input("audio_encoder", options=[FROM_CHECKPOINT, *_audio_encoders()],
                               default=FROM_CHECKPOINT,
                               tooltip="The audio encoder (wav2vec2-base-960h folder, or whisper-tiny for "
                                       "EchoMimic): 'from checkpoint' uses the one inside or beside the checkpoint; "
                                       "or pick one from ComfyUI/models/audio_encoders/."),
                io.Combo.Input("precision", options=["auto", "fp16", "bf16", "fp32"], default="auto",
                               tooltip="Weight and compute precision. auto: what ComfyUI picks for this device "
                                       "(fp16/bf16 on most GPUs, fp32 on CPU)."),
                io.Combo.Input("device", options=["auto", "cpu"], default="auto",
                               tooltip="auto: ComfyUI's main device (the GPU when there is one). cpu: run on the "
                                       "CPU (slow, for testing)."),
                io.Combo.Input("echomimic_set", options=list(ECHOMIMIC_SETS), default="auto", optional=True,
                               tooltip="EchoMimic folders only (others ignore it): which set of files to load when the "
                                       "folder holds several. audio: denoising_unet.pth ... (30 steps, CFG 2.5); "
                                       "accelerated: the _acc files (6 steps, no CFG); pose: the _pose files (needs "
                                       "pose frames, see EMO Load Pose). auto: the audio set when present. "
                                       "EchoMimic v2 folders: auto / audio = its standard set, accelerated = its _acc "
                                       "pair; it always needs hand-pose frames."),
                io.Combo.Input("lora", options=[NO_LORA, *_loras()], default=NO_LORA, optional=True,
                               tooltip="A LoRA trained with `python -m emo_model train --lora RANK` (e.g. one "
                                       "character), from models/emo/loras/ or models/loras/; merged into the weights."),
                io.Float.Input("lora_strength", default=1.0, min=-2.0, max=2.0, step=0.05, optional=True,
                               tooltip="How strongly the LoRA applies: 0 = not at all, 1 = as trained."),
            ],
            outputs=[EmoModel.Output(display_name="emo_model", tooltip="The loaded model for the other EMO nodes.")],
        )

    @classmethod
    def validate_inputs(cls, checkpoint=None):
        if checkpoint is None:  # linked (e.g. from EMO Download Models): checked when the node runs
            return True
        if checkpoint not in list_checkpoints():
            return (f"EMO checkpoint '{checkpoint}' not found in {', '.join(emo_roots())}: {CHECKPOINT_HINT}")
        return True

    @classmethod
    def execute(cls, checkpoint, precision, device, vae=FROM_CHECKPOINT, audio_encoder=FROM_CHECKPOINT,
                echomimic_set="auto", lora=NO_LORA, lora_strength=1.0):
        path = checkpoint_path(checkpoint)
        vae_path, audio_path = _core_file("vae", vae), _core_file("audio_encoders", audio_encoder)
        if device == "cpu":
            load_device = offload_device = torch.device("cpu")
        else:
            load_device, offload_device = model_management.get_torch_device(), model_management.unet_offload_device()
        if precision == "auto":
            dtype = model_management.unet_dtype(device=load_device,
                                                supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
        else:
            dtype = PRECISIONS[precision]
        pose, accelerated = ECHOMIMIC_SETS.get(echomimic_set, (None, None))
        model = emo_model.load_model(path, device=offload_device, dtype=dtype, vae_path=vae_path,
                                     audio_encoder_path=audio_path, accelerated=accelerated, pose=pose)
        if lora and lora != NO_LORA:
            from ..emo_model.train.lora import apply_lora
            apply_lora(model, _lora_path(lora), lora_strength)
        pipeline = emo_model.EMOPipeline(model)
        return io.NodeOutput(EMOBundle.wrap(checkpoint, model, pipeline, load_device, offload_device, dtype))
