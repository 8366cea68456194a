"""EchoMimic v2 parity: our loader, hand-pose drawing, pose encoder, backbone and window sampler against numbers computed
by the original antgroup/echomimic_v2 code on a tiny seeded model (fixture set `echomimic-v2-tiny`, tests/fixtures or
$EMO_FIXTURES; its README explains every file).

A set holds its own pose encoder and outputs; its UNet files (`reference_unet.pth`, `denoising_unet.pth`,
`motion_module.pth`), UNet config and whisper file are its own when present, else those of the set its
fixture_meta.json names under `weights_from` (the committed set borrows echomimic-tiny's: EchoMimic v2 has v1's
architecture, and the original v2 code ran on exactly those files). The model folder is assembled the way EchoMimic v2
lays out its `pretrained_weights/` (whisper as `audio_processor/tiny.pt`) and loaded through the real loader.

Tolerances (the fixture README's, for an independent float32 implementation): pose encoder atol 1e-5; UNet outputs and
latents atol 1e-4 + rtol 1e-4; pose drawings exact (uint8). Every value of the set (sizes, CFG, steps, seed, windows,
video length, drawing boxes) is read from its fixture_meta.json, so any set made the same way can be checked.
"""
import json
import os
import pickle
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from einops import rearrange
from safetensors.torch import load_file

from emo_model import EMOCheckpointError, EMOInputError, EMOPipeline, EncodedAudio, EncodedReference, load_model
from emo_model.formats.echomimic import echomimic_files
from emo_model.formats.load import detect_format
from emo_model.faces.hand_pose import draw_hands, hand_pose_frame, read_dwpose
from emo_model.faces.pose import is_dwpose_folder, load_pose_frames
from emo_model.sampling.context_windows import context_windows
from emo_model.sampling.guidance import FULL, UNCOND, guidance_passes

ATOL, RTOL = 1e-4, 1e-4
UNET_FILES = ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth")


@pytest.fixture(scope="module")
def em2(fixtures):
    return fixtures / "echomimic-v2-tiny"


@pytest.fixture(scope="module")
def meta(em2):
    return json.loads((em2 / "fixture_meta.json").read_text())


def _source(em2: Path, meta: dict, rel: str) -> Path:
    """A file of the set, else of the set it borrows from (fixture_meta.json `weights_from`)."""
    own = em2 / rel
    if own.exists() or not meta.get("weights_from"):
        return own
    return em2.parent / meta["weights_from"] / rel.replace("audio_processor/tiny.pt", "audio_processor/whisper_tiny.pt")


