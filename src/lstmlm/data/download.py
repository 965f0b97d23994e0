"""`lstmlm download URL... --out DIR`: fetch corpus files over HTTP(S), check them, keep them only if whole.

Each file is streamed to a temporary name beside its destination, its size bounded and its sha256 checked
(when given), then renamed into place: a failed or interrupted download never leaves a partial file where a
good one was. Files ending in `.gz` are also decompressed (the `.gz` is kept). Then train on them:

    lstmlm download https://example.org/wiki.train.txt https://example.org/wiki.valid.txt --out data/wiki
    lstmlm train --train data/wiki/wiki.train.txt --valid data/wiki/wiki.valid.txt --out runs/wiki
"""

import gzip
import hashlib
import shutil
import zlib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from lstmlm.errors import LstmlmError
from lstmlm.files import atomic_path

CHUNK = 1 << 20


def download(url, out_dir, sha256=None, max_bytes=2 << 30, timeout=60):
    """Download `url` into `out_dir`; returns the Path of the file (decompressed if it was .gz).

    Args:
        url: http(s) address of one file.
        out_dir: folder to write into (created if missing).
        sha256: expected hex digest of the downloaded bytes, or None to skip the check.
        max_bytes: refuse files larger than this.
    """
    parsed = urllib.parse.urlparse(url)
    name = Path(urllib.parse.unquote(parsed.path)).name
    if parsed.scheme not in ("http", "https") or not name:
        raise LstmlmError(f"{url}: expected an http(s) address of a file")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LstmlmError(f"out_dir {out_dir}: exists and is not a folder", argument="out_dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LstmlmError(f"out_dir {out_dir}: cannot create the folder ({error.strerror or error})",
                          argument="out_dir") from None
    destination = out_dir / name
    digest = hashlib.sha256()
    size = 0
    with atomic_path(destination, "download") as temporary:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(temporary, "wb") as file:
                while chunk := response.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise LstmlmError(f"{url}: larger than the {max_bytes:,}-byte limit")
                    digest.update(chunk)
                    file.write(chunk)
        except urllib.error.HTTPError as error:
            raise LstmlmError(f"{url}: HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise LstmlmError(f"{url}: cannot download ({getattr(error, 'reason', error)})") from None
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise LstmlmError(f"{url}: sha256 {digest.hexdigest()} does not match the expected {sha256}")
    if name.endswith(".gz"):
        return _gunzip(destination)
    return destination


def _gunzip(path):
    target = path.with_suffix("")
    with atomic_path(target, "unpacked file") as temporary:
        try:
            with gzip.open(path, "rb") as source, open(temporary, "wb") as file:
                shutil.copyfileobj(source, file, CHUNK)
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise LstmlmError(f"{path}: not a valid gzip file ({error})") from None
    return target


def add_parser(subparsers):
    parser = subparsers.add_parser("download", help="fetch corpus files over HTTP(S), checked and atomic")
    parser.add_argument("urls", nargs="+", metavar="URL")
    parser.add_argument("--out", required=True, help="folder to write the files into")
    parser.add_argument("--sha256", action="append", default=[],
                        help="expected sha256 of each URL's bytes, in URL order (give all or none)")
    parser.set_defaults(handler=run_download)


def run_download(args):
    if args.sha256 and len(args.sha256) != len(args.urls):
        raise LstmlmError(f"--sha256: got {len(args.sha256)} digests for {len(args.urls)} URLs")
    for url, sha256 in zip(args.urls, args.sha256 or [None] * len(args.urls)):
        try:
            path = download(url, args.out, sha256)
        except LstmlmError as error:
            if error.argument != "out_dir":
                raise
            # download()'s out_dir is the flag --out (for_command_line() would write --out-dir)
            raise LstmlmError("out" + str(error)[len("out_dir"):], argument="out") from None
        print(f"{path}\t{path.stat().st_size:,} bytes")
    return 0
