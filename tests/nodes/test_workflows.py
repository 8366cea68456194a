"""The shipped workflows: every API workflow runs end to end with a tiny model along ComfyUI's execute path
(tests/comfy_stubs stands in for ComfyUI), and each UI workflow describes the same graph as its API twin."""
import importlib
import json
import math
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comfy_stubs"))
import emo_comfy_harness as harness  # noqa: E402

WORKFLOWS = harness.ROOT / "example_workflows"
API = sorted((WORKFLOWS / "api").glob("*.json"))
UI = sorted(WORKFLOWS.glob("*.json"))
CORE_NODES = {"LoadImage", "LoadAudio", "LoadVideo", "GetVideoComponents", "ImageScaleBy"}


def load(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """A fresh ComfyUI base folder with a folder for each checkpoint name the workflows use; the input files are
    only what the pack itself puts there when it loads."""
    base = tmp_path_factory.mktemp("comfyui")
    harness.use_stubs(base)
    import folder_paths
    names = {n["inputs"]["checkpoint"] for p in API for n in load(p).values() if n["class_type"] == "EMOLoadModels"}
    for name in names:
        (Path(folder_paths.models_dir) / "emo" / name).mkdir(parents=True)
    _, classes = harness.load_pack()  # puts the templates' example inputs into input/
    return type("Comfy", (), dict(base=base, classes=harness.all_classes(classes), fp=folder_paths, names=names))


@pytest.fixture(scope="module")
def tiny_models(comfy, fixtures):
    """A tiny random checkpoint (emo_model.make_tiny) under each checkpoint name the workflows use; the EchoMimic v2
    template's ("echomimic-v2") is the v2 parity set (tests/fixtures/echomimic-v2-tiny) with a tiny VAE, saved in the
    native format at 128 px (its own 768 would be slow on a CPU); the Hallo2 template's ("hallo2") is the Hallo2
    parity set in Hallo2's pretrained_models layout, likewise."""
    pack = sys.modules[harness.PACK_MODULE]
    for name in comfy.names:
        folder = Path(comfy.fp.models_dir) / "emo" / name
        shutil.rmtree(folder)
        if name == "echomimic-v2":
            _tiny_echomimic_v2(pack.emo_model, fixtures, folder)
        elif name == "hallo2":
            _tiny_hallo2(pack.emo_model, fixtures, folder)
        else:
            pack.emo_model.make_tiny(folder)
    return comfy


def _tiny_echomimic_v2(emo, fixtures, folder):
    src = folder.parent / f"{folder.name}-src"
    v2, v1 = fixtures / "echomimic-v2-tiny", fixtures / "echomimic-tiny"
    (src / "audio_processor").mkdir(parents=True)
    for name in ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "pose_encoder.pth"):
        shutil.copyfile(v2 / name if (v2 / name).is_file() else v1 / name, src / name)
    shutil.copyfile(v1 / "audio_processor" / "whisper_tiny.pt", src / "audio_processor" / "tiny.pt")
    shutil.copytree(v1 / "sd-image-variations-diffusers", src / "sd-image-variations-diffusers")
    shutil.copytree(emo.make_tiny(folder.parent / f"{folder.name}-vae") / "vae", src / "sd-vae-ft-mse")
    model = emo.load_model(src)
    assert model.config.kind == "echomimic_v2"
    model.config.resolution = 128
    emo.save_native(model, folder)


def _tiny_hallo2(emo, fixtures, folder):
    """hallo2-tiny (its net.pth etc. from the set it borrows from) as pretrained_models/, loaded as Hallo2 (kind,
    motion-frame pixel drop 0.25, 60 s audio pieces), saved native at 128 px with clips of 4 frames, so that the
    template's 0.3 s make two clips (the second one's motion frames masked)."""
    h2 = fixtures / "hallo2-tiny"
    base = fixtures / json.loads((h2 / "fixture_meta.json").read_text()).get("weights_from", "hallo2-tiny")
    src = folder.parent / f"{folder.name}-src"
    for rel in ("stable-diffusion-v1-5/unet/config.json", "wav2vec/wav2vec2-base-960h", "sd-vae-ft-mse", "net.pth"):
        own = h2 / rel
        origin = own if own.exists() else base / rel
        target = src / ("hallo2/net.pth" if rel == "net.pth" else rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if origin.is_dir() else shutil.copyfile)(origin, target)
    model = emo.load_model(src)
    assert model.config.kind == "hallo2" and model.config.motion_drop == 0.25
    model.config.resolution, model.config.frames_per_clip = 128, 4
    emo.save_native(model, folder)


