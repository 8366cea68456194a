"""EchoMimic whisper features: parity with echomimic-tiny/audio.safetensors (original code, fp32), loader errors.
The parity tests read the set's fps, whisper dims and counts from its fixture_meta.json / tiny_inference_config.json."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from emo_model.errors import EMOCheckpointError, EMOInputError
from emo_model.audio.whisper import WhisperAudioEncoder, chunk_source_indices, make_tiny_whisper


class NotATensor:  # pickled by reference; weights_only=True must refuse it
    pass


@pytest.fixture(scope="module")
def ckpt_path(fixtures):
    return fixtures / "echomimic-tiny" / "audio_processor" / "whisper_tiny.pt"


@pytest.fixture(scope="module")
def audio(fixtures):
    return load_file(fixtures / "echomimic-tiny" / "audio.safetensors")


@pytest.fixture(scope="module")
def meta(fixtures):
    return json.loads((fixtures / "echomimic-tiny" / "fixture_meta.json").read_text())


@pytest.fixture(scope="module")
def dims(fixtures):
    return json.loads((fixtures / "echomimic-tiny" / "tiny_inference_config.json").read_text())["whisper_dims"]


@pytest.fixture(scope="module")
def model(ckpt_path):
    return WhisperAudioEncoder.from_openai_checkpoint(ckpt_path)


@pytest.fixture(scope="module")
def features(model, audio):
    return model.features(audio["waveform"])


def test_log_mel_parity(model, audio, dims):
    mel = model.log_mel(audio["waveform"])
    assert mel.shape == audio["log_mel"].shape == (dims["n_mels"], audio["waveform"].numel() // 160)  # hop 160
    torch.testing.assert_close(mel, audio["log_mel"], atol=1e-5, rtol=0)


def test_log_mel_floor_uses_whole_clip(model):
    """1 s loud tone then 30 s near-silence: the floor (max - 8 in log10, i.e. max - 2 after (x + 4) / 4) comes from
    the tone, so the second 30 s segment sits flat on it (a per-segment floor would leave it varying)."""
    t = torch.arange(16000 * 31) / 16000
    wav = torch.where(t < 1, 0.5 * torch.sin(2 * math.pi * 440 * t), 1e-6 * torch.sin(2 * math.pi * 1000 * t))
    mel = model.log_mel(wav)
    assert mel.shape == (80, 3100)
    torch.testing.assert_close(mel[:, 3000:], torch.full((80, 100), mel.max().item() - 2), atol=1e-5, rtol=0)


def test_features_parity(features, audio, meta, dims):
    shape = (meta["n_audio_frames_50hz"], dims["n_audio_layer"] + 1, dims["n_audio_state"])
    assert features.shape == audio["whisper_features"].shape == shape
    torch.testing.assert_close(features, audio["whisper_features"], atol=1e-4, rtol=1e-4)


def test_chunks_parity(features, audio, meta, dims):
    idx = chunk_source_indices(features.shape[0], meta["fps"])
    assert torch.equal(idx, audio["chunk_source_indices"])
    chunks = WhisperAudioEncoder.chunks(features, fps=meta["fps"])
    levels = dims["n_audio_layer"] + 1
    assert chunks.shape == audio["whisper_chunks"].shape == (meta["n_chunks"], 10 * levels, dims["n_audio_state"])
    torch.testing.assert_close(chunks, audio["whisper_chunks"], atol=1e-4, rtol=1e-4)


def _original_chunk_count(n, fps):
    """The loop of EchoMimic's feature2chunks, transcribed."""
    i, count = 0, 0
    while True:
        start = int(i * (50.0 / fps))
        count += 1
        i += 1
        if start > n:
            return count


