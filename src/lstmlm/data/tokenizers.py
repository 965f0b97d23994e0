"""One Tokenizer concept for the whole pipeline: text -> ids -> text, saved in the run directory, hashed for the
corpus cache. `Config.tokenizer` picks the kind:

- `word` (default): today's whitespace words, `<eos>` per newline, the vocabulary counted on the training split
  (tokenizer.py, vocabulary.py). Its file is `vocab.txt`; a run directory without a tokenizer field is `word`.
- `char`: one id per Unicode character of the training split, numbered like words (by descending count);
  characters unseen in training (or beyond --max-vocabulary-size) are `<unk>` and counted. File
  `characters.json`: {"tokenizer": "char", "format": 1, "lowercase", "tokens": [...], "counts": [...]}, token i
  = id i, each a single character or `<eos>` / `<unk>`.
- `byte`: ids 0-255 are the UTF-8 bytes, 256 is `<eos>`: nothing is ever unknown. File `bytes.json`:
  {"tokenizer": "byte", "format": 1, "lowercase", "eos_id": 256}.
- `bpe`: Hugging Face `tokenizers`' byte-level BPE learned on the training split only, every one of the 256
  bytes in its alphabet (nothing is ever unknown). File `tokenizer.json` in the library's own format
  (`tokenizers.Tokenizer.from_file` reads it); ids are that file's ids, and `<eos>` is one more id after them
  (vocabulary_size - 1), kept out of the file so that a literal "<eos>" in a text stays text.

Newlines: every kind reads a newline as `<eos>` (as `word` always has): a text is a sequence of lines for all
four, evaluation starts a text after an `<eos>`, and a generated `<eos>` is a line break. For `bpe` each line is
encoded on its own (no token spans a newline), in batches through the library's parallel batch encoder.
`--lowercase` lower-cases the text (Python's str.lower) before any kind encodes it. With it off, `byte` and `bpe`
decode exactly: `decode(encode(text)) == text` for any UTF-8 text (and `char` for text of known characters).
"""

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np

from lstmlm.data.tokenizer import EOS, UNK, block_words
from lstmlm.data.vocabulary import Vocabulary
from lstmlm.errors import LstmlmError
from lstmlm.files import atomic_write_text

KINDS = ("word", "char", "byte", "bpe")
FILES = {"word": "vocab.txt", "char": "characters.json", "byte": "bytes.json", "bpe": "tokenizer.json"}
FORMAT = 1
BYTE_ALPHABET = 256
DEFAULT_BPE_SIZE = 8000  # --vocabulary-size 0: the example size
ENCODE_BATCH_LINES = 4096  # lines per call of the BPE batch encoder


def tokenizer_file(kind):
    """The run directory's file of a tokenizer kind.

    Example:
        >>> tokenizer_file("bpe"), tokenizer_file("word")
        ('tokenizer.json', 'vocab.txt')
    """
    return FILES[kind]


class WordTokenizer:
    """Whitespace words and `<eos>`: the Vocabulary of a word run, speaking the Tokenizer interface.

    Example:
        >>> tokenizer = WordTokenizer(Vocabulary.build("a b b <eos>".split()))
        >>> tokenizer.encode("b a\\nzebra").tolist(), tokenizer.decode([0, 2, 1])
        ([0, 2, 1, 3], 'b a\\n')
    """

    kind = "word"

    def __init__(self, vocabulary, lowercase=False):
        self.vocabulary, self.lowercase = vocabulary, bool(lowercase)
        self.eos_id = vocabulary.index.get(EOS)

    def encode(self, text):
        ids, _ = self.encode_counting(text)
        return ids

    def encode_counting(self, text):
        """(int32 ids, number of tokens read as `<unk>`) of corpus text (`<eos>` per newline)."""
        words = block_words(text, self.lowercase)
        unk = self.vocabulary.unk_id
        ids = np.fromiter(map(self.vocabulary.index.get, words, itertools.repeat(unk)), np.int32, len(words))
        return ids, sum(1 for word in words if word not in self.vocabulary.index)

    def decode(self, ids):
        from lstmlm.inference.language_model import join_words

        return join_words(self.vocabulary.decode(ids))

    def token_text(self, token_id):
        """What one token reads as (`<eos>` for a newline)."""
        return self.vocabulary.words[int(token_id)]

    def unknown(self, text):
        return self.vocabulary.unknown(block_words(text, self.lowercase))

    def sha256(self):
        return self.vocabulary.sha256()  # with lowercase, the word cache key as it always was

    def save(self, run_dir):
        self.vocabulary.save(Path(run_dir) / FILES["word"])


