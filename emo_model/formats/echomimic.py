"""EchoMimic v1 (antgroup/echomimic, Apache-2.0): a folder of `reference_unet.pth`, `denoising_unet.pth`,
`motion_module.pth`, `face_locator.pth` -> EMOModel. The accelerated (distilled, 6 steps, no CFG) release adds
`denoising_unet_acc.pth` and `motion_module_acc.pth` beside them and shares the ReferenceNet and face locator.
The landmark-driven ("pose") release is a third and fourth set with `_pose` in every name (`reference_unet_pose.pth`,
`denoising_unet_pose[_acc].pth`, `motion_module_pose[_acc].pth`, `face_locator_pose.pth`): same architecture, but its
face locator takes 3 channels, one drawing of face landmarks per video frame (pose_frames.py) instead of the static
1-channel face mask; its windows shift by 3 frames per step instead of 2 and its initial noise is not clamped
(pipeline_echo_mimic_pose*.py). One model is always one whole set: files of two sets are never mixed.

EchoMimic v2 (antgroup/echomimic_v2, Apache-2.0; half-body, driven by audio and hand poses) has v1's pose architecture
under other names: `reference_unet.pth`, `denoising_unet.pth`, `motion_module.pth` and `pose_encoder.pth` (v1's
3-channel face locator, same keys), plus the accelerated `denoising_unet_acc.pth` / `motion_module_acc.pth`; its
whisper file is `audio_processor/tiny.pt`. A folder with `pose_encoder.pth` is a v2 folder. Its sampling
(pipeline_echomimicv2.py, infer.py): 768 x 768, the initial noise clamped to +-1.5, windows of 12 overlapping by 3 that
shift by 3 frames a step, CFG 2.5, 30 steps (acc: 6 steps, no CFG), 24 fps; one hand-pose drawing per video frame
(faces/hand_pose.py) and the whole picture as the reference (no face crop, no paste-back: `framing="whole"`).

Audio (whisper-tiny, 5 levels x 10 frames = 50 tokens per frame) goes into the denoising UNet's cross-attention slot
with gain 3.0; there are no audio-attention layers, no motion frames (overlapping shifting context windows instead)
and the ReferenceNet has no cross-attention. The UNet config comes from `sd-image-variations-diffusers/unet/
config.json` beside the files when present, else SD1.5's; widths, the audio width (attn2.to_k: [C, width]) and the
temporal position-table length are read from the tensors; the resolution is 8 x the config's `sample_size` (512).
The accelerated set's v -> x0 -> "pseudo-velocity" conversion before each DDIM step is the identity
(x0 = a x - b v, then (a x - x0) / b = v), so both sets sample with the same loop.
"""
from pathlib import Path

from ..config import DDIM_V_ZSNR, EMOConfig
from ..errors import EMOCheckpointError
from .common import face_locator_config, unet_config_file, unet_config_from_tensors
from .safe_load import load_tensors

PARTS = ("reference_unet", "denoising_unet", "motion_module", "face_locator")
ACC_PARTS = ("denoising_unet", "motion_module")  # the accelerated releases replace only these two
V2_MARK = "pose_encoder.pth"  # EchoMimic v2's name for its (3-channel) face locator
V2_RESOLUTION = 768  # infer.py's -W / -H


def is_v2_folder(folder: Path) -> bool:
    """An EchoMimic v2 folder: `pose_encoder.pth` beside the UNet files (v1's sets have face_locator*.pth)."""
    folder = Path(folder)
    if not (folder / V2_MARK).is_file():
        return False
    if (folder / "face_locator.pth").is_file():
        raise EMOCheckpointError(
            f"{folder} holds both face_locator.pth (EchoMimic v1) and pose_encoder.pth (EchoMimic v2): the other "
            "files have the same names in both releases, so keep each release in its own folder")
    return True


