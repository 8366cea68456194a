"""EMO (Emote Portrait Alive) for ComfyUI and the command line: the model, its sampler and checkpoint loaders.

This package never imports ComfyUI.
"""
from .formats.load import detect_format, load_model, make_tiny, save_native
from .config import EMOConfig
from .errors import EMOCheckpointError, EMOError, EMOInputError, EMOInterrupted
from .models.model import EMOModel
from .sampling.pipeline import EMOPipeline, EncodedAudio, EncodedReference, SampleProgress

__all__ = ["EMOConfig", "EMOModel", "EMOPipeline", "EncodedAudio", "EncodedReference", "SampleProgress",
           "load_model", "make_tiny", "save_native", "detect_format",
           "EMOError", "EMOInputError", "EMOCheckpointError", "EMOInterrupted"]
