"""Audio features of prepared clips, made by the model's own encoder code (`EMOPipeline.encode_audio`, the call
`render` makes), cached in DATA/clips/NAME/features/KEY.safetensors so training and inference cannot drift.

KEY (`feature_key`) = the encoder kind + a hash of the model config's `audio_encoder` entry and the fps: a model with
another encoder gets its own cache. The file holds "features" (wav2vec2: [F, L, C] per video frame, all layers)
or "stored" (whisper-style tokens [F_pad, T, D]), exactly as `EncodedAudio` carries them, plus "num_frames" [1].
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import data_format as fmt


def feature_key(config, fps) -> str:
    enc = dict(config.audio_encoder)
    digest = hashlib.sha1(json.dumps({"enc": enc, "fps": str(fps)}, sort_keys=True, default=str).encode()).hexdigest()
    return f"{enc.get('kind', 'audio')}-{digest[:10]}"


def clip_audio_features(pipe, data, entry: fmt.ClipEntry, waveform: torch.Tensor | None = None) -> dict:
    """{"features" or "stored": tensor, "num_frames": int} for clip `entry`, from the cache or computed and cached.
    waveform: the clip's 16 kHz track [samples] when already loaded."""
    path = fmt.audio_features_path(data, entry.name, feature_key(pipe.config, entry.fps))
    if path.is_file():
        t = load_file(str(path))
        return {k: (int(v[0]) if k == "num_frames" else v) for k, v in t.items()}
    if waveform is None:
        waveform = load_file(str(Path(data) / entry.audio))["waveform"]
    enc = pipe.encode_audio(waveform[None].float(), fmt.SAMPLE_RATE, entry.fps)
    out = {"features": enc.features} if enc.features is not None else {"stored": enc.stored}
    out = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fmt.temp_path(path)
    save_file({**out, "num_frames": torch.tensor([enc.num_frames])}, str(tmp))
    tmp.replace(path)
    return {**out, "num_frames": enc.num_frames}


def cache_audio_features(data, model, device: str = "cpu") -> int:
    """Compute the features of every clip in DATA with `model` (path or loaded EMOModel); returns clips done."""
    from tqdm import tqdm

    from ..formats.load import load_model
    from ..sampling.pipeline import EMOPipeline
    if isinstance(model, (str, Path)):
        model = load_model(str(model), device=device, dtype=torch.float32)
    pipe = EMOPipeline(model)
    entries = fmt.read_index(data)
    for e in tqdm(entries, desc="audio features", unit="video", dynamic_ncols=True):
        clip_audio_features(pipe, data, e)
    return len(entries)
