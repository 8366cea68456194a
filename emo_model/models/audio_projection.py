"""Audio projection: per-frame wav2vec2 windows -> audio tokens (Hallo's `AudioProjModel`, same parameter names,
so the `audioproj.*` tensors of Hallo's net.pth load directly)."""

import torch
from torch import nn

from ..errors import EMOCheckpointError, EMOInputError


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

    @classmethod
    def from_state_dict(cls, state: dict, seq_len: int = 5, blocks: int | None = None,
                        channels: int | None = None) -> "AudioProjection":
        """Build from a state dict (keys proj1/proj2/proj3/norm, optionally prefixed `audioproj.`), every size taken
        from the tensor shapes, in the dtype of the tensors.

        proj1's input width is seq_len * blocks * channels; give `blocks` (wav2vec2 layers) or `channels` (its hidden
        size) to split it. With neither, the split is unknown (`blocks`/`channels` are None) and forward checks only
        that w * L * C matches.
        """
        if "proj1.weight" not in state and "audioproj.proj1.weight" in state:
            state = {k[len("audioproj."):]: v for k, v in state.items() if k.startswith("audioproj.")}
        keys = ("proj1.weight", "proj1.bias", "proj2.weight", "proj2.bias", "proj3.weight", "proj3.bias",
                "norm.weight", "norm.bias")
        missing = [k for k in keys if k not in state]
        if missing:
            raise EMOCheckpointError(f"audio projection weights lack {missing}; the checkpoint is incomplete or of "
                                     "another kind (Hallo's net.pth holds them as audioproj.*)")
        intermediate, input_dim = state["proj1.weight"].shape
        output_dim = state["norm.weight"].shape[0]
        tokens, rest = divmod(state["proj3.weight"].shape[0], output_dim)
        per_frame, rest2 = divmod(input_dim, seq_len)
        known = blocks or channels
        if rest or rest2 or (known and per_frame % known) or (blocks and channels and blocks * channels != per_frame):
            raise EMOCheckpointError(
                f"audio projection shapes do not fit together (proj1 input {input_dim}, proj3 output "
                f"{state['proj3.weight'].shape[0]}, norm {output_dim}, window {seq_len}, blocks {blocks}, "
                f"channels {channels}); the checkpoint does not match this audio encoder")
        if blocks:
            channels = per_frame // blocks
        else:
            blocks = per_frame // channels if channels else 1
            channels = channels or per_frame
        model = cls(seq_len, blocks, channels, intermediate, output_dim, tokens).to(state["proj1.weight"].dtype)
        try:
            model.load_state_dict({k: state[k] for k in keys}, strict=True)
        except RuntimeError as e:
            raise EMOCheckpointError(f"audio projection weights have inconsistent shapes: {e}") from None
        if not known:
            model.blocks = model.channels = None
        return model

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [F, w, L, C] or [b, F, w, L, C] -> tokens [F, T, D] or [b, F, T, D]."""
        if windows.ndim not in (4, 5):
            raise EMOInputError(f"audio projection expects windows [frames, window, layers, dim] (optionally with a "
                                f"batch dim), got shape {tuple(windows.shape)}")
        expected = (self.seq_len, self.blocks, self.channels)
        got = tuple(windows.shape[-3:])
        if (windows.shape[-3] != self.seq_len or windows.shape[-3:].numel() != self.input_dim
                or any(e is not None and e != g for e, g in zip(expected, got))):
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
