"""`lstmlm download` against a local HTTP server on 127.0.0.1: whole files or nothing, sha256 checked."""

import functools
import gzip
import hashlib
import http.server
import threading

import pytest

from lstmlm.cli import main
from lstmlm.data.download import download
from lstmlm.errors import LstmlmError

TEXT = "".join(f" the cat sat on mat number {i % 7}\n" for i in range(400)).encode()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder served over HTTP on a free loopback port; yields the base URL."""
    root = tmp_path_factory.mktemp("site")
    (root / "corpus.train.txt").write_bytes(TEXT)
    (root / "corpus.valid.txt").write_bytes(TEXT[:2000])
    (root / "corpus.test.txt.gz").write_bytes(gzip.compress(TEXT[:3000]))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_is_byte_identical_and_checked(site, tmp_path):
    path = download(f"{site}/corpus.train.txt", tmp_path, sha256=hashlib.sha256(TEXT).hexdigest())
    assert path == tmp_path / "corpus.train.txt" and path.read_bytes() == TEXT
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.train.txt"]  # no temporary left


def test_gzip_is_decompressed(site, tmp_path):
    path = download(f"{site}/corpus.test.txt.gz", tmp_path)
    assert path.name == "corpus.test.txt" and path.read_bytes() == TEXT[:3000]


def test_wrong_checksum_keeps_the_old_file_and_leaves_no_partial(site, tmp_path):
    (tmp_path / "corpus.train.txt").write_bytes(b"old good file\n")
    with pytest.raises(LstmlmError, match="sha256 .* does not match"):
        download(f"{site}/corpus.train.txt", tmp_path, sha256="0" * 64)
    assert (tmp_path / "corpus.train.txt").read_bytes() == b"old good file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.train.txt"]


def test_missing_file_and_size_limit_are_one_line_errors(site, tmp_path):
    with pytest.raises(LstmlmError, match="HTTP 404"):
        download(f"{site}/nope.txt", tmp_path)
    with pytest.raises(LstmlmError, match="larger than the 100-byte limit"):
        download(f"{site}/corpus.train.txt", tmp_path, max_bytes=100)
    with pytest.raises(LstmlmError, match="expected an http"):
        download("ftp://example.org/x.txt", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_download_then_train(site, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["download", f"{site}/corpus.train.txt", f"{site}/corpus.valid.txt", "--out", str(data)]) == 0
    assert (data / "corpus.valid.txt").read_bytes() == TEXT[:2000]
    assert main(["train", "--preset", "tiny", "--train", str(data / "corpus.train.txt"), "--valid",
                 str(data / "corpus.valid.txt"), "--epochs", "1", "--hidden-size", "8", "--threads", "1",
                 "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "model.keras").is_file()
    assert main(["download", f"{site}/missing.txt", "--out", str(data)]) == 2
    assert "HTTP 404" in capsys.readouterr().err
