import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO_FIXTURES = Path(__file__).resolve().parent / "fixtures"  # hallo-tiny/, echomimic-tiny/ (see their READMEs)


def fixtures_dir() -> Path:
    """Parity fixtures: $EMO_FIXTURES (another folder of sets laid out the same way), else the repo's tests/fixtures."""
    env = os.environ.get("EMO_FIXTURES")
    return Path(env) if env else REPO_FIXTURES


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every model in the tests is tiny: on a shared 2-core machine extra torch threads cost more than they give
    (OpenMP threads spin while other processes hold the cores; EchoMimic's sampling test: 36 s -> 4 s)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    path = fixtures_dir()
    if not path.is_dir():
        raise FileNotFoundError(
            f"parity fixtures not found at {path}: set EMO_FIXTURES to a folder that holds "
            "hallo-tiny/ and echomimic-tiny/, or unset it to use the repo's tests/fixtures")
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random model in the native format, made once per test session."""
    from emo_model import make_tiny
    return make_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    from emo_model import EMOPipeline, load_model
    return EMOPipeline(load_model(tiny_dir))
