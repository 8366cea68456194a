"""EchoMimic v1 parity: our loader, conditions, backbone and window sampler against numbers computed by the original
antgroup/echomimic code on a tiny seeded model (fixture set `echomimic-tiny`, tests/fixtures or $EMO_FIXTURES; its
README explains every tensor).

Tolerances (from the fixture README, for an independent float32 implementation): face locator atol 1e-5; UNet
outputs and latents atol 1e-4 + rtol 1e-4. Measured on CPU float32 (max abs diff): face locator 0, ReferenceNet bank
2.8e-6, single forward 2.7e-6 (cond, uncond; no-CFG 1.6e-6), guided 5.8e-6; sampling: per-window outputs 2.5e-6,
guided predictions 7.3e-6, latents after each step and final 5.8e-6; initial noise exact.
The fixture has no VAE: the model is loaded with vae_path=False and the decode is replaced by the identity, as the
fixture's own run did. Every value of the set (sizes, fps, CFG, steps, seed, context windows, video length) is read from
its fixture_meta.json, tiny_inference_config.json and unet/config.json, so any set made the same way can be checked;
the loader's defaults that are EchoMimic's own (30 steps, CFG 2.5, windows 12 / 3) are checked as such.
"""
import json
import shutil
from fractions import Fraction

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from emo_model import EMOCheckpointError, EMOInputError, EMOPipeline, EncodedAudio, EncodedReference, load_model
from emo_model.formats.echomimic import echomimic_files
from emo_model.sampling.context_windows import context_windows
from emo_model.sampling.guidance import FULL, UNCOND, guidance_passes

ATOL, RTOL = 1e-4, 1e-4


@pytest.fixture(scope="module")
def em(fixtures):
    return fixtures / "echomimic-tiny"


@pytest.fixture(scope="module")
def model(em):
    return load_model(em, vae_path=False)


@pytest.fixture(scope="module")
def meta(em):
    return json.loads((em / "fixture_meta.json").read_text())


@pytest.fixture(scope="module")
def icfg(em):
    return json.loads((em / "tiny_inference_config.json").read_text())


def _close(ours, ref, name, atol=ATOL, rtol=RTOL):
    ours = ours.float().cpu()
    diff = (ours - ref).abs().max().item()
    print(f"{name}: max abs diff {diff:.3g}")
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert torch.allclose(ours, ref, atol=atol, rtol=rtol), f"{name}: max abs diff {diff:.3g}"


def _reference(latent, face_mask):
    """latent: [1, 4, h, w] (scaled); face_mask: [1, 1, 1, H, W] in {0, 1} (what encode_reference builds)."""
    return EncodedReference(latent=latent, locator_mask=face_mask)


def _forward(model, data, audio_cfg, ref_cfg):
    """One denoising step's backbone call for one window, conditions built by the pipeline. -> ([B, 4, f, h, w], passes)"""
    pipe = EMOPipeline(model)
    ref = _reference(data["ref_latent"], data["face_mask"])
    passes = guidance_passes(audio_cfg, ref_cfg)
    tokens = data["audio_tokens"][0]  # [f, 10 x levels, width]
    with torch.no_grad():
        conditions = pipe.conditions(ref, passes).clip(tokens)
        x = data["noisy_latents"].expand(len(passes), -1, -1, -1, -1)
        out = model.backbone(x, data["timestep"][0], conditions)
    return out, passes


def _sampling(em):
    """sampling.safetensors; the input it shares with unet_forward (face_mask) may be left out of it."""
    data = load_file(em / "sampling.safetensors")
    if "face_mask" not in data:
        data["face_mask"] = load_file(em / "unet_forward.safetensors")["face_mask"]
    return data


def _copy_set(src, dst, rename=None, skip=()):
    """Copies the fixture's EchoMimic folder to dst (file names mapped by `rename`, `skip` left out)."""
    rename = rename or {}
    dst.mkdir(exist_ok=True)
    for name in ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "face_locator.pth"):
        if name not in skip:
            shutil.copyfile(src / name, dst / rename.get(name, name))
    for sub in ("audio_processor", "sd-image-variations-diffusers"):
        shutil.copytree(src / sub, dst / sub)
    return dst


