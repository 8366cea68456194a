"""The ComfyUI node pack, run without ComfyUI: tests/comfy_stubs stands in for ComfyUI (its API, folder_paths,
progress bar, model management); the pack's own code runs for real."""
import ast
import importlib
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comfy_stubs"))
import emo_comfy_harness as harness  # noqa: E402

ROOT = harness.ROOT
NODE_IDS = {"EMOLoadModels", "EMOAudioEncode", "EMOReferenceEncode", "EMOSampler", "EMOPasteBack", "EMOVideoCombine",
            "EMOLoadPose", "EMODownloadModels", "EMOFrameBatches"}
# Top-level modules of ComfyUI itself: no module of the pack may be importable under these names.
COMFY_TOP_LEVEL = {"nodes", "utils", "comfy", "comfy_extras", "comfy_api", "comfy_execution", "comfy_config", "app",
                   "api_server", "folder_paths", "execution", "server", "main", "latent_preview", "node_helpers",
                   "protocol", "middleware", "new_updater", "cuda_malloc", "hook_breaker_ac10a0", "alembic_db"}


@pytest.fixture
def comfy(tmp_path):
    harness.use_stubs(tmp_path / "comfyui")
    module, classes = harness.load_pack()
    import folder_paths
    return type("Comfy", (), dict(base=tmp_path / "comfyui", classes=classes, module=module, fp=folder_paths,
                                  pack=sys.modules[harness.PACK_MODULE]))


def pack_module(name):
    return importlib.import_module(f"{harness.PACK_MODULE}.{name}")


def node(comfy, node_id, uid="1", prompt=None, extra_pnginfo=None):
    """The per-execution class clone ComfyUI makes, with hidden inputs set."""
    from comfy_api.latest import io
    return comfy.classes[node_id].PREPARE_CLASS_CLONE(
        {io.Hidden.unique_id: uid, io.Hidden.prompt: prompt, io.Hidden.extra_pnginfo: extra_pnginfo})


def test_pack_registers_v3_nodes_with_stable_ids_tooltips_and_descriptions(comfy):
    assert set(comfy.classes) == NODE_IDS
    assert not hasattr(comfy.module, "NODE_CLASS_MAPPINGS")
    custom_types = set()
    for node_id, cls in comfy.classes.items():
        schema = cls.GET_SCHEMA()
        assert schema.node_id.startswith("EMO") and schema.display_name
        assert len(schema.description) > 40, f"{node_id} has no real description"
        for i in schema.inputs:
            assert i.tooltip and len(i.tooltip) > 10, f"{node_id}.{i.id} has no tooltip"
            custom_types.add(i.io_type)
        for o in schema.outputs:
            assert o.tooltip, f"{node_id} output {o.display_name} has no tooltip"
            custom_types.add(o.io_type)
    assert {"EMO_MODEL", "EMO_AUDIO", "EMO_REFERENCE", "EMO_CROP_INFO"} <= custom_types
    seed = next(i for i in comfy.classes["EMOSampler"].GET_SCHEMA().inputs if i.id == "seed")
    assert seed.control_after_generate is True
    assert comfy.classes["EMOVideoCombine"].GET_SCHEMA().is_output_node
    speed = next(i for i in comfy.classes["EMOSampler"].GET_SCHEMA().inputs if i.id == "head_motion_speed")
    assert "speed layers" in speed.tooltip


def test_pack_uses_only_relative_imports_of_its_own_code_and_shadows_no_comfy_module():
    own = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() or p.suffix == ".py"}
    files = [ROOT / "__init__.py", *sorted((ROOT / "nodes").glob("*.py"))]
    for f in files:
        for n in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else []
            for name in names:
                top = name.split(".")[0]
                assert top not in {"nodes", "emo_model", "tests"}, f"{f.name}: absolute import of the pack's {name}"
    for f in (ROOT / "emo_model").glob("*.py"):  # the model code never imports ComfyUI
        tree = ast.parse(f.read_text())
        for n in ast.walk(tree):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
                assert not any(m.split(".")[0] in {"comfy", "comfy_api", "folder_paths"} for m in mods), f.name
    # `nodes/` is safe only as a subpackage: ComfyUI never puts the pack folder itself on sys.path.
    assert own & COMFY_TOP_LEVEL <= {"nodes"}
    assert (ROOT / "nodes" / "__init__.py").exists()
    for f in (ROOT / "nodes").glob("*.py"):
        assert f.stem not in COMFY_TOP_LEVEL


