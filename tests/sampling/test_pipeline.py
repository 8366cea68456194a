"""emo_model on the tiny random configuration: layouts, determinism, motion frames, guidance passes, native round
trip, CLI output, and the errors for bad input."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from emo_model import EMOCheckpointError, EMOInputError, EMOPipeline, load_model, save_native
from emo_model.models.face_locator import FaceLocator
from emo_model.models.speed_layers import SpeedEncoder
from emo_model.models.temporal_module import TemporalModule
from emo_model.models.audio_attention import AudioAttention
from emo_model.sampling.guidance import guidance_passes
from emo_model.sampling.motion_frames import MotionFrames
from emo_model.sampling.settings import check_inputs


def _voice(seconds, sr=16000, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    return (0.3 * torch.sin(2 * math.pi * 180 * t) * (1 + torch.sin(2 * math.pi * 3 * t)) +
            0.02 * torch.randn(t.shape, generator=g))[None]


def _ref(pipe):
    g = torch.Generator().manual_seed(1)
    img = torch.rand(64, 64, 3, generator=g)
    mask = torch.zeros(64, 64)
    mask[12:52, 16:48] = 1
    return pipe.encode_reference(img, mask)


def _render(pipe, audio, ref, **kw):
    return torch.cat(list(pipe.sample(audio, ref, **{"steps": 1, "seed": 0, **kw})))


# ---------------------------------------------------------------- components: what each one mixes, and what not
def test_face_locator_works_frame_by_frame():
    """[b c f H W] -> [b C f H/8 W/8], and frame j's features depend on frame j's mask only."""
    fl = FaceLocator(32, 1, [8, 16, 16, 32])
    x = torch.rand(2, 1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = fl(x)
    assert out.shape == (2, 32, 3, 8, 8)
    torch.testing.assert_close(fl(x[:, :, 1:2])[:, :, 0], out[:, :, 1], atol=1e-6, rtol=0)
    x2 = x.clone()
    x2[:, :, 2] = 1 - x2[:, :, 2]
    out2 = fl(x2)
    assert torch.equal(out2[:, :, :2], out[:, :, :2]) and not torch.allclose(out2[:, :, 2], out[:, :, 2])


def test_audio_attention_rows_see_their_own_tokens():
    """[(b f), C, h, w] with audio [(b f), T, D]: row i's output depends on row i's tokens only."""
    torch.manual_seed(0)
    aa = AudioAttention(32, 32, 24, heads=8, norm_groups=8)
    x, audio = torch.randn(6, 32, 4, 4), torch.randn(6, 7, 24)
    out = aa(x, audio)
    assert out.shape == (6, 32, 4, 4)
    audio2 = audio.clone()
    audio2[3] += 1.0
    changed = (aa(x, audio2) - out).abs().amax(dim=(1, 2, 3))
    assert changed[3] > 1e-4 and torch.all(changed[torch.arange(6) != 3] == 0)


def test_speed_features_see_a_window_of_frames():
    """Frame i's speed features depend on the speeds of frames i-m .. i+m only (m = 2)."""
    torch.manual_seed(0)
    sp = SpeedEncoder([-1.0, 0.0, 1.0], [1.0, 1.0, 1.0], window=2, dim=16, hidden=8)
    speed = torch.full((2, 10), 0.5)
    out = sp(speed)
    assert out.shape == (2, 10, 16)  # b f l
    speed[:, 5] = 1.5
    changed = (sp(speed) - out).abs().amax(dim=(0, 2))
    assert torch.all(changed[3:8] > 0) and torch.all(changed[:3] == 0) and torch.all(changed[8:] == 0)


