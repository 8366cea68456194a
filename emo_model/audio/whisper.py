"""EchoMimic's audio features: multi-level whisper encoder states from an OpenAI-format checkpoint.

EchoMimic (v1) ships `audio_processor/whisper_tiny.pt`, an OpenAI-whisper checkpoint (a dict with `dims` and
`model_state_dict`, fp16). Its audio path (the vendored MuseTalk whisper code, encoder only) is reproduced here
with `transformers.WhisperEncoder` and `WhisperFeatureExtractor`; the openai-whisper package is not needed.

Pipeline (16 kHz mono waveform -> per-video-frame audio tokens):

    log_mel   [samples] -> [80, n_mel]                 100 mel frames per second, floor = global max - 8
    features  [80, n_mel] -> [n_50Hz, levels, width]   per 30 s segment: embedding + every block output (before
                                                       ln_post), 50 frames per second, levels = n_audio_layer + 1
    chunks    -> [frames, 10 * levels, width]          10 feature frames around each video frame, frame-major /
                                                       level-minor (EchoMimic's `feature2chunks`)
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..errors import EMOCheckpointError, EMOInputError
from ..formats.safe_load import load_checkpoint

SAMPLE_RATE = 16000  # Hz
FEATURE_RATE = 50  # whisper encoder frames per second
DIM_FIELDS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")

# OpenAI encoder key -> transformers.WhisperEncoder key (per block: prefix "blocks.N." -> "layers.N.")
_BLOCK_KEYS = {
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",  # no bias in either
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}


def openai_to_transformers_key(key: str) -> str:
    """`encoder.blocks.3.attn.query.weight` -> `layers.3.self_attn.q_proj.weight` (key without `encoder.`)."""
    key = key.removeprefix("encoder.")
    if key == "positional_embedding":
        return "embed_positions.weight"
    if key.startswith("ln_post."):
        return "layer_norm." + key[len("ln_post."):]
    if key.startswith("blocks."):
        _, n, rest = key.split(".", 2)
        module, _, param = rest.rpartition(".")
        return f"layers.{n}.{_BLOCK_KEYS.get(module, module)}.{param}"
    return key  # conv1.*, conv2.*


def load_plain_checkpoint(path) -> dict:
    """`formats.safe_load.load_checkpoint` (`torch.load(weights_only=True)`), with the whisper file named in the
    errors: missing, refused (pickled objects) or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise EMOCheckpointError(
            f"whisper checkpoint not found: {path}. Put EchoMimic's audio_processor/whisper_tiny.pt there "
            "(OpenAI-whisper format) or point the audio-encoder setting at it.")
    return load_checkpoint(path, fix="use EchoMimic's original audio_processor/whisper_tiny.pt (download it again)")


