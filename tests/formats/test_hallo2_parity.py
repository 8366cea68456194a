"""Hallo2 parity: our loader, motion-frame pixel drop, clip sampler and 60 s audio pieces against numbers computed by
Hallo2's ORIGINAL `scripts/inference_long.py` (fudan-generative-vision/hallo2) on a tiny seeded model (fixture set
`hallo2-tiny`, tests/fixtures or $EMO_FIXTURES; its README explains every file and how the original code was run).

Hallo2's net.pth has Hallo's keys, so the committed set borrows the tiny Hallo weights: its fixture_meta.json names
`weights_from` (net.pth, the UNet config, the wav2vec2 folder) and `inputs_from` (the face region, identity embedding,
region masks and the short track's waveform), taken from this set's folder when there and from the named set
otherwise. The model folder is assembled the way Hallo2 lays out its `pretrained_models/` (hallo2/net.pth beside
sd-vae-ft-mse/, wav2vec/, stable-diffusion-v1-5/) and loaded through the real loader, with the set's own tiny VAE.

Tolerances (as for Hallo, the sets' READMEs): atol 1e-4 + rtol 1e-4 on UNet outputs, latents, audio features and
tokens; the second clip (after the VAE round trip, see TOL_CLIP2) atol 5e-4 + rtol 1e-4; decoded frame means
atol 1e-4. Every value of a set (sizes, clip length, steps, seed, drop rate, CFG, track
lengths and seeds) is read from its fixture_meta.json, so any set made the same way can be checked.
"""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from emo_model import EMOPipeline, EncodedReference, load_model
from emo_model.formats.load import detect_format
from emo_model.sampling.guidance import GuidedDDIM, guidance_passes
from emo_model.sampling.motion_frames import MotionFrames
from emo_model.sampling.vae import VAECodec

TOL = dict(atol=1e-4, rtol=1e-4)
# The second clip starts from the first one's decoded frames: the tiny random VAE's decode -> encode round trip
# (latents x 20 in its quant_conv, so that they are of order 1) amplifies float32 rounding about 4x (first clip's
# latents 2.9e-5 -> second clip's motion latents 1.2e-4 -> its latents after 3 steps 2.6e-4, measured).
TOL_CLIP2 = dict(atol=5e-4, rtol=1e-4)
BORROWED = ("net.pth", "stable-diffusion-v1-5/unet/config.json", "wav2vec/wav2vec2-base-960h/config.json",
            "wav2vec/wav2vec2-base-960h/model.safetensors", "wav2vec/wav2vec2-base-960h/preprocessor_config.json")


@pytest.fixture(scope="module")
def h2(fixtures):
    return fixtures / "hallo2-tiny"


@pytest.fixture(scope="module")
def meta(h2):
    return json.loads((h2 / "fixture_meta.json").read_text())


def _source(h2: Path, meta: dict, rel: str, key: str = "weights_from") -> Path:
    """A file of the set, else of the set it borrows from (fixture_meta.json `weights_from` / `inputs_from`)."""
    own = h2 / rel
    if own.exists() or not meta.get(key):
        return own
    return h2.parent / meta[key] / rel


