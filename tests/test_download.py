"""Tests for multitask/download.py against a throwaway HTTP server on 127.0.0.1 (never the web)."""

import hashlib
import http.server
import json
import socket
import threading
from functools import partial
from pathlib import Path

import pytest

from multitask.data import DataError, dataset_paths, load_sst
from multitask.download import (
    DEFAULT_BASE_URL,
    FileInfo,
    default_manifest_path,
    ensure_files,
    load_manifest,
)

SST_TEXT = b"\tid\tsentence\tsentiment\n0\ta\tA fine film .\t3\n1\tb\tA dull one .\t1\n"


def info_for(name: str, content: bytes) -> FileInfo:
    return FileInfo(name=name, bytes=len(content), sha256=hashlib.sha256(content).hexdigest())


def leftovers(folder: Path) -> list[str]:
    """Every file in ``folder``: after a failure there must be none, temporary or final."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Keep urllib from routing the 127.0.0.1 requests through a proxy from the environment."""
    for scheme in ("http", "https", "all"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and records each requested path instead of logging to stderr."""

    def __init__(self, *args, requests, **kwargs):
        self.requests = requests
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):
        pass


class _Server:
    """A local HTTP server in a background thread; ``base_url`` ends with a slash."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        # A short poll interval makes shutdown quick; the default 0.5 s adds up over many tests.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def stop(self):
        """Shut down and close the port (safe to call twice)."""
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP: (folder, server, list of requested paths)."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests = []
    server = _Server(partial(_QuietHandler, directory=str(folder), requests=requests))
    yield folder, server, requests
    server.stop()


def test_downloads_and_verifies(tmp_path, served):
    folder, server, requests = served
    (folder / "ids-sst-dev.csv").write_bytes(SST_TEXT)
    data_dir = tmp_path / "data" / "nested"  # created on demand
    manifest = {"ids-sst-dev.csv": info_for("ids-sst-dev.csv", SST_TEXT)}

    paths = ensure_files(data_dir, ["ids-sst-dev.csv"], base_url=server.base_url,
                         manifest=manifest, progress=False)

    assert paths == {"ids-sst-dev.csv": data_dir / "ids-sst-dev.csv"}
    assert paths["ids-sst-dev.csv"].read_bytes() == SST_TEXT
    assert leftovers(data_dir) == ["ids-sst-dev.csv"]
    assert requests == ["/ids-sst-dev.csv"]
    assert [e.id for e in load_sst(paths["ids-sst-dev.csv"]).examples] == ["a", "b"]


def test_base_url_without_trailing_slash(tmp_path, served):
    folder, server, _ = served
    (folder / "f.csv").write_bytes(b"x")
    ensure_files(tmp_path / "d", ["f.csv"], base_url=server.base_url.rstrip("/"),
                 manifest={"f.csv": info_for("f.csv", b"x")}, progress=False)
    assert (tmp_path / "d" / "f.csv").read_bytes() == b"x"


def test_progress_bar_runs(tmp_path, served, capsys):
    folder, server, _ = served
    (folder / "f.csv").write_bytes(b"y" * 200_000)
    ensure_files(tmp_path / "d", ["f.csv"], base_url=server.base_url,
                 manifest={"f.csv": info_for("f.csv", b"y" * 200_000)}, progress=True)
    assert "f.csv" in capsys.readouterr().err


def test_checksum_mismatch_is_rejected_and_nothing_is_left(tmp_path, served):
    folder, server, _ = served
    (folder / "sts-dev.csv").write_bytes(b"corrupted " + SST_TEXT)
    good = info_for("sts-dev.csv", SST_TEXT)
    data_dir = tmp_path / "data"

    with pytest.raises(DataError) as caught:
        ensure_files(data_dir, ["sts-dev.csv"], base_url=server.base_url,
                     manifest={"sts-dev.csv": good}, progress=False)

    message = str(caught.value)
    got = hashlib.sha256(b"corrupted " + SST_TEXT).hexdigest()
    assert "sts-dev.csv" in message and good.sha256 in message and got in message
    assert leftovers(data_dir) == []


def test_size_mismatch_alone_is_rejected(tmp_path, served):
    folder, server, _ = served
    (folder / "f.csv").write_bytes(b"abc")
    wrong_size = FileInfo("f.csv", bytes=4, sha256=None)
    with pytest.raises(DataError, match="4 bytes.*3 bytes"):
        ensure_files(tmp_path / "d", ["f.csv"], base_url=server.base_url,
                     manifest={"f.csv": wrong_size}, progress=False)
    assert leftovers(tmp_path / "d") == []


def test_unknown_checksum_downloads_and_says_so(tmp_path, served, capsys):
    folder, server, _ = served
    (folder / "quora-train.csv").write_bytes(b"anything")
    manifest = {"quora-train.csv": FileInfo("quora-train.csv", None, None)}
    ensure_files(tmp_path / "d", ["quora-train.csv"], base_url=server.base_url,
                 manifest=manifest, progress=False)
    assert (tmp_path / "d" / "quora-train.csv").read_bytes() == b"anything"
    assert "no checksum known for quora-train.csv" in capsys.readouterr().err


def test_present_file_is_not_downloaded_again(tmp_path, served):
    folder, server, requests = served
    (folder / "ids-sst-dev.csv").write_bytes(SST_TEXT)
    (folder / "sts-dev.csv").write_bytes(b"sts")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # A local copy that differs from the manifest (like the offline Quora stand-in) is respected.
    (data_dir / "ids-sst-dev.csv").write_bytes(b"local copy")
    manifest = {"ids-sst-dev.csv": info_for("ids-sst-dev.csv", SST_TEXT),
                "sts-dev.csv": info_for("sts-dev.csv", b"sts")}

    ensure_files(data_dir, ["ids-sst-dev.csv", "sts-dev.csv"], base_url=server.base_url,
                 manifest=manifest, progress=False)

    assert requests == ["/sts-dev.csv"]
    assert (data_dir / "ids-sst-dev.csv").read_bytes() == b"local copy"


def test_all_present_needs_no_network(tmp_path):
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_bytes(b"x")
    # Port 9 on 127.0.0.1 ("discard") is never contacted: nothing is missing.
    paths = ensure_files(tmp_path, ["a.csv", "b.csv"], base_url="http://127.0.0.1:9/",
                         manifest={}, progress=False)
    assert paths == {"a.csv": tmp_path / "a.csv", "b.csv": tmp_path / "b.csv"}


def test_server_gone_names_every_missing_file(tmp_path, served):
    folder, server, _ = served
    (folder / "ids-sst-dev.csv").write_bytes(SST_TEXT)
    server.stop()  # the port is now closed: connection refused
    data_dir = tmp_path / "data"
    names = ["ids-sst-dev.csv", "sts-dev.csv", "quora-dev.csv"]

    with pytest.raises(DataError) as caught:
        ensure_files(data_dir, names, base_url=server.base_url, manifest={}, progress=False)

    message = str(caught.value)
    assert all(name in message for name in names)
    assert str(data_dir) in message and "--data-dir" in message
    assert leftovers(data_dir) == []


def test_offline_run_does_not_leave_an_empty_data_folder(tmp_path, served):
    folder, server, _ = served
    server.stop()
    data_dir = tmp_path / "new" / "data"  # neither folder exists yet
    with pytest.raises(DataError, match="Could not download"):
        ensure_files(data_dir, ["sts-dev.csv"], base_url=server.base_url, manifest={}, progress=False)
    assert not (tmp_path / "new").exists()


def test_existing_data_folder_is_kept_after_a_failed_download(tmp_path, served):
    folder, server, _ = served
    server.stop()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(DataError):
        ensure_files(data_dir, ["sts-dev.csv"], base_url=server.base_url, manifest={}, progress=False)
    assert data_dir.is_dir()


def test_a_folder_where_a_data_file_belongs_is_a_clear_error_not_a_download(tmp_path):
    (tmp_path / "sts-dev.csv").mkdir()
    with pytest.raises(DataError, match=r"sts-dev.csv: a folder \(or other non-file\), not the dataset file"):
        ensure_files(tmp_path, ["sts-dev.csv"], base_url="http://127.0.0.1:9/", manifest={}, progress=False)


def test_data_dir_naming_a_file_is_a_clear_error(tmp_path):
    a_file = tmp_path / "sts-dev.csv"
    a_file.write_text("not a folder")
    with pytest.raises(DataError, match=f"^{a_file}: the data folder is a file.*--data-dir"):
        ensure_files(a_file, ["sts-dev.csv"], manifest={}, progress=False)
    with pytest.raises(DataError, match="cannot create the data folder"):
        ensure_files(a_file / "data", ["sts-dev.csv"], manifest={}, progress=False)
    assert a_file.read_text() == "not a folder"


def test_http_404_after_a_good_file(tmp_path, served):
    folder, server, _ = served
    (folder / "ids-sst-dev.csv").write_bytes(SST_TEXT)
    data_dir = tmp_path / "data"
    manifest = {"ids-sst-dev.csv": info_for("ids-sst-dev.csv", SST_TEXT)}

    with pytest.raises(DataError) as caught:
        ensure_files(data_dir, ["ids-sst-dev.csv", "missing.csv", "other.csv"],
                     base_url=server.base_url, manifest=manifest, progress=False)

    message = str(caught.value)
    assert "404" in message and "missing.csv" in message and "other.csv" in message
    assert "Missing from" in message and "ids-sst-dev.csv" not in message.split("Missing from")[1]
    # The file that did arrive, verified, stays; nothing else is left behind.
    assert leftovers(data_dir) == ["ids-sst-dev.csv"]


def test_timeout_is_a_clear_error(tmp_path):
    # A socket that accepts connections (via the backlog) but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        base_url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(DataError, match="f.csv"):
            ensure_files(tmp_path / "d", ["f.csv"], base_url=base_url, manifest={},
                         progress=False, timeout=0.3)
    assert leftovers(tmp_path / "d") == []


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Promises 1000 bytes, sends 10, then hangs up: a transfer cut off midway."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.close_connection = True

    def log_message(self, format, *args):
        pass


def test_cut_off_transfer_leaves_nothing(tmp_path):
    server = _Server(_TruncatingHandler)
    try:
        with pytest.raises(DataError, match="10 of 1000 bytes"):
            ensure_files(tmp_path / "d", ["f.csv"], base_url=server.base_url, manifest={},
                         progress=False)
    finally:
        server.stop()
    assert leftovers(tmp_path / "d") == []


def test_interrupted_download_leaves_nothing(tmp_path, served, monkeypatch):
    folder, server, _ = served
    (folder / "f.csv").write_bytes(b"x" * 100_000)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("multitask.download._verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_files(tmp_path / "d", ["f.csv"], base_url=server.base_url,
                     manifest={"f.csv": info_for("f.csv", b"")}, progress=False)
    assert leftovers(tmp_path / "d") == []


@pytest.mark.parametrize("name", ["../escape.csv", "sub/f.csv", "", "..", "a\\b.csv"])
def test_names_must_be_plain_file_names(tmp_path, name):
    with pytest.raises(ValueError):
        ensure_files(tmp_path, [name], base_url="http://127.0.0.1:9/", manifest={}, progress=False)


def test_project_manifest_covers_the_standard_files(shared_data_dir):
    manifest = load_manifest()
    assert default_manifest_path().is_file()
    assert set(manifest) == {path.name for path in dataset_paths(".").values()}
    assert manifest["quora-train.csv"].sha256 is None
    assert manifest["quora-test-student.csv"].sha256 is None
    # The offline copies of SST and STS are identical to the public originals, so they check the
    # manifest's numbers (the shared quora-dev.csv is a stand-in and differs on purpose).
    for name in ("ids-sst-train.csv", "ids-sst-dev.csv", "ids-sst-test-student.csv",
                 "sts-train.csv", "sts-dev.csv", "sts-test-student.csv"):
        content = (shared_data_dir / name).read_bytes()
        assert manifest[name] == info_for(name, content), name


def test_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_manifest(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nofiles": {}}))
    with pytest.raises(DataError, match="not a valid manifest"):
        load_manifest(bad)


def test_default_base_url_is_the_course_repository():
    assert DEFAULT_BASE_URL == (
        "https://raw.githubusercontent.com/gpoesia/minbert-default-final-project/main/data/"
    )
