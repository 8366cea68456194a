"""Hallo (fudan-generative-vision/hallo, MIT): `hallo/net.pth` -> EMOModel.

net.pth is one state dict with prefixes `reference_unet.`, `denoising_unet.`, `face_locator.`, `imageproj.`,
`audioproj.`; the UNet body keys are diffusers' SD1.5 keys, `audio_modules`/`motion_modules` are per block (the same
layout as our Backbone). Widths are read from the tensors; the UNet config (group count and head count cannot be read
from shapes) from `stable-diffusion-v1-5/unet/config.json` beside it when present, else SD1.5's.
"""
import json
from pathlib import Path

from ..config import DDIM_V_ZSNR, SD15_UNET, EMOConfig
from ..errors import EMOCheckpointError
from .safe_load import strip_prefix

PREFIXES = ("reference_unet.", "denoising_unet.", "face_locator.", "imageproj.", "audioproj.")
UNET_KEYS = {"in_channels", "out_channels", "layers_per_block", "block_out_channels", "attention_head_dim",
             "cross_attention_dim", "norm_num_groups", "norm_eps", "act_fn", "flip_sin_to_cos", "freq_shift",
             "down_block_types", "up_block_types", "sample_size"}


def is_hallo(sd: dict) -> bool:
    return any(k.startswith("denoising_unet.") for k in sd) and any(".audio_modules." in k for k in sd)


def find_unet_config(net_path: Path) -> dict:
    for root in (net_path.parent, net_path.parent.parent):
        cfg = root / "stable-diffusion-v1-5" / "unet" / "config.json"
        if cfg.is_file():
            d = json.loads(cfg.read_text())
            return {k: v for k, v in d.items() if k in UNET_KEYS}
    return {}


def unet_config_from_tensors(sd: dict, base: dict) -> dict:
    """SD1.5-style UNet config with the widths, depth and cross-attention width read from a UNet state dict."""
    cfg = {**SD15_UNET, **base}
    n_down = len({k.split(".")[1] for k in sd if k.startswith("down_blocks.")})
    cfg["block_out_channels"] = [sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(n_down)]
    cfg["layers_per_block"] = len({k.split(".")[3] for k in sd if k.startswith("down_blocks.0.resnets.")})
    cfg["in_channels"] = sd["conv_in.weight"].shape[1]
    k2 = next((k for k in sd if k.endswith("attn2.to_k.weight")), None)
    if k2 is not None:
        cfg["cross_attention_dim"] = sd[k2].shape[1]
    return cfg


def hallo_config(sd: dict, unet_base: dict, wav2vec_shape: tuple[int, int] = (12, 768)) -> tuple[EMOConfig, dict]:
    """wav2vec_shape: (layers, width) of the audio encoder, from its config.json (wav2vec2-base: 12 x 768)."""
    den = strip_prefix(sd, "denoising_unet.")
    unet = unet_config_from_tensors(den, unet_base)
    audio_keys = [k for k in den if ".audio_modules." in k and k.endswith("attn2_0.to_k.weight")]
    if not audio_keys:
        raise EMOCheckpointError("this Hallo checkpoint has no audio modules with region attention (attn2_0)")
    audio_dim = den[audio_keys[0]].shape[1]
    widths = {k.rsplit(".proj_in.weight", 1)[0]: v.shape[0] for k, v in den.items()
              if ".audio_modules." in k and k.endswith("proj_in.weight")}
    fl = strip_prefix(sd, "face_locator.")
    n_fl = len({k.split(".")[1] for k in fl if k.startswith("blocks.")})
    fl_widths = [fl["conv_in.weight"].shape[0]] + [fl[f"blocks.{i}.weight"].shape[0] for i in range(1, n_fl, 2)]
    ap = strip_prefix(sd, "audioproj.")
    ip = strip_prefix(sd, "imageproj.")
    out_dim = ap["norm.weight"].shape[0]
    tokens = ap["proj3.weight"].shape[0] // out_dim
    flat = ap["proj1.weight"].shape[1]
    pe = next(v for k, v in den.items() if k.endswith("pos_encoder.pe"))
    layers, channels = wav2vec_shape
    if flat != 5 * layers * channels:
        raise EMOCheckpointError(f"Hallo's audio projection takes {flat} inputs per frame, but the wav2vec model gives "
                                 f"5 x {layers} layers x {channels}: use wav2vec2-base-960h from Hallo's download")
    config = EMOConfig(
        kind="hallo", resolution=512, unet=unet, cross_attention="identity", audio_gain=1.0,
        audio_attention=dict(audio_dim=audio_dim, regions=True, heads=unet["attention_head_dim"]),
        temporal=dict(heads=8, max_len=pe.shape[1], plain_blocks=False),
        temporal_mode="motion_frames", frames_per_clip=16, motion_frames=2, first_clip_motion="reference",
        hallo_identity_tiling=True,
        identity=dict(embed_dim=ip["proj.weight"].shape[1], tokens=ip["proj.weight"].shape[0] // ip["norm.weight"].shape[0]),
        face_locator=dict(in_channels=fl["conv_in.weight"].shape[1], block_out_channels=fl_widths),
        audio_encoder=dict(kind="wav2vec2", fps=25.0, window=2, pad_to_clip=True),
        audio_projection=dict(seq_len=5, blocks=layers, channels=channels,
                              intermediate_dim=ap["proj1.weight"].shape[0], output_dim=out_dim, context_tokens=tokens),
        speed=None, scheduler=dict(DDIM_V_ZSNR), steps=40, audio_cfg=3.5, ref_cfg=3.5, fps=25.0)
    return config, widths


def load_hallo_weights(model, sd: dict) -> None:
    model.reference_net.load_weights(strip_prefix(sd, "reference_unet."))
    den = strip_prefix(sd, "denoising_unet.")
    missing, unexpected = model.backbone.unet.load_state_dict(den, strict=False)
    if missing or unexpected:
        raise EMOCheckpointError(f"Hallo denoising UNet keys do not match: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.face_locator.load_state_dict(strip_prefix(sd, "face_locator."))
    model.identity_projection.load_state_dict(strip_prefix(sd, "imageproj."))
    model.audio_projection.load_state_dict(strip_prefix(sd, "audioproj."))
