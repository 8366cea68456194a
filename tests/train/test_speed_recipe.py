"""Stage 3's recipe for the speed layers: buckets placed on the data's speeds (also for a model started from `tiny`),
videos drawn evenly over the buckets, and first clips that start still at the reference's pose (the sampler's first
clip), where the speed is the only cue to how fast the head turns."""
import numpy as np
import pytest
import torch

from emo_model.train.batches import draw, make_batch, read_samples, speed_balance
from emo_model.train.config import TrainConfig
from emo_model.train.forward import encode_pixels
from emo_model.train.losses import NoiseSchedule
from emo_model.train.stages import build_model
from emo_model.train.trainer import run_stage


def test_a_model_from_tiny_gets_its_speed_buckets_from_the_data_in_stage_3(tmp_path, tiny_set):
    ds = tiny_set(videos=3)  # speeds 0, 1, 2 deg/frame
    r = run_stage(1, "memory", "tiny", tmp_path / "s1", 1, dataset=ds, batch=2, device="cpu", save_every=10)
    cfg1 = TrainConfig(stage=1, data="memory", init="tiny", out=str(tmp_path / "x"), steps=1)
    assert build_model(cfg1, tmp_path / "w1").speed_encoder is None  # stages 1-2: no speed layers yet
    cfg3 = TrainConfig(stage=3, data="memory", init=str(r["model"]), out=str(tmp_path / "y"), steps=1, frames=2,
                       motion_frames=1)
    speeds = np.array([0.0] * 20 + [1.0] * 20 + [3.0] * 20)
    m = build_model(cfg3, tmp_path / "w3", speeds)
    c = m.speed_encoder.centers
    assert float(c[0]) == pytest.approx(0.0) and float(c[-1]) == pytest.approx(3.0)  # 5-95 % of the data's speeds
    assert m.config.speed_value == pytest.approx(1.0)                                 # its median
    p = m.speed_encoder.phase_centers  # degrees turned since the clip began: up to 95 % speed x frames per clip
    assert float(p[0]) == 0.0 and float(p[-1]) == pytest.approx(3.0 * 2)


def test_speed_balance_draws_each_bucket_as_often(tiny_set):
    ds = tiny_set(videos=4)
    for v, sp in zip(ds.videos, [0.0, 0.1, 0.0, 3.0]):  # three slow videos, one fast
        v["speed"][:] = sp
    w = speed_balance(ds, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(w.numpy(), [1 / 3, 1 / 3, 1 / 3, 1.0])
    cfg = TrainConfig(stage=3, data="memory", init="x", out="y", frames=2, motion_frames=1)
    sched = NoiseSchedule(dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                               beta_end=0.012, prediction_type="epsilon"))
    picks = np.concatenate([draw(cfg, sched, len(ds), 8, 8, k, w).indices for k in range(100)])
    assert 0.4 < np.mean(picks == 3) < 0.6            # uniform drawing would give 0.25
    plain = np.concatenate([draw(cfg, sched, len(ds), 8, 8, k).indices for k in range(100)])
    assert 0.15 < np.mean(plain == 3) < 0.35
    for v in ds.videos:
        v["speed"][:] = 0.0
    assert speed_balance(ds, [0.0, 1.0]) is None      # one bucket: nothing to balance
    assert TrainConfig(stage=3, data="m", init="x", out="y").balance_speed
    with pytest.raises(Exception, match="speed-cfg"):
        TrainConfig(stage=3, data="m", init="x", out="y", speed_cfg=-1.0)
    assert not TrainConfig(stage=2, data="m", init="x", out="y").balance_speed


