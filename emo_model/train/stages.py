"""EMO's three training stages: which model each starts from, which modules it adds, which it trains.

Stage 1 (image): ReferenceNet, the backbone's spatial layers, face locator (and identity projection) train; one
    target frame, ReferenceNet on another frame of the same video. Starts from `tiny`, an SD1.5 UNet folder (both
    UNets get its weights) or any model (native, Hallo, EchoMimic).
Stage 2 (video): the temporal modules (AnimateDiff v2 `--motion-module` file when given, else as the init has them;
    new ones are zero-initialised so they start as the identity) and the audio layers (+ audio projection) train.
Stage 3 (speed): speed layers added (bucket centres/radii from the data's speed quantiles); ONLY the temporal modules
    and speed layers train, audio frozen (EMO §3.3).
Modules made fresh here get zero-initialised output layers (AnimateDiff, Hallo): a new module starts as the identity.
"""
import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..config import EMOConfig
from ..errors import EMOCheckpointError, EMOInputError
from ..formats.load import load_model, tiny_config
from ..formats.safe_load import load_tensors
from ..models.model import EMOModel

logger = logging.getLogger(__name__)

TEMPORAL, AUDIO, SPEED = ".motion_modules.", ".audio_modules.", ".speed_"


def is_trained_here(name: str, stage: int) -> bool:
    """Whether parameter `name` of EMOModel (e.g. 'backbone.unet.down_blocks.0.motion_modules.0...') trains in
    `stage` (full training; a LoRA run trains only its adapters)."""
    if stage == 1:
        spatial = name.startswith("backbone.unet.") and TEMPORAL not in name and AUDIO not in name
        return spatial or name.startswith(("reference_net.", "face_locator.", "identity_projection."))
    if stage == 2:
        return ((name.startswith("backbone.unet.") and (TEMPORAL in name or AUDIO in name) and SPEED not in name)
                or name.startswith("audio_projection."))
    return (name.startswith("backbone.unet.") and TEMPORAL in name) or name.startswith("speed_encoder.")


def set_trainable(model: EMOModel, stage: int) -> list[str]:
    """Freezes everything, then unfreezes what `stage` trains. Returns the names of the trainable parameters."""
    model.requires_grad_(False)
    names = []
    for name, p in model.named_parameters():
        if name.startswith(("vae.", "audio_encoder.")):
            continue
        if is_trained_here(name, stage):
            p.requires_grad_(True)
            names.append(name)
    if not names:
        raise EMOInputError(f"the model has nothing stage {stage} trains (e.g. no audio layers for stage 2): "
                            "start from a model of the EMO/Hallo kind")
    return names


def _zero_outputs(model: EMOModel, which: tuple) -> None:
    """Zero-initialise the output layers of the named fresh module kinds ("temporal", "audio", "face_locator")."""
    for name, m in model.backbone.unet.named_modules():
        if "temporal" in which and name.endswith("temporal_transformer.proj_out") or (
                "audio" in which and AUDIO in name and name.endswith("proj_out") and "transformer_blocks" not in name):
            torch.nn.init.zeros_(m.weight)
            torch.nn.init.zeros_(m.bias)
    if "face_locator" in which:
        torch.nn.init.zeros_(model.face_locator.conv_out.weight)
        torch.nn.init.zeros_(model.face_locator.conv_out.bias)


def _sd_unet_folder(path: Path) -> Path | None:
    """The UNet folder of a diffusers SD1.5 layout (root/unet or the unet folder itself), or None."""
    for cand in (path / "unet", path):
        cfg = cand / "config.json"
        if cfg.is_file():
            try:
                if json.loads(cfg.read_text()).get("_class_name") == "UNet2DConditionModel":
                    return cand
            except json.JSONDecodeError:
                return None
    return None


