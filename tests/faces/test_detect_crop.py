"""Face detection, crop and paste-back on real faces shipped in the scikit-image wheel.

skimage.data.astronaut() is a public-domain NASA portrait (Eileen Collins); the scenes below are
composed from it at test time. Only the built-in LBP detector is exercised here: it is the one a
fresh install has (YuNet/SCRFD need a file the user downloads; see docs/faces.md).
"""

import cv2
import numpy as np
import pytest
from skimage import data

from emo_model.errors import EMOCheckpointError, EMOInputError
from emo_model.faces.crop import (NoFaceError, crop, face_region_mask, find_crop, fit_color_match, paste_back,
                                 paste_mask, plan_crop)
from emo_model.faces.detect import BUILTIN, FaceBox, available_detectors, detect_faces, resolve_detector, scrfd_decode

# The astronaut's face (eyes to chin) in data.astronaut(), measured by eye: x 175..270, y 65..175.
FACE = (175, 65, 270, 175)


def head(side):
    """The astronaut's head and shoulders (280 px square around the face), resized to ``side``."""
    return cv2.resize(data.astronaut()[10:290, 90:370], (side, side), interpolation=cv2.INTER_AREA)


def contains(box, x, y):
    return box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1


@pytest.fixture(scope="module")
def hd_frame():
    """1920x1080 frame, flat blue-grey, the astronaut's head bottom-right (off-centre)."""
    f = np.empty((1080, 1920, 3), np.uint8)
    f[:] = (70, 90, 110)
    f[500:980, 1300:1780] = head(480)  # face centre near (1300 + 480 * 132/280, 500 + 480 * 110/280)
    return f


def test_one_face_in_astronaut():
    boxes = detect_faces(data.astronaut())
    assert len(boxes) == 1
    b = boxes[0]
    assert contains(b, (FACE[0] + FACE[2]) / 2, (FACE[1] + FACE[3]) / 2)
    assert 70 < b.width < 160 and 0.7 < b.score <= 1


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_face_raises_documented_error(kind):
    rng = np.random.default_rng(0)
    img = np.zeros((240, 320, 3), np.uint8) if kind == "blank" else rng.integers(0, 256, (240, 320, 3), np.uint8)
    with pytest.raises(NoFaceError) as e:
        find_crop(img)
    msg = str(e.value)
    assert isinstance(e.value, EMOInputError)
    for fix in ("MASK", "detector", "threshold", "whole image", "models/emo/face_detectors", "--detector-file",
                "face_detection_yunet_2023mar.onnx", BUILTIN):
        assert fix in msg, fix
    with pytest.raises(NoFaceError):
        plan_crop(img.shape[:2], [])


def test_two_faces_face_index_picks_largest_first():
    img = np.full((420, 900, 3), 128, np.uint8)
    img[70:270, 40:240] = head(200)      # small face, left
    img[20:400, 440:820] = head(380)     # large face, right
    boxes = detect_faces(img)
    assert len(boxes) == 2
    assert boxes[0].area > boxes[1].area
    assert boxes[0].center[0] > 440 and boxes[1].center[0] < 240
    big = plan_crop(img.shape[:2], boxes, face_index=0)
    small = plan_crop(img.shape[:2], boxes, face_index=1)
    assert big.box[2] > small.box[2]
    assert big.box[0] > 300 > small.box[0]
    with pytest.raises(EMOInputError, match="face_index 2"):
        plan_crop(img.shape[:2], boxes, face_index=2)


