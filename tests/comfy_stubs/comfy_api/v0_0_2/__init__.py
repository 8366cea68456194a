"""Stand-in for `comfy_api.v0_0_2` (tests only): the versioned alias of `comfy_api.latest`."""
from comfy_api.latest import ComfyExtension, Input, InputImpl, Types, io, ui  # noqa: F401