def v2_folder(em2: Path, meta: dict, dst: Path, skip=(), acc=False) -> Path:
    """EchoMimic v2's pretrained_weights/ layout in dst (links to the set's files): the four .pth files (`_acc` names
    for the accelerated pair when acc), audio_processor/tiny.pt, sd-image-variations-diffusers/unet/config.json."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in UNET_FILES + ("pose_encoder.pth",):
        if name in skip:
            continue
        target = name.replace(".pth", "_acc.pth") if acc and name in UNET_FILES[1:] else name
        os.symlink(_source(em2, meta, name), dst / target)
    for rel in ("audio_processor/tiny.pt", "sd-image-variations-diffusers/unet/config.json"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(_source(em2, meta, rel), dst / rel)
    return dst


@pytest.fixture(scope="module")
def folder(em2, meta, tmp_path_factory):
    return v2_folder(em2, meta, tmp_path_factory.mktemp("emv2") / "pretrained_weights")


@pytest.fixture(scope="module")
def model(folder):
    return load_model(folder, vae_path=False)


def _close(ours, ref, name, atol=ATOL, rtol=RTOL):
    ours = ours.float().cpu()
    diff = (ours - ref).abs().max().item()
    print(f"{name}: max abs diff {diff:.3g}")
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert torch.allclose(ours, ref, atol=atol, rtol=rtol), f"{name}: max abs diff {diff:.3g}"


def _png(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _pose_frames(em2, meta) -> np.ndarray:
    """The original's pose frames (infer.py's tgt_musk per frame), uint8 [L, side, side, 3]."""
    strip, side = _png(em2 / "pose_frames.png"), meta["pixel_hw"]
    return np.stack(np.split(strip, strip.shape[1] // side, axis=1))


def _reference(em2, meta, data) -> EncodedReference:
    frames = torch.from_numpy(_pose_frames(em2, meta))
    return EncodedReference(latent=data["ref_latent"], locator_mask=rearrange(frames, "l h w c -> 1 c l h w"))


# ---------------------------------------------------------------------------------------------- loader
def test_loader_recognises_echomimic_v2(model, folder, meta):
    cfg = model.config
    assert detect_format(folder) == "echomimic" and cfg.kind == "echomimic_v2"
    # EchoMimic v2's own settings (infer.py, pipeline_echomimicv2.py): 768 x 768, windows 12 / 3 shifting by 3 a step,
    # initial noise clamped to +-1.5, CFG 2.5, 30 steps, 24 fps; hand-pose drawings; the whole picture is the frame
    assert (cfg.resolution, cfg.frames_per_clip, cfg.motion_frames, cfg.window_shift) == (768, 12, 3, 3)
    assert (cfg.init_noise_clamp, cfg.steps, cfg.audio_cfg, cfg.ref_cfg, cfg.fps) == (1.5, 30, 2.5, 2.5, 24.0)
    assert (cfg.locator_input, cfg.framing, cfg.temporal_mode) == ("pose", "whole", "context_windows")
    assert model.face_locator.in_channels == 3
    assert {p.name for p in echomimic_files(folder).values()} == {*UNET_FILES, "pose_encoder.pth"}
    assert model.sources["audio_encoder"].name == "tiny.pt"


def test_accelerated_set(em2, meta, tmp_path):
    """denoising_unet_acc.pth + motion_module_acc.pth beside the shared files: 6 steps, no CFG (infer_acc.py)."""
    acc = v2_folder(em2, meta, tmp_path / "acc", acc=True)
    cfg = load_model(acc, vae_path=False).config
    assert (cfg.kind, cfg.steps, cfg.audio_cfg, cfg.ref_cfg, cfg.init_noise_clamp) == ("echomimic_v2", 6, 1.0, 1.0, 1.5)
    assert load_model(acc / "denoising_unet_acc.pth", vae_path=False).config.steps == 6  # a picked file picks its set
    with pytest.raises(EMOCheckpointError, match="denoising_unet.pth"):
        echomimic_files(acc, accelerated=False)


def test_missing_and_mixed_files(em2, meta, tmp_path):
    folder = v2_folder(em2, meta, tmp_path / "missing", skip=("motion_module.pth",))
    with pytest.raises(EMOCheckpointError, match="EchoMimic v2 folder .* is missing motion_module.pth"):
        load_model(folder, vae_path=False)
    mixed = v2_folder(em2, meta, tmp_path / "mixed")
    (mixed / "face_locator.pth").write_bytes((mixed / "pose_encoder.pth").read_bytes())
    with pytest.raises(EMOCheckpointError, match="both face_locator.pth .* and pose_encoder.pth"):
        load_model(mixed, vae_path=False)


def test_one_channel_pose_encoder_is_refused(em2, meta, tmp_path):
    folder = v2_folder(em2, meta, tmp_path / "onech", skip=("pose_encoder.pth",))
    sd = torch.load(_source(em2, meta, "pose_encoder.pth"), weights_only=True)
    sd["conv_in.weight"] = sd["conv_in.weight"][:, :1].clone()
    torch.save(sd, folder / "pose_encoder.pth")
    with pytest.raises(EMOCheckpointError, match="pose_encoder.pth is a 1-channel encoder"):
        load_model(folder, vae_path=False)


# ---------------------------------------------------------------------------------------------- pose drawing
def test_pose_folder_drawn_as_the_original(em2, meta):
    """EchoMimic v2's pose folder (DWPose .npy dicts) -> the frames its infer.py builds, pixel for pixel."""
    want = _pose_frames(em2, meta)
    assert is_dwpose_folder(em2 / "pose")
    got = load_pose_frames(em2 / "pose", meta["pixel_hw"]).numpy()
    assert got.shape == want.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want)
    print(f"pose frames: {np.count_nonzero(diff)} of {diff.size} values differ (max {diff.max()})")
    assert np.array_equal(got, want)
    assert load_pose_frames(em2 / "pose", meta["pixel_hw"], num_frames=3).shape[0] == 3


