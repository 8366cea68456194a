"""Identity tokens (Hallo): a face embedding (ArcFace, 512-d) -> a few tokens for the UNets' cross-attention slot.

Keys as Hallo's `ImageProjModel` (`proj`, `norm`). Without a face-embedding model, Hallo itself uses
`proj(zeros)`, which is also its unconditional input (not zero: bias + LayerNorm).
"""
import torch
from torch import nn


class IdentityProjection(nn.Module):
    def __init__(self, cross_attention_dim: int = 768, embed_dim: int = 512, num_tokens: int = 4):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(embed_dim, num_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    @property
    def embed_dim(self) -> int:
        return self.proj.in_features

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """embedding: [b, embed_dim] -> tokens [b, num_tokens, cross_attention_dim]."""
        return self.norm(self.proj(embedding).reshape(embedding.shape[0], self.num_tokens, -1))
