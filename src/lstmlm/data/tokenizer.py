"""Text -> words. A corpus is UTF-8 text, one sentence per line; words are split on whitespace and every line
ends with the `<eos>` token (the tutorial's `read_words`: newline -> `<eos>`, then split).

Files are read in blocks of about a megabyte that end at whitespace (`TextReader`), so a corpus of any size is
tokenised with bounded memory and gives exactly the words that splitting the whole text at once would give: a
cut at whitespace separates words the same way `str.split()` does, and no character's lower-case form depends
on anything across whitespace.
"""

import gzip
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from lstmlm.errors import LstmlmError

EOS = "<eos>"
UNK = "<unk>"
BLOCK_BYTES = 1 << 20
# Single-byte ASCII whitespace (never part of a multi-byte UTF-8 sequence): where a block may end when a line
# is longer than a block. A newline is preferred.
_CUT_BYTES = (b"\n", b" ", b"\t", b"\r", b"\x0b", b"\x0c")


def split_words(text, lowercase=False):
    """Words of one piece of text, no `<eos>` added. Used for prompts."""
    return (text.lower() if lowercase else text).split()


def block_words(text, lowercase=False):
    """Words of a piece of corpus text, `<eos>` for every newline in it.

    Example:
        >>> block_words("The cat\\n\\nsat\\n", lowercase=True)
        ['the', 'cat', '<eos>', '<eos>', 'sat', '<eos>']
    """
    if lowercase:
        text = text.lower()
    return text.replace("\n", f" {EOS} ").split()


@dataclass(frozen=True)
class TextSource:
    """Where a corpus split's text comes from: a file on disk, or a gzipped text bundled in the package.

    Args:
        path: a filesystem path (or, for bundled data, an importlib.resources Traversable).
        name: how "contains no words" names it (default: the path).
        published_sha256: bundled data: the sha256 its decompressed text must have, checked on every read.
        strip_lines: bundled data: read each line without its leading and trailing spaces (PTB-char, below).
    """

    path: object
    name: str = ""
    published_sha256: str | None = None
    strip_lines: bool = False

    @property
    def label(self):
        return self.name or str(self.path)

    def open(self):
        """The text's bytes as a binary stream, or a one-line LstmlmError."""
        if self.published_sha256 is not None:  # bundled: a small gzipped resource, maybe inside a zip
            stream = gzip.GzipFile(fileobj=io.BytesIO(self.path.read_bytes()))
            if not self.strip_lines:
                return stream
            # PTB lines read " aer banknote ... \n": without the two spaces, the text is PTB-char's (5.01M
            # training characters, words separated by one space where Mikolov's ptb.char files write " _ ").
            with stream:
                return io.BytesIO(b"\n".join(line.strip(b" ") for line in stream.read().split(b"\n")))
        path = Path(self.path)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise LstmlmError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise LstmlmError(f"{path}: is a directory, expected a text file") from None
        except OSError as error:
            raise LstmlmError(f"{path}: cannot read ({error.strerror})") from None

    def sha256(self):
        """The sha256 of the text: bundled data's published one (checked when the text is read), else the file's."""
        if self.published_sha256 is not None:
            return self.published_sha256
        with self.open() as stream:
            try:
                return hashlib.file_digest(stream, "sha256").hexdigest()
            except OSError as error:
                raise LstmlmError(f"{self.path}: cannot read ({error.strerror})") from None


class TextReader:
    """Iterate over the UTF-8 text of a source in blocks that end at whitespace (a newline where possible).

    The bytes are hashed as they are read; after the last block, `sha256` holds their digest. A bundled source
    whose digest differs from the published one raises LstmlmError, and so does a file whose digest differs
    from `expected_sha256` (it changed while it was being read). Bytes that are not UTF-8 raise LstmlmError
    naming the line, as decoding the whole file would.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = path.write_bytes(b"one two\\nthree")
        >>> [block for block in TextReader(TextSource(path), block_bytes=4)]
        ['one ', 'two\\n', 'three']
    """

    def __init__(self, source, block_bytes=None, expected_sha256=None):
        self.source, self.expected_sha256 = source, expected_sha256
        self.block_bytes = block_bytes or BLOCK_BYTES
        self.sha256 = None

    def __iter__(self):
        hasher = hashlib.sha256()
        buffer = bytearray()
        offset = line = 0  # bytes and newlines before the buffer
        with self.source.open() as stream:
            while True:
                try:
                    chunk = stream.read(self.block_bytes)
                except OSError as error:
                    raise LstmlmError(f"{self.source.path}: cannot read ({error.strerror or error})") from None
                hasher.update(chunk)
                buffer += chunk
                cut = len(buffer) if not chunk else _last_cut(buffer)
                if cut:
                    block = bytes(buffer[:cut])
                    del buffer[:cut]
                    yield self._decode(block, offset, line)
                    offset += len(block)
                    line += block.count(b"\n")
                if not chunk:
                    break
        self.sha256 = hasher.hexdigest()
        self._check_digest()

    def _decode(self, block, offset, line):
        try:
            return block.decode("utf-8")
        except UnicodeDecodeError as error:
            line += block.count(b"\n", 0, error.start) + 1
            raise LstmlmError(f"{self.source.path}: line {line}: bytes that are not UTF-8 "
                              f"(at byte {offset + error.start})") from None

    def _check_digest(self):
        published = self.source.published_sha256
        if published is not None and self.sha256 != published:
            raise LstmlmError(f"{self.source.path}: sha256 {self.sha256} does not match the published {published}")
        if self.expected_sha256 is not None and self.sha256 != self.expected_sha256:
            raise LstmlmError(f"{self.source.path}: the file changed while it was being read; run again")


def _last_cut(buffer):
    """The length of the longest prefix of `buffer` that ends at a newline, else at other whitespace; 0: none."""
    cut = buffer.rfind(b"\n")
    if cut < 0:
        cut = max(buffer.rfind(byte) for byte in _CUT_BYTES[1:])
    return cut + 1


def no_words_error(label):
    return LstmlmError(f"{label}: contains no words (empty or whitespace only)")


def read_words(path, lowercase=False):
    """Words of a corpus file, `<eos>` after every line (blank lines included, as the tutorial does).

    A list of every word: for prompts and small files. Corpora go through `lstmlm.data.corpus`, which never builds one.

    Raises LstmlmError for a missing file, bytes that are not UTF-8 (naming the line), or a file with no words.
    """
    words = []
    for block in TextReader(TextSource(path)):
        words.extend(block_words(block, lowercase))
    if not any(word != EOS for word in words):
        raise no_words_error(path)
    return words


def words_of_text(text, lowercase=False, source="text"):
    words = block_words(text, lowercase)
    if not any(word != EOS for word in words):
        raise no_words_error(source)
    return words
