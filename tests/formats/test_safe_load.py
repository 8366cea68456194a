"""Reading model files: unsafe pickles, truncated and foreign files give one clear line naming the file and the fix;
a single-file SD VAE (original LDM key names, as in ComfyUI/models/vae/) loads offline with the bundled config."""
import re
import socket

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from emo_model import EMOCheckpointError, load_model
from emo_model.formats.load import SD_VAE_CONFIG, _load_vae
from emo_model.formats.safe_load import load_tensors


class NotATensor:  # any object torch.load(weights_only=True) must refuse
    pass


def _one_clear_line(msg: str, path) -> None:
    assert "\n" not in msg and "\x1b" not in msg, repr(msg)
    assert str(path) in msg
    assert len(msg) < 400, len(msg)


def _error(path) -> str:
    with pytest.raises(EMOCheckpointError) as e:
        load_tensors(path)
    return str(e.value)


def test_pickle_with_objects_is_refused_in_one_line(tmp_path):
    path = tmp_path / "net.pth"
    torch.save({"w": torch.zeros(2), "extra": NotATensor()}, path)
    msg = _error(path)
    _one_clear_line(msg, path)
    assert msg.startswith(f"refused to load {path}")
    assert f"({__name__}.NotATensor)" in msg  # the global named in torch's "Unsupported global" line
    assert "for safety" in msg and "official file" in msg and ".safetensors" in msg
    assert "weights_only" not in msg and "add_safe_globals" not in msg  # none of torch's advice to load it anyway


def test_deflated_torch_zip_loads_exactly(tmp_path):
    """torch.save stores zip records uncompressed; a repacked (deflated) file is still a valid checkpoint, but
    torch.load(mmap=True) would return the compressed bytes as tensor data: the loader must not map it."""
    import zipfile
    stored, deflated = tmp_path / "stored.pth", tmp_path / "deflated.pth"
    sd = {"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(0)).half(), "b": torch.arange(10.0)}
    torch.save(sd, stored)
    with zipfile.ZipFile(stored) as zin, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    loaded = load_tensors(deflated)
    assert loaded.keys() == sd.keys()
    for k in sd:
        assert torch.equal(loaded[k], sd[k]), k


def test_truncated_files(tmp_path):
    full = tmp_path / "full.pth"
    torch.save({"w": torch.randn(1000)}, full)
    raw = full.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(raw[: len(raw) // 2])
    msg = _error(cut)
    _one_clear_line(msg, cut)
    assert "truncated" in msg and "download it again" in msg and "refused" not in msg

    st = tmp_path / "cut.safetensors"
    save_file({"w": torch.randn(1000)}, str(st))
    st.write_bytes(st.read_bytes()[:-100])
    msg = _error(st)
    _one_clear_line(msg, st)
    assert "truncated" in msg and "download it again" in msg

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    msg = _error(empty)
    _one_clear_line(msg, empty)
    assert "empty" in msg and "download it again" in msg


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    msg = _error(text)
    _one_clear_line(msg, text)
    assert "not a PyTorch checkpoint" in msg and "refused" not in msg  # damaged, not unsafe

    extra = tmp_path / "trainer.ckpt"
    torch.save({"w": torch.zeros(2), "global_step": 5}, extra)
    msg = _error(extra)
    _one_clear_line(msg, extra)
    assert "'global_step': int" in msg

    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    msg = _error(listed)
    _one_clear_line(msg, listed)
    assert "holds a list" in msg


def test_wrong_model_is_named(tmp_path):
    other = tmp_path / "sd15.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(other))
    with pytest.raises(EMOCheckpointError) as e:
        load_model(other, vae_path=False)
    msg = str(e.value)
    _one_clear_line(msg, other)
    assert "none of Hallo's" in msg and "Pick Hallo's net.pth, an EchoMimic folder or an EMO native folder" in msg


# ------------------------------------------------------------------------------------------ single-file VAE
def _to_ldm(key: str, value: torch.Tensor, n_up: int):
    """diffusers AutoencoderKL key -> the original (CompVis LDM) key of single-file VAEs; attention weights as
    1x1 convolutions, as those files store them."""
    key = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", key)
    key = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", key)
    key = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{n_up - 1 - int(m[1])}.block.", key)
    key = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{n_up - 1 - int(m[1])}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    if "mid_block.attentions.0." in key:
        key = key.replace("mid_block.attentions.0.", "mid.attn_1.")
        for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            key = key.replace(f".{new}.", f".{old}.")
        if value.ndim == 2:
            value = value[:, :, None, None]
    return key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out"), value


@pytest.fixture(scope="module")
def sd_vae(tmp_path_factory):
    """A full-size SD VAE with random weights as one .safetensors in LDM key names (83.7M params, ~2 s to make);
    -> (file, {diffusers key: tensor})."""
    config = AutoencoderKL.load_config(str(SD_VAE_CONFIG))
    with torch.device("meta"):
        shapes = AutoencoderKL.from_config(config).state_dict()
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in shapes.items()}
    ldm = dict(_to_ldm(k, v, len(config["up_block_types"])) for k, v in sd.items())
    assert "decoder.up.0.upsample.conv.weight" not in ldm and "encoder.mid.attn_1.q.weight" in ldm  # real layout
    path = tmp_path_factory.mktemp("vae") / "vae-ft-mse-840000-ema-pruned.safetensors"
    save_file(ldm, str(path))
    return path, sd


def test_single_file_vae_loads_offline(sd_vae, monkeypatch):
    path, sd = sd_vae

    def no_network(*args, **kwargs):
        raise AssertionError("the VAE loader tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    vae = _load_vae(path)
    assert list(vae.config.block_out_channels) == [128, 256, 512, 512] and vae.config.latent_channels == 4
    assert vae.config.scaling_factor == 0.18215
    got = vae.state_dict()
    assert got.keys() == sd.keys()
    for k in sd:
        assert torch.equal(got[k], sd[k]), k


def test_incomplete_or_foreign_vae_file(sd_vae, tmp_path):
    from safetensors.torch import load_file
    path, _ = sd_vae
    ldm = load_file(str(path))
    del ldm["decoder.conv_out.weight"]
    short = tmp_path / "short.safetensors"
    save_file(ldm, str(short))
    with pytest.raises(EMOCheckpointError, match=r"short\.safetensors holds 247 of the 248 tensors.*models/vae"):
        _load_vae(short)
    foreign = tmp_path / "lora.safetensors"
    save_file({"lora_up.weight": torch.zeros(4, 4)}, str(foreign))
    with pytest.raises(EMOCheckpointError, match=r"could not read the VAE file .*lora\.safetensors.*Diffusion 1"):
        _load_vae(foreign)