def _attach_tiny_parts(model: EMOModel, cfg, work: Path) -> None:
    """VAE and audio encoder for a model built from a bare config: the given ones (`--vae tiny`: a tiny VAE trained
    on DATA's frames first), else tiny random ones."""
    from diffusers import AutoencoderKL

    from ..audio.wav2vec2 import Wav2VecAudioEncoder, make_tiny_wav2vec
    from ..formats.load import _load_vae
    if cfg.vae == "tiny":
        folder = _tiny_vae(cfg, work)
        model.vae = _load_vae(folder)
        model.sources["vae"] = folder
    elif cfg.vae:
        model.vae = _load_vae(Path(cfg.vae))
        model.sources["vae"] = Path(cfg.vae)
    else:
        logger.warning("no --vae given: using a tiny random VAE, whose decoder does not invert its encoder (fine for "
                       "tests): give a trained VAE, or --vae tiny to train one on DATA's frames first")
        torch.manual_seed(cfg.seed)
        model.vae = AutoencoderKL(block_out_channels=[8, 16, 32, 32], layers_per_block=1, norm_num_groups=8,
                                  latent_channels=4, sample_size=64, down_block_types=["DownEncoderBlock2D"] * 4,
                                  up_block_types=["UpDecoderBlock2D"] * 4)
    enc = Path(cfg.audio_encoder) if cfg.audio_encoder else make_tiny_wav2vec(work / "audio_encoder", seed=cfg.seed)
    model.audio_encoder = Wav2VecAudioEncoder.from_folder(enc)
    model.sources["audio_encoder"] = enc


TINY_VAE_STEPS = 250  # the learning check: 300; L1 ~0.2-0.3 in -1..1, an unseen face's mouth kept (r 0.99)


def _tiny_vae(cfg, work: Path) -> Path:
    """`--init tiny --vae tiny`: a tiny VAE (`tiny_vae.py`, the learning check's) trained on DATA's frames, saved in
    diffusers layout as RUN/work/tiny_vae (made once: a resumed run, and the other processes of an accelerate
    launch, which build the model after the main process, load it)."""
    import os
    import shutil

    from .tiny_vae import normalise_latents, train_tiny_vae
    folder = Path(work) / "tiny_vae"
    if (folder / "config.json").is_file():
        return folder
    data = Path(cfg.data)
    if not (data / "index.jsonl").is_file():
        raise EMOInputError(f"--vae tiny trains a tiny VAE on the frames of DATA, but {cfg.data} is not a prepared "
                            "DATA folder: run prepare-data first, or give a VAE folder with --vae")
    logger.info("--vae tiny: training a tiny VAE on the frames of %s (%d steps, once; saved in %s)", data,
                TINY_VAE_STEPS, folder)
    vae, scale, err = train_tiny_vae(data, steps=TINY_VAE_STEPS, seed=cfg.seed)
    normalise_latents(vae, scale)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(str(tmp), safe_serialization=True)
    os.replace(tmp, folder)
    logger.info("tiny VAE trained: reconstruction error %.3f (L1, pixels in -1..1)", err)
    return folder


