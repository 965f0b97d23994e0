"""benchmarks/corpus_scale.py: its corpus generator and its quick mode (every loader in a fresh subprocess).

No speed or memory threshold here (timings on a shared machine are noisy); the numbers are in docs/corpus.md.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import corpus_scale  # noqa: E402

from lstmlm.data.corpus_cache import FORMAT  # noqa: E402


def test_zipf_text_is_reproducible_with_the_requested_token_count(tmp_path):
    words = corpus_scale.zipf_words(1000)
    assert len(set(words.tolist())) == 1000 and words[:3].tolist() == ["z", "aa", "ab"]
    for name in ("a.txt", "b.txt"):
        corpus_scale.write_zipf_text(tmp_path / name, 5000, seed=3, types=1000, chunk=777)
    text = (tmp_path / "a.txt").read_text()
    assert text == (tmp_path / "b.txt").read_text()
    assert len(text.split()) == 5000 and 100 < text.count("\n") < 400  # ~ one line per 20 words
    counts = np.bincount([int(w in words[:10]) for w in text.split()])
    assert counts[1] > counts[0] * 0.3  # Zipf: the 10 most frequent of 1,000 types are about 40% of the text


def test_loading_a_corpus_imports_neither_keras_nor_torch():
    """The benchmark's baseline (and any data-only tool) relies on it; config.py once pulled Keras in through
    the adaptive softmax's --cutoffs parser, raising the baseline from ~35 MB to ~500 MB and making it noisy."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import corpus_scale; corpus_scale.import_loader_only(); "
            "import lstmlm.config, lstmlm.data.corpus, lstmlm.data.corpus_cache; "
            "print(sorted(m for m in ('keras', 'torch') if m in sys.modules))")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_quick_mode_measures_every_loader_and_they_agree(tmp_path):
    lines = []
    result = corpus_scale.run([20_000], tmp_path, old_max=20_000, log=lines.append)
    (size,) = result["sizes"]
    words = {"train": 20_000, "valid": 1000, "test": 1000}
    newlines = {split: (tmp_path / "zipf-20000" / f"zipf.{split}.txt").read_text().count("\n") for split in words}
    assert size["tokens"] == {split: words[split] + newlines[split] for split in words}  # an <eos> per line
    total = sum(size["tokens"].values())
    assert size["total_tokens"] == total and set(size["rows"]) == {"old", "new", "cached", "no-cache"}
    rows = size["rows"]
    assert len({row["sha256"] for row in rows.values()}) == 1  # (run() also raises if they differ)
    assert rows["new"]["cached"] == {"train": False, "valid": False, "test": False}
    assert rows["cached"]["cached"] == {"train": True, "valid": True, "test": True}
    for row in rows.values():
        assert row["array_bytes"] == 4 * total and row["seconds"] > 0 and row["tokens_per_second"] > 0
        assert row["peak_rss_touched"] >= row["peak_rss_load"] >= size["imports"]["peak_rss_load"] > 10_000_000
    # each child's own peak (not its parent's): the old loader's word lists show above the imports-only baseline
    assert rows["old"]["peak_rss_load"] > size["imports"]["peak_rss_load"]
    assert f"| {total:,} |" in corpus_scale.markdown(result)
    assert list((tmp_path / "cache-20000" / f"corpus-v{FORMAT}").glob("ids-*.npy"))  # the benchmark's own cache