@pytest.mark.parametrize("box", ["wide", "tall"])
def test_draw_pose_select_v2_on_other_boxes(em2, meta, box):
    """draw_pose_select_v2(pose, H, W, ref_w=800) itself on boxes whose canvas is scaled differently."""
    h, w = meta["pose_drawn_boxes"][box]
    got = draw_hands(read_dwpose(em2 / "pose" / "0.npy"), h, w, meta["ref_w"])
    assert np.array_equal(got, _png(em2 / f"pose_drawn_{box}.png"))


def test_bad_pose_files(em2, tmp_path):
    pose = read_dwpose(em2 / "pose" / "0.npy")
    with pytest.raises(EMOInputError, match="do not fit a 64x64 frame"):
        hand_pose_frame(pose, 64, "0.npy")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "0.npy", np.array({"hands": Evil()}, dtype=object), allow_pickle=True)
    assert is_dwpose_folder(bad)
    with pytest.raises(EMOInputError, match="refused to read"):
        load_pose_frames(bad, 128)
    np.save(bad / "0.npy", np.array({"bodies": 1}, dtype=object), allow_pickle=True)
    with pytest.raises(EMOInputError, match="not a DWPose result"):
        read_dwpose(bad / "0.npy")
    d = dict(np.load(em2 / "pose" / "0.npy", allow_pickle=True).tolist())
    d["hands"] = d["hands"][:, :5]
    np.save(bad / "0.npy", np.array(d, dtype=object), allow_pickle=True)
    with pytest.raises(EMOInputError, match=r"expected float \[n, 21, 2\]"):
        read_dwpose(bad / "0.npy")
    assert pickle  # the refusal above is the unpickler's, not numpy's allow_pickle


def test_too_few_pose_frames(em2, meta):
    with pytest.raises(EMOInputError, match="needs 99"):
        load_pose_frames(em2 / "pose", meta["pixel_hw"], num_frames=99)


# ---------------------------------------------------------------------------------------------- pose encoder, forward
def test_pose_encoder(model, em2, meta):
    """Input: frames 0-1 of pose_frames.png, rows and columns pixel/4 ... pixel/4 + 48, / 255 (the pipeline's)."""
    data = load_file(em2 / "pose_encoder.safetensors")
    o = meta["pixel_hw"] // 4
    frames = torch.from_numpy(_pose_frames(em2, meta)[:2, o:o + 48, o:o + 48])
    with torch.no_grad():
        out = model.face_locator(rearrange(frames, "f h w c -> 1 c f h w").float() / 255)
    _close(out, data["output"], "pose encoder", atol=1e-5, rtol=0)


def test_unet_forward_with_cfg(model, em2, meta):
    """One window of F frames at one timestep, with the pose features of frames 0..F-1 (their pipeline, step 0)."""
    data = load_file(em2 / "unet_forward.safetensors")
    F = meta["F_single_forward"]
    assert data["timestep"].tolist() == [meta["timestep_single_forward"]]
    pipe = EMOPipeline(model)
    passes = guidance_passes(meta["cfg"], meta["cfg"])
    assert [p for p, _ in passes] == [UNCOND, FULL]
    with torch.no_grad():
        conditions = pipe.conditions(_reference(em2, meta, data), passes).clip(data["audio_tokens"][0],
                                                                              frames=torch.arange(F))
        out = model.backbone(data["noisy_latents"].expand(len(passes), -1, -1, -1, -1), data["timestep"][0],
                             conditions)
    weights = torch.tensor([w for _, w in passes]).view(-1, 1, 1, 1, 1)
    _close(out[0:1], data["out_uncond"], "out_uncond")
    _close(out[1:2], data["out_cond"], "out_cond")
    _close((out * weights).sum(0, keepdim=True), data["out_guided"], "out_guided")


