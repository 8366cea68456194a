"""How ComfyUI finds the pack: its comfy_api version, its template folder."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comfy_stubs"))
import emo_comfy_harness as harness  # noqa: E402


@pytest.fixture
def comfyui_without_v0_0_2(tmp_path, monkeypatch):
    """A ComfyUI that has only `comfy_api.latest` (an older one, or one that dropped the versioned alias)."""
    harness.use_stubs(tmp_path / "comfyui")
    for name in [m for m in sys.modules if m.startswith("comfy_api.v0_0_2")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "comfy_api.v0_0_2", None)  # `import comfy_api.v0_0_2` now raises ImportError


def test_pack_loads_on_a_comfyui_with_only_comfy_api_latest(comfyui_without_v0_0_2):
    with pytest.raises(ImportError):
        import comfy_api.v0_0_2  # noqa: F401  (the stand-in really lacks it)
    _, classes = harness.load_pack()
    from comfy_api.latest import ComfyExtension, io
    bridge = sys.modules[f"{harness.PACK_MODULE}.nodes.comfy_bridge"]
    extension = sys.modules[f"{harness.PACK_MODULE}.nodes.extension"]
    assert len(classes) == len(extension.NODES) >= 7
    assert bridge.io is io and issubclass(extension.EMOExtension, ComfyExtension)


# app/custom_node_manager.py (ComfyUI 0.3.64 and newer): the folders a pack's templates may live in, in this order.
# GET /api/workflow_templates lists every *.json directly inside any of them; the static route that serves the
# files under /api/workflow_templates/<pack>/ answers from the first folder that exists, and 404s for the rest.
TEMPLATE_FOLDERS = ["example_workflows", "example", "examples", "workflow", "workflows"]


def comfyui_templates(pack_dir: Path) -> tuple[dict, Path | None]:
    """What ComfyUI lists ({name: file}) and the folder it serves them from, looked up as ComfyUI does."""
    listed = {}
    for folder in TEMPLATE_FOLDERS:
        for f in sorted((pack_dir / folder).glob("*.json")):
            listed.setdefault(f.stem, f)
    served = next((pack_dir / f for f in TEMPLATE_FOLDERS if (pack_dir / f).exists()), None)
    return listed, served


def test_every_template_comfyui_lists_is_served_with_a_thumbnail_and_opens_as_a_ui_workflow():
    import json
    listed, served = comfyui_templates(harness.ROOT)
    assert len(listed) >= 3 and served is not None
    for name, file in listed.items():
        assert (served / f"{name}.json").is_file(), f"template {name} is listed from {file.parent.name}/ but " \
                                                    f"ComfyUI serves {served.name}/: it would 404"
        assert (served / f"{name}.jpg").is_file(), f"template {name} has no thumbnail"
        ui = json.loads((served / f"{name}.json").read_text())
        assert {"nodes", "links", "version"} <= set(ui), f"{name} is not a UI-format workflow"


def test_pack_puts_the_templates_inputs_into_comfyui_input_and_never_replaces_a_file(tmp_path):
    """Loading the pack into a ComfyUI with an empty input folder makes every file the templates' Load nodes name
    exist there; a file the user already had under such a name keeps its bytes; loading again changes nothing."""
    import json
    harness.use_stubs(tmp_path / "comfyui")
    import folder_paths
    inputs = Path(folder_paths.get_input_directory())
    mine = inputs / "emo_example_speech.wav"
    mine.write_bytes(b"the user's own file")
    harness.load_pack()
    needed = set()
    for api in (harness.ROOT / "example_workflows" / "api").glob("*.json"):
        for n in json.loads(api.read_text()).values():
            needed |= {v for k, v in n["inputs"].items() if k in ("image", "audio", "file") and isinstance(v, str)}
    assert needed and all((inputs / name).is_file() for name in needed), sorted(p.name for p in inputs.iterdir())
    assert mine.read_bytes() == b"the user's own file"
    portrait = inputs / "emo_example_portrait.jpg"
    assert portrait.read_bytes() == (harness.ROOT / "assets" / "portrait.jpg").read_bytes()
    before = {p.name: p.stat().st_mtime_ns for p in inputs.iterdir()}
    harness.load_pack()
    assert {p.name: p.stat().st_mtime_ns for p in inputs.iterdir()} == before
