"""A model trained on `prepare-data --whole-frame` data records it in its config (and a LoRA in its metadata), and
rendering then frames the whole picture without face detection (said once in the log) unless told otherwise:
`render --no-whole-image` / a named detector on the CLI, a named detector or a mask in EMO Reference Encode."""
import logging

import numpy as np
import pytest
import torch

from emo_model import load_model
from emo_model.errors import EMOInputError
from emo_model.sampling.reference import prepare_reference
from emo_model.train.config import TrainConfig
from emo_model.train.lora import add_lora, apply_lora, save_lora
from emo_model.train.trainer import open_data, run_stage

NOTE = "trained on whole-frame data"


def _blank(h=80, w=120):
    """A flat grey picture: no detector finds a face in it."""
    return np.full((h, w, 3), 128, np.uint8)


def test_training_records_whole_frame_data_in_the_model_config(tmp_path, tiny_set):
    ds = tiny_set()
    ds.whole_frame = True
    r = run_stage(1, "memory", "tiny", tmp_path / "run", 1, dataset=ds, batch=2, device="cpu")
    assert load_model(r["model"]).config.whole_frame is True
    ds.whole_frame = False
    r = run_stage(1, "memory", "tiny", tmp_path / "run2", 1, dataset=ds, batch=2, device="cpu")
    assert load_model(r["model"]).config.whole_frame is False


def test_prepared_whole_frame_folder_is_read_as_whole_frame(tmp_path):
    from emo_model.train import data_format as fmt
    from emo_model.train import synthetic as s
    from emo_model.train.prepare import prepare_data
    v = tmp_path / "videos"
    v.mkdir()
    s.talking_video(v / "a.mp4", 1, 1, 1.0, size=64)
    for whole in (True, False):
        data = tmp_path / f"data{whole}"
        if whole:
            prepare_data(v, data, resolution=64, whole_frame=True, progress=False)
        else:  # the detector cannot see drawn faces: a folder written as a face-tracked one would be
            fmt.write_format(data, fmt.DataFormat(resolution=64, whole_frame=False, detector="lbp"))
            (data / fmt.INDEX_FILE).write_text((tmp_path / "dataTrue" / fmt.INDEX_FILE).read_text())
            (data / fmt.CLIPS_DIR).symlink_to(tmp_path / "dataTrue" / fmt.CLIPS_DIR)
        cfg = TrainConfig(stage=1, data=str(data), init="tiny", out=str(tmp_path / "run"), steps=1, resolution=64)
        assert open_data(cfg)[4] is whole


def test_render_frames_the_whole_picture_for_a_whole_frame_model(tiny_model, caplog):
    model = load_model(tiny_model)
    with pytest.raises(EMOInputError, match="no face found"):  # an ordinary model looks for a face
        prepare_reference(model, _blank(), identity="zero")
    model.config.whole_frame = True
    with caplog.at_level(logging.INFO, logger="emo_model"):
        p = prepare_reference(model, _blank(), identity="zero")
    assert p.crop.mode == "whole" and p.crop.box == (20, 0, 80)  # the centred square of the 120 x 80 picture
    assert sum(NOTE in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(EMOInputError, match="no face found"):  # told otherwise
        prepare_reference(model, _blank(), whole_image=False, identity="zero")
    mask = np.zeros((80, 120), np.float32)
    mask[20:50, 40:70] = 1
    assert prepare_reference(model, _blank(), face_mask=mask, identity="zero").crop.mode == "mask"


def test_cli_render_whole_frame_model_and_no_whole_image(tmp_path, tiny_model, capsys):
    import cv2

    from emo_model.cli import main
    from emo_model.formats.load import save_native
    model = load_model(tiny_model)
    model.config.whole_frame = True
    folder = save_native(model, tmp_path / "model")
    cv2.imwrite(str(tmp_path / "grey.png"), _blank())
    wav = tmp_path / "a.wav"
    import av
    with av.open(str(wav), "w") as c:
        st = c.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000 // 5), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for pkt in st.encode(frame):
            c.mux(pkt)
        for pkt in st.encode(None):
            c.mux(pkt)
    args = ["render", "--model", str(folder), "--image", str(tmp_path / "grey.png"), "--audio", str(wav),
            "--steps", "1", "--device", "cpu", "--identity", "zero"]
    assert main(args + ["--out", str(tmp_path / "o.mp4")]) == 0
    err = capsys.readouterr().err
    assert err.count(NOTE) == 1 and (tmp_path / "o.mp4").stat().st_size > 0
    assert main(args + ["--out", str(tmp_path / "o2.mp4"), "--no-whole-image"]) == 2
    assert "no face found" in capsys.readouterr().err and not (tmp_path / "o2.mp4").exists()
    assert main(args + ["--out", str(tmp_path / "o3.mp4"), "--detector", "lbp"]) == 2


def test_lora_trained_on_whole_frame_data_carries_it(tmp_path, tiny_model):
    base = load_model(tiny_model)
    adapted = load_model(tiny_model)
    add_lora(adapted, 2)
    whole = save_lora(adapted, tmp_path / "w.safetensors", 2, None, 2, whole_frame=True)
    plain = save_lora(adapted, tmp_path / "p.safetensors", 2, None, 2)
    assert apply_lora(load_model(tiny_model), plain).config.whole_frame is False
    assert apply_lora(load_model(tiny_model), whole, 0.0).config.whole_frame is False
    assert apply_lora(base, whole).config.whole_frame is True
