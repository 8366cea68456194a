"""Face locator: a light conv net on the face-region mask (or, for EchoMimic's pose sets, on per-frame drawings of
face landmarks); its output is added to the backbone's conv_in output.

Layout and key names are those of Hallo's and EchoMimic's `FaceLocator` (`conv_in`, `blocks.0..5`, `conv_out`):
conv_in 3x3 -> SiLU -> per stage [3x3 conv, SiLU, 3x3 stride-2 conv, SiLU] -> conv_out 3x3 (zero-initialised).
"""
import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from ..errors import EMOInputError


class FaceLocator(nn.Module):
    def __init__(self, out_channels: int = 320, in_channels: int = 1, block_out_channels=(16, 32, 96, 256)):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for cin, cout in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(cin, cin, 3, padding=1))
            self.blocks.append(nn.Conv2d(cin, cout, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(block_out_channels[-1], out_channels, 3, padding=1)

    @property
    def in_channels(self) -> int:
        return self.conv_in.in_channels

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask: [b, c, f, H, W] in [0, 1] -> features [b, out_channels, f, H/8, W/8] (frame by frame). c: 1 (face
        mask), 3 (Hallo: the mask repeated; EchoMimic pose: RGB landmark drawings, one per frame)."""
        if mask.ndim != 5 or mask.shape[1] != self.in_channels:
            raise EMOInputError(
                f"the face locator takes [b, {self.in_channels}, f, H, W] images, got {list(mask.shape)}"
                + (": this model is driven by face-landmark drawings; give it pose frames (pose_frames.py)"
                   if self.in_channels == 3 and mask.ndim == 5 and mask.shape[1] == 1 else ""))
        f = mask.shape[2]
        x = F.silu(self.conv_in(rearrange(mask, "b c f h w -> (b f) c h w")))
        for block in self.blocks:
            x = F.silu(block(x))
        return rearrange(self.conv_out(x), "(b f) c h w -> b c f h w", f=f)