@pytest.mark.parametrize("start", ["hold", "reference"])
def test_a_first_clip_starts_still_at_the_frame_before_its_targets(tmp_path, tiny_set, tiny_model, start):
    from emo_model import load_model
    model = load_model(tiny_model).float()
    assert model.config.first_clip_motion == "reference"
    ds = tiny_set(frames=2, motion_frames=2, videos=2, length=24)
    cfg = TrainConfig(stage=3, data="memory", init=str(tiny_model), out=str(tmp_path), frames=2, motion_frames=2,
                      batch=2, first_clip=1.0, drop_reference=0.0, first_clip_start=start)
    assert TrainConfig(stage=3, data="m", init="x", out="y").first_clip == 0.5  # stage 3's default
    sched = NoiseSchedule(model.config.scheduler)
    d = draw(cfg, sched, len(ds), 2, model.config.latent_size, 0)
    samples = read_samples(ds, cfg, 0, d.indices)
    b = make_batch(model, cfg, samples, d, 0, None, 3)
    for k, s in enumerate(samples):
        before = encode_pixels(model, s["pixels"][1:2])[0]          # the frame just before the targets
        own_ref = encode_pixels(model, s["reference"][None])[0]
        want = before if start == "hold" else own_ref
        torch.testing.assert_close(b.reference[k], want, rtol=1e-4, atol=1e-5)
        for j in range(2):  # every motion frame is that still picture
            torch.testing.assert_close(b.motion[k, j], want, rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="hold"):
        TrainConfig(stage=3, data="m", init="x", out="y", first_clip_start="previous")


def test_stage_3_draws_more_of_the_noisiest_timesteps():
    sched = NoiseSchedule(dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                               prediction_type="v_prediction", rescale_betas_zero_snr=True))
    lat = torch.zeros(4000, 4, 1, 1, 1)
    late, _ = sched.sample(lat, torch.Generator().manual_seed(0), 0.0, "late")
    flat, _ = sched.sample(lat, torch.Generator().manual_seed(0), 0.0)
    assert late.min() >= 0 and late.max() <= 999
    assert abs(late.float().mean() - 666) < 20 and abs(flat.float().mean() - 500) < 20  # density rising linearly
    assert TrainConfig(stage=3, data="m", init="x", out="y").timesteps == "late"
    assert TrainConfig(stage=2, data="m", init="x", out="y").timesteps == "uniform"


def test_stage_3_writes_its_speed_guidance_into_the_model(tmp_path, tiny_set, tiny_model, capsys):
    """`train --stage 3 --speed-cfg G` (default SPEED_CFG): the saved model samples with G unless told otherwise;
    a negative value is refused before anything is written."""
    from emo_model import load_model
    from emo_model.cli import main
    ds = tiny_set(frames=2, motion_frames=1, videos=2)
    r = run_stage(3, "memory", str(tiny_model), tmp_path / "s3", 1, dataset=ds, frames=2, motion_frames=1,
                  device="cpu", save_every=10, speed_cfg=2.5)
    assert load_model(r["model"]).config.speed_cfg == 2.5
    assert main(["train", "--stage", "3", "--data", "nowhere", "--init", str(tiny_model), "--out",
                 str(tmp_path / "bad"), "--speed-cfg", "-1"]) == 2
    assert "--speed-cfg must be 0 or more" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_stage_2_can_draw_videos_evenly_over_speed_too(tmp_path, tiny_set, tiny_model):
    """`balance_speed` in stage 2 (no speed layers yet: the buckets stage 3 will make from the data's speeds): three
    still videos and one turning one, the turning one is drawn about half the time instead of a quarter. Footage
    of mostly still heads otherwise teaches stage 2 that the pose is the reference's (benchmarks/README.md)."""
    class Recording(tiny_set):
        def __getitem__(self, i):
            self.drawn.append(i)
            return super().__getitem__(i)

    shares = {}
    for balance in (False, True):
        ds = Recording(frames=2, motion_frames=1, videos=4)
        ds.drawn = []
        for v, sp in zip(ds.videos, [0.0, 0.0, 0.0, 2.0]):
            v["speed"][:] = sp
        run_stage(2, "memory", str(tiny_model), tmp_path / f"s2_{balance}", 12, dataset=ds, frames=2, motion_frames=1,
                  batch=4, device="cpu", save_every=100, balance_speed=balance)
        shares[balance] = np.mean(np.asarray(ds.drawn) == 3)
    assert shares[True] > 0.38 and shares[False] < 0.35, shares