@pytest.mark.parametrize("fps", [25, 29.97])
def test_chunk_layout_and_count(fps):
    n, levels, width = 97, 3, 4
    feats = torch.randn(n, levels, width, generator=torch.Generator().manual_seed(0))
    chunks = WhisperAudioEncoder.chunks(feats, fps)
    assert chunks.shape == (_original_chunk_count(n, fps), 10 * levels, width)
    assert len(chunks) > math.floor(n / 50 * fps)  # the original overshoots the video length
    for i in (0, 1, 17, len(chunks) - 1):  # row r = feature frame centre-4 + r // levels, level r % levels
        centre = int(i * 50 / fps)
        for r in range(10 * levels):
            src = min(max(centre - 4 + r // levels, 0), n - 1)
            assert torch.equal(chunks[i, r], feats[src, r % levels])
    assert WhisperAudioEncoder.chunks(feats, fps, num_frames=7).shape == (7, 10 * levels, width)
    assert torch.equal(WhisperAudioEncoder.chunks(feats, fps, num_frames=7), chunks[:7])


def test_openai_block_equals_transformers_layer(model, ckpt_path):
    """OpenAI scales q and k each by head_dim^-0.25 (key projection without bias); transformers scales q k^T by
    head_dim^-0.5. One block written the OpenAI way from the raw checkpoint must equal the mapped layer."""
    sd = {k: v.float() for k, v in torch.load(ckpt_path, weights_only=True)["model_state_dict"].items()}
    p = lambda name: sd[f"encoder.blocks.1.{name}"]  # noqa: E731
    heads, width = model.dims["n_audio_head"], model.width
    x = torch.randn(1, 37, width, generator=torch.Generator().manual_seed(1))

    h = F.layer_norm(x, (width,), p("attn_ln.weight"), p("attn_ln.bias"))
    q = F.linear(h, p("attn.query.weight"), p("attn.query.bias"))
    k = F.linear(h, p("attn.key.weight"))
    v = F.linear(h, p("attn.value.weight"), p("attn.value.bias"))
    scale = (width // heads) ** -0.25
    q, k, v = (t.view(1, 37, heads, -1).permute(0, 2, 1, 3) for t in (q, k, v))
    w = ((q * scale) @ (k * scale).transpose(-1, -2)).softmax(-1)
    a = (w @ v).permute(0, 2, 1, 3).flatten(2)
    x1 = x + F.linear(a, p("attn.out.weight"), p("attn.out.bias"))
    h = F.layer_norm(x1, (width,), p("mlp_ln.weight"), p("mlp_ln.bias"))
    ref = x1 + F.linear(F.gelu(F.linear(h, p("mlp.0.weight"), p("mlp.0.bias"))), p("mlp.2.weight"), p("mlp.2.bias"))

    with torch.no_grad():
        out = model.encoder.layers[1](x, None)
    out = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_refuses_pickled_objects(tmp_path):
    bad = tmp_path / "whisper_evil.pt"
    torch.save({"dims": {"n_mels": 80}, "model_state_dict": {}, "extra": NotATensor()}, bad)
    with pytest.raises(EMOCheckpointError, match=r"refused to load .*whisper_evil\.pt: it holds Python objects that "
                                                 r"are not tensors.*whisper_tiny\.pt"):
        WhisperAudioEncoder.from_openai_checkpoint(bad)


def test_truncated_checkpoint(tmp_path, ckpt_path):
    data = ckpt_path.read_bytes()
    cut = tmp_path / "whisper_cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(EMOCheckpointError, match=r"whisper_cut\.pt could not be read.*truncated.*whisper_tiny\.pt"):
        WhisperAudioEncoder.from_openai_checkpoint(cut)


def test_missing_and_wrong_checkpoints(tmp_path):
    with pytest.raises(EMOCheckpointError, match="not found"):
        WhisperAudioEncoder.from_openai_checkpoint(tmp_path / "nope.pt")
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(EMOCheckpointError, match="not an OpenAI-whisper checkpoint"):
        WhisperAudioEncoder.from_openai_checkpoint(other)


def test_make_tiny_whisper_roundtrip(tmp_path):
    path = make_tiny_whisper(tmp_path / "tiny.pt", seed=3, width=16, heads=2, layers=2)
    raw = torch.load(path, weights_only=True)["model_state_dict"]
    m = WhisperAudioEncoder.from_openai_checkpoint(path)
    k_proj = m.encoder.layers[1].self_attn.k_proj
    assert k_proj.bias is None
    torch.testing.assert_close(k_proj.weight, raw["encoder.blocks.1.attn.key.weight"].float())
    wav = 0.1 * torch.randn(16000 * 61 // 2 + 3, generator=torch.Generator().manual_seed(0))  # 30.5 s: 2 segments
    f = m.features(wav)  # 3050 mel frames -> 1500 + 25 feature frames
    assert f.shape == (1525, 3, 16) and torch.isfinite(f).all()
    assert not torch.equal(f[:, 0], f[:, 2])


def test_bad_audio_input(model):
    with pytest.raises(EMOInputError, match="mono"):
        model.features(torch.zeros(2, 16000))
    with pytest.raises(EMOInputError, match="fps"):
        WhisperAudioEncoder.chunks(torch.zeros(10, 5, 48), fps=0)
