"""Words <-> integer ids.

Ids follow the tutorial's `build_vocab`: sort the training words by descending count, then by the word itself,
and number them from 0. The vocabulary comes from the training split only. Words outside it map to `<unk>`;
if the training text has more types than `max_size`, the rarest are folded into `<unk>` (added if absent).
Saved as `vocab.txt`: one `word<TAB>count` per line, in id order (plain text, no pickle).
"""

import collections
import hashlib
import operator
from pathlib import Path

from lstmlm.errors import LstmlmError
from lstmlm.files import atomic_write_text
from lstmlm.data.tokenizer import UNK


class Vocabulary:
    """An ordered word list with counts.

    Args:
        words: the words in id order.
        counts: their training counts (same length).

    Example:
        >>> vocabulary = Vocabulary.build("b a b <eos>".split())
        >>> vocabulary.words
        ['b', '<eos>', 'a', '<unk>']
        >>> vocabulary.encode(["a", "zebra"])
        [2, 3]
    """

    def __init__(self, words, counts):
        self.words = list(words)
        self.counts = list(counts)
        self.index = dict(zip(self.words, range(len(self.words))))
        if len(self.index) != len(self.words):
            raise LstmlmError("vocabulary: duplicate words")

    @classmethod
    def build(cls, words, max_size=None):
        """The vocabulary of a list of words (see `from_counts`)."""
        return cls.from_counts(collections.Counter(words), max_size)

    @classmethod
    def from_counts(cls, counter, max_size=None):
        """The vocabulary of words with these counts, ordered by descending count, then word.

        Args:
            counter: {word: count} (a dict or Counter), e.g. counted while streaming a corpus.
            max_size: keep at most this many entries, `<unk>` included; None or 0 keeps every word.

        Example:
            >>> Vocabulary.from_counts({"a": 1, "b": 3, "c": 1}, max_size=2).words
            ['b', '<unk>']
        """
        # descending count, then word: sort by word, then stably by count (reverse keeps stability); the same
        # order as key=(-count, word), several times faster for millions of types
        by_word = sorted(counter.items(), key=operator.itemgetter(0))
        ordered = sorted(by_word, key=operator.itemgetter(1), reverse=True)
        # <unk> counts towards max_size: a corpus of exactly max_size types without <unk> is cut too
        if max_size and len(ordered) + (UNK not in counter) > max_size:
            kept, dropped = ordered[: max_size - 1], ordered[max_size - 1 :]
            if UNK not in dict(kept):
                unk_count = counter.get(UNK, 0) + sum(count for word, count in dropped if word != UNK)
                kept = sorted(kept + [(UNK, unk_count)], key=lambda item: (-item[1], item[0]))
            else:  # <unk> already kept: keep one more real word instead of a second <unk>
                kept, dropped = dict(ordered[:max_size]), ordered[max_size:]
                kept[UNK] += sum(count for _, count in dropped)  # the dropped words now read as <unk>
                kept = sorted(kept.items(), key=lambda item: (-item[1], item[0]))
            ordered = kept
        elif UNK not in counter:
            ordered = ordered + [(UNK, 0)]  # always able to encode unknown words
        return cls([w for w, _ in ordered], [c for _, c in ordered])

    def __len__(self):
        return len(self.words)

    def sha256(self):
        """Digest of the id mapping (the words in id order; counts do not change ids): names cached id arrays."""
        return hashlib.sha256("\n".join(self.words).encode("utf-8")).hexdigest()

    @property
    def unk_id(self):
        """The id of `<unk>`; None for a vocabulary without one (the byte and BPE tokenizers', tokenizers.py)."""
        return self.index.get(UNK)

    def encode(self, words):
        unk = self.unk_id
        return [self.index.get(word, unk) for word in words]

    def decode(self, ids):
        return [self.words[int(i)] for i in ids]

    def unknown(self, words):
        """The words that are not in the vocabulary (they encode as `<unk>`)."""
        return [word for word in words if word not in self.index]

    def save(self, path):
        atomic_write_text(path, "".join(f"{w}\t{c}\n" for w, c in zip(self.words, self.counts)), "vocabulary")

    @classmethod
    def load(cls, path):
        """Read a vocab.txt; a damaged one (not UTF-8, a bad line, a repeated word, no <unk>) is one LstmlmError."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise LstmlmError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise LstmlmError(f"{path}: is a directory, expected vocab.txt") from None
        except OSError as error:
            raise LstmlmError(f"{path}: cannot read ({error.strerror})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise LstmlmError(f"{path}: line {line}: bytes that are not UTF-8 (at byte {error.start})") from None
        words, counts, first_line = [], [], {}
        for number, line in enumerate(text.splitlines(), 1):
            word, tab, count = line.partition("\t")
            # ASCII digits only: str.isdigit() also accepts '²', which int() refuses
            if not tab or not word or not (count.isascii() and count.isdigit()):
                raise LstmlmError(f"{path}: line {number}: expected 'word<TAB>count'")
            if word.split() != [word]:
                raise LstmlmError(f"{path}: line {number}: the word {word!r} contains whitespace")
            if word in first_line:
                raise LstmlmError(f"{path}: line {number}: {word!r} is repeated (first on line {first_line[word]})")
            first_line[word] = number
            words.append(word)
            counts.append(int(count))
        if UNK not in first_line:
            raise LstmlmError(f"{path}: the vocabulary has no {UNK} entry")
        return cls(words, counts)
