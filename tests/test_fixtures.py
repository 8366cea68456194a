"""The parity fixtures ship with the repository (tests/fixtures): both sets are complete, small, and not dropped by
git (a fresh clone must pass the test suite with nothing beside it)."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_FIXTURES = Path(__file__).resolve().parent / "fixtures"  # what tests/conftest.py uses without EMO_FIXTURES

LIMIT = 11 * 2**20  # 11 MiB for all sets together (echomimic-v2-tiny borrows echomimic-tiny's UNet files: +0.85 MiB;
#                     hallo2-tiny borrows hallo-tiny's net.pth, wav2vec2 and inputs: +0.4 MiB)
FILE_LIMIT = 4 * 2**20  # per file: a snapshot of the repository (GitHub fetchers, archives) may drop larger files

COMMON = ["README.md", "fixture_meta.json", "tiny_inference_config.json", "scheduler_config.json",
          "audio.safetensors", "face_locator.safetensors", "unet_forward.safetensors",
          "unet_forward_intermediates.safetensors", "sampling.safetensors"]
SETS = {
    "hallo-tiny": COMMON + ["net.pth", "stable-diffusion-v1-5/unet/config.json",
                            "wav2vec/wav2vec2-base-960h/config.json", "wav2vec/wav2vec2-base-960h/model.safetensors",
                            "wav2vec/wav2vec2-base-960h/preprocessor_config.json"],
    "echomimic-tiny": COMMON + ["reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "face_locator.pth",
                                "audio_processor/whisper_tiny.pt", "sd-image-variations-diffusers/unet/config.json"],
    # its UNet files, UNet config and whisper file are echomimic-tiny's (fixture_meta.json: weights_from)
    "echomimic-v2-tiny": ["README.md", "fixture_meta.json", "tiny_inference_config.json", "scheduler_config.json",
                          "pose_encoder.pth", "pose_encoder.safetensors", "unet_forward.safetensors",
                          "window.safetensors", "sampling.safetensors", "pose_frames.png", "pose_drawn_wide.png",
                          "pose_drawn_tall.png"] + [f"pose/{i}.npy" for i in range(10)],
    # its net.pth, UNet config, wav2vec2 folder and synthetic inputs are hallo-tiny's (fixture_meta.json)
    "hallo2-tiny": ["README.md", "fixture_meta.json", "scheduler_config.json", "reference.png",
                    "sd-vae-ft-mse/config.json", "sd-vae-ft-mse/diffusion_pytorch_model.safetensors",
                    "sampling.safetensors", "audio_long.safetensors"],
}


def _files():
    return [f for f in REPO_FIXTURES.rglob("*") if f.is_file()]


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_file_of_each_set_is_present(name):
    missing = [f for f in SETS[name] if not (REPO_FIXTURES / name / f).is_file()
               or (REPO_FIXTURES / name / f).stat().st_size == 0]
    assert not missing, f"tests/fixtures/{name} lacks {missing}"


def test_sets_are_small():
    total = sum(f.stat().st_size for f in _files())
    assert 0 < total < LIMIT, f"tests/fixtures holds {total / 2**20:.2f} MiB (limit {LIMIT / 2**20:.0f} MiB)"


def test_each_file_is_under_4_mib():
    big = {str(f.relative_to(REPO_FIXTURES)): f.stat().st_size for f in _files() if f.stat().st_size >= FILE_LIMIT}
    assert not big, f"fixture files of 4 MiB or more (store weights in fp16 / deflate the .pth zip): {big}"


def test_git_keeps_the_fixture_files():
    """No .gitignore / .gitattributes rule drops or rewrites them (weights are .pth / .pt / .safetensors)."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    root = REPO_FIXTURES.parents[1]
    inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True)
    if inside.returncode != 0:
        pytest.skip("not a git checkout")
    paths = [str(f.relative_to(root)) for f in _files()]
    ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "--no-index", *paths],
                             capture_output=True, text=True).stdout.split()
    assert not ignored, f"git ignores {ignored}"
    attrs = subprocess.run(["git", "-C", str(root), "check-attr", "filter", "text", "eol", "--", *paths],
                           capture_output=True, text=True).stdout.splitlines()
    rewritten = [line for line in attrs if not line.endswith(": unspecified")]
    assert not rewritten, f"git attributes would rewrite fixture files: {rewritten}"
