"""Hallo parity: our implementation, loaded from the fixture's net.pth through the real loader, against outputs of
Hallo's original code (`hallo-tiny` in tests/fixtures or $EMO_FIXTURES, see its README). float32, CPU.
Every value of the set (seeds, clip length, motion frames, steps, CFG, motion_scale, model sizes) is read from the
set's own files (fixture_meta.json, tiny_inference_config.json, scheduler_config.json, unet/config.json), so any set
made the same way can be checked. Tolerance: atol 1e-4 + rtol 1e-4 on UNet outputs and latents, atol 1e-5 on the
face locator (the README's suggestion; measured diffs ~1e-5)."""
import json

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from emo_model import EMOPipeline, EncodedReference, load_model
from emo_model.sampling.guidance import GuidedDDIM, guidance_passes
from emo_model.sampling.motion_frames import MotionFrames

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def hallo(fixtures):
    folder = fixtures / "hallo-tiny"
    model = load_model(folder / "net.pth", vae_path=False)  # the fixture ships no VAE; VAE is out of its scope
    return folder, model, EMOPipeline(model)


@pytest.fixture(scope="module")
def meta(hallo):
    return json.loads((hallo[0] / "fixture_meta.json").read_text())


def _reference(d, latent):
    masks = [[d[f"{r}_mask.{i}"] for i in range(4)] for r in ("full", "face", "lip")]
    return EncodedReference(latent=latent, locator_mask=d["face_region"][None, :, None],
                            masks=masks, identity_embedding=d["face_emb"])


def _clip_conditions(pipe, ref, passes, tokens, motion_latents, region_weights):
    """The backbone's conditions for one clip, made by the pipeline's own code (conditions.py, motion_frames.py)."""
    cache = pipe.conditions(ref, passes)
    n = motion_latents.shape[0]
    motion = MotionFrames(pipe.model, cache, pipe.vae, n, motion_latents).features()
    return cache.clip(tokens, n, motion, region_weights)


def _close(a, b):
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, **TOL)


def test_recognised_and_configured(hallo):
    folder, model, _ = hallo
    assert model.kind == "hallo"
    cfg = model.config
    # Hallo's inference defaults (configs/inference/default.yaml): set by the loader, not read from the set
    assert (cfg.frames_per_clip, cfg.motion_frames, cfg.steps, cfg.audio_cfg) == (16, 2, 40, 3.5)
    # the scheduler the set's pipeline used (scheduler_config.json) is the one the loader sets
    sched = json.loads((folder / "scheduler_config.json").read_text())
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample", "steps_offset",
                "prediction_type", "rescale_betas_zero_snr", "timestep_spacing", "set_alpha_to_one"):
        assert cfg.scheduler[key] == sched[key], key
    # sizes: the loader reads them from the tensors and from stable-diffusion-v1-5/unet/config.json
    ucfg = json.loads((folder / "stable-diffusion-v1-5" / "unet" / "config.json").read_text())
    for key in ("block_out_channels", "layers_per_block", "attention_head_dim", "norm_num_groups", "cross_attention_dim"):
        assert cfg.unet[key] == ucfg[key], key
    icfg = json.loads((folder / "tiny_inference_config.json").read_text())
    assert cfg.audio_attention["audio_dim"] == icfg["unet_additional_kwargs"]["audio_attention_dim"]
    assert cfg.temporal["max_len"] == icfg["unet_additional_kwargs"]["motion_module_kwargs"]["temporal_position_encoding_max_len"]
    assert cfg.audio_projection["context_tokens"] == icfg["audio_proj"]["context_tokens"]
    assert cfg.identity["tokens"] == icfg["image_proj"]["clip_extra_context_tokens"]


