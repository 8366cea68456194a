"""ReferenceNet (EMO §3.2): an SD1.5-shaped UNet run on the reference latent (and on motion-frame latents) at
timestep 0.

It has no temporal layers. Its self-attention layers record their inputs (`norm1` outputs, [n, L, C]) under their
module path (e.g. `up_blocks.1.attentions.2.transformer_blocks.0`); the backbone reads them by the same path.
"""
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from torch import nn

from .attention import EMOAttnProcessor
from .reference_attention import ReferenceWriter


def transformer_block_paths(unet: UNet2DConditionModel) -> list[tuple[str, BasicTransformerBlock]]:
    """(path, block) for every spatial transformer block of the UNet (all layers of every attention), in module
    order."""
    return [(name, m) for name, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]


class ReferenceNet(nn.Module):
    def __init__(self, unet_config: dict, cross_attention: bool = True):
        super().__init__()
        self.unet = UNet2DConditionModel(**unet_config)
        self.unet.conv_norm_out = None  # only the recorded features are used: no output head (Hallo/EchoMimic
        self.unet.conv_out = nn.Identity()  # files have none)
        for path, block in transformer_block_paths(self.unet):
            if not cross_attention:  # EchoMimic's ReferenceNet has no attn2/norm2
                block.attn2 = block.norm2 = None
            block.attn1.set_processor(ReferenceWriter(path))
            if block.attn2 is not None:
                block.attn2.set_processor(EMOAttnProcessor())

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """latents: [n, 4, h, w] (VAE-scaled); tokens: [n, T, D] for the cross-attention slot or None.
        Returns {path: [n, L, C]}: the input of every self-attention layer (L = h w at that layer's resolution)."""
        record: dict[str, torch.Tensor] = {}
        t = torch.zeros((), device=latents.device)
        self.unet(latents, t, encoder_hidden_states=tokens, cross_attention_kwargs={"record": record},
                  return_dict=False)
        return record