class CharTokenizer:
    """One id per character; `<eos>` for a newline; unseen characters are `<unk>`.

    Example:
        >>> tokenizer = CharTokenizer.from_counts({"a": 3, "b": 1, EOS: 1})
        >>> tokenizer.vocabulary.words, tokenizer.encode_counting("ab\\nz")
        (['a', '<eos>', 'b', '<unk>'], (array([0, 2, 1, 3], dtype=int32), 1))
        >>> tokenizer.decode([0, 2, 1])
        'ab\\n'
    """

    kind = "char"

    def __init__(self, vocabulary, lowercase=False):
        self.vocabulary, self.lowercase = vocabulary, bool(lowercase)
        self.eos_id, self.unk_id = vocabulary.index[EOS], vocabulary.unk_id
        self.table = np.full(0x110000, -1, dtype=np.int32)  # code point -> id (-1: unseen), 4.4 MB
        for word, index in vocabulary.index.items():
            if len(word) == 1:
                self.table[ord(word)] = index
        self.table[ord("\n")] = self.eos_id

    @classmethod
    def from_counts(cls, counts, max_size=None, lowercase=False):
        """From {character or `<eos>`: count} of a training text (ids by descending count, `<unk>` added)."""
        return cls(Vocabulary.from_counts(counts, max_size), lowercase)

    @staticmethod
    def count(text, counts, lowercase=False):
        """Add the characters of `text` to the dict `counts` (a newline counts as `<eos>`)."""
        code_points = np.frombuffer((text.lower() if lowercase else text).encode("utf-32-le"), dtype=np.uint32)
        values, numbers = np.unique(code_points, return_counts=True)
        for value, number in zip(values.tolist(), numbers.tolist()):
            key = EOS if value == 10 else chr(value)
            counts[key] = counts.get(key, 0) + number

    def encode(self, text):
        return self.encode_counting(text)[0]

    def encode_counting(self, text):
        code_points = np.frombuffer((text.lower() if self.lowercase else text).encode("utf-32-le"), np.uint32)
        ids = self.table[code_points]
        unknown = ids < 0
        ids[unknown] = self.unk_id
        return ids, int(np.count_nonzero(unknown))

    def unknown(self, text):
        """The characters of `text` read as `<unk>`, in order, each once."""
        text = text.lower() if self.lowercase else text
        return list(dict.fromkeys(c for c in text if self.table[ord(c)] < 0))

    def decode(self, ids):
        return "".join(self.token_text(i) if i != self.eos_id else "\n" for i in ids)

    def token_text(self, token_id):
        return self.vocabulary.words[int(token_id)]

    def sha256(self):
        return _digest("char", self.lowercase, self.vocabulary.words)

    def to_text(self):
        """The text of characters.json."""
        values = {"tokenizer": "char", "format": FORMAT, "lowercase": self.lowercase,
                  "tokens": self.vocabulary.words, "counts": self.vocabulary.counts}
        return json.dumps(values, ensure_ascii=False) + "\n"

    def save(self, run_dir):
        atomic_write_text(Path(run_dir) / FILES["char"], self.to_text(), "tokenizer")

    @classmethod
    def load(cls, path, lowercase):
        return cls.from_text(_read_text(path), lowercase, path)

    @classmethod
    def from_text(cls, text, lowercase, path):
        values = _parse(text, path, "char")
        tokens, counts = values.get("tokens"), values.get("counts")
        if not (isinstance(tokens, list) and isinstance(counts, list) and len(tokens) == len(counts)
                and all(isinstance(t, str) and (len(t) == 1 or t in (EOS, UNK)) for t in tokens)
                and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)):
            raise LstmlmError(f"{path}: expected \"tokens\" (single characters, <eos> and <unk>) and as many "
                              "\"counts\" (whole numbers)")
        if EOS not in tokens or UNK not in tokens or len(set(tokens)) != len(tokens):
            raise LstmlmError(f"{path}: the tokens must be distinct and hold <eos> and <unk>")
        return cls(Vocabulary(tokens, counts), lowercase)


