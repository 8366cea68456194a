"""The VAE between pixels and latents: encode the reference and the motion frames, decode clips in slices."""
import torch
from einops import rearrange

from ..errors import EMOInputError


class VAECodec:
    """model.vae (diffusers `AutoencoderKL`, SD's sd-vae-ft-mse) with the checkpoint's latent scale."""

    def __init__(self, model):
        self.model = model

    @property
    def vae(self):
        if self.model.vae is None:
            raise EMOInputError("this model was loaded without a VAE: load it with its sd-vae-ft-mse folder "
                                "(or choose a VAE in the loader)")
        return self.model.vae

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (n 3 H W) in -1..1 -> latents (n 4 h w), the posterior's mean times the latent scale, in the
        model's dtype on its device."""
        vae = self.vae
        out = vae.encode(pixels.to(self.model.device, vae.dtype)).latent_dist.mean
        return (out * self.model.config.vae_scale).to(self.model.dtype)

    def decode(self, latents: torch.Tensor, keep_last: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """latents (n 4 h w) -> (frames (n H W 3) float 0..1 on the CPU, the last `keep_last` frames as pixels
        (k 3 H W) in -1..1 still on the device, or None). The device copy feeds the next clip's motion frames
        without a round trip through host memory."""
        vae = self.vae
        step = self.frames_per_call()
        out, tail = [], []
        for s in range(0, latents.shape[0], step):
            x = vae.decode((latents[s:s + step] / self.model.config.vae_scale).to(vae.dtype)).sample.clamp(-1, 1)
            if keep_last and s + x.shape[0] > latents.shape[0] - keep_last:
                tail.append(x[max(0, latents.shape[0] - keep_last - s):])
            out.append(rearrange((x.float() + 1) / 2, "n c h w -> n h w c").cpu())
        return torch.cat(out), (torch.cat(tail) if tail else None)

    def frames_per_call(self) -> int:
        """Frames per VAE decode call: up to 8 (enough to fill a GPU), fewer when ~60 % of the free accelerator
        memory would not hold them (a 512² frame needs ~0.5 GB at 16-bit in diffusers' decoder, scaling with
        pixels and bytes per value)."""
        dev = self.model.device
        if dev.type != "cuda":
            return 8
        free, _ = torch.cuda.mem_get_info(dev)
        per_frame = 0.5e9 * (self.model.config.resolution / 512) ** 2 * self.vae.dtype.itemsize / 2
        return max(1, min(8, int(0.6 * free / per_frame)))