def test_temporal_module_attends_over_frames():
    """Every frame sees a change in another frame (bidirectional attention over f); batch rows stay apart; frame
    order matters (position table); the speed cross-attention starts as a no-op (zero-initialised output)."""
    torch.manual_seed(0)
    tm = TemporalModule(32, heads=8, max_len=32, speed_dim=16).eval()
    torch.nn.init.normal_(tm.temporal_transformer.proj_out.weight)
    x = torch.randn(2, 32, 4, 3, 3)
    out = tm(x)
    assert out.shape == x.shape
    x2 = x.clone()
    x2[0, :, 3] += 1.0  # change the last frame of the first batch row only
    changed = (tm(x2) - out).abs().amax(dim=(1, 3, 4))  # [b, f]
    assert (changed[0, :3] > 0).all() and (changed[1] == 0).all()
    reversed_in = tm(x.flip(2)).flip(2)
    assert not torch.allclose(reversed_in, out, atol=1e-4)
    speed = torch.randn(2, 4, 16)
    torch.testing.assert_close(tm(x, speed), out, atol=0, rtol=0)
    torch.nn.init.normal_(tm.temporal_transformer.transformer_blocks[0].speed_attn.to_out[0].weight)
    assert not torch.allclose(tm(x, speed), out, atol=1e-4)


def test_reference_features_per_layer(pipe):
    """ReferenceNet gives one feature map per self-attention layer of the backbone ([1, h w, C] at that layer's
    resolution), and they depend on the reference."""
    ref = _ref(pipe)
    assert ref.latent.shape == (1, 4, 8, 8) and ref.locator_mask.shape == (1, 1, 1, 64, 64)
    with torch.no_grad():
        bank = pipe.conditions(ref).reference_bank(2)
        other = pipe.conditions(pipe.encode_reference(1 - torch.rand(64, 64, 3), ref.locator_mask[0, 0, 0])).reference_bank(2)
    blocks = {name: m for name, m in pipe.model.backbone.unet.named_modules() if type(m).__name__ == "BasicTransformerBlock"}
    assert bank.keys() == blocks.keys()
    for path, feats in bank.items():
        width = blocks[path].attn1.to_q.in_features
        assert feats.shape[0] == 1 and feats.shape[2] == width and feats.shape[1] in (64, 16, 4, 1)
        assert not torch.allclose(feats, other[path])


# ---------------------------------------------------------------- audio
@pytest.mark.parametrize("seconds,fps", [(1.0, 25), (1.0, 29.97), (0.73, 30), (2.002, 29.97), (0.5, 23.976), (1.3, 24)])
def test_frame_count_exact(pipe, seconds, fps):
    wave = _voice(seconds)
    audio = pipe.encode_audio(wave, 16000, fps)
    q = {29.97: Fraction(30000, 1001), 23.976: Fraction(24000, 1001)}.get(fps, Fraction(fps))
    assert audio.num_frames == math.ceil(Fraction(wave.shape[-1], 16000) * q)
    assert audio.fps == q
    tokens = pipe.audio_tokens(audio)
    assert tokens.shape[0] >= audio.num_frames and tokens.ndim == 3  # [F, T, D]


def test_audio_tokens_are_local(pipe):
    """Frame i's tokens depend on audio near frame i, not on audio far away (wav2vec2 is encoded in chunks)."""
    wave = _voice(70.0)
    base = pipe.audio_tokens(pipe.encode_audio(wave, 16000, 25))
    far = wave.clone()
    far[:, 60 * 16000:] = 0.0  # change the audio from 60 s on
    near = wave.clone()
    near[:, 16000:24000] *= -1  # change the audio at 1.0-1.5 s
    t_far = pipe.audio_tokens(pipe.encode_audio(far, 16000, 25))
    t_near = pipe.audio_tokens(pipe.encode_audio(near, 16000, 25))
    assert torch.equal(t_far[:25 * 20], base[:25 * 20])  # the first 20 s are untouched by a change at 60 s
    assert not torch.allclose(t_far[25 * 61:], base[25 * 61:])
    assert not torch.allclose(t_near[25:38], base[25:38])


