import numpy as np
import pytest
import torch
from PIL import Image

from emo_model.errors import EMOInputError
from emo_model.media.image import example_portrait, load_image, to_rgb_uint8


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
