"""render(): image + audio -> mp4, the whole job in one call (used by the CLI).

The picture is cropped around the face (square, at the model's resolution), animated, and by default pasted back
into the picture at its own size; frames go to the mp4 writer as each clip finishes, so memory stays flat however
long the track is. Paste-back and encoding run on a worker thread while the next clip is sampled (at most one clip
waits), so the accelerator does not idle during writing.
"""
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .media.audio import count_frames, fps_fraction, load_audio
from .faces.crop import fit_color_match, paste_back
from .faces.pose import load_pose_frames
from .media.image import example_portrait, load_image
from .sampling.pipeline import EMOPipeline
from .sampling.reference import prepare_reference
from .media.video import VideoWriter, check_output_path


def render(model, image, audio, out, *, steps=None, seed=0, fps=None, audio_cfg=None, ref_cfg=None, speed=None,
           frames_per_clip=None, motion_frames=None, framing="full", detector="auto", detector_file=None,
           face_index=0, margin=0.5, whole_image=None, face_mask=None, identity="auto", pose=None,
           region_weights=(1.0, 1.0, 1.0), motion_drop=None, speed_cfg=None, progress=None,
           overwrite=False) -> dict:
    """model: a loaded EMOModel; image: path, "example" (scikit-image's astronaut) or uint8 [H, W, 3];
    audio: path or (waveform [channels, samples], sample_rate); out: the .mp4 to write. framing: "full" pastes the
    animated face back into the picture, "crop" writes the square crop. whole_image: True = no face detection, the
    picture's centred square is animated; False = detect the face; None = the model's choice (True for a model trained
    on `prepare-data --whole-frame` data, said once in the log). identity (Hallo): "auto" = ArcFace
    embedding when glintr100.onnx is beside the checkpoint (Hallo's pretrained_models/face_analysis/models/), else
    Hallo's no-face fallback (zero embedding); "zero" = always the fallback; or a folder / .onnx path. pose
    (EchoMimic `_pose` models): EchoMimic's pose folder, a .npy of landmarks, a folder of drawn frames or a video of
    them (`pose_frames.load_pose_frames`). region_weights (Hallo): (pose, face, lip) weights of the audio in the
    background, face and lip regions. motion_drop: the motion-frame pixel drop (None: the checkpoint's, Hallo2 0.25,
    others 0). speed_cfg: speed guidance for models with speed layers (None: the checkpoint's; 1 = off; see
    sampling/guidance.py). progress(SampleProgress) is called per step.
    overwrite: replace a file at `out` (else it is kept and the video takes the next free name, `out_2.mp4`); the
    video appears under its name only once complete, and a failed or interrupted render leaves nothing
    (`media.video.VideoWriter`). Returns a summary dict (frames, fps, seconds, size, out: the path written)."""
    check_output_path(out, [p for p in (image, audio, pose) if isinstance(p, (str, Path)) and p != "example"])
    pipe = EMOPipeline(model, offload_idle=model.device.type == "cuda")
    cfg = model.config
    picture = example_portrait() if isinstance(image, str) and image == "example" else (
        load_image(image) if isinstance(image, (str, Path)) else np.asarray(image))
    wave, sr = load_audio(audio) if isinstance(audio, (str, Path)) else audio
    fps = cfg.sampling(fps=fps).fps  # None: the checkpoint's own
    t0 = time.perf_counter()
    num_frames = count_frames(np.shape(wave)[-1], sr, fps_fraction(fps))
    frames = None if pose is None else load_pose_frames(pose, cfg.resolution, num_frames)
    prepared = prepare_reference(model, picture, face_mask=face_mask, detector=detector, detector_file=detector_file,
                                 face_index=face_index, margin=margin, whole_image=whole_image, identity=identity,
                                 pose_frames=frames)
    ref, info = prepared.reference, prepared.crop
    if prepared.picture is not None:  # the whole frame is generated (EchoMimic v2): the output is the frame itself
        framing = "crop"
    enc_audio = pipe.encode_audio(wave, sr, fps, frames_per_clip)
    match = None

    def emit(clip):  # on the worker thread, one clip after another
        nonlocal match
        if framing == "crop":
            writer.write(clip)
            return
        if match is None:
            match = fit_color_match(picture, clip[0], info)
        writer.write(paste_back(picture, clip, info, color_match=match))

    with VideoWriter(out, enc_audio.fps, audio=wave, sample_rate=sr, overwrite=overwrite) as writer, ThreadPoolExecutor(1) as worker:
        pending = deque()
        for clip in pipe.sample(enc_audio, ref, steps=steps, seed=seed, audio_cfg=audio_cfg, ref_cfg=ref_cfg,
                                speed=speed, frames_per_clip=frames_per_clip, motion_frames=motion_frames,
                                region_weights=tuple(region_weights), callback=progress,
                                motion_drop=motion_drop, speed_cfg=speed_cfg):
            pending.append(worker.submit(emit, clip))
            while len(pending) > 1:
                pending.popleft().result()  # raises the worker's error, if any
        while pending:
            pending.popleft().result()
        frames = writer.frames_written
        size = writer.size
    return dict(frames=frames, fps=enc_audio.fps, seconds=time.perf_counter() - t0, size=size,
                duration=enc_audio.duration, out=writer.path)

