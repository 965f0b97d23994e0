"""benchmarks/inference.py's quick mode, in-process with the smallest counts: the table has every row and
positive numbers (no speed threshold: timings on a shared machine are too noisy for a test)."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import inference  # noqa: E402


@pytest.mark.slow
def test_quick_mode_reports_every_precision_onnx_typing_and_bandwidth():
    pytest.importorskip("onnxscript")
    result = inference.run(["tiny"], calls=1, repeats=1, num_words=2, samples=3, typing_words=3, threads=0,
                           bandwidth_mb=4, log=lambda line: None)
    rows = result["sizes"]["tiny"]["rows"]
    assert set(rows) == {*inference.precisions(), "onnx (onnxruntime, float32)"}
    for row in rows.values():
        assert all(row[key] > 0 and math.isfinite(row[key]) for key in (
            "latency_ms", "greedy_words_per_second", "batched_words_per_second", "bytes_per_word"))
    assert rows["int8"]["bytes_per_word"] < rows["float32"]["bytes_per_word"] / 3  # int8 weights + scales
    typing = result["sizes"]["tiny"]["typing"]
    assert set(typing) == {"float32", "int8"} and typing["int8"]["with_cache"]["median_ms"] > 0
    assert [b["megabytes"] for b in result["memory_bandwidth"]] == [4, 9, 36]
    assert all(b["numpy_copy_gb_per_s"] > 0 and b["torch_sum_read_gb_per_cpu_s"] > 0 for b in result["memory_bandwidth"])
    text = inference.markdown(result)
    assert "| int8 |" in text and "onnx" in text and "Memory bandwidth" in text and result["machine"] in text


def test_generation_paths_quick_adds_up_its_parts():
    """benchmarks/generation_paths.py: words/s from the parts is 1000 / (their milliseconds), the bound is bandwidth /
    bytes per word, every precision and the fused prompt candidates are there."""
    import generation_paths

    result = generation_paths.run("tiny", threads=1, repeats=1, samples=3)
    assert set(result["precisions"]) == set(inference.precisions())
    for values in result["precisions"].values():
        parts = values["advance_one_word_ms"] + values["logits_1_row_ms"] + values["greedy_sampler_ms"]
        assert values["greedy_words_per_second_from_parts"] == pytest.approx(1000 / parts)
        assert values["greedy_bound_words_per_second"] == pytest.approx(
            values["read_gb_per_second_at_that_size"] * 1e9 / values["bytes_per_word"])
    fused = result["fused_prompt"]
    assert fused["prompt_ids"] == 31 and fused["torch_lstm_float32_native_ms"] > 0
    assert "| int8 |" in generation_paths.markdown(result)
