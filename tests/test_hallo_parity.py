"""Hallo parity: our implementation, loaded from the fixture's net.pth through the real loader, against outputs of
Hallo's original code (../shared/fixtures/hallo-tiny, see its README). float32, CPU.
Tolerance: atol 1e-4 + rtol 1e-4 on UNet outputs and latents (the README's suggestion; measured diffs ~1e-5)."""
import pytest
import torch
from safetensors.torch import load_file

from emo_model import EMOPipeline, EncodedReference, load_model
from emo_model.pipeline import guidance_passes

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def hallo(fixtures):
    folder = fixtures / "hallo-tiny"
    model = load_model(folder / "net.pth", vae_path=False)  # the fixture ships no VAE; VAE is out of its scope
    return folder, model, EMOPipeline(model)


def _reference(d, latent):
    masks = [[d[f"{r}_mask.{i}"] for i in range(4)] for r in ("full", "face", "lip")]
    return EncodedReference(image=None, latent=latent, locator_mask=d["face_region"][None, :, None],
                            masks=masks, identity_embedding=d["face_emb"])


def _close(a, b):
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, **TOL)


def test_recognised_and_configured(hallo):
    _, model, _ = hallo
    assert model.kind == "hallo"
    cfg = model.config
    assert (cfg.frames_per_clip, cfg.motion_frames, cfg.steps, cfg.audio_cfg) == (16, 2, 40, 3.5)
    assert cfg.scheduler["prediction_type"] == "v_prediction" and cfg.scheduler["timestep_spacing"] == "trailing"
    assert cfg.scheduler["rescale_betas_zero_snr"] is True


def test_face_locator(hallo):
    folder, model, _ = hallo
    d = load_file(folder / "face_locator.safetensors")
    torch.testing.assert_close(model.face_locator(d["input"]), d["output"], atol=1e-5, rtol=0)


def test_identity_tokens(hallo):
    folder, model, pipe = hallo
    d = load_file(folder / "unet_forward.safetensors")
    ref = _reference(d, d["ref_latent"])
    _close(pipe._identity_tokens(ref, True), d["identity_tokens_cond"])
    _close(pipe._identity_tokens(ref, False), d["identity_tokens_uncond"])


def test_unet_forward_with_reference_motion_frames_and_cfg(hallo):
    """ReferenceNet pass (reference + 2 motion frames) + one denoising call, both CFG halves, built by the
    pipeline's own condition code."""
    folder, model, pipe = hallo
    d = load_file(folder / "unet_forward.safetensors")
    ref = _reference(d, d["ref_latent"])
    passes = guidance_passes(3.5, 3.5)
    assert len(passes) == 2  # equal scales: Hallo's single CFG, uncond + full
    with torch.no_grad():
        bank = pipe._reference_bank(ref, 2)
        ctx, ehs = pipe.clip_conditions(ref, d["audio_tokens"][0], passes, bank, d["motion_latents"])
        x = d["noisy_latents"].expand(2, -1, -1, -1, -1)
        out = model.backbone(x, d["timestep"][0], ehs, ctx)
    _close(out[0:1], d["out_uncond"])
    _close(out[1:2], d["out_cond"])
    weights = torch.tensor([w for _, w in passes]).view(-1, 1, 1, 1, 1)
    _close((out * weights).sum(0, keepdim=True), d["out_guided"])


def test_sampling_three_steps(hallo):
    folder, model, pipe = hallo
    d = load_file(folder / "sampling.safetensors")
    ref_lat = d["ref_image_latents"]
    ref = _reference(d, ref_lat[:1])
    gen = torch.Generator("cpu").manual_seed(42)
    noise = torch.randn(d["init_latents"].shape, generator=gen)  # what sample() draws for the first clip
    _close(noise, d["init_latents"])
    passes = guidance_passes(3.5, 3.5)
    seen = []
    with torch.no_grad():
        ctx, ehs = pipe.clip_conditions(ref, d["audio_tokens"][0], passes, pipe._reference_bank(ref, 2), ref_lat[1:])
        final = pipe._denoise(noise, 3, passes, ctx, ehs, lambda i, lat: seen.append(lat.clone()))
    for i in range(3):
        _close(seen[i], d[f"step{i}.latents_after"])
    _close(final, d["final_latents"])


def test_truncated_and_foreign_files(hallo, tmp_path):
    from emo_model import EMOCheckpointError
    folder, _, _ = hallo
    data = (folder / "net.pth").read_bytes()
    (tmp_path / "net.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(EMOCheckpointError, match="truncated"):
        load_model(tmp_path / "net.pth", vae_path=False)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(EMOCheckpointError, match="not a model this pack knows"):
        load_model(other, vae_path=False)
