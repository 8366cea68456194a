import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def no_real_hub(monkeypatch):
    """Nothing here may reach the internet: no endpoint or token from the environment, no offline switch."""
    for k in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "EMO_MODELS_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "5")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr("emo_model.download.fetch.RETRY_WAIT", 0.01)
    yield
    os.environ.pop("HF_ENDPOINT", None)