def v2_files(folder: Path, accelerated: bool | None = None) -> dict:
    """{part: path} of an EchoMimic v2 set; the pose encoder is the "face_locator" part (same module)."""
    folder = Path(folder)
    if accelerated is None:
        accelerated = not (folder / "denoising_unet.pth").is_file() and (folder / "denoising_unet_acc.pth").is_file()
    names = {p: f"{p}{'_acc' if accelerated and p in ACC_PARTS else ''}.pth" for p in PARTS[:3]}
    names["face_locator"] = V2_MARK
    for name in names.values():
        if not (folder / name).is_file():
            raise EMOCheckpointError(
                f"EchoMimic v2 folder {folder} is missing {name}: download it from BadToBest/EchoMimicV2 into that "
                f"folder (the {'accelerated' if accelerated else 'standard'} EchoMimic v2 model needs "
                f"{', '.join(names.values())}; `python -m emo_model download echomimic-v2` fetches them)")
    return {part: folder / name for part, name in names.items()}


def set_files(pose: bool, accelerated: bool) -> dict:
    """{part: file name} of one EchoMimic set, e.g. pose + accelerated -> denoising_unet_pose_acc.pth."""
    tag = "_pose" if pose else ""
    return {p: f"{p}{tag}{'_acc' if accelerated and p in ACC_PARTS else ''}.pth" for p in PARTS}


def _set_name(pose: bool, accelerated: bool) -> str:
    return f"{'accelerated' if accelerated else 'standard'} {'landmark-driven (pose)' if pose else 'audio-driven'}"


def echomimic_files(folder: Path, accelerated: bool | None = None, pose: bool | None = None) -> dict:
    """{part: path} of one consistent set. pose: True -> the landmark-driven `_pose` files, False -> the audio-driven
    ones, None -> audio-driven when a `denoising_unet[_acc].pth` is there, else the `_pose` set. accelerated: True ->
    the `_acc` denoising UNet and motion module, False -> the standard ones, None -> the standard set when its
    denoising UNet is there, else the `_acc` one. A missing file gives an EMOCheckpointError naming it.
    An EchoMimic v2 folder (`pose_encoder.pth`) gives its set (`v2_files`; `pose` does not apply)."""
    folder = Path(folder)
    if is_v2_folder(folder):
        return v2_files(folder, accelerated)

    def has(pose, accelerated):
        return (folder / set_files(pose, accelerated)["denoising_unet"]).is_file()

    if pose is None:
        pose = not (has(False, False) or has(False, True)) and (has(True, False) or has(True, True))
    if accelerated is None:
        accelerated = not has(pose, False) and has(pose, True)
    names = set_files(pose, accelerated)
    for name in names.values():
        if not (folder / name).is_file():
            raise EMOCheckpointError(
                f"EchoMimic folder {folder} is missing {name}: download it from EchoMimic's model page into that "
                f"folder (the {_set_name(pose, accelerated)} EchoMimic model needs {', '.join(names.values())})")
    return {part: folder / name for part, name in names.items()}


def echomimic_variant(path: Path) -> dict:
    """dict(pose=..., accelerated=...) that a picked EchoMimic file implies, for `echomimic_files`: `_pose` in the
    name picks the pose set, an `_acc.pth` ending the accelerated one (None: the shared files leave it open)."""
    name = Path(path).name
    acc = True if name.endswith("_acc.pth") else None if name.startswith(
        ("reference_unet", "face_locator", "pose_encoder")) else False
    return dict(pose="_pose" in name, accelerated=acc)


def load_echomimic_tensors(folder: Path, accelerated: bool | None = None,
                           pose: bool | None = None) -> tuple[dict, dict]:
    """({part: path}, {part: state dict}); each file is checked to hold the part its name says (the face locator also
    its input channels: 1 for the audio-driven sets, 3 for the pose sets), so swapped or foreign files get an error
    naming them rather than a shape mismatch later."""
    files = echomimic_files(folder, accelerated, pose)
    pose = files["face_locator"].name in ("face_locator_pose.pth", V2_MARK)
    sds = {part: load_tensors(path) for part, path in files.items()}
    for part, sd in sds.items():
        n_motion = sum(".motion_modules." in k for k in sd)
        if part == "motion_module":
            ok = 0 < n_motion == len(sd)
        elif part == "face_locator":
            ok = all(k in sd for k in ("conv_in.weight", "blocks.0.weight", "conv_out.weight"))
        else:  # EchoMimic's ReferenceNet has no cross-attention, the denoising UNet's takes the audio
            audio = any(k.endswith("attn2.to_k.weight") for k in sd)
            ok = "down_blocks.0.resnets.0.conv1.weight" in sd and (audio if part == "denoising_unet" else not audio)
        if not ok:
            raise EMOCheckpointError(
                f"{files[part]} does not hold EchoMimic's {part} weights ({len(sd)} tensors, e.g. {sorted(sd)[:2]}): "
                f"the files may be swapped or from another model; download {files[part].name} again")
    channels, want = sds["face_locator"]["conv_in.weight"].shape[1], 3 if pose else 1
    if channels != want and files["face_locator"].name == V2_MARK:
        raise EMOCheckpointError(f"{files['face_locator']} is a {channels}-channel encoder, but EchoMimic v2's pose "
                                 f"encoder takes 3 (hand-pose drawings): download {V2_MARK} again")
    if channels != want:
        other = "face_locator.pth" if pose else "face_locator_pose.pth"
        raise EMOCheckpointError(
            f"{files['face_locator']} is a {channels}-channel face locator, but the "
            f"{'pose set takes 3 channels (landmark drawings)' if pose else 'audio-driven set takes 1 (the face mask)'}"
            f": it may be {other} renamed; download {files['face_locator'].name} again from EchoMimic's model page")
    return files, sds


