"""EMO Download Models in the stand-in ComfyUI, against the stand-in hub: it runs only when queued, reports bytes
on ComfyUI's progress bar, stops on Cancel keeping what was fetched, and its output feeds Load EMO Models."""
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "comfy_stubs"))
sys.path.insert(0, str(HERE.parent / "download"))
import emo_comfy_harness as harness  # noqa: E402
from fake_models import fake_files, test_manifest  # noqa: E402
from hub_server import FakeHub  # noqa: E402

NAME = "echomimic-acc"


@pytest.fixture
def setup(tmp_path, fixtures, monkeypatch):
    """Stand-in ComfyUI + a stand-in hub serving tiny files in the echomimic-acc layout; the pack's manifest folder
    holds that model's manifest with the stand-in files' checksums."""
    for k in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    harness.use_stubs(tmp_path / "comfyui")
    module, classes = harness.load_pack()
    pack = sys.modules[harness.PACK_MODULE]
    from emo_model.download import builtin_manifest
    m = builtin_manifest(NAME)
    hub = FakeHub(m.repo, fake_files(NAME, fixtures), commit=m.revision).__enter__()
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / f"{NAME}.json").write_text(json.dumps(test_manifest(NAME, hub)))
    monkeypatch.setattr(sys.modules[f"{harness.PACK_MODULE}.emo_model.download.manifest"], "MANIFEST_DIR", manifests)
    monkeypatch.setattr(sys.modules[f"{harness.PACK_MODULE}.emo_model.download.fetch"], "RETRY_WAIT", 0.01)
    import comfy.model_management as mm
    import comfy.utils
    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    yield type("S", (), dict(classes=classes, hub=hub, calls=calls, mm=mm, pack=pack,
                             emo=tmp_path / "comfyui" / "models" / "emo"))
    comfy.utils.set_progress_bar_global_hook(None)
    mm.interrupt_current_processing(False)
    hub.__exit__()


def prompt(endpoint):
    return {"1": {"class_type": "EMODownloadModels",
                  "inputs": {"model": NAME, "with_identity": False, "verify": False, "endpoint": endpoint}},
            "2": {"class_type": "EMOLoadModels",
                  "inputs": {"checkpoint": ["1", 0], "vae": "from checkpoint", "audio_encoder": "from checkpoint",
                             "precision": "fp32", "device": "cpu"}}}


def test_empty_models_folder_names_the_download_node_and_command(setup):
    msg = setup.classes["EMOLoadModels"].validate_inputs(checkpoint="hallo")
    assert "EMO Download Models" in msg and "python -m emo_model download" in msg


def test_node_downloads_with_a_byte_progress_bar_and_feeds_load_emo_models(setup):
    nothing_yet = len(setup.hub.log)
    assert nothing_yet == 0                                     # loading the pack fetched nothing
    out = harness.run_prompt(prompt(setup.hub.endpoint), setup.classes)
    assert out["1"]["outputs"] == (NAME,)
    total = sum(len(b) for b in setup.hub.files.values())
    values = [v for v, t in setup.calls]
    assert setup.calls[-1] == (total, total) and values == sorted(values) and len(values) >= 3
    pack = setup.pack
    assert NAME in pack.nodes.comfy_bridge.list_checkpoints()   # Load EMO Models lists it
    loaded = setup.classes["EMOLoadModels"].execute(checkpoint=out["1"]["outputs"][0], precision="fp32",
                                                    device="cpu")
    assert loaded.args[0].model.config.steps == 6               # the accelerated EchoMimic set
    n = len(setup.hub.log)
    harness.run_prompt(prompt(setup.hub.endpoint), setup.classes)
    assert len(setup.hub.log) == n                              # queued again: checked offline, nothing fetched


def test_cancel_stops_the_download_and_the_next_run_continues(setup):
    setup.hub.delay = 0.002

    def cancel_after_some_bytes(value, total, preview, node_id=None):
        setup.calls.append((value, total))
        if value > 0:
            setup.mm.interrupt_current_processing(True)        # what the Cancel button does

    import comfy.utils
    comfy.utils.set_progress_bar_global_hook(cancel_after_some_bytes)
    with pytest.raises(setup.mm.InterruptProcessingException):
        harness.run_prompt(prompt(setup.hub.endpoint), setup.classes)
    assert not (setup.emo / NAME).exists()                      # not installed, not listed
    assert NAME not in setup.pack.nodes.comfy_bridge.list_checkpoints()
    kept = sum(p.stat().st_size for p in (setup.emo / f".{NAME}.download").rglob("*.part"))
    kept += sum(p.stat().st_size for p in (setup.emo / f".{NAME}.download").rglob("*") if p.is_file()
                and ".emo-download" not in p.parts)
    assert kept > 0
    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: None)
    setup.hub.delay = 0.0
    import time
    rerun = time.monotonic()
    harness.run_prompt(prompt(setup.hub.endpoint), setup.classes)
    assert (setup.emo / NAME).is_dir()
    total = sum(len(b) for b in setup.hub.files.values())
    assert setup.hub.payload_bytes(since=rerun) <= total - kept + 16384
