"""Text -> words. A corpus is UTF-8 text, one sentence per line; words are split on whitespace and every line
ends with the `<eos>` token (the tutorial's `read_words`: newline -> `<eos>`, then split).
"""

from pathlib import Path

from lstmlm.errors import LstmlmError

EOS = "<eos>"
UNK = "<unk>"


def split_words(text, lowercase=False):
    """Words of one piece of text, no `<eos>` added. Used for prompts."""
    return (text.lower() if lowercase else text).split()


def read_words(path, lowercase=False):
    """Words of a corpus file, `<eos>` after every line (blank lines included, as the tutorial does).

    Raises LstmlmError for a missing file, bytes that are not UTF-8 (naming the line), or a file with no words.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LstmlmError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LstmlmError(f"{path}: is a directory, expected a text file") from None
    except OSError as error:
        raise LstmlmError(f"{path}: cannot read ({error.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise LstmlmError(f"{path}: line {line}: bytes that are not UTF-8 (at byte {error.start})") from None
    return words_of_text(text, lowercase, source=str(path))


def words_of_text(text, lowercase=False, source="text"):
    if lowercase:
        text = text.lower()
    words = text.replace("\n", f" {EOS} ").split()
    if not any(word != EOS for word in words):
        raise LstmlmError(f"{source}: contains no words (empty or whitespace only)")
    return words