def test_root_package_imports_cleanly_without_comfyui():
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('pack', {str(ROOT / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(ROOT)!r}]); m = importlib.util.module_from_spec(spec); "
            "sys.modules['pack'] = m; spec.loader.exec_module(m); "
            "print(hasattr(m, 'comfy_entrypoint'), hasattr(m, 'NODE_CLASS_MAPPINGS'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_model_folder_registration_keeps_extra_model_paths(tmp_path):
    harness.use_stubs(tmp_path / "comfyui")
    import folder_paths
    extra = tmp_path / "shared_models" / "emo"      # what an `emo:` entry in extra_model_paths.yaml adds,
    (extra / "from-yaml").mkdir(parents=True)        # applied by ComfyUI before custom nodes load
    folder_paths.add_model_folder_path("emo", str(extra))
    default = Path(folder_paths.models_dir) / "emo"
    (default / "native-ckpt").mkdir(parents=True)
    (default / "face_detectors").mkdir()
    (default / "net.pth").write_bytes(b"")
    _, classes = harness.load_pack()
    assert folder_paths.get_folder_paths("emo") == [str(extra), str(default)]
    ckpt = next(i for i in classes["EMOLoadModels"].GET_SCHEMA().inputs if i.id == "checkpoint")
    assert ckpt.options == ["from-yaml", "native-ckpt", "net.pth"]


def test_missing_checkpoint_names_the_file_and_the_folder(comfy):
    err = comfy.classes["EMOLoadModels"].validate_inputs(checkpoint="hallo")
    assert isinstance(err, str) and "'hallo'" in err and str(Path(comfy.fp.models_dir) / "emo") in err
    assert "net.pth" in err and "config.json" in err and "extra_model_paths.yaml" in err
    errors = pack_module("emo_model.errors")
    with pytest.raises(errors.EMOCheckpointError, match="models/emo"):
        node(comfy, "EMOLoadModels").execute(checkpoint="hallo", precision="auto", device="auto")


def test_audio_encode_rejects_missing_audio_and_batches(comfy):
    errors = pack_module("emo_model.errors")
    enc = node(comfy, "EMOAudioEncode")
    with pytest.raises(errors.EMOInputError, match="no sound"):
        enc.execute(emo_model=None, audio=None, fps=25.0)
    batch = {"waveform": torch.zeros(2, 1, 16000), "sample_rate": 16000}
    with pytest.raises(errors.EMOInputError, match="batch of 2"):
        enc.execute(emo_model=None, audio=batch, fps=25.0)
    with pytest.raises(errors.EMOInputError, match="past the end"):
        enc.execute(emo_model=None, audio={"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000},
                    fps=25.0, start=1.5)


def _frames(n=10, h=48, w=64):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, h, w, 3, generator=g)


def test_video_combine_saves_mp4_with_sound_and_workflow_and_returns_video(comfy):
    from emo_model.media.video import probe
    prompt = {"1": {"class_type": "EMOVideoCombine", "inputs": {"fps": 29.97}}}
    workflow = {"nodes": [{"id": 1, "type": "EMOVideoCombine"}], "links": []}
    t = torch.arange(44100) / 44100
    stereo = torch.stack([torch.sin(2 * torch.pi * 440 * t), torch.sin(2 * torch.pi * 220 * t)]) * 0.3
    out = node(comfy, "EMOVideoCombine", prompt=prompt, extra_pnginfo={"workflow": workflow}).EXECUTE_NORMALIZED(
        frames=_frames(), fps=29.97, filename_prefix="emo/test", crf=18,
        audio={"waveform": stereo[None], "sample_rate": 44100})
    ui = out.ui.as_dict()
    assert ui["images"] == [{"filename": "test_00001_.mp4", "subfolder": "emo", "type": "output"}]
    path = Path(comfy.fp.get_output_directory()) / "emo" / "test_00001_.mp4"
    info = probe(path)
    assert (info["frames"], info["width"], info["height"]) == (10, 64, 48)
    assert info["fps"] == Fraction(30000, 1001) and info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert abs(info["audio_duration"] - 10 * 1001 / 30000) < 0.03
    assert json.loads(info["metadata"]["prompt"]) == prompt
    assert json.loads(info["metadata"]["workflow"]) == workflow
    video = out.args[0].get_components()
    assert video.frame_rate == Fraction(30000, 1001) and video.images.shape == (10, 48, 64, 3)
    assert video.audio["waveform"].shape == (1, 2, round(10 * 1001 / 30000 * 44100))
    again = node(comfy, "EMOVideoCombine").EXECUTE_NORMALIZED(frames=_frames(3), fps=25.0, filename_prefix="emo/test",
                                                              crf=23)
    assert again.ui.as_dict()["images"][0]["filename"] == "test_00002_.mp4"  # a silent one, next counter


