#!/usr/bin/env python
"""The corpus ladder (issue 22): corpora of about 0.1M, 0.3M and 1M training tokens cut from PTB and WikiText-2,
plus the full ones, each a directory that `benchmarks/race.py --corpus-dir` races on.

    python benchmarks/ladder.py --out /work/ladder --summary docs/runs/ladder/rungs.json
                                  # writes /work/ladder/RUNG/{train,valid,test}.txt and every rung's ladder.json
    python benchmarks/race.py --peer-dir /work/peers/pytorch-examples --corpus-dir /work/ladder/ptb-0.1m \\
        --minutes 15 --threads 1 --preset auto --out runs/ladder/ptb-0.1m-auto

How a rung is cut (tokens = whitespace words plus one `<eos>` per line, what both race sides count):
  - train.txt: the first lines of the corpus' training split, whole lines, until the rung's token count is
    reached (a contiguous slice: articles and their vocabulary as they come, as a user's small corpus would);
    the full rungs are the whole split.
  - valid.txt and test.txt: the corpus' own validation and test splits, every word that the rung's train.txt
    lacks replaced by `<unk>`, the way PTB and WikiText-2 were themselves prepared. Both sides of a race then
    have the same vocabulary (the pytorch/examples program builds its vocabulary from all three files; without
    this it would hold words it never trains on, and lstmlm would read them as `<unk>`). So a small rung's
    test text has more `<unk>` than the full corpus' and its perplexities compare within the rung only.
  - ladder.json: the rung's source, its token and vocabulary counts, the `<unk>` replacements and each file's
    sha256; race.py copies it into the race result.
There is no 10M-token rung: the only real text here is PTB (about 1M training tokens) and WikiText-2 (about 2.1M);
a larger corpus would have to be downloaded (WikiText-103) or made of repeated text, which measures nothing.
"""

import argparse
import gzip
import hashlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import race  # noqa: E402  (bundled_ptb_path, WIKITEXT_DIR)

RUNGS = {"ptb-0.1m": ("ptb", 100_000), "ptb-0.3m": ("ptb", 300_000), "ptb": ("ptb", None),
         "wikitext-2-0.1m": ("wikitext-2", 100_000), "wikitext-2-0.3m": ("wikitext-2", 300_000),
         "wikitext-2-1m": ("wikitext-2", 1_000_000), "wikitext-2": ("wikitext-2", None)}


def tokens_of(line):
    return len(line.split()) + 1  # its words and its <eos>


def source_texts(corpus, wikitext_dir):
    """{split: text} of PTB (lstmlm's bundled copy) or WikiText-2 (--wikitext-dir)."""
    if corpus == "ptb":
        return {split: gzip.decompress(race.bundled_ptb_path(split).read_bytes()).decode("utf-8")
                for split in ("train", "valid", "test")}
    paths = race.wikitext_paths(wikitext_dir)
    return {split: path.read_text(encoding="utf-8") for split, path in paths.items()}


def cut(train_text, tokens):
    """The first whole lines of `train_text` holding at least `tokens` tokens (all of it for None)."""
    if tokens is None:
        return train_text
    lines, count = [], 0
    for line in train_text.splitlines(keepends=True):
        if count >= tokens:
            break
        lines.append(line)
        count += tokens_of(line)
    if count < tokens:
        raise SystemExit(f"ladder: error: the training split has {count:,} tokens, fewer than {tokens:,}")
    return "".join(lines)


def replace_unknown(text, vocabulary):
    """`text` with every word outside `vocabulary` written `<unk>`. A line without such a word is kept byte for
    byte; a line with one is rewritten as the corpora write theirs (" w1 w2 ... \n"), which whitespace
    tokenization reads the same. Returns (text, replacements)."""
    lines, replaced = [], 0
    for line in text.splitlines(keepends=True):
        words = line.split()
        kept = [word if word in vocabulary else "<unk>" for word in words]
        changed = sum(1 for a, b in zip(words, kept) if a != b)
        replaced += changed
        if changed:
            line = " " + " ".join(kept) + (" \n" if line.endswith("\n") else "")
        lines.append(line)
    return "".join(lines), replaced


def write_atomically(path, text):
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_rung(name, texts, tokens, out):
    """Write one rung's three files and its ladder.json; returns the manifest."""
    directory = Path(out) / name
    directory.mkdir(parents=True, exist_ok=True)
    train = cut(texts["train"], tokens)
    vocabulary = set(train.split())
    files, manifest = {"train": train}, {"rung": name, "tokens_asked": tokens, "splits": {}}
    for split in ("valid", "test"):
        files[split], replaced = replace_unknown(texts[split], vocabulary)
        manifest["splits"][split] = {"unknown_replaced": replaced}
    for split, text in files.items():
        write_atomically(directory / f"{split}.txt", text)
        manifest["splits"].setdefault(split, {}).update(
            tokens=sum(tokens_of(line) for line in text.splitlines()), lines=text.count("\n"), sha256=sha256(text))
    manifest["vocabulary_size"] = len(vocabulary | {"<eos>"})
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the rungs (outside the repository)")
    parser.add_argument("--wikitext-dir", default=str(race.WIKITEXT_DIR), help="WikiText-2's train/valid/test.txt")
    parser.add_argument("--rungs", nargs="+", default=list(RUNGS), choices=list(RUNGS), metavar="RUNG",
                        help=f"which rungs (default all: {', '.join(RUNGS)})")
    parser.add_argument("--summary", help="also write every rung's ladder.json into this one file (no text)")
    args = parser.parse_args(argv)
    texts, manifests = {}, []
    for name in args.rungs:
        corpus, tokens = RUNGS[name]
        if corpus not in texts:
            texts[corpus] = source_texts(corpus, args.wikitext_dir)
        source = "lstmlm's bundled PTB" if corpus == "ptb" else str(args.wikitext_dir)
        manifest = {"corpus": corpus, "source": source, **make_rung(name, texts[corpus], tokens, args.out)}
        write_atomically(Path(args.out) / name / "ladder.json", json.dumps(manifest, indent=1) + "\n")
        manifests.append(manifest)
        train = manifest["splits"]["train"]
        print(f"ladder: {name}: {train['tokens']:,} training tokens, {manifest['vocabulary_size']:,} types, "
              f"test <unk> replacements {manifest['splits']['test']['unknown_replaced']:,}")
    if args.summary:
        summary = {"command": "python benchmarks/ladder.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   "git_commit": race.git_commit(), "rungs": manifests}
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(Path(args.summary), json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
