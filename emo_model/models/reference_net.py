"""ReferenceNet: an SD1.5-shaped UNet run on the reference latent (and on motion-frame latents) at timestep 0.

It has no temporal layers. Its self-attention layers record their inputs (`norm1` outputs, [n, L, C]) under their
module path (e.g. `up_blocks.1.attentions.2.transformer_blocks.0`); the backbone reads them by the same path.
"""
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .reference_attention import ReferenceWriter


def transformer_block_paths(unet: UNet2DConditionModel):
    """(path, BasicTransformerBlock) for every spatial transformer block, in module order."""
    return [(name, m) for name, m in unet.named_modules() if name.endswith(tuple(f"transformer_blocks.{i}" for i in range(8)))
            and ".attentions." in name]


class ReferenceNet(nn.Module):
    def __init__(self, unet_config: dict, cross_attention: bool = True):
        super().__init__()
        self.unet = UNet2DConditionModel(**unet_config)
        self.unet.conv_norm_out = None  # only the recorded features are used: no output head (Hallo/EchoMimic
        self.unet.conv_out = nn.Identity()  # files have none)
        if not cross_attention:  # EchoMimic's ReferenceNet has no attn2/norm2
            for _, block in transformer_block_paths(self.unet):
                block.attn2 = block.norm2 = None
        self.store: dict = {}
        for path, block in transformer_block_paths(self.unet):
            block.attn1.set_processor(ReferenceWriter(self.store, path))

    def state_dict_for_save(self):
        return self.unet.state_dict()

    def load_weights(self, sd: dict):
        missing, unexpected = self.unet.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise KeyError(f"ReferenceNet weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")

    @torch.no_grad()
    def forward(self, latents: torch.Tensor, tokens: torch.Tensor | None) -> dict:
        """latents: [n, 4, h, w]; tokens: [n, T, D] for the cross-attention slot or None.
        Returns {path: [n, L, C]} features of every self-attention layer."""
        self.store.clear()
        self.store["recording"] = True
        t = torch.zeros((), device=latents.device)
        self.unet(latents, t, encoder_hidden_states=tokens, return_dict=False)
        self.store.pop("recording")
        bank = dict(self.store)
        self.store.clear()
        return bank
