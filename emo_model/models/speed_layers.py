"""EMO's speed layers: head-rotation speed -> per-frame features for the temporal modules' cross-attention.

For frame i with speed w_i (degrees of head rotation between frames), bucket j gives s_ij = tanh(3 (w_i - c_j) / r_j);
the features of frames i-m..i+m (clamped at the ends) are concatenated, S_i in R^{(2m+1) d}, and an MLP maps them to
F_i in R^l (EMO §3.2). The paper does not publish d, c_j or r_j; they live in the checkpoint's config.
"""
import torch
from torch import nn


class SpeedEncoder(nn.Module):
    def __init__(self, centers, radii, window: int = 2, dim: int = 768, hidden: int = 512):
        super().__init__()
        self.window = window
        self.register_buffer("centers", torch.tensor(centers, dtype=torch.float32))
        self.register_buffer("radii", torch.tensor(radii, dtype=torch.float32))
        d = len(centers)
        self.mlp = nn.Sequential(nn.Linear((2 * window + 1) * d, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    @property
    def dim(self) -> int:
        return self.mlp[-1].out_features

    def forward(self, speed: torch.Tensor) -> torch.Tensor:
        """speed: [b, f] per-frame speed -> features [b, f, dim]."""
        s = torch.tanh(3.0 * (speed[..., None] - self.centers) / self.radii)  # [b, f, d]
        f = speed.shape[1]
        idx = (torch.arange(f, device=speed.device)[:, None] + torch.arange(-self.window, self.window + 1,
                                                                             device=speed.device)).clamp(0, f - 1)
        return self.mlp(s[:, idx].flatten(2).to(self.mlp[0].weight.dtype))
