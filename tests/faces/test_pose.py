"""EchoMimic's landmark-driven (`_pose`) sets: loading (file names, the 3-channel face locator, never mixing sets)
and the pose input (EchoMimic's landmark files drawn as its FaceMeshVisualizer draws them, drawn frames, bad input).

The pose sets are made from the tiny fixture `echomimic-tiny`: its files renamed, and `face_locator_pose.pth` from
its 1-channel face locator with conv_in widened to 3 channels by splitting each weight 0.2 / 0.3 / 0.5 over them, so
a 3-channel copy of the fixture's mask must give the fixture's own face-locator output (atol 1e-5, as the audio set).
The drawing was checked bit for bit (max abs diff 0) against EchoMimic's draw_utils.py with mediapipe 0.10.14 on the
240 frames of its demo pose folder and 300 shifted/scaled/clipped variants; mediapipe is no dependency, so the tests
here check the drawing's documented properties (colours, line and square sizes, what is not drawn, placement).
"""
import pickle
import shutil

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from emo_model import EMOCheckpointError, EMOInputError, load_model
from emo_model.formats.load import detect_format
from emo_model.formats.echomimic import echomimic_files, echomimic_variant, load_echomimic_tensors, set_files
from emo_model.media.image import example_portrait
from emo_model.faces.pose import draw_pose, load_pose_frames, pose_frames_from_images
from emo_model.media.video import VideoWriter

SPLIT = (0.2, 0.3, 0.5)


@pytest.fixture(scope="module")
def em(fixtures):
    return fixtures / "echomimic-tiny"


def _make_set(em, dst, pose=True, accelerated=False, locator_channels=None):
    """A copy of the fixture's model as one EchoMimic set (file names of `set_files`); the face locator gets
    `locator_channels` input channels (default: 3 for pose sets, 1 otherwise)."""
    dst.mkdir(parents=True, exist_ok=True)
    names = set_files(pose, accelerated)
    for part in ("reference_unet", "denoising_unet", "motion_module"):
        shutil.copyfile(em / f"{part}.pth", dst / names[part])
    sd = torch.load(em / "face_locator.pth", weights_only=True)
    if (locator_channels or (3 if pose else 1)) == 3:
        sd["conv_in.weight"] = sd["conv_in.weight"] * torch.tensor(SPLIT).view(1, 3, 1, 1)
    torch.save(sd, dst / names["face_locator"])
    for sub in ("audio_processor", "sd-image-variations-diffusers"):
        if not (dst / sub).exists():
            shutil.copytree(em / sub, dst / sub)
    return dst


# ---------------------------------------------------------------------------------------------- loader
def test_pose_set_loads_as_pose_model(em, tmp_path):
    folder = _make_set(em, tmp_path / "pose")
    assert detect_format(folder) == "echomimic"
    model = load_model(folder, vae_path=False)
    cfg = model.config
    assert cfg.locator_input == "pose" and cfg.face_locator["in_channels"] == 3 and model.face_locator.in_channels == 3
    assert (cfg.window_shift, cfg.init_noise_clamp) == (3, None)  # pipeline_echo_mimic_pose.py: t_i * 3, no clamp
    assert (cfg.steps, cfg.audio_cfg, cfg.ref_cfg, cfg.fps) == (30, 2.5, 2.5, 24.0)
    data = load_file(em / "face_locator.safetensors")  # [1, 1, 2, 128, 128] masks -> the fixture's output
    with torch.no_grad():
        out = model.face_locator(data["input"].repeat(1, 3, 1, 1, 1))
    torch.testing.assert_close(out, data["output"], atol=1e-5, rtol=0)
    with pytest.raises(EMOInputError, match="landmark drawings"):  # a 1-channel face mask is refused, not broadcast
        model.face_locator(data["input"])


def test_audio_set_keeps_its_settings(em):
    cfg = load_model(em, vae_path=False).config
    assert (cfg.locator_input, cfg.window_shift, cfg.init_noise_clamp) == ("face_mask", 2, 1.5)


