"""Stand-in for `comfy.model_management` on a CPU-only machine (tests only).

Same function names and signatures as ComfyUI 0.3.64; `load_models_gpu` moves each patcher's model to its
load device and keeps a list of loaded patchers, like the real one does (without partial loading).
"""
import threading

import torch


class InterruptProcessingException(Exception):
    pass


_interrupt = False
_mutex = threading.RLock()
current_loaded_models = []  # ModelPatcher objects, most recent first
load_calls = []  # (patchers, memory_required, force_full_load) per call; lets tests see what was requested


def get_torch_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def vae_device():
    return torch.device("cpu")


def vae_offload_device():
    return torch.device("cpu")


def unet_dtype(device=None, model_params=0, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32], weight_dtype=None):
    return torch.float32


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False


def is_device_cpu(device):
    return torch.device(device).type == "cpu"


def get_free_memory(dev=None, torch_free_too=False):
    return 16 * 1024 ** 3


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False):
    load_calls.append((list(models), memory_required, force_full_load))
    for m in models:
        m.model.to(m.load_device)
        if m in current_loaded_models:
            current_loaded_models.remove(m)
        current_loaded_models.insert(0, m)


def load_model_gpu(model):
    return load_models_gpu([model])


def free_memory(memory_required, device, keep_loaded=[]):
    unloaded = []
    for m in list(current_loaded_models):
        if m not in keep_loaded:
            m.model.to(m.offload_device)
            current_loaded_models.remove(m)
            unloaded.append(m)
    return unloaded


def unload_all_models():
    free_memory(1e30, get_torch_device())


def soft_empty_cache(force=False):
    pass


def interrupt_current_processing(value=True):
    global _interrupt
    with _mutex:
        _interrupt = value


def processing_interrupted():
    with _mutex:
        return _interrupt


def throw_exception_if_processing_interrupted():
    global _interrupt
    with _mutex:
        if _interrupt:
            _interrupt = False
            raise InterruptProcessingException()
