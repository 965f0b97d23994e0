"""benchmarks/ladder.py: rungs cut from a corpus, whose valid/test words all occur in the rung's train text."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ladder  # noqa: E402
import race  # noqa: E402

TEXTS = {"train": " the cat sat \n a dog ran far \n the end \n more words here \n",
         "valid": " the dog sat \n an owl flew \n",
         "test": " = Title = \n \n the bird sat on the cat \n"}


def test_cut_takes_whole_lines_until_the_token_count_and_refuses_a_short_corpus():
    assert ladder.cut(TEXTS["train"], 4) == " the cat sat \n"  # 3 words + <eos>
    assert ladder.cut(TEXTS["train"], 5) == " the cat sat \n a dog ran far \n"
    assert ladder.cut(TEXTS["train"], None) == TEXTS["train"]
    with pytest.raises(SystemExit, match="fewer than 100"):
        ladder.cut(TEXTS["train"], 100)


def test_unknown_words_become_unk_and_untouched_lines_keep_their_bytes():
    text, replaced = ladder.replace_unknown(TEXTS["test"], {"the", "cat", "sat", "=", "Title"})
    assert replaced == 2  # bird, on
    assert text == " = Title = \n \n the <unk> sat <unk> the cat \n"
    assert sum(ladder.tokens_of(line) for line in text.splitlines()) == len(text.split()) + text.count("\n")


def test_a_rung_s_valid_and_test_words_all_occur_in_its_train_text(tmp_path):
    manifest = ladder.make_rung("tiny", TEXTS, 5, tmp_path)
    rung = tmp_path / "tiny"
    train_words = set((rung / "train.txt").read_text().split())
    for split in ("valid", "test"):
        assert set((rung / f"{split}.txt").read_text().split()) <= train_words | {"<unk>"}
    assert manifest["splits"]["train"]["tokens"] == 9 and manifest["splits"]["train"]["tokens"] == \
        race.split_tokens(rung / "train.txt")
    assert manifest["splits"]["valid"]["unknown_replaced"] == 3  # an, owl, flew
    assert manifest["vocabulary_size"] == len(train_words) + 1  # and <eos>
    ladder.main(["--out", str(tmp_path / "ptb-ladder"), "--rungs", "ptb-0.1m"])  # the bundled PTB, end to end
    saved = json.loads((tmp_path / "ptb-ladder" / "ptb-0.1m" / "ladder.json").read_text())
    assert saved["corpus"] == "ptb" and 100_000 <= saved["splits"]["train"]["tokens"] < 100_100
    assert saved["splits"]["test"]["unknown_replaced"] > 0
