"""EMO Sampler: encoded audio + encoded reference -> IMAGE frames and/or a streamed VIDEO, clip by clip, with progress
and Cancel."""
import contextlib
import logging
import time

import numpy as np
import torch

import comfy.latent_formats
import comfy.utils
import latent_preview

from ..emo_model.errors import EMOInputError
from ..emo_model.sampling.pipeline import memory_estimate
from .comfy_bridge import CATEGORY, EmoAudio, EmoModel, EmoReference, io, model_management
from .streaming import TempVideo, output_linked, placeholder_image

log = logging.getLogger(__name__)

AUTO = 0  # steps / CFG widget value meaning "what the checkpoint was made for" (EMOConfig.sampling)
AUTO_DROP = -1.0  # motion_drop widget value meaning the checkpoint's own (Hallo2 0.25, others 0 = off)
PREVIEW_EVERY = 0.5  # s: a preview copies latents to the host (a GPU sync), so at most two per second


def previewer(device):
    """ComfyUI's own latent previewer for SD1.5 latents: follows --preview-method (none: no previews; auto /
    latent2rgb: latent->RGB factors; taesd: the TAESD decoder from models/vae_approx/) and --preview-size."""
    return latent_preview.get_previewer(device, comfy.latent_formats.SD15())


def preview_image(previewer, latents: torch.Tensor):
    """The middle frame of a clip's latents `[1, 4, f, h, w]` (scaled SD1.5 latents, as ComfyUI's samplers hold
    them) -> the `(format, PIL image, max size)` tuple ComfyUI's progress bar sends to the browser."""
    frame = latents[:, :, latents.shape[2] // 2].float()  # [1, 4, h, w]
    return previewer.decode_latent_to_preview_image("JPEG", frame)


def _frame_batch(n: int, frame_shape) -> torch.Tensor:
    """The IMAGE batch [n, H, W, 3] float32 on ComfyUI's intermediate device, or a clear error when it does not fit."""
    try:
        return torch.empty((n, *frame_shape), dtype=torch.float32, device=model_management.intermediate_device())
    except (RuntimeError, MemoryError):  # torch raises RuntimeError ("DefaultCPUAllocator: can't allocate ...")
        gb = n * int(np.prod(frame_shape)) * 4 / 2**30
        raise EMOInputError(
            f"{n} frames of {frame_shape[1]}x{frame_shape[0]} need {gb:.1f} GB of memory as an IMAGE batch, more than "
            "is free: render the track in parts (EMO Audio Encode's start / duration), or use the command line "
            "(python -m emo_model render), which writes frames to the mp4 as they come") from None


class EMOSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMOSampler",
            display_name="EMO Sampler",
            category=CATEGORY,
            description="Generates the talking-head frames: one clip after another (each continuing from the "
                        "last frames of the previous one) until the audio is covered. Shows progress over all "
                        "steps of all clips with a preview of the current clip; Cancel stops at the next step.",
            inputs=[
                EmoModel.Input("emo_model", tooltip="From Load EMO Models."),
                EmoAudio.Input("encoded_audio", tooltip="From EMO Audio Encode: drives the lips and expression; "
                                                        "its length sets the number of frames."),
                EmoReference.Input("reference", tooltip="From EMO Reference Encode: the face to animate."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed: the same seed and settings give the same video."),
                io.Int.Input("steps", default=AUTO, min=0, max=200,
                             tooltip="Denoising steps per clip; 0 = auto: what the checkpoint was made for (EMO and "
                                     "Hallo 40, EchoMimic 30, EchoMimic accelerated 6). Fewer is faster and "
                                     "rougher."),
                io.Float.Input("audio_cfg", default=AUTO, min=0.0, max=20.0, step=0.1, round=0.01,
                               tooltip="Audio guidance: higher follows the voice more strongly (mouth and "
                                       "expression); 1 turns audio guidance off. 0 = auto: the checkpoint's own "
                                       "(Hallo 3.5, EchoMimic 2.5, EchoMimic accelerated 1 = off)."),
                io.Float.Input("reference_cfg", default=AUTO, min=0.0, max=20.0, step=0.1, round=0.01,
                               tooltip="Reference guidance: higher keeps the face closer to the reference "
                                       "picture; 1 turns it off. 0 = auto: the checkpoint's own (Hallo 3.5, "
                                       "EchoMimic 2.5, EchoMimic accelerated 1 = off)."),
                io.Float.Input("head_motion_speed", default=1.0, min=0.0, max=10.0, step=0.05, round=0.01,
                               tooltip="How fast the head moves. Used only when the checkpoint has speed layers "
                                       "(native EMO checkpoints); ignored for Hallo and EchoMimic checkpoints."),
                io.Int.Input("frames_per_clip", default=0, min=0, max=64,
                             tooltip="Frames generated per clip; 0 = the checkpoint's own (EMO 12, Hallo 16). "
                                     "More needs more memory."),
                io.Int.Input("motion_frames", default=-1, min=-1, max=16,
                             tooltip="Frames of the previous clip each clip continues from; -1 = the "
                                     "checkpoint's own (EMO 4, Hallo 2)."),
                io.Float.Input("pose_weight", default=1.0, min=0.0, max=5.0, step=0.05, round=0.01, optional=True,
                               tooltip="Hallo models only: how strongly the audio drives the background/head-pose "
                                       "region (Hallo's pose_weight). Other models ignore it."),
                io.Float.Input("face_weight", default=1.0, min=0.0, max=5.0, step=0.05, round=0.01, optional=True,
                               tooltip="Hallo models only: how strongly the audio drives the face region "
                                       "(expression; Hallo's face_weight). Other models ignore it."),
                io.Float.Input("lip_weight", default=1.0, min=0.0, max=5.0, step=0.05, round=0.01, optional=True,
                               tooltip="Hallo models only: how strongly the audio drives the lips (Hallo's "
                                       "lip_weight). Other models ignore it."),
                io.Float.Input("motion_drop", default=AUTO_DROP, min=-1.0, max=0.95, step=0.05, round=0.01,
                               optional=True,
                               tooltip="Models with motion frames (Hallo2, Hallo, EMO): the fraction of the motion "
                                       "frames' pixels outside the face box set to grey before each clip (Hallo2's "
                                       "long-video trick: the next clip leans less on the last frames, so long "
                                       "videos drift less). -1 = auto: the checkpoint's own (Hallo2 0.25; Hallo, "
                                       "EMO 0 = off); 0 = off. EchoMimic (context windows) ignores it."),
                io.Float.Input("speed_cfg", default=AUTO, min=0.0, max=20.0, step=0.1, round=0.01, optional=True,
                               tooltip="Speed guidance, checkpoints with speed layers only: above 1 the head "
                                       "follows head_motion_speed more strongly (compared with a still head); 1 "
                                       "turns it off. 0 = auto: the checkpoint's own (models trained with this pack "
                                       "say theirs; others 1 = off). Hallo and EchoMimic ignore it."),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="The video frames, IMAGE [frames, H, W, 3] 0..1."),
                io.Float.Output(display_name="fps", tooltip="The frame rate the audio was encoded at: connect "
                                                           "it to Video Combine."),
                io.Video.Output(display_name="video",
                                tooltip="The same frames as a VIDEO streamed to a lossless file in ComfyUI's temp "
                                        "folder as they are made: for tracks of any length (RAM stays flat). "
                                        "Connect it to EMO Paste Back / EMO Video Combine (their `video` input) "
                                        "or EMO Frame Batches. When only this output is connected, no IMAGE "
                                        "batch is kept."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, emo_model, encoded_audio, reference, seed, steps, audio_cfg, reference_cfg,
                head_motion_speed, frames_per_clip, motion_frames, pose_weight=1.0, face_weight=1.0, lip_weight=1.0,
                motion_drop=AUTO_DROP, speed_cfg=AUTO):
        bundle = emo_model
        config = bundle.model.config
        chosen = config.sampling(steps=steps or None, audio_cfg=audio_cfg or None, ref_cfg=reference_cfg or None)
        if AUTO in (steps, audio_cfg, reference_cfg):
            log.info("EMO Sampler: auto settings of the checkpoint: %d steps, audio CFG %g, reference CFG %g",
                     chosen.steps, chosen.audio_cfg, chosen.ref_cfg)
        speed = head_motion_speed if getattr(config, "speed", None) else None
        if speed is not None and speed_cfg == AUTO and getattr(config, "speed_cfg", 1.0) != 1.0:
            log.info("EMO Sampler: auto speed guidance of the checkpoint: %g", config.speed_cfg)
        fpc = frames_per_clip or None
        mf = None if motion_frames < 0 else motion_frames
        drop = None if motion_drop < 0 else motion_drop
        if drop is None and getattr(config, "motion_drop", 0.0) > 0:
            log.info("EMO Sampler: auto motion-frame pixel drop of the checkpoint: %g", config.motion_drop)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        bar = None
        last_preview = -PREVIEW_EVERY
        decoder = previewer(bundle.patcher.load_device)

        def on_step(p):
            nonlocal bar, last_preview
            if bar is None:
                bar = comfy.utils.ProgressBar(p.total_steps, node_id=node_id)
            preview = None
            if decoder is not None and (time.monotonic() - last_preview >= PREVIEW_EVERY or p.step == p.total_steps):
                preview = preview_image(decoder, p.latents)
                last_preview = time.monotonic()
            # The server's progress hook raises InterruptProcessingException when the user pressed Cancel;
            # the explicit check covers runs without the hook. Either way the pipeline stops at this step.
            bar.update_absolute(p.step, p.total_steps, preview)
            model_management.throw_exception_if_processing_interrupted()

        bundle.to_compute_device(memory_required=memory_estimate(config, fpc))
        # Finished frames leave the GPU clip by clip: into the streamed VIDEO file when its output is connected,
        # and into one preallocated IMAGE batch (RAM holds the frames once) only when something reads `frames`.
        prompt = cls.hidden.prompt if cls.hidden is not None else None
        want_images = output_linked(prompt, node_id, 0)
        want_video = prompt is not None and output_linked(prompt, node_id, 2)
        frames, done, video = None, 0, None
        with contextlib.ExitStack() as stack:
            stream = stack.enter_context(TempVideo(encoded_audio.fps, "sampler")) if want_video else None
            for clip in bundle.pipeline.sample(encoded_audio, reference, steps=chosen.steps, seed=seed,
                                               audio_cfg=chosen.audio_cfg, ref_cfg=chosen.ref_cfg, speed=speed,
                                               frames_per_clip=fpc, motion_frames=mf,
                                               region_weights=(pose_weight, face_weight, lip_weight),
                                               callback=on_step, motion_drop=drop,
                                               speed_cfg=(speed_cfg or None) if speed is not None else None):
                if stream is not None:
                    stream.write(clip)
                if want_images:
                    if frames is None:
                        frames = _frame_batch(encoded_audio.num_frames, clip.shape[1:])
                    frames[done:done + clip.shape[0]] = clip.clamp(0, 1)
                done += clip.shape[0]
            if not done:
                raise EMOInputError("EMO Sampler produced no frames: the encoded audio is empty")
        if stream is not None:
            video = stream.video
        frames = frames[:done] if frames is not None else placeholder_image()
        return io.NodeOutput(frames, float(encoded_audio.fps), video)
