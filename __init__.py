"""ComfyUI entry point of the EMO node pack (V3 API: `comfy_entrypoint`, no NODE_CLASS_MAPPINGS).

ComfyUI imports this folder as a package; the nodes live in `nodes/` and the model code in `emo_model/`,
both reached with relative imports. ComfyUI has imported `folder_paths` long before it loads custom nodes;
anywhere else (pytest importing the repo root as a package, tools walking the repo) this file defines
nothing, so `python -m emo_model` and the tests never need ComfyUI.
"""
import sys

if __package__ and "folder_paths" in sys.modules:
    from .nodes.extension import comfy_entrypoint  # noqa: F401
