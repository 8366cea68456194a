"""`python -m emo_model convert` round trip: a Hallo / EchoMimic fixture converted to the native format loads to the
same model (every tensor exact, same config) and gives the same backbone outputs and audio tokens (atol 1e-6) on
the fixtures' inputs; the converted folder works stand-alone (audio encoder copied in), asks for a VAE when the
source has none, carries the VAE when the source has one; convert refuses a non-empty destination and foreign files.
"""
import dataclasses
import json
import os

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from emo_model import EMOCheckpointError, EMOPipeline, EncodedReference, load_model
from emo_model.cli import main
from emo_model.sampling.guidance import guidance_passes
from emo_model.sampling.motion_frames import MotionFrames

TOL = dict(atol=1e-6, rtol=0)
SETS = {"hallo": "hallo-tiny/net.pth", "echomimic": "echomimic-tiny"}


@pytest.fixture(scope="module", params=list(SETS))
def converted(request, fixtures, tmp_path_factory):
    """(name, fixture folder, source model, converted folder, model loaded from it), both without a VAE."""
    src = fixtures / SETS[request.param]
    dst = tmp_path_factory.mktemp(request.param) / "native"
    assert main(["convert", str(src), str(dst)]) == 0
    folder = src if src.is_dir() else src.parent
    return request.param, folder, load_model(src, vae_path=False), dst, load_model(dst, vae_path=False)


def _outputs(name, folder, model) -> dict:
    """Backbone output (both CFG halves, conditions built by the pipeline) on the fixture's unet_forward inputs, and
    the audio tokens of the fixture's waveform."""
    pipe = EMOPipeline(model)
    meta = json.loads((folder / "fixture_meta.json").read_text())  # the set's own values (another set may differ)
    d = load_file(folder / "unet_forward.safetensors")
    audio = load_file(folder / "audio.safetensors")
    passes = guidance_passes(model.config.audio_cfg, model.config.ref_cfg)
    with torch.no_grad():
        if name == "hallo":
            masks = [[d[f"{r}_mask.{i}"] for i in range(4)] for r in ("full", "face", "lip")]
            ref = EncodedReference(latent=d["ref_latent"], locator_mask=d["face_region"][None, :, None],
                                   masks=masks, identity_embedding=d["face_emb"])
            n = meta["n_motion_frames"]
            cache = pipe.conditions(ref, passes)
            motion = MotionFrames(model, cache, pipe.vae, n, d["motion_latents"]).features()
            conditions = cache.clip(d["audio_tokens"][0], n, motion, tuple(meta["motion_scale"]))
            fps = 25  # Hallo's script encodes audio at its fixed 25 fps
        else:
            ref = EncodedReference(latent=d["ref_latent"], locator_mask=d["face_mask"])
            tokens = d["audio_tokens"][0]
            conditions = pipe.conditions(ref, passes).clip(tokens)
            fps = meta["fps"]
        x = d["noisy_latents"].expand(len(passes), -1, -1, -1, -1)
        out = model.backbone(x, d["timestep"][0], conditions)
        tokens = pipe.audio_tokens(pipe.encode_audio(audio["waveform"], 16000, fps))
    return {"backbone": out, "audio_tokens": tokens, "expected_cond": d["out_cond"]}


def test_every_tensor_and_config_field_survive(converted):
    _, _, src, _, dst = converted
    assert dataclasses.asdict(src.config) == dataclasses.asdict(dst.config)
    a, b = src.component_state_dicts(), dst.component_state_dicts()
    assert a.keys() == b.keys()
    for part in a:
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    ea, eb = src.audio_encoder.state_dict(), dst.audio_encoder.state_dict()
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)


def test_same_backbone_outputs_and_audio_tokens(converted):
    name, folder, src, _, dst = converted
    a, b = _outputs(name, folder, src), _outputs(name, folder, dst)
    for key in ("backbone", "audio_tokens"):
        assert a[key].shape == b[key].shape, key
        torch.testing.assert_close(b[key], a[key], **TOL, msg=key)
    # and both still are the original implementation's numbers (the parity tolerance): the FULL pass is the last one
    torch.testing.assert_close(b["backbone"][-1:], b["expected_cond"], atol=1e-4, rtol=1e-4)


