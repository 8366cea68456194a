"""ComfyUI adapters for emo_model (V3 schema). Imported only as a subpackage of the pack (relative imports),
so the folder name never meets ComfyUI's own top-level `nodes` module."""
