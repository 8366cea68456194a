"""Reading checkpoint files safely: safetensors, or pickles through `torch.load(weights_only=True)` only."""
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import EMOCheckpointError


def load_tensors(path) -> dict:
    """A flat {key: tensor} state dict from a .safetensors/.pth/.bin/.ckpt/.pt file (on the CPU).

    Pickled files are read with `weights_only=True`: a file holding anything but tensors and plain containers is
    refused. Truncated or foreign files give an EMOCheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise EMOCheckpointError(f"model file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise EMOCheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated: "
                                     "download it again") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise EMOCheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors ({str(e).splitlines()[0][:200]}). "
            "Only plain tensor checkpoints are loaded; get the file from the model's official page") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise EMOCheckpointError(f"{path} could not be read ({str(e).splitlines()[0][:200]}); the file is probably "
                                 "truncated or not a PyTorch checkpoint: download it again") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise EMOCheckpointError(f"{path} is not a state dict of tensors")
    return dict(sd)


def strip_prefix(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
