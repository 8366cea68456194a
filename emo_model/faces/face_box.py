"""A detected face: its box in source pixels, score and optional 5 keypoints (every detector returns these)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class FaceBox:
    """A face in source pixels: ``x0, y0`` inclusive, ``x1, y1`` exclusive; ``score`` in 0..1.

    ``keypoints``: float32 [5, 2] (x, y in source pixels, not clipped to the image) from YuNet / SCRFD, in
    insightface's order: left eye, right eye, nose tip, left mouth corner, right mouth corner (left = image
    left, i.e. the subject's right); None from the LBP cascade.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0
    keypoints: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def shifted(self, dx: float, dy: float) -> "FaceBox":
        """The box (and keypoints) moved by (dx, dy) px: from a tile's pixels to the picture's."""
        kps = None if self.keypoints is None else (self.keypoints + np.float32([dx, dy])).astype(np.float32)
        return replace(self, x0=self.x0 + dx, y0=self.y0 + dy, x1=self.x1 + dx, y1=self.y1 + dy, keypoints=kps)

    def scaled(self, s: float) -> "FaceBox":
        kps = None if self.keypoints is None else (self.keypoints * s).astype(np.float32)
        return replace(self, x0=self.x0 * s, y0=self.y0 * s, x1=self.x1 * s, y1=self.y1 * s, keypoints=kps)