def fast(prompt):
    """The same graph with 2 denoising steps and 0.3 s of the track (the tiny model needs no more to exercise every
    stage; 0.3 s is still more than one clip)."""
    prompt = json.loads(json.dumps(prompt))
    for n in prompt.values():
        if n["class_type"] == "EMOSampler":
            n["inputs"]["steps"] = 2
        if n["class_type"] == "EMOAudioEncode":
            n["inputs"]["duration"] = 0.3
    return prompt


def test_there_are_three_workflows_with_api_twins_and_thumbnails():
    assert [p.name for p in UI] == [p.name for p in API] and len(API) >= 3
    for p in UI:
        assert p.with_suffix(".jpg").is_file(), f"{p.name} has no thumbnail"
        assert "nodes" in load(p) and "links" in load(p), f"{p.name} is not in UI format"
    assert not list((WORKFLOWS / "api").glob("*.jpg"))


@pytest.mark.parametrize("path", API, ids=lambda p: p.stem)
def test_api_workflow_uses_only_core_and_emo_nodes_and_existing_inputs(comfy, path):
    prompt = load(path)
    for nid, node in prompt.items():
        cls = comfy.classes.get(node["class_type"])
        assert cls is not None, f"{path.name} node {nid}: {node['class_type']} is neither core nor ours"
        assert node["class_type"] in CORE_NODES or node["class_type"].startswith("EMO")
        types = harness._input_types(cls)
        declared = {**types.get("required", {}), **types.get("optional", {})}
        for name in node["inputs"]:
            assert name in declared, f"{path.name} node {nid}: {node['class_type']} has no input {name!r}"
    assert harness.validate_prompt(prompt, comfy.classes) == {}


def run_queued(prompt, classes, extra, monkeypatch):
    """Run `prompt` as ComfyUI's queue would: once, then again for each run the pack queued itself (EMO Frame
    Batches: EMO Video Combine queues the same prompt for the next batch; the stand-in queue takes the place of the
    server's /prompt, which tests/nodes/test_streaming.py checks). Returns each run's results."""
    vc = importlib.import_module(f"{harness.PACK_MODULE}.nodes.video_combine")
    queued = [(prompt, extra)]
    monkeypatch.setattr(vc, "requeue", lambda p, pnginfo: queued.append((p, {"extra_pnginfo": pnginfo})))
    runs = []
    while queued:
        p, e = queued.pop(0)
        assert len(runs) < 100, "the workflow keeps queueing itself"
        runs.append(harness.run_prompt(p, classes, e))
    return runs


@pytest.mark.parametrize("path", API, ids=lambda p: p.stem)
def test_api_workflow_renders_an_mp4_with_sound(tiny_models, path, monkeypatch):
    comfy = tiny_models
    from emo_model.media.video import probe
    prompt = fast(load(path))
    workflow = load(WORKFLOWS / path.name)
    results = run_queued(prompt, comfy.classes, {"extra_pnginfo": {"workflow": workflow}}, monkeypatch)[-1]
    combine = next(nid for nid, n in prompt.items() if n["class_type"] == "EMOVideoCombine")
    saved = results[combine]["ui"]["images"]
    assert len(saved) == 1 and saved[0]["type"] == "output"
    mp4 = Path(comfy.fp.get_output_directory()) / saved[0]["subfolder"] / saved[0]["filename"]
    info = probe(mp4)
    encode = next(nid for nid, n in prompt.items() if n["class_type"] == "EMOAudioEncode")
    frames = results[encode]["outputs"][1]
    audio = results[encode]["outputs"][2]
    fps = Fraction(results[next(n for n, v in prompt.items() if v["class_type"] == "EMOSampler")]["outputs"][1])
    seconds = audio["waveform"].shape[-1] / audio["sample_rate"]
    assert frames == math.ceil(seconds * fps - 1e-9) == info["frames"]
    assert info["audio_codec"] == "aac" and abs(info["audio_duration"] - frames / float(fps)) < 0.05
    assert json.loads(info["metadata"]["prompt"]) == prompt
    assert json.loads(info["metadata"]["workflow"]) == workflow
    # paste-back: the video has the size of the reference picture (rounded up to even; times an upscale after it),
    # not the model's crop; a whole-frame model (EchoMimic v2, no Paste Back) gives the picture at the model's size
    ref_node = next(nid for nid, n in prompt.items() if n["class_type"] == "EMOReferenceEncode")
    src = prompt[ref_node]["inputs"]["image"][0]
    picture = results[src]["outputs"][0]
    scale = math.prod(n["inputs"]["scale_by"] for n in prompt.values() if n["class_type"] == "ImageScaleBy")
    if any(n["class_type"] == "EMOPasteBack" for n in prompt.values()):
        size = (round(s * scale) for s in picture.shape[1:3])
        assert (info["height"], info["width"]) == tuple(s + s % 2 for s in size)
    else:
        crop = results[ref_node]["outputs"][2]
        assert (info["height"], info["width"]) == tuple(crop.shape[1:3])


