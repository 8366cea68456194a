"""ArcFace face embedding through cv2.dnn, checked against torch on tiny ONNX files exported at test time.

The real glintr100.onnx (250 MB) is not needed: a tiny net with ArcFace's input/output ([1, 3, 112, 112]
-> [1, 512]) is exported with torch's TorchScript exporter, and a fake SCRFD (constant head outputs that
place faces with known keypoints) drives the whole detect -> align -> embed chain. The picture is
skimage's astronaut (public domain).
"""

import cv2
import numpy as np
import pytest
import torch
from skimage import data
from torch import nn

from emo_model.errors import EMOCheckpointError, EMOInputError
from emo_model.faces.detect import detect_faces
from emo_model.faces.embedding import (ARCFACE_DST, FaceEmbedder, align_face, alignment_matrix, face_embedding,
                                      find_embedding_model, find_keypoint_detector, input_normalisation,
                                      onnx_node_names)

# The astronaut's 5 points (YuNet on data.astronaut(), rounded): eyes, nose tip, mouth corners, image-left first.
KPS = np.array([[200.1, 101.8], [247.1, 102.6], [220.4, 124.5], [198.6, 142.8], [239.7, 143.6]], np.float32)


def export(net: nn.Module, path, shape=(1, 3, 112, 112)):
    """torch.onnx.export (TorchScript exporter). Without the onnx package it only fails in the step that
    splices onnxscript custom functions into the proto; our nets have none, so that step is skipped."""
    with pytest.MonkeyPatch.context() as mp:
        try:
            import onnx  # noqa: F401
        except ImportError:
            from torch.onnx._internal.torchscript_exporter import onnx_proto_utils
            mp.setattr(onnx_proto_utils, "_add_onnxscript_fn", lambda proto, custom_opsets: proto)
        torch.onnx.export(net.eval(), torch.zeros(shape), str(path), dynamo=False, input_names=["data"])
    return path


