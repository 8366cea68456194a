"""Loading and saving models: the native format, Hallo and EchoMimic, recognised by their files and keys.

Native format (a folder):
    config.json                      {"format": "emo-native", "version": 1, "model": EMOConfig, "files": {...}}
    reference_net.safetensors        ReferenceNet UNet (diffusers SD1.5 key names)
    backbone.safetensors             backbone UNet + audio_modules + motion_modules (Hallo's key names)
    face_locator.safetensors
    audio_projection.safetensors     (wav2vec models) per-frame window -> audio tokens
    identity_projection.safetensors  (if the model uses identity tokens)
    speed_layers.safetensors         (if any) `encoder.*` speed MLP + `backbone.*` speed attention in the temporal modules
    vae/                             diffusers AutoencoderKL folder, or vae.safetensors (a single-file SD VAE), or
                                     none: "files.vae" points elsewhere, or (no "files.vae") the VAE is looked for as
                                     sd-vae-ft-mse/ in or beside the folder, as for a Hallo or EchoMimic folder
    audio_encoder/                   wav2vec2 folder, or a whisper .pt file (or "files.audio_encoder" points elsewhere)
"""
import dataclasses
import functools
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
import diffusers.utils
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from ..config import EMOConfig
from ..errors import EMOCheckpointError, EMOInputError
from ..models.model import EMOModel
from .common import audio_module_widths, load_strict
from .safe_load import load_tensors, strip_prefix

logger = logging.getLogger(__name__)

NATIVE = "emo-native"
SD_VAE_CONFIG = Path(__file__).parent / "configs" / "sd-vae"  # SD1.5's vae/config.json, for single-file VAEs offline
NATIVE_FIX = "copy the whole model folder again (its config.json and weights belong together)"
COMPONENTS = ("reference_net", "backbone", "face_locator", "audio_projection", "identity_projection", "speed_layers")


def detect_format(path) -> str:
    """'native', 'hallo', 'hallo2' or 'echomimic' for a file or folder, or an EMOCheckpointError saying why it is
    none. Hallo2's net.pth has Hallo's keys: it is told by its place (`hallo.is_hallo2_path`)."""
    p = Path(path)
    if not p.exists():
        raise EMOCheckpointError(f"model path not found: {p}. Put the model folder in ComfyUI/models/emo/ "
                                 "(or pass its full path)")
    if p.is_dir():
        cfg = p / "config.json"
        if cfg.is_file():
            try:
                if json.loads(cfg.read_text()).get("format") == NATIVE:
                    return "native"
            except json.JSONDecodeError as e:
                raise EMOCheckpointError(f"{cfg} is not valid JSON ({e})") from e
        from .echomimic import is_echomimic_folder
        if is_echomimic_folder(p):
            return "echomimic"
        net = _hallo_net(p)
        if net:
            from .hallo import is_hallo2_path
            return "hallo2" if is_hallo2_path(net) else "hallo"
        raise EMOCheckpointError(
            f"{p} is not a model this pack knows: expected an EMO native folder (config.json with format "
            f"'{NATIVE}'), Hallo's or Hallo2's pretrained_models folder (hallo/net.pth, hallo2/net.pth) or an "
            "EchoMimic folder "
            "(denoising_unet.pth, reference_unet.pth, motion_module.pth, face_locator.pth; EchoMimic v2: pose_encoder.pth)")
    if p.suffix == ".pth" and p.name.startswith(("denoising_unet", "reference_unet", "motion_module", "face_locator",
                                                 "pose_encoder")):
        return "echomimic"
    sd = load_tensors(p)
    from .hallo import is_hallo, is_hallo2_path
    if is_hallo(sd):
        return "hallo2" if is_hallo2_path(p) else "hallo"
    raise EMOCheckpointError(f"{p} holds {len(sd)} tensors but none of Hallo's (denoising_unet.*.audio_modules): "
                             "it is not a model this pack knows. Pick Hallo's net.pth, an EchoMimic folder or an "
                             "EMO native folder")


