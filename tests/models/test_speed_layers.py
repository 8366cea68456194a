"""EMO's speed layers: bucket features, and the phase layout this pack's stage 3 trains (each frame told how far the
head has turned since the clip began, attended by that frame only)."""
import torch

from emo_model.models.speed_layers import SpeedEncoder
from emo_model.models.temporal_module import TemporalTransformer


def _enc(phase: bool, tokens: int = 1):
    torch.manual_seed(0)
    kw = dict(phase_centers=[0.0, 8.0, 16.0, 24.0], phase_radii=[8.0] * 4, tokens=tokens) if phase else {}
    return SpeedEncoder([0.0, 1.0, 2.0, 3.0], [1.0] * 4, window=2, dim=16, hidden=32, **kw)


def test_a_constant_speed_gives_each_frame_its_own_features_only_with_phase():
    speed = torch.full((2, 6), 2.0)
    plain, phased = _enc(False)(speed), _enc(True)(speed)
    assert plain.shape == (2, 6, 16) and phased.shape == (2, 6, 1, 16)
    assert torch.allclose(plain[:, 0], plain[:, 3])          # EMO's layout: the same vector on every frame
    assert not torch.allclose(phased[:, 0], phased[:, 3])    # phase: frame 3 has turned 8 deg, frame 0 2 deg
    still = _enc(True)(torch.zeros(1, 6))
    assert torch.allclose(still[:, 0], still[:, 5])          # no turn: nothing to tell the frames apart
    several = _enc(True, tokens=3)
    assert several(speed).shape == (2, 6, 3, 16) and several.dim == 16


def test_phase_features_are_attended_frame_by_frame():
    """A change in frame 2's speed features changes frame 2's output of a temporal block alone; in EMO's layout every
    frame attends to every frame's features."""
    torch.manual_seed(1)
    block = TemporalTransformer(32, 2, 16, speed_dim=16).eval()
    with torch.no_grad():
        for p in block.parameters():  # zero-initialised outputs would hide the wiring
            if p.ndim >= 2 and not p.any():
                p.normal_(0, 0.2)
    x = torch.randn(1, 32, 5, 2, 2)
    for local in (True, False):
        feats = torch.randn(1, 5, 3, 16) if local else torch.randn(1, 5, 16)
        changed = feats.clone()
        changed[:, 2] += 1.0
        with torch.no_grad():
            diff = (block(x, changed) - block(x, feats)).abs().amax(dim=(0, 1, 3, 4))  # per frame
        if local:
            assert diff[2] > 1e-3 and torch.all(diff[[0, 1, 3, 4]] < 1e-6), diff
        else:
            assert torch.all(diff > 1e-4), diff