class TinyArcFace(nn.Module):
    """ArcFace-shaped: [1, 3, side, side] normalised RGB -> [1, dim]; random weights, colour-sensitive."""

    def __init__(self, dim=512, side=112, raw_input=False):
        super().__init__()
        torch.manual_seed(0)
        self.raw_input = raw_input
        self.conv = nn.Conv2d(3, 8, 5, stride=4, padding=2)
        self.act = nn.PReLU(8)
        self.bn = nn.BatchNorm2d(8)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)
        self.fc = nn.Linear(8 * (side // 4) ** 2, dim)

    def forward(self, x):
        if self.raw_input:  # mxnet-converted ArcFace files normalise inside the graph (Sub, Mul first)
            x = (x - 127.5) * 0.0078125
        return self.fc(self.bn(self.act(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def arcface(tmp_path_factory):
    net = TinyArcFace()
    return net, export(net, tmp_path_factory.mktemp("arc") / "glintr100.onnx")


def similarity_lstsq(src, dst):
    """Least-squares similarity [2, 3] (x' = a x - b y + tx, y' = b x + a y + ty), solved directly."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src.astype(np.float64), dst.astype(np.float64)):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def torch_embedding(net, crop_rgb, raw=False):
    x = torch.from_numpy(crop_rgb.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        return net(x if raw else (x - 127.5) / 127.5)[0].numpy()


def test_alignment_is_insightface_norm_crop():
    img = data.astronaut()
    # known transform: source -> crop, scale 1/2.4, rotated 14 degrees, shifted
    t = np.deg2rad(14.0)
    m_true = np.array([[np.cos(t), -np.sin(t), -60.0], [np.sin(t), np.cos(t), 20.0]]) / 2.4
    m_inv = cv2.invertAffineTransform(m_true)
    exact = (ARCFACE_DST.astype(np.float64) @ m_inv[:, :2].T + m_inv[:, 2]).astype(np.float32)
    assert np.allclose(alignment_matrix(exact), m_true, atol=1e-5)
    # real (noisy) points: the least-squares similarity, and the crop OpenCV makes with it
    m = alignment_matrix(KPS)
    assert np.allclose(m, similarity_lstsq(KPS, ARCFACE_DST), atol=1e-5)
    assert np.allclose(m[:, :2] @ KPS.T + m[:, 2:], ARCFACE_DST.T, atol=5.0)  # eyes, nose, mouth land on the template
    crop = align_face(img, KPS)
    ref = cv2.warpAffine(img, similarity_lstsq(KPS, ARCFACE_DST), (112, 112), borderValue=0.0)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    assert np.abs(crop.astype(int) - ref).max() <= 1
    # a face near the border: outside the picture is black, as insightface's warpAffine(borderValue=0)
    assert align_face(img, KPS - 180)[:20, :20].max() == 0
    with pytest.raises(EMOInputError, match="5 \\(x, y\\) points"):
        alignment_matrix(KPS[:3])
    with pytest.raises(EMOInputError, match="one spot"):
        alignment_matrix(np.full((5, 2), 50.0))


def test_embedding_matches_torch_and_insightface_colour_order(arcface):
    net, path = arcface
    img = data.astronaut()
    emb = FaceEmbedder(path).embed(img, KPS)
    assert emb.shape == (512,) and emb.dtype == np.float32
    assert input_normalisation(path) == (127.5, 127.5)
    # torch on the crop from an independent alignment (direct least squares + cv2.warpAffine), RGB order
    crop = cv2.warpAffine(img, similarity_lstsq(KPS, ARCFACE_DST), (112, 112), borderValue=0.0)
    ref = torch_embedding(net, crop)
    assert np.abs(emb - ref).max() <= 2e-3 * np.abs(ref).max()
    # insightface's own steps: given BGR (cv2.imread / Hallo's RGB2BGR), norm_crop on BGR, blob swapRB=True
    bgr = np.ascontiguousarray(img[..., ::-1])
    aimg = cv2.warpAffine(bgr, alignment_matrix(KPS), (112, 112), borderValue=0.0)
    blob = cv2.dnn.blobFromImages([aimg], 1.0 / 127.5, (112, 112), (127.5, 127.5, 127.5), swapRB=True)
    with torch.no_grad():
        insight = net(torch.from_numpy(blob))[0].numpy()
    assert np.allclose(emb, insight, rtol=1e-4, atol=1e-4 * np.abs(insight).max())
    assert abs(np.linalg.norm(emb) - 1) > 0.1  # raw embedding, not L2-normalised (Hallo uses face.embedding)
    # the colour order matters: BGR in gives a clearly different embedding
    wrong = FaceEmbedder(path).embed(bgr, KPS)
    assert np.abs(wrong - emb).max() > 20 * np.abs(emb - insight).max() + 1e-3


def test_mxnet_style_file_takes_raw_pixels(tmp_path):
    net = TinyArcFace(raw_input=True)
    path = export(net, tmp_path / "r100.onnx")
    assert onnx_node_names(path)[:4] == ["/Constant", "/Sub", "/Constant_1", "/Mul"]
    assert input_normalisation(path) == (127.5, 127.5)  # torch names ("/Sub") are not insightface's mxnet names
    data_ = path.read_bytes()  # rename the nodes as mxnet's converter does (same length: proto stays valid)
    path.write_bytes(data_.replace(b"\x1a\x04/Sub", b"\x1a\x04Sub0").replace(b"\x1a\x04/Mul", b"\x1a\x04Mul0"))
    assert onnx_node_names(path)[1:4] == ["Sub0", "/Constant_1", "Mul0"]
    assert input_normalisation(path) == (0.0, 1.0)
    emb = FaceEmbedder(path).embed(data.astronaut(), KPS)
    ref = torch_embedding(net, align_face(data.astronaut(), KPS), raw=True)
    assert np.allclose(emb, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_not_an_arcface_file(tmp_path):
    with pytest.raises(EMOCheckpointError, match="not an ArcFace.*\\(1, 256\\)"):
        FaceEmbedder(export(TinyArcFace(dim=256), tmp_path / "a.onnx"))
    with pytest.raises(EMOCheckpointError, match="not an ArcFace.*OpenCV could not run it"):
        FaceEmbedder(export(TinyArcFace(side=64), tmp_path / "b.onnx", (1, 3, 64, 64)))
    (tmp_path / "glintr100.onnx").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(EMOCheckpointError, match="glintr100.onnx is not an ArcFace"):
        FaceEmbedder(tmp_path / "glintr100.onnx")
    with pytest.raises(EMOCheckpointError, match="not found"):
        FaceEmbedder(tmp_path / "missing.onnx")


def test_finding_files(tmp_path):
    assert find_embedding_model(tmp_path) is None and find_embedding_model(None) is None
    assert find_keypoint_detector(tmp_path) is None
    models = tmp_path / "models"  # Hallo: pretrained_models/face_analysis/models/
    models.mkdir()
    for name in ("w600k_r50.onnx", "glintr100.onnx", "face_detection_yunet_2023mar.onnx", "1k3d68.onnx"):
        (models / name).write_bytes(b"x")
    assert find_embedding_model(tmp_path) == models / "glintr100.onnx"
    assert find_embedding_model(models, names=("w600k_r50.onnx",)) == models / "w600k_r50.onnx"
    assert find_keypoint_detector(models) == models / "face_detection_yunet_2023mar.onnx"
    (models / "scrfd_10g_bnkps.onnx").write_bytes(b"x")
    assert find_keypoint_detector(models) == models / "scrfd_10g_bnkps.onnx"  # Hallo's detector first


def test_embedding_model_without_keypoint_detector(arcface, tmp_path):
    (tmp_path / "glintr100.onnx").write_bytes(arcface[1].read_bytes())
    with pytest.raises(EMOInputError) as e:
        face_embedding(data.astronaut(), tmp_path)
    for part in ("scrfd_10g_bnkps.onnx", str(tmp_path), "face_detection_yunet_2023mar.onnx", "zero embedding"):
        assert part in str(e.value), part
    with pytest.raises(EMOCheckpointError, match="no face-embedding model"):
        face_embedding(data.astronaut(), (tmp_path / "empty").mkdir() or tmp_path / "empty")


class FakeSCRFD(nn.Module):
    """SCRFD's 9 head outputs for a 640 px input (scores, box distances, keypoint offsets at strides 8, 16, 32,
    2 anchors per cell), constant: the faces are placed by hand, in input pixels."""

    def __init__(self, faces):
        super().__init__()
        outs = {}
        for stride in (8, 16, 32):
            n = (640 // stride) ** 2 * 2
            outs[stride] = [torch.zeros(n, 1), torch.ones(n, 4), torch.zeros(n, 10)]
        for stride, cell_x, cell_y, box, kps, score in faces:
            k = (cell_y * (640 // stride) + cell_x) * 2
            cx, cy = cell_x * stride, cell_y * stride
            outs[stride][0][k] = score
            outs[stride][1][k] = torch.tensor([cx - box[0], cy - box[1], box[2] - cx, box[3] - cy]) / stride
            outs[stride][2][k] = torch.from_numpy((kps - [cx, cy]).reshape(-1) / stride)
        self.outs = [o for s in (8, 16, 32) for o in outs[s]]  # insightface order: all scores, boxes, kps

    def forward(self, x):
        zero = x.mean() * 0
        return tuple(o + zero for o in self.outs[0::3] + self.outs[1::3] + self.outs[2::3])


def test_face_embedding_detect_align_embed(arcface, tmp_path):
    img = np.ascontiguousarray(data.astronaut()[:400])  # 400 x 512: letterboxed to 640 x 500, scale 1.25
    s = 1.25
    small_kps = KPS * 0.4 + [330, 250]  # a second, smaller "face" elsewhere
    faces = [(16, 14, 8, np.array([170, 60, 275, 180]) * s, KPS * s, 0.9),
             (8, 66, 46, np.array([400, 270, 450, 320]) * s, small_kps * s, 0.95)]
    det = export(FakeSCRFD(faces), tmp_path / "scrfd_10g_bnkps.onnx", (1, 3, 640, 640))
    model = tmp_path / "glintr100.onnx"
    model.write_bytes(arcface[1].read_bytes())

    boxes = detect_faces(img, "scrfd", det)
    assert len(boxes) == 2 and boxes[0].area > boxes[1].area
    assert np.allclose(boxes[0].keypoints, KPS, atol=1e-3) and np.allclose(boxes[1].keypoints, small_kps, atol=1e-3)
    assert boxes[0].x0 == pytest.approx(170, abs=1e-3) and boxes[0].y1 == pytest.approx(180, abs=1e-3)

    emb = FaceEmbedder(model).embed(img, KPS)
    largest = face_embedding(img, model)  # detector found beside the model (Hallo's folder layout)
    assert np.allclose(largest, emb, rtol=1e-4, atol=1e-4 * np.abs(emb).max())
    second = face_embedding(img, tmp_path, detector_path=det, face_index=1)
    assert np.allclose(second, FaceEmbedder(model).embed(img, small_kps), rtol=1e-4, atol=1e-4 * np.abs(emb).max())
    assert not np.allclose(second, largest, atol=1e-2 * np.abs(emb).max())
    with pytest.raises(EMOInputError, match="face_index 2 but 2 face"):
        face_embedding(img, model, face_index=2)
    with pytest.raises(EMOInputError, match="no face found by scrfd.*zero embedding"):
        face_embedding(img, model, threshold=0.99)


def test_hallo_layout_is_found(arcface, tmp_path, fixtures):
    """prepare_reference's identity="auto" (the CLI's and the node's) on Hallo's own layout (pretrained_models/hallo/net.pth beside
    pretrained_models/face_analysis/models/{glintr100,scrfd_10g_bnkps}.onnx) gives the embedding of the largest face;
    "zero", a non-Hallo model and a layout without the files give None (Hallo's no-face fallback)."""
    from emo_model import load_model
    from emo_model.faces.embedding import identity_embedding, identity_model_folders
    from emo_model.sampling.reference import reference_identity as _identity
    img = np.ascontiguousarray(data.astronaut()[:400])
    s = 1.25
    faces = [(16, 14, 8, np.array([170, 60, 275, 180]) * s, KPS * s, 0.9)]
    models = tmp_path / "pretrained_models" / "face_analysis" / "models"
    models.mkdir(parents=True)
    export(FakeSCRFD(faces), models / "scrfd_10g_bnkps.onnx", (1, 3, 640, 640))
    (models / "glintr100.onnx").write_bytes(arcface[1].read_bytes())
    ckpt = tmp_path / "pretrained_models" / "hallo" / "net.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    assert identity_model_folders(ckpt) == [models]
    expected = FaceEmbedder(models / "glintr100.onnx").embed(img, KPS)
    got = identity_embedding(img, identity_model_folders(ckpt))
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert identity_embedding(img, identity_model_folders(tmp_path / "elsewhere" / "net.pth")) is None

    model = load_model(fixtures / "hallo-tiny" / "net.pth", vae_path=False)
    model.sources["checkpoint"] = ckpt
    assert _identity(model, img, "zero") is None
    emb = _identity(model, img, "auto")  # the tiny projection takes a shorter embedding: only the lookup is checked
    assert np.allclose(emb, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    model.sources["checkpoint"] = tmp_path / "elsewhere" / "net.pth"
    assert _identity(model, img, "auto") is None
