"""wav2vec2 audio encoder + audio projection: parity with Hallo's audio path (hallo-tiny fixture), chunking, layout.
The parity tests read the set's values (fps, padding clip length, frame counts, wav2vec and projection sizes) from its
fixture_meta.json, tiny_inference_config.json and wav2vec config.json, so any set made the same way can be checked."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from emo_model.audio.wav2vec2 import Wav2VecAudioEncoder, make_tiny_wav2vec
from emo_model.models.audio_projection import AudioProjection
from emo_model.errors import EMOCheckpointError, EMOInputError

TOL = dict(atol=1e-4, rtol=1e-4)  # the fixture README's suggestion for an independent float32 implementation


@pytest.fixture(scope="module")
def hallo(fixtures):
    root = fixtures / "hallo-tiny"
    net = torch.load(root / "net.pth", map_location="cpu", weights_only=True)
    icfg = json.loads((root / "tiny_inference_config.json").read_text())
    return dict(
        root=root,
        meta=json.loads((root / "fixture_meta.json").read_text()),
        fps=icfg["data"]["export_video"]["fps"],
        clip=icfg["data"]["n_sample_frames"],  # Hallo pads the audio to whole clips of this many frames
        proj_cfg=icfg["audio_proj"],
        w2v=json.loads((root / "wav2vec" / "wav2vec2-base-960h" / "config.json").read_text()),
        data=load_file(str(root / "audio.safetensors")),
        encoder=Wav2VecAudioEncoder.from_folder(root / "wav2vec" / "wav2vec2-base-960h"),
        # float32 like load_model (Hallo's release, and the repo's set, store fp16)
        audioproj={k[len("audioproj."):]: v.float() for k, v in net.items() if k.startswith("audioproj.")},
        net=net,
    )


def hallo_projection(hallo, state=None, **change):
    """The audio projection as the Hallo loader builds it: sizes from `hallo_config`, weights through `load_strict`."""
    from emo_model.formats.common import load_strict
    from emo_model.formats.hallo import hallo_config
    config, _ = hallo_config(hallo["net"], {}, (hallo["encoder"].num_layers, hallo["encoder"].hidden_size))
    proj = AudioProjection(**{**config.audio_projection, **change})
    load_strict(proj, hallo["audioproj"] if state is None else state, "net.pth (audioproj.*)")
    return proj


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Wav2VecAudioEncoder.from_folder(make_tiny_wav2vec(tmp_path_factory.mktemp("w2v"), seed=0))


def speech(seconds, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 1.3 * t)
    return 0.3 * env * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(t.shape, generator=g)


# ---------------------------------------------------------------- parity with Hallo

def test_positional_conv_weight_norm_loaded_exactly(hallo):
    raw = load_file(str(hallo["root"] / "wav2vec" / "wav2vec2-base-960h" / "model.safetensors"))
    g = raw["wav2vec2.encoder.pos_conv_embed.conv.weight_g"]
    v = raw["wav2vec2.encoder.pos_conv_embed.conv.weight_v"]
    expected = g * v / v.norm(dim=(0, 1), keepdim=True)
    conv = hallo["encoder"].model.encoder.pos_conv_embed.conv
    torch.testing.assert_close(conv.weight, expected, atol=1e-7, rtol=1e-6)
    # and an ordinary tensor for comparison: the CNN's first conv
    torch.testing.assert_close(hallo["encoder"].model.feature_extractor.conv_layers[0].conv.weight,
                               raw["wav2vec2.feature_extractor.conv_layers.0.conv.weight"], atol=0, rtol=0)


def test_hallo_audio_steps(hallo):
    enc, d, meta, fps, clip = hallo["encoder"], hallo["data"], hallo["meta"], hallo["fps"], hallo["clip"]
    assert meta["clip_length_for_audio_padding"] == clip
    assert enc.frame_count(d["waveform"].numel(), fps) == d["audio_length"].item() == meta["audio_length"]
    frames, n = enc.frame_count(d["waveform"].numel(), fps, clip), d["waveform"].numel()
    assert frames == meta["audio_seq_len_padded"]
    torch.testing.assert_close(torch.from_numpy(enc.normalize(d["waveform"].numpy())), d["input_values"][:n], **TOL)

    cnn = enc.cnn_features(d["input_values"][None])
    torch.testing.assert_close(cnn[0], d["cnn_features"], **TOL)
    interp = enc.interpolate(cnn, frames)
    torch.testing.assert_close(interp[0], d["cnn_features_interp"], **TOL)
    with torch.no_grad():
        hidden = enc.transformer(d["cnn_features_interp"][None])
    torch.testing.assert_close(hidden[0], d["hidden_states_all"], **TOL)


def test_hallo_encode_window_project(hallo):
    enc, d, meta, fps, clip, pc = hallo["encoder"], hallo["data"], hallo["meta"], hallo["fps"], hallo["clip"], hallo["proj_cfg"]
    L, layers, width = meta["audio_seq_len_padded"], hallo["w2v"]["num_hidden_layers"], hallo["w2v"]["hidden_size"]
    feats = enc.encode(d["waveform"], fps=fps, pad_multiple=clip)
    assert feats.shape == (L, layers, width)
    torch.testing.assert_close(feats, d["hidden_states_all"], **TOL)

    windows = enc.window(feats, m=2)
    torch.testing.assert_close(windows, d["audio_windows"], **TOL)

    proj = hallo_projection(hallo)
    assert (proj.seq_len, proj.blocks, proj.channels, proj.context_tokens, proj.output_dim) == (
        pc["seq_len"], pc["blocks"], pc["channels"], pc["context_tokens"], pc["output_dim"])
    with torch.no_grad():
        tokens = torch.cat([proj(d["audio_windows"][i:i + clip][None])[0] for i in range(0, L, clip)])  # per clip
        torch.testing.assert_close(tokens, d["audio_tokens"], **TOL)
        torch.testing.assert_close(proj(windows), d["audio_tokens"], **TOL)


def test_bin_weights_and_folder_errors(hallo, tmp_path):
    src = hallo["root"] / "wav2vec" / "wav2vec2-base-960h"
    with pytest.raises(EMOCheckpointError, match="config.json"):
        Wav2VecAudioEncoder.from_folder(tmp_path)
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(EMOCheckpointError, match="model.safetensors or pytorch_model.bin"):
        Wav2VecAudioEncoder.from_folder(tmp_path)
    raw = load_file(str(src / "model.safetensors"))
    torch.save(raw, tmp_path / "pytorch_model.bin")
    enc = Wav2VecAudioEncoder.from_folder(tmp_path)
    for k, v in hallo["encoder"].model.state_dict().items():
        assert torch.equal(v, enc.model.state_dict()[k]), k
    raw.pop("wav2vec2.encoder.layers.1.final_layer_norm.weight")
    torch.save(raw, tmp_path / "pytorch_model.bin")
    with pytest.raises(EMOCheckpointError, match="missing 1"):
        Wav2VecAudioEncoder.from_folder(tmp_path)


# ---------------------------------------------------------------- chunking

def test_single_chunk_is_hallo_bit_for_bit(hallo):
    enc, d, fps, clip = hallo["encoder"], hallo["data"], hallo["fps"], hallo["clip"]
    L = hallo["meta"]["audio_seq_len_padded"]
    reference = enc(d["input_values"][None], L)[0]  # Hallo's procedure on the fixture's exact model input
    # one chunk exactly as long as the track takes the same path
    assert torch.equal(enc.encode(d["waveform"], fps, clip, chunk_seconds=L / fps), enc.encode(d["waveform"], fps, clip))
    torch.testing.assert_close(enc.encode(d["waveform"], fps, clip), reference, **TOL)


def test_chunked_locality(tiny):
    wave = speech(4.0)  # 100 frames at 25 fps; chunks of 16 frames + 8 frames of context each side
    kw = dict(fps=25, pad_multiple=16, chunk_seconds=0.64, context_seconds=0.32)
    base = tiny.encode(wave, **kw)
    assert base.shape == (112, 2, 32)

    far = wave.clone()
    far[int(1.5 * 16000):] *= -0.5  # more than chunk + context (0.96 s) after the end of chunk 0 (0.64 s)
    changed = tiny.encode(far, **kw)
    assert torch.equal(changed[:16], base[:16])  # chunk 0: frames 0..15
    assert not torch.allclose(changed[40:], base[40:])
    # without chunking the same far change reaches frame 0 (global attention + whole-track normalisation)
    one = dict(kw, chunk_seconds=60.0)
    assert not torch.allclose(tiny.encode(far, **one)[:16], tiny.encode(wave, **one)[:16], atol=1e-6)

    near = wave.clone()
    near[int(0.38 * 16000):int(0.42 * 16000)] += 0.3  # around frame 10 (0.40 s)
    moved = (tiny.encode(near, **kw) - base).abs().amax(dim=(1, 2))
    assert moved[10] > 1e-3
    assert moved[16:32].amax() > 0  # chunk 1's window (frames 8..39) holds the change too
    assert torch.equal(moved[32:], torch.zeros(80))  # later chunks' windows start at frame 24 (0.96 s) or later


# ---------------------------------------------------------------- layout and shapes

@pytest.mark.parametrize("fps, true_frames, padded", [(25, 33, 48), (29.97, 39, 48)])
def test_layout(tiny, fps, true_frames, padded):  # padding's sample count: test_hallo_audio_steps / single_chunk
    wave = speech(1.3)
    assert tiny.frame_count(wave.numel(), fps) == true_frames == math.ceil(1.3 * fps)
    assert tiny.frame_count(wave.numel(), fps, 16) == padded
    feats = tiny.encode(wave, fps, pad_multiple=16)
    assert feats.shape == (padded, tiny.num_layers, tiny.hidden_size) == (padded, 2, 32)
    assert tiny.encode(wave, fps).shape[0] == true_frames
    # multi-chunk path: same frame count and padding as the single pass
    assert tiny.encode(wave, fps, 16, chunk_seconds=0.5, context_seconds=0.2).shape == feats.shape

    win = tiny.window(feats, m=2)
    assert win.shape == (padded, 5, 2, 32)
    assert torch.equal(win[:, 2], feats)
    assert torch.equal(win[0, 0], feats[0]) and torch.equal(win[0, 1], feats[0]) and torch.equal(win[0, 3], feats[1])
    assert torch.equal(win[10], feats[8:13])
    assert torch.equal(win[-1, 3], feats[-1]) and torch.equal(win[-1, 4], feats[-1])
    assert torch.equal(win[-1, 0], feats[-3])
    assert torch.equal(tiny.window(feats, m=2, start=16, end=32), win[16:32])
    assert tiny.window(feats, m=1).shape == (padded, 3, 2, 32)

    proj = AudioProjection(seq_len=5, blocks=2, channels=32, intermediate_dim=16, output_dim=24, context_tokens=4)
    with torch.no_grad():
        tokens = proj(win)
        assert tokens.shape == (padded, 4, 24)
        torch.testing.assert_close(proj(win[None])[0], tokens, atol=1e-6, rtol=1e-6)
        assert proj(torch.stack([win, win.flip(0)])).shape == (2, padded, 4, 24)


def test_tiny_folder_roundtrip(tmp_path, tiny):
    a, b = make_tiny_wav2vec(tmp_path / "a", seed=0), make_tiny_wav2vec(tmp_path / "b", seed=0)
    assert {p.name for p in a.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and "encoder.pos_conv_embed.conv.weight_g" in sa
    g, v = sa["encoder.pos_conv_embed.conv.weight_g"], sa["encoder.pos_conv_embed.conv.weight_v"]
    torch.testing.assert_close(tiny.model.encoder.pos_conv_embed.conv.weight,
                               g * v / v.norm(dim=(0, 1), keepdim=True), atol=1e-7, rtol=1e-6)
    other = load_file(str(make_tiny_wav2vec(tmp_path / "c", seed=1) / "model.safetensors"))
    assert not torch.equal(other["feature_projection.projection.weight"], sa["feature_projection.projection.weight"])


def test_shape_errors(tiny, hallo):
    with pytest.raises(EMOInputError, match="mono"):
        tiny.encode(speech(1.0)[None].repeat(2, 1), 25)
    with pytest.raises(EMOInputError, match="too short"):
        tiny.encode(torch.zeros(100), 25)
    with pytest.raises(EMOInputError, match="fps"):
        tiny.encode(speech(1.0), 0)
    with pytest.raises(EMOInputError, match="NaN"):
        tiny.encode(torch.full((16000,), float("nan")), 25)
    with pytest.raises(EMOInputError, match="chunk_seconds"):
        tiny.encode(speech(1.0), 60, chunk_seconds=0.01, context_seconds=0)  # 1-frame windows
    with pytest.raises(EMOInputError, match="frames, layers, dim"):
        tiny.window(torch.zeros(10, 32))

    pc = hallo["proj_cfg"]
    n, layers, width = pc["seq_len"], pc["blocks"], pc["channels"]
    proj = hallo_projection(hallo)
    assert (proj.blocks, proj.channels) == (layers, width) and layers > 1
    assert proj(torch.zeros(3, n, layers, width)).shape == (3, pc["context_tokens"], pc["output_dim"])
    with pytest.raises(EMOInputError, match="do not fit"):
        proj(torch.zeros(3, n, 1, layers * width))  # same size, other (layer, channel) split
    with pytest.raises(EMOInputError, match="do not fit"):
        proj(torch.zeros(3, n, layers, width - 1))
    with pytest.raises(EMOInputError, match="frames, window, layers, dim"):
        proj(torch.zeros(n, layers, width))
    with pytest.raises(EMOCheckpointError, match=r"net.pth \(audioproj.\*\) does not fit this model: missing 1"):
        hallo_projection(hallo, {k: v for k, v in hallo["audioproj"].items() if k != "proj3.bias"})
    with pytest.raises(EMOCheckpointError, match=r"net.pth \(audioproj.\*\) does not fit this model: 1 tensors have "
                                                 r"other shapes \(size mismatch for proj1.weight"):
        hallo_projection(hallo, channels=width + 1)  # a wav2vec2 of another width: torch's RuntimeError, named


def test_ntsc_fps_is_30000_over_1001():
    """29.97 means 30000/1001 here as everywhere (it was read as 2997/100): 1601601 samples (100.1000625 s) are
    3000.0019 frames at 30000/1001, so 3001, but 2999.9989 at 29.97 exactly."""
    from emo_model.media.audio import count_frames
    assert Wav2VecAudioEncoder.frame_count(1601601, 29.97) == 3001 == count_frames(1601601, 16000, 29.97)
    assert Wav2VecAudioEncoder.frame_count(1601601, 29.97, 16) == 3008
    with pytest.raises(EMOInputError, match="fps"):
        Wav2VecAudioEncoder.frame_count(16000, True)