def test_pose_acc_set(em, tmp_path):
    folder = _make_set(em, tmp_path / "acc", accelerated=True)
    assert sorted(p.name for p in echomimic_files(folder).values()) == [
        "denoising_unet_pose_acc.pth", "face_locator_pose.pth", "motion_module_pose_acc.pth", "reference_unet_pose.pth"]
    cfg = load_model(folder, vae_path=False).config
    assert (cfg.steps, cfg.audio_cfg, cfg.ref_cfg, cfg.locator_input, cfg.window_shift) == (6, 1.0, 1.0, "pose", 3)


def test_four_sets_in_one_folder(em, tmp_path):
    folder = tmp_path / "all"
    for pose in (False, True):
        for acc in (False, True):
            _make_set(em, folder, pose, acc)
    names = lambda **kw: sorted(p.name for p in echomimic_files(folder, **kw).values())
    assert names() == sorted(set_files(False, False).values())  # the audio-driven standard set by default
    assert names(pose=True) == sorted(set_files(True, False).values())
    assert names(pose=True, accelerated=True) == sorted(set_files(True, True).values())
    assert names(accelerated=True) == sorted(set_files(False, True).values())
    assert echomimic_variant(folder / "motion_module_pose_acc.pth") == dict(pose=True, accelerated=True)
    assert echomimic_variant(folder / "denoising_unet_pose.pth") == dict(pose=True, accelerated=False)
    assert echomimic_variant(folder / "face_locator_pose.pth") == dict(pose=True, accelerated=None)
    assert echomimic_variant(folder / "denoising_unet_acc.pth") == dict(pose=False, accelerated=True)
    _, sds = load_echomimic_tensors(folder, pose=True)
    assert sds["face_locator"]["conv_in.weight"].shape[1] == 3
    (folder / "motion_module_pose.pth").unlink()  # never replaced by the audio set's motion_module.pth
    with pytest.raises(EMOCheckpointError, match="missing motion_module_pose.pth"):
        echomimic_files(folder, pose=True, accelerated=False)


def test_face_locator_channels_are_checked(em, tmp_path):
    pose = _make_set(em, tmp_path / "pose1", locator_channels=1)  # face_locator.pth renamed to face_locator_pose.pth
    with pytest.raises(EMOCheckpointError, match=r"face_locator_pose\.pth is a 1-channel face locator.*3 channels"):
        load_model(pose, vae_path=False)
    audio = _make_set(em, tmp_path / "audio3", pose=False, locator_channels=3)
    with pytest.raises(EMOCheckpointError, match=r"face_locator\.pth is a 3-channel face locator.*face_locator_pose"):
        load_model(audio, vae_path=False)


# ---------------------------------------------------------------------------------------------- drawing
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]  # around the contour
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
LEFT_BROW, RIGHT_BROW = [276, 283, 282, 295, 285], [46, 53, 52, 65, 55]  # lower edges; upper: 300 ..., 70 ...
LEFT_BROW_UP, RIGHT_BROW_UP = [300, 293, 334, 296, 336], [70, 63, 105, 66, 107]
MOUTH = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 0, 13, 14, 78, 308]


