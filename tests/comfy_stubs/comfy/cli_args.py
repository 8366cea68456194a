"""Stand-in for `comfy.cli_args` (tests only): the parsed-arguments object with the settings the pack reads,
at ComfyUI's defaults (`--preview-method none`, `--preview-size 512`, metadata on)."""
import enum
from types import SimpleNamespace


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


args = SimpleNamespace(preview_method=LatentPreviewMethod.NoPreviews, preview_size=512, disable_metadata=False)
