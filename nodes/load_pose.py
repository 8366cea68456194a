"""Load Pose: EchoMimic's pose input (a folder of per-frame landmark files, EchoMimic v2's folder of DWPose files, drawn
frames, or a video of them) -> IMAGE of drawn pose frames, for the `pose_frames` input of EMO Reference Encode
(EchoMimic `_pose` models and EchoMimic v2)."""
import os

import folder_paths

from ..emo_model.errors import EMOInputError
from ..emo_model.faces.hand_pose import FRAME as HAND_FRAME
from ..emo_model.faces.pose import is_dwpose_folder, load_pose_frames
from .comfy_bridge import CATEGORY, io

DRAW_SIZE = 512  # px: EchoMimic draws its landmarks on a 512 x 512 canvas


class EMOLoadPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMOLoadPose",
            display_name="EMO Load Pose",
            category=CATEGORY,
            description="Reads the pose input of EchoMimic's pose-driven (_pose) models and of EchoMimic v2 and draws "
                        "it the way they do (v1: eyes, brows, pupils, nose tip on black, 512x512; v2: the hands, "
                        "768x768). Connect to EMO Reference Encode's pose_frames.",
            inputs=[
                io.String.Input("path", default="",
                                tooltip="EchoMimic's pose folder (0.pkl, 1.pkl, ... per-frame face-mesh landmarks, "
                                        "or .npy), EchoMimic v2's pose folder (0.npy, 1.npy, ... DWPose results, "
                                        "e.g. assets/halfbody_demo/pose/01), one .npy [frames, points, 2|3], a "
                                        "folder of drawn pose pictures, or a video of them. A relative path is "
                                        "looked up in ComfyUI's input folder."),
                io.Int.Input("max_frames", default=0, min=0, max=100000,
                             tooltip="Keep only the first frames (0 = all). The video needs one pose frame per "
                                     "video frame."),
            ],
            outputs=[io.Image.Output(display_name="pose_frames",
                                     tooltip="The drawn pose frames, IMAGE [frames, 512, 512, 3] 0..1 "
                                             "(EchoMimic v2's folders: [frames, 768, 768, 3]).")],
        )

    @classmethod
    def execute(cls, path, max_frames):
        path = path.strip().strip('"')
        if not path:
            raise EMOInputError("EMO Load Pose: path is empty: give EchoMimic's pose folder (or a video / folder of "
                                "drawn pose frames), absolute or relative to ComfyUI's input folder")
        full = path if os.path.isabs(path) else os.path.join(folder_paths.get_input_directory(), path)
        frames = load_pose_frames(full, HAND_FRAME if is_dwpose_folder(full) else DRAW_SIZE)
        if max_frames:
            frames = frames[:max_frames]
        return io.NodeOutput(frames.float().div_(255))  # IMAGE is float 0..1; made only here, after the cut