def _face(dx=0.0, n=478, cols=3):
    """Synthetic landmarks [n, cols] in 512-px coordinates: eyes as 16-point rings (r 20 px) round (320, 240) and
    (190, 240), brows as two horizontal 5-point lines at y 200 and 185, pupils at the eye centres, nose tip
    (256, 320), mouth points at y 400 (EchoMimic does not draw the mouth), every other landmark at (256, 470)."""
    lm = np.zeros((n, cols))
    lm[:, :2] = (256, 470)
    for ring, cx in ((LEFT_EYE, 320), (RIGHT_EYE, 190)):
        a = np.linspace(0, 2 * np.pi, len(ring), endpoint=False)
        lm[ring, 0], lm[ring, 1] = cx + 20 * np.cos(a), 240 + 20 * np.sin(a)
    lm[LEFT_BROW, :2] = np.stack([np.linspace(290, 350, 5), np.full(5, 200)], 1)
    lm[RIGHT_BROW, :2] = np.stack([np.linspace(160, 220, 5), np.full(5, 200)], 1)
    lm[LEFT_BROW_UP, :2] = np.stack([np.linspace(290, 350, 5), np.full(5, 185)], 1)
    lm[RIGHT_BROW_UP, :2] = np.stack([np.linspace(160, 220, 5), np.full(5, 185)], 1)
    lm[MOUTH, :2] = np.stack([np.linspace(216, 296, len(MOUTH)), np.full(len(MOUTH), 400)], 1)
    lm[4, :2] = (256, 320)
    if n > 473:
        lm[473, :2], lm[468, :2] = (320, 240), (190, 240)
    lm[:, 0] += dx
    return lm


def _write_pkls(folder, frames):
    folder.mkdir()
    for i, lm in enumerate(frames):
        with open(folder / f"{i}.pkl", "wb") as f:
            pickle.dump(lm, f)
    return folder


def test_drawing_matches_echomimic_style(tmp_path):
    folder = _write_pkls(tmp_path / "pose", [_face(), _face(dx=40, cols=2), None])
    x = load_pose_frames(folder, 512)
    assert x.shape == (3, 512, 512, 3) and x.dtype == torch.uint8
    img = x.numpy()
    color = lambda f, y, x_: tuple(int(v) for v in img[f, y, x_])
    for f, dx in ((0, 0), (1, 40)):
        assert (img[f, 237:243, 317 + dx:323 + dx] == (250, 200, 10)).all()  # left pupil: 6 x 6 px square
        assert (img[f, 237:243, 187 + dx:193 + dx] == (10, 200, 250)).all()  # right pupil
        assert (img[f, 317:323, 253 + dx:259 + dx] == (200, 200, 200)).all()  # nose tip, drawn last
        assert color(f, 200, 320 + dx) == (180, 220, 10) and color(f, 200, 190 + dx) == (10, 220, 180)  # brows
        assert color(f, 260, 320 + dx) == (180, 200, 10) and color(f, 260, 190 + dx) == (10, 200, 180)  # eye rings
        brow = (img[f, :, 320 + dx] == (180, 220, 10)).all(1).nonzero()[0]
        assert brow.tolist() == [184, 185, 186, 199, 200, 201]  # two cv2 lines of thickness 2: 3 px across each
        assert not img[f, 380:420].any()  # no mouth, no face oval, nothing else
        assert not img[f, 465:].any()
    assert not img[2].any()  # a frame without a face (None) is black, as in EchoMimic
    colours = {tuple(c) for c in img[0].reshape(-1, 3)}
    assert colours <= {(0, 0, 0), (250, 200, 10), (10, 200, 250), (200, 200, 200), (180, 220, 10), (10, 220, 180),
                       (180, 200, 10), (10, 200, 180)}  # cv2 lines are drawn without anti-aliasing


def test_landmark_units_formats_and_resolution(tmp_path):
    lms = [_face(), _face(dx=-30)]
    ref = load_pose_frames(_write_pkls(tmp_path / "pkl", lms), 512)
    half = load_pose_frames(_write_pkls(tmp_path / "half", [lm / 2 for lm in lms]), 512, landmark_size=256)
    assert torch.equal(half, ref)
    (tmp_path / "npy").mkdir()
    for i, lm in enumerate(lms):
        np.save(tmp_path / "npy" / f"{i}.npy", lm.astype(np.float32))
    np.save(tmp_path / "all.npy", np.stack(lms))
    assert torch.equal(load_pose_frames(tmp_path / "npy", 512), ref)
    assert torch.equal(load_pose_frames(tmp_path / "all.npy", 512), ref)
    small = load_pose_frames(tmp_path / "pkl", 128)  # drawn at 512, then resized like EchoMimic (cv2 bilinear)
    assert small.shape == (2, 128, 128, 3)
    assert (small[0, 60, 80].int() - torch.tensor([250, 200, 10])).abs().max() <= 5  # left pupil, /4
    fewer = load_pose_frames(tmp_path / "pkl", 512, num_frames=1)
    assert torch.equal(fewer, ref[:1])
    with pytest.raises(EMOInputError, match="has 2 pose frames but the video needs 5"):
        load_pose_frames(tmp_path / "pkl", 512, num_frames=5)