def _from_scratch(cfg, work: Path) -> EMOModel:
    """`tiny` (the real architecture at toy size) or an SD1.5 UNet folder: a new EMO model, stage 1 only."""
    if cfg.init == "tiny":
        config = tiny_config()
        if cfg.resolution and cfg.resolution != config.resolution:
            config.resolution = cfg.resolution
        config.speed = None  # stage 3 adds speed layers with buckets placed on the data's speeds
        torch.manual_seed(cfg.seed)
        model = EMOModel(config)
        _attach_tiny_parts(model, cfg, work)
    else:
        from diffusers import UNet2DConditionModel

        from ..formats.load import _load_vae
        unet_dir = _sd_unet_folder(Path(cfg.init))
        sd_unet = UNet2DConditionModel.from_pretrained(str(unet_dir), local_files_only=True)
        config = EMOConfig(resolution=cfg.resolution or 512)
        keep = ("block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim")
        config.unet = dict(config.unet, **{k: list(v) if isinstance(v, tuple) else v
                                           for k, v in sd_unet.config.items() if k in keep})
        model = EMOModel(config)
        weights = sd_unet.state_dict()
        model.reference_net.unet.load_state_dict(weights, strict=False)  # ReferenceNet has no output head
        missing, unexpected = model.backbone.unet.load_state_dict(weights, strict=False)
        if unexpected or any(TEMPORAL not in k and AUDIO not in k for k in missing):
            raise EMOCheckpointError(f"{unet_dir} is not an SD1.5-shaped UNet (missing {missing[:3]}, unexpected "
                                     f"{unexpected[:3]}): give stable-diffusion-v1-5's unet folder")
        vae = Path(cfg.vae) if cfg.vae else next((p for p in (unet_dir.parent / "vae", unet_dir.parent.parent / "vae")
                                                  if (p / "config.json").is_file()), None)
        if vae is None or not cfg.audio_encoder:
            raise EMOInputError("starting from an SD1.5 UNet needs a VAE (--vae, or the SD folder's vae/) and a "
                                "wav2vec2-base-960h folder (--audio-encoder)")
        model.vae = _load_vae(vae)
        from ..audio.wav2vec2 import Wav2VecAudioEncoder
        model.audio_encoder = Wav2VecAudioEncoder.from_folder(cfg.audio_encoder)
        model.sources.update(vae=vae, audio_encoder=Path(cfg.audio_encoder))
    _zero_outputs(model, ("temporal", "audio", "face_locator"))
    return model


def _audio_widths(model: EMOModel) -> dict:
    return {k.rsplit(".proj_in.weight", 1)[0]: v.shape[0] for k, v in model.backbone.unet.state_dict().items()
            if AUDIO in k and k.endswith("proj_in.weight")}


SPEED_TOKENS = 1  # speed tokens per frame (4 measured no better on the learning check: benchmarks/README.md)


def speed_centers(speeds: np.ndarray) -> np.ndarray:
    """The 8 speed-bucket centres (deg/frame) for per-frame `speeds`: evenly over their 5-95 % range (at least 0.1
    wide; 0..1 without speeds). The speed layers' buckets, and what `balance_speed` draws evenly over."""
    lo, hi = np.quantile(speeds, [0.05, 0.95]) if len(speeds) else (0.0, 1.0)
    return np.linspace(lo, max(hi, lo + 0.1), 8)


def with_speed_layers(model: EMOModel, speeds: np.ndarray) -> EMOModel:
    """A copy of `model` with EMO's speed layers (zero-initialised attention output: no change at first).
    Buckets: 8 centres evenly over the 5-95 % range of the data's speeds (deg/frame), radius = their spacing
    (EMO publishes neither); 8 phase buckets over 0 .. (95 % speed x frames per clip) degrees turned since the clip
    began, frame-local attention (`speed_layers.py`); the default speed value becomes the data's median."""
    config = copy.deepcopy(model.config)
    centers = speed_centers(speeds)
    hi = float(centers[-1])
    step = float(centers[1] - centers[0])
    width = config.unet["cross_attention_dim"]
    span = hi * max(1, config.frames_per_clip)  # the phase (degrees turned since the clip began) buckets
    phases = np.linspace(0.0, span, 8)
    config.speed = dict(centers=[float(c) for c in centers], radii=[step] * 8, window=2, dim=width,
                        hidden=min(512, 4 * width), phase_centers=[float(c) for c in phases],
                        phase_radii=[float(phases[1] - phases[0])] * 8, tokens=SPEED_TOKENS)
    config.speed_value = float(np.median(speeds)) if len(speeds) else 1.0
    new = EMOModel(config, _audio_widths(model))
    missing, unexpected = new.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith(("vae.", "audio_encoder."))}, strict=False)
    if unexpected or any(SPEED not in k and not k.startswith("speed_encoder.") for k in missing):
        raise EMOCheckpointError(f"could not add speed layers (missing {missing[:3]}, unexpected {unexpected[:3]})")
    new.vae, new.audio_encoder, new.sources = model.vae, model.audio_encoder, dict(model.sources)
    return new