# ---------------------------------------------------------------------------------------------- loader
def test_loader_reads_the_tiny_config(model, em, icfg):
    cfg = model.config
    assert cfg.kind == "echomimic" and cfg.temporal_mode == "context_windows"
    ucfg = json.loads((em / "sd-image-variations-diffusers" / "unet" / "config.json").read_text())
    # the denoising UNet's cross-attention width comes from attn2.to_k (= whisper width), not config.json's value
    assert cfg.unet["cross_attention_dim"] == icfg["unet_additional_kwargs"]["cross_attention_dim"]
    for key in ("block_out_channels", "layers_per_block", "attention_head_dim", "norm_num_groups"):
        assert cfg.unet[key] == ucfg[key], key
    assert cfg.resolution == 8 * ucfg["sample_size"] and cfg.latent_size == ucfg["sample_size"]
    mm = icfg["unet_additional_kwargs"]["motion_module_kwargs"]
    assert cfg.temporal["max_len"] == mm["temporal_position_encoding_max_len"]
    # EchoMimic's own defaults (infer_audio2vid.py, inference_v2.yaml), set by the loader
    assert (cfg.steps, cfg.audio_cfg, cfg.ref_cfg, cfg.frames_per_clip, cfg.motion_frames) == (30, 2.5, 2.5, 12, 3)
    assert model.vae is None and model.audio_encoder.width == icfg["whisper_dims"]["n_audio_state"]
    assert echomimic_files(em)["denoising_unet"].name == "denoising_unet.pth"


def test_face_locator(model, em):
    data = load_file(em / "face_locator.safetensors")
    with torch.no_grad():
        out = model.face_locator(data["input"])
    _close(out, data["output"], "face locator", atol=1e-5, rtol=0)


def test_reference_net_bank(model, em):
    data = load_file(em / "unet_forward.safetensors")
    inter = load_file(em / "unet_forward_intermediates.safetensors")
    with torch.no_grad():
        bank = EMOPipeline(model).conditions(_reference(data["ref_latent"], data["face_mask"])).reference_bank(0)
    for key in (k for k in inter if k.startswith("bank.")):
        _close(bank[key[len("bank."):]], inter[key], key)


def test_unet_forward_with_cfg(model, em, meta):
    data = load_file(em / "unet_forward.safetensors")
    assert data["timestep"].tolist() == [meta["timestep_single_forward"]]
    out, passes = _forward(model, data, meta["cfg"], meta["cfg"])
    order = [p for p, _ in passes]
    assert order == [UNCOND, FULL]  # EchoMimic's single scale: two passes, no reference-only pass
    weights = torch.tensor([w for _, w in passes]).view(-1, 1, 1, 1, 1)
    _close(out[order.index(UNCOND)][None], data["out_uncond"], "out_uncond")
    _close(out[order.index(FULL)][None], data["out_cond"], "out_cond")
    _close((out * weights).sum(0, keepdim=True), data["out_guided"], "out_guided")


# ---------------------------------------------------------------------------------------------- sampling
def test_context_windows_match_the_official_schedule(em, meta):
    data = _sampling(em)
    step0 = data["context_windows_step0"]
    L, size, overlap = meta["sampling_video_length_used"], meta["context_frames"], meta["context_overlap"]
    assert context_windows(L, size, overlap) == step0.tolist()
    for i in range(4):
        assert context_windows(L, size, overlap, step=i) == ((step0 + 2 * i) % L).tolist()
    assert context_windows(5, 12, 3, step=1) == [[2, 3, 4, 0, 1]]  # one window, still rotated
    with pytest.raises(EMOInputError, match="overlap"):
        context_windows(L, size, size)


