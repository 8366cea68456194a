"""Reading checkpoint files safely: safetensors, or pickles through `torch.load(weights_only=True)` only."""
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import EMOCheckpointError

FIX = "download it again from the model's official page (or use a .safetensors version of it)"


def load_tensors(path) -> dict:
    """A flat {key: tensor} state dict from a .safetensors/.pth/.bin/.ckpt/.pt file (on the CPU).

    Pickled files are read with `load_checkpoint` (`weights_only=True`). Truncated, unsafe or foreign files give a
    one-line EMOCheckpointError naming the file and the fix."""
    path = Path(path)
    if path.suffix == ".safetensors":
        _check_file(path)
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise EMOCheckpointError(f"{path} is not a readable safetensors file ({_first_line(e)}); it may be "
                                     f"truncated: {FIX}") from e
    sd = load_checkpoint(path)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise EMOCheckpointError(f"{path} holds a {type(sd).__name__}, not a state dict of named tensors: it is not "
                                 f"a model weights file; {FIX}")
    other = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if other:
        raise EMOCheckpointError(f"{path} is not a plain state dict of tensors ({len(other)} entries are not tensors, "
                                 f"e.g. {other[0]!r}: {type(sd[other[0]]).__name__}): {FIX}")
    return dict(sd)


def load_checkpoint(path, fix: str = FIX):
    """What a .pth/.bin/.ckpt/.pt pickle holds (tensors, numbers, strings and plain containers), read with
    `torch.load(weights_only=True)` on the CPU, memory-mapped when the file allows. The pack's only torch.load:
    a file holding other Python objects is refused (loading them could run code); `fix` ends the error messages."""
    path = Path(path)
    _check_file(path, fix)
    try:
        if _compressed_zip(path):  # torch's mmap would hand out the deflated bytes as tensor data, unchecked
            return torch.load(str(path), map_location="cpu", weights_only=True)
        try:  # memory-mapped: tensors are read from the file when used (recognising a file costs no full read)
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)  # pre-zip (torch < 1.6) format
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError, ... for bad files
        if isinstance(e, pickle.UnpicklingError) and "weights only load failed" in str(e).lower():
            raise EMOCheckpointError(
                f"refused to load {path}: it holds Python objects that are not tensors ({_unsafe_global(e)}), and "
                f"such pickles are refused for safety (loading them can run code). Use the official file, not a "
                f"re-saved one: {fix}") from e
        raise EMOCheckpointError(f"{path} could not be read ({_first_line(e)}): the file is probably truncated or "
                                 f"not a PyTorch checkpoint; {fix}") from e


def _compressed_zip(path: Path) -> bool:
    """True for a torch zip checkpoint whose records are compressed (torch.save stores them uncompressed; a file
    repacked with deflate still loads, but only without mmap: mmap=True reads the compressed bytes as the tensors)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(i.compress_type != zipfile.ZIP_STORED for i in z.infolist())
    except (zipfile.BadZipFile, OSError):
        return False  # the legacy (pre-zip) pickle format, or unreadable: torch.load says which


def _check_file(path: Path, fix: str = FIX):
    if not path.is_file():
        raise EMOCheckpointError(f"model file not found: {path}: put it there, or pick the right file/folder")
    if path.stat().st_size == 0:
        raise EMOCheckpointError(f"{path} is empty (0 bytes): the download did not finish; {fix}")


def _first_line(e: Exception) -> str:
    """The first sentence of an exception message, colour codes removed, at most 160 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    text = text.splitlines()[0].split(". ")[0][:160] if text else ""
    return text if len(text) >= 20 else f"{type(e).__name__} {text}".strip()


def _unsafe_global(e: Exception) -> str:
    """The refused global from torch's 'Unsupported global: GLOBAL x.y ...' line, else its WeightsUnpickler line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return m.group(1)
    m = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    return m.group(1).strip()[:120] if m else "unsupported content"


def strip_prefix(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
