"""Installing a manifest's files into DEST/NAME/: resumable, checked, and never half-installed.

* A first download is assembled in DEST/.NAME.download/ (hidden: Load EMO Models does not list it) and renamed to
  DEST/NAME/ only when every file checks out; later runs (--verify, --with-identity) work in DEST/NAME/ itself.
* Each file is written as .emo-download/parts/<path>.part and moved to <path> only after its size and sha256 (the
  manifest's, else the hub's LFS sha256 from the HEAD's X-Linked-Etag; git blob id for small non-LFS files) match.
* A download that was cut or killed continues from the bytes in the .part file (HTTP Range), in the same run
  (a few retries) or in the next one.
* .emo-download/record.json records every checked file (size, hash) and whether the set is complete: an installed
  model is checked offline and a second run makes no request at all; --verify rehashes every file against it and
  fetches again what changed.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from . import hub
from .hub import KEPT, EMODownloadError
from .manifest import COMMIT, FileEntry, Manifest
from .paths import RECORD, RECORD_DIR, default_dest, staging_dir

logger = logging.getLogger(__name__)
CHUNK = 1 << 20
RETRIES = 5            # connection cuts survived per file within one run (each resumes where it stopped)
RETRY_WAIT = 1.0       # seconds, doubled per retry (capped at 10)
RESERVE = 64 << 20     # free space kept beyond what the download needs
TRANSIENT = (ConnectionError, socket.timeout, TimeoutError, http.client.HTTPException, hub.EMONetworkError)


@dataclass
class Progress:
    """What a progress callback gets: bytes on disk of the files being fetched (resumed bytes count as done)."""
    done: int
    total: int
    file: str
    files_done: int
    files_total: int
    speed: float  # bytes per second, over the last few seconds


@dataclass
class Result:
    path: Path                 # DEST/NAME
    fetched: list = field(default_factory=list)   # repo paths transferred in this run
    transferred: int = 0       # payload bytes received in this run
    planned: list = field(default_factory=list)   # (path, size or None) still to fetch (dry run)
    dry_run: bool = False


def _hash_file(path: Path, kind: str, size: int) -> str:
    if kind == "git":
        return hub.git_blob_sha1(path, size)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / RECORD_DIR / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _write_record(folder: Path, rec: dict) -> None:
    d = folder / RECORD_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (RECORD + ".tmp")
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True))
    os.replace(tmp, d / RECORD)


def _expected(f: FileEntry, entry: dict | None) -> tuple[int | None, str | None, str]:
    """(size, digest, kind) known before asking the hub: the manifest's, else what an earlier run recorded."""
    entry = entry or {}
    if f.sha256:
        return f.size if f.size is not None else entry.get("size"), f.sha256, "sha256"
    if entry.get("sha256"):
        return entry.get("size"), entry["sha256"], "sha256"
    if entry.get("git_sha1"):
        return entry.get("size"), entry["git_sha1"], "git"
    return f.size, None, "sha256"


def status(manifest: Manifest, dest=None, groups=()) -> dict:
    """Offline: {"state": "complete" | "partial" | "missing", "path", "groups"}. Complete = the record of a finished
    download of this revision and every file present at its recorded size (never just "the folder exists")."""
    dest = Path(dest) if dest else default_dest()
    target, stage = dest / manifest.name, staging_dir(dest, manifest.name)
    folder = target if target.is_dir() else stage
    rec = read_record(folder)
    files = manifest.selected(groups)
    ok = rec.get("revision") == manifest.revision and all(
        (folder / f.path).is_file() and f.path in rec.get("files", {})
        and (folder / f.path).stat().st_size == rec["files"][f.path]["size"] for f in files)
    state = "complete" if ok and folder == target and rec.get("complete") else (
        "partial" if folder.is_dir() else "missing")
    return {"state": state, "path": target, "groups": [g for g in manifest.extras
                                                      if ok and all(f.path in rec.get("files", {})
                                                                    for f in manifest.extras[g].files)]}


class _Meter:
    def __init__(self, total, files_total, callback):
        self.done, self.total, self.files_done, self.files_total = 0, total, 0, files_total
        self.callback, self.file, self.last = callback, "", 0.0
        self.window = deque([(time.monotonic(), 0)], maxlen=50)

    def add(self, n: int, force: bool = False):
        self.done += n
        now = time.monotonic()
        if self.callback is None or (not force and now - self.last < 0.2):
            return
        self.last = now
        self.window.append((now, self.done))
        while len(self.window) > 2 and now - self.window[0][0] > 5:
            self.window.popleft()
        t0, d0 = self.window[0]
        speed = (self.done - d0) / (now - t0) if now > t0 else 0.0
        self.callback(Progress(self.done, self.total, self.file, self.files_done, self.files_total, speed))