def test_hd_frame_off_centre_crop_and_paste_back(hd_frame):
    info = find_crop(hd_frame, resolution=256)
    x0, y0, side = info.box
    face_x, face_y = 1300 + 480 * 132 / 280, 500 + 480 * 110 / 280
    assert x0 < face_x < x0 + side and y0 < face_y < y0 + side
    ref = crop(hd_frame, info)
    assert ref.shape == (256, 256, 3) and ref.dtype == np.uint8
    fx0, fy0, fx1, fy1 = info.face_box
    assert 0 <= fx0 < fx1 <= 256 and 0 <= fy0 < fy1 <= 256
    assert 0.3 < (fx1 - fx0) / 256 < 0.7  # margin 0.5: the face is about half the crop

    # fake "generated" clip: the reference with a tint and a moving bright square
    gen = np.repeat(ref[None], 3, axis=0).astype(np.int16)
    gen = np.clip(gen * 0.8 + 30, 0, 255).astype(np.uint8)
    for i in range(3):
        gen[i, 10:30, 10 + 5 * i:30 + 5 * i] = 255
    out = paste_back(hd_frame, gen, info)
    assert out.shape == (3, 1080, 1920, 3) and out.dtype == np.uint8
    m = paste_mask(info)
    assert m.shape == (1080, 1920)
    outside = m == 0
    assert outside.mean() > 0.8
    for frame in out:
        assert np.array_equal(frame[outside], hd_frame[outside])  # bit-exact outside the feathered crop
    # inside, the clip changed and the frames differ from each other (the square moves)
    cx, cy = x0 + side // 2, y0 + side // 2
    assert m[cy, cx] == 1
    assert not np.array_equal(out[0], out[2])
    # colour match undid the tint: the pasted centre is closer to the original than the raw generation
    c = slice(cy - 20, cy + 20), slice(cx - 60, cx - 20)
    raw = cv2.resize(gen[0], (side, side))[side // 2 - 20:side // 2 + 20, side // 2 - 60:side // 2 - 20]
    err_matched = np.abs(out[0][c].astype(float) - hd_frame[c]).mean()
    err_raw = np.abs(raw.astype(float) - hd_frame[c]).mean()
    assert err_matched < 0.5 * err_raw


def test_color_match_is_fit_once_across_clips(hd_frame):
    info = find_crop(hd_frame, resolution=128)
    ref = crop(hd_frame, info)
    first = np.clip(ref.astype(np.int16) + 40, 0, 255).astype(np.uint8)[None]
    second = np.clip(ref.astype(np.int16) + 10, 0, 255).astype(np.uint8)[None]
    match = fit_color_match(hd_frame, first[0], info)
    assert match.shift[0] == pytest.approx(-40, abs=6)
    a = paste_back(hd_frame, second, info, color_match=match)
    b = paste_back(hd_frame, second, info, color_match=True)  # refit on this clip: would hide the change
    assert not np.array_equal(a, b)


def test_odd_size_comes_back_even():
    img = np.full((777, 1001, 3), 100, np.uint8)
    img[200:600, 300:700] = head(400)
    info = find_crop(img, resolution=128)
    gen = crop(img, info)[None].astype(np.float32) / 255  # float frames are accepted too
    out = paste_back(img, gen, info, color_match=False)
    assert out.shape == (1, 778, 1002, 3) and info.output_hw == (778, 1002)
    assert np.array_equal(out[0, 777], out[0, 776]) and np.array_equal(out[0, :, 1001], out[0, :, 1000])
    m = paste_mask(info)
    assert np.array_equal(out[0, :777, :1001][m == 0], img[m == 0])
    assert paste_mask(info, even=True).shape == (778, 1002)


@pytest.mark.parametrize("pad", ["replicate", "reflect"])
def test_crop_near_the_border(pad):
    img = np.full((400, 700, 3), 90, np.uint8)
    img[0:260, 0:260] = head(300)[40:, 40:]  # head cut by the top-left corner
    info = find_crop(img, resolution=128, pad=pad)
    x0, y0, side = info.box
    assert x0 < 0 and y0 < 0  # the square extends past the border, face stays centred
    ref = crop(img, info)
    assert ref.shape == (128, 128, 3)
    assert np.array_equal(ref[0, 0], img[0, 0]) if pad == "replicate" else ref.std() > 0
    out = paste_back(img, ref[None], info, color_match=False)
    assert out.shape == (1, 400, 700, 3)
    m = paste_mask(info)
    assert m[0, 0] == 1  # no feather along the picture border: there is no seam there
    assert np.array_equal(out[0][m == 0], img[m == 0])
    # identity round trip: pasting the unchanged crop gives back the picture (up to resampling)
    assert np.abs(out[0].astype(int) - img).mean() < 3


def test_mask_overrides_detection_and_whole_image():
    img = np.random.default_rng(1).integers(0, 256, (300, 500, 3), np.uint8)  # no face in here
    mask = np.zeros((300, 500), np.float32)
    mask[100:160, 300:340] = 1
    info = find_crop(img, mask=mask[None], resolution=64)  # [1, H, W] ComfyUI MASK layout
    assert info.mode == "mask"
    x0, y0, side = info.box
    assert side == 60 * 2
    assert x0 + side / 2 == pytest.approx(320, abs=1) and y0 + side / 2 == pytest.approx(130, abs=1)
    fm = face_region_mask(info, expand=1.0)
    assert fm.shape == (64, 64) and fm[32, 32] == 1 and fm[0, 0] == 0
    assert fm.sum() == pytest.approx(64 * 64 * (40 * 60) / side**2, rel=0.1)
    with pytest.raises(EMOInputError, match="empty"):
        find_crop(img, mask=np.zeros((300, 500)))
    with pytest.raises(EMOInputError, match="MASK is 10x20"):
        find_crop(img, mask=np.ones((20, 10)))
    whole = find_crop(img, whole_image=True, resolution=64)
    assert whole.mode == "whole" and whole.box == (100, 0, 300)
    assert face_region_mask(whole).min() == 1


def test_face_region_mask_union_over_clip():
    info = plan_crop((400, 400), FaceBox(150, 150, 250, 250), margin=0.5, resolution=200)
    boxes = [FaceBox(150, 150, 250, 250), FaceBox(170, 150, 270, 250)]  # head moves right
    one = face_region_mask(info, boxes[:1], expand=1.0)
    both = face_region_mask(info, boxes, expand=1.0)
    assert one.sum() == pytest.approx(100 * 100)  # crop side 200 px at 200 res: 1:1
    assert both.sum() == pytest.approx(120 * 100)
    assert np.all(both >= one)


def test_detector_choices(tmp_path):
    assert available_detectors(tmp_path) == [BUILTIN]
    assert available_detectors(tmp_path / "missing") == [BUILTIN]
    (tmp_path / "scrfd_10g_bnkps.onnx").write_bytes(b"x")
    (tmp_path / "face_detection_yunet_2023mar.onnx").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    labels = available_detectors(tmp_path)
    assert labels == [BUILTIN, "yunet: face_detection_yunet_2023mar.onnx", "scrfd: scrfd_10g_bnkps.onnx"]
    assert resolve_detector(labels[2], tmp_path) == ("scrfd", tmp_path / "scrfd_10g_bnkps.onnx")
    assert resolve_detector("auto", tmp_path)[0] == "yunet"
    assert resolve_detector("auto", None) == ("lbp", None)
    with pytest.raises(EMOCheckpointError, match="models/emo/face_detectors"):
        resolve_detector("yunet", tmp_path / "missing")
    with pytest.raises(EMOCheckpointError, match="OpenCV could not load"):  # a broken file: clear error
        detect_faces(data.astronaut(), labels[1], tmp_path)


def test_scrfd_decoding():
    """SCRFD head layout (insightface): per stride 8/16/32 a score [N, 1], distances [N, 4] in strides
    (left, top, right, bottom from the anchor centre), keypoints [N, 10]; 2 anchors per grid cell, row-major."""
    size, outs = 640, {}
    for stride in (8, 16, 32):
        n = (size // stride) ** 2 * 2
        outs[stride] = [np.zeros((1, n, 1), np.float32), np.ones((1, n, 4), np.float32),
                        np.zeros((1, n, 10), np.float32)]
    # stride 16, grid cell x=10, y=5, second anchor: centre (160, 80)
    k = (5 * (size // 16) + 10) * 2 + 1
    outs[16][0][0, k, 0] = 0.9
    outs[16][1][0, k] = (2, 3, 4, 5)
    outs[16][0][0, k - 1, 0] = 0.8  # same cell, first anchor: overlaps heavily -> removed by NMS
    outs[16][1][0, k - 1] = (2, 3, 4, 4.5)
    shuffled = [outs[32][2], outs[8][1], outs[16][0], outs[32][0], outs[16][2], outs[8][0], outs[16][1], outs[32][1],
                outs[8][2]]
    boxes, scores = scrfd_decode(shuffled, size, threshold=0.5)
    assert scores.tolist() == pytest.approx([0.9])
    assert boxes[0].tolist() == pytest.approx([160 - 32, 80 - 48, 160 + 64, 80 + 80])
    with pytest.raises(EMOCheckpointError, match="SCRFD"):
        scrfd_decode([np.zeros((1, 7, 3), np.float32)], size, 0.5)


def test_mouth_corners_place_hallo_lip_region():
    """With detector keypoints the crop records the mouth corners (crop pixels) and Hallo's lip mask is centred on
    them (a turned, raised, off-centre mouth here); without keypoints it falls back to where lips sit in a frontal
    face box, far from this mouth."""
    from emo_model.faces.crop import plan_crop
    from emo_model.faces.region_masks import region_masks
    kps = np.array([[110, 95], [165, 95], [135, 115], [110, 142], [150, 134]], np.float32)  # mouth at (130, 138)
    box = FaceBox(90, 60, 210, 200, 0.9, keypoints=kps)
    info = plan_crop((400, 300), [box], margin=0.5, resolution=512)
    x0, y0, side = info.box
    s = 512 / side
    assert np.allclose(info.mouth, [((110 - x0) * s, (142 - y0) * s), ((150 - x0) * s, (134 - y0) * s)], atol=1e-3)
    assert plan_crop((400, 300), [FaceBox(90, 60, 210, 200, 0.9)], resolution=512).mouth is None

    def centroid(levels):  # level 0 of a [1, 64*64] mask -> (x, y) in pixels of the 512 crop
        m = levels[0].reshape(64, 64).numpy() ** 4  # the peak, not the blur's long tail
        ys, xs = np.mgrid[0:64, 0:64]
        return (np.array([(xs * m).sum(), (ys * m).sum()]) / m.sum() + 0.5) * 8

    mask = face_region_mask(info)
    mouth_centre = np.mean(info.mouth, axis=0)
    with_mouth = centroid(region_masks(mask, 64, info.mouth)[2])
    frontal = centroid(region_masks(mask, 64)[2])
    print("mouth", mouth_centre, "lip mask centre", with_mouth, "frontal estimate", frontal)
    assert np.abs(with_mouth - mouth_centre).max() < 8       # within one latent pixel
    assert np.abs(frontal - mouth_centre).max() > 40


# ---------------------------------------------------------------- small faces in large pictures (issue 11 item 8)

def scene(side, face):
    """A ``side`` px square photo-like canvas (gradient + grain) with the astronaut's head pasted so that her face
    (eyes to chin, ~0.4 of the head crop) is about ``face`` px; returns (picture, face centre)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:side, :side]
    img = ((x / side * 120 + y / side * 60) + 40).astype(np.uint8)[..., None].repeat(3, -1)
    img += rng.integers(0, 12, img.shape, dtype=np.uint8)
    n = round(face * 280 / 110)  # head crop side for that face height
    oy, ox = int(0.6 * (side - n)), int(0.3 * (side - n))
    img[oy:oy + n, ox:ox + n] = head(n)
    return img, (ox + n * 132 / 280, oy + n * 110 / 280)


@pytest.mark.parametrize("side, face", [(2400, 150), (1000, 70)])
def test_small_face_in_large_picture(side, face):
    """Faces under 10 % of the short side were skipped by the built-in detector (a 150 px face in 2400 px, i.e. a
    400 px face in a 6000 px DSLR picture): the finer passes find them, down to ~64 px."""
    img, (cx, cy) = scene(side, face)
    boxes = detect_faces(img, "lbp")
    assert len(boxes) == 1 and contains(boxes[0], cx, cy)
    assert 0.6 * face < boxes[0].width < 2 * face


def clouds(side, seed=0):
    """A ``side`` px square of coloured cloud noise (four octaves) with grain: the texture the cascade fires on most
    easily (dark blobs pass for eyes), so it stands in for the worst of a big picture's background."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((side // 4, side // 4, 3), np.float32)
    for octave, amp in ((8, 60), (32, 40), (128, 25), (512, 15)):
        noise = rng.normal(0, 1, (octave, octave, 3)).astype(np.float32)
        acc += amp * cv2.resize(noise, acc.shape[1::-1], interpolation=cv2.INTER_CUBIC)
    img = cv2.resize(np.clip(acc + 110, 0, 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_LINEAR)
    return cv2.add(img, rng.integers(0, 16, img.shape, dtype=np.uint8))


def paste_face(img, face, cx, cy):
    """The astronaut picture scaled so that her face box (FACE) is ``face`` px tall, pasted with the face centred on
    (cx, cy); returns FACE there [x0, y0, x1, y1]."""
    k = face / (FACE[3] - FACE[1])
    n = round(512 * k)
    p = cv2.resize(data.astronaut(), (n, n), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
    ox, oy = round(cx - (FACE[0] + FACE[2]) / 2 * k), round(cy - (FACE[1] + FACE[3]) / 2 * k)
    img[oy:oy + n, ox:ox + n] = p
    return [ox + FACE[0] * k, oy + FACE[1] * k, ox + FACE[2] * k, oy + FACE[3] * k]


def iou(b, ref):
    iw = min(b.x1, ref[2]) - max(b.x0, ref[0])
    ih = min(b.y1, ref[3]) - max(b.y0, ref[1])
    inter = max(iw, 0) * max(ih, 0)
    return inter / (b.area + (ref[2] - ref[0]) * (ref[3] - ref[1]) - inter)


@pytest.fixture(scope="module")
def clouds6000():
    return clouds(6000)


def test_64px_face_in_6000px_picture_and_nothing_else(clouds6000):
    """A 6000 x 6000 picture (a DSLR shot) with one 64 px face: found with the right box, and nothing else in 36 Mpx
    of cloud texture, though every finer pass scans all of it (nothing larger is found first). The face sits where
    four of the finest pass's tiles overlap, so it is proposed four times and must come back once."""
    img = clouds6000.copy()
    ref = paste_face(img, 64, 3000, 3000)
    boxes = detect_faces(img, "lbp")
    assert len(boxes) == 1, boxes
    assert iou(boxes[0], ref) >= 0.5, (boxes[0], ref)


def test_512px_face_in_6000px_picture(clouds6000):
    img = clouds6000.copy()
    ref = paste_face(img, 512, 3300, 2800)
    boxes = detect_faces(img, "lbp")
    assert len(boxes) == 1 and iou(boxes[0], ref) >= 0.5, (boxes, ref)


def test_two_small_faces_face_index_still_picks_largest_first():
    """Two faces too small for the first pass (70 and 100 px in 2000 px of cloud texture) are found by the same finer
    pass; both come back, largest first, so face_index chooses between them as it does for large faces."""
    img = clouds(2000, seed=1)
    small, large = paste_face(img, 70, 500, 600), paste_face(img, 100, 1500, 1400)
    boxes = detect_faces(img, "lbp")
    assert len(boxes) == 2 and iou(boxes[0], large) >= 0.5 and iou(boxes[1], small) >= 0.5, boxes
    assert plan_crop(img.shape[:2], boxes, face_index=1).box[0] < 500 < plan_crop(img.shape[:2], boxes).box[0]


@pytest.mark.parametrize("h, w", [(512, 512), (1080, 1920), (2048, 2048), (4000, 6000), (6000, 6000), (9000, 16000)])
def test_passes_cover_every_face_size_from_64px(h, w):
    """The first pass and the finer ones together see every face size from LBP_SMALL_FACE px up, at any picture size:
    pass i at scale f sees faces of LBP_MIN_FACE / f to top / f source px."""
    from emo_model.faces import lbp_cascade as L
    s = min(L.LBP_WORK_SIDE / min(h, w), 4 * L.LBP_WORK_SIDE / max(h, w))
    seen = [(L.LBP_MIN_FACE / s, float("inf"))] + [(L.LBP_MIN_FACE / f, top / f) for f, top in L._fine_scales(h, w, s)]
    lo = min(a for a, _ in seen)
    assert lo <= L.LBP_SMALL_FACE * 1.01
    for a, _ in seen:  # each pass's smallest face is inside another pass's range, or the smallest of all
        assert a == lo or any(a2 < a <= b2 for a2, b2 in seen), seen


def test_tiles_cover_the_picture_and_every_small_square():
    from emo_model.faces.tiles import tiles
    for h, w, tile, overlap in [(3000, 3000, 2048, 71), (500, 700, 2048, 71), (2100, 2048, 2048, 71),
                                (6000, 4000, 1000, 100)]:
        ts = tiles(h, w, tile, overlap)
        assert all(y1 - y0 <= tile and x1 - x0 <= tile and 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
                   for y0, x0, y1, x1 in ts)
        for y in range(0, h - overlap + 1, 37):
            for x in range(0, w - overlap + 1, 41):
                assert any(y0 <= y and y + overlap <= y1 and x0 <= x and x + overlap <= x1 for y0, x0, y1, x1 in ts)
        assert len(ts) <= (-(-h // (tile - overlap))) * (-(-w // (tile - overlap)))


def test_group_and_nms_follow_opencv_rules():
    """_group (OpenCV's groupRectangles rule, scipy connected components) and _nms (cv2.dnn.NMSBoxes) against
    the rules written out: similar rects chain into one group; NMS keeps the best, drops IoU > 0.4 only."""
    from emo_model.faces.detect import _nms
    from emo_model.faces.lbp_cascade import _group
    rects = np.array([[0, 0, 40, 40], [6, 0, 40, 40], [12, 0, 40, 40], [200, 200, 40, 40]], np.float64)
    groups = sorted(_group(rects), key=lambda g: g[0][0])  # 0~6 and 6~12 are similar (<= 8 px): one chain of 3
    assert [n for _, n in groups] == [3, 1] and np.allclose(groups[0][0], [6, 0, 40, 40])
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [5, 0, 15, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.9, 0.8, 0.1], np.float32)
    # IoU(1, 0) = 9/11 > 0.4: dropped; IoU(1, 2) = 6/14 = 0.43 > 0.4: dropped; box 3 is apart
    assert _nms(boxes, scores, 0.4) == [1, 3]
    assert _nms(boxes, scores, 0.45) == [1, 2, 3]


def test_tiled_detect_maps_boxes_back_and_finds_a_face_on_a_seam_once():
    """YuNet's and SCRFD's second look (tiles.tiled_detect) with a stand-in for the network (the files are not in the
    repo): it finds bright squares in a tile and returns them in tile pixels with a keypoint at their centre. Each
    square must come back once, in source pixels, with its keypoint, whether it lies inside a tile, on a seam (cut
    in one tile, whole in the next) or on the picture's border."""
    from emo_model.faces.tiles import tiled_detect

    def bright_squares(tile):
        assert tile.shape[0] <= 640 and tile.shape[1] <= 640 and tile.flags.c_contiguous
        n, _, stats, cent = cv2.connectedComponentsWithStats((tile[..., 0] > 128).astype(np.uint8))
        return [FaceBox(x, y, x + w, y + h, 0.9, np.float32([[cx, cy]] * 5))
                for (x, y, w, h, _), (cx, cy) in zip(stats[1:], cent[1:])]

    img = np.zeros((2600, 4000, 3), np.uint8)
    # x, y, side (source px); at scale 0.25 the tiles are 580 x 405 px, from x 0 / 420 and y 0 / 245 (work px):
    # inside one tile, where four overlap, cut by a tile's right and bottom edge, on the picture's edges
    squares = [(400, 300, 64), (1900, 1280, 80), (2280, 600, 80), (700, 1600, 80), (3930, 2000, 70), (2500, 2530, 64)]
    for x, y, side in squares:
        img[y:y + side, x:x + side] = 255
    boxes = tiled_detect(img, 0.25, 640, 160, bright_squares)
    assert len(boxes) == len(squares), boxes
    for x, y, side in squares:
        b = min(boxes, key=lambda b: abs(b.x0 - x) + abs(b.y0 - y))
        assert np.allclose([b.x0, b.y0, b.x1, b.y1], [x, y, x + side, y + side], atol=4), (b, x, y, side)
        assert np.allclose(b.keypoints[0], [x + side / 2, y + side / 2], atol=4)