def test_folder_is_stand_alone_and_asks_for_a_vae(converted):
    _, folder, _, dst, _ = converted
    files = json.loads((dst / "config.json").read_text())["files"]
    assert "vae" not in files and not (dst / "vae").exists()
    assert (dst / files["audio_encoder"]).exists() and not os.path.isabs(files["audio_encoder"])
    with pytest.raises(EMOCheckpointError, match="sd-vae-ft-mse"):  # as loading the source without a VAE does
        load_model(dst)
    if (folder / "net.pth").is_file():
        with pytest.raises(EMOCheckpointError, match="sd-vae-ft-mse"):
            load_model(folder / "net.pth")
    else:
        with pytest.raises(EMOCheckpointError, match="sd-vae-ft-mse"):
            load_model(folder)


def test_source_with_a_vae(fixtures, tmp_path):
    """Hallo's layout with a VAE beside net.pth: convert copies it (then the native folder loads it by default),
    --link references it by absolute path."""
    src = tmp_path / "pretrained_models"
    src.mkdir()
    for name in ("net.pth", "wav2vec", "stable-diffusion-v1-5"):
        (src / name).symlink_to(fixtures / "hallo-tiny" / name)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=8, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    vae.save_pretrained(str(src / "sd-vae-ft-mse"))
    assert main(["convert", str(src / "net.pth"), str(tmp_path / "copy")]) == 0
    assert main(["convert", str(src / "net.pth"), str(tmp_path / "link"), "--link"]) == 0
    files = {out: json.loads((tmp_path / out / "config.json").read_text())["files"] for out in ("copy", "link")}
    assert files["copy"]["vae"] == "vae" and files["link"]["vae"] == str((src / "sd-vae-ft-mse").resolve())
    for out in ("copy", "link"):
        model = load_model(tmp_path / out)
        a, b = vae.state_dict(), model.vae.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), out


def test_refuses_a_non_empty_destination(fixtures, tmp_path, capsys):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    assert main(["convert", str(fixtures / "echomimic-tiny"), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "not an empty folder" in err and str(dst) in err and "overwrites nothing" in err
    assert [p.name for p in dst.iterdir()] == ["notes.txt"] and (dst / "notes.txt").read_text() == "mine"


def test_foreign_file_is_named(tmp_path, capsys):
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, other)
    assert main(["convert", str(other), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "none of Hallo's" in err and "not a model this pack knows" in err
    (tmp_path / "folder").mkdir()
    assert main(["convert", str(tmp_path / "folder"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not a model this pack knows" in err and "EchoMimic" in err and "Hallo" in err
    assert not (tmp_path / "out").exists()


def test_half_precision_source_stays_half(fixtures, tmp_path):
    """Hallo's released net.pth is fp16: the converted files keep fp16 (not twice the size) with the same values."""
    import shutil

    from safetensors import safe_open
    src = tmp_path / "hallo16"
    shutil.copytree(fixtures / "hallo-tiny", src, ignore=shutil.ignore_patterns("net.pth"))
    sd = torch.load(fixtures / "hallo-tiny" / "net.pth", weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    torch.save(half, src / "net.pth")
    assert main(["convert", str(src / "net.pth"), str(tmp_path / "native")]) == 0
    with safe_open(str(tmp_path / "native" / "backbone.safetensors"), "pt") as f:
        key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
        assert f.get_tensor(key).dtype == torch.float16
        assert torch.equal(f.get_tensor(key), half[f"denoising_unet.{key}"])
    a = load_model(src / "net.pth", vae_path=False).component_state_dicts()
    b = load_model(tmp_path / "native", vae_path=False).component_state_dicts()
    assert all(torch.equal(a[p][k], b[p][k]) for p in a for k in a[p])
