"""What a sampling run keeps, and for how long: conditions are made per run from the model that samples (a reference
sampled by a second model gets that model's features, nothing outlives the run), two pipelines may share one model
across threads, both samplers honour every setting, and offloading idle modules changes nothing in the result."""
import copy
import dataclasses
import gc
import math
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from emo_model import EMOModel, EMOPipeline, load_model


def _voice(seconds, sr=16000, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    return (0.3 * torch.sin(2 * math.pi * 180 * t) * (1 + torch.sin(2 * math.pi * 3 * t)) +
            0.02 * torch.randn(t.shape, generator=g))[None]


def _ref(pipe, seed=1, **kw):
    img = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(64, 64)
    mask[12:52, 16:48] = 1
    return pipe.encode_reference(img, mask, **kw)


def _render(pipe, audio, ref, **kw):
    return torch.cat(list(pipe.sample(audio, ref, **{"steps": 2, "seed": 0, **kw})))


@pytest.fixture(scope="module")
def two_models(tiny_dir):
    """The tiny model and a second one of the same kind with other ReferenceNet and face-locator weights."""
    a = load_model(tiny_dir)
    b = load_model(tiny_dir)
    with torch.no_grad():
        for p in [*b.reference_net.parameters(), *b.face_locator.parameters()]:
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return a, b


def test_one_reference_two_models(two_models):
    """The same EncodedReference sampled by model A, then by model B, gives B's video: what B makes from a fresh
    copy of the reference (not A's ReferenceNet / face-locator features), and A's own video again afterwards."""
    a, b = (EMOPipeline(m) for m in two_models)
    audio = a.encode_audio(_voice(0.3), 16000, 25)
    ref = _ref(a)
    fresh = copy.deepcopy(ref)
    out_a = _render(a, audio, ref)
    out_b = _render(b, audio, ref)
    assert torch.equal(out_b, _render(b, audio, fresh))
    assert not torch.allclose(out_a, out_b, atol=1e-3)
    assert torch.equal(_render(a, audio, ref), out_a)
    # the reference holds only what encode_reference put there
    assert {f.name for f in dataclasses.fields(ref)} == set(vars(ref))


def test_nothing_outlives_a_run(tiny_dir):
    """The run's ReferenceNet and face-locator features are freed when the run ends (or is abandoned)."""
    pipe = EMOPipeline(load_model(tiny_dir))
    audio = pipe.encode_audio(_voice(0.3), 16000, 25)
    ref = _ref(pipe)
    made = []
    hooks = [pipe.model.reference_net.register_forward_hook(lambda m, a, out: made.append(weakref.ref(next(iter(out.values()))))),
             pipe.model.face_locator.register_forward_hook(lambda m, a, out: made.append(weakref.ref(out)))]
    try:
        list(pipe.sample(audio, ref, steps=1))
        run = pipe.sample(audio, ref, steps=1)
        next(run)  # an abandoned run: the caller stops after the first clip
        del run
    finally:
        for h in hooks:
            h.remove()
    gc.collect()
    assert len(made) > 4 and all(r() is None for r in made)


def test_two_pipelines_over_one_model_in_two_threads(tiny_dir):
    """Two pipelines over ONE model, sampling at the same time in two threads, give what they give one after the
    other: the backbone's conditions travel with each call, the model keeps no per-call state."""
    model = load_model(tiny_dir)
    p1, p2 = EMOPipeline(model), EMOPipeline(model)
    jobs = [(p1, p1.encode_audio(_voice(0.3, seed=1), 16000, 25), _ref(p1, seed=1), dict(seed=1, speed=0.2)),
            (p2, p2.encode_audio(_voice(0.3, seed=2), 16000, 25), _ref(p2, seed=2), dict(seed=2, audio_cfg=1.0))]
    alone = [_render(p, a, r, steps=3, **kw) for p, a, r, kw in jobs]
    with ThreadPoolExecutor(2) as pool:  # dozens of backbone calls each: they overlap
        together = list(pool.map(lambda job: _render(job[0], job[1], job[2], steps=3, **job[3]), jobs))
    for x, y in zip(alone, together):
        assert torch.equal(x, y)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)


@pytest.fixture(scope="module")
def windows_model(tiny_dir):
    """The tiny model (it has speed layers) sampled as EchoMimic samples: context windows."""
    plain = load_model(tiny_dir)
    plain.config = plain.backbone.config = dataclasses.replace(plain.config, temporal_mode="context_windows")
    return plain


def _regions_model(tiny, temporal_mode):
    """A random model like the tiny one, with Hallo's audio regions (full / face / lip cross-attentions)."""
    cfg = dataclasses.replace(tiny.config, temporal_mode=temporal_mode,
                              audio_attention=dict(audio_dim=32, regions=True, heads=8))
    model = EMOModel(cfg)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if "weight" in name else 0.0))
    model.vae, model.audio_encoder = tiny.vae, tiny.audio_encoder
    return model


