"""`emo_model.download` against a stand-in hub on 127.0.0.1 (hub_server.FakeHub): exactly the manifest's files,
resume after a cut or a killed process, corruption found and fixed, and the errors a user meets."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emo_model.download import EMODownloadError, download, parse_manifest, status
from emo_model.download.paths import RECORD_DIR
from hub_server import FakeHub, NotAHub

ROOT = Path(__file__).resolve().parents[2]
REPO = "team/tiny-model"
STATE = r"\b(missing|partial|complete)\b"


def payload(n, seed):
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]


FILES = {"weights/net.pth": payload(600_000, 1), "vae/model.safetensors": payload(300_000, 2),
         "vae/config.json": b'{"a": 1}\n', "README.md": b"# not needed\n", "extra/unused.bin": payload(200_000, 3)}
NEEDED = ["weights/net.pth", "vae/model.safetensors", "vae/config.json"]


@pytest.fixture
def hub():
    with FakeHub(REPO, FILES) as h:
        yield h


def manifest(hub, **kw):
    return parse_manifest(hub.manifest("tiny", NEEDED, **kw))


def test_fetches_only_the_manifest_files_and_a_second_run_makes_no_request(hub, tmp_path):
    r = download(manifest(hub), tmp_path, endpoint=hub.endpoint)
    folder = tmp_path / "tiny"
    assert r.path == folder and sorted(r.fetched) == sorted(NEEDED)
    for p in NEEDED:
        assert (folder / p).read_bytes() == FILES[p]
    asked = {r["path"].split("/resolve/")[-1].split("/", 1)[-1] for r in hub.requests("api")}
    assert asked == set(NEEDED)                       # README.md and extra/ never requested
    assert not (folder / "README.md").exists() and not (folder / "extra").exists()
    assert hub.payload_bytes() == sum(len(FILES[p]) for p in NEEDED)
    assert not (tmp_path / ".tiny.download").exists() and not (folder / RECORD_DIR / "parts").exists()
    assert status(manifest(hub), tmp_path)["state"] == "complete"
    n = len(hub.log)
    r2 = download(manifest(hub), tmp_path, endpoint=hub.endpoint)
    assert r2.fetched == [] and len(hub.log) == n     # not a single request


def test_hash_unknown_in_manifest_is_taken_from_the_hub_and_recorded(hub, tmp_path):
    download(manifest(hub, sha=False, size=False), tmp_path, endpoint=hub.endpoint)
    rec = json.loads((tmp_path / "tiny" / RECORD_DIR / "record.json").read_text())
    assert rec["files"]["weights/net.pth"] == {"size": 600_000, "sha256": hub.sha256("weights/net.pth")}
    assert rec["files"]["vae/config.json"]["git_sha1"] == hashlib.sha1(
        b"blob %d\0" % len(FILES["vae/config.json"]) + FILES["vae/config.json"]).hexdigest()
    assert rec["revision"] == hub.commit and rec["complete"] is True


def test_a_connection_cut_half_way_resumes_from_the_bytes_received(hub, tmp_path):
    hub.cut_after["weights/net.pth"] = 300_000
    r = download(manifest(hub), tmp_path, endpoint=hub.endpoint)
    assert (tmp_path / "tiny" / "weights/net.pth").read_bytes() == FILES["weights/net.pth"]
    ranges = [q["range"] for q in hub.requests("cdn", "GET") if q["range"]]
    assert ranges and int(ranges[0][6:].rstrip("-")) >= 290_000, ranges   # not from zero
    total = sum(len(FILES[p]) for p in NEEDED)
    assert hub.payload_bytes() <= total + 16384, (hub.payload_bytes(), total)
    assert r.transferred == total                    # every byte written once


def test_a_cut_download_left_on_disk_continues_on_the_next_run(hub, tmp_path, monkeypatch):
    monkeypatch.setattr("emo_model.download.fetch.RETRIES", 0)
    hub.cut_after["weights/net.pth"] = 250_000
    with pytest.raises(EMODownloadError, match="run the same command again"):
        download(manifest(hub), tmp_path, endpoint=hub.endpoint)
    assert not (tmp_path / "tiny").exists()           # not installed: never a half model in models/emo
    part = tmp_path / ".tiny.download" / RECORD_DIR / "parts" / "weights/net.pth.part"
    assert 200_000 <= part.stat().st_size <= 250_000
    before = hub.payload_bytes()
    download(manifest(hub), tmp_path, endpoint=hub.endpoint)
    assert (tmp_path / "tiny" / "weights/net.pth").read_bytes() == FILES["weights/net.pth"]
    assert hub.payload_bytes() - before <= sum(len(FILES[p]) for p in NEEDED) - 200_000


def test_verify_finds_a_changed_file_and_fetches_only_it_again(hub, tmp_path):
    download(manifest(hub), tmp_path, endpoint=hub.endpoint)
    f = tmp_path / "tiny" / "vae/model.safetensors"
    data = bytearray(f.read_bytes())
    data[1000] ^= 0x55
    f.write_bytes(bytes(data))                        # same size: only a checksum finds it
    n = len(hub.log)
    download(manifest(hub), tmp_path, endpoint=hub.endpoint)
    assert len(hub.log) == n                          # a plain run trusts the record (size only)
    messages = []
    r = download(manifest(hub), tmp_path, endpoint=hub.endpoint, verify=True, log=messages.append)
    assert r.fetched == ["vae/model.safetensors"] and f.read_bytes() == FILES["vae/model.safetensors"]
    assert any("changed on disk" in m for m in messages)
    assert {q["path"].rsplit("/", 1)[-1] for q in hub.log[n:] if q["host"] == "api"} == {"model.safetensors"}


def test_verify_works_offline_against_the_record(hub, tmp_path, monkeypatch):
    download(manifest(hub, sha=False), tmp_path, endpoint=hub.endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.log)
    download(manifest(hub, sha=False), tmp_path, endpoint=hub.endpoint, verify=True)
    (tmp_path / "tiny" / "weights/net.pth").write_bytes(b"x" * 600_000)
    with pytest.raises(EMODownloadError, match="HF_HUB_OFFLINE"):
        download(manifest(hub, sha=False), tmp_path, endpoint=hub.endpoint, verify=True)
    assert len(hub.log) == n


def test_offline_makes_no_request_and_names_the_switch(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EMODownloadError, match="HF_HUB_OFFLINE is set.*3 file"):
        download(manifest(hub), tmp_path, endpoint=hub.endpoint)
    assert hub.log == []


def test_missing_file_gives_a_404_error_naming_it_and_installs_nothing(hub, tmp_path):
    m = parse_manifest(hub.manifest("tiny", NEEDED + ["weights/missing.pth"]))
    with pytest.raises(EMODownloadError, match="'weights/missing.pth' is not in team/tiny-model"):
        download(m, tmp_path, endpoint=hub.endpoint)
    assert not (tmp_path / "tiny").exists() and hub.requests("cdn") == []


def test_wrong_revision_and_wrong_repo_are_named(hub, tmp_path):
    with pytest.raises(EMODownloadError, match="revision .* not found"):
        download(manifest(hub, revision="f" * 40), tmp_path, endpoint=hub.endpoint)
    m = parse_manifest(dict(hub.manifest("tiny", NEEDED), repo="team/other"))
    with pytest.raises(EMODownloadError, match="private or gated.*hf auth login"):
        download(m, tmp_path, endpoint=hub.endpoint)


def test_wrong_mirror_and_no_network_give_their_errors(hub, tmp_path):
    with NotAHub() as other:
        with pytest.raises(EMODownloadError, match="not a Hugging Face hub or mirror.*HF_ENDPOINT"):
            download(manifest(hub), tmp_path, endpoint=other.endpoint)
    closed = hub.endpoint.rsplit(":", 1)[0] + ":9"   # discard port: nothing listens there
    with pytest.raises(EMODownloadError, match="cannot reach .*check the network"):
        download(manifest(hub), tmp_path, endpoint=closed)
    assert not (tmp_path / "tiny").exists()


def test_hf_endpoint_variable_is_honoured(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    download(manifest(hub), tmp_path)
    assert len(hub.requests("api", "HEAD")) == 3 and hub.payload_bytes() > 0


def test_disk_full_is_found_before_any_byte_is_fetched(hub, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("emo_model.download.fetch.shutil.disk_usage", lambda p: usage(10**9, 10**9, 1_000_000))
    with pytest.raises(EMODownloadError, match="not enough disk space.*--dest"):
        download(manifest(hub), tmp_path, endpoint=hub.endpoint)
    assert hub.requests(method="GET") == []
    monkeypatch.setattr("emo_model.download.fetch.shutil.disk_usage", shutil.disk_usage)


def test_a_corrupted_transfer_is_rejected_and_not_installed(hub, tmp_path):
    hub.corrupt.add("vae/model.safetensors")
    with pytest.raises(EMODownloadError, match="arrived corrupted"):
        download(manifest(hub, sha=False), tmp_path, endpoint=hub.endpoint)
    assert not (tmp_path / "tiny").exists()
    assert not (tmp_path / ".tiny.download" / "vae/model.safetensors").exists()


def test_manifest_checksum_differing_from_the_hub_stops_before_fetching(hub, tmp_path):
    data = hub.manifest("tiny", NEEDED)
    data["files"][0]["sha256"] = "0" * 64
    with pytest.raises(EMODownloadError, match="differs from the manifest"):
        download(parse_manifest(data), tmp_path, endpoint=hub.endpoint)
    assert hub.requests(method="GET") == []


def test_token_goes_to_the_hub_but_not_to_the_cdn(hub, tmp_path):
    download(manifest(hub), tmp_path, endpoint=hub.endpoint, token="hf_secret")
    assert all(q["auth"] == "Bearer hf_secret" for q in hub.requests("api"))
    assert hub.requests("cdn") and all(q["auth"] is None for q in hub.requests("cdn"))


def test_a_killed_process_resumes_from_the_bytes_on_disk(tmp_path):
    big = {"weights/net.pth": payload(3_000_000, 7), "vae/config.json": b"{}\n"}
    with FakeHub(REPO, big) as hub:
        mf = tmp_path / "m.json"
        mf.write_text(json.dumps(hub.manifest("tiny")))
        hub.delay = 0.01                                # ~1.6 MB/s: a few seconds for the big file
        cmd = [sys.executable, "-m", "emo_model", "download", "--manifest", str(mf), "--dest", str(tmp_path / "d"),
               "--endpoint", hub.endpoint]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        part = tmp_path / "d" / ".tiny.download" / RECORD_DIR / "parts" / "weights/net.pth.part"
        deadline = time.time() + 240                    # the CLI imports torch first: slow on a busy machine
        while time.time() < deadline and (not part.exists() or part.stat().st_size < 1_000_000):
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        on_disk = part.stat().st_size
        assert 1_000_000 <= on_disk < 3_000_000 and not (tmp_path / "d" / "tiny").exists()
        hub.delay = 0.0
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert (tmp_path / "d" / "tiny" / "weights/net.pth").read_bytes() == big["weights/net.pth"]
        resumed = [q for q in hub.log if q["host"] == "cdn" and q["range"]]
        assert resumed and int(resumed[-1]["range"][6:].rstrip("-")) == on_disk
        assert resumed[-1]["sent"] == 3_000_000 - on_disk                  # just the rest of the file
        assert len([q for q in hub.log if q["host"] == "cdn" and not q["range"]]) == 1  # one start from zero


def test_token_from_the_usual_setting_is_used(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")                 # what huggingface_hub.get_token() reads
    download(manifest(hub), tmp_path, endpoint=hub.endpoint)
    assert {q["auth"] for q in hub.requests("api")} == {"Bearer hf_from_env"}


def test_cli_list_dry_run_and_install_state(hub, tmp_path, monkeypatch, capsys):
    from emo_model.cli import main
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / "tiny.json").write_text(json.dumps(hub.manifest("tiny", NEEDED)))
    monkeypatch.setenv("EMO_DOWNLOAD_MANIFESTS", str(mdir))       # a team's own manifests, beside the built-ins
    dest = str(tmp_path / "emo")
    assert main(["download", "--list", "--dest", dest]) == 0
    out = capsys.readouterr().out
    assert "hallo" in out and "echomimic-pose-acc" in out and "non-commercial" in out.lower()
    assert [re.search(STATE, line)[0] for line in out.splitlines() if line.startswith("tiny ")] == ["missing"]
    assert main(["download", "tiny", "--dest", dest, "--dry-run", "--endpoint", hub.endpoint]) == 0
    assert "would fetch or check weights/net.pth" in capsys.readouterr().out and hub.log == []
    assert main(["download", "tiny", "--dest", dest, "--endpoint", hub.endpoint]) == 0
    assert main(["download", "--list", "--dest", dest]) == 0
    out = capsys.readouterr().out
    assert [re.search(STATE, line)[0] for line in out.splitlines() if line.startswith("tiny ")] == ["complete"]
    assert main(["download", "nonesuch", "--dest", dest]) == 2
    assert "no built-in model named 'nonesuch'" in capsys.readouterr().err