def test_window_settings_are_checked(model, em, meta):
    data = _sampling(em)
    pipe = EMOPipeline(model)
    too_long = model.config.temporal["max_len"] + 8  # a window longer than the temporal position table
    tokens = data["audio_tokens_all"][0]
    tokens = tokens.repeat(too_long // tokens.shape[0] + 1, 1, 1)  # a video longer than that window
    audio = EncodedAudio(tokens, tokens.shape[0], Fraction(meta["fps"]), torch.zeros(1, 320), 16000)
    ref = _reference(data["ref_latent"], data["face_mask"])
    with pytest.raises(EMOInputError, match="overlap"):  # overlap = the default window (12)
        next(pipe.sample(audio, ref, steps=1, motion_frames=model.config.frames_per_clip))
    with pytest.raises(EMOInputError, match="positions"):
        next(pipe.sample(audio, ref, steps=1, frames_per_clip=too_long, motion_frames=3))


def test_sampling_run(model, em, meta, monkeypatch):
    """The pipeline's own window sampler (sample() with the set's windows, CFG, steps and seed) on the fixture's audio
    tokens; the VAE decode is the identity."""
    data = _sampling(em)
    L = data["audio_tokens_all"].shape[1]
    assert L == meta["sampling_video_length_used"]
    steps, size, overlap, cfg = meta["sampling_steps"], meta["context_frames"], meta["context_overlap"], meta["cfg"]
    # the frame size is a run setting in EchoMimic (-W/-H); the set's is in its meta
    monkeypatch.setattr(model.config, "resolution", meta["pixel_hw"])
    pipe = EMOPipeline(model)
    # stand-in decode: [n, 4, h, w] latents come out as they are
    monkeypatch.setattr(pipe.vae, "decode", lambda latents, keep_last=0: (latents, None))
    audio = EncodedAudio(data["audio_tokens_all"][0], L, Fraction(meta["fps"]), torch.zeros(1, 320), 16000)
    ref = _reference(data["ref_latent"], data["face_mask"])

    calls, steps_seen, after = [], [], []
    hook = model.backbone.register_forward_hook(lambda m, args, out: calls.append((args[0].clone(), out.clone())))
    step = DDIMScheduler.step

    def recording_step(self, model_output, timestep, sample, *args, **kwargs):
        steps_seen.append((int(timestep), model_output.clone()))
        return step(self, model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(DDIMScheduler, "step", recording_step)
    try:
        chunks = list(pipe.sample(audio, ref, steps=steps, seed=meta["generator_seed"], audio_cfg=cfg, ref_cfg=cfg,
                                  frames_per_clip=size, motion_frames=overlap,
                                  callback=lambda p: after.append(p.latents.clone())))
    finally:
        hook.remove()

    assert [t for t, _ in steps_seen] == data["timesteps"].tolist() == meta["sampling_timesteps"]
    windows = context_windows(L, size, overlap, 0)
    assert windows == data["context_windows_step0"].tolist()
    assert len(calls) == steps * len(windows)  # each window one batch of all guidance passes
    x0 = calls[0][0][:1]  # first window of step 0: the init latents of its frames
    _close(x0, data["init_latents"][:, :, windows[0]], "init_latents (window 0)", atol=0, rtol=0)
    order = [p for p, _ in guidance_passes(cfg, cfg)]
    for j in range(len(windows)):
        frames = data[f"step0.window{j}.frames"]
        assert windows[j] == frames.tolist()
        _close(calls[j][0][:1], data["init_latents"][:, :, frames], f"step0.window{j} input")
        out = calls[j][1]
        _close(out[order.index(UNCOND)][None], data[f"step0.window{j}.model_out_uncond"], f"step0.window{j} uncond")
        _close(out[order.index(FULL)][None], data[f"step0.window{j}.model_out_cond"], f"step0.window{j} cond")
    for i in range(steps):
        _close(steps_seen[i][1], data[f"step{i}.guided_model_out"], f"step{i}.guided_model_out")
        _close(after[i], data[f"step{i}.latents_after"], f"step{i}.latents_after")
    final = torch.cat(chunks).permute(1, 0, 2, 3)[None]  # [f, 4, h, w] chunks -> [1, 4, L, h, w]
    _close(final, data["final_latents"], "final_latents")


# ---------------------------------------------------------------------------------------------- variants, bad files
def test_accelerated_set_runs_one_pass(em, tmp_path):
    """The `_acc` release (denoising_unet_acc.pth + motion_module_acc.pth beside the shared files): 6 steps, CFG 1.0,
    so a single pass; its prediction equals the fixture's no-CFG output (same weights, renamed)."""
    acc = _copy_set(em, tmp_path / "acc", rename={"denoising_unet.pth": "denoising_unet_acc.pth",
                                                   "motion_module.pth": "motion_module_acc.pth"})
    model = load_model(acc, vae_path=False)
    cfg = model.config
    assert (cfg.steps, cfg.audio_cfg, cfg.ref_cfg) == (6, 1.0, 1.0)
    data = load_file(em / "unet_forward.safetensors")
    out, passes = _forward(model, data, cfg.audio_cfg, cfg.ref_cfg)
    assert [p for p, _ in passes] == [FULL] and out.shape[0] == 1
    _close(out, data["out_nocfg"], "out_nocfg")

    with pytest.raises(EMOCheckpointError, match="denoising_unet.pth"):
        echomimic_files(acc, accelerated=False)  # the standard set is asked for but absent


def test_variant_selection_with_both_sets(em, tmp_path):
    both = _copy_set(em, tmp_path / "both")
    for part in ("denoising_unet", "motion_module"):
        shutil.copyfile(em / f"{part}.pth", both / f"{part}_acc.pth")
    assert {p.name for p in echomimic_files(both).values()} == {
        "reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "face_locator.pth"}
    assert {p.name for p in echomimic_files(both, accelerated=True).values()} == {
        "reference_unet.pth", "denoising_unet_acc.pth", "motion_module_acc.pth", "face_locator.pth"}
    assert load_model(both / "denoising_unet_acc.pth", vae_path=False).config.steps == 6  # an _acc file picks its set
    (both / "motion_module_acc.pth").unlink()
    with pytest.raises(EMOCheckpointError, match="motion_module_acc.pth"):  # never mixes the two sets
        echomimic_files(both, accelerated=True)


def test_truncated_file(em, tmp_path):
    folder = _copy_set(em, tmp_path / "trunc")
    raw = (em / "denoising_unet.pth").read_bytes()
    (folder / "denoising_unet.pth").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(EMOCheckpointError, match=r"denoising_unet\.pth.*truncated"):
        load_model(folder, vae_path=False)


def test_missing_motion_module(em, tmp_path):
    folder = _copy_set(em, tmp_path / "missing", skip=("motion_module.pth",))
    with pytest.raises(EMOCheckpointError, match="missing motion_module.pth"):
        load_model(folder, vae_path=False)


class NotATensor:  # any object torch.load(weights_only=True) must refuse
    def __init__(self):
        self.payload = "x"


def test_pickle_with_objects_is_refused(em, tmp_path):
    folder = _copy_set(em, tmp_path / "pickle", skip=("face_locator.pth",))
    sd = torch.load(em / "face_locator.pth", weights_only=True)
    torch.save({**sd, "extra": NotATensor()}, folder / "face_locator.pth")
    with pytest.raises(EMOCheckpointError, match=r"refused to load .*face_locator\.pth"):
        load_model(folder, vae_path=False)


def test_swapped_files_are_named(em, tmp_path):
    folder = _copy_set(em, tmp_path / "swapped", rename={"motion_module.pth": "face_locator.pth",
                                                         "face_locator.pth": "motion_module.pth"})
    with pytest.raises(EMOCheckpointError, match="does not hold EchoMimic's"):
        load_model(folder, vae_path=False)


def test_audio_of_another_kind_of_model_is_refused(model, pipe):
    """Audio encoded by a wav2vec2 model (the tiny native one) given to EchoMimic, and EchoMimic's whisper tokens given
    to the wav2vec2 model: a clear error naming the fix, before any UNet work."""
    wave = torch.sin(torch.arange(8000) / 16000 * 2 * torch.pi * 220)[None] * 0.3
    w2v_audio = pipe.encode_audio(wave, 16000, 25)
    with pytest.raises(EMOInputError, match="encode the audio again"):
        EMOPipeline(model).audio_tokens(w2v_audio)
    whisper_audio = EMOPipeline(model).encode_audio(wave, 16000, 25)
    with pytest.raises(EMOInputError, match="encode the audio again"):
        pipe.audio_tokens(whisper_audio)
