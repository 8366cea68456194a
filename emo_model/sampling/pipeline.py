"""EMOPipeline: audio + reference -> video frames, clip by clip. The wiring of the parts in this package.

Flow: the whole track is encoded once (`encode_audio`: the model's `AudioEncoder`), the reference once
(`encode_reference`, see reference.py), then `sample` checks every setting (settings.py), builds the run's
conditions (conditions.py) and runs one of two samplers, which yield each clip's decoded frames as soon as it is done:
"motion_frames" (EMO, Hallo: motion_frames.py) denoises clips of f frames one after another, each continuing from
the last n frames of the previous one; "context_windows" (EchoMimic: context_windows.py) denoises the whole video at
once in overlapping, shifting windows. Both take their scheduler, noise and guided step from guidance.py and decode
with vae.py.
"""
import logging
import math
from typing import Callable, Iterator

import torch

from ..audio.encoder import EncodedAudio
from ..errors import EMOInputError
from ..media.audio import count_frames, fps_fraction, mix_and_resample
from ..models.model import EMOModel
from .conditions import ConditionCache
from .context_windows import sample_windows
from .guidance import SampleProgress, guidance_passes
from .motion_frames import sample_clips
from .reference import EncodedReference, encode_reference
from .settings import SampleSettings, check_audio, check_inputs
from .vae import VAECodec

log = logging.getLogger(__name__)

# Tracks longer than this keep their encoded audio in half precision when the model runs in float32 (the CPU): the
# features grow with the track (Hallo's wav2vec2: 12 x 768 values a frame, 55 MB a minute at 25 fps in float32), and
# the tokens made from them clip by clip are cast back to the model's precision, so only the storage is halved.
LONG_TRACK_SECONDS = 60.0
_said_half = False


