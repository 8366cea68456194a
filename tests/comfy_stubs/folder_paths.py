"""Stand-in for ComfyUI's `folder_paths` (tests only; signatures of ComfyUI 0.3.64, see comfyui.md §7).

`_reset_for_tests(base)` is the one addition: it points models/, input/, output/ and temp/ at `base`, the
way `--base-directory` does in ComfyUI.
"""
import os
import time

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
_CORE_FOLDERS = ["checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "upscale_models", "audio_encoders", "custom_nodes", "vae_approx"]
_LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}

base_path = models_dir = output_directory = input_directory = temp_directory = None
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}


def _reset_for_tests(base: str) -> None:
    global base_path, models_dir, output_directory, input_directory, temp_directory
    base_path = os.path.abspath(base)
    models_dir = os.path.join(base_path, "models")
    output_directory = os.path.join(base_path, "output")
    input_directory = os.path.join(base_path, "input")
    temp_directory = os.path.join(base_path, "temp")
    folder_names_and_paths.clear()
    for name in _CORE_FOLDERS:
        folder_names_and_paths[name] = ([os.path.join(models_dir, name)], set(supported_pt_extensions))
    for d in (output_directory, input_directory, temp_directory):
        os.makedirs(d, exist_ok=True)


def map_legacy(folder_name: str) -> str:
    return _LEGACY.get(folder_name, folder_name)


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    folder_name = map_legacy(folder_name)
    if folder_name in folder_names_and_paths:
        paths = folder_names_and_paths[folder_name][0]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[map_legacy(folder_name)][0][:]


def get_filename_list(folder_name: str) -> list[str]:
    paths, exts = folder_names_and_paths[map_legacy(folder_name)]
    out = set()
    for root in paths:
        if not os.path.isdir(root):
            continue
        for dirpath, _, files in os.walk(root, followlinks=True):
            for f in files:
                if not exts or os.path.splitext(f)[1].lower() in exts:
                    out.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def get_full_path(folder_name: str, filename: str) -> str | None:
    for root in folder_names_and_paths[map_legacy(folder_name)][0]:
        path = os.path.join(root, os.path.relpath(os.path.join("/", filename), "/"))
        if os.path.isfile(path):
            return path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def get_output_directory():
    return output_directory


def get_input_directory():
    return input_directory


def get_temp_directory():
    return temp_directory


def get_directory_by_type(type_name):
    return {"output": output_directory, "input": input_directory, "temp": temp_directory}.get(type_name)


def annotated_filepath(name: str):
    for tag, d in ((" [output]", output_directory), (" [input]", input_directory), (" [temp]", temp_directory)):
        if name.endswith(tag):
            return name[:-len(tag)], d
    return name, None


def get_annotated_filepath(name: str, default_dir=None) -> str:
    name, base_dir = annotated_filepath(name)
    return os.path.join(base_dir or default_dir or input_directory, name)


def exists_annotated_filepath(name) -> bool:
    return os.path.exists(get_annotated_filepath(name))


def filter_files_content_types(files: list[str], content_types: list[str]) -> list[str]:
    kinds = {"image": {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"},
             "audio": {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus"},
             "video": {".mp4", ".mov", ".mkv", ".webm", ".avi"}}
    exts = set().union(*(kinds[k] for k in content_types if k in kinds))
    return [f for f in files if os.path.splitext(f)[1].lower() in exts]


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0):
    """Same contract as ComfyUI: expands %width% %height% %year%..., refuses folders outside output_dir,
    creates the subfolder, and returns (full_output_folder, filename, counter, subfolder, filename_prefix)."""
    if "%" in filename_prefix:
        now = time.localtime()
        for key, value in (("%width%", image_width), ("%height%", image_height), ("%year%", now.tm_year),
                           ("%month%", f"{now.tm_mon:02}"), ("%day%", f"{now.tm_mday:02}"),
                           ("%hour%", f"{now.tm_hour:02}"), ("%minute%", f"{now.tm_min:02}"),
                           ("%second%", f"{now.tm_sec:02}")):
            filename_prefix = filename_prefix.replace(key, str(value))
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full_output_folder))) != output_dir:
        raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
    os.makedirs(full_output_folder, exist_ok=True)
    counters = [0]
    for f in os.listdir(full_output_folder):
        if f.startswith(filename + "_"):
            try:
                counters.append(int(f[len(filename) + 1:].split("_")[0]))
            except ValueError:
                pass
    return full_output_folder, filename, max(counters) + 1, subfolder, filename_prefix