def download(manifest: Manifest, dest=None, groups=(), verify=False, dry_run=False, endpoint=None, token=None,
             progress=None, log=logger.info) -> Result:
    """Install `manifest` (plus its extras `groups`) into DEST/NAME. Nothing is requested when every file is
    already there and checked (or --dry-run), nor under HF_HUB_OFFLINE (then missing files are an error).
    progress: called with Progress a few times a second; it may raise to stop (the fetched bytes are kept)."""
    dest = Path(dest).expanduser() if dest else default_dest()
    target, stage = dest / manifest.name, staging_dir(dest, manifest.name)
    work = target if target.is_dir() else stage
    rec = read_record(work)
    if rec.get("revision") != manifest.revision or rec.get("repo") != manifest.repo:
        rec = {"files": {}}
    rec.update(name=manifest.name, repo=manifest.repo, revision=manifest.revision)
    files = manifest.selected(groups)
    result = Result(path=target, dry_run=dry_run)
    todo, unsure = [], []
    for f in files:
        p = work / f.path
        entry = rec["files"].get(f.path)
        size, digest, kind = _expected(f, entry)
        if not p.is_file():
            todo.append(f)
        elif entry and size == p.stat().st_size and not verify:
            continue
        elif digest and size is not None:
            if p.stat().st_size == size and _hash_file(p, kind, size) == digest:
                rec["files"][f.path] = {"size": size, ("git_sha1" if kind == "git" else "sha256"): digest}
            else:
                log(f"{f.path}: changed on disk (size or checksum differs from the download): fetching it again")
                rec["files"].pop(f.path, None)
                todo.append(f)
        else:
            unsure.append(f)  # a file we did not download: compared with the hub's checksum below
    if dry_run:
        result.planned = [(f.path, f.shown_size) for f in todo + unsure]
        return result
    if todo or unsure:
        if hub.offline():
            missing = ", ".join(f.path for f in (todo + unsure)[:4]) + (" ..." if len(todo + unsure) > 4 else "")
            raise EMODownloadError(f"HF_HUB_OFFLINE is set, so nothing is downloaded, but {len(todo + unsure)} "
                                   f"file(s) of '{manifest.name}' are missing or unchecked in {work} ({missing}): "
                                   "unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to fetch them")
        _fetch(manifest, work, rec, todo, unsure, endpoint, token, progress, log, result)
    rec["complete"] = True
    rec["groups"] = sorted(set(rec.get("groups", [])) | set(groups))
    _write_record(work, rec)
    shutil.rmtree(work / RECORD_DIR / "parts", ignore_errors=True)
    if work != target:
        os.replace(work, target)
    return result


def _fetch(manifest, work, rec, todo, unsure, endpoint, token, progress, log, result):
    ep = hub.endpoint(endpoint)
    headers = hub.request_headers(token)
    remote = {}
    for f in todo + unsure:
        repo, rev = (f.repo, f.revision) if f.repo else (manifest.repo, manifest.revision)
        url = hub.file_url(repo, f.path, rev, manifest.repo_type if not f.repo else "model", ep)
        r = hub.head(url, headers, f"'{f.path}'", repo, rev, ep)
        if COMMIT.match(rev) and r.commit != rev:
            raise EMODownloadError(f"{ep} serves commit {r.commit} of {repo} for the pinned revision "
                                   f"{rev}: the mirror is not a faithful copy; use another HF_ENDPOINT")
        for what, mine, theirs in (("sha256", f.sha256, r.sha256), ("size", f.size, r.size)):
            if mine is not None and theirs is not None and mine != theirs:
                raise EMODownloadError(f"the hub's {what} of {f.path} ({theirs}) differs from the manifest's ({mine}): "
                                       f"the manifest {manifest.source} or the mirror {ep} is wrong; nothing was "
                                       "replaced")
        if r.size is None and f.size is None:
            raise EMODownloadError(f"{ep} did not say how big {f.path} is: it does not behave like a Hugging Face hub;"
                                   " check HF_ENDPOINT / --endpoint")
        remote[f.path] = r
    for f in unsure:
        r, p = remote[f.path], work / f.path
        size = f.size if f.size is not None else r.size
        kind, digest = ("sha256", f.sha256 or r.sha256) if (f.sha256 or r.sha256) else ("git", r.git_oid)
        if digest and p.stat().st_size == size and _hash_file(p, kind, size) == digest:
            rec["files"][f.path] = {"size": size, ("git_sha1" if kind == "git" else "sha256"): digest}
        else:
            todo.append(f)
    _write_record(work, rec)
    if not todo:
        return
    parts = work / RECORD_DIR / "parts"
    sizes = {f.path: f.size if f.size is not None else remote[f.path].size for f in todo}
    have = {f.path: _part_size(parts / (f.path + ".part")) for f in todo}
    need = sum(max(sizes[p] - have[p], 0) for p in sizes)
    _check_space(work, need, manifest.name)
    meter = _Meter(sum(sizes.values()), len(todo), progress)
    meter.done = sum(min(have[p], sizes[p]) for p in sizes)
    for f in todo:
        r = remote[f.path]
        digest, kind = (f.sha256 or r.sha256, "sha256") if (f.sha256 or r.sha256) else (r.git_oid, "git")
        meter.file = f.path
        got = _transfer(r.url, headers, parts / (f.path + ".part"), sizes[f.path], digest, kind, meter, ep,
                        f.path, log)
        result.transferred += got
        dst = work / f.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(parts / (f.path + ".part"), dst)
        (parts / (f.path + ".part.json")).unlink(missing_ok=True)
        rec["files"][f.path] = {"size": sizes[f.path], ("git_sha1" if kind == "git" else "sha256"): digest}
        _write_record(work, rec)
        result.fetched.append(f.path)
        meter.files_done += 1
        meter.add(0, force=True)


