"""Stand-in for `comfy_api.latest` (tests only): io, ui, ComfyExtension, Input, InputImpl, Types."""
from abc import ABC, abstractmethod

from . import _io as io
from . import _ui as ui
from ._video import VideoComponents, VideoFromComponents, VideoFromFile


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        pass

    @abstractmethod
    async def get_node_list(self) -> list:
        ...


class InputImpl:
    VideoFromFile = VideoFromFile
    VideoFromComponents = VideoFromComponents


class Types:
    VideoComponents = VideoComponents


class Input:
    Video = object


__all__ = ["ComfyExtension", "io", "ui", "Input", "InputImpl", "Types"]
