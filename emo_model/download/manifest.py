"""Download manifests: which files of which Hugging Face repo make one model, pinned to a commit.

A manifest is a JSON file (the built-in ones live in `manifests/`, one per model; `--manifest FILE` takes any):

    {
      "name": "hallo",                         # the folder the model is installed in: DEST/NAME/
      "title": "Hallo (Fudan)",                # optional, for --list
      "repo": "fudan-generative-ai/hallo",     # Hugging Face repo id
      "repo_type": "model",                    # optional: model (default), dataset or space
      "revision": "<40-hex commit>",           # pinned: the files can never change under the manifest
      "licence": "MIT (...)",                  # shown before downloading
      "files": [{"path": "hallo/net.pth", "size": 4753529893, "sha256": null, "approx_size": null}, ...],
               # a file may come from another repo: "repo" + "revision" (a pinned commit of that repo) in its entry
      "extras": {"identity": {"licence": "...", "description": "...", "files": [...]}}
    }

`path` is the file's path in the repo and, unchanged, under DEST/NAME/ (the repo's layout is what the loaders
read). `size` (bytes) and `sha256` may be null where not known in advance: the hub's own values (the LFS sha256 of
the HEAD response's X-Linked-Etag, the git blob id for small files) are then checked and recorded in the install
record. `approx_size` (bytes, optional) is only for showing sizes before the exact one is known.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import EMOInputError

MANIFEST_DIR = Path(__file__).parent / "manifests"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class FileEntry:
    path: str                    # repo path = path under DEST/NAME/ (POSIX separators)
    size: int | None = None      # bytes
    sha256: str | None = None    # hex
    approx_size: int | None = None
    group: str | None = None     # None: the base set; else the extras group it belongs to
    repo: str | None = None      # another Hugging Face repo this file comes from (None: the manifest's)
    revision: str | None = None  # that repo's pinned commit (given with `repo`)

    @property
    def shown_size(self) -> int | None:
        return self.size if self.size is not None else self.approx_size


@dataclass(frozen=True)
class Extra:
    name: str
    licence: str
    description: str
    files: tuple[FileEntry, ...]


@dataclass(frozen=True)
class Manifest:
    name: str
    repo: str
    revision: str
    licence: str
    files: tuple[FileEntry, ...]
    extras: dict = field(default_factory=dict)   # group -> Extra
    title: str = ""
    repo_type: str = "model"
    source: str = ""                             # the file it was read from

    def selected(self, groups=()) -> list[FileEntry]:
        """The base files plus those of the named extras groups (unknown names: an error naming the known ones)."""
        files = list(self.files)
        for g in groups:
            if g not in self.extras:
                known = ", ".join(self.extras) or "none"
                raise EMOInputError(f"model '{self.name}' has no optional part '{g}' (it has: {known})")
            files += self.extras[g].files
        return files

    @property
    def pinned(self) -> bool:
        return bool(COMMIT.match(self.revision))


def _bad(source, what: str) -> EMOInputError:
    return EMOInputError(f"download manifest {source}: {what}. The format is described in the README "
                         "(section 'Getting the weights')")


def _files(raw, source, group=None) -> tuple[FileEntry, ...]:
    if not isinstance(raw, list) or not raw:
        raise _bad(source, f"'files'{f' of extras.{group}' if group else ''} must be a non-empty list")
    out, seen = [], set()
    for i, f in enumerate(raw):
        if not isinstance(f, dict) or not isinstance(f.get("path"), str):
            raise _bad(source, f"files[{i}] needs a 'path' string")
        p = PurePosixPath(f["path"])
        if p.is_absolute() or ".." in p.parts or "\\" in f["path"] or not p.parts or str(p) != f["path"]:
            raise _bad(source, f"files[{i}].path '{f['path']}' must be a plain relative repo path (no '..', no '/' "
                               "at the start, '/' as separator)")
        if f["path"] in seen:
            raise _bad(source, f"'{f['path']}' is listed twice")
        seen.add(f["path"])
        size, sha, approx = f.get("size"), f.get("sha256"), f.get("approx_size")
        for key, val in (("size", size), ("approx_size", approx)):
            if val is not None and (not isinstance(val, int) or isinstance(val, bool) or val < 0):
                raise _bad(source, f"files[{i}].{key} must be a byte count or null, not {val!r}")
        if sha is not None and (not isinstance(sha, str) or not SHA256.match(sha.lower())):
            raise _bad(source, f"files[{i}].sha256 must be 64 hex digits or null, not {sha!r}")
        repo, rev = f.get("repo"), f.get("revision")
        if repo is not None and (not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/"))
                                 or not isinstance(rev, str) or not rev):
            raise _bad(source, f"files[{i}].repo must be a Hugging Face repo id such as 'org/name', given with its "
                               "'revision' (a commit of that repo)")
        if repo is None and rev is not None:
            raise _bad(source, f"files[{i}].revision is given without its 'repo'")
        out.append(FileEntry(f["path"], size, sha.lower() if sha else None, approx, group, repo, rev))
    return tuple(out)


def parse_manifest(data: dict, source="<manifest>") -> Manifest:
    if not isinstance(data, dict):
        raise _bad(source, "the top level must be a JSON object")
    for key in ("name", "repo", "revision", "licence", "files"):
        if key not in data:
            raise _bad(source, f"'{key}' is missing")
    name, repo, revision = data["name"], data["repo"], data["revision"]
    if not isinstance(name, str) or not NAME.match(name):
        raise _bad(source, f"'name' {name!r} must be a folder name (letters, digits, '.', '_', '-')")
    if not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/")):
        raise _bad(source, f"'repo' {repo!r} must be a Hugging Face repo id such as 'org/name'")
    if not isinstance(revision, str) or not revision:
        raise _bad(source, "'revision' must be a commit hash (or a branch/tag name)")
    extras = {}
    for g, e in (data.get("extras") or {}).items():
        if not isinstance(e, dict) or not isinstance(e.get("licence"), str):
            raise _bad(source, f"extras.{g} needs a 'licence' string and 'files'")
        extras[g] = Extra(g, e["licence"], e.get("description", ""), _files(e.get("files"), source, g))
    base = _files(data["files"], source)
    paths = [f.path for f in base] + [f.path for e in extras.values() for f in e.files]
    if len(paths) != len(set(paths)):
        raise _bad(source, "a file is listed both in 'files' and in an extras group")
    return Manifest(name=name, repo=repo, revision=revision, licence=str(data["licence"]), files=base,
                    extras=extras, title=data.get("title", ""), repo_type=data.get("repo_type", "model"),
                    source=str(source))


def load_manifest(path) -> Manifest:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EMOInputError(f"manifest file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EMOInputError(f"cannot read the manifest {path}: {e}") from None
    return parse_manifest(data, path)


def manifest_dirs() -> list[Path]:
    """$EMO_DOWNLOAD_MANIFESTS (folders, os.pathsep-separated: a team's own models, listed by --list and the node;
    a name there overrides the built-in one), then the built-in manifests."""
    extra = [Path(p).expanduser() for p in os.environ.get("EMO_DOWNLOAD_MANIFESTS", "").split(os.pathsep) if p]
    return extra + [MANIFEST_DIR]


def builtin_names() -> list[str]:
    return sorted({p.stem for d in manifest_dirs() for p in d.glob("*.json")})


def builtin_manifest(name: str) -> Manifest:
    path = next((d / f"{name}.json" for d in manifest_dirs() if (d / f"{name}.json").is_file()), None)
    if not NAME.match(name or "") or path is None:
        raise EMOInputError(f"no built-in model named '{name}': choose one of {', '.join(builtin_names())} "
                            "(`python -m emo_model download --list`), or give your own with --manifest FILE")
    return load_manifest(path)
