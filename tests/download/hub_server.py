"""A stand-in Hugging Face hub on 127.0.0.1 for the download tests (and for trying the node by hand:
`python tests/download/hub_server.py ORG/NAME FOLDER` serves FOLDER's files as that repo and prints the endpoint).

Two servers, like the real hub: the API host answers `/api/models/{repo}/revision/{rev}` and
`/{repo}/resolve/{rev}/{path}` (HEAD/GET; small files directly with their git blob id as ETag, large "LFS" files
with a 302 to the CDN host carrying X-Linked-Etag = sha256 and X-Linked-Size), and the CDN host serves the bytes
with HTTP Range. Every request is logged; a test can cut a transfer half-way, slow it down, or corrupt it.
"""
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, repo: str, files: dict, commit: str = "0123456789abcdef" * 2 + "01234567", lfs_min=1000,
                 others: dict | None = None):
        """others: {repo: (commit, {path: bytes})}, more repos served by the same hub (paths distinct from files')."""
        self.repo, self.files, self.commit, self.lfs_min = repo, dict(files), commit, lfs_min
        self.repos = {repo: (commit, set(files))}
        for other, (c, fs) in (others or {}).items():
            assert not set(fs) & set(self.files), "paths must differ between the served repos"
            self.files.update(fs)
            self.repos[other] = (c, set(fs))
        self.log = []                 # dicts: host, method, path, range, sent, auth
        self.cut_after = {}           # repo path -> bytes after which the next GET is cut (once)
        self.corrupt = set()          # repo paths served with one byte flipped
        self.delay = 0.0              # seconds between 16 kB pieces on the CDN
        self.lock = threading.Lock()
        self.api = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("api"))
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        for s in (self.api, self.cdn):
            s.daemon_threads = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.api.server_address[1]}"

    def sha256(self, path):
        return hashlib.sha256(self.files[path]).hexdigest()

    def is_lfs(self, path):
        return len(self.files[path]) >= self.lfs_min

    def manifest(self, name, paths=None, sha=True, size=True, revision=None):
        paths = list(self.files) if paths is None else paths
        return {"name": name, "repo": self.repo, "revision": revision or self.commit, "licence": "test licence",
                "files": [{"path": p, "size": len(self.files[p]) if size and p in self.files else None,
                           "sha256": self.sha256(p) if sha and p in self.files else None} for p in paths]}

    def requests(self, host=None, method=None):
        return [r for r in self.log
                if (host is None or r["host"] == host) and (method is None or r["method"] == method)]

    def payload_bytes(self, since=None):
        """Bytes sent in GET answers (of requests started after `since`, a time.monotonic() value)."""
        return sum(r["sent"] for r in self.log if r["method"] == "GET" and (since is None or r["start"] > since))

    def __enter__(self):
        for s in (self.api, self.cdn):
            threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        for s in (self.api, self.cdn):
            s.shutdown()
            s.server_close()

    def _handler(self, host):
        hub = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _record(self, sent=0):
                with hub.lock:
                    hub.log.append(dict(host=host, method=self.command, path=unquote(urlsplit(self.path).path),
                                        range=self.headers.get("Range"), sent=sent,
                                        auth=self.headers.get("authorization"), start=self.t0))

            def _reply(self, code, headers=(), body=b""):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                self._record(len(body) if self.command == "GET" else 0)

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                self.t0 = time.monotonic()
                (self._api if host == "api" else self._cdn)(unquote(urlsplit(self.path).path))

            def _api(self, path):
                repo = next((r for r in hub.repos if path.startswith((f"/api/models/{r}/", f"/{r}/resolve/"))),
                            hub.repo)
                commit, paths = hub.repos[repo]
                if path.startswith(f"/api/models/{repo}/revision/"):
                    body = json.dumps({"id": repo, "sha": commit,
                                       "siblings": [{"rfilename": p} for p in sorted(paths)]}).encode()
                    return self._reply(200, [("Content-Type", "application/json")], body)
                if not path.startswith(f"/{repo}/resolve/"):
                    return self._reply(401, [("X-Error-Code", "RepoNotFound")], b"Repository not found")
                rev, _, fpath = path[len(f"/{repo}/resolve/"):].partition("/")
                if rev not in (commit, "main"):
                    return self._reply(404, [("X-Error-Code", "RevisionNotFound")], b"Invalid rev id")
                if fpath not in paths:
                    return self._reply(404, [("X-Error-Code", "EntryNotFound"), ("X-Repo-Commit", commit)],
                                       b"Entry not found")
                data = hub.files[fpath]
                common = [("X-Repo-Commit", commit)]
                if hub.is_lfs(fpath):
                    loc = f"http://127.0.0.1:{hub.cdn.server_address[1]}/blobs/{hub.sha256(fpath)}?name={fpath}"
                    return self._reply(302, common + [("Location", loc), ("X-Linked-Size", str(len(data))),
                                                      ("X-Linked-Etag", f'"{hub.sha256(fpath)}"'),
                                                      ("ETag", f'"{git_oid(data)}"')])
                if self.command == "HEAD":
                    self.send_response(200)
                    for k, v in common + [("ETag", f'"{git_oid(data)}"'), ("Content-Length", str(len(data)))]:
                        self.send_header(k, v)
                    self.end_headers()
                    return self._record()
                self._send_bytes(fpath, data, common)

            def _cdn(self, path):
                sha = path.rsplit("/", 1)[-1]
                fpath = next((p for p in hub.files if hub.sha256(p) == sha), None)
                if fpath is None:
                    return self._reply(404, [], b"no such blob")
                self._send_bytes(fpath, hub.files[fpath], [])

            def _send_bytes(self, fpath, data, headers):
                if fpath in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start, code = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    code = 206
                body = data[start:]
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                with hub.lock:
                    cut = hub.cut_after.pop(fpath, None)
                limit = len(body) if cut is None else max(0, cut - start)
                sent = 0
                try:
                    while sent < limit:
                        piece = body[sent:min(sent + 16384, limit)]
                        self.wfile.write(piece)
                        self.wfile.flush()
                        sent += len(piece)
                        if hub.delay:
                            time.sleep(hub.delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self._record(sent)
                if sent < len(body):
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:
                        pass

        return H


class NotAHub:
    """A web server that is not a Hugging Face hub (a wrong HF_ENDPOINT, a captive portal)."""

    def __init__(self):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                body = b"<html><body>Welcome</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":  # serve a folder as a repo until killed
    import argparse
    import os
    from pathlib import Path
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("folder")
    ap.add_argument("--manifest-out", help="write a manifest of the served files here")
    ap.add_argument("--name", default="served")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--commit", default="0123456789abcdef" * 2 + "01234567")
    a = ap.parse_args()
    root = Path(a.folder)
    files = {str(p.relative_to(root)).replace(os.sep, "/"): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file()}
    with FakeHub(a.repo, files, commit=a.commit) as hub:
        hub.delay = a.delay
        if a.manifest_out:
            Path(a.manifest_out).write_text(json.dumps(hub.manifest(a.name), indent=1))
        print(hub.endpoint, flush=True)
        threading.Event().wait()