class WhisperAudioEncoder(nn.Module):
    """Whisper encoder (transformers) + EchoMimic's feature extraction (log-mel, per-level states, frame chunks).

    Build with `from_openai_checkpoint`. Waveforms are mono float at 16 kHz, shape [samples], values in [-1, 1].
    """

    def __init__(self, dims: dict):
        super().__init__()
        self.dims = {k: int(dims[k]) for k in DIM_FIELDS}
        d = self.dims
        config = WhisperConfig(
            num_mel_bins=d["n_mels"], d_model=d["n_audio_state"], encoder_layers=d["n_audio_layer"],
            encoder_attention_heads=d["n_audio_head"], encoder_ffn_dim=4 * d["n_audio_state"],
            max_source_positions=d["n_audio_ctx"], activation_function="gelu",
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
        self.encoder = WhisperEncoder(config).eval()
        self.segment_frames = 2 * d["n_audio_ctx"]  # mel frames per 30 s segment (3000)
        self.feature_extractor = WhisperFeatureExtractor(feature_size=d["n_mels"], sampling_rate=SAMPLE_RATE)

    @property
    def levels(self) -> int:
        return self.dims["n_audio_layer"] + 1

    @property
    def width(self) -> int:
        return self.dims["n_audio_state"]

    @classmethod
    def from_openai_checkpoint(cls, path, dtype=torch.float32) -> "WhisperAudioEncoder":
        """Load an OpenAI-whisper `.pt` ({"dims": {...}, "model_state_dict": {...}}); only `encoder.*` is used."""
        ckpt = load_plain_checkpoint(path)
        if not (isinstance(ckpt, dict) and isinstance(ckpt.get("dims"), dict)
                and isinstance(ckpt.get("model_state_dict"), dict)):
            got = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise EMOCheckpointError(
                f"{path} is not an OpenAI-whisper checkpoint: expected a dict with 'dims' and 'model_state_dict', "
                f"got {got}. Use EchoMimic's audio_processor/whisper_tiny.pt.")
        missing = [k for k in DIM_FIELDS if k not in ckpt["dims"]]
        if missing:
            raise EMOCheckpointError(f"{path}: 'dims' lacks {missing}; this is not an OpenAI-whisper checkpoint.")
        model = cls(ckpt["dims"])
        state = {openai_to_transformers_key(k): v for k, v in ckpt["model_state_dict"].items()
                 if k.startswith("encoder.")}
        expected = model.encoder.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state.items()
                 if k in expected and (not torch.is_tensor(v) or v.shape != expected[k].shape)]
        if missing or unexpected or wrong:
            raise EMOCheckpointError(
                f"{path}: encoder weights do not match its 'dims' {model.dims}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}. The file is damaged or not a whisper "
                "checkpoint; use EchoMimic's audio_processor/whisper_tiny.pt.")
        model.encoder.load_state_dict({k: v.float() for k, v in state.items()})
        return model.to(dtype)

    def log_mel(self, waveform_16k) -> torch.Tensor:
        """Whisper log-mel of the whole clip, [samples] at 16 kHz -> [n_mels, samples // 160] float32 (CPU).

        STFT n_fft 400 / hop 160 / periodic Hann / centred reflect padding, last frame dropped, power spectrum,
        slaney mel filters (= OpenAI's mel_filters.npz), log10(max(., 1e-10)), floored at the clip's global
        max - 8, then (x + 4) / 4. Computed by transformers' `WhisperFeatureExtractor` without padding or cutting.
        """
        wav = _as_waveform(waveform_16k)
        mel = self.feature_extractor(wav, sampling_rate=SAMPLE_RATE, padding="longest", truncation=False,
                                     do_normalize=False, return_tensors="pt")  # no 30 s pad / cut
        return mel["input_features"][0].float()

    @torch.inference_mode()
    def encode_levels(self, mel_segment: torch.Tensor) -> torch.Tensor:
        """[b, n_mels, 3000] normalised log-mel -> [b, 1500, levels, width]: level 0 = GELU(conv1) -> GELU(conv2)
        + positional embedding, level k = output of block k (before ln_post; unlike transformers'
        `output_hidden_states`, whose last entry is taken after the final LayerNorm)."""
        enc = self.encoder
        h = F.gelu(enc.conv1(mel_segment))
        h = F.gelu(enc.conv2(h)).permute(0, 2, 1) + enc.embed_positions.weight
        states = [h]
        for layer in enc.layers:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
            states.append(h)
        return torch.stack(states, dim=2)

    def features(self, waveform_16k) -> torch.Tensor:
        """EchoMimic's `audio2feat`: [samples] at 16 kHz -> [n_50Hz, levels, width] float32 (CPU).

        The clip's log-mel is cut into 30 s segments (3000 mel frames), each zero-padded (in the normalised
        log-mel domain) to 3000 frames and encoded; each segment keeps floor(its mel frames / 2) feature frames.
        n_50Hz = sum over segments = about samples / 320.
        """
        mel = self.log_mel(waveform_16k)
        p = next(self.encoder.parameters())
        out = []
        for start in range(0, mel.shape[1], self.segment_frames):
            seg = mel[:, start:start + self.segment_frames]
            keep = seg.shape[1] // 2
            seg = F.pad(seg, (0, self.segment_frames - seg.shape[1]))
            out.append(self.encode_levels(seg[None].to(p.device, p.dtype))[0, :keep])
        return torch.cat(out).float().cpu()

    def frame_features(self, wave16: torch.Tensor, fps, num_frames: int, frames_per_clip: int,
                       settings: dict) -> torch.Tensor:
        """`AudioEncoder.frame_features`: EchoMimic's chunks, the audio tokens of each video frame
        [num_frames, 10 x levels, width] on the CPU."""
        return self.chunks(self.features(wave16), float(fps), num_frames)

    def frame_tokens(self, features: torch.Tensor, start: int, end: int, settings: dict,
                     projection=None) -> torch.Tensor:
        """`AudioEncoder.frame_tokens`: the chunks are the tokens (EchoMimic has no audio projection)."""
        return features[start:end]

    @staticmethod
    def chunks(features: torch.Tensor, fps: float, num_frames: int | None = None) -> torch.Tensor:
        """EchoMimic's `feature2chunks`: [n_50Hz, levels, width] -> [frames, 10 * levels, width].

        Video frame i (at `fps`, fractional allowed) gets feature frames centre-4 ... centre+5, centre =
        int(i * 50 / fps), clamped to the clip; rows are frame-major, level-minor (row r = frame r // levels,
        level r % levels). frames = `num_frames` if given, else the original loop's count (which overshoots the
        video length: 50 chunks for 2 s at 24 fps).
        """
        if features.ndim != 3:
            raise EMOInputError(f"audio features must be [n_50Hz, levels, width], got shape {tuple(features.shape)}")
        idx = chunk_source_indices(features.shape[0], fps, num_frames).to(features.device)
        n, _, levels, width = (*idx.shape, *features.shape[1:])
        return features[idx].reshape(n, 10 * levels, width)