def test_pipeline_audio_tokens(hallo, meta):
    """The pipeline's own audio path (encode_audio: 16 kHz wave -> wav2vec2 features at 25 fps padded to whole clips;
    audio_tokens: +-2 window and projection, per clip) gives Hallo's audio tokens for the fixture's waveform."""
    folder, model, pipe = hallo
    d = load_file(folder / "audio.safetensors")
    audio = pipe.encode_audio(d["waveform"], 16000, 25, frames_per_clip=meta["clip_length_for_audio_padding"])
    assert audio.num_frames == int(d["audio_length"]) == meta["audio_length"]
    tokens = pipe.audio_tokens(audio)
    assert tokens.shape[0] == meta["audio_seq_len_padded"]
    _close(tokens, d["audio_tokens"])


def test_face_locator(hallo):
    folder, model, _ = hallo
    d = load_file(folder / "face_locator.safetensors")
    torch.testing.assert_close(model.face_locator(d["input"]), d["output"], atol=1e-5, rtol=0)


def test_identity_tokens(hallo):
    folder, model, pipe = hallo
    d = load_file(folder / "unet_forward.safetensors")
    ref = _reference(d, d["ref_latent"])
    cache = pipe.conditions(ref)
    _close(cache.identity_tokens(True), d["identity_tokens_cond"])
    _close(cache.identity_tokens(False), d["identity_tokens_uncond"])


def test_unet_forward_with_reference_motion_frames_and_cfg(hallo, meta):
    """ReferenceNet pass (reference + the set's motion frames) + one denoising call, both CFG halves, built by the
    pipeline's own condition code, with the set's CFG scale and motion_scale (region weights)."""
    folder, model, pipe = hallo
    d = load_file(folder / "unet_forward.safetensors")
    n, f = meta["n_motion_frames"], meta["F"]
    assert d["motion_latents"].shape[0] == n and d["noisy_latents"].shape[2] == f
    assert d["timestep"].tolist() == [meta["timestep_single_forward"]]
    ref = _reference(d, d["ref_latent"])
    passes = guidance_passes(meta["cfg_scale"], meta["cfg_scale"])
    assert len(passes) == 2  # equal scales: Hallo's single CFG, uncond + full
    with torch.no_grad():
        conditions = _clip_conditions(pipe, ref, passes, d["audio_tokens"][0], d["motion_latents"], meta["motion_scale"])
        x = d["noisy_latents"].expand(2, -1, -1, -1, -1)
        out = model.backbone(x, d["timestep"][0], conditions)
    _close(out[0:1], d["out_uncond"])
    _close(out[1:2], d["out_cond"])
    weights = torch.tensor([w for _, w in passes]).view(-1, 1, 1, 1, 1)
    _close((out * weights).sum(0, keepdim=True), d["out_guided"])


def test_sampling(hallo, meta):
    """The official pipeline's DDIM loop: the set's step count, generator seed, CFG and motion_scale."""
    folder, model, pipe = hallo
    d = load_file(folder / "sampling.safetensors")
    if "face_region" not in d:  # the input it shares with unet_forward may be left out of it
        d["face_region"] = load_file(folder / "unet_forward.safetensors")["face_region"]
    steps = meta["sampling_steps"]
    sched = DDIMScheduler.from_config(model.config.scheduler)
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == d["timesteps"].tolist() == meta["sampling_timesteps"]
    ref_lat = d["ref_image_latents"]
    assert ref_lat.shape[0] == 1 + meta["n_motion_frames"]
    ref = _reference(d, ref_lat[:1])
    gen = torch.Generator("cpu").manual_seed(meta["generator_seed"])
    noise = torch.randn(d["init_latents"].shape, generator=gen)  # what sample() draws for the first clip
    _close(noise, d["init_latents"])
    passes = guidance_passes(meta["cfg_scale"], meta["cfg_scale"])
    seen = []
    with torch.no_grad():
        conditions = _clip_conditions(pipe, ref, passes, d["audio_tokens"][0], ref_lat[1:], meta["motion_scale"])
        ddim = GuidedDDIM(model, passes, steps)
        final = ddim.denoise(noise * ddim.scheduler.init_noise_sigma, conditions,
                             lambda i, lat: seen.append(lat.clone()))
    assert len(seen) == steps
    for i in range(steps):
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
