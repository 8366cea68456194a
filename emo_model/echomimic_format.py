"""EchoMimic v1 (antgroup/echomimic, Apache-2.0): a folder of `reference_unet.pth`, `denoising_unet.pth`,
`motion_module.pth`, `face_locator.pth` (or their `_acc` variants: the distilled 6-step set) -> EMOModel.

Audio (whisper-tiny, 5 levels x 10 frames = 50 tokens per frame) goes into the denoising UNet's cross-attention slot
with gain 3.0; there are no audio-attention layers, no motion frames (overlapping shifting context windows instead)
and the ReferenceNet has no cross-attention. The UNet config comes from `sd-image-variations-diffusers/unet/
config.json` beside the files when present, else SD1.5's; widths and the audio width are read from the tensors.
"""
import json
from pathlib import Path

from .config import DDIM_V_ZSNR, EMOConfig
from .errors import EMOCheckpointError
from .hallo_format import UNET_KEYS, unet_config_from_tensors

PARTS = ("reference_unet", "denoising_unet", "motion_module", "face_locator")


def echomimic_files(folder: Path, accelerated: bool | None = None) -> dict:
    """{part: path}; prefers the `_acc` set when `accelerated` is True (or None and only it exists)."""
    folder = Path(folder)
    out = {}
    for part in PARTS:
        acc, plain = folder / f"{part}_acc.pth", folder / f"{part}.pth"
        use_acc = acc.is_file() and (accelerated or (accelerated is None and not plain.is_file()))
        path = acc if use_acc else plain
        if part == "reference_unet" and not path.is_file():
            path = plain
        if not path.is_file() and part in ("reference_unet", "face_locator") and acc.is_file():
            path = acc
        if not path.is_file():
            raise EMOCheckpointError(f"EchoMimic folder {folder} is missing {part}.pth: download it from EchoMimic's "
                                     "page into that folder (EchoMimic needs reference_unet.pth, denoising_unet.pth, "
                                     "motion_module.pth and face_locator.pth)")
        out[part] = path
    return out


def is_echomimic_folder(folder: Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any((folder / f"denoising_unet{s}.pth").is_file() for s in ("", "_acc"))


def find_echomimic_unet_config(folder: Path) -> dict:
    for root in (folder, folder.parent):
        cfg = root / "sd-image-variations-diffusers" / "unet" / "config.json"
        if cfg.is_file():
            return {k: v for k, v in json.loads(cfg.read_text()).items() if k in UNET_KEYS}
    return {}


def echomimic_config(den: dict, fl: dict, unet_base: dict, accelerated: bool) -> EMOConfig:
    unet = unet_config_from_tensors(den, unet_base)  # cross_attention_dim = whisper width, from attn2.to_k
    n_fl = len({k.split(".")[1] for k in fl if k.startswith("blocks.")})
    fl_widths = [fl["conv_in.weight"].shape[0]] + [fl[f"blocks.{i}.weight"].shape[0] for i in range(1, n_fl, 2)]
    return EMOConfig(
        kind="echomimic", resolution=512, unet=unet, cross_attention="audio", audio_gain=3.0, audio_attention=None,
        temporal=dict(heads=8, max_len=32, plain_blocks=True), temporal_mode="context_windows",
        frames_per_clip=12, motion_frames=3, first_clip_motion="reference", hallo_identity_tiling=False, identity=None,
        face_locator=dict(in_channels=fl["conv_in.weight"].shape[1], block_out_channels=fl_widths),
        audio_encoder=dict(kind="whisper", fps=None, window=None), audio_projection=None, speed=None,
        scheduler=dict(DDIM_V_ZSNR), init_noise_clamp=1.5, steps=6 if accelerated else 30,
        audio_cfg=1.0 if accelerated else 2.5, ref_cfg=1.0 if accelerated else 2.5, fps=24.0)