def test_context_windows_honour_speed(windows_model):
    """The window sampler gives the speed layers the chosen head-motion speed (it used to drop it)."""
    pipe = EMOPipeline(windows_model)
    audio = pipe.encode_audio(_voice(0.4), 16000, 25)  # 10 frames: 4-frame windows overlapping by 2
    ref = _ref(pipe)
    slow, fast = _render(pipe, audio, ref, speed=0.1), _render(pipe, audio, ref, speed=1.3)
    assert slow.shape[0] == audio.num_frames
    assert not torch.allclose(slow, fast, atol=1e-4)


@pytest.mark.parametrize("temporal_mode", ["motion_frames", "context_windows"])
def test_region_weights_reach_the_audio_layers(tiny_dir, temporal_mode):
    """Hallo's (pose, face, lip) weights change the video in both samplers (the window sampler used to drop them);
    equal weights of 1 are the default."""
    pipe = EMOPipeline(_regions_model(load_model(tiny_dir), temporal_mode))
    audio = pipe.encode_audio(_voice(0.3), 16000, 25)
    ref = _ref(pipe, mouth=((28.0, 40.0), (36.0, 40.0)))
    assert ref.masks is not None
    base = _render(pipe, audio, ref)
    assert torch.equal(base, _render(pipe, audio, ref, region_weights=(1.0, 1.0, 1.0)))
    assert not torch.allclose(base, _render(pipe, audio, ref, region_weights=(1.0, 1.0, 4.0)), atol=1e-4)


@pytest.mark.parametrize("temporal_mode", ["motion_frames", "context_windows"])
def test_offload_idle_gives_the_same_video(tiny_dir, temporal_mode):
    """offload_idle=True (the CLI's default on CUDA) moves idle modules to host memory and back: the video is the
    same. On CUDA, the audio encoder sits in host memory outside encode_audio, and ReferenceNet after the
    reference's features when no motion frames need it."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(tiny_dir, device=device)
    if temporal_mode != model.config.temporal_mode:
        model.config = model.backbone.config = dataclasses.replace(model.config, temporal_mode=temporal_mode)
    kept, offloaded = EMOPipeline(model), EMOPipeline(model, offload_idle=True)
    audio = offloaded.encode_audio(_voice(0.3), 16000, 25)
    assert next(model.audio_encoder.parameters()).device.type == "cpu"
    torch.testing.assert_close(audio.features, kept.encode_audio(_voice(0.3), 16000, 25).features, atol=0, rtol=0)
    ref = _ref(kept)
    expected = _render(kept, audio, ref, motion_frames=0)
    got = _render(offloaded, audio, ref, motion_frames=0)
    assert next(model.reference_net.parameters()).device.type == "cpu"
    assert torch.equal(got, expected)
    with_motion = _render(offloaded, audio, ref, motion_frames=2) if temporal_mode == "motion_frames" else None
    if with_motion is not None:  # motion frames need ReferenceNet every clip: it stays on the device
        assert torch.equal(with_motion, _render(kept, audio, ref, motion_frames=2))
        assert next(model.reference_net.parameters()).device.type == device


def test_a_long_track_keeps_its_encoded_audio_in_half_precision(two_models, monkeypatch, caplog):
    """Past LONG_TRACK_SECONDS a float32 model keeps the encoded audio (it grows with the track) in float16: half the
    bytes, the tokens of every clip still made in float32 and within float16 rounding of the float32 ones, and the
    render the same video within the tiny model's tolerance. A short track is kept as it was made (bit for bit)."""
    from emo_model.sampling import pipeline as pl
    pipe = EMOPipeline(two_models[0])
    voice = _voice(0.6)
    short = pipe.encode_audio(voice, 16000, 25)
    assert short.features.dtype == torch.float32
    monkeypatch.setattr(pl, "LONG_TRACK_SECONDS", 0.5)  # 0.6 s counts as long here
    monkeypatch.setattr(pl, "_said_half", False)
    with caplog.at_level("INFO", logger=pl.__name__):
        long = pipe.encode_audio(voice, 16000, 25)
        pipe.encode_audio(voice, 16000, 25)
    assert long.features.dtype == torch.float16 and long.features.shape == short.features.shape
    assert long.features.nbytes * 2 == short.features.nbytes
    assert sum("float16" in r.getMessage() for r in caplog.records) == 1  # said once
    t_short, t_long = pipe.audio_tokens(short), pipe.audio_tokens(long)
    assert t_long.dtype == torch.float32
    scale = t_short.abs().max().item()
    assert (t_long - t_short).abs().max().item() <= 2e-3 * scale  # float16 keeps ~3 significant digits
    ref = _ref(pipe)
    a, b = _render(pipe, short, ref), _render(pipe, long, ref)
    # The random tiny model amplifies the float16 rounding of the tokens: on one 2-core machine a pixel moved by
    # 0.027 (others: < 0.02); almost all of the video is within 1e-3 of the float32 render.
    d = (a - b).abs()
    assert a.shape == b.shape and d.max().item() < 5e-2 and d.mean().item() < 1e-3, (d.max().item(), d.mean().item())
