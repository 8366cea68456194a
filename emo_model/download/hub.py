"""HTTP against a Hugging Face hub (or a mirror): the file URL, its metadata (HEAD) and ranged downloads (GET).

What huggingface_hub gives us is used: the endpoint (`HF_ENDPOINT`), the offline switch (`HF_HUB_OFFLINE`), the
token (`huggingface_hub.get_token()`: HF_TOKEN or the `hf auth login` file), the request headers
(`build_hf_headers`) and the file URL (`hf_hub_url`). The transfer itself is not `hf_hub_download`: since
huggingface_hub 1.18 an interrupted download goes to a process-unique `.incomplete` file that is deleted on failure,
so a killed or cut 4.85 GB download restarts from zero on the next run, and the downloaded bytes are never hashed
(only their size is checked). Here a download resumes across runs from the bytes on disk (HTTP Range) and every
file is checked against its sha256 before it is moved into place (see fetch.py).
"""
from __future__ import annotations

import hashlib
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from ..errors import EMOError


class EMODownloadError(EMOError):
    """A download that cannot go on: the message says why and what to do; fetched bytes are kept."""


class EMONetworkError(EMODownloadError, ConnectionError):
    """The hub could not be reached (retried within a run when it happens half-way)."""


_TRUE = {"1", "true", "yes", "on"}
KEPT = "what was fetched so far is kept: run the same command again to continue"


def endpoint(override: str | None = None) -> str:
    """--endpoint, else HF_ENDPOINT (read now, so a variable set after import counts), else huggingface_hub's."""
    if override:
        return override.rstrip("/")
    from huggingface_hub import constants
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def offline() -> bool:
    from huggingface_hub import constants
    env = any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


def timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT", "") or 10.0)  # huggingface_hub's variable and default
    except ValueError:
        return 10.0


def file_url(repo: str, path: str, revision: str, repo_type: str, ep: str) -> str:
    from huggingface_hub import hf_hub_url
    return hf_hub_url(repo, path, repo_type=None if repo_type == "model" else repo_type, revision=revision,
                      endpoint=ep)


