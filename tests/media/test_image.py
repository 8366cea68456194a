import numpy as np
import pytest
import torch
from PIL import Image

from emo_model.errors import EMOInputError
from emo_model.media.image import example_portrait, load_image, to_rgb_uint8, to_uint8_frames


def gradient(h=80, w=100):
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1).astype(np.uint8)


def test_rgb_png_roundtrip(tmp_path):
    rgb = gradient()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (80, 100, 3)
    np.testing.assert_array_equal(out, rgb)


def test_rgba_composited_over_white(tmp_path):
    rgba = np.zeros((64, 70, 4), np.uint8)
    rgba[..., 0] = 200                    # red
    rgba[:, :35, 3] = 255                 # left half opaque
    rgba[:, 35:, 3] = 0                   # right half transparent -> white
    Image.fromarray(rgba).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[0, -1], [255, 255, 255])
    half = to_rgb_uint8(np.concatenate([rgba[..., :3], np.full((64, 70, 1), 128, np.uint8)], -1))
    np.testing.assert_array_equal(half[0, 0], [227, 127, 127])  # 200*a + 255*(1-a) = 227.4, a = 128/255


def test_grayscale_palette_16bit(tmp_path):
    gray = gradient()[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    out = load_image(tmp_path / "l.png")
    assert out.shape == (80, 100, 3)
    np.testing.assert_array_equal(out[..., 1], gray)

    Image.fromarray(gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert out.shape == (80, 100, 3) and len(np.unique(out.reshape(-1, 3), axis=0)) <= 16

    g16 = (gray.astype(np.uint16) * 257)
    Image.fromarray(g16).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    out = load_image(tmp_path / "i16.png")
    np.testing.assert_array_equal(out[..., 2], gray)  # 16-bit scaled down, not clipped at 255


def test_exif_orientation_applied(tmp_path):
    rgb = gradient(64, 96)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (96, 64, 3)


def test_to_rgb_uint8_sources():
    rgb = gradient()
    np.testing.assert_array_equal(to_rgb_uint8(torch.from_numpy(rgb).float() / 255), rgb)   # float tensor 0..1
    np.testing.assert_array_equal(to_rgb_uint8(torch.from_numpy(rgb)[None].float() / 255), rgb)  # ComfyUI [1,H,W,3]
    np.testing.assert_array_equal(to_rgb_uint8(rgb[..., :1]), np.repeat(rgb[..., :1], 3, -1))
    np.testing.assert_array_equal(to_rgb_uint8(rgb[..., 0]), np.repeat(rgb[..., :1], 3, -1))
    assert to_rgb_uint8(np.full((64, 64, 3), 1.02, np.float32)).max() == 255  # small overshoot clipped


def test_errors(tmp_path):
    with pytest.raises(EMOInputError, match="not found"):
        load_image(tmp_path / "none.png")
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(EMOInputError, match="fake.png.*png, jpg"):
        load_image(tmp_path / "fake.png")
    Image.fromarray(gradient(32, 100)).save(tmp_path / "small.png")
    with pytest.raises(EMOInputError, match="100×32 px; EMO needs at least 64 px on each side: use a larger picture"):
        load_image(tmp_path / "small.png")
    with pytest.raises(EMOInputError, match="at least 64 px"):
        to_rgb_uint8(np.zeros((100, 32, 3), np.uint8))
    with pytest.raises(EMOInputError, match="divide by 255"):
        to_rgb_uint8(gradient().astype(np.float32))
    with pytest.raises(EMOInputError, match="single RGB image"):
        to_rgb_uint8(np.zeros((2, 64, 64, 3), np.uint8))


def test_example_portrait():
    img = example_portrait()
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    assert img.std() > 20  # a real picture, not a blank


# ---------------------------------------------------------------- the one pixel rule (to_uint8_frames), every caller

def test_pixel_rule_floats_ints_alpha(caplog):
    from emo_model.media import image as image_mod
    rgb = gradient(64, 64)
    f = rgb.astype(np.float32) / 255
    np.testing.assert_array_equal(to_uint8_frames(f), rgb[None])                       # float 0..1
    np.testing.assert_array_equal(to_uint8_frames(torch.from_numpy(f).half()[None]),    # fp16 tensor batch
                                  to_uint8_frames(torch.from_numpy(f).half().float()[None]))
    np.testing.assert_array_equal(to_uint8_frames(rgb.astype(np.uint16) * 257), rgb[None])  # 16-bit
    np.testing.assert_array_equal(to_uint8_frames(rgb.astype(np.int32)), rgb[None])         # small ints = 8-bit
    assert to_uint8_frames(np.ones((64, 64, 3), bool)).min() == 255
    out = to_uint8_frames(rgb)
    assert out.base is rgb or np.shares_memory(out, rgb)  # uint8 RGB is not copied
    image_mod._said.discard("clip")
    with caplog.at_level("WARNING", logger="emo_model.media.image"):
        a = to_uint8_frames(np.full((2, 8, 8, 3), 1.3, np.float32))
        b = to_uint8_frames(np.full((2, 8, 8, 3), -0.2, np.float32))
    assert a.min() == 255 and b.max() == 0
    assert sum("clipped" in r.message for r in caplog.records) == 1  # said once, not per call
    with pytest.raises(EMOInputError, match="divide by 255"):
        to_uint8_frames(np.full((1, 8, 8, 3), 200.0, np.float32))
    with pytest.raises(EMOInputError, match=r"x / 2 \+ 0.5"):
        to_uint8_frames(np.full((1, 8, 8, 3), -1.0, np.float32))
    with pytest.raises(EMOInputError, match="NaN"):
        to_uint8_frames(np.full((1, 8, 8, 3), np.nan, np.float32))
    with pytest.raises(EMOInputError, match="outside 0..65535"):
        to_uint8_frames(np.full((1, 8, 8, 3), -3, np.int32))
    rgba = np.zeros((1, 8, 8, 4), np.float32)
    rgba[..., 0], rgba[..., 3] = 1.0, 0.6  # 60 % opaque red over white: 255 * 0.4 = 102 in G and B
    np.testing.assert_array_equal(to_uint8_frames(rgba)[0, 0, 0], [255, 102, 102])
    np.testing.assert_array_equal(to_uint8_frames((rgba * 255).round().astype(np.uint8))[0, 0, 0], [255, 102, 102])
    gray_alpha = np.zeros((1, 8, 8, 2), np.uint8)
    np.testing.assert_array_equal(to_uint8_frames(gray_alpha)[0, 0, 0], [255, 255, 255])  # transparent -> white


def test_every_module_uses_the_one_rule(tmp_path):
    """Face detection, crop, paste back, colour match, video writing and the nodes' helpers convert through
    media.image: a 0..255 float picture is refused everywhere (it used to be clipped to white in four of them), and
    alpha is composited over white everywhere (it used to be dropped by the detector and refused by the writer)."""
    from emo_model.faces import crop as face_crop
    from emo_model.faces.detect import detect_faces
    from emo_model.media.video import VideoWriter, probe
    big = gradient(96, 96).astype(np.float32)  # 0..255 floats
    with pytest.raises(EMOInputError, match="divide by 255"):
        detect_faces(big, "lbp")
    info = face_crop.plan_crop((96, 96), None, None, True, 0.5, 64, 0, "replicate")
    with pytest.raises(EMOInputError, match="divide by 255"):
        face_crop.crop(big, info)
    with pytest.raises(EMOInputError, match="divide by 255"):
        face_crop.paste_back(gradient(96, 96), np.full((1, 64, 64, 3), 255.0, np.float32), info)
    with pytest.raises(EMOInputError, match="divide by 255"):
        with VideoWriter(tmp_path / "a.mp4", 25) as w:
            w.write(np.full((1, 64, 64, 3), 255.0, np.float32))
    rgba = np.zeros((2, 64, 64, 4), np.uint8)  # fully transparent -> white in every module
    with VideoWriter(tmp_path / "b.mp4", 25) as w:
        w.write(rgba)
    assert probe(tmp_path / "b.mp4")["frames"] == 2
    np.testing.assert_array_equal(face_crop.crop(np.zeros((96, 96, 4), np.uint8), info), np.full((64, 64, 3), 255))
