"""The shipped manifests: they parse, pin a commit, and list only files the loaders read; a download of their
layout (tiny stand-in files from a stand-in hub, given with --manifest) loads with no further step."""
import json
import os
import sys

import pytest

from emo_model import load_model
from emo_model.cli import main as cli_main
from emo_model.download import builtin_manifest, builtin_names, parse_manifest, status
from emo_model.download.manifest import COMMIT
from fake_models import fake_files, test_manifest
from hub_server import FakeHub

REQUIRED = {"hallo", "hallo2", "echomimic", "echomimic-acc", "echomimic-pose", "echomimic-pose-acc", "echomimic-v2"}


def test_every_shipped_manifest_parses_and_pins_a_commit():
    assert REQUIRED <= set(builtin_names())
    for name in builtin_names():
        m = builtin_manifest(name)
        assert m.name == name and COMMIT.match(m.revision), (name, m.revision)
        assert m.licence and m.files
        assert all(f.size is not None or f.approx_size for f in m.files), f"{name}: a file without any size"
        for e in m.extras.values():
            assert e.licence and e.files


_OPENED = []      # paths opened while a test records (audit hooks cannot be removed: one, installed once)
_RECORDING = [False]


def _hook(event, args):
    if _RECORDING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_hook)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_listed_file_is_read_by_the_loader(name, fixtures, tmp_path):
    """A file is needed when the loader opens it (Python's audit hook sees every open()) or, for files read
    outside Python's open (safetensors maps them from Rust), when loading fails without it. The identity files are
    found by the face-embedding lookup that render uses."""
    m = builtin_manifest(name)
    folder = tmp_path / name
    for path, data in fake_files(name, fixtures).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    _OPENED.clear()
    _RECORDING[0] = True
    try:
        load_model(folder)
    finally:
        _RECORDING[0] = False
    unseen = [f.path for f in m.files if str(folder / f.path) not in set(_OPENED)]
    assert len(unseen) < len(m.files) / 2, unseen  # the hook works: most files are opened from Python
    for path in unseen:
        kept = (folder / path).read_bytes()
        (folder / path).unlink()
        with pytest.raises(Exception):
            load_model(folder)
        (folder / path).write_bytes(kept)
    if "identity" in m.extras:
        from emo_model.faces.embedding import find_embedding_model, find_keypoint_detector
        d = folder / "face_analysis" / "models"
        assert find_embedding_model(d) == d / "glintr100.onnx"
        assert find_keypoint_detector(d) == d / "scrfd_10g_bnkps.onnx"


@pytest.mark.parametrize("name", ["hallo", "hallo2", "echomimic-pose-acc", "echomimic-v2"])
def test_a_download_of_the_manifest_layout_loads_with_no_further_step(name, fixtures, tmp_path, capsys):
    m = builtin_manifest(name)
    files = fake_files(name, fixtures)
    others = {}  # files a manifest takes from another repo (EchoMimic v2: whisper, VAE, UNet config from v1's)
    for f in m.files:
        if f.repo:
            others.setdefault(f.repo, (f.revision, {}))[1][f.path] = files.pop(f.path)
    with FakeHub(m.repo, files, commit=m.revision, others=others) as hub:
        mf = tmp_path / "m.json"
        mf.write_text(json.dumps(test_manifest(name, hub)))
        args = ["download", "--manifest", str(mf), "--dest", str(tmp_path / "emo"), "--endpoint", hub.endpoint]
        assert cli_main(args + (["--with-identity"] if m.extras else [])) == 0
        out = capsys.readouterr().out
        if m.extras:
            assert out.index("NON-COMMERCIAL") < out.index(f"{name}: {m.repo}")   # licence shown first
        asked = {q["path"].split("/resolve/", 1)[-1].split("/", 1)[-1] for q in hub.requests("api")}
        assert asked == {f.path for f in m.selected(list(m.extras))}
        for f in m.files:  # each file asked of its own repo at its own pinned commit
            repo, rev = (f.repo, f.revision) if f.repo else (m.repo, m.revision)
            assert any(q["path"] == f"/{repo}/resolve/{rev}/{f.path}" for q in hub.requests("api")), f.path
    folder = tmp_path / "emo" / name
    assert status(parse_manifest(json.loads(mf.read_text())), tmp_path / "emo")["state"] == "complete"
    model = load_model(folder, vae_path=None)
    kinds = {"hallo": "hallo", "hallo2": "hallo2", "echomimic-v2": "echomimic_v2"}
    assert model.config.kind == kinds.get(name, "echomimic")
    if name == "hallo2":  # DEST/hallo2/hallo2/net.pth: Hallo2's layout, its sampling settings
        assert model.config.motion_drop == 0.25 and model.config.audio_encoder["piece_seconds"] == 60
    if name == "echomimic-v2":
        assert model.config.locator_input == "pose" and model.config.steps == 30 and model.config.resolution == 768
    elif name not in ("hallo", "hallo2"):
        assert model.config.locator_input == "pose" and model.config.steps == 6


def test_a_file_from_another_repo_needs_its_revision():
    base = {"name": "x", "repo": "a/b", "revision": "0" * 40, "licence": "l"}
    ok = parse_manifest({**base, "files": [{"path": "f.bin", "repo": "c/d", "revision": "1" * 40}]})
    assert (ok.files[0].repo, ok.files[0].revision) == ("c/d", "1" * 40)
    for bad, match in (({"path": "f.bin", "repo": "c/d"}, "given with its 'revision'"),
                       ({"path": "f.bin", "repo": "cd", "revision": "1" * 40}, "repo id"),
                       ({"path": "f.bin", "revision": "1" * 40}, "without its 'repo'")):
        with pytest.raises(Exception, match=match):
            parse_manifest({**base, "files": [bad]})