def _hallo_net(folder: Path) -> Path | None:
    """net.pth in a Hallo / Hallo2 folder: the folder's own, or pretrained_models' hallo2/ or hallo/ (both there:
    Hallo2's, said once in the log; pick hallo/net.pth itself for Hallo)."""
    own = folder / "net.pth"
    if own.is_file():
        return own
    found = [c for c in (folder / "hallo2" / "net.pth", folder / "hallo" / "net.pth") if c.is_file()]
    if len(found) == 2 and folder not in _BOTH_SAID:
        _BOTH_SAID.add(folder)
        logger.info("%s holds both hallo2/net.pth and hallo/net.pth: Hallo2 is loaded (pick hallo/net.pth itself "
                    "to load Hallo)", folder)
    return found[0] if found else None


_BOTH_SAID: set = set()


def _find(folder: Path, names, what: str, hint: str) -> Path:
    found = _find_optional(folder, names)
    if found is None:
        raise EMOCheckpointError(f"{what} not found next to {folder}: {hint}")
    return found


def _find_optional(folder: Path, names) -> Path | None:
    for root in (folder, folder.parent, folder.parent.parent):
        for name in names:
            cand = root / name
            if cand.exists():
                return cand
    return None


def find_vae(path) -> Path | None:
    """The VAE that `load_model(path)` would load by default (the checkpoint's own), or None when there is none."""
    p = Path(path)
    if p.is_file():  # Hallo's net.pth or an EchoMimic .pth: the VAE is looked for beside it (no tensors are read)
        return _find_optional(p.parent, ["sd-vae-ft-mse"])
    kind = detect_format(p)
    if kind == "native":
        files = json.loads((p / "config.json").read_text()).get("files", {})
        if "vae" in files:
            return p / files["vae"]  # an absolute path stays absolute
        return (p / "vae") if (p / "vae").exists() else _find_optional(p, ["sd-vae-ft-mse"])
    return _find_optional(_hallo_net(p).parent if kind in ("hallo", "hallo2") else p, ["sd-vae-ft-mse"])


