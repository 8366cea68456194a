"""Resumable checkpoints without pickles: RUN/checkpoints/step-NNNNNNNN/ holds

    weights.safetensors     the trainable tensors (by EMOModel parameter name)
    optimizer.safetensors   the optimizer's state tensors, keyed "state.<param index>.<name>"
    state.json              step, the optimizer's param groups and non-tensor state, RNG states (Python, NumPy's
                            MT19937 key in rng.safetensors), anything else the trainer keeps (`extra`)
    rng.safetensors         torch CPU (and CUDA) generator states, NumPy's key array

A checkpoint is written into a hidden temporary folder and renamed into place when complete, so a failure while
saving (a full disk) leaves the previous checkpoints as they were and no half-written one that looks complete.
"""
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import EMOError, EMOInputError

logger = logging.getLogger(__name__)
PREFIX = "step-"


def checkpoint_dirs(run: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def find_checkpoint(run: Path, which: str) -> Path:
    """`which`: "latest" or a checkpoint folder. Raises a clear error when there is nothing to resume."""
    if which != "latest":
        p = Path(which)
        if not (p / "state.json").is_file():
            raise EMOInputError(f"--resume {which}: not a checkpoint folder (no state.json); give 'latest' or one of "
                                f"{Path(run) / 'checkpoints'}/{PREFIX}*")
        return p
    found = checkpoint_dirs(run)
    if not found:
        raise EMOInputError(f"--resume latest: {Path(run) / 'checkpoints'} holds no checkpoint to resume. Start the run "
                            "without --resume (or give the --out of the run you want to continue)")
    return found[-1]


def _rng_state() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(key.astype(np.int64))
    py = random.getstate()
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [py[0], list(py[1]), py[2]]}


def _set_rng_state(tensors: dict, info: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, gauss = info["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    v, state, g = info["python"]
    random.setstate((v, tuple(state), g))


def _split_optimizer(state: dict) -> tuple[dict, dict]:
    tensors, plain = {}, {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                plain.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _join_optimizer(tensors: dict, info: dict) -> dict:
    state = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in info["plain"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in info["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(run: Path, step: int, weights: dict, optimizer_state: dict, extra: dict, keep: int) -> Path:
    """Writes checkpoint `step` atomically and keeps the newest `keep`. A failure (e.g. OSError: disk full) removes
    the partial folder and raises EMOError naming the checkpoint that stays valid."""
    root = Path(run) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
        opt_tensors, opt_info = _split_optimizer(optimizer_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors, rng_info = _rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_info, "rng": rng_info,
                                                     "extra": extra}, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = checkpoint_dirs(run)
        raise EMOError(f"could not save checkpoint {final} ({e.strerror or e}): "
                       + (f"{kept[-1]} is kept and valid; free disk space and rerun with --resume latest"
                          if kept else "no earlier checkpoint exists; free disk space and start again")) from None
    for old in checkpoint_dirs(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[int, dict, dict, dict]:
    """(step, weights, optimizer state dict, extra) of a checkpoint folder; restores the global RNG states."""
    path = Path(path)
    info = json.loads((path / "state.json").read_text())
    weights = load_file(str(path / "weights.safetensors"))
    optimizer = _join_optimizer(load_file(str(path / "optimizer.safetensors")), info["optimizer"])
    _set_rng_state(load_file(str(path / "rng.safetensors")), info["rng"])
    return int(info["step"]), weights, optimizer, info.get("extra", {})
