"""The diffusion loss on the sampler's own noise schedule (the model's config.scheduler: for EMO/Hallo DDIM with
linear betas, v-prediction, zero terminal SNR), with offset noise and min-SNR weighting per sample.

Noising and the v target come from diffusers' DDIMScheduler (`add_noise`, `get_velocity`), built from the same
config dict the sampler uses, so training and sampling cannot disagree on the schedule.
"""
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler


class NoiseSchedule:
    def __init__(self, scheduler_config: dict):
        self.sched = DDIMScheduler.from_config(scheduler_config)
        self.num_steps = self.sched.config.num_train_timesteps
        self.prediction = self.sched.config.prediction_type
        if self.prediction not in ("v_prediction", "epsilon"):
            raise ValueError(f"training supports v_prediction and epsilon models, not {self.prediction}")
        ac = self.sched.alphas_cumprod.double()
        self.snr = (ac / (1 - ac).clamp(min=1e-12)).float()  # SNR(t); 0 at t = T-1 with zero terminal SNR

    def sample(self, latents: torch.Tensor, gen: torch.Generator, offset: float, timesteps: str = "uniform"):
        """latents [B, c, f, h, w] -> (timesteps [B] long, noise like latents). One timestep per sample, uniform, or
        "late": density rising linearly to the noisiest step (where a clip's pose and motion are decided);
        offset noise `offset * N(0, 1)` per sample and channel, shared over frames and pixels."""
        B, c = latents.shape[:2]
        if timesteps == "late":
            t = (torch.rand(B, generator=gen).sqrt() * self.num_steps).long().clamp(max=self.num_steps - 1)
        else:
            t = torch.randint(0, self.num_steps, (B,), generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        if offset:
            noise = noise + offset * torch.randn((B, c) + (1,) * (latents.ndim - 2), generator=gen)
        return t, noise

    def noisy_and_target(self, latents, noise, t):
        """(noisy latents, training target) for clean `latents`, `noise` and timesteps `t` [B]."""
        t = t.to(latents.device)
        noisy = self.sched.add_noise(latents, noise, t)
        target = self.sched.get_velocity(latents, noise, t) if self.prediction == "v_prediction" else noise
        return noisy, target

    def weights(self, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
        """Min-SNR-gamma weights [B] (Hang et al. 2023; diffusers' `compute_snr` recipe): v-prediction
        min(SNR + 1, gamma) / (SNR + 1), epsilon min(SNR, gamma) / SNR. gamma None: all 1."""
        if gamma is None:
            return torch.ones(t.shape[0])
        snr = self.snr[t.cpu()]
        if self.prediction == "v_prediction":
            return torch.minimum(snr + 1, torch.full_like(snr, gamma)) / (snr + 1)
        return torch.minimum(snr, torch.full_like(snr, gamma)) / snr.clamp(min=1e-8)

    def loss(self, pred, target, t, gamma: float | None) -> torch.Tensor:
        """Per-sample MSE times its min-SNR weight, averaged over the batch (Hallo's stage-1 form; its stage 2
        averages before weighting, which loses the weighting: training.md §2)."""
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        return (per_sample * self.weights(t, gamma).to(per_sample.device)).mean()
