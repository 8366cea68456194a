"""Audio projection: per-frame wav2vec2 windows -> audio tokens (Hallo's `AudioProjModel`, same parameter names,
so the `audioproj.*` tensors of Hallo's net.pth load directly)."""

import torch
from torch import nn

from ..errors import EMOInputError


class AudioProjection(nn.Module):
    """[F, w, L, C] (or [b, F, w, L, C]) -> [F, T, D] (or [b, F, T, D]).

    w = seq_len window frames (2m+1), L = blocks (wav2vec2 layers), C = channels, T = context_tokens, D = output_dim.
    Each frame's window is flattened in (window, layer, channel) order, then Linear-ReLU-Linear-ReLU-Linear,
    reshaped to [T, D] and LayerNorm-ed over D.
    """

    def __init__(self, seq_len: int = 5, blocks: int = 12, channels: int = 768, intermediate_dim: int = 512,
                 output_dim: int = 768, context_tokens: int = 32):
        super().__init__()
        self.seq_len, self.blocks, self.channels = seq_len, blocks, channels
        self.input_dim = seq_len * blocks * channels
        self.context_tokens, self.output_dim = context_tokens, output_dim
        self.proj1 = nn.Linear(self.input_dim, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [F, w, L, C] or [b, F, w, L, C] -> tokens [F, T, D] or [b, F, T, D]."""
        if windows.ndim not in (4, 5):
            raise EMOInputError(f"audio projection expects windows [frames, window, layers, dim] (optionally with a "
                                f"batch dim), got shape {tuple(windows.shape)}")
        expected = (self.seq_len, self.blocks, self.channels)
        got = tuple(windows.shape[-3:])
        if got != expected:
            raise EMOInputError(
                f"audio windows of shape [window, layers, dim] = {list(got)} do not fit the audio projection "
                f"(expects {list(expected)}, {self.input_dim} values per frame): the audio encoder does not match "
                "the checkpoint (e.g. a wav2vec2-large with a model trained on wav2vec2-base)")
        lead = windows.shape[:-3]
        x = windows.reshape(-1, self.input_dim).to(self.proj1.weight.dtype)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        x = self.proj3(x).reshape(-1, self.context_tokens, self.output_dim)
        return self.norm(x).reshape(*lead, self.context_tokens, self.output_dim)
