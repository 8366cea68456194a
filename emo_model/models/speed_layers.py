"""EMO's speed layers: head-rotation speed -> per-frame features for the temporal modules' cross-attention.

For frame i with speed w_i (degrees of head rotation between frames), bucket j gives s_ij = tanh(3 (w_i - c_j) / r_j);
the features of frames i-m..i+m (clamped at the ends) are concatenated, S_i in R^{(2m+1) d}, and an MLP maps them to
F_i in R^l (EMO §3.2). The paper does not publish d, c_j or r_j; they live in the checkpoint's config.

Phase (this pack's models trained by `train --stage 3`; config `speed.phase_centers`): F_i also sees how far the head
has turned since the clip began, phi_i = w_0 + ... + w_i degrees, as buckets tanh(3 (phi_i - p_k) / q_k), and each
frame attends to its own features only (`forward` gives [b, f, tokens, l]). A speed that is the same on every frame of a
clip gives every frame the same features otherwise, one vector added to all frames alike, from which the temporal
layers would have to build a turn that grows frame by frame; with the phase each frame is told how far it is turned
(as the audio layers tell each frame its sound). Without phase buckets: the paper's layout, [b, f, l] attended by
every frame.
"""
import torch
from torch import nn


class SpeedEncoder(nn.Module):
    def __init__(self, centers, radii, window: int = 2, dim: int = 768, hidden: int = 512, phase_centers=None,
                 phase_radii=None, tokens: int = 1):
        super().__init__()
        self.window = window
        self.register_buffer("centers", torch.tensor(centers, dtype=torch.float32))
        self.register_buffer("radii", torch.tensor(radii, dtype=torch.float32))
        self.phase = phase_centers is not None
        self.tokens = int(tokens) if self.phase else 1  # per frame (frame-local attention over them)
        if self.phase:
            self.register_buffer("phase_centers", torch.tensor(phase_centers, dtype=torch.float32))
            self.register_buffer("phase_radii", torch.tensor(phase_radii, dtype=torch.float32))
        d = len(centers)
        extra = len(phase_centers) if self.phase else 0
        self.mlp = nn.Sequential(nn.Linear((2 * window + 1) * d + extra, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim * self.tokens))

    @property
    def dim(self) -> int:
        return self.mlp[-1].out_features // self.tokens

    def forward(self, speed: torch.Tensor) -> torch.Tensor:
        """speed: [b, f] per-frame speed (deg/frame) -> features [b, f, dim], or [b, f, tokens, dim] (attended by
        that frame only) with phase buckets."""
        s = torch.tanh(3.0 * (speed[..., None] - self.centers) / self.radii)  # [b, f, d]
        f = speed.shape[1]
        idx = (torch.arange(f, device=speed.device)[:, None] + torch.arange(-self.window, self.window + 1,
                                                                             device=speed.device)).clamp(0, f - 1)
        feats = s[:, idx].flatten(2)
        if not self.phase:
            return self.mlp(feats.to(self.mlp[0].weight.dtype))
        phi = torch.cumsum(speed.float(), dim=1)[..., None]                    # [b, f, 1] degrees turned so far
        p = torch.tanh(3.0 * (phi - self.phase_centers) / self.phase_radii)
        out = self.mlp(torch.cat([feats, p], -1).to(self.mlp[0].weight.dtype))
        return out.unflatten(-1, (self.tokens, -1))