def hallo2_folder(h2: Path, meta: dict, dst: Path) -> Path:
    """Hallo2's pretrained_models/ layout in dst (links to the set's files): hallo2/net.pth, the UNet config, the
    wav2vec2 folder, the set's sd-vae-ft-mse/."""
    for rel in BORROWED:
        target = dst / ("hallo2/net.pth" if rel == "net.pth" else rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(_source(h2, meta, rel), target)
    os.symlink(h2 / "sd-vae-ft-mse", dst / "sd-vae-ft-mse")
    return dst


@pytest.fixture(scope="module")
def folder(h2, meta, tmp_path_factory):
    return hallo2_folder(h2, meta, tmp_path_factory.mktemp("hallo2") / "pretrained_models")


@pytest.fixture(scope="module")
def model(folder, meta):
    model = load_model(folder)
    assert model.config.resolution == 512  # Hallo2's default; the set's run used its own size (a run setting of
    model.config.resolution = meta["pixel_hw"]  # long.yaml: data.source_image width / height)
    return model


@pytest.fixture(scope="module")
def pipe(model):
    return EMOPipeline(model)


@pytest.fixture(scope="module")
def inputs(h2, meta):
    """The run's synthetic inputs (the identity embedding, face region and region masks of the set named by
    `inputs_from`) and the reference pixels (reference.png as the script's image processor makes them)."""
    d = load_file(_source(h2, meta, "unet_forward.safetensors", "inputs_from"))
    img = np.asarray(Image.open(h2 / "reference.png").convert("RGB"), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(img).permute(2, 0, 1)[None] * 2 - 1  # ToTensor + Normalize([.5], [.5])
    return d, pixels


def _reference(inputs, latent) -> EncodedReference:
    d, pixels = inputs
    masks = [[d[f"{r}_mask.{i}"] for i in range(4)] for r in ("full", "face", "lip")]
    return EncodedReference(latent=latent, locator_mask=d["face_region"][None, :, None], masks=masks,
                            identity_embedding=d["face_emb"], pixels=pixels)


def _short_track(h2, meta, s) -> torch.Tensor:
    """The short track as the script read it: the first samples of `inputs_from`'s waveform written as 16-bit WAV
    (round(x * 32768)) and read back (/ 32768)."""
    wave = load_file(_source(h2, meta, "audio.safetensors", "inputs_from"))["waveform"][: int(s["waveform_samples"])]
    return ((wave.double() * 32768).round().clamp(-32768, 32767) / 32768).float()


def long_track(n: int, seed: int) -> torch.Tensor:
    """The set's long tracks (fixture README, "audio_long"): sines with slow envelopes plus seeded noise, float64,
    written as 16-bit WAV and read back as the script read them."""
    t = torch.arange(n, dtype=torch.float64) / 16000
    g = torch.Generator().manual_seed(seed)
    tau = 2 * math.pi
    x = (0.10 * torch.sin(tau * 180 * t) * (0.6 + 0.4 * torch.sin(tau * 0.7 * t))
         + 0.06 * torch.sin(tau * 410 * t + 1.0) * (0.5 + 0.5 * torch.sin(tau * 0.23 * t))
         + 0.03 * torch.sin(tau * 1230 * t) * (t % 1.3 < 0.9).double()
         + 0.01 * torch.randn(n, generator=g, dtype=torch.float64))
    return ((x * 32768).round().clamp(-32768, 32767) / 32768).float()


def _close(a, b, tol=TOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, **tol)


def test_recognised_in_hallo2_layout(folder, model, meta, fixtures):
    """pretrained_models/ (the folder), pretrained_models/hallo2/ and hallo2/net.pth itself are Hallo2; the same
    net.pth elsewhere is Hallo. Hallo2's settings come with it: the drop rate of long.yaml, 60 s audio pieces."""
    assert detect_format(folder) == "hallo2"
    assert detect_format(folder / "hallo2") == "hallo2"
    assert detect_format(folder / "hallo2" / "net.pth") == "hallo2"
    assert model.kind == "hallo2"
    cfg = model.config
    assert cfg.motion_drop == meta["mask_rate"] == 0.25
    assert cfg.audio_encoder["piece_seconds"] == 60
    assert (cfg.frames_per_clip, cfg.motion_frames, cfg.steps, cfg.audio_cfg, cfg.fps) == (16, 2, 40, 3.5, 25.0)
    assert model.sources["vae"].resolve() == (folder / "sd-vae-ft-mse").resolve()
    hallo = fixtures / meta["weights_from"] / "net.pth"
    if hallo.is_file():
        assert detect_format(hallo) == "hallo"
        assert load_model(hallo, vae_path=False).config.motion_drop == 0.0


def test_reference_latent(pipe, h2, inputs):
    """The set's VAE through our loader and codec: the reference pixels' latent (the mean x 0.18215)."""
    s = load_file(h2 / "sampling.safetensors")
    _close(pipe.vae.encode(inputs[1]), s["clip0.ref_image_latents"][:1])


def test_forward_first_clip_with_masked_motion_frames(pipe, model, h2, meta, inputs):
    """One denoising call of the first clip (timestep 999, both CFG halves): ReferenceNet on the reference and the
    two MASKED motion frames (the latents the original encoded), built by the pipeline's own condition code."""
    s = load_file(h2 / "sampling.safetensors")
    lat = s["clip0.ref_image_latents"]
    n = meta["n_motion_frames"]
    ref = _reference(inputs, lat[:1])
    passes = guidance_passes(meta["cfg_scale"], meta["cfg_scale"])
    with torch.no_grad():
        cache = pipe.conditions(ref, passes)
        motion = MotionFrames(model, cache, pipe.vae, n, lat[1:]).features()
        cond = cache.clip(s["clip0.audio_tokens"][0], n, motion, meta["motion_scale"])
        out = model.backbone(s["clip0.init_latents"].expand(2, -1, -1, -1, -1), meta["sampling_timesteps"][0], cond)
    _close(out[0:1], s["clip0.step0.model_out_uncond"])
    _close(out[1:2], s["clip0.step0.model_out_cond"])


def _run(pipe, h2, meta, inputs, drop=None, clips=None):
    """EMOPipeline.sample on the short track: per encode of our VAE codec the pixels it got and the latents it made
    (recorded by wrapping VAECodec.encode, nothing replaced), the latents after every step, the decoded frames."""
    s = load_file(h2 / "sampling.safetensors")
    ref = _reference(inputs, pipe.vae.encode(inputs[1]).cpu())
    f = meta["clip_length"]
    audio = pipe.encode_audio(_short_track(h2, meta, s), 16000, 25, frames_per_clip=f)
    encoded, steps = [], []
    codec_encode = VAECodec.encode

    def record(self, pixels):
        out = codec_encode(self, pixels)
        encoded.append((pixels.clone(), out.clone()))
        return out
    VAECodec.encode = record
    try:
        frames = []
        for clip in pipe.sample(audio, ref, steps=meta["sampling_steps"], seed=meta["generator_seed"],
                                audio_cfg=meta["cfg_scale"], ref_cfg=meta["cfg_scale"], frames_per_clip=f,
                                motion_frames=meta["n_motion_frames"], region_weights=meta["motion_scale"],
                                motion_drop=drop, callback=lambda p: steps.append(p.latents.clone())):
            frames.append(clip)
            if clips is not None and len(frames) == clips:
                break
    finally:
        VAECodec.encode = codec_encode
    return s, audio, encoded, steps, torch.cat(frames)


def _keep(s, inputs, k) -> torch.Tensor:
    """Clip k's mask as the original drew it: (rand > 0.25) from the set, OR the face region; (c H W) bool."""
    face = inputs[0]["face_region"]
    bits = np.unpackbits(s[f"clip{k}.mask_rand_packed"].numpy())[: face[0].numel()]
    return torch.from_numpy(bits.reshape(face.shape[1:]).astype(bool)) | (face > 0)


@pytest.fixture(scope="module")
def run(pipe, h2, meta, inputs):
    return _run(pipe, h2, meta, inputs)


def test_audio_of_the_short_track(pipe, run, meta):
    s, audio, _, _, _ = run
    assert audio.num_frames == int(s["audio_length"])
    _close(audio.features, s["audio_emb"])
    f = meta["clip_length"]
    for k in range(meta["clips"]):
        _close(pipe.audio_tokens(audio, k * f, (k + 1) * f)[None], s[f"clip{k}.audio_tokens"])


def test_one_clip(run, meta, inputs):
    """The first clip: its motion frames are the reference pixels with the drop mask (the first draw of the seeded
    generator: the pixels our codec got are exactly the original's), encoded; its initial noise is the second draw;
    then the DDIM loop."""
    s, _, encoded, steps, _ = run
    pixels, latents = encoded[0]
    n = meta["n_motion_frames"]
    assert torch.equal(pixels.cpu(), (inputs[1] * _keep(s, inputs, 0)).expand(n, -1, -1, -1))
    _close(latents, s["clip0.ref_image_latents"][1:])
    for i in range(meta["sampling_steps"]):
        _close(steps[i], s[f"clip0.step{i}.latents_after"])


def test_two_clips_with_the_mask(run, meta, inputs):
    """The second clip: the first clip's last two decoded frames with a NEW mask (drawn after the first clip's noise,
    before the second's: the dropped pixels are exactly the original's), encoded; then its DDIM loop; the decoded
    video's frame means. A set with more clips: every later clip's mask is checked the same way (its latents, after
    a chain of VAE round trips, by `test_every_clip_from_the_originals_previous_clip`)."""
    s, _, encoded, steps, frames = run
    n_steps, clips = meta["sampling_steps"], meta["clips"]
    assert clips >= 2 and len(steps) == clips * n_steps and len(encoded) == clips
    for k in range(1, clips):
        pixels = encoded[k][0].cpu()
        keep = _keep(s, inputs, k).expand_as(pixels)
        assert torch.equal(pixels == 0, ~keep)  # decoded pixels are never exactly 0 where they are kept
    _close(encoded[1][1], s["clip1.ref_image_latents"][1:], TOL_CLIP2)
    for i in range(n_steps):
        _close(steps[n_steps + i], s[f"clip1.step{i}.latents_after"], TOL_CLIP2)
    assert frames.shape[0] == meta["video_frames"]
    if clips == 2:
        torch.testing.assert_close(frames.mean(dim=(1, 2)), s["video_frame_means"], atol=1e-4, rtol=0)


def test_every_clip_from_the_originals_previous_clip(pipe, model, h2, meta, inputs):
    """Each clip on its own, from the original's numbers (no error carried from clip to clip): the motion latents
    from the previous clip's final latents (decoded by our codec, the last two frames, the set's mask, encoded), then
    the clip's DDIM loop from its initial noise with the original's motion latents."""
    s = load_file(h2 / "sampling.safetensors")
    n, n_steps = meta["n_motion_frames"], meta["sampling_steps"]
    passes = guidance_passes(meta["cfg_scale"], meta["cfg_scale"])
    ref = _reference(inputs, s["clip0.ref_image_latents"][:1])
    with torch.no_grad():
        for k in range(meta["clips"]):
            lat = s[f"clip{k}.ref_image_latents"]
            if k:
                prev = s[f"clip{k - 1}.step{n_steps - 1}.latents_after"]
                _, tail = pipe.vae.decode(prev[0].transpose(0, 1), keep_last=n)
                _close(pipe.vae.encode(tail * _keep(s, inputs, k)), lat[1:])
            cache = pipe.conditions(ref, passes)
            motion = MotionFrames(model, cache, pipe.vae, n, lat[1:]).features()
            cond = cache.clip(s[f"clip{k}.audio_tokens"][0], n, motion, meta["motion_scale"])
            ddim = GuidedDDIM(model, passes, n_steps)
            seen = []
            ddim.denoise(s[f"clip{k}.init_latents"], cond, lambda i, x: seen.append(x.clone()))
            for i in range(n_steps):
                _close(seen[i], s[f"clip{k}.step{i}.latents_after"])


def test_without_the_drop_the_first_clip_differs(pipe, h2, meta, inputs):
    """The mask matters in this set (so the tests above can fail): with motion_drop 0 (Hallo's sampling) the first
    clip's motion latents are the reference latent and its result is far from Hallo2's."""
    s, _, encoded, steps, _ = _run(pipe, h2, meta, inputs, drop=0.0, clips=1)
    # the first clip's motion latents were the reference latent itself (nothing masked and encoded at its start);
    # the one encode is the first clip's tail, for the next clip
    assert len(encoded) == 1 and encoded[0][0].shape[0] == meta["n_motion_frames"]
    last = steps[meta["sampling_steps"] - 1]
    assert (last - s[f"clip0.step{meta['sampling_steps'] - 1}.latents_after"]).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["track61", "track60_16"])
def test_long_track_in_60_s_pieces(pipe, h2, meta, name):
    """Tracks longer than one 60 s piece: each piece normalised and encoded on its own, only the last padded, with
    Hallo2's padding arithmetic (track60_16: the total 1504 is a multiple of 16 but the last piece's 4 frames are
    not, so 16 more frames). Rows at the start, around the piece border and at the end are compared."""
    a = load_file(h2 / "audio_long.safetensors")
    t = meta["long_tracks"][name]
    wave = long_track(t["samples"], t["seed"])
    audio = pipe.encode_audio(wave, 16000, 25, frames_per_clip=t["clip_length"])
    assert audio.num_frames == int(a[f"{name}.audio_length"]) == sum(t["pieces"])
    assert audio.features.shape[0] == int(a[f"{name}.audio_emb_frames"])
    rows = a[f"{name}.rows"]
    # a track over 60 s keeps its encoded audio in float16 (pipeline.encode_audio: half the memory of a long song):
    # float16 rounds to 2^-11 of a value (4.9e-4), on top of the 1e-4 of the float32 computation
    assert audio.features.dtype == torch.float16
    _close(audio.features[rows].float(), a[f"{name}.audio_emb_rows"], dict(atol=1e-4, rtol=1e-3))
    # the pieces matter: one pass over the whole track (Hallo's path) differs at the border
    whole = pipe.model.audio_encoder.encode(wave, 25, pad_multiple=t["clip_length"], chunk_seconds=1e6)
    near = (rows >= 1495) & (rows < min(1505, whole.shape[0]))
    assert (whole[rows[near]] - a[f"{name}.audio_emb_rows"][near]).abs().max() > 1e-3


def test_where_a_net_pth_sits_says_which_model_it_is(h2, meta, tmp_path, caplog):
    """Hallo2's net.pth has Hallo's tensors: a folder holding hallo2/ and hallo/ loads Hallo2 (said in the log; the
    file itself picks Hallo), a file named for hallo2 is Hallo2, a plain net.pth elsewhere is Hallo."""
    import logging
    pm = hallo2_folder(h2, meta, tmp_path / "pm")
    (pm / "hallo").mkdir()
    os.symlink(_source(h2, meta, "net.pth"), pm / "hallo" / "net.pth")
    with caplog.at_level(logging.INFO, logger="emo_model.formats.load"):
        assert detect_format(pm) == "hallo2"
    assert "pick hallo/net.pth itself" in caplog.text
    assert detect_format(pm / "hallo" / "net.pth") == "hallo"
    os.symlink(_source(h2, meta, "net.pth"), tmp_path / "hallo2_net.pth")
    os.symlink(_source(h2, meta, "net.pth"), tmp_path / "net.pth")
    assert detect_format(tmp_path / "hallo2_net.pth") == "hallo2"
    assert detect_format(tmp_path / "net.pth") == "hallo"


def test_motion_drop_out_of_range_is_refused(pipe, h2, meta, inputs):
    from emo_model import EMOInputError
    s = load_file(h2 / "sampling.safetensors")
    audio = pipe.encode_audio(_short_track(h2, meta, s), 16000, 25)
    with pytest.raises(EMOInputError, match="motion_drop"):
        pipe.sample(audio, _reference(inputs, s["clip0.ref_image_latents"][:1]), motion_drop=1.0)


def test_audio_pieces_of_a_track_within_one_piece_are_one_pass(model):
    """Up to one piece (60 s) Hallo2's audio is Hallo's single pass, exactly; a last piece too short for wav2vec2
    is encoded with the piece before it."""
    enc = model.audio_encoder
    wave = long_track(20000, 3)
    torch.testing.assert_close(enc.encode_pieces(wave, 25, 16), enc.encode(wave, 25, pad_multiple=16), atol=0, rtol=0)
    joined = enc.encode_pieces(long_track(16100, 3), 25, 1, piece_seconds=1.0)  # a 100-sample last piece
    assert joined.shape[0] == 26 and torch.isfinite(joined).all()
