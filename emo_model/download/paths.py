"""Where models are installed: DEST/NAME/, and the default DEST.

Default DEST, first match:
1. ComfyUI is loaded (the node, or a script run by ComfyUI): the first `emo` folder of folder_paths
   (ComfyUI/models/emo/, or the `emo:` entry of extra_model_paths.yaml).
2. $EMO_MODELS_DIR.
3. This pack sits in ComfyUI/custom_nodes/: that ComfyUI's models/emo/.
4. The current folder is a ComfyUI folder (folder_paths.py and models/ in it): its models/emo/.
5. Otherwise ./models/emo/ in the current folder (visible, never a hidden cache).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

EMO_FOLDER = "emo"
RECORD_DIR = ".emo-download"            # inside DEST/NAME/: the install record and the partial files
RECORD = "record.json"


def _is_comfy_root(p: Path) -> bool:
    return (p / "folder_paths.py").is_file() and (p / "comfy").is_dir()


def default_dest() -> Path:
    fp = sys.modules.get("folder_paths")
    if fp is not None and hasattr(fp, "get_folder_paths"):
        try:
            roots = fp.get_folder_paths(EMO_FOLDER)
        except KeyError:
            roots = []
        return Path(roots[0]) if roots else Path(fp.models_dir) / EMO_FOLDER
    if os.environ.get("EMO_MODELS_DIR"):
        return Path(os.environ["EMO_MODELS_DIR"]).expanduser()
    pack = Path(__file__).resolve().parents[2]  # the repository root (custom_nodes/<pack>/ in ComfyUI)
    if pack.parent.name == "custom_nodes" and _is_comfy_root(pack.parent.parent):
        return pack.parent.parent / "models" / EMO_FOLDER
    cwd = Path.cwd()
    if _is_comfy_root(cwd):
        return cwd / "models" / EMO_FOLDER
    return cwd / "models" / EMO_FOLDER


def staging_dir(dest: Path, name: str) -> Path:
    """Where a first download of NAME is assembled: hidden (loaders and Load EMO Models skip dot-folders), renamed
    to DEST/NAME only when every file checks out."""
    return dest / f".{name}.download"