def test_drawn_frames_from_pictures_and_video(tmp_path):
    drawn = np.stack([draw_pose(_face(dx=d)) for d in (-20, 0, 20)])  # [3, 512, 512, 3] uint8
    (tmp_path / "png").mkdir()
    for name, frame in zip(("f2.png", "f10.png", "f1.png"), drawn[[1, 2, 0]]):  # natural order: f1, f2, f10
        cv2.imwrite(str(tmp_path / "png" / name), frame[..., ::-1])  # cv2 writes BGR: the file holds our channels
    x = load_pose_frames(tmp_path / "png", 512)
    assert torch.equal(x, torch.from_numpy(drawn))
    assert torch.equal(pose_frames_from_images(torch.from_numpy(drawn).float() / 255, 512), x)  # a ComfyUI IMAGE
    with VideoWriter(tmp_path / "pose.mp4", 24) as w:
        w.write(drawn)
    v = load_pose_frames(tmp_path / "pose.mp4", 256, num_frames=2)
    assert v.shape == (2, 256, 256, 3)
    want = torch.from_numpy(np.stack([cv2.resize(f, (256, 256)) for f in drawn[:2]])).float()
    assert (v.float() - want).abs().mean() < 2.55  # H.264 4:2:0 blurs the thin lines a little


def test_bad_pose_input(tmp_path):
    with pytest.raises(EMOInputError, match="not found"):
        load_pose_frames(tmp_path / "nope", 512)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EMOInputError, match="holds no pose frames"):
        load_pose_frames(tmp_path / "empty", 512)
    gap = _write_pkls(tmp_path / "gap", [_face()] * 3)
    (gap / "1.pkl").unlink()
    with pytest.raises(EMOInputError, match="frame 1 is missing"):
        load_pose_frames(gap, 512)
    shutil.copyfile(gap / "0.pkl", gap / "frame.pkl")
    with pytest.raises(EMOInputError, match="not named by its frame number"):
        load_pose_frames(gap, 512)
    with pytest.raises(EMOInputError, match=r"0\.pkl holds an array \[10, 3\]"):
        load_pose_frames(_write_pkls(tmp_path / "short", [np.zeros((10, 3))]), 512)
    with pytest.raises(EMOInputError, match="NaN"):
        load_pose_frames(_write_pkls(tmp_path / "nan", [_face() * np.nan]), 512)
    portrait = example_portrait()
    (tmp_path / "photo").mkdir()
    cv2.imwrite(str(tmp_path / "photo" / "0.png"), portrait)
    with pytest.raises(EMOInputError, match="do not look like pose drawings"):
        load_pose_frames(tmp_path / "photo", 512)
    with pytest.raises(EMOInputError, match="crop them to a square"):
        pose_frames_from_images(np.zeros((1, 512, 1024, 3), np.uint8), 512)
    with pytest.raises(EMOInputError, match="all black"):
        pose_frames_from_images(np.zeros((2, 512, 512, 3), np.uint8), 512)