@pytest.mark.parametrize("prefix", ["../../x", "../x", "emo/../../x", "/tmp/emo_escape/x", ""])
def test_filename_prefix_never_leaves_output(comfy, prefix):
    errors = pack_module("emo_model.errors")
    before = {p for p in comfy.base.parent.rglob("*")}
    with pytest.raises(errors.EMOInputError, match="filename_prefix"):
        node(comfy, "EMOVideoCombine").execute(frames=_frames(2), fps=25.0, filename_prefix=prefix, crf=18)
    after = {p for p in comfy.base.parent.rglob("*")}
    assert after == before and not Path("/tmp/emo_escape").exists()


def test_paste_back_puts_upscaled_crops_back_at_full_size(comfy):
    from emo_model.media.image import example_portrait
    ref = pack_module("nodes.reference_encode")
    fc = pack_module("emo_model.faces.crop")
    picture = example_portrait()[:301, :400]                             # odd height: paste-back rounds to even
    info = fc.plan_crop(picture.shape[:2], whole_image=True, resolution=64)
    frames = torch.rand(5, 128, 128, 3)                                  # e.g. after a 2x face upscaler
    out = node(comfy, "EMOPasteBack").execute(frames=frames, crop_info=ref.CropPlacement(info, picture),
                                              feather=0.1, color_match=False).args[0]
    assert out.shape == (5, 302, 400, 3) and out.dtype == torch.float32
    x0, y0, side = info.box
    outside = torch.from_numpy(picture[:, :x0]).float() / 255
    assert torch.equal(out[:, :301, :x0], outside.expand(5, -1, -1, -1))  # outside the crop: untouched
    assert not torch.allclose(out[:, y0 + 10:y0 + side - 10, x0 + 10:x0 + side - 10],
                              torch.from_numpy(picture[y0 + 10:y0 + side - 10, x0 + 10:x0 + side - 10]).float() / 255,
                              atol=0.05)


@pytest.fixture
def loaded(comfy):
    """Load EMO Models on a tiny checkpoint, then encode 0.2 s of audio and the example portrait."""
    import folder_paths
    from emo_model.media.image import example_portrait
    comfy.pack.emo_model.make_tiny(Path(folder_paths.models_dir) / "emo" / "tiny")
    bundle = node(comfy, "EMOLoadModels").execute(checkpoint="tiny", precision="fp32", device="auto").args[0]
    t = torch.arange(int(0.2 * 22050)) / 22050
    audio = {"waveform": (0.3 * torch.sin(2 * torch.pi * 300 * t)).expand(2, -1)[None], "sample_rate": 22050}
    encoded, frames, trimmed = node(comfy, "EMOAudioEncode").execute(emo_model=bundle, audio=audio, fps=25.0).args
    picture = torch.from_numpy(example_portrait()).float()[None] / 255
    batch = torch.cat([torch.zeros_like(picture), picture])          # e.g. two frames of a video: pick the second
    ref, crop_info, face = node(comfy, "EMOReferenceEncode").execute(
        emo_model=bundle, image=batch, frame_index=-1, detector="whole image (no crop)", face_index=0,
        margin=0.5).args
    return type("Loaded", (), dict(bundle=bundle, encoded=encoded, frames=frames, trimmed=trimmed, ref=ref,
                                   crop_info=crop_info, face=face))