def is_echomimic_folder(folder: Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any((folder / set_files(p, a)["denoising_unet"]).is_file()
                                   for p in (False, True) for a in (False, True))


def find_echomimic_unet_config(folder: Path) -> dict:
    for root in (folder, folder.parent):
        cfg = root / "sd-image-variations-diffusers" / "unet" / "config.json"
        if cfg.is_file():
            return unet_config_file(cfg)
    return {}


def echomimic_config(den: dict, fl: dict, unet_base: dict, accelerated: bool, v2: bool = False) -> EMOConfig:
    """den: denoising UNet + motion-module tensors; fl: face-locator tensors; unet_base: the UNet config.json.
    A 3-channel face locator makes it the pose set: per-frame landmark drawings, windows shifted by 3 frames a step,
    no clamp of the initial noise (the rest as the audio-driven set). v2: EchoMimic v2 (hand-pose drawings, 768 x 768,
    shift 3 and the +-1.5 clamp, the whole picture as the frame)."""
    unet = unet_config_from_tensors(den, unet_base)  # cross_attention_dim = whisper width, from attn2.to_k
    pose = fl["conv_in.weight"].shape[1] == 3
    pe = next((v for k, v in den.items() if k.endswith("pos_encoder.pe")), None)
    if v2:
        return EMOConfig(
            kind="echomimic_v2", resolution=V2_RESOLUTION, unet=unet, cross_attention="audio", audio_gain=3.0,
            audio_attention=None,
            temporal=dict(heads=8, max_len=32 if pe is None else pe.shape[1], plain_blocks=True),
            temporal_mode="context_windows", window_shift=3, locator_input="pose", framing="whole",
            frames_per_clip=12, motion_frames=3, first_clip_motion="reference", hallo_identity_tiling=False,
            identity=None, face_locator=face_locator_config(fl),
            audio_encoder=dict(kind="whisper", fps=None, window=None), audio_projection=None, speed=None,
            scheduler=dict(DDIM_V_ZSNR), init_noise_clamp=1.5, steps=6 if accelerated else 30,
            audio_cfg=1.0 if accelerated else 2.5, ref_cfg=1.0 if accelerated else 2.5, fps=24.0)
    return EMOConfig(
        kind="echomimic", resolution=8 * unet["sample_size"], unet=unet, cross_attention="audio", audio_gain=3.0,
        audio_attention=None,
        temporal=dict(heads=8, max_len=32 if pe is None else pe.shape[1], plain_blocks=True),
        temporal_mode="context_windows", window_shift=3 if pose else 2, locator_input="pose" if pose else "face_mask",
        frames_per_clip=12, motion_frames=3, first_clip_motion="reference", hallo_identity_tiling=False, identity=None,
        face_locator=face_locator_config(fl),
        audio_encoder=dict(kind="whisper", fps=None, window=None), audio_projection=None, speed=None,
        scheduler=dict(DDIM_V_ZSNR), init_noise_clamp=None if pose else 1.5, steps=6 if accelerated else 30,
        audio_cfg=1.0 if accelerated else 2.5, ref_cfg=1.0 if accelerated else 2.5, fps=24.0)
