"""Tiny stand-ins for the files the shipped manifests list, made from the parity fixtures (hallo-tiny,
echomimic-tiny) plus a tiny VAE: served by the stand-in hub, they give a download the real layout at toy size."""
import io
import tempfile
from pathlib import Path

import torch

from emo_model.download import builtin_manifest


def _tiny_vae_files() -> dict:
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=8, latent_channels=4,
                        sample_size=32, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2)
    with tempfile.TemporaryDirectory() as d:
        vae.save_pretrained(d, safe_serialization=True)
        return {f"sd-vae-ft-mse/{p.name}": p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def _pose_face_locator(data: bytes) -> bytes:
    """EchoMimic's pose face locator takes 3 channels (landmark drawings): the fixture's, widened."""
    sd = torch.load(io.BytesIO(data), weights_only=True)
    w = sd["conv_in.weight"]
    sd["conv_in.weight"] = w.repeat(1, 3, 1, 1) / 3
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def fake_files(name: str, fixtures: Path) -> dict:
    """{repo path: bytes} for every file of the built-in manifest `name` (extras included)."""
    m = builtin_manifest(name)
    out = dict(_tiny_vae_files())
    if name in ("hallo", "hallo2"):  # Hallo2's net.pth has Hallo's keys (hallo2-tiny borrows hallo-tiny's)
        src = fixtures / "hallo-tiny"
        out[f"{name}/net.pth"] = (src / "net.pth").read_bytes()
        out["stable-diffusion-v1-5/unet/config.json"] = (src / "stable-diffusion-v1-5/unet/config.json").read_bytes()
        for p in (src / "wav2vec/wav2vec2-base-960h").iterdir():
            out[f"wav2vec/wav2vec2-base-960h/{p.name}"] = p.read_bytes()
        for f in m.extras["identity"].files:
            out[f.path] = b"not a real onnx model: " + f.path.encode()
    elif name == "echomimic-v2":  # EchoMimic v2's layout from its parity set (UNet files borrowed from echomimic-tiny)
        v2, v1 = fixtures / "echomimic-v2-tiny", fixtures / "echomimic-tiny"
        for part in ("reference_unet", "denoising_unet", "motion_module", "pose_encoder"):
            out[f"{part}.pth"] = (v2 / f"{part}.pth" if (v2 / f"{part}.pth").is_file() else v1 / f"{part}.pth").read_bytes()
        out["audio_processor/whisper_tiny.pt"] = (v1 / "audio_processor/whisper_tiny.pt").read_bytes()
        out["sd-image-variations-diffusers/unet/config.json"] = (
            v1 / "sd-image-variations-diffusers/unet/config.json").read_bytes()
    else:
        src = fixtures / "echomimic-tiny"
        out["audio_processor/whisper_tiny.pt"] = (src / "audio_processor/whisper_tiny.pt").read_bytes()
        out["sd-image-variations-diffusers/unet/config.json"] = (
            src / "sd-image-variations-diffusers/unet/config.json").read_bytes()
        for f in m.files:
            if f.path.endswith(".pth"):
                part = next(p for p in ("reference_unet", "denoising_unet", "motion_module", "face_locator")
                            if f.path.startswith(p))
                data = (src / f"{part}.pth").read_bytes()
                out[f.path] = _pose_face_locator(data) if part == "face_locator" and "_pose" in f.path else data
    wanted = {f.path for f in m.selected(list(m.extras))}
    missing = wanted - set(out)
    assert not missing, f"no stand-in for {missing}"
    return {p: b for p, b in out.items() if p in wanted}


def test_manifest(name: str, hub) -> dict:
    """The built-in manifest with the stand-in files' sizes and sha256s (paths, repo and revision unchanged)."""
    m = builtin_manifest(name)

    def entries(files):
        return [{"path": f.path, "size": len(hub.files[f.path]), "sha256": hub.sha256(f.path),
                 **({"repo": f.repo, "revision": f.revision} if f.repo else {})} for f in files]

    return {"name": m.name, "repo": m.repo, "revision": m.revision, "licence": m.licence, "files": entries(m.files),
            "extras": {g: {"licence": e.licence, "files": entries(e.files)} for g, e in m.extras.items()}}


test_manifest.__test__ = False
