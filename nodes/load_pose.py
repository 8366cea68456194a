"""Load Pose: EchoMimic's pose input (a folder of per-frame landmark files, drawn frames, or a video of them) ->
IMAGE of drawn pose frames, for the `pose_frames` input of EMO Reference Encode (EchoMimic `_pose` models)."""
import os

import folder_paths

from ..emo_model.errors import EMOInputError
from ..emo_model.faces.pose import load_pose_frames
from .comfy_bridge import CATEGORY, io

DRAW_SIZE = 512  # px: EchoMimic draws its landmarks on a 512 x 512 canvas


class EMOLoadPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMOLoadPose",
            display_name="EMO Load Pose",
            category=CATEGORY,
            description="Reads the pose input of EchoMimic's pose-driven (_pose) models and draws it the way "
                        "EchoMimic does (eyes, brows, pupils, nose tip on black). Connect to EMO Reference Encode's "
                        "pose_frames.",
            inputs=[
                io.String.Input("path", default="",
                                tooltip="EchoMimic's pose folder (0.pkl, 1.pkl, ... per-frame face-mesh landmarks, "
                                        "or .npy), one .npy [frames, points, 2|3], a folder of drawn pose pictures, or "
                                        "a video of them. A relative path is looked up in ComfyUI's input folder."),
                io.Int.Input("max_frames", default=0, min=0, max=100000,
                             tooltip="Keep only the first frames (0 = all). The video needs one pose frame per "
                                     "video frame."),
            ],
            outputs=[io.Image.Output(display_name="pose_frames",
                                     tooltip="The drawn pose frames, IMAGE [frames, 512, 512, 3] 0..1.")],
        )

    @classmethod
    def execute(cls, path, max_frames):
        path = path.strip().strip('"')
        if not path:
            raise EMOInputError("EMO Load Pose: path is empty: give EchoMimic's pose folder (or a video / folder of "
                                "drawn pose frames), absolute or relative to ComfyUI's input folder")
        full = path if os.path.isabs(path) else os.path.join(folder_paths.get_input_directory(), path)
        frames = load_pose_frames(full, DRAW_SIZE)
        if max_frames:
            frames = frames[:max_frames]
        return io.NodeOutput(frames.float().div_(255))  # IMAGE is float 0..1; made only here, after the cut
