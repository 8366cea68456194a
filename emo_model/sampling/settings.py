"""The settings of one sampling run, checked before any model work: `check_inputs` -> a frozen `SampleSettings`."""
import logging
from dataclasses import dataclass

import torch

from ..audio.encoder import EncodedAudio
from ..errors import EMOInputError
from .context_windows import context_windows
from .guidance import Pass, guidance_passes
from .reference import EncodedReference

logger = logging.getLogger(__name__)
_IGNORED_SAID: list = []
_IGNORED_SPEED_SAID: list = []


@dataclass(frozen=True)
class SampleSettings:
    """Every setting of a run, the checkpoint's defaults filled in."""
    steps: int                    # denoising steps per clip (or per window set)
    seed: int                     # noise seed (the noise is drawn on the CPU: the same on every device)
    audio_cfg: float              # s_a (see guidance.py)
    ref_cfg: float                # s_r
    speed: float | None           # head-motion speed for models with speed layers, else None
    frames_per_clip: int          # f: clip length, or the window in context-windows mode
    motion_frames: int            # n: motion frames, or the window overlap in context-windows mode
    region_weights: tuple         # (full/pose, face, lip) audio weights (Hallo)
    passes: tuple[tuple[Pass, float], ...]  # guidance passes and weights
    motion_drop: float = 0.0      # fraction of the motion frames' pixels outside the face box dropped (Hallo2)
    speed_cfg: float = 1.0        # s_v, speed guidance (see guidance.py); 1.0 = off, and without speed layers


def check_inputs(model, audio: EncodedAudio, ref: EncodedReference, steps=None, seed=0, audio_cfg=None,
                 ref_cfg=None, speed=None, frames_per_clip=None, motion_frames=None,
                 region_weights=(1.0, 1.0, 1.0), motion_drop=None, speed_cfg=None) -> SampleSettings:
    """The run's settings (None: the checkpoint's default). motion_drop: the motion-frame pixel drop, 0..1 (None:
    the checkpoint's, Hallo2 0.25, others 0); models without motion frames (EchoMimic's windows) ignore it (said
    once in the log when set). speed_cfg: speed guidance, >= 0 (None: the checkpoint's; 1 = off); models without
    speed layers ignore it (said once in the log when set).
    Raises: EMOInputError naming the setting or input to change."""
    cfg = model.config
    chosen = cfg.sampling(steps=steps, audio_cfg=audio_cfg, ref_cfg=ref_cfg)  # None: the checkpoint's own
    steps, audio_cfg, ref_cfg = chosen.steps, chosen.audio_cfg, chosen.ref_cfg
    if steps < 1:
        raise EMOInputError(f"steps must be at least 1 (got {steps}); the checkpoint's default is {cfg.steps}")
    f = frames_per_clip or cfg.frames_per_clip
    n = cfg.motion_frames if motion_frames is None else int(motion_frames)
    if f < 1 or n < 0:
        raise EMOInputError(f"frames per clip must be >= 1 and motion frames >= 0 (got {f}, {n})")
    region_weights = tuple(float(w) for w in region_weights)
    if len(region_weights) != 3:
        raise EMOInputError(f"region weights are (pose, face, lip): three numbers, got {region_weights}")
    max_len = cfg.temporal["max_len"]
    if cfg.temporal_mode == "motion_frames" and f + n > max_len:
        raise EMOInputError(f"frames per clip + motion frames = {f + n} exceeds the temporal modules' {max_len} "
                            "positions: lower one of them")
    check_audio(model, audio)
    if cfg.temporal_mode == "context_windows":
        L = audio.num_frames
        context_windows(L, f, n, 0, cfg.window_shift)  # checks the window and the overlap
        if ref.locator_mask.dtype == torch.uint8 and ref.locator_mask.shape[2] < L:
            raise EMOInputError(f"there are {ref.locator_mask.shape[2]} pose frames for {L} video frames of audio: "
                                "give at least as many pose frames as video frames (extra ones are ignored), or "
                                "shorten the audio")
        if min(f, L) > max_len:
            raise EMOInputError(f"windows of {min(f, L)} frames exceed the temporal modules' {max_len} "
                                "positions: lower frames per clip")
    speed = None if model.speed_encoder is None else (cfg.speed_value if speed is None else float(speed))
    if speed is not None and speed < 0:
        raise EMOInputError(f"the head-motion speed is in degrees per frame, 0 or more (got {speed:g})")
    drop = _motion_drop(cfg, motion_drop)
    s_v = _speed_cfg(model, speed, speed_cfg)
    return SampleSettings(steps, int(seed), audio_cfg, ref_cfg, speed, f, n, region_weights,
                          tuple(guidance_passes(audio_cfg, ref_cfg, s_v)), drop, s_v)


def _speed_cfg(model, speed, speed_cfg) -> float:
    """The run's speed guidance: 1.0 (no still pass) without speed layers or for a speed of 0, where it changes
    nothing."""
    s_v = float(model.config.speed_cfg if speed_cfg is None else speed_cfg)
    if not s_v >= 0.0:
        raise EMOInputError(f"speed_cfg (speed guidance) must be 0 or more, 1 = off (got {s_v:g})")
    if model.speed_encoder is None:
        if speed_cfg is not None and speed_cfg != 1.0 and not _IGNORED_SPEED_SAID:
            _IGNORED_SPEED_SAID.append(True)
            logger.info("speed_cfg %g is ignored: this model has no speed layers", speed_cfg)
        return 1.0
    return 1.0 if speed == 0 else s_v


def _motion_drop(cfg, motion_drop) -> float:
    default = float(getattr(cfg, "motion_drop", 0.0))
    drop = default if motion_drop is None else float(motion_drop)
    if not 0.0 <= drop < 1.0:
        raise EMOInputError(f"motion_drop is the fraction of the motion frames' pixels outside the face box that are "
                            f"dropped: 0 (off) up to below 1, got {drop:g} (Hallo2 uses 0.25)")
    if cfg.temporal_mode != "motion_frames":
        if drop > 0 and not _IGNORED_SAID:
            _IGNORED_SAID.append(True)
            logger.info("motion_drop %g is ignored: this model samples in context windows and has no motion frames",
                        drop)
        return 0.0
    return drop


def check_audio(model, audio: EncodedAudio) -> None:
    """An encoded track made with another kind of model gets a clear error, not a shape error in the UNet: with an
    audio projection the features must be [F, layers, channels] as it expects, without one the tokens must have the
    width of the layers that read them."""
    cfg = model.config
    proj = cfg.audio_projection
    shape = tuple(audio.features.shape[1:])
    if proj is not None:
        ok = shape == (proj["blocks"], proj["channels"])
    else:
        width = (cfg.audio_attention or {}).get("audio_dim") or cfg.unet.get("cross_attention_dim")
        ok = len(shape) == 2 and shape[-1] == width
    if not ok:
        raise EMOInputError("the encoded audio was made with a different kind of model (its audio features do not "
                            "fit this one): encode the audio again with the model you sample with (connect EMO "
                            "Audio Encode to the same Load EMO Models)")
