"""What every checkpoint format shares: the strict state-dict load, and the sizes read from the tensors.

`load_strict` is the one way weights go into a module: every key must match and every shape must fit, and anything
else is an `EMOCheckpointError` naming the file and the fix (torch's `load_state_dict` raises a long RuntimeError for
a shape mismatch even with strict=False).
"""
from pathlib import Path

from torch import nn

from ..config import SD15_UNET
from ..errors import EMOCheckpointError

# the fields of a diffusers UNet config.json that the formats take over (the rest come from SD1.5's)
UNET_KEYS = {"in_channels", "out_channels", "layers_per_block", "block_out_channels", "attention_head_dim",
             "cross_attention_dim", "norm_num_groups", "norm_eps", "act_fn", "flip_sin_to_cos", "freq_shift",
             "down_block_types", "up_block_types", "sample_size"}
FIX = "download the file again, or use the files of one release together (they do not fit this model's config)"


def load_strict(module: nn.Module, sd: dict, source, fix: str = FIX) -> None:
    """`module.load_state_dict(sd)` with every key and shape checked; `source` (a file, or file and prefix) names
    the weights in the error, `fix` says what to do."""
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # size mismatches: torch lists them all, one per line
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        detail = "; ".join(lines[:2]) if lines else str(e).strip().splitlines()[0][:200]
        raise EMOCheckpointError(f"{source} does not fit this model: {len(lines) or 'some'} tensors have other "
                                 f"shapes ({detail}): {fix}") from e
    if missing or unexpected:
        raise EMOCheckpointError(f"{source} does not fit this model: missing {len(missing)} tensors "
                                 f"(e.g. {list(missing)[:3]}), unexpected {len(unexpected)} "
                                 f"(e.g. {list(unexpected)[:3]}): {fix}")


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


def face_locator_config(fl: dict) -> dict:
    """FaceLocator kwargs (input channels, block widths) read from its state dict (`conv_in`, `blocks.N`)."""
    n = len({k.split(".")[1] for k in fl if k.startswith("blocks.")})
    widths = [fl["conv_in.weight"].shape[0]] + [fl[f"blocks.{i}.weight"].shape[0] for i in range(1, n, 2)]
    return dict(in_channels=fl["conv_in.weight"].shape[1], block_out_channels=widths)


def audio_module_widths(unet_sd: dict) -> dict:
    """{audio module path: width} of the backbone's audio-attention modules, from their `proj_in` weights."""
    return {k.rsplit(".proj_in.weight", 1)[0]: v.shape[0] for k, v in unet_sd.items()
            if ".audio_modules." in k and k.endswith("proj_in.weight")}


def unet_config_file(path: Path) -> dict:
    """The UNET_KEYS of a diffusers UNet config.json, or an EMOCheckpointError naming the file."""
    import json
    try:
        return {k: v for k, v in json.loads(Path(path).read_text()).items() if k in UNET_KEYS}
    except (json.JSONDecodeError, OSError) as e:
        raise EMOCheckpointError(f"{path} is not a readable UNet config.json ({e}): download it again") from e
