"""Fixtures of the trainer's tests. The data set lives in tiny_talking_set.py, a module with its own name: the
2-process test pickles its class into spawned workers, and a class defined in `conftest` would be looked up in
whichever `conftest` comes first on their sys.path (tests/download's puts itself first)."""
import pytest
from tiny_talking_set import TinyTalkingSet


@pytest.fixture
def tiny_set():
    return TinyTalkingSet


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random native model (the session's one torch thread comes from tests/conftest.py)."""
    from emo_model import make_tiny
    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")