class ByteTokenizer:
    """The 256 UTF-8 bytes and `<eos>` (id 256, for a newline).

    Example:
        >>> tokenizer = ByteTokenizer()
        >>> tokenizer.encode("é\\n").tolist(), tokenizer.decode(tokenizer.encode("é\\n"))
        ([195, 169, 256], 'é\\n')
    """

    kind = "byte"

    def __init__(self, lowercase=False):
        self.lowercase = bool(lowercase)
        self.eos_id = BYTE_ALPHABET
        names = [chr(b) if 33 <= b < 127 else f"<0x{b:02X}>" for b in range(BYTE_ALPHABET)]
        self.vocabulary = Vocabulary(names + [EOS], [0] * (BYTE_ALPHABET + 1))

    def encode(self, text):
        return self.encode_counting(text)[0]

    def encode_counting(self, text):
        data = (text.lower() if self.lowercase else text).encode("utf-8")
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
        ids[ids == 10] = self.eos_id
        return ids, 0

    def unknown(self, text):
        return []

    def token_bytes(self, token_id):
        return b"\n" if token_id == self.eos_id else bytes([int(token_id)])

    def decode(self, ids):
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def token_text(self, token_id):
        return EOS if token_id == self.eos_id else self.token_bytes(token_id).decode("utf-8", errors="replace")

    def sha256(self):
        return _digest("byte", self.lowercase, [])

    def save(self, run_dir):
        text = json.dumps({"tokenizer": "byte", "format": FORMAT, "lowercase": self.lowercase, "eos_id": self.eos_id})
        atomic_write_text(Path(run_dir) / FILES["byte"], text + "\n", "tokenizer")

    @classmethod
    def load(cls, path, lowercase):
        values = _parse(_read_text(path), path, "byte")
        if values.get("eos_id") != BYTE_ALPHABET:
            raise LstmlmError(f"{path}: \"eos_id\" must be {BYTE_ALPHABET}, got {values.get('eos_id')!r}")
        return cls(lowercase)


