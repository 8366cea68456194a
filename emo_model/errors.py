"""Errors the user can act on.

Every error raised for bad input says what is wrong and what to do about it
(which file, which folder, which setting). Nodes and the CLI show the message
as is, without a traceback from deep inside torch.
"""


class EMOError(Exception):
    """Base class: a problem the user can fix; the message names the fix."""


class EMOInputError(EMOError, ValueError):
    """Bad input: an image, an audio track or a setting the pipeline cannot use."""


class EMOCheckpointError(EMOError, ValueError):
    """A model file or folder that is missing, truncated, unsafe or of an unknown kind."""