class EMOPipeline:
    def __init__(self, model: EMOModel, offload_idle: bool = False):
        """offload_idle: keep modules that are idle during sampling in host memory (the audio encoder outside
        `encode_audio`; ReferenceNet once the reference's features are made, when no motion frames need it), to
        lower peak VRAM. For callers that manage devices themselves (ComfyUI does) leave it off.
        The pipeline keeps no tensors between calls: one model may serve several pipelines, also in parallel
        threads (with offload_idle off: offloading moves modules the other runs may be using)."""
        self.model = model
        self.config = model.config
        self.offload_idle = offload_idle
        self.vae = VAECodec(model)

    @property
    def device(self):
        return self.model.device

    @property
    def dtype(self):
        return self.model.dtype

    # ------------------------------------------------------------------ audio
    @torch.no_grad()
    def encode_audio(self, waveform, sample_rate: int, fps, frames_per_clip: int | None = None) -> EncodedAudio:
        """waveform: [channels, samples] (or [samples]) float in -1..1, any rate (Hz); fps: video frame rate (29.97
        is read as 30000/1001). The whole track is encoded once; frame count = ceil(duration x fps).
        Raises: EMOInputError without an audio encoder, or for audio shorter than one frame."""
        cfg = self.config
        enc = self._audio_encoder()
        waveform = torch.as_tensor(waveform, dtype=torch.float32)
        if waveform.ndim == 1:
            waveform = waveform[None]
        fps_q = fps_fraction(fps)
        num_frames = count_frames(waveform.shape[-1], sample_rate, fps_q)
        f = frames_per_clip or cfg.frames_per_clip
        wave16 = mix_and_resample(waveform, sample_rate, 16000)
        if self.offload_idle:
            enc.to(self.device)
        try:
            features = enc.frame_features(wave16, fps_q, num_frames, f, cfg.audio_encoder)
        finally:
            if self.offload_idle:
                enc.to("cpu")
        padded = math.ceil(num_frames / f) * f if cfg.temporal_mode == "motion_frames" else num_frames
        return EncodedAudio(_stored(features, self.dtype, waveform.shape[-1] / sample_rate), num_frames, fps_q,
                            waveform, sample_rate, max(padded, num_frames))

    @torch.no_grad()
    def audio_tokens(self, audio: EncodedAudio, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Audio tokens of video frames start..end-1 (default: all F_pad), [end - start, T, D] on the model's
        device; frames past the encoded ones repeat the last."""
        end = audio.length if end is None else end
        check_audio(self.model, audio)
        n = audio.features.shape[0]
        s0, e0 = min(start, n - 1), min(max(end, start + 1), n)
        t = self._audio_encoder().frame_tokens(audio.features, s0, e0, self.config.audio_encoder,
                                               self.model.audio_projection).to(self.device, self.dtype)
        return t[(torch.arange(start, end).clamp(max=n - 1) - s0).to(t.device)]

    def _audio_encoder(self):
        if self.model.audio_encoder is None:
            raise EMOInputError("this model has no audio encoder loaded: put the audio encoder folder beside the model "
                                "(see README, 'Where model files go')")
        return self.model.audio_encoder

    # ------------------------------------------------------------------ reference
    def encode_reference(self, image, face_mask, identity_embedding=None, locator_frames=None,
                         mouth=None) -> EncodedReference:
        """See `reference.encode_reference`."""
        return encode_reference(self.model, image, face_mask, identity_embedding, locator_frames, mouth)

    # ------------------------------------------------------------------ sampling
    def conditions(self, ref: EncodedReference, passes=None, speed: float | None = None) -> ConditionCache:
        """The conditions of a run on `ref` (`ConditionCache`), for a caller that drives the backbone itself.
        passes: from `guidance_passes` (default: the checkpoint's CFG)."""
        passes = guidance_passes(self.config.audio_cfg, self.config.ref_cfg) if passes is None else passes
        return ConditionCache(self.model, ref, passes, speed, self.offload_idle)

    def sample(self, audio: EncodedAudio, ref: EncodedReference, steps: int | None = None, seed: int = 0,
               audio_cfg: float | None = None, ref_cfg: float | None = None, speed: float | None = None,
               frames_per_clip: int | None = None, motion_frames: int | None = None,
               region_weights=(1.0, 1.0, 1.0), callback: Callable[[SampleProgress], None] | None = None,
               motion_drop: float | None = None, speed_cfg: float | None = None) -> Iterator[torch.Tensor]:
        """Checks every setting now (raising EMOInputError before any model work), then returns an iterator of the
        decoded clips (f H W 3) float 0..1 on the CPU, in order, audio.num_frames frames in all. None takes the
        checkpoint's default (motion_drop: Hallo2's motion-frame pixel drop, see motion_frames.py; Hallo2 0.25,
        others 0; speed_cfg: speed guidance, see guidance.py). `callback` runs after every denoising step; raising
        from it stops sampling there (nothing further is computed)."""
        settings = check_inputs(self.model, audio, ref, steps, seed, audio_cfg, ref_cfg, speed, frames_per_clip,
                                motion_frames, region_weights, motion_drop, speed_cfg)
        return self._run(audio, ref, settings, callback)

    @torch.no_grad()
    def _run(self, audio: EncodedAudio, ref: EncodedReference, settings: SampleSettings, callback):
        cache = ConditionCache(self.model, ref, list(settings.passes), settings.speed, self.offload_idle)
        sampler = sample_windows if self.config.temporal_mode == "context_windows" else sample_clips
        yield from sampler(self.model, self.vae, cache, lambda a, b: self.audio_tokens(audio, a, b),
                           audio.num_frames, settings, callback)


def memory_estimate(config, frames_per_clip: int | None = None) -> int:
    """Bytes of accelerator memory a sampling run needs beyond the weights (activations of one clip), for a host's
    memory manager: ~1.5 GB for a 512² clip of 12 frames, scaling with pixels and frames."""
    f = frames_per_clip or config.frames_per_clip
    return int(1.5e9 * (config.resolution / 512) ** 2 * f / 12)


def _stored(features: torch.Tensor, dtype: torch.dtype, seconds: float) -> torch.Tensor:
    """The encoded audio as kept for the whole render: in the model's precision, or float16 for a float32 model on a
    track longer than LONG_TRACK_SECONDS (said once through logging)."""
    global _said_half
    if dtype != torch.float32 or seconds <= LONG_TRACK_SECONDS:
        return features.to(dtype)
    if not _said_half:
        _said_half = True
        log.info("EMO: tracks over %g s keep their encoded audio in float16 (half the memory: %.1f MB instead of "
                 "%.1f MB here); each clip's audio tokens are made from it in float32", LONG_TRACK_SECONDS,
                 features.numel() * 2 / 1e6, features.numel() * 4 / 1e6)
    return features.to(torch.float16)