def load_model(path, device="cpu", dtype=torch.float32, vae_path=None, audio_encoder_path=None,
               accelerated: bool | None = None, pose: bool | None = None) -> EMOModel:
    """Load any supported checkpoint. `path`: native folder, Hallo / Hallo2 net.pth or its folder, EchoMimic folder
    (or one of its .pth files; an `_acc` file picks the accelerated set), or "tiny-random" (a tiny random model for
    trying things out: its output is noise). vae_path: a VAE folder/file, None to find the checkpoint's own, or False to
    load none (model.vae stays None: for latent-only use such as tests; attach a VAE before encoding or decoding).
    accelerated (EchoMimic): True/False picks the `_acc`/standard set, None the standard one when present (a picked
    `_acc` file picks the accelerated set). pose (EchoMimic): True/False picks the landmark-driven `_pose` / the
    audio-driven set, None the audio-driven one when present (a picked `_pose` file picks the pose set).
    Returns the model in eval mode."""
    if str(path) == "tiny-random":
        path = _tiny_folder()
    kind = detect_format(path)
    p = Path(path)
    if kind == "native":
        model = _load_native(p, vae_path, audio_encoder_path)
    elif kind in ("hallo", "hallo2"):
        model = _load_hallo(p, vae_path, audio_encoder_path, hallo2=kind == "hallo2")
    else:
        if p.is_file():
            from .echomimic import echomimic_variant
            variant = echomimic_variant(p)
            pose = variant["pose"] if pose is None else pose
            accelerated = variant["accelerated"] if accelerated is None else accelerated
        model = _load_echomimic(p if p.is_dir() else p.parent, vae_path, audio_encoder_path, accelerated, pose)
    model.sources["checkpoint"] = p
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _load_vae(path: Path) -> AutoencoderKL:
    """A diffusers VAE folder, or a single-file SD VAE (original or diffusers key names, e.g. ComfyUI/models/vae/
    vae-ft-mse-840000-ema-pruned.safetensors) read with the bundled SD1.5 VAE config: never fetches anything."""
    path = Path(path)
    if path.is_file():
        hint = ("use a Stable Diffusion 1.x VAE (e.g. vae-ft-mse-840000-ema-pruned.safetensors, or sd-vae-ft-mse as "
                "a diffusers folder) in ComfyUI/models/vae/")
        sd = load_tensors(path)
        keys = [k.removeprefix("first_stage_model.").removeprefix("vae.") for k in sd]  # also in full SD files
        n = sum(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")) for k in keys)
        with torch.device("meta"):  # the SD VAE's tensor count, without allocating it
            expected = len(AutoencoderKL.from_config(AutoencoderKL.load_config(str(SD_VAE_CONFIG))).state_dict())
        if 0 < n < expected:  # counted first: diffusers fails on (or leaves at random init) what the file lacks
            raise EMOCheckpointError(f"the VAE file {path} holds {n} of the {expected} tensors of an SD VAE (it may be "
                                     f"truncated or another kind of VAE): {hint}")
        try:
            return AutoencoderKL.from_single_file(sd, config=str(SD_VAE_CONFIG), local_files_only=True)
        except Exception as e:  # diffusers raises several kinds here; the user needs one message
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise EMOCheckpointError(f"could not read the VAE file {path} ({reason}): {hint}") from e
    if not (path / "config.json").is_file():
        raise EMOCheckpointError(f"VAE folder {path} has no config.json: use sd-vae-ft-mse (diffusers layout)")
    # without accelerate, diffusers' default low_cpu_mem_usage=True only prints advice: ask for what it does anyway
    return AutoencoderKL.from_pretrained(str(path), local_files_only=True,
                                         low_cpu_mem_usage=diffusers.utils.is_accelerate_available())


def _load_audio_encoder(path: Path, kind: str):
    if kind == "whisper":
        from ..audio.whisper import WhisperAudioEncoder
        return WhisperAudioEncoder.from_openai_checkpoint(path)
    from ..audio.wav2vec2 import Wav2VecAudioEncoder
    return Wav2VecAudioEncoder.from_folder(path)


def _load_native(folder: Path, vae_path=None, audio_encoder_path=None) -> EMOModel:
    meta = json.loads((folder / "config.json").read_text())
    config = EMOConfig.from_dict(meta["model"])
    files = meta.get("files", {})
    parts = {}
    for name in COMPONENTS:
        f = folder / f"{name}.safetensors"
        if f.is_file():
            parts[name] = load_tensors(f)
    for required in ("reference_net", "backbone", "face_locator") + (("audio_projection",) if config.audio_projection else ()) + (
            ("identity_projection",) if config.identity and config.cross_attention == "identity" else ()):
        if required not in parts:
            raise EMOCheckpointError(f"{folder} is missing {required}.safetensors: the native format needs it "
                                     "(copy the whole model folder again)")
    if config.speed and "speed_layers" not in parts:  # the model is built without them; config.json is as it was
        logger.info("%s: config.json describes speed layers but speed_layers.safetensors is missing: the model runs "
                    "without them, so the head-motion speed setting has no effect", folder)
        config = dataclasses.replace(config, speed=None)
    model = EMOModel(config, audio_module_widths(parts["backbone"]))
    backbone = dict(parts["backbone"])
    if "speed_layers" in parts:
        backbone.update(strip_prefix(parts["speed_layers"], "backbone."))
        load_strict(model.speed_encoder, strip_prefix(parts["speed_layers"], "encoder."),
                    folder / "speed_layers.safetensors (encoder.*)", NATIVE_FIX)
    for module, name, sd in ((model.reference_net.unet, "reference_net", parts["reference_net"]),
                             (model.backbone.unet, "backbone", backbone),
                             (model.face_locator, "face_locator", parts["face_locator"]),
                             (model.audio_projection, "audio_projection", parts.get("audio_projection")),
                             (model.identity_projection, "identity_projection", parts.get("identity_projection"))):
        if module is not None:
            load_strict(module, sd, folder / f"{name}.safetensors", NATIVE_FIX)
    vae = None if vae_path is False else Path(vae_path) if vae_path else find_vae(folder)
    if vae is None and vae_path is not False:
        raise EMOCheckpointError(
            f"{folder} has no VAE: put sd-vae-ft-mse (diffusers layout) in it as vae/ or beside it as "
            "sd-vae-ft-mse/, or choose a VAE from ComfyUI/models/vae/ in the loader node (load_model: vae_path)")
    enc = Path(audio_encoder_path) if audio_encoder_path else folder / files.get("audio_encoder", "audio_encoder")
    for what, p, hint in (("VAE", vae, "sd-vae-ft-mse in diffusers layout"), ("audio encoder", enc, "wav2vec2-base-960h folder or whisper_tiny.pt")):
        if p is not None and not p.exists():
            raise EMOCheckpointError(f"{folder} is missing its {what} ({p.name}): put {hint} there, or set "
                                     f"files.{'vae' if what == 'VAE' else 'audio_encoder'} in config.json to its path")
    model.vae = None if vae is None else _load_vae(vae)
    model.audio_encoder = _load_audio_encoder(enc, config.audio_encoder["kind"])
    model.sources = {"vae": vae, "audio_encoder": enc, "weights_dtype": _weights_dtype(parts["backbone"])}
    return model


def _weights_dtype(sd: dict) -> torch.dtype:
    """The dtype most floating-point tensors of a state dict are stored in (fp16 for Hallo's release)."""
    counts = {}
    for v in sd.values():
        if v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def _load_hallo(p: Path, vae_path=None, audio_encoder_path=None, hallo2: bool = False) -> EMOModel:
    from .hallo import find_unet_config, hallo_config, load_hallo_weights
    net = p if p.is_file() else _hallo_net(p)
    root = net.parent
    vae_dir = None if vae_path is False else Path(vae_path) if vae_path else _find(
        root, ["sd-vae-ft-mse"], "sd-vae-ft-mse",
        "put Hallo's (or Hallo2's) sd-vae-ft-mse folder in pretrained_models/ (or choose a VAE in ComfyUI/models/vae/)")
    enc_dir = Path(audio_encoder_path) if audio_encoder_path else _find(
        root, ["wav2vec/wav2vec2-base-960h", "wav2vec2-base-960h"], "wav2vec2-base-960h",
        "put Hallo's (or Hallo2's) wav2vec/wav2vec2-base-960h folder in pretrained_models/ (or in "
        "ComfyUI/models/audio_encoders/)")
    from ..audio.wav2vec2 import Wav2VecAudioEncoder
    enc = Wav2VecAudioEncoder.from_folder(enc_dir)
    sd = load_tensors(net)
    config, widths = hallo_config(sd, find_unet_config(net), (enc.num_layers, enc.hidden_size), hallo2=hallo2)
    model = EMOModel(config, widths)
    load_hallo_weights(model, sd, net)
    model.vae = None if vae_dir is None else _load_vae(vae_dir)
    model.audio_encoder = enc
    model.sources = {"vae": vae_dir, "audio_encoder": enc_dir, "weights_dtype": _weights_dtype(sd)}
    return model


def _load_echomimic(folder: Path, vae_path=None, audio_encoder_path=None, accelerated=None, pose=None) -> EMOModel:
    from .echomimic import echomimic_config, find_echomimic_unet_config, load_echomimic_tensors
    vae_dir = None if vae_path is False else Path(vae_path) if vae_path else _find(
        folder, ["sd-vae-ft-mse"], "sd-vae-ft-mse", "put sd-vae-ft-mse (diffusers layout) beside the model files")
    files, sds = load_echomimic_tensors(folder, accelerated, pose)
    acc = files["denoising_unet"].name.endswith("_acc.pth")
    v2 = files["face_locator"].name == "pose_encoder.pth"
    den = {**sds["denoising_unet"], **sds["motion_module"]}
    config = echomimic_config(den, sds["face_locator"], find_echomimic_unet_config(folder), acc, v2=v2)
    model = EMOModel(config)
    fix = (f"download it again from EchoMimic{' v2' if v2 else ''}'s model page (the files of one set belong "
           "together)")
    load_strict(model.reference_net.unet, sds["reference_unet"], files["reference_unet"], fix)
    load_strict(model.backbone.unet, den, f"{files['denoising_unet']} + {files['motion_module'].name}", fix)
    load_strict(model.face_locator, sds["face_locator"], files["face_locator"], fix)
    enc = Path(audio_encoder_path) if audio_encoder_path else _find(
        folder, ["audio_processor/whisper_tiny.pt", "whisper_tiny.pt", "audio_processor/tiny.pt"],
        "audio_processor/whisper_tiny.pt (EchoMimic v2: audio_processor/tiny.pt)",
        "put EchoMimic's audio_processor/whisper_tiny.pt (EchoMimic v2: OpenAI's whisper tiny.pt as "
        "audio_processor/tiny.pt) beside the model files")
    model.audio_encoder = _load_audio_encoder(enc, "whisper")
    model.vae = None if vae_dir is None else _load_vae(vae_dir)
    model.sources = {"vae": vae_dir, "audio_encoder": enc, "weights_dtype": _weights_dtype(den)}
    return model


def save_native(model: EMOModel, folder, copy_files: bool = True, dtype: torch.dtype | None = None) -> Path:
    """Write `model` in the native format to `folder`. The VAE and the audio encoder are copied in, or with
    copy_files=False referenced by absolute path in config.json (`files`). The VAE is `model.vae` (saved in
    diffusers layout) or, when none is loaded, the file/folder `model.sources["vae"]` names; with neither, the folder
    gets no VAE and loading it later asks for one (as loading the source would). dtype: the floating-point dtype
    the weights are stored in (None: the model's own)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, sd in model.component_state_dicts().items():
        save_file({k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
                   for k, v in sd.items()}, str(folder / f"{name}.safetensors"))
    files = {}
    vae_src = model.sources.get("vae")
    if model.vae is not None and (copy_files or vae_src is None):
        model.vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
        files["vae"] = "vae"
    elif vae_src is not None:  # referenced (copy_files=False), or known by its path only (convert): copied as is
        vae_src = Path(vae_src).resolve()
        if not copy_files:
            files["vae"] = str(vae_src)
        else:
            files["vae"] = "vae" + ("" if vae_src.is_dir() else vae_src.suffix)
            _copy(vae_src, folder / files["vae"])
    src = model.sources.get("audio_encoder")
    if src is not None:
        src = Path(src).resolve()
        if src.parent == folder.resolve():
            files["audio_encoder"] = src.name
        elif copy_files:
            files["audio_encoder"] = "audio_encoder" + ("" if src.is_dir() else src.suffix)
            _copy(src, folder / files["audio_encoder"])
        else:
            files["audio_encoder"] = str(src)
    meta = {"format": NATIVE, "version": 1, "model": dataclasses.asdict(model.config), "files": files}
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def convert(src, dst, copy_files: bool = True, accelerated: bool | None = None) -> Path:
    """Converts a Hallo or EchoMimic checkpoint (or a native folder) to the native format in `dst`, a new or empty
    folder (nothing is overwritten). The source's VAE and audio encoder are copied in (copy_files=False: referenced
    by absolute path); a source without a VAE gives a folder without one, which asks for a VAE when loaded, as the
    source does. The weights keep the source's dtype (Hallo's fp16 stays fp16). accelerated: EchoMimic's `_acc` set
    (see load_model). Returns dst."""
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise EMOInputError(f"{dst} already exists and is not an empty folder: choose a new folder for the converted "
                            "model (convert overwrites nothing)")
    model = load_model(src, vae_path=False, accelerated=accelerated)  # the VAE is copied as files, not re-saved
    model.sources["vae"] = find_vae(src)
    return save_native(model, dst, copy_files=copy_files, dtype=model.sources.get("weights_dtype"))


def _copy(src: Path, dst: Path) -> None:
    """Copies a file or a folder's contents (contents only: no permission bits, so read-only sources give
    writable copies)."""
    if src.is_file():
        shutil.copyfile(src, dst)
        return
    for f in sorted(src.rglob("*")):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    dst.mkdir(parents=True, exist_ok=True)


# `--model tiny-random` (the README's first command): the tiny model with its own sampling defaults, so that a new
# user sees a video within about 30 s on 2 CPU cores (benchmarks/README.md has the profile): clips of 24 frames
# instead of 4 (6x fewer backbone and ReferenceNet calls, whose cost at toy size is per call), 2 steps, and no
# guidance passes (one backbone pass per step instead of three; random weights make noise either way).
TINY_RANDOM = dict(frames_per_clip=24, steps=2, audio_cfg=1.0, ref_cfg=1.0)


def tiny_config(**settings) -> EMOConfig:
    """The real architecture at toy size (widths 32, one layer per block): for tests and trying the nodes.
    settings: EMOConfig fields to change (e.g. frames_per_clip, steps)."""
    from ..config import SD15_UNET
    unet = dict(SD15_UNET, block_out_channels=[32, 32, 32, 32], layers_per_block=1, norm_num_groups=8,
                cross_attention_dim=32, sample_size=8)
    config = EMOConfig(
        kind="native", resolution=64, unet=unet, cross_attention="identity",
        audio_attention=dict(audio_dim=32, regions=False, heads=8), temporal=dict(heads=8, max_len=32, plain_blocks=True),
        frames_per_clip=4, motion_frames=2, identity=dict(embed_dim=16, tokens=2),
        face_locator=dict(in_channels=1, block_out_channels=[8, 16, 16, 32]),
        audio_encoder=dict(kind="wav2vec2", fps=25.0, window=2, pad_to_clip=False),
        audio_projection=dict(seq_len=5, blocks=2, channels=32, intermediate_dim=64, output_dim=32, context_tokens=4),
        speed=dict(centers=[-1.0, 0.0, 1.0, 2.0], radii=[1.0, 1.0, 1.0, 1.0], window=2, dim=32, hidden=32),
        steps=4, audio_cfg=2.0, ref_cfg=1.5, fps=25.0, speed_value=1.0)
    return dataclasses.replace(config, **settings)


@functools.lru_cache(maxsize=1)
def _tiny_folder() -> Path:
    """One tiny random model per process, in a temporary folder removed when the process ends."""
    tmp = tempfile.TemporaryDirectory(prefix="emo-tiny-")
    _TINY_DIRS.append(tmp)  # kept alive (and its folder on disk) until exit
    return make_tiny(Path(tmp.name), **TINY_RANDOM)


_TINY_DIRS: list = []


def make_tiny(folder, seed: int = 0, **settings) -> Path:
    """Writes a tiny random model in the native format (with a tiny VAE and wav2vec2) to `folder`; settings: EMOConfig
    fields to change (the weights do not depend on them). The same seed gives the same files; the caller's torch random
    state is left as it was (a local generator, a forked RNG)."""
    from ..audio.wav2vec2 import Wav2VecAudioEncoder, make_tiny_wav2vec
    folder = Path(folder)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # building (and loading) modules draws from the global RNG: restored
        torch.manual_seed(seed)  # the modules' own init (replaced below, but for the VAE) is reproducible too
        model = EMOModel(tiny_config(**settings))
        for m in model.modules():  # zero-initialised layers would hide wiring errors in tests: randomise everything
            for name, p in m.named_parameters(recurse=False):
                if p.ndim >= 2:
                    std = p.shape[1] ** -0.5 if p.ndim == 2 else (p[0].numel()) ** -0.5
                    torch.nn.init.normal_(p, std=std, generator=gen)
                elif "weight" in name:
                    torch.nn.init.normal_(p, 1.0, 0.1, generator=gen)
                else:
                    torch.nn.init.normal_(p, 0.0, 0.05, generator=gen)
        model.vae = AutoencoderKL(block_out_channels=[8, 16, 32, 32], layers_per_block=1, norm_num_groups=8,
                                  latent_channels=4, sample_size=64,
                                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
        enc_dir = make_tiny_wav2vec(folder / "audio_encoder", seed=seed)
        model.audio_encoder = Wav2VecAudioEncoder.from_folder(enc_dir)
    model.sources["audio_encoder"] = enc_dir
    return save_native(model, folder)