def load_motion_module(model: EMOModel, path) -> None:
    """AnimateDiff v2 motion-module weights (mm_sd_v15_v2.ckpt / .safetensors) into the backbone's temporal modules."""
    sd = {k.removeprefix("module."): v for k, v in load_tensors(path).items()}
    own = model.backbone.unet.state_dict()
    foreign = [k for k in sd if k not in own or own[k].shape != sd[k].shape]
    if foreign or not any(TEMPORAL in k for k in sd):
        raise EMOCheckpointError(f"{path} does not fit this model's temporal modules ({len(foreign)} keys of "
                                 f"{len(sd)} do not, e.g. {foreign[:2]}): give AnimateDiff's mm_sd_v15_v2.ckpt for "
                                 "an SD1.5-shaped model")
    model.backbone.unet.load_state_dict(sd, strict=False)
    logger.info("temporal modules from %s (%d tensors)", path, len(sd))


def check_init(cfg) -> bool:
    """Checks that --init suits the stage before any work; True when it is an untrained starting point (tiny, SD1.5
    UNet folder)."""
    init = str(cfg.init)
    if getattr(cfg, "vae", None) == "tiny" and init != "tiny":
        raise EMOInputError("--vae tiny (a tiny VAE trained on DATA) belongs with --init tiny; for other inits give a "
                            "VAE folder or file, or none when the init has its own")
    scratch = init == "tiny" or (Path(init).is_dir() and _sd_unet_folder(Path(init)) is not None)
    if scratch:
        if cfg.stage != 1 or cfg.lora:
            raise EMOInputError(f"--init {init} is an untrained starting point: only stage 1 (full training) starts "
                                "there. Stage 2 continues stage 1's RUN/model, stage 3 stage 2's (or a Hallo/EchoMimic "
                                "model); a LoRA needs a trained model")
        return True
    p = Path(init)
    if p.is_dir() and (p / "model" / "config.json").is_file() and not (p / "config.json").is_file():
        raise EMOInputError(f"--init {p} is a training run folder: give its model, {p / 'model'}")
    from ..formats.load import detect_format
    detect_format(p)  # not a model: a clear EMOCheckpointError
    return False


def build_model(cfg, work: Path, speeds: np.ndarray | None = None) -> EMOModel:
    """The model a stage starts from, with the modules it adds (see the module docstring), in fp32 on the CPU.
    work: a folder for files the model needs (a tiny audio encoder). speeds: all per-frame speeds of the data
    (stage 3, to place the speed buckets)."""
    if check_init(cfg):
        model = _from_scratch(cfg, work)
    else:
        model = load_model(Path(cfg.init), vae_path=cfg.vae or None, audio_encoder_path=cfg.audio_encoder)
        if model.vae is None:
            raise EMOInputError(f"{cfg.init} has no VAE: give one with --vae")
        if cfg.stage >= 2 and (model.config.audio_attention is None and model.config.cross_attention != "audio"):
            raise EMOInputError(f"{cfg.init} has no audio layers: stages 2-3 need a model of the EMO/Hallo kind")
    model.float()
    if cfg.resolution:
        model.config.resolution = cfg.resolution
    if cfg.stage >= 2:
        model.config.frames_per_clip, model.config.motion_frames = cfg.frames, cfg.motion_frames
        if cfg.frames + cfg.motion_frames > model.config.temporal["max_len"]:
            raise EMOInputError(f"--frames + --motion-frames = {cfg.frames + cfg.motion_frames} exceeds the temporal "
                                f"modules' {model.config.temporal['max_len']} positions: lower one of them")
    if cfg.motion_module:
        if cfg.stage != 2:
            raise EMOInputError("--motion-module initialises the temporal modules: it belongs to stage 2")
        load_motion_module(model, cfg.motion_module)
    if cfg.stage == 3 and model.speed_encoder is None:
        model = with_speed_layers(model, speeds if speeds is not None else np.zeros(0))
    return model
