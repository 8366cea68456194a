"""Video Combine: IMAGE frames + AUDIO + fps -> core VIDEO, and an mp4 (H.264 + AAC) saved under output/."""
import contextlib
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
from .frame_batches import BatchInfo, EmoBatch, advance, requeue
from .streaming import StreamedVideo, TempVideo, video_batches

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
                io.Image.Input("frames", optional=True,
                               tooltip="Video frames IMAGE [frames, H, W, 3] (e.g. from EMO Sampler, EMO Paste Back, "
                                       "an upscaler or a frame interpolator). Connect this or `video`."),
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
                io.Video.Input("video", optional=True,
                               tooltip="The frames as a VIDEO (EMO Sampler's or EMO Paste Back's `video` output): "
                                       "read and encoded batch by batch, for tracks of any length. Connect this "
                                       "or `frames`; the `fps` input sets the rate."),
                EmoBatch.Input("batch", optional=True,
                               tooltip="From EMO Frame Batches: `frames` is one batch of a long video. Each batch is "
                                       "appended and the workflow queued again for the next; the mp4 (with the "
                                       "audio) is written after the last batch."),
            ],
            outputs=[io.Video.Output(display_name="video", tooltip="The video as a core VIDEO (for Save Video, "
                                                                  "Get Video Components, ...).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, fps, filename_prefix, crf, frames=None, audio=None, video=None, batch=None):
        if batch is not None:
            if frames is None:
                raise EMOInputError("Video Combine: `batch` comes with `frames`: connect the IMAGE that went through "
                                    "your nodes from EMO Frame Batches' `frames`")
            video = intermediate = _append_batch(frames, fps, batch)
            if video is None:  # more batches to come: queued again, nothing saved yet
                hidden = cls.hidden
                if hidden is not None and hidden.prompt is not None:
                    requeue(hidden.prompt, hidden.extra_pnginfo)
                return io.NodeOutput(None)
            frames = None
        else:
            intermediate = None
        if (frames is None) == (video is None):
            raise EMOInputError("Video Combine: connect either `frames` (IMAGE) or `video` (VIDEO, for long tracks), "
                                "not both and not neither")
        if frames is not None and (frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] not in (3, 4)):
            raise EMOInputError(f"Video Combine: expected IMAGE frames [frames, H, W, 3], got {list(frames.shape)}")
        if frames is not None:
            frames = frames[..., :3].float().cpu()
            width, height = frames.shape[2], frames.shape[1]
            batches = (frames[start:start + WRITE_CHUNK] for start in range(0, frames.shape[0], WRITE_CHUNK))
        else:
            width, height = video.get_dimensions()
            batches = video_batches(video)
        rate = fps_fraction(fps)
        wave, sample_rate = audio_track(audio, "Video Combine") if audio is not None else (None, None)

        output_dir = os.path.abspath(folder_paths.get_output_directory())
        prefix = safe_prefix(filename_prefix, output_dir)
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
        total = frames.shape[0] if frames is not None else getattr(video, "frame_count", 0)
        bar = comfy.utils.ProgressBar(max(total, 1))  # the server shows it on the node that is running
        try:
            with VideoWriter(os.path.join(folder, file), rate, audio=wave, sample_rate=sample_rate, crf=crf,
                             metadata=metadata) as writer:
                for batch in batches:
                    writer.write(batch)
                    bar.update_absolute(min(writer.frames_written, max(total, 1)))
                    model_management.throw_exception_if_processing_interrupted()
        finally:
            if intermediate is not None:  # in the mp4 now; or, after a failure, of no more use (the pass restarts)
                with contextlib.suppress(FileNotFoundError):  # never hides the error that got us here
                    os.remove(intermediate.path)
        file = os.path.basename(writer.path)
        saved = ui.PreviewVideo([ui.SavedResult(file, subfolder, io.FolderType.output)])
        if frames is None:  # the streamed path: the VIDEO is the saved file, decoded only when a node asks
            return io.NodeOutput(StreamedVideo(writer.path, rate, writer.frames_written, (width, height)), ui=saved)

        video_audio = None
        if wave is not None:  # the VIDEO carries the audio cut/padded to the video's length, like the mp4
            wave = fit_to_frames(wave, sample_rate, frames.shape[0], rate)
            video_audio = {"waveform": wave[None].contiguous(), "sample_rate": sample_rate}
        video = InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, audio=video_audio, frame_rate=rate))
        return io.NodeOutput(video, ui=saved)


# run id of an EMO Frame Batches pass -> the intermediate its batches are appended to (in ComfyUI's temp folder)
_PENDING: dict[str, TempVideo] = {}


def _append_batch(frames, fps, info: BatchInfo):
    """Append one batch to its pass's intermediate; after the last, return that intermediate as a VIDEO."""
    pending = _PENDING.get(info.run)
    written = pending.writer.frames_written if pending is not None else 0
    if written != info.first_frame:
        raise EMOInputError(f"Video Combine: batch {info.index + 1} of {info.count} starts at frame {info.first_frame} "
                            f"but {written} frames of this pass are written: queue the workflow again (EMO Frame "
                            "Batches resumes at the first batch not yet written)")
    if pending is None:
        pending = _PENDING[info.run] = TempVideo(fps, "batches").__enter__()
    try:
        pending.write(frames)
    except BaseException as e:
        _PENDING.pop(info.run, None).__exit__(type(e), e, None)  # the pass restarts from its first batch
        advance_failed(info)
        raise
    advance(info)
    if not info.last:
        return None
    del _PENDING[info.run]
    pending.__exit__(None, None, None)
    return pending.video


def advance_failed(info: BatchInfo) -> None:
    """A batch could not be appended and the pass's file is gone: the next run starts the pass again."""
    from .frame_batches import _STATE
    _STATE.pop(info.key, None)