def chunk_source_indices(n_features: int, fps: float, num_frames: int | None = None) -> torch.Tensor:
    """Feature-frame indices of each chunk, [frames, 10] int64 (see `WhisperAudioEncoder.chunks`)."""
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise EMOInputError(f"fps must be a positive number of frames per second, got {fps!r}")
    if n_features < 1:
        raise EMOInputError("the audio is too short: it gives no whisper feature frames (needs at least 20 ms)")
    if num_frames is None:  # the original loop: append frame i, stop after the first i with int(i * (50/fps)) > n
        num_frames = 1
        while int((num_frames - 1) * (50.0 / fps)) <= n_features:
            num_frames += 1
    elif int(num_frames) < 1:
        raise EMOInputError(f"num_frames must be at least 1, got {num_frames}")
    centre = torch.tensor([int(i * 50 / fps) for i in range(int(num_frames))], dtype=torch.int64)
    return (centre[:, None] + torch.arange(-4, 6)).clamp(0, n_features - 1)


def _as_waveform(waveform) -> np.ndarray:
    """Validate a mono 16 kHz waveform [samples] and return it as float32 numpy."""
    wav = waveform.detach().float().cpu().numpy() if torch.is_tensor(waveform) else np.asarray(waveform, np.float32)
    if wav.ndim != 1:
        raise EMOInputError(
            f"expected a mono 16 kHz waveform of shape [samples], got shape {wav.shape}: mix down to mono and "
            "resample to 16 kHz before computing whisper features.")
    if wav.shape[0] < 400:
        raise EMOInputError(f"the audio is too short ({wav.shape[0]} samples at 16 kHz); it needs at least 25 ms.")
    if not np.isfinite(wav).all():
        raise EMOInputError("the audio contains NaN or infinite samples; check the audio file or its decoder.")
    return wav


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's encoder positional table [length, channels] (sin | cos halves)."""
    inc = math.log(10000) / (channels // 2 - 1)
    t = torch.arange(length)[:, None] * torch.exp(-inc * torch.arange(channels // 2))[None]
    return torch.cat([t.sin(), t.cos()], dim=1)


def make_tiny_whisper(path, seed: int = 0, width: int = 48, heads: int = 2, layers: int = 4) -> Path:
    """Write a tiny random OpenAI-format whisper checkpoint (fp16, encoder keys only) to `path`, for tests.

    30 s segments as the real model (n_audio_ctx 1500, 80 mels); features are [n_50Hz, layers + 1, width].
    """
    g = torch.Generator().manual_seed(seed)
    dims = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=width, n_audio_head=heads, n_audio_layer=layers,
                n_vocab=51865, n_text_ctx=448, n_text_state=width, n_text_head=heads, n_text_layer=1)
    model = WhisperAudioEncoder(dims)
    sd = {}
    for key, v in model.encoder.state_dict().items():
        if key == "embed_positions.weight":
            v = _sinusoids(*v.shape)
        elif v.ndim >= 2:
            v = torch.randn(v.shape, generator=g) / math.sqrt(v[0].numel())
        elif "layer_norm" in key and key.endswith("weight"):
            v = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            v = 0.05 * torch.randn(v.shape, generator=g)
        sd[key] = v
    back = {openai_to_transformers_key(k): k for k in _openai_encoder_keys(layers)}
    state = {back[k]: v.half() for k, v in sd.items()}
    path = Path(path)
    torch.save({"dims": dims, "model_state_dict": state}, path)
    return path


def _openai_encoder_keys(layers: int) -> list[str]:
    keys = ["encoder.positional_embedding", "encoder.ln_post.weight", "encoder.ln_post.bias"]
    keys += [f"encoder.conv{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    for n in range(layers):
        for m in _BLOCK_KEYS:
            keys += [f"encoder.blocks.{n}.{m}.{p}" for p in ("weight", "bias") if m != "attn.key" or p == "weight"]
    return keys
