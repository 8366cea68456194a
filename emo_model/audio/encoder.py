"""What the sampler needs of an audio encoder, whichever it is (wav2vec2 for EMO and Hallo, whisper for EchoMimic).

`AudioEncoder.frame_features` turns a whole track into features per video frame, once; `AudioEncoder.frame_tokens`
turns the features of a frame range into the backbone's audio tokens, clip by clip. `EncodedAudio` holds the first,
on the CPU, and no reference to any model.
"""
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import torch


@dataclass
class EncodedAudio:
    """A track encoded for the sampler, on the CPU.

    features: per video frame, [F_feat, ...] as the encoder made them (wav2vec2: all layers [F, L, C], windowed and
    projected to tokens clip by clip: 12 x 768 values per frame instead of Hallo's 32 x 768 tokens, ~2.7x less memory
    for a long track; whisper: EchoMimic's chunks, already the tokens [F, T, D]). num_frames: video frames of the
    audio, ceil(duration x fps). padded_frames: F_pad >= num_frames, the frames with tokens (padded to whole clips in
    motion-frames mode; by default F_feat); frames past F_feat repeat the last one's tokens."""
    features: torch.Tensor
    num_frames: int
    fps: Fraction
    waveform: torch.Tensor      # [channels, samples] as given (for muxing)
    sample_rate: int            # Hz, of `waveform`
    padded_frames: int | None = None

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.waveform.shape[-1] / self.sample_rate

    @property
    def length(self) -> int:
        """F_pad: frames with tokens."""
        return self.features.shape[0] if self.padded_frames is None else self.padded_frames


class AudioEncoder(Protocol):
    """Implemented by `Wav2VecAudioEncoder` and `WhisperAudioEncoder`. `settings` is the checkpoint's
    `EMOConfig.audio_encoder` dict (rate, window, padding the model was trained with)."""

    def frame_features(self, wave16: torch.Tensor, fps: Fraction, num_frames: int, frames_per_clip: int,
                       settings: dict) -> torch.Tensor:
        """Mono 16 kHz waveform [samples] -> features per video frame [F_feat, ...] (F_feat >= 1) on the CPU."""

    def frame_tokens(self, features: torch.Tensor, start: int, end: int, settings: dict,
                     projection: torch.nn.Module | None) -> torch.Tensor:
        """Audio tokens of video frames start..end-1 (all < F_feat) of `features`, [end - start, T, D] on the
        device and in the dtype of `projection` (or of the features, when there is none)."""
