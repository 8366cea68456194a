"""Hallo (fudan-generative-vision/hallo, MIT): `hallo/net.pth` -> EMOModel; Hallo2 (fudan-generative-vision/hallo2,
MIT): `hallo2/net.pth`, the same keys and networks, sampled as its `scripts/inference_long.py` samples (below).

net.pth is one state dict with prefixes `reference_unet.`, `denoising_unet.`, `face_locator.`, `imageproj.`,
`audioproj.`; the UNet body keys are diffusers' SD1.5 keys, `audio_modules`/`motion_modules` are per block (the same
layout as our Backbone). Widths are read from the tensors; the UNet config (group count and head count cannot be read
from shapes) from `stable-diffusion-v1-5/unet/config.json` beside it when present, else SD1.5's.

Hallo2's net.pth cannot be told from Hallo's by its tensors; its place can (`is_hallo2_path`: the file sits in a
folder named hallo2, as in Hallo2's pretrained_models, or its name says hallo2). Its sampling differs from Hallo's
in two settings (configs/inference/long.yaml): the motion-frame pixel drop (`motion_drop` 0.25, see
sampling/motion_frames.py) and the audio encoded in independent 60 s pieces (`piece_seconds`, see
audio/wav2vec2.py). Everything else (40 steps, CFG 3.5, 16 + 2 frames, 512 px, 25 fps) is Hallo's.
"""
from pathlib import Path

from ..config import DDIM_V_ZSNR, EMOConfig
from ..errors import EMOCheckpointError
from .common import audio_module_widths, face_locator_config, load_strict, unet_config_file, unet_config_from_tensors
from .safe_load import strip_prefix

PREFIXES = ("reference_unet.", "denoising_unet.", "face_locator.", "imageproj.", "audioproj.")
HALLO2_MOTION_DROP = 0.25   # long.yaml: mask_rate
HALLO2_PIECE_SECONDS = 60   # scripts/inference_long.py: cut_audio(length=60)


def is_hallo2_path(net_path: Path) -> bool:
    """Whether a Hallo-layout net.pth is Hallo2's: it sits in a folder named hallo2 (Hallo2's pretrained_models/hallo2/,
    or a renamed copy such as models/emo/hallo2/) or its own name says hallo2 (hallo2_net.pth)."""
    p = Path(net_path)
    return "hallo2" in p.stem.lower() or p.parent.name.lower() == "hallo2"


def is_hallo(sd: dict) -> bool:
    return any(k.startswith("denoising_unet.") for k in sd) and any(".audio_modules." in k for k in sd)


def find_unet_config(net_path: Path) -> dict:
    for root in (net_path.parent, net_path.parent.parent):
        cfg = root / "stable-diffusion-v1-5" / "unet" / "config.json"
        if cfg.is_file():
            return unet_config_file(cfg)
    return {}


def hallo_config(sd: dict, unet_base: dict, wav2vec_shape: tuple[int, int] = (12, 768),
                 hallo2: bool = False) -> tuple[EMOConfig, dict]:
    """wav2vec_shape: (layers, width) of the audio encoder, from its config.json (wav2vec2-base: 12 x 768).
    hallo2: Hallo2's sampling settings (kind "hallo2": motion-frame pixel drop 0.25, audio in 60 s pieces)."""
    den = strip_prefix(sd, "denoising_unet.")
    unet = unet_config_from_tensors(den, unet_base)
    audio_keys = [k for k in den if ".audio_modules." in k and k.endswith("attn2_0.to_k.weight")]
    if not audio_keys:
        raise EMOCheckpointError("this Hallo checkpoint has no audio modules with region attention (attn2_0)")
    audio_dim = den[audio_keys[0]].shape[1]
    widths = audio_module_widths(den)
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
    audio = dict(kind="wav2vec2", fps=25.0, window=2, pad_to_clip=True)
    if hallo2:
        audio["piece_seconds"] = HALLO2_PIECE_SECONDS
    config = EMOConfig(
        kind="hallo2" if hallo2 else "hallo", resolution=512, unet=unet, cross_attention="identity", audio_gain=1.0,
        audio_attention=dict(audio_dim=audio_dim, regions=True, heads=unet["attention_head_dim"]),
        temporal=dict(heads=8, max_len=pe.shape[1], plain_blocks=False),
        temporal_mode="motion_frames", frames_per_clip=16, motion_frames=2, first_clip_motion="reference",
        motion_drop=HALLO2_MOTION_DROP if hallo2 else 0.0, hallo_identity_tiling=True,
        identity=dict(embed_dim=ip["proj.weight"].shape[1], tokens=ip["proj.weight"].shape[0] // ip["norm.weight"].shape[0]),
        face_locator=face_locator_config(strip_prefix(sd, "face_locator.")),
        audio_encoder=audio,
        audio_projection=dict(seq_len=5, blocks=layers, channels=channels,
                              intermediate_dim=ap["proj1.weight"].shape[0], output_dim=out_dim, context_tokens=tokens),
        speed=None, scheduler=dict(DDIM_V_ZSNR), steps=40, audio_cfg=3.5, ref_cfg=3.5, fps=25.0)
    return config, widths


def load_hallo_weights(model, sd: dict, source) -> None:
    """Every part of net.pth (`source`, for error messages) into the model, strictly."""
    fix = ("use Hallo's own pretrained_models/hallo/net.pth (Hallo2: pretrained_models/hallo2/net.pth; download it "
           "again if it is cut short)")
    for module, prefix in ((model.reference_net.unet, "reference_unet."), (model.backbone.unet, "denoising_unet."),
                           (model.face_locator, "face_locator."), (model.identity_projection, "imageproj."),
                           (model.audio_projection, "audioproj.")):
        load_strict(module, strip_prefix(sd, prefix), f"{source} ({prefix}*)", fix)
