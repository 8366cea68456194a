"""formats.common: one strict load for every format (shape mismatches included, one error type naming the file),
the tiny model's RNG hygiene and its one temporary folder."""
import shutil
import tempfile

import pytest
import torch
from safetensors.torch import load_file, save_file

from emo_model import EMOCheckpointError, load_model, make_tiny
from emo_model.formats import load as load_mod


def _copy(tiny_dir, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(tiny_dir, dst)
    return dst


@pytest.mark.parametrize("part", ["face_locator", "reference_net", "backbone"])
def test_native_shape_mismatch_names_the_file(tiny_dir, tmp_path, part):
    """A tensor of another shape used to surface as torch's RuntimeError (or, for the ReferenceNet, a KeyError)."""
    folder = _copy(tiny_dir, tmp_path)
    sd = load_file(str(folder / f"{part}.safetensors"))
    key = next(k for k, v in sd.items() if v.ndim == 4)
    sd[key] = torch.zeros(sd[key].shape[0] + 1, *sd[key].shape[1:])
    save_file(sd, str(folder / f"{part}.safetensors"))
    with pytest.raises(EMOCheckpointError, match=rf"{part}\.safetensors does not fit this model: 1 tensors have other "
                                                 rf"shapes \(size mismatch for {key}.*copy the whole model folder"):
        load_model(folder, vae_path=False)


def test_native_missing_key_names_the_file(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path)
    sd = load_file(str(folder / "reference_net.safetensors"))
    sd.pop(next(iter(sd)))
    save_file(sd, str(folder / "reference_net.safetensors"))
    with pytest.raises(EMOCheckpointError, match=r"reference_net\.safetensors does not fit this model: missing 1"):
        load_model(folder, vae_path=False)


def test_hallo_part_of_another_shape(fixtures, tmp_path):
    net = torch.load(fixtures / "hallo-tiny" / "net.pth", map_location="cpu", weights_only=True)
    key = next(k for k in net if k.startswith("face_locator.") and net[k].ndim == 4)
    net[key] = torch.zeros(net[key].shape[0] + 1, *net[key].shape[1:])
    torch.save(net, tmp_path / "net.pth")
    from emo_model.formats.hallo import hallo_config, load_hallo_weights
    from emo_model.models.model import EMOModel
    config, widths = hallo_config(net, {}, (2, 32))
    with pytest.raises(EMOCheckpointError, match=r"net\.pth \(face_locator\.\*\) does not fit this model"):
        load_hallo_weights(EMOModel(config, widths), net, tmp_path / "net.pth")


def test_make_tiny_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = make_tiny(tmp_path / "a", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # it used to call torch.manual_seed(seed)
    torch.manual_seed(7)  # another global state: the same seed still gives the same files
    b = make_tiny(tmp_path / "b", seed=0)
    sa, sb = load_file(str(a / "backbone.safetensors")), load_file(str(b / "backbone.safetensors"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    va, vb = load_file(str(a / "vae" / "diffusion_pytorch_model.safetensors")), \
        load_file(str(b / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(va[k], vb[k]) for k in va)


def test_tiny_random_makes_one_folder_per_process(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp / TemporaryDirectory write
    load_mod._tiny_folder.cache_clear()
    try:
        load_model("tiny-random", vae_path=False)
        load_model("tiny-random", vae_path=False)
        assert len([p for p in tmp_path.iterdir() if p.name.startswith("emo-tiny-")]) == 1  # was one per call
    finally:
        load_mod._tiny_folder.cache_clear()