class _Payload:
    """Unpickling this would create a file: the pose reader must refuse it before anything runs."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_pickles_with_code_are_refused(tmp_path):
    marker = tmp_path / "ran"
    folder = _write_pkls(tmp_path / "evil", [_Payload(marker)])
    with pytest.raises(EMOInputError, match=r"refused to read .*0\.pkl.*io\.open"):
        load_pose_frames(folder, 512)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def pose_model(em, tmp_path_factory):
    """The pose set with a tiny random VAE attached (the fixture has none): 4 latent channels, 1/8 size."""
    from diffusers import AutoencoderKL
    model = load_model(_make_set(em, tmp_path_factory.mktemp("posesample") / "pose"), vae_path=False)
    torch.manual_seed(0)
    model.vae = AutoencoderKL(block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4,
                              latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 4,
                              up_block_types=["UpDecoderBlock2D"] * 4).eval()
    model.config.resolution = 64  # latent 8 x 8: enough to check the wiring, fast on a CPU
    return model


def test_pose_sampling_drives_each_frame_with_its_drawing(pose_model):
    """Each window's face-locator input holds the drawings of exactly its frames (frame i's drawing for latent frame
    i, windows shifted by 3 frames a step), only the passes with conditions get the features, and the pose frames
    are checked against the audio's frame count."""
    from fractions import Fraction

    from emo_model import EMOPipeline, EncodedAudio
    from emo_model.sampling.context_windows import context_windows
    pipe = EMOPipeline(pose_model)
    res, L = 64, 14
    face = torch.rand(res, res, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(res, res)
    mask[16:48, 16:48] = 1
    with pytest.raises(EMOInputError, match="pose frames"):
        pipe.encode_reference(face, mask)  # a pose model needs its drawings
    # frame i: a drawing whose pixel values encode i (distinct per frame, exact in uint8)
    frames = torch.stack([torch.full((res, res, 3), (i + 1) / 255) for i in range(L)])
    ref = pipe.encode_reference(face, mask, locator_frames=frames)
    dim = pose_model.audio_encoder.width
    tokens = torch.randn(L, 50, dim, generator=torch.Generator().manual_seed(2))
    audio = EncodedAudio(tokens, L, Fraction(24), torch.zeros(1, 320), 16000)
    seen = []
    hook = pose_model.face_locator.register_forward_hook(lambda m, a, o: seen.append(a[0].clone()))
    try:
        clips = list(pipe.sample(audio, ref, steps=2, frames_per_clip=8, motion_frames=2, seed=3))
    finally:
        hook.remove()
    assert sum(c.shape[0] for c in clips) == L and clips[0].shape[1:] == (res, res, 3)
    expected = [w for step in range(2) for w in context_windows(L, 8, 2, step, shift=3)]
    assert context_windows(L, 8, 2, 1, shift=3)[0][0] == 3
    assert len(seen) == len(expected)
    for x, w in zip(seen, expected):  # [1, 3, f, res, res]: frame j of the window is video frame w[j]
        assert torch.allclose(x[0, 0, :, 0, 0] * 255, torch.tensor(w, dtype=x.dtype) + 1, atol=1e-4)

    short = pipe.encode_reference(face, mask, locator_frames=frames[:L - 1])
    with pytest.raises(EMOInputError, match="pose frames"):
        next(pipe.sample(audio, short, steps=1, frames_per_clip=8, motion_frames=2))


def test_pose_sequences_are_uint8_from_the_start(tmp_path):
    """Pose frames are held as uint8 (0.75 MB a frame at 512²) from drawing to the face locator: no float32 copy
    of the sequence at any point (1,200 frames at 512² were 3.8 GB as float32). Checked on the peak of traced
    allocations while loading 40 frames: below 2 x the uint8 result (float32 would be 4 x)."""
    import tracemalloc
    lms = [_face(dx=i % 7) for i in range(40)]
    folder = _write_pkls(tmp_path / "pose", lms)
    tracemalloc.start()
    try:
        x = load_pose_frames(folder, 512)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert x.dtype == torch.uint8 and x.shape == (40, 512, 512, 3)
    assert peak < 2 * x.numpy().nbytes, (peak, x.numpy().nbytes)
    from emo_model.faces.pose import pose_frames_uint8
    assert pose_frames_uint8(x, 512) is x  # what the pipeline keeps: the same tensor, no copy
    assert torch.equal(pose_frames_uint8(x.float() / 255, 512), x)  # a float IMAGE: the one pixel rule