def request_headers(token: str | bool | None = None) -> dict:
    """User agent + `authorization` when a token is known (token=None: huggingface_hub.get_token(); False: none)."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import build_hf_headers
    if token is None:
        token = get_token() or False
    headers = build_hf_headers(token=token, library_name="emo_model")
    headers["Accept-Encoding"] = "identity"  # byte offsets must be the file's own (Range, size checks)
    return headers


@dataclass
class RemoteFile:
    url: str            # the file's resolve URL on the hub (after same-host redirects)
    size: int | None
    sha256: str | None  # LFS files: the X-Linked-Etag
    git_oid: str | None  # small (non-LFS) files: the git blob id (sha1) from the ETag
    commit: str | None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # we follow redirects ourselves: the token must not travel to another host (the CDN)


_OPENER = urllib.request.build_opener(_NoRedirect)  # keeps the proxy handler (HTTPS_PROXY etc.)


def _open(url: str, headers: dict, method: str = "GET"):
    """One request; an HTTP error status is returned as the response (urllib raises it)."""
    req = urllib.request.Request(url, headers=headers, method=method)
    try:
        return _OPENER.open(req, timeout=timeout())
    except urllib.error.HTTPError as e:
        return e


def unreachable(ep: str, err) -> EMONetworkError:
    reason = getattr(err, "reason", err)
    return EMONetworkError(
        f"cannot reach {ep} ({reason}): check the network connection and any proxy setting (HTTPS_PROXY); behind a "
        f"firewall or in a region where huggingface.co is blocked, set HF_ENDPOINT (or --endpoint) to a mirror; {KEPT}")


def _status_error(resp, what: str, repo: str, revision: str, ep: str) -> EMODownloadError:
    code = getattr(resp, "status", None) or resp.getcode()
    kind = resp.headers.get("X-Error-Code", "")
    if kind == "EntryNotFound" or (code == 404 and kind == "" and resp.headers.get("X-Repo-Commit")):
        return EMODownloadError(f"{what} is not in {repo} at revision {revision[:12]} (HTTP 404 from {ep}): the "
                                "manifest names a file the repo does not have; check the manifest's paths")
    if kind == "RevisionNotFound":
        return EMODownloadError(f"revision {revision} of {repo} not found on {ep} (HTTP {code}): check the manifest's "
                                "'revision' (a commit of that repo)")
    if kind in ("RepoNotFound", "GatedRepo") or code in (401, 403):
        return EMODownloadError(
            f"{repo} is not available from {ep} (HTTP {code}{', ' + kind if kind else ''}): the repo id may be "
            f"wrong, or it is private or gated: accept its terms on {ep}/{repo} and log in (`hf auth login`, or set "
            "HF_TOKEN)")
    if code == 404:
        return EMODownloadError(f"{ep} answered 404 for {what} without any Hugging Face headers: {ep} does not look "
                                "like a Hugging Face hub or mirror; check HF_ENDPOINT / --endpoint")
    if code >= 500:
        return EMODownloadError(f"{ep} had a server error (HTTP {code}) for {what}: try again later; {KEPT}")
    return EMODownloadError(f"unexpected HTTP {code} from {ep} for {what}; {KEPT}")


def head(url: str, headers: dict, what: str, repo: str, revision: str, ep: str) -> RemoteFile:
    """The hub's metadata for one file: HEAD /{repo}/resolve/{rev}/{path}. Same-host redirects (a renamed repo) are
    followed; a redirect to another host is the hub sending an LFS file to its CDN: the metadata is in the
    X-Linked-* headers and the bytes at `Location`."""
    for _ in range(5):
        try:
            resp = _open(url, headers, "HEAD")
        except (urllib.error.URLError, OSError, socket.timeout) as e:
            raise unreachable(ep, e) from None
        with resp:
            code = getattr(resp, "status", None) or resp.getcode()
            h = resp.headers
            if code in (301, 302, 303, 307, 308) and h.get("Location"):
                target = urljoin(url, h["Location"])
                if urlsplit(target).netloc == urlsplit(url).netloc and not h.get("X-Linked-Etag"):
                    url = target
                    continue
            elif code >= 400:
                raise _status_error(resp, what, repo, revision, ep)
            else:
                target = url
            commit = h.get("X-Repo-Commit")
            if not commit:
                raise EMODownloadError(
                    f"{ep} answered for {what} without the X-Repo-Commit header every Hugging Face hub sends: it is "
                    "not a Hugging Face hub or mirror (a proxy's or captive portal's page?). Check HF_ENDPOINT / "
                    "--endpoint (e.g. https://huggingface.co or a known mirror)")
            etag = (h.get("X-Linked-Etag") or h.get("ETag") or "").strip().removeprefix("W/").strip('"')
            size = h.get("X-Linked-Size") or (h.get("Content-Length") if target == url else None)
            lfs = len(etag) == 64
            # url: the resolve URL, not the CDN's: each GET is redirected afresh (signed CDN links expire, and the
            # token is dropped when the redirect leaves the host)
            return RemoteFile(url=url, size=int(size) if size else None, sha256=etag if lfs else None,
                              git_oid=etag if len(etag) == 40 else None, commit=commit)
    raise EMODownloadError(f"{ep} redirected {what} too many times: check HF_ENDPOINT / --endpoint")


def open_range(url: str, headers: dict, start: int, what: str, ep: str):
    """GET the bytes from `start` on. Returns (response, offset): offset is `start` when the server honoured the
    Range (206), 0 when it sent the whole file (200). The token is dropped when a redirect leaves the host."""
    hdrs = dict(headers)
    if start:
        hdrs["Range"] = f"bytes={start}-"
    for _ in range(5):
        try:
            resp = _open(url, hdrs, "GET")
        except (urllib.error.URLError, OSError, socket.timeout) as e:
            raise unreachable(ep, e) from None
        code = getattr(resp, "status", None) or resp.getcode()
        if code in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
            target = urljoin(url, resp.headers["Location"])
            resp.close()
            if urlsplit(target).netloc != urlsplit(url).netloc:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            url = target
            continue
        if code == 206:
            first = resp.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if first.strip() != str(start):
                resp.close()
                raise EMODownloadError(f"{ep} sent the wrong part of {what} (asked from byte {start}, got "
                                       f"'{resp.headers.get('Content-Range')}'); {KEPT}")
            return resp, start
        if code == 200:
            return resp, 0
        resp.close()
        raise EMODownloadError(f"HTTP {code} from {ep} while fetching {what}; {KEPT}")
    raise EMODownloadError(f"{ep} redirected {what} too many times: check HF_ENDPOINT / --endpoint")


def git_blob_sha1(path, size: int) -> str:
    """The git blob id of a file (what the hub's ETag is for files not stored in LFS)."""
    h = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