# ---------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("run", ["window", "sampling"])
def test_sampler(model, em2, meta, run, monkeypatch):
    """Their __call__ (prepare_latents_smooth: randn clamped to +-1.5; windows of the uniform schedule shifted by 3*i;
    CFG; DDIM) against ours: `window` has one window of all frames (rotated each step), `sampling` several."""
    r = meta["runs"][run]
    data = load_file(em2 / f"{run}.safetensors")
    fwd = load_file(em2 / "unet_forward.safetensors")
    if "audio_tokens_all" not in data:  # the window run's tokens are the first frames' of the sampling run
        data["audio_tokens_all"] = load_file(em2 / "sampling.safetensors")["audio_tokens_all"][:, :r["video_length"]]
    L, size, overlap, steps = r["video_length"], r["context_frames"], r["context_overlap"], r["steps"]
    assert r["window_shift"] == model.config.window_shift == 3
    monkeypatch.setattr(model.config, "resolution", meta["pixel_hw"])  # a run setting (-W / -H) of EchoMimic v2
    pipe = EMOPipeline(model)
    monkeypatch.setattr(pipe.vae, "decode", lambda latents, keep_last=0: (latents, None))
    audio = EncodedAudio(data["audio_tokens_all"][0], L, Fraction(meta["fps"]), torch.zeros(1, 320), 16000)
    ref = _reference(em2, meta, fwd)

    calls, steps_seen, after = [], [], []
    hook = model.backbone.register_forward_hook(lambda m, args, out: calls.append((args[0].clone(), out.clone())))
    step = DDIMScheduler.step

    def recording_step(self, model_output, timestep, sample, *args, **kwargs):
        steps_seen.append((int(timestep), model_output.clone()))
        return step(self, model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(DDIMScheduler, "step", recording_step)
    try:
        chunks = list(pipe.sample(audio, ref, steps=steps, seed=r["generator_seed"], audio_cfg=meta["cfg"],
                                  ref_cfg=meta["cfg"], frames_per_clip=size, motion_frames=overlap,
                                  callback=lambda p: after.append(p.latents.clone())))
    finally:
        hook.remove()

    assert [t for t, _ in steps_seen] == data["timesteps"].tolist() == r["timesteps"]
    windows = context_windows(L, size, overlap, 0, 3)
    assert windows == data["context_windows_step0"].tolist()
    assert len(calls) == steps * len(windows)
    _close(calls[0][0][:1], data["init_latents"][:, :, windows[0]], "init_latents (window 0)", atol=0, rtol=0)
    assert data["init_latents"].abs().max() <= meta["init_noise_clamp"]
    for i in range(steps):
        for j in range(len(windows)):
            frames = data[f"step{i}.window{j}.frames"].tolist()
            assert context_windows(L, size, overlap, i, 3)[j] == frames  # the shift by 3 * i
        for j in range(len(windows) if i == 0 else 0):
            out = calls[j][1]
            _close(calls[j][0][:1], data["init_latents"][:, :, data[f"step0.window{j}.frames"]], f"window{j} input")
            _close(out[0:1], data[f"step0.window{j}.model_out_uncond"], f"step0.window{j} uncond")
            _close(out[1:2], data[f"step0.window{j}.model_out_cond"], f"step0.window{j} cond")
        _close(steps_seen[i][1], data[f"step{i}.guided_model_out"], f"step{i}.guided_model_out")
        _close(after[i], data[f"step{i}.latents_after"], f"step{i}.latents_after")
    final = torch.cat(chunks).permute(1, 0, 2, 3)[None]
    _close(final, data[f"step{steps - 1}.latents_after"], "final latents")


def test_poses_placed_for_768_on_a_smaller_model(caplog):
    """The template's example poses (assets/hands_pose, boxes of EchoMimic v2's 768 x 768 frame) for a model run at
    128 px: drawn at 768 as the original would, then resized; said in the log."""
    folder = Path(__file__).resolve().parents[2] / "assets" / "hands_pose"
    with caplog.at_level("INFO", logger="emo_model.faces.pose"):
        got = load_pose_frames(folder, 128, num_frames=2).numpy()
    want = [cv2.resize(hand_pose_frame(read_dwpose(folder / f"{i}.npy"), 768), (128, 128)) for i in range(2)]
    assert np.array_equal(got, np.stack(want)) and got.any()
    assert "placed for a 768x768 frame" in caplog.text