def test_long_track_upscale_takes_every_batch_through_the_upscaler(tiny_models, monkeypatch):
    """emo_long_track_upscale: Sampler -> Paste Back (VIDEO) -> EMO Frame Batches -> core ImageScaleBy -> EMO Video
    Combine (batch). Each queued run takes one batch through the upscaler and queues the next; the mp4 appears once,
    after the last batch, with every frame at twice the picture's size and the whole audio; nothing is left in temp/
    but the sampler's and Paste Back's finished VIDEOs (ComfyUI's cache may reuse them; it empties temp/ at start)."""
    comfy = tiny_models
    from emo_model.media.video import probe
    prompt = fast(load(WORKFLOWS / "api" / "emo_long_track_upscale.json"))
    batches = next(n for n in prompt.values() if n["class_type"] == "EMOFrameBatches")["inputs"]
    batches["frames_per_batch"] = 3
    prompt["10"]["inputs"]["filename_prefix"] = "emo/batched_upscale"
    temp = Path(comfy.fp.get_temp_directory()) / "emo"
    before = set(temp.glob("*")) if temp.is_dir() else set()
    out = Path(comfy.fp.get_output_directory())
    runs = run_queued(prompt, comfy.classes, {"extra_pnginfo": {"workflow": {"nodes": []}}}, monkeypatch)
    frames = runs[0]["4"]["outputs"][1]
    assert frames == 8 and len(runs) == math.ceil(frames / 3) == 3     # 0.3 s at 25 fps, 3 frames a run
    picture = runs[0]["1"]["outputs"][0]
    for i, run in enumerate(runs):
        info = run["8"]["outputs"][1]
        assert (info.index, info.count, info.first_frame) == (i, 3, 3 * i)
        assert run["8"]["outputs"][0].shape[0] == min(3, frames - 3 * i)   # one batch in memory, not the track
        assert tuple(run["9"]["outputs"][0].shape[1:3]) == tuple(2 * s for s in picture.shape[1:3])
        assert (run["10"]["outputs"][0] is None) == (i < 2)               # no mp4 before the last batch
    saved = runs[-1]["10"]["ui"]["images"]
    assert len(saved) == 1 and saved[0]["filename"].startswith("batched_upscale")
    mp4 = out / saved[0]["subfolder"] / saved[0]["filename"]
    info = probe(mp4)
    assert info["frames"] == frames and (info["height"], info["width"]) == tuple(2 * s for s in picture.shape[1:3])
    assert info["audio_codec"] == "aac" and abs(info["audio_duration"] - frames / 25) < 0.05
    assert [p.name for p in mp4.parent.glob("*batched_upscale*")] == [mp4.name]   # no .part, no second file
    left = {p for p in temp.glob("*")} - before
    assert {p.name.split("_")[0] for p in left} <= {"sampler", "paste"}                # no batches intermediate
    assert not [p for p in temp.glob(".*")]                                           # no partial file


def ui_to_api(ui: dict, classes: dict) -> dict:
    """Read a UI-format workflow back into API form: links by input name, widget values by position (skipping
    the frontend's extra control_after_generate value and widgets no node input declares, such as upload)."""
    links = {l[0]: l for l in ui["links"]}
    out = {}
    for n in ui["nodes"]:
        types = harness._input_types(classes[n["type"]])
        spec = {**types.get("required", {}), **types.get("optional", {})}
        values, vi, inputs = list(n.get("widgets_values") or []), 0, {}
        for inp in n.get("inputs", []):
            name = inp["name"]
            if "widget" in inp:
                value, vi = values[vi], vi + 1
                opts = spec.get(name, (None, {}))[1] if len(spec.get(name, ())) > 1 else {}
                if opts.get("control_after_generate"):
                    vi += 1
                if name in spec and inp.get("link") is None:
                    inputs[name] = value
            if inp.get("link") is not None:
                link = links[inp["link"]]
                assert link[3] == n["id"], f"link {link[0]} does not end at node {n['id']}"
                inputs[name] = [str(link[1]), link[2]]
        out[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return out


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_ui_workflow_and_its_api_twin_are_the_same_graph(comfy, path):
    ui = load(path)
    node_ids = [n["id"] for n in ui["nodes"]]
    link_ids = [l[0] for l in ui["links"]]
    assert len(set(node_ids)) == len(node_ids) and len(set(link_ids)) == len(link_ids)
    assert ui["last_node_id"] >= max(node_ids) and ui["last_link_id"] >= max(link_ids)
    assert ui_to_api(ui, comfy.classes) == load(WORKFLOWS / "api" / path.name)