class BpeTokenizer:
    """Hugging Face byte-level BPE (`tokenizers.Tokenizer`) and `<eos>` after its ids.

    Args:
        model: a `tokenizers.Tokenizer` with a byte-level pre-tokenizer and decoder.
        lowercase: lower-case text before encoding.

    Example:
        >>> tokenizer = BpeTokenizer.train(["the cat sat", "the cat ran"], vocabulary_size=270)
        >>> ids = tokenizer.encode("the cat\\nnaïve 🐈")
        >>> tokenizer.decode(ids), 257 <= len(tokenizer.vocabulary) <= 270, tokenizer.eos_id in ids.tolist()
        ('the cat\\nnaïve 🐈', True, True)
    """

    kind = "bpe"

    def __init__(self, model, lowercase=False):
        from tokenizers import pre_tokenizers

        self.model, self.lowercase = model, bool(lowercase)
        size = model.get_vocab_size()
        self.eos_id = size
        tokens = [model.id_to_token(i) for i in range(size)]
        names = [f"{t}#{i}" if t in (EOS, UNK) else t for i, t in enumerate(tokens)]  # a learned "<eos>" stays text
        self.vocabulary = Vocabulary(names + [EOS], [0] * (size + 1))
        to_byte = {c: b for b, c in enumerate(_byte_level_characters())}
        if set(to_byte) != set(pre_tokenizers.ByteLevel.alphabet()):
            raise LstmlmError("tokenizers: its byte-level alphabet is not GPT-2's; this lstmlm cannot read it")
        self._bytes = [bytes(to_byte.get(c, 63) for c in t) for t in tokens] + [b"\n"]

    @classmethod
    def train(cls, lines, vocabulary_size=DEFAULT_BPE_SIZE, lowercase=False):
        """Learn a byte-level BPE of at most `vocabulary_size` ids (`<eos>` included; fewer when the text has
        fewer pairs to merge) from an iterable of text pieces (lines, or blocks of them)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        check_bpe_size(vocabulary_size)
        model = Tokenizer(models.BPE())
        model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        model.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocabulary_size - 1, show_progress=False, special_tokens=[],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        pieces = ((piece.lower() if lowercase else piece) for piece in lines)
        model.train_from_iterator(pieces, trainer=trainer)
        return cls(model, lowercase)

    def encode(self, text):
        return self.encode_counting(text)[0]

    def encode_counting(self, text):
        lines = (text.lower() if self.lowercase else text).split("\n")
        ids = []
        for start in range(0, len(lines), ENCODE_BATCH_LINES):
            for encoding in self.model.encode_batch_fast(lines[start:start + ENCODE_BATCH_LINES],
                                                         add_special_tokens=False):
                ids.extend(encoding.ids)
                ids.append(self.eos_id)
        ids.pop()  # no <eos> after the last line: it had no newline
        return np.array(ids, dtype=np.int32), 0

    def unknown(self, text):
        return []

    def token_bytes(self, token_id):
        return self._bytes[int(token_id)]

    def decode(self, ids):
        lines, line = [], []
        for i in ids:
            if i == self.eos_id:
                lines.append(line)
                line = []
            else:
                line.append(int(i))
        return "\n".join(self.model.decode_batch(lines + [line], skip_special_tokens=False))

    def token_text(self, token_id):
        return EOS if token_id == self.eos_id else self.token_bytes(token_id).decode("utf-8", errors="replace")

    def sha256(self):
        return _digest("bpe", self.lowercase, [self.model.to_str()])

    def to_text(self):
        """The text of tokenizer.json (the library's own format)."""
        return self.model.to_str()

    def save(self, run_dir):
        atomic_write_text(Path(run_dir) / FILES["bpe"], self.to_text(), "tokenizer")

    @classmethod
    def from_text(cls, text, lowercase, source):
        """From tokenizer.json's text; anything the library refuses, or not byte-level BPE, is one LstmlmError."""
        from tokenizers import Tokenizer

        try:
            model = Tokenizer.from_str(text)
        except Exception as error:  # noqa: BLE001  (the library raises its own exception types)
            raise LstmlmError(f"{source}: damaged tokenizer file ({_first_line(error)})") from None
        described = json.loads(text)  # valid JSON: the library read it
        kinds = (described.get("model", {}).get("type"), (described.get("pre_tokenizer") or {}).get("type"))
        if kinds != ("BPE", "ByteLevel"):
            raise LstmlmError(f"{source}: not a byte-level BPE tokenizer (model {kinds[0]}, pre-tokenizer {kinds[1]})")
        return cls(model, lowercase)

    @classmethod
    def load(cls, path, lowercase):
        return cls.from_text(_read_text(path), lowercase, path)


def check_bpe_size(vocabulary_size):
    if vocabulary_size < BYTE_ALPHABET + 1:
        raise LstmlmError(f"vocabulary_size {vocabulary_size}: smaller than the byte alphabet (256 bytes and "
                          f"<eos> = {BYTE_ALPHABET + 1} ids); BPE needs at least that", argument="vocabulary_size")


def load_tokenizer(run_dir, config, vocabulary=None):
    """The tokenizer of a run directory (its config says the kind; `vocabulary`: a word run's, already loaded)."""
    path = Path(run_dir) / FILES[config.tokenizer]
    if config.tokenizer == "word":
        return WordTokenizer(vocabulary if vocabulary is not None else Vocabulary.load(path), config.lowercase)
    if not path.is_file():
        raise LstmlmError(f"{path}: no such file (the run's {config.tokenizer} tokenizer)")
    reader = {"char": CharTokenizer, "byte": ByteTokenizer, "bpe": BpeTokenizer}[config.tokenizer]
    return reader.load(path, config.lowercase)


def _byte_level_characters():
    """GPT-2's byte -> printable character table, as byte-level BPE writes bytes in tokenizer.json: byte b is
    character n-th here (checked against the library's alphabet)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _digest(kind, lowercase, parts):
    return hashlib.sha256(json.dumps([kind, FORMAT, bool(lowercase), *parts]).encode("utf-8")).hexdigest()


def learned_from_text(kind, text, lowercase, source):
    """A char or bpe tokenizer from the text of its file (the corpus cache keeps learned ones so)."""
    return {"char": CharTokenizer, "bpe": BpeTokenizer}[kind].from_text(text, lowercase, source)


def _read_text(path):
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LstmlmError(f"{path}: no such file (the run's tokenizer)") from None
    except IsADirectoryError:
        raise LstmlmError(f"{path}: is a directory, expected the run's tokenizer file") from None
    except UnicodeDecodeError as error:
        raise LstmlmError(f"{path}: damaged tokenizer file (not UTF-8 at byte {error.start})") from None
    except OSError as error:
        raise LstmlmError(f"{path}: cannot read ({error.strerror})") from None


def _parse(text, path, kind):
    try:
        values = json.loads(text)
    except ValueError as error:
        raise LstmlmError(f"{path}: damaged tokenizer file ({_first_line(error)})") from None
    if not isinstance(values, dict) or values.get("tokenizer") != kind:
        raise LstmlmError(f"{path}: not a {kind} tokenizer file")
    if values.get("format") != FORMAT:
        raise LstmlmError(f"{path}: format {values.get('format')!r}, this lstmlm reads {FORMAT}")
    return values


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
