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
    assert len(classes) == 7
    from comfy_api.latest import ComfyExtension, io
    bridge = sys.modules[f"{harness.PACK_MODULE}.nodes.comfy_bridge"]
    assert bridge.io is io and issubclass(sys.modules[f"{harness.PACK_MODULE}.nodes.extension"].EMOExtension,
                                          ComfyExtension)
