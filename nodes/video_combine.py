"""Video Combine: IMAGE frames + AUDIO + fps -> core VIDEO, and an mp4 (H.264 + AAC) saved under output/."""
import json
import os

import comfy.utils
import folder_paths

from ..emo_model.media.audio import fit_to_frames, fps_fraction
from ..emo_model.errors import EMOInputError
from ..emo_model.media.video import VideoWriter
from .audio_encode import audio_track
from .comfy_bridge import CATEGORY, InputImpl, Types, io, model_management, ui

WRITE_CHUNK = 64  # frames encoded between two progress updates / Cancel checks

try:
    from comfy.cli_args import args as _cli_args
except ImportError:  # outside the ComfyUI server
    _cli_args = None


def safe_prefix(prefix: str, output_dir: str) -> str:
    """Refuse a filename_prefix that would leave output/ (absolute, `..`) before ComfyUI resolves it."""
    prefix = (prefix or "").strip()
    if not prefix:
        raise EMOInputError("Video Combine: filename_prefix is empty: use a name such as 'emo/talking_head'")
    target = os.path.abspath(os.path.join(output_dir, prefix))
    root = os.path.abspath(output_dir)
    if os.path.isabs(prefix) or os.path.commonpath([root, target]) != root or target == root:
        raise EMOInputError(f"Video Combine: filename_prefix '{prefix}' points outside ComfyUI's output folder: "
                            "use a relative name such as 'emo/talking_head' (subfolders are allowed, '..' is not)")
    return prefix


class EMOVideoCombine(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMOVideoCombine",
            display_name="EMO Video Combine",
            category=CATEGORY,
            description="Joins frames and the audio track into a video: outputs a core VIDEO for other nodes and "
                        "saves an mp4 (H.264 + AAC) in ComfyUI's output folder, with the workflow embedded (drag "
                        "the mp4 into ComfyUI to get the graph back). The audio is cut or padded to frames / fps.",
            inputs=[
                io.Image.Input("frames", tooltip="Video frames IMAGE [frames, H, W, 3] (e.g. from EMO Sampler, "
                                                 "EMO Paste Back, an upscaler or a frame interpolator)."),
                io.Float.Input("fps", default=25.0, min=1.0, max=120.0, step=0.001, round=0.001,
                               tooltip="Frame rate (fractional allowed, 29.97 = 30000/1001). Connect the "
                                       "sampler's fps; multiply it when a frame interpolator added frames."),
                io.String.Input("filename_prefix", default="emo/EMO",
                                tooltip="Where to save inside ComfyUI's output folder; subfolders allowed "
                                        "(e.g. 'emo/take1'). A counter is appended."),
                io.Int.Input("crf", default=18, min=0, max=51,
                             tooltip="H.264 quality: 0 lossless, 18 visually lossless, 23 smaller files, "
                                     "51 worst."),
                io.Audio.Input("audio", optional=True,
                               tooltip="The voice track (connect EMO Audio Encode's trimmed audio). Without "
                                       "it the video is silent."),
            ],
            outputs=[io.Video.Output(display_name="video", tooltip="The video as a core VIDEO (for Save Video, "
                                                                  "Get Video Components, ...).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, frames, fps, filename_prefix, crf, audio=None):
        if frames is None or frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] not in (3, 4):
            shape = None if frames is None else list(frames.shape)
            raise EMOInputError(f"Video Combine: expected IMAGE frames [frames, H, W, 3], got {shape}")
        frames = frames[..., :3].float().cpu()
        rate = fps_fraction(fps)
        wave, sample_rate = audio_track(audio, "Video Combine") if audio is not None else (None, None)

        output_dir = os.path.abspath(folder_paths.get_output_directory())
        prefix = safe_prefix(filename_prefix, output_dir)
        height, width = frames.shape[1:3]
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, output_dir, width, height)
        if os.path.commonpath([output_dir, os.path.abspath(folder)]) != output_dir:
            raise EMOInputError(f"Video Combine: '{prefix}' resolves outside the output folder: use a relative name")
        file = f"{name}_{counter:05}_.mp4"

        metadata = {}
        if not (_cli_args is not None and getattr(_cli_args, "disable_metadata", False)):
            hidden = cls.hidden
            if hidden is not None and hidden.extra_pnginfo:
                metadata.update({k: json.dumps(v) for k, v in hidden.extra_pnginfo.items()})
            if hidden is not None and hidden.prompt is not None:
                metadata["prompt"] = json.dumps(hidden.prompt)
        # The writer fills a hidden temporary file in the same folder and gives it the name only when the video is
        # complete; a name that is taken (a file ComfyUI's counter did not see) is kept and the video takes the next
        # free one. A failure or Cancel while writing leaves nothing in output/.
        bar = comfy.utils.ProgressBar(frames.shape[0])  # the server shows it on the node that is running
        with VideoWriter(os.path.join(folder, file), rate, audio=wave, sample_rate=sample_rate, crf=crf,
                         metadata=metadata) as writer:
            for start in range(0, frames.shape[0], WRITE_CHUNK):
                writer.write(frames[start:start + WRITE_CHUNK])
                bar.update_absolute(min(start + WRITE_CHUNK, frames.shape[0]))
                model_management.throw_exception_if_processing_interrupted()
        file = os.path.basename(writer.path)

        video_audio = None
        if wave is not None:  # the VIDEO carries the audio cut/padded to the video's length, like the mp4
            wave = fit_to_frames(wave, sample_rate, frames.shape[0], rate)
            video_audio = {"waveform": wave[None].contiguous(), "sample_rate": sample_rate}
        video = InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, audio=video_audio, frame_rate=rate))
        return io.NodeOutput(video, ui=ui.PreviewVideo([ui.SavedResult(file, subfolder, io.FolderType.output)]))
