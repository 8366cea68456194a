"""wav2vec2 audio encoder: waveform -> per-video-frame features of every transformer layer.

Exact to Hallo's audio path (`AudioProcessor.preprocess` + `Wav2VecModel.forward`, fudan-generative-vision/hallo):

1. Wav2Vec2FeatureExtractor normalisation of the real samples: (x - mean) / sqrt(var + 1e-7), population variance.
2. Frame count F = ceil(samples / 16000 * fps); zero padding of (pad_multiple - F % pad_multiple) * floor(16000 / fps)
   samples so F becomes a multiple of `pad_multiple` (Hallo: 16, its clip length).
3. The CNN feature extractor (50 Hz), linearly interpolated along time (align_corners=True) to F frames.
4. Feature projection + transformer encoder; the outputs of all layers (`hidden_states[1:]`) -> [F, layers, dim].

The model itself is transformers' `Wav2Vec2Model`; only the steps between its submodules are written here.
Long tracks are encoded in overlapping chunks (see `Wav2VecAudioEncoder.encode`), or, for Hallo2, in independent
60 s pieces as its script cuts them (`Wav2VecAudioEncoder.encode_pieces`).
"""

import json
import logging
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from einops import rearrange
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from ..errors import EMOCheckpointError, EMOInputError
from ..formats.safe_load import load_tensors
from ..media.audio import count_frames, fps_fraction

logger = logging.getLogger(__name__)
SAMPLE_RATE = 16000  # Hz, the only rate wav2vec2 was trained on
_WN = "encoder.pos_conv_embed.conv."  # the weight-normed positional conv


