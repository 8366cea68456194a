"""Stand-in for ComfyUI's VIDEO types (`VideoComponents`, `VideoFromComponents`, `VideoFromFile`)."""
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch


@dataclass
class VideoComponents:
    images: torch.Tensor
    frame_rate: Fraction
    audio: dict | None = None
    metadata: dict | None = None


class VideoFromComponents:
    def __init__(self, components: VideoComponents):
        self._components = components

    def get_components(self) -> VideoComponents:
        return self._components

    def get_dimensions(self):
        return self._components.images.shape[2], self._components.images.shape[1]


class VideoFromFile:
    """Decodes all frames (IMAGE [N, H, W, 3] float 0..1) and the first audio track with PyAV."""

    def __init__(self, file):
        self._file = file

    def get_stream_source(self):
        return self._file

    def get_components(self) -> VideoComponents:
        with av.open(self._file) as c:
            vs = c.streams.video[0]
            rate = vs.average_rate or vs.guessed_rate
            frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in c.decode(vs)]
        audio = None
        with av.open(self._file) as c:
            if c.streams.audio:
                a = c.streams.audio[0]
                chunks = [f.to_ndarray() for f in c.decode(a)]
                if chunks:
                    wav = np.concatenate(chunks, axis=1).astype(np.float32)
                    audio = {"waveform": torch.from_numpy(wav)[None], "sample_rate": a.rate}
        images = torch.stack(frames).float() / 255.0
        return VideoComponents(images=images, frame_rate=Fraction(rate), audio=audio)

    def get_dimensions(self):
        with av.open(self._file) as c:
            return c.streams.video[0].width, c.streams.video[0].height
