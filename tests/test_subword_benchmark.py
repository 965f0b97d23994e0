"""benchmarks/subword.py: the BPE recipe trained at a budget and scored per word, beside the word-level races.

One real --quick run (a PTB slice, a 20-second budget, a 300-token BPE): the numbers it reports must be the
ones their definitions give (word perplexity and bits per character from the same total nats), the word count
must be the word-level model's (whitespace words plus one <eos> per line), and the report table must carry it.
"""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import race  # noqa: E402
import report  # noqa: E402
import subword  # noqa: E402


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("subword")
    return subword.run(subword.parse_args(["--quick", "--threads", "1", "--out", str(out)]), log=lambda *a: None), out


def test_quick_run_reports_word_perplexity_from_the_same_nats_as_its_token_loss(quick_result):
    result, out = quick_result
    assert "error" not in result, result.get("log_tail")
    assert result["tokenizer"] == "bpe" and result["vocabulary_size"] == 300 and result["finite"]
    files = {split: out / "corpus" / f"quick.{split}.txt" for split in ("valid", "test")}
    for split, values in result["final"].items():
        text = files[split].read_text(encoding="utf-8")
        assert values["words"] == race.split_tokens(files[split])  # what a word model divides by
        assert values["characters"] == len(text)
        assert values["tokens"] > values["words"] * 0.9  # a 300-token BPE splits most words into pieces
        nats = values["loss"] * values["tokens"]
        assert values["word_perplexity"] == pytest.approx(math.exp(nats / values["words"]), rel=1e-9)
        assert values["bits_per_character"] == pytest.approx(nats / math.log(2) / values["characters"], rel=1e-9)
        assert values["perplexity"] == pytest.approx(math.exp(values["loss"]), rel=1e-9)
    saved = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert saved["final"] == result["final"] and "bits / character" in (out / "result.md").read_text()
    assert "--preset speedrun-bpe" in saved["commands"][0] and "--precision float32" in saved["commands"][2]
    assert saved["machine"]["cpu"] and len(saved["load_average"]["start"]) == 3


def test_the_table_puts_each_bpe_run_beside_the_word_level_races_at_its_budget(quick_result, tmp_path):
    result, _ = quick_result
    found = [("docs/runs/subword/x.json", dict(result, minutes=15.0))]
    races = report.races()
    table = report.subword_table(found, races)
    rows = table.splitlines()[2:]
    assert f"**{result['final']['test']['word_perplexity']:.2f}**" in rows[0] and "bpe 300" in rows[0]
    word_level = [r for _, r in races if r["corpus"]["name"] == "wikitext-2" and r["minutes"] == 15.0]
    assert len(rows) == 1 + len(word_level) and word_level
    for race_result, row in zip(word_level, rows[1:]):
        assert f"{race_result['sides']['lstmlm']['final']['test']['perplexity']:.2f}" in row and "word 33,278" in row
    assert report.subword_table(found, []).count("\n") == 2  # no race at that budget: the BPE row alone


def test_word_level_rows_read_the_lstmlm_side_of_committed_wikitext_races():
    rows = subword.word_level_rows(15.0)
    assert rows and all(row["artifact"].startswith("docs/runs/race/wikitext-2-15min") for row in rows)
    assert all(50 < row["test_word_perplexity"] < 1000 for row in rows)
