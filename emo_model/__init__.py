"""EMO (Emote Portrait Alive) for ComfyUI and the command line: the model, its sampler and checkpoint loaders.

This package never imports ComfyUI.
"""
from .audio.encoder import EncodedAudio
from .config import EMOConfig
from .errors import EMOCheckpointError, EMOError, EMOInputError
from .formats.load import detect_format, load_model, make_tiny, save_native
from .models.model import EMOModel
from .sampling.guidance import SampleProgress
from .sampling.pipeline import EMOPipeline, memory_estimate
from .sampling.reference import EncodedReference, prepare_reference

__all__ = ["EMOConfig", "EMOModel", "EMOPipeline", "EncodedAudio", "EncodedReference", "SampleProgress",
           "prepare_reference", "memory_estimate", "load_model", "make_tiny", "save_native", "detect_format",
           "EMOError", "EMOInputError", "EMOCheckpointError"]