def _part_size(part: Path) -> int:
    return part.stat().st_size if part.is_file() else 0


def _check_space(work: Path, need: int, name: str) -> None:
    probe = work
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need + RESERVE > free:
        raise EMODownloadError(
            f"not enough disk space for '{name}' in {probe}: it needs {_gb(need)} more (plus {_gb(RESERVE)} to spare)"
            f" but {_gb(free)} is free. Free some space, or choose another folder (--dest DIR, or an `emo:` path in "
            "ComfyUI's extra_model_paths.yaml)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _transfer(url, headers, part: Path, size: int, digest: str | None, kind: str, meter: _Meter, ep: str,
              what: str, log) -> int:
    """Bytes of `url` into `part`, continuing after what is there; checked against size and digest. Returns the
    number of bytes received."""
    part.parent.mkdir(parents=True, exist_ok=True)
    side = part.with_name(part.name + ".json")  # which file these bytes belong to
    ident = {"size": size, "digest": digest}
    try:
        same = json.loads(side.read_text()) == ident
    except (OSError, ValueError):
        same = False
    old = _part_size(part)
    pos = old if same and old <= size else 0
    if pos != old:  # bytes of another file (or too many): start over
        meter.add(-min(old, size))
    if pos == 0:
        part.write_bytes(b"")
        side.write_text(json.dumps(ident))
    hasher = hashlib.sha1(f"blob {size}\0".encode()) if kind == "git" else hashlib.sha256()
    if pos:
        log(f"{what}: continuing from {_gb(pos)} already on disk")
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                hasher.update(chunk)
    received, failures = 0, 0
    while pos < size:
        try:
            resp, offset = hub.open_range(url, headers, pos, f"'{what}'", ep)
            with resp, open(part, "r+b") as out:
                if offset != pos:  # the server ignored Range: start this file over
                    meter.add(offset - pos)
                    pos = offset
                    hasher = hashlib.sha1(f"blob {size}\0".encode()) if kind == "git" else hashlib.sha256()
                out.seek(pos)
                out.truncate()
                read = getattr(resp, "read1", resp.read)
                while pos < size:
                    chunk = read(min(CHUNK, size - pos))
                    if not chunk:
                        break
                    out.write(chunk)
                    hasher.update(chunk)
                    pos += len(chunk)
                    received += len(chunk)
                    meter.add(len(chunk))
            if pos < size:
                raise ConnectionError(f"the server closed the connection at byte {pos} of {size}")
        except OSError as e:
            if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
                raise EMODownloadError(f"the disk filled up while writing {what} ({part.parent}): free some space "
                                       f"and run again; {KEPT}") from None
            if not isinstance(e, TRANSIENT):
                raise
            failures = _retry(failures, e, what, pos, size, log, ep)
        except TRANSIENT as e:
            failures = _retry(failures, e, what, pos, size, log, ep)
    if pos != size:
        raise EMODownloadError(f"{what}: got {pos} bytes, expected {size}; {KEPT}")
    if digest and hasher.hexdigest() != digest:
        part.unlink(missing_ok=True)
        side.unlink(missing_ok=True)
        raise EMODownloadError(f"{what} arrived corrupted (checksum {hasher.hexdigest()[:16]}… instead of "
                               f"{digest[:16]}…) and was deleted: run again; if it repeats, the mirror {ep} "
                               "serves a different file")
    if not digest:
        log(f"{what}: the hub gave no checksum for it; only its size was checked")
    return received


def _retry(failures, err, what, pos, size, log, ep) -> int:
    failures += 1
    if failures > RETRIES:
        raise EMODownloadError(f"the connection to {ep} broke {failures} times while fetching {what} ({err}); "
                               f"{KEPT}") from None
    log(f"{what}: connection lost at {pos} of {size} bytes ({err}); resuming")
    time.sleep(min(RETRY_WAIT * 2 ** (failures - 1), 10.0))
    return failures
