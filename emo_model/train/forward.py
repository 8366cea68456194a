"""Every call of the training code into the model, in one place (adapt here when the model's call changes).

`encode_pixels`: frozen VAE, pixels -> scaled latents (the posterior mean, as the sampler encodes references).
`denoise`: one training forward of ReferenceNet (reference + motion frames), audio projection, face locator, speed
encoder and backbone (`EMOModel`'s documented training call), with the same `BackboneConditions` the sampler builds for
its full pass (`sampling.conditions.ConditionCache.clip`), or for its unconditional pass when the batch drops them.
One reference per clip: the bank has B rows and `ref_index` picks each clip's for its f frames.
"""
from dataclasses import dataclass

import torch
from einops import rearrange

from ..models.backbone import BackboneConditions
from ..models.model import EMOModel


@dataclass
class TrainBatch:
    """One process's batch. B samples, f target frames, n motion frames, latent side h = w = R / 8.
    latents [B, 4, f, h, w] clean targets; reference [B, 4, h, w]; motion [B, n, 4, h, w] or None; face_mask
    [B, 1, 1, R, R] in {0, 1}; audio: wav2vec windows [B, f, 2m+1, L, C] (projected here) or stored tokens
    [B, f, T, D] (whisper models), or None; identity [B, E] or None; speed [B, f] deg/frame or None.
    use_reference False = the sampler's uncond pass (no reference, face locator or identity); use_audio False =
    audio tokens zeroed."""
    latents: torch.Tensor
    reference: torch.Tensor
    face_mask: torch.Tensor
    motion: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    identity: torch.Tensor | None = None
    speed: torch.Tensor | None = None
    regions: list | None = None        # Hallo's region masks: 3 (full, face, lip) x 4 levels of [B, hw]
    use_reference: bool = True
    use_audio: bool = True

    def to(self, device, dtype=None):
        def mv(t):
            if isinstance(t, list):
                return [mv(x) for x in t]
            return t if not torch.is_tensor(t) else t.to(device, dtype if t.is_floating_point() else None)
        return TrainBatch(**{k: mv(v) for k, v in self.__dict__.items()})


@torch.no_grad()
def encode_pixels(model: EMOModel, pixels: torch.Tensor) -> torch.Tensor:
    """pixels [N, 3, R, R] in -1..1 -> latents [N, 4, R/8, R/8] (scaled by the model's vae_scale)."""
    vae = model.vae
    out = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
    return out * model.config.vae_scale


def denoise(model: EMOModel, batch: TrainBatch, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """noisy [B, 4, f, h, w], timesteps [B] (one per sample) -> the model output [B, 4, f, h, w]."""
    cfg = model.config
    B, f = noisy.shape[0], noisy.shape[2]
    dev, dtype = noisy.device, noisy.dtype
    id_tokens = None
    if model.identity_projection is not None:
        emb = batch.identity if (batch.use_reference and batch.identity is not None) else None
        if emb is None:  # the sampler's no-face / uncond input: proj(zeros)
            emb = torch.zeros(B, model.identity_projection.embed_dim, device=dev, dtype=dtype)
        id_tokens = model.identity_projection(emb)  # [B, T, D]
    bank = motion = None
    n = 0 if batch.motion is None else batch.motion.shape[1]
    lat = ([batch.reference] if batch.use_reference else []) + ([batch.motion.flatten(0, 1)] if n else [])
    if lat:
        tokens = None
        if id_tokens is not None and cfg.cross_attention == "identity":
            tokens = torch.cat(([id_tokens] if batch.use_reference else []) + ([id_tokens.repeat_interleave(n, 0)] if n else []))
        feats = model.reference_net(torch.cat(lat), tokens)
        r = B if batch.use_reference else 0
        if batch.use_reference:
            bank = {p: v[:B] for p, v in feats.items()}
        if n:
            motion = {p: rearrange(v[r:], "(b n) l c -> b n l c", b=B) for p, v in feats.items()}
    audio = None
    if batch.audio is not None:
        audio = model.audio_projection(batch.audio) if model.audio_projection is not None else batch.audio
        if not batch.use_audio:
            audio = torch.zeros_like(audio)
        audio = rearrange(audio, "b f t d -> (b f) t d")
    face = None
    if batch.use_reference:
        face = rearrange(model.face_locator(batch.face_mask).expand(-1, -1, f, -1, -1), "b c f h w -> (b f) c h w")
    ehs = None
    if cfg.cross_attention == "identity" and id_tokens is not None:
        ehs = id_tokens.repeat_interleave(f, 0)
    elif cfg.cross_attention == "audio":
        ehs = audio
    speed = model.speed_encoder(batch.speed) if model.speed_encoder is not None and batch.speed is not None else None
    masks = None
    if batch.regions is not None:  # per sample -> per backbone row
        masks = [[m.repeat_interleave(f, 0) for m in levels] for levels in batch.regions]
    conditions = BackboneConditions(
        tokens=ehs, ref_rows=[batch.use_reference] * B, ref_bank=bank,
        ref_index=torch.arange(B, device=dev).repeat_interleave(f) if bank is not None and B > 1 else None,
        motion=motion, audio=audio if cfg.audio_attention else None, masks=masks, face=face, speed=speed)
    return model.backbone(noisy, timesteps, conditions)
