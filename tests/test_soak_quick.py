"""benchmarks/soak.py: its request plan and its quick mode against a real `lstmlm serve` (a toy model).

The goals (no 5xx, every malformed kind answered with its 4xx, seeded generations identical under concurrency,
RSS growth) are checked here on the quick run; the full soak (32 clients, 20,000 requests, a PTB model) is
recorded in docs/serve.md.
"""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("httpx", reason="the test extra (httpx) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import soak  # noqa: E402


def test_the_plan_is_seeded_and_holds_every_kind():
    first, again = soak.plan(3000, seed=4), soak.plan(3000, seed=4)
    assert first == again and first != soak.plan(3000, seed=5)
    counts = {kind: sum(1 for k, _, _ in first if k == kind) for kind in soak.MIX}
    assert all(counts[kind] > 0 for kind in soak.MIX)
    assert 0.35 < counts["next"] / 3000 < 0.45 and set(counts) == set(soak.EXPECTED)


def test_summary_flags_a_5xx_an_unexpected_status_and_an_inconsistent_generation():
    records = [("next", 200, 0.01, None), ("next", 500, 0.02, None), ("bad-json", 422, 0.01, None)]
    result = soak.summarise(records, {("the", 5, 0, 1): ["a b", "a c"]}, [(1, 100), (3, 105)], 1.0, True, 2)
    assert result["server_errors_5xx"] == 1 and result["unexpected_statuses"] == 2  # the 500 and the 422
    assert result["generate_keys_inconsistent"] == 1 and result["rss_growth"] == 0.05
    assert not result["goals_met"]
    clean = soak.summarise([("next", 200, 0.01, None)], {("the", 5, 0, 1): ["a b", "a b"]}, [(1, 100), (2, 120)],
                           1.0, True, 1)
    assert clean["generate_keys_repeated"] == 1 and not clean["goals_met"]  # only the 20% RSS growth misses


@pytest.mark.slow
def test_quick_soak_meets_its_goals(tmp_path):
    status = soak.main(["--quick", "--out", str(tmp_path / "soak")])
    result = json.loads((tmp_path / "soak.json").read_text())
    assert status == 0 and result["goals_met"] and result["requests"] == 600 and result["clients"] == 8
    assert result["server_errors_5xx"] == 0 and result["unexpected_statuses"] == 0 and result["alive_after"]
    kinds = result["kinds"]
    assert set(kinds) == set(soak.MIX) and sum(k["requests"] for k in kinds.values()) == 600
    assert kinds["oversize"]["statuses"] == {"413": kinds["oversize"]["requests"]}
    assert kinds["slow-body"]["statuses"] == {"200": kinds["slow-body"]["requests"]}
    assert kinds["disconnect"]["statuses"] == {"none": kinds["disconnect"]["requests"]}
    assert result["generate_keys_repeated"] > 10 and result["generate_keys_inconsistent"] == 0
    assert len(result["rss_bytes"]) >= 6 and result["rss_growth"] < 0.10
    assert "| generate |" in (tmp_path / "soak.md").read_text()