def test_clip_tokens_are_the_whole_track_tokens(pipe):
    """The wav2vec features are kept and projected clip by clip in `sample` (less memory than all tokens): any
    clip's tokens equal the same rows of the whole track's, across chunk borders (the +-m window sees neighbours of
    other clips) and past the end (the last frame's tokens repeat). Checked against a projection of all frames at
    once, made here from the kept features; float32 matmuls round differently for other batch sizes (~2e-6)."""
    audio = pipe.encode_audio(_voice(1.3), 16000, 25)  # 33 frames, padded to whole clips
    assert audio.features.shape[1:] == (2, 32) and audio.features.shape[0] >= audio.num_frames  # [F, L, C] kept
    enc, proj = pipe.model.audio_encoder, pipe.model.audio_projection
    with torch.no_grad():
        whole = proj(enc.window(audio.features, pipe.config.audio_encoder.get("window", 2)))
    n = whole.shape[0]
    for s, e in [(0, 4), (3, 9), (30, 36), (n - 1, n + 3), (n + 2, n + 5)]:
        expected = whole[torch.arange(s, e).clamp(max=n - 1)]
        torch.testing.assert_close(pipe.audio_tokens(audio, s, e), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(pipe.audio_tokens(audio), whole[torch.arange(audio.length).clamp(max=n - 1)], atol=1e-5,
                               rtol=0)


def test_audio_shorter_than_a_frame(pipe):
    with pytest.raises(EMOInputError, match="shorter than one frame"):
        pipe.encode_audio(torch.zeros(1, 300), 16000, 25)


# ---------------------------------------------------------------- sampling
def test_deterministic_for_a_seed_and_frame_count(pipe):
    audio = pipe.encode_audio(_voice(0.3), 16000, 25)  # 8 frames = 2 clips of 4
    ref = _ref(pipe)
    a = _render(pipe, audio, ref, seed=3)
    b = _render(pipe, audio, ref, seed=3)
    c = _render(pipe, audio, ref, seed=4)
    assert a.shape == (audio.num_frames, 64, 64, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_motion_frames_carry_into_the_next_clip(pipe):
    audio = pipe.encode_audio(_voice(0.3), 16000, 25)
    ref = _ref(pipe)
    with_motion = _render(pipe, audio, ref, motion_frames=2)
    without = _render(pipe, audio, ref, motion_frames=0)
    assert not torch.allclose(with_motion[4:], without[4:])  # the second clip differs
    # and the features of the motion frames change the backbone's output for the same noise
    cache = pipe.conditions(ref, guidance_passes(1.0, 1.0))
    tokens = pipe.audio_tokens(audio, 0, 4)
    x = torch.randn(1, 4, 4, 8, 8)
    outs = []
    with torch.no_grad():
        for m in (ref.latent.expand(2, -1, -1, -1), torch.randn(2, 4, 8, 8)):
            motion = MotionFrames(pipe.model, cache, pipe.vae, 2, m).features()
            outs.append(pipe.model.backbone(x, 500, cache.clip(tokens, 2, motion)))
    assert not torch.allclose(outs[0], outs[1])


@pytest.mark.parametrize("audio_cfg,ref_cfg,batch", [(1.0, 1.0, 1), (2.0, 1.0, 2), (2.5, 2.5, 2), (2.0, 1.5, 3)])
def test_guidance_passes(pipe, audio_cfg, ref_cfg, batch):
    audio = pipe.encode_audio(_voice(0.1), 16000, 25)
    seen = []
    h = pipe.model.backbone.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        _render(pipe, audio, _ref(pipe), audio_cfg=audio_cfg, ref_cfg=ref_cfg)
    finally:
        h.remove()
    assert seen == [batch]


def test_speed_changes_output(pipe):
    audio = pipe.encode_audio(_voice(0.1), 16000, 25)
    ref = _ref(pipe)
    assert not torch.allclose(_render(pipe, audio, ref, speed=0.1), _render(pipe, audio, ref, speed=1.3))


def test_speed_guidance_is_full_minus_still(tiny_dir):
    """speed_cfg s_v adds one pass, the full pass at speed 0, and the guided prediction is
    still + s_v (full - still) (audio and reference guidance off): checked against two unguided backbone calls, one
    at the run's speed and one at speed 0 (float64: batching reorders float sums, see test_fast_path). speed_cfg 1
    (off) or a requested speed of 0 add no pass."""
    from emo_model.sampling.guidance import FULL, STILL, GuidedDDIM
    pipe = EMOPipeline(load_model(tiny_dir, dtype=torch.float64))
    audio = pipe.encode_audio(_voice(0.2), 16000, 25)
    ref = _ref(pipe)
    settings = check_inputs(pipe.model, audio, ref, steps=2, audio_cfg=1.0, ref_cfg=1.0, speed=1.3, speed_cfg=3.0)
    assert [(p, w) for p, w in settings.passes] == [(STILL, -2.0), (FULL, 3.0)]
    f, n, s = pipe.config.frames_per_clip, pipe.config.motion_frames, pipe.config.latent_size
    tokens = pipe.audio_tokens(audio, 0, f)
    x = torch.randn(1, 4, f, s, s, generator=torch.Generator().manual_seed(0)).double()

    def prediction(passes, speed):
        cache = pipe.conditions(ref, list(passes), speed=speed)
        motion = MotionFrames(pipe.model, cache, pipe.vae, n).features()
        with torch.no_grad():
            return GuidedDDIM(pipe.model, list(passes), 2).prediction(x, 0, cache.clip(tokens, n, motion))
    guided = prediction(settings.passes, 1.3)
    fast, still = prediction([(FULL, 1.0)], 1.3), prediction([(FULL, 1.0)], 0.0)
    assert (fast - still).abs().max() > 1e-3 * fast.abs().max()  # the speed matters to this model
    assert (guided - (still + 3.0 * (fast - still))).abs().max() <= 1e-6 * fast.abs().max()
    for kw in (dict(speed=1.3, speed_cfg=1.0), dict(speed=0.0, speed_cfg=3.0), dict(speed=1.3)):
        assert len(check_inputs(pipe.model, audio, ref, audio_cfg=1.0, ref_cfg=1.0, **kw).passes) == 1, kw


def test_speed_guidance_default_from_the_checkpoint_and_bad_values(pipe, tiny_dir, caplog):
    audio = pipe.encode_audio(_voice(0.2), 16000, 25)
    ref = _ref(pipe)
    model = load_model(tiny_dir)
    model.config.speed_cfg = 2.5
    assert check_inputs(model, audio, ref, speed=1.0).speed_cfg == 2.5
    assert check_inputs(model, audio, ref, speed=1.0, speed_cfg=1.0).speed_cfg == 1.0
    with pytest.raises(EMOInputError, match="speed_cfg"):
        check_inputs(model, audio, ref, speed_cfg=-1.0)
    with pytest.raises(EMOInputError, match="degrees per frame"):
        check_inputs(model, audio, ref, speed=-0.5)
    model.speed_encoder = None  # a checkpoint without speed layers: ignored, said once
    import emo_model.sampling.settings as settings
    settings._IGNORED_SPEED_SAID.clear()
    with caplog.at_level("INFO"):
        assert check_inputs(model, audio, ref, speed_cfg=4.0).speed_cfg == 1.0
    assert "speed_cfg 4 is ignored" in caplog.text


def test_callback_progress_and_stop(pipe):
    audio = pipe.encode_audio(_voice(0.3), 16000, 25)
    seen = []

    class Stop(Exception):
        pass

    def cb(p):
        seen.append((p.step, p.total_steps, p.clip, p.num_clips, tuple(p.latents.shape)))
        if p.step == 3:
            raise Stop

    with pytest.raises(Stop):
        list(pipe.sample(audio, _ref(pipe), steps=2, callback=cb))
    assert seen == [(1, 4, 0, 2, (1, 4, 4, 8, 8)), (2, 4, 0, 2, (1, 4, 4, 8, 8)), (3, 4, 1, 2, (1, 4, 4, 8, 8))]


def test_silent_audio_renders(pipe):
    audio = pipe.encode_audio(torch.zeros(2, 4000), 8000, 25)
    frames = _render(pipe, audio, _ref(pipe))
    assert frames.shape[0] == 13 and torch.isfinite(frames).all()


def test_settings_are_checked_when_sample_is_called(pipe):
    """Bad settings raise at the call, before any model work (not at the first next())."""
    audio = pipe.encode_audio(_voice(0.1), 16000, 25)
    ref = _ref(pipe)
    calls = []
    hook = pipe.model.reference_net.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(EMOInputError, match="steps must be at least 1"):
            pipe.sample(audio, ref, steps=0)
        with pytest.raises(EMOInputError, match="exceeds the temporal modules' 32 positions"):
            pipe.sample(audio, ref, frames_per_clip=31, motion_frames=2)
        with pytest.raises(EMOInputError, match="region weights"):
            pipe.sample(audio, ref, region_weights=(1.0, 1.0))
    finally:
        hook.remove()
    assert calls == []


# ---------------------------------------------------------------- native format
def test_native_round_trip_identical(pipe, tmp_path):
    out = save_native(pipe.model, tmp_path / "copy")
    again = EMOPipeline(load_model(out))
    audio = pipe.encode_audio(_voice(0.1), 16000, 25)
    a = _render(pipe, audio, _ref(pipe), seed=7)
    b = _render(again, again.encode_audio(_voice(0.1), 16000, 25), _ref(again), seed=7)
    assert torch.equal(a, b)


def test_missing_component_is_named(tiny_dir, tmp_path):
    import shutil
    broken = shutil.copytree(tiny_dir, tmp_path / "broken")
    (broken / "backbone.safetensors").unlink()
    with pytest.raises(EMOCheckpointError, match="backbone.safetensors"):
        load_model(broken)


def test_checkpoint_without_speed_layers_runs(tiny_dir, tmp_path):
    import shutil
    plain = shutil.copytree(tiny_dir, tmp_path / "plain")
    (plain / "speed_layers.safetensors").unlink()
    model = load_model(plain)
    assert model.speed_encoder is None
    p = EMOPipeline(model)
    assert _render(p, p.encode_audio(_voice(0.1), 16000, 25), _ref(p)).shape[0] == 3


# ---------------------------------------------------------------- CLI and mp4
def test_cli_render_writes_mp4_with_matching_audio(tiny_dir, tmp_path):
    from emo_model.cli import main
    from emo_model.media.video import probe
    import av
    wav = tmp_path / "voice.wav"
    with av.open(str(wav), "w") as c:
        s = c.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray((_voice(0.5).numpy() * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    out = tmp_path / "new" / "folder" / "out.mp4"  # the folder named by --out is created
    args = ["render", "--image", "example", "--audio", str(wav), "--model", str(tiny_dir), "--out", str(out),
            "--steps", "1", "--fps", "29.97", "--framing", "crop"]
    assert main(args) == 0
    info = probe(out)
    expected = math.ceil(Fraction(8000, 16000) * Fraction(30000, 1001))
    assert info["frames"] == expected
    assert info["fps"] == Fraction(30000, 1001)
    assert info["audio_codec"] == "aac" and abs(info["audio_duration"] - expected * 1001 / 30000) <= 1001 / 30000
    assert (info["width"], info["height"]) == (64, 64)
    # a second render never replaces the first: it takes the next free name, unless --overwrite
    first = out.read_bytes()
    assert main(args[:-2] + ["--framing", "full"]) == 0
    assert out.read_bytes() == first and probe(out.with_name("out_2.mp4"))["width"] != 64
    assert main(args[:-2] + ["--framing", "full", "--overwrite"]) == 0
    assert out.read_bytes() != first and not out.with_name("out_3.mp4").exists()


def test_cli_reports_bad_input_without_traceback(tiny_dir, tmp_path, capsys):
    from emo_model.cli import main
    tiny_img = tmp_path / "small.png"
    from PIL import Image
    Image.new("RGB", (40, 40)).save(tiny_img)
    rc = main(["render", "--image", str(tiny_img), "--audio", "assets/speech.wav", "--model", str(tiny_dir),
               "--out", str(tmp_path / "x.mp4")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "64 px" in err and "Traceback" not in err
