"""The templates' example inputs (a portrait, a voice, a short video) put into ComfyUI's input folder when the pack
loads, so that a template opened from the template browser renders with no other step. A file already there under
the same name is never touched (it may be the user's), and a failure here never stops the pack from loading."""
import logging
import os
import shutil
from pathlib import Path

import folder_paths

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# name in ComfyUI's input folder (what the templates' Load nodes name) -> file in assets/
EXAMPLE_INPUTS = {"emo_example_portrait.jpg": "portrait.jpg", "emo_example_speech.wav": "speech.wav",
                  "emo_example_reference.mp4": "reference.mp4", "emo_example_hands": "hands_pose"}  # a folder too


def install_example_inputs(input_dir: str | None = None) -> list[str]:
    """Copy each example input that is absent into `input_dir` (default: ComfyUI's input folder, which follows
    --input-directory). Returns the names copied."""
    input_dir = input_dir or folder_paths.get_input_directory()
    copied = []
    for name, source in EXAMPLE_INPUTS.items():
        target = os.path.join(input_dir, name)
        if (ASSETS / source).is_dir():  # a pose folder: copied whole when absent (a partial copy is removed)
            try:
                if not os.path.exists(target):
                    tmp = target + ".part"
                    shutil.rmtree(tmp, ignore_errors=True)
                    shutil.copytree(ASSETS / source, tmp)
                    os.replace(tmp, target)
                    copied.append(name)
            except OSError as e:
                log.warning("EMO: could not put the example input %s into %s (%s): the templates will ask for your "
                            "own files instead", name, input_dir, e)
            continue
        try:
            os.makedirs(input_dir, exist_ok=True)
            with open(ASSETS / source, "rb") as src, open(target, "xb") as out:  # "x": never replaces a file
                try:
                    shutil.copyfileobj(src, out)
                except BaseException:
                    out.close()
                    os.remove(target)  # ours, half-written
                    raise
        except FileExistsError:
            continue
        except OSError as e:
            log.warning("EMO: could not put the example input %s into %s (%s): the templates will ask for your own "
                        "files instead", name, input_dir, e)
            continue
        copied.append(name)
    if copied:
        log.info("EMO: example inputs for the templates added to %s: %s", input_dir, ", ".join(copied))
    return copied
