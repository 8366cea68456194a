"""Classifier-free guidance with separate reference and audio scales, and the DDIM step both samplers share.

With s_r the reference scale and s_a the audio scale, over three passes (uncond: no reference, no audio, no face
locator; ref: reference without audio; full: everything):
    out = uncond + s_r (ref - uncond) + s_a (full - ref) = (1 - s_r) uncond + (s_r - s_a) ref + s_a full
A pass whose weight is zero is not run: s_r = s_a = 1 runs one pass; s_r = 1 skips uncond; s_r = s_a (Hallo's and
EchoMimic's single scale) skips ref. All passes of a step go through the backbone as one batch.

Speed guidance (models with speed layers; s_v the speed scale, 1.0 = off): one more pass, "still", is the full pass
with the speed set to 0 deg/frame, and
    out += (s_v - 1) (full - still)   i.e. the full pass's weight becomes s_a + s_v - 1 and still's 1 - s_v
so the head turns more (s_v > 1) or less (s_v < 1) than the bare speed features make it, relative to a still head; a
requested speed of 0 gives the unguided output whatever s_v is. This is classifier-free guidance with "no head motion"
as the negative condition: small models (the CPU learning check) learn the speed weakly and render it only with
s_v > 1 (benchmarks/README.md); EMO's paper samples without it.
"""
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from ..models.backbone import BackboneConditions


@dataclass(frozen=True)
class Pass:
    """What one guidance pass sees."""
    ref: bool            # ReferenceNet features (reference-attention)
    audio: bool          # audio tokens
    face: bool           # face-locator features
    cond_identity: bool  # the identity embedding (else the zero embedding's tokens)
    still: bool = False  # the speed layers see 0 deg/frame instead of the run's speed (speed guidance)


@dataclass
class SampleProgress:
    """What the sampler's callback gets after every denoising step."""
    step: int               # 1-based, counted over all clips
    total_steps: int
    clip: int               # 0-based
    num_clips: int
    latents: torch.Tensor   # (1 4 f h w) current latents of the clip (or of the whole video, with context windows)


FULL, REF_ONLY, UNCOND = Pass(True, True, True, True), Pass(True, False, True, True), Pass(False, False, False, False)
STILL = Pass(True, True, True, True, still=True)


def guidance_passes(audio_cfg: float, ref_cfg: float, speed_cfg: float = 1.0) -> list[tuple[Pass, float]]:
    """The passes to run and their weights (see the module docstring), passes without the reference first, the
    full pass last."""
    weights = [(UNCOND, 1.0 - ref_cfg), (REF_ONLY, ref_cfg - audio_cfg), (STILL, 1.0 - speed_cfg),
               (FULL, audio_cfg + speed_cfg - 1.0)]
    return [(p, w) for p, w in weights if p is FULL or abs(w) > 1e-8]


class GuidedDDIM:
    """DDIM with the checkpoint's schedule (diffusers `DDIMScheduler`) and guided predictions: the one scheduler
    set-up, noise set-up and guided step of both samplers.

    The scheduler stays on the CPU (its tables are indexed by Python ints, so no step waits on the GPU); the backbone
    gets the timesteps as device tensors made once."""

    def __init__(self, model, passes: list[tuple[Pass, float]], steps: int):
        self.model, self.passes = model, passes
        cfg = model.config
        self.scheduler = DDIMScheduler.from_config(cfg.scheduler)
        self.scheduler.set_timesteps(steps)
        self.timesteps = self.scheduler.timesteps.to(model.device)
        self.weights = torch.tensor([w for _, w in passes], dtype=model.dtype).view(-1, 1, 1, 1, 1).to(model.device)
        self.noise_clamp = cfg.init_noise_clamp

    def __len__(self) -> int:
        return len(self.scheduler.timesteps)

    def initial_latents(self, frames: int, generator: torch.Generator) -> torch.Tensor:
        """Starting latents (1 c f h w) on the model's device: seeded Gaussian noise drawn on the CPU (the same on
        every device), clamped where the checkpoint's sampler clamps it, times the scheduler's initial sigma."""
        s = self.model.config.latent_size
        noise = torch.randn((1, 4, frames, s, s), generator=generator)
        if self.noise_clamp:
            noise = noise.clamp(-self.noise_clamp, self.noise_clamp)
        return noise.to(self.model.device, self.model.dtype) * self.scheduler.init_noise_sigma

    def prediction(self, latents: torch.Tensor, i: int, conditions: BackboneConditions) -> torch.Tensor:
        """The guided model output at step i for latents (1 c f h w): all passes in one backbone batch, weighted
        and summed. -> (1 c f h w)."""
        t = self.scheduler.timesteps[i]
        x = self.scheduler.scale_model_input(latents, t).expand(len(self.passes), -1, -1, -1, -1)
        out = self.model.backbone(x, self.timesteps[i], conditions)
        return (out * self.weights).sum(0, keepdim=True)

    def step(self, prediction: torch.Tensor, i: int, latents: torch.Tensor) -> torch.Tensor:
        """One DDIM update of latents (1 c f h w) with the guided prediction of step i."""
        return self.scheduler.step(prediction, int(self.scheduler.timesteps[i]), latents).prev_sample

    def denoise(self, latents: torch.Tensor, conditions: BackboneConditions, on_step=None) -> torch.Tensor:
        """Every step on latents (1 c f h w) under one set of conditions (a clip); on_step(i, latents) after step
        i (1-based). -> the denoised latents (1 c f h w)."""
        for i in range(len(self)):
            latents = self.step(self.prediction(latents, i, conditions), i, latents)
            if on_step is not None:
                on_step(i + 1, latents)
        return latents