class Wav2VecAudioEncoder(nn.Module):
    """Hallo's wav2vec2 feature path around a transformers `Wav2Vec2Model` (kept in eval mode).

    Layout letters: F video frames, L transformer layers, C hidden size (768 for wav2vec2-base), T CNN frames (50 Hz).
    """

    def __init__(self, model: Wav2Vec2Model, feature_extractor: Wav2Vec2FeatureExtractor | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor or Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True,
            return_attention_mask=False)
        # shortest input (samples) for which the CNN yields one frame: 400 (25 ms) for wav2vec2-base
        length = 1
        for k, s in zip(reversed(model.config.conv_kernel), reversed(model.config.conv_stride)):
            length = (length - 1) * s + k
        self.min_samples = length

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_folder(cls, path, dtype: torch.dtype = torch.float32) -> "Wav2VecAudioEncoder":
        """Load a local folder in the Hugging Face layout (e.g. Hallo's `wav2vec/wav2vec2-base-960h`).

        The folder holds `config.json` and `model.safetensors` (or `pytorch_model.bin`, read with weights_only=True);
        `preprocessor_config.json` is optional. The weights may be a `Wav2Vec2Model` state dict or a
        `Wav2Vec2ForCTC`/`Wav2Vec2ForPreTraining` one (keys prefixed `wav2vec2.`; heads are dropped), with the
        positional conv's weight norm stored as `weight_g`/`weight_v` (the published files),
        `parametrizations.weight.original0/1` or a plain `weight`. Never touches the network.
        """
        folder = Path(path)
        fix = "point the audio-encoder setting at a wav2vec2 folder such as wav2vec/wav2vec2-base-960h"
        if not folder.is_dir():
            raise EMOCheckpointError(f"wav2vec2 folder not found: {folder}; {fix}")
        if not (folder / "config.json").is_file():
            raise EMOCheckpointError(f"{folder} has no config.json, so it is not a wav2vec2 model folder; {fix}")
        try:
            config = Wav2Vec2Config.from_json_file(str(folder / "config.json"))
        except (OSError, ValueError) as e:
            raise EMOCheckpointError(f"cannot read {folder / 'config.json'}: {e}; {fix}") from e
        if getattr(config, "model_type", None) != "wav2vec2":
            raise EMOCheckpointError(
                f"{folder / 'config.json'} describes a {config.model_type!r} model, not wav2vec2; {fix}")
        config._attn_implementation = "eager"  # Hallo ran transformers 4.39's eager attention

        weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
        if weights is None:
            raise EMOCheckpointError(
                f"{folder} has no weights: expected model.safetensors or pytorch_model.bin beside config.json; {fix}")
        state = load_tensors(weights)  # safetensors, or torch.load(weights_only=True)

        model = Wav2Vec2Model(config)
        state = _convert_state_dict(state, model.state_dict().keys(), folder)
        model.load_state_dict(state, strict=False)  # every key checked by _convert_state_dict

        feature_extractor = None
        if (folder / "preprocessor_config.json").is_file():
            feature_extractor = Wav2Vec2FeatureExtractor.from_json_file(str(folder / "preprocessor_config.json"))
            if feature_extractor.sampling_rate != SAMPLE_RATE:
                raise EMOCheckpointError(
                    f"{folder / 'preprocessor_config.json'} says sampling_rate {feature_extractor.sampling_rate}; "
                    f"only {SAMPLE_RATE} Hz wav2vec2 models are supported")
        return cls(model.to(dtype), feature_extractor)

    # ------------------------------------------------------------------ frame arithmetic

    @staticmethod
    def frame_count(num_samples: int, fps, pad_multiple: int = 1) -> int:
        """Video frames for `num_samples` at 16 kHz (`media.audio.count_frames`: ceil(num_samples / 16000 * fps),
        exact, 29.97 read as 30000/1001), rounded up to a multiple of `pad_multiple`. With pad_multiple=1 this is the
        true frame count callers trim the video to. (Hallo's float expression overshoots by one frame for a few
        exact multiples of 640 samples, e.g. 4480 samples at 25 fps gives 8 there instead of 7.)
        """
        if int(pad_multiple) != pad_multiple or pad_multiple < 1:
            raise EMOInputError(f"pad_multiple must be a positive integer, got {pad_multiple!r}")
        frames = count_frames(num_samples, SAMPLE_RATE, fps)
        return frames + (-frames) % int(pad_multiple)

    # ------------------------------------------------------------------ the steps

    def normalize(self, waveform: np.ndarray) -> np.ndarray:
        """Wav2Vec2FeatureExtractor on a float32 mono 16 kHz array [samples] -> input values [samples]."""
        out = self.feature_extractor(waveform, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def cnn_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """CNN feature extractor: input values [b, samples] -> [b, T, conv_dim] (T about 50 per second)."""
        p = next(self.model.parameters())
        return self.model.feature_extractor(input_values.to(p.device, p.dtype)).transpose(1, 2)

    @staticmethod
    def interpolate(features: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Linear interpolation along time, align_corners=True (Hallo's `linear_interpolation`):
        [b, T, c] -> [b, F, c]."""
        return F.interpolate(features.transpose(1, 2), size=num_frames, mode="linear",
                             align_corners=True).transpose(1, 2)

    def transformer(self, features: torch.Tensor) -> torch.Tensor:
        """Feature projection + transformer encoder: [b, F, conv_dim] -> outputs of all layers [b, F, L, C].

        Hooks on the layers, as transformers itself records `hidden_states` since 5.x: there the encoder alone no
        longer returns them (only `Wav2Vec2Model.forward` does, which cannot take the interpolated features)."""
        hidden, _ = self.model.feature_projection(features)
        states = []
        hooks = [layer.register_forward_hook(
            lambda _m, _i, out: states.append(out[0] if isinstance(out, tuple) else out))
            for layer in self.model.encoder.layers]
        try:
            last = self.model.encoder(hidden).last_hidden_state
        finally:
            for h in hooks:
                h.remove()
        states[-1] = last  # differs from the last layer's output only in stable-layer-norm (large) models
        return torch.stack(states, dim=2)

    @torch.no_grad()
    def forward(self, input_values: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Hallo's `Wav2VecModel.forward` + `hidden_states[1:]`: input values [b, samples] -> [b, F, L, C]."""
        return self.transformer(self.interpolate(self.cnn_features(input_values), num_frames))

    # ------------------------------------------------------------------ the whole track

    @torch.no_grad()
    def encode(self, waveform_16k: torch.Tensor, fps, pad_multiple: int = 1,
               chunk_seconds: float = 30.0, context_seconds: float = 5.0) -> torch.Tensor:
        """Mono 16 kHz waveform [samples] (float, about -1..1) -> features [F, L, C] on the CPU, F the PADDED frame
        count `frame_count(samples, fps, pad_multiple)`. Frames past `frame_count(samples, fps)` see zero-padded
        audio; callers window the padded features (the +-m clamp uses the padded length, as Hallo does) and then
        trim tokens/video to the true count.

        A track of at most `chunk_seconds` (after padding) is encoded in one pass, bit for bit Hallo's result.
        A longer one (wav2vec2's self-attention is global, so one pass would cost memory quadratic in the length and
        let minutes-away audio change a frame) is cut on a fixed grid of chunk_seconds * fps frames; each chunk is
        encoded with `context_seconds` of extra audio on each side (the last chunk's window reaches back so it is
        never shorter than chunk + context) and only its own frames are kept. Each window goes through the same
        steps as a whole track: normalisation over the window's real samples (per chunk, not per track), zero
        padding past the end of the track, interpolation of its CNN features to its frame count. So a frame's
        features depend only on audio within chunk_seconds + context_seconds of it. The frame count and the
        padding are those of the whole track.
        """
        wave = self._check_waveform(waveform_16k)
        fps_q = fps_fraction(fps)
        if not chunk_seconds > 0 or not context_seconds >= 0:
            raise EMOInputError(f"chunk_seconds must be > 0 and context_seconds >= 0, "
                                f"got {chunk_seconds} and {context_seconds}")
        n, frames = wave.shape[0], self.frame_count(wave.shape[0], fps_q, pad_multiple)
        total = self._padded_samples(n, fps_q, frames)
        chunk = max(1, round(chunk_seconds * fps_q))
        context = round(context_seconds * fps_q)
        spf = SAMPLE_RATE / fps_q  # samples per frame (exact)

        def bound(j):  # first sample of frame j within the padded track
            return total if j >= frames else min(total, math.floor(j * spf + Fraction(1, 2)))

        if frames <= chunk:
            return self._encode_window(wave, 0, total, frames)
        out = []
        for a in range(0, frames, chunk):
            b = min(a + chunk, frames)
            end = min(frames, b + context)
            start = max(0, min(a - context, end - chunk - context))
            out.append(self._encode_window(wave, bound(start), bound(end), end - start)[a - start:b - start])
        return torch.cat(out)

    @torch.no_grad()
    def encode_pieces(self, waveform_16k: torch.Tensor, fps, pad_multiple: int = 1,
                      piece_seconds: float = 60.0) -> torch.Tensor:
        """Hallo2's long-audio path (scripts/inference_long.py `cut_audio` + `AudioProcessor.preprocess` per piece):
        mono 16 kHz waveform [samples] -> features [F, L, C] on the CPU.

        The track is cut into pieces of `piece_seconds` (the last one shorter); each piece is normalised and encoded
        on its own (wav2vec2 context and normalisation restart at every border; no overlap), with its own frame count
        F_i = ceil(samples_i / 16000 x fps) (exact, as `frame_count`: Hallo2's float expression is one more for a few
        exact multiples of 640 samples), and the features are concatenated: F = sum F_i before padding. Only the
        last piece is zero-padded, by (pad_multiple - F % pad_multiple) frames of floor(16000 / fps) samples, and only
        when its OWN F_i is not a multiple of pad_multiple (Hallo2's arithmetic, kept for parity): so a total already
        a multiple of pad_multiple gets pad_multiple frames more, and a last piece whose F_i is a multiple gets none
        (F is then not a whole number of clips; the sampler repeats the last frame's tokens past it, where Hallo2's
        script drops those frames). A track of at most one piece is `encode`'s single pass. A last piece too short for
        wav2vec2 even with its padding is encoded with the piece before it (said in the log).
        """
        wave = self._check_waveform(waveform_16k)
        fps_q = fps_fraction(fps)
        step = round(piece_seconds * SAMPLE_RATE)
        if step < self.min_samples:
            raise EMOInputError(f"audio pieces of {piece_seconds:g} s are shorter than wav2vec2's "
                                f"{1000 * self.min_samples / SAMPLE_RATE:.0f} ms: use longer pieces")
        bounds = [(a, min(a + step, wave.shape[0])) for a in range(0, wave.shape[0], step)]
        pad = int(pad_multiple)
        counts = [math.ceil(Fraction(b - a, SAMPLE_RATE) * fps_q) for a, b in bounds]  # a piece may be < 1 frame
        last_pad = 0
        if pad > 1 and counts[-1] % pad:
            last_pad = pad - sum(counts) % pad
        spf = math.floor(SAMPLE_RATE / fps_q)
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] + last_pad * spf < self.min_samples:
            logger.info("the last %d samples of the track are too short for wav2vec2 on their own: encoded with the "
                        "%g s piece before them", bounds[-1][1] - bounds[-1][0], piece_seconds)
            bounds[-2:] = [(bounds[-2][0], bounds[-1][1])]
            counts[-2:] = [counts[-2] + counts[-1]]
        out = []
        for i, ((a, b), frames) in enumerate(zip(bounds, counts)):
            extra = last_pad if i == len(bounds) - 1 else 0
            out.append(self._encode_window(wave[:b], a, b + extra * spf, frames + extra))
        return torch.cat(out)

    @staticmethod
    def window(features: torch.Tensor, m: int = 2, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Hallo's `process_audio_emb`: features [F, L, C] -> [f, 2m+1, L, C], row i holding frames i-m .. i+m,
        each index clamped to [0, F-1] (F = the padded length). `start`/`end` select rows start..end-1 only (the
        clamp still uses the whole F), so a long track can be windowed clip by clip.
        """
        if features.ndim != 3:
            raise EMOInputError(f"window expects features [frames, layers, dim], got shape {tuple(features.shape)}")
        n = features.shape[0]
        end = n if end is None else end
        if not 0 <= start <= end <= n or n == 0:
            raise EMOInputError(f"window rows {start}..{end} are outside the {n} feature frames")
        idx = torch.arange(start, end)[:, None] + torch.arange(-m, m + 1)[None]
        return features[idx.clamp(0, n - 1).to(features.device)]

    # ------------------------------------------------------------------ the sampler's interface (AudioEncoder)

    def frame_features(self, wave16: torch.Tensor, fps: Fraction, num_frames: int, frames_per_clip: int,
                       settings: dict) -> torch.Tensor:
        """`AudioEncoder.frame_features`: all layers per video frame [F, L, C] on the CPU. The track is encoded at
        the rate the model was trained with (`settings["fps"]`, default the video's), then the features are
        resampled linearly to the video rate; F is padded to whole clips when `settings["pad_to_clip"]` (Hallo)."""
        enc_fps = fps_fraction(settings.get("fps") or fps)
        pad = frames_per_clip if settings.get("pad_to_clip") else 1
        pieces = settings.get("piece_seconds")

        def encode(rate, pad_multiple):
            if pieces:
                return self.encode_pieces(wave16, rate, pad_multiple, pieces)
            return self.encode(wave16, rate, pad_multiple=pad_multiple)
        if enc_fps == fps:
            return encode(fps, pad)
        feats = encode(enc_fps, 1)
        n_out = math.ceil(num_frames / pad) * pad
        feats = F.interpolate(rearrange(feats, "f l c -> 1 (l c) f"), size=n_out, mode="linear", align_corners=True)
        return rearrange(feats, "1 (l c) f -> f l c", l=self.num_layers)

    def frame_tokens(self, features: torch.Tensor, start: int, end: int, settings: dict,
                     projection: nn.Module) -> torch.Tensor:
        """`AudioEncoder.frame_tokens`: frames start..end-1 windowed +-`settings["window"]` (Hallo's m = 2) and
        projected (`AudioProjection`) -> [end - start, T, D] on the projection's device, 256 frames at a time (a
        whole track's windows at once could be large)."""
        m = settings.get("window", 2)
        p = next(projection.parameters())
        out = []
        for a in range(start, end, 256):
            win = self.window(features, m, a, min(a + 256, end))  # [b - a, 2m+1, L, C]
            out.append(projection(win.to(p.device, p.dtype)))
        return torch.cat(out)

    # ------------------------------------------------------------------ helpers

    def _check_waveform(self, waveform) -> np.ndarray:
        if not isinstance(waveform, torch.Tensor):
            raise EMOInputError(f"the waveform must be a torch.Tensor [samples], got {type(waveform).__name__}")
        if waveform.ndim != 1:
            raise EMOInputError(
                f"the audio encoder takes a mono 16 kHz waveform [samples], got shape {tuple(waveform.shape)}; "
                "mix the channels down and resample to 16 kHz first")
        if waveform.numel() < self.min_samples:
            raise EMOInputError(
                f"audio too short: {waveform.numel()} samples at 16 kHz, wav2vec2 needs at least {self.min_samples} "
                f"({1000 * self.min_samples / SAMPLE_RATE:.0f} ms); use a longer audio track")
        wave = waveform.detach().to("cpu", torch.float32).numpy()
        if not np.isfinite(wave).all():
            raise EMOInputError("the audio track contains NaN or infinite samples; re-export or re-decode it")
        return wave

    @staticmethod
    def _padded_samples(num_samples: int, fps, frames: int) -> int:
        """Samples after Hallo's padding: (F - true frames) * floor(16000 / fps) zeros appended."""
        fps = fps_fraction(fps)
        pad_frames = frames - count_frames(num_samples, SAMPLE_RATE, fps)
        return num_samples + pad_frames * math.floor(SAMPLE_RATE / fps)

    def _encode_window(self, wave: np.ndarray, start: int, end: int, frames: int) -> torch.Tensor:
        """Samples start..end-1 of the padded track (normalised over their real part, zeros past the track's end)
        -> features [frames, L, C] on the CPU."""
        if end - start < self.min_samples:
            raise EMOInputError(
                f"an audio window of {end - start} samples is shorter than wav2vec2's {self.min_samples}; "
                "use a larger chunk_seconds")
        values = torch.zeros(1, end - start)
        real = wave[start:min(end, wave.shape[0])]
        if real.shape[0]:
            values[0, :real.shape[0]] = torch.from_numpy(self.normalize(real))
        return self.forward(values, frames)[0].cpu()


def _convert_state_dict(state: dict, expected, folder: Path) -> dict:
    """Map a wav2vec2 state dict onto the key names of this transformers' `Wav2Vec2Model`."""
    if any(k.startswith("wav2vec2.") for k in state):  # ForCTC / ForPreTraining: drop the heads
        state = {k[len("wav2vec2."):]: v for k, v in state.items() if k.startswith("wav2vec2.")}
    state = dict(state)
    expected = set(expected)
    names = {  # the three spellings of the weight-normed positional conv (g: magnitude, v: direction)
        "old": (_WN + "weight_g", _WN + "weight_v"),
        "new": (_WN + "parametrizations.weight.original0", _WN + "parametrizations.weight.original1"),
    }
    want = "new" if names["new"][0] in expected else "old"
    have = next((kind for kind, (g, v) in names.items() if g in state and v in state), None)
    if have is None and _WN + "weight" in state:  # weight norm already folded: g = ||w|| over dims 0, 1
        w = state.pop(_WN + "weight")
        state[names[want][0]], state[names[want][1]] = w.norm(dim=(0, 1), keepdim=True), w
    elif have is not None and have != want:
        for src, dst in zip(names[have], names[want]):
            state[dst] = state.pop(src)
    missing = sorted(expected - set(state) - {"masked_spec_embed"})  # (a training-only vector)
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise EMOCheckpointError(
            f"the weights in {folder} do not fit its config.json (missing {len(missing)} tensors, e.g. {missing[:3]}; "
            f"unexpected {len(unexpected)}, e.g. {unexpected[:3]}); re-download the wav2vec2 folder")
    return state


def make_tiny_wav2vec(folder, seed: int = 0) -> Path:
    """Write a tiny random wav2vec2 folder (config.json, model.safetensors, preprocessor_config.json) for tests and
    smoke runs: hidden 32, 2 layers, 2 heads, FF 64, the real CNN kernels/strides (7 x 32 channels), positional conv
    128 taps / 16 groups. Weights use transformers' init under `seed` and are stored the way the published files
    are (no prefix, positional conv as weight_g/weight_v). Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=False,
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, feat_extract_norm="group",
        do_stable_layer_norm=False, vocab_size=32, architectures=["Wav2Vec2Model"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2Model(config)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for new, old in zip(("parametrizations.weight.original0", "parametrizations.weight.original1"),
                        ("weight_g", "weight_v")):
        if _WN + new in state:
            state[_WN + old] = state.pop(_WN + new)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config_dict = config.to_dict()
    config_dict.pop("_attn_implementation", None)
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).to_json_file(str(folder / "preprocessor_config.json"))
    return folder
