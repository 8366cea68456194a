"""The extension ComfyUI's loader asks for its nodes (V3 `comfy_entrypoint`)."""
import logging

from .audio_encode import EMOAudioEncode
from .comfy_bridge import ComfyExtension
from .download import EMODownloadModels
from .example_inputs import install_example_inputs
from .frame_batches import EMOFrameBatches
from .load_models import EMOLoadModels
from .load_pose import EMOLoadPose
from .paste_back import EMOPasteBack
from .reference_encode import EMOReferenceEncode
from .sampler import EMOSampler
from .streaming import remove_stale_parts
from .video_combine import EMOVideoCombine

log = logging.getLogger(__name__)

# Node ids are the identity of shared workflows: never rename one (add a new node instead).
NODES = [EMOLoadModels, EMOAudioEncode, EMOReferenceEncode, EMOSampler, EMOPasteBack, EMOVideoCombine,
         EMOLoadPose, EMODownloadModels, EMOFrameBatches]


class EMOExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


async def comfy_entrypoint() -> EMOExtension:
    install_example_inputs()  # the templates open ready to Queue
    try:
        remove_stale_parts()  # partial videos of a server that was killed while writing
    except OSError as e:
        log.warning("EMO: could not look for partial videos in the output folder: %s", e)
    return EMOExtension()