def test_encoders_give_frames_trimmed_audio_and_the_chosen_batch_frame(comfy, loaded):
    assert loaded.frames == 5 and loaded.encoded.num_frames == 5               # ceil(0.2 s x 25 fps)
    assert loaded.trimmed["waveform"].shape == (1, 2, 4410) and loaded.trimmed["sample_rate"] == 22050
    res = loaded.bundle.model.config.resolution
    assert loaded.face.shape == (1, res, res, 3)
    assert loaded.face.mean() > 0.2                                           # the portrait, not the black frame
    start = node(comfy, "EMOAudioEncode").execute(
        emo_model=loaded.bundle, audio={"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}, fps=29.97,
        start=0.25, duration=0.5).args
    assert start[1] == 15 and start[2]["waveform"].shape == (1, 1, 8000)       # ceil(0.5 x 30000/1001)


def test_reference_encode_mask_replaces_detection_and_no_face_is_a_clear_error(comfy, loaded):
    errors = pack_module("emo_model.errors")
    blank = torch.full((1, 200, 300, 3), 0.5)
    with pytest.raises(errors.EMOInputError, match="no face found"):
        node(comfy, "EMOReferenceEncode").execute(emo_model=loaded.bundle, image=blank, frame_index=0,
                                                  detector="auto", face_index=0, margin=0.5)
    mask = torch.zeros(1, 200, 300)
    mask[0, 50:110, 120:170] = 1
    _, info, _ = node(comfy, "EMOReferenceEncode").execute(emo_model=loaded.bundle, image=blank, frame_index=0,
                                                           detector="auto", face_index=0, margin=0.5, face_mask=mask).args
    assert info.crop.mode == "mask" and info.image.shape == (200, 300, 3)
    with pytest.raises(errors.EMOInputError, match="frame_index 3"):
        node(comfy, "EMOReferenceEncode").execute(emo_model=loaded.bundle, image=blank, frame_index=3,
                                                  detector="auto", face_index=0, margin=0.5)


def test_reference_encode_auto_frames_the_whole_picture_for_a_whole_frame_model(comfy, loaded, caplog):
    """A model trained on `prepare-data --whole-frame` data: 'auto' animates the whole picture (said once in the
    log); a named detector or a mask still decides."""
    import logging
    errors = pack_module("emo_model.errors")
    blank = torch.full((1, 200, 300, 3), 0.5)
    loaded.bundle.model.config.whole_frame = True
    with caplog.at_level(logging.INFO):
        _, info, face = node(comfy, "EMOReferenceEncode").execute(emo_model=loaded.bundle, image=blank, frame_index=0,
                                                                  detector="auto", face_index=0, margin=0.5).args
    assert info.crop.mode == "whole" and info.crop.box == (50, 0, 200)
    assert sum("trained on whole-frame data" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(errors.EMOInputError, match="no face found"):
        node(comfy, "EMOReferenceEncode").execute(emo_model=loaded.bundle, image=blank, frame_index=0,
                                                  detector="lbp (built-in)", face_index=0, margin=0.5)
    mask = torch.zeros(1, 200, 300)
    mask[0, 50:110, 120:170] = 1
    _, info, _ = node(comfy, "EMOReferenceEncode").execute(emo_model=loaded.bundle, image=blank, frame_index=0,
                                                           detector="auto", face_index=0, margin=0.5, face_mask=mask).args
    assert info.crop.mode == "mask"


@pytest.mark.parametrize("method", ["latent2rgb", "none"])
def test_sampler_reports_every_step_with_comfyui_previews_through_model_management(comfy, loaded, monkeypatch,
                                                                                   method):
    """Progress for every step of every clip; previews come from ComfyUI's own previewer, so --preview-method
    (none: no previews, ComfyUI's default) and --preview-size apply."""
    import latent_preview
    from comfy import model_management as mm
    from comfy import utils as comfy_utils
    from comfy.cli_args import LatentPreviewMethod, args
    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod(method))
    monkeypatch.setattr(latent_preview, "MAX_PREVIEW_RESOLUTION", 320)   # what --preview-size 320 sets
    calls = []
    comfy_utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None:
                                             calls.append((value, total, preview, node_id)))
    mm.load_calls.clear()
    try:
        frames, fps, video = node(comfy, "EMOSampler", uid="7").execute(
            emo_model=loaded.bundle, encoded_audio=loaded.encoded, reference=loaded.ref, seed=3, steps=2,
            audio_cfg=3.5, reference_cfg=3.5, head_motion_speed=1.0, frames_per_clip=0, motion_frames=-1).args
    finally:
        comfy_utils.set_progress_bar_global_hook(None)
    res = loaded.bundle.model.config.resolution
    assert frames.shape == (5, res, res, 3) and frames.dtype == torch.float32 and fps == 25.0
    assert video is None  # no prompt (nothing known to read the VIDEO output): no temp file written
    assert frames.device == mm.intermediate_device() and 0 <= frames.min() and frames.max() <= 1
    clips = -(-5 // loaded.bundle.model.config.frames_per_clip)
    assert [c[:2] for c in calls] == [(i + 1, 2 * clips) for i in range(2 * clips)]
    assert all(c[3] == "7" for c in calls)
    if method == "none":
        assert all(c[2] is None for c in calls)
    else:
        kind, image, size = calls[-1][2]
        assert kind == "JPEG" and image.size == (res // 8, res // 8) and size == 320  # latent->RGB: one px per latent
        assert len({image.getpixel((0, 0)), image.getpixel((res // 16, res // 16))}) == 2  # a picture, not a fill
    assert any(loaded.bundle.patcher in models and full for models, _, full in mm.load_calls)


def test_cancel_from_the_progress_hook_stops_the_sampler_within_one_step(comfy, loaded):
    from comfy import model_management as mm
    from comfy import utils as comfy_utils
    seen = []

    def hook(value, total, preview, node_id=None):  # what ComfyUI's server hook does once Cancel was pressed
        seen.append(value)
        if value == 3:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    comfy_utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node(comfy, "EMOSampler").execute(
                emo_model=loaded.bundle, encoded_audio=loaded.encoded, reference=loaded.ref, seed=0, steps=2,
                audio_cfg=3.5, reference_cfg=3.5, head_motion_speed=1.0, frames_per_clip=0, motion_frames=-1)
    finally:
        comfy_utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert seen == [1, 2, 3]  # step 3 was the last one computed: the next step never ran


def test_load_pose_draws_a_landmark_file_and_reference_encode_checks_the_model(comfy, loaded):
    """EMO Load Pose: one .npy of landmarks [frames, 478, 2] in 512-px crop coordinates (relative to ComfyUI's input
    folder) -> drawn IMAGE frames; pose frames given to a model whose face locator takes the face box are refused."""
    import folder_paths
    import numpy as np
    errors = pack_module("emo_model.errors")
    rng = np.random.default_rng(0)
    marks = np.stack([rng.uniform(150, 360, (478, 2)) + i for i in range(6)])
    np.save(Path(folder_paths.get_input_directory()) / "pose.npy", marks)
    frames = node(comfy, "EMOLoadPose").execute(path="pose.npy", max_frames=4).args[0]
    assert frames.shape == (4, 512, 512, 3) and 0 <= frames.min() and frames.max() <= 1
    assert 0 < (frames.amax(-1) > 0).float().mean() < 0.2        # thin lines on black
    assert not torch.equal(frames[0], frames[3])                    # each frame its own landmarks
    with pytest.raises(errors.EMOInputError, match="path is empty"):
        node(comfy, "EMOLoadPose").execute(path=" ", max_frames=0)
    picture = torch.rand(1, 96, 96, 3)
    with pytest.raises(errors.EMOInputError, match="pose frames were given"):
        node(comfy, "EMOReferenceEncode").execute(emo_model=loaded.bundle, image=picture, frame_index=0,
                                                  detector="whole image (no crop)", face_index=0, margin=0.5,
                                                  pose_frames=frames)


def test_sampler_region_weights_reach_the_backbone(comfy, loaded):
    """Hallo's pose / face / lip weights (optional widgets: workflows saved without them keep working) arrive in
    every backbone call's conditions."""
    seen = []
    hook = loaded.bundle.model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[2].region_weights))
    try:
        common = dict(emo_model=loaded.bundle, encoded_audio=loaded.encoded, reference=loaded.ref, seed=0, steps=1,
                      audio_cfg=1.0, reference_cfg=1.0, head_motion_speed=1.0, frames_per_clip=0, motion_frames=-1)
        node(comfy, "EMOSampler").execute(**common, pose_weight=0.5, face_weight=1.5, lip_weight=2.0)
        weighted = list(seen)
        seen.clear()
        node(comfy, "EMOSampler").execute(**common)
    finally:
        hook.remove()
    assert weighted and set(weighted) == {(0.5, 1.5, 2.0)}
    assert seen and set(seen) == {(1.0, 1.0, 1.0)}


def test_sampler_motion_drop_widget(comfy, loaded):
    """motion_drop (optional: workflows saved without it get -1 = auto, the checkpoint's own: 0 for this native
    model): a drop greys motion-frame pixels outside the face box, so the frames change; 0 is the same as auto here."""
    common = dict(emo_model=loaded.bundle, encoded_audio=loaded.encoded, reference=loaded.ref, seed=0, steps=1,
                  audio_cfg=1.0, reference_cfg=1.0, head_motion_speed=1.0, frames_per_clip=0, motion_frames=-1)
    sampler = node(comfy, "EMOSampler")
    auto = sampler.execute(**common).args[0]
    assert torch.equal(sampler.execute(**common, motion_drop=0.0).args[0], auto)
    dropped = sampler.execute(**common, motion_drop=0.5).args[0]
    assert dropped.shape == auto.shape and (dropped - auto).abs().max() > 1e-3


def test_sampler_speed_cfg_widget(comfy, loaded):
    """speed_cfg (optional: workflows saved without it get 0 = auto, the checkpoint's own speed guidance): 1 is the
    same as auto for this model (its config says 1), 3 turns the head more strongly, so the frames change; a
    checkpoint whose config says 3 samples with 3 on auto."""
    common = dict(emo_model=loaded.bundle, encoded_audio=loaded.encoded, reference=loaded.ref, seed=0, steps=1,
                  audio_cfg=1.0, reference_cfg=1.0, head_motion_speed=1.5, frames_per_clip=0, motion_frames=-1)
    sampler = node(comfy, "EMOSampler")
    config = loaded.bundle.model.config
    assert config.speed_cfg == 1.0
    auto = sampler.execute(**common).args[0]
    assert torch.equal(sampler.execute(**common, speed_cfg=1.0).args[0], auto)
    guided = sampler.execute(**common, speed_cfg=3.0).args[0]
    assert guided.shape == auto.shape and (guided - auto).abs().max() > 1e-3
    try:
        config.speed_cfg = 3.0
        assert torch.equal(sampler.execute(**common).args[0], guided)
    finally:
        config.speed_cfg = 1.0


def test_load_models_picks_the_echomimic_set(comfy, fixtures):
    """A folder with EchoMimic's standard and accelerated files: the optional echomimic_set widget picks one (auto:
    the standard set); a set whose files are missing is named in the error."""
    import shutil

    import folder_paths
    from diffusers import AutoencoderKL
    errors = pack_module("emo_model.errors")
    em = fixtures / "echomimic-tiny"
    folder = Path(folder_paths.models_dir) / "emo" / "EchoMimic"
    folder.mkdir(parents=True)
    for part in ("reference_unet", "denoising_unet", "motion_module", "face_locator"):
        shutil.copyfile(em / f"{part}.pth", folder / f"{part}.pth")
    for part in ("denoising_unet", "motion_module"):
        shutil.copyfile(em / f"{part}.pth", folder / f"{part}_acc.pth")
    for sub in ("audio_processor", "sd-image-variations-diffusers"):
        shutil.copytree(em / sub, folder / sub)
    AutoencoderKL(block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4,
                  down_block_types=["DownEncoderBlock2D"] * 4,
                  up_block_types=["UpDecoderBlock2D"] * 4).save_pretrained(folder / "sd-vae-ft-mse")
    load = node(comfy, "EMOLoadModels").execute
    steps = {s: load(checkpoint="EchoMimic", precision="fp32", device="cpu", echomimic_set=s).args[0].model.config.steps
             for s in ("auto", "audio", "audio accelerated")}
    assert steps == {"auto": 30, "audio": 30, "audio accelerated": 6}
    settings = {s: vars(load(checkpoint="EchoMimic", precision="fp32", device="cpu", echomimic_set=s).args[0]
                        .model.config.sampling()) for s in ("audio", "audio accelerated")}
    assert settings == {"audio": dict(steps=30, audio_cfg=2.5, ref_cfg=2.5, fps=24.0),       # what the nodes' auto
                        "audio accelerated": dict(steps=6, audio_cfg=1.0, ref_cfg=1.0, fps=24.0)}  # resolves to
    assert load(checkpoint="EchoMimic", precision="fp32", device="cpu").args[0].model.config.steps == 30
    with pytest.raises(errors.EMOCheckpointError, match="denoising_unet_pose.pth"):
        load(checkpoint="EchoMimic", precision="fp32", device="cpu", echomimic_set="pose")


def test_load_models_and_pose_for_echomimic_v2(comfy, fixtures):
    """EchoMimic v2's pretrained_weights layout in models/emo/: Load EMO Models recognises it (its own settings; the
    accelerated pair through echomimic_set), EMO Load Pose draws a v2 pose folder (DWPose .npy: hands) at 768 px, and
    Reference Encode takes the whole picture at the model's size (no face crop) with those frames."""
    import json
    import shutil

    import folder_paths
    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    v2, v1 = fixtures / "echomimic-v2-tiny", fixtures / "echomimic-tiny"
    meta = json.loads((v2 / "fixture_meta.json").read_text())
    folder = Path(folder_paths.models_dir) / "emo" / "EchoMimicV2"
    (folder / "audio_processor").mkdir(parents=True)
    for part in ("reference_unet", "denoising_unet", "motion_module", "pose_encoder"):
        src = v2 / f"{part}.pth" if (v2 / f"{part}.pth").is_file() else v1 / f"{part}.pth"
        shutil.copyfile(src, folder / f"{part}.pth")
        if part in ("denoising_unet", "motion_module"):
            shutil.copyfile(src, folder / f"{part}_acc.pth")
    shutil.copyfile(v1 / "audio_processor" / "whisper_tiny.pt", folder / "audio_processor" / "tiny.pt")
    AutoencoderKL(block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4,
                  down_block_types=["DownEncoderBlock2D"] * 4,
                  up_block_types=["UpDecoderBlock2D"] * 4).save_pretrained(folder / "sd-vae-ft-mse")
    load = node(comfy, "EMOLoadModels").execute
    bundle = load(checkpoint="EchoMimicV2", precision="fp32", device="cpu").args[0]
    cfg = bundle.model.config
    assert (cfg.kind, cfg.resolution, cfg.framing, cfg.init_noise_clamp, cfg.window_shift) == (
        "echomimic_v2", 768, "whole", 1.5, 3)
    assert vars(cfg.sampling()) == dict(steps=30, audio_cfg=2.5, ref_cfg=2.5, fps=24.0)
    acc = load(checkpoint="EchoMimicV2", precision="fp32", device="cpu", echomimic_set="audio accelerated")
    assert vars(acc.args[0].model.config.sampling()) == dict(steps=6, audio_cfg=1.0, ref_cfg=1.0, fps=24.0)

    shutil.copytree(v2 / "pose", Path(folder_paths.get_input_directory()) / "v2pose")
    frames = node(comfy, "EMOLoadPose").execute(path="v2pose", max_frames=0).args[0]
    assert tuple(frames.shape) == (meta["pose_frames"], 768, 768, 3)
    side = meta["pixel_hw"]  # the set's frames are 128 px; the same drawing lies in the top-left of a 768 frame
    strip = pack_module("emo_model.faces.pose").load_pose_frames(v2 / "pose", side).numpy()
    assert np.array_equal((frames[:, :side, :side] * 255).round().byte().numpy(), strip)
    assert not frames[:, side:].any() and not frames[:, :, side:].any()

    picture = torch.rand(1, 300, 200, 3)  # not square: stretched to the model's square, as EchoMimic v2 does
    out = node(comfy, "EMOReferenceEncode").execute(emo_model=bundle, image=picture, frame_index=0, detector="auto",
                                                   face_index=0, margin=0.5, pose_frames=frames).args
    reference, placement, crop = out
    assert tuple(crop.shape) == (1, 768, 768, 3) and reference.locator_mask.shape[2] == meta["pose_frames"]
    assert placement.image.shape[:2] == (768, 768)


def test_sampler_output_too_large_for_memory_is_a_clear_error(comfy):
    errors = pack_module("emo_model.errors")
    sampler = pack_module("nodes.sampler")
    assert sampler._frame_batch(3, (8, 8, 3)).shape == (3, 8, 8, 3)
    with pytest.raises(errors.EMOInputError, match="render the track in parts"):
        sampler._frame_batch(10 ** 9, (512, 512, 3))  # ~3 PB


def _widget_defaults(cls) -> dict:
    return {i.id: i.default for i in cls.GET_SCHEMA().inputs if getattr(i, "default", None) is not None}


def test_node_defaults_are_the_checkpoints_own_sampling_settings(comfy):
    """Left at their defaults (auto), steps / CFG and Audio Encode's fps are what the checkpoint was made for (here
    an accelerated-like checkpoint: 3 steps, no CFG, 24 fps), not fixed numbers; numbers still win when set."""
    import json

    import folder_paths
    SamplingSettings = pack_module("emo_model.config").SamplingSettings
    folder = Path(folder_paths.models_dir) / "emo" / "acc"
    comfy.pack.emo_model.make_tiny(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"].update(steps=3, audio_cfg=1.0, ref_cfg=1.0, fps=24.0)
    (folder / "config.json").write_text(json.dumps(cfg))
    bundle = node(comfy, "EMOLoadModels").execute(checkpoint="acc", precision="fp32", device="auto").args[0]
    assert bundle.model.config.sampling() == SamplingSettings(steps=3, audio_cfg=1.0, ref_cfg=1.0, fps=24.0)

    audio = {"waveform": 0.1 * torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(0)),
             "sample_rate": 16000}                                                      # 0.25 s
    enc_defaults = _widget_defaults(comfy.classes["EMOAudioEncode"])
    encoded, frames, _ = node(comfy, "EMOAudioEncode").execute(emo_model=bundle, audio=audio,
                                                               fps=enc_defaults["fps"]).args
    assert float(encoded.fps) == 24.0 and frames == 6                                   # ceil(0.25 x 24), not 7 at 25
    assert node(comfy, "EMOAudioEncode").execute(emo_model=bundle, audio=audio, fps=25.0).args[1] == 7

    picture = torch.rand(1, 80, 80, 3, generator=torch.Generator().manual_seed(1))
    ref = node(comfy, "EMOReferenceEncode").execute(emo_model=bundle, image=picture, frame_index=0,
                                                    detector="whole image (no crop)", face_index=0,
                                                    margin=0.5).args[0]
    defaults = _widget_defaults(comfy.classes["EMOSampler"])
    assert {k: defaults[k] for k in ("steps", "audio_cfg", "reference_cfg")} == {"steps": 0, "audio_cfg": 0,
                                                                                "reference_cfg": 0}
    from comfy import utils as comfy_utils
    totals = []
    comfy_utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: totals.append(total))
    sample = {k: defaults[k] for k in ("seed", "head_motion_speed", "frames_per_clip", "motion_frames")}
    try:
        auto = node(comfy, "EMOSampler").execute(emo_model=bundle, encoded_audio=encoded, reference=ref,
                                                 steps=defaults["steps"], audio_cfg=defaults["audio_cfg"],
                                                 reference_cfg=defaults["reference_cfg"], **sample).args[0]
    finally:
        comfy_utils.set_progress_bar_global_hook(None)
    clips = -(-6 // bundle.model.config.frames_per_clip)
    assert set(totals) == {3 * clips}                                                    # the checkpoint's 3 steps
    explicit = node(comfy, "EMOSampler").execute(emo_model=bundle, encoded_audio=encoded, reference=ref, steps=3,
                                                 audio_cfg=1.0, reference_cfg=1.0, **sample).args[0]
    guided = node(comfy, "EMOSampler").execute(emo_model=bundle, encoded_audio=encoded, reference=ref, steps=3,
                                               audio_cfg=3.5, reference_cfg=3.5, **sample).args[0]
    assert torch.equal(auto, explicit)                                                   # auto = no CFG, as made
    assert (auto - guided).abs().max() > 1e-3                                            # the old fixed 3.5 / 3.5


def test_video_combine_cancelled_while_writing_leaves_output_as_it_was(comfy):
    """Cancel (or any failure) after the first frames were encoded: no mp4 under the final name, no temporary
    file, and the files already in output/ (an earlier render, a file of the user's) keep their bytes."""
    from comfy import model_management as mm
    from comfy import utils as comfy_utils
    out = Path(comfy.fp.get_output_directory()) / "emo"
    out.mkdir(parents=True)
    (out / "test_00001_.mp4").write_bytes(b"an earlier render")
    (out / "notes.txt").write_bytes(b"the user's own file")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    updates = []

    def hook(value, total, preview, node_id=None):  # what the server's hook does once Cancel was pressed
        updates.append(value)
        mm.interrupt_current_processing(True)

    comfy_utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node(comfy, "EMOVideoCombine").execute(frames=_frames(150, 32, 32), fps=25.0, filename_prefix="emo/test",
                                                   crf=23)
    finally:
        comfy_utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert updates == [64]                                      # 64 frames were encoded, then Cancel
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    done = node(comfy, "EMOVideoCombine").execute(frames=_frames(3, 32, 32), fps=25.0, filename_prefix="emo/test",
                                                  crf=23)
    assert done.ui.as_dict()["images"][0]["filename"] == "test_00002_.mp4"
    assert (out / "test_00001_.mp4").read_bytes() == b"an earlier render"


def test_paste_back_into_background_frames_frame_by_frame(comfy):
    """`background` (e.g. the source video's frames) replaces the reference picture frame by frame, the last one
    repeating; pictures of another size than the reference are refused with both sizes named."""
    from emo_model.media.image import example_portrait
    errors = pack_module("emo_model.errors")
    ref = pack_module("nodes.reference_encode")
    fc = pack_module("emo_model.faces.crop")
    picture = example_portrait()[:200, :300]
    info = fc.plan_crop(picture.shape[:2], whole_image=True, resolution=64)
    x0, y0, side = info.box
    frames = torch.rand(5, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    shades = torch.tensor([0.2, 0.5, 0.8])
    background = shades[:, None, None, None].expand(3, 200, 300, 3).clone()
    out = node(comfy, "EMOPasteBack").execute(frames=frames, crop_info=ref.CropPlacement(info, picture), feather=0.1,
                                              color_match=False, background=background).args[0]
    assert out.shape == (5, 200, 300, 3)
    for i, shade in enumerate([0.2, 0.5, 0.8, 0.8, 0.8]):                       # the last background repeats
        outside = out[i, :, :x0] if x0 > 0 else out[i, :y0]
        assert outside.numel() and torch.allclose(outside, torch.tensor(shade), atol=1 / 255), i
    inside = out[:, y0 + side // 4:y0 + 3 * side // 4, x0 + side // 4:x0 + 3 * side // 4]
    assert (inside - shades.max()).abs().amax() > 0.1                          # the generated face is in there
    plain = node(comfy, "EMOPasteBack").execute(frames=frames, crop_info=ref.CropPlacement(info, picture),
                                                feather=0.1, color_match=False).args[0]
    assert torch.allclose(inside, plain[:, y0 + side // 4:y0 + 3 * side // 4, x0 + side // 4:x0 + 3 * side // 4],
                          atol=1 / 255)                                          # same face, other surroundings
    with pytest.raises(errors.EMOInputError, match=r"background is 301×200 px but the reference picture is 300×200"):
        node(comfy, "EMOPasteBack").execute(frames=frames, crop_info=ref.CropPlacement(info, picture), feather=0.1,
                                            color_match=False, background=torch.zeros(2, 200, 301, 3))
