"""Audio features for training, made by the model's own encoder through the public call `render` uses
(`EMOPipeline.encode_audio`), so training and inference cannot drift. Cached per (video, encoder) in memory and, for
a DATA folder, on disk at `audio_features_path(DATA, NAME, KEY)` (KEY = a hash of the encoder's weights and
settings), written atomically.
"""
import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..audio.wav2vec2 import Wav2VecAudioEncoder
from ..sampling.pipeline import EMOPipeline
from .data_format import audio_features_path

logger = logging.getLogger(__name__)


def encoder_key(model) -> str:
    """A short name for the model's audio encoder + the settings that shape its features."""
    h = hashlib.sha1(repr(sorted(model.config.audio_encoder.items())).encode())
    for name, t in sorted(model.audio_encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes()[:4096])  # enough to tell encoders apart
        h.update(repr(tuple(t.shape)).encode())
    return f"{model.config.audio_encoder['kind']}-{h.hexdigest()[:16]}"


class AudioFeatures:
    """features(name, waveform) -> the whole track's encoder output at the data's frame rate; rows(...) -> the
    per-frame input of the model for frames start..end-1 ([f, 2m+1, L, C] wav2vec windows, or [f, T, D] whisper
    tokens)."""

    def __init__(self, model, fps, data: Path | None):
        self.pipe = EMOPipeline(model)
        self.fps = fps
        self.data = data
        self.key = encoder_key(model)
        self.kind = model.config.audio_encoder["kind"]
        self.window = model.config.audio_encoder.get("window", 2)
        self.memory: dict = {}

    def features(self, name: str, waveform: torch.Tensor) -> torch.Tensor:
        if name in self.memory:
            return self.memory[name]
        path = audio_features_path(self.data, name, self.key) if self.data is not None else None
        if path is not None and path.is_file():
            feats = load_file(str(path))["features"]
        else:
            enc = self.pipe.encode_audio(torch.as_tensor(waveform, dtype=torch.float32)[None], 16000, self.fps,
                                         frames_per_clip=1)
            feats = enc.features.float().contiguous()
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                    save_file({"features": feats}, str(tmp))
                    os.replace(tmp, path)
                except OSError as e:  # a read-only DATA folder: keep the features in memory only
                    logger.warning("could not cache audio features at %s (%s); keeping them in memory", path, e)
        self.memory[name] = feats
        return feats

    def rows(self, name: str, waveform, start: int, end: int) -> torch.Tensor:
        feats = self.features(name, waveform)
        n = feats.shape[0]
        if self.kind == "whisper":
            idx = torch.arange(start, end).clamp(max=n - 1)
            return feats[idx]
        s0, e0 = min(start, n - 1), min(max(end, start + 1), n)
        win = Wav2VecAudioEncoder.window(feats, self.window, s0, e0)
        return win[(torch.arange(start, end).clamp(max=n - 1) - s0)]
