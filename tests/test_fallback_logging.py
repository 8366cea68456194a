"""Each fallback the pack takes without being asked is said once through `logging` (ComfyUI shows it in its
console; the CLI prints it as a `note:` line)."""
import json
import logging
import shutil

import numpy as np
import pytest
import torch


def notes(caplog):
    return [r.getMessage() for r in caplog.records if r.name.startswith("emo_model") and r.levelno >= logging.INFO]


def test_zero_identity_embedding_is_said(tmp_path, caplog):
    from emo_model.faces.embedding import identity_embedding
    caplog.set_level(logging.INFO, logger="emo_model")
    face = np.full((64, 64, 3), 128, np.uint8)
    assert identity_embedding(face, [tmp_path]) is None
    (said,) = notes(caplog)
    assert "zero embedding" in said and "glintr100.onnx" in said and str(tmp_path) in said


def test_missing_speed_layers_are_said_and_config_json_kept(tmp_path, tiny_dir, caplog):
    from emo_model import load_model
    folder = tmp_path / "no_speed"
    shutil.copytree(tiny_dir, folder)
    (folder / "speed_layers.safetensors").unlink()
    before = (folder / "config.json").read_text()
    assert json.loads(before)["model"]["speed"]  # the config describes speed layers
    caplog.set_level(logging.INFO, logger="emo_model")
    model = load_model(folder, vae_path=False)
    assert model.speed_encoder is None and model.config.speed is None
    (said,) = notes(caplog)
    assert "speed_layers.safetensors is missing" in said and "head-motion speed" in said
    assert (folder / "config.json").read_text() == before
    caplog.clear()
    load_model(tiny_dir, vae_path=False)
    assert notes(caplog) == []  # a complete model says nothing


def test_reference_in_0_255_is_said(pipe, caplog):
    caplog.set_level(logging.INFO, logger="emo_model")
    res = pipe.config.resolution
    image = torch.rand(res, res, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(res, res)
    mask[16:48, 16:48] = 1
    a = pipe.encode_reference(image, mask)
    assert notes(caplog) == []
    b = pipe.encode_reference(image * 255, mask)
    (said,) = notes(caplog)
    assert "0..255" in said and "divided by 255" in said
    torch.testing.assert_close(a.latent, b.latent, rtol=1e-4, atol=1e-4)  # the guess was right for this input
