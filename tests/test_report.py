"""benchmarks/report.py: the results tables in README.md and docs/race.md are its output from the committed
artifacts (docs/runs/race/*.json), every race shown, won or lost; a table edited by hand, or an artifact added
without rerunning `python benchmarks/report.py`, fails here."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import report  # noqa: E402


def test_committed_tables_are_the_generator_s_output():
    stale = [str(path) for path, (text, new) in report.render().items() if text != new]
    assert not stale, f"regenerate with `python benchmarks/report.py`: {stale}"


def test_every_race_is_a_row_won_or_lost_naming_machine_peer_and_commit():
    found = report.races()
    assert len(found) + len(report.char_races()) == len(list(report.RACES.glob("*.json")))
    assert len(found) >= 10
    table = report.race_table(found).splitlines()[2:]
    assert len(table) == len(found)
    assert any("(peer won)" in row for row in table) and any("(lstmlm won)" in row for row in table)
    for row, (artifact, result) in zip(table, found):
        assert Path(artifact).name in row and (result["git_commit"] or "?")[:7] in row
        assert "CPUs" in row and "load" in row and ("re-implementation" in row or "real program" in row)


def test_a_hand_edited_table_is_caught(tmp_path):
    path = tmp_path / "page.md"
    path.write_text("before\n<!-- report:x begin -->\n| old |\n<!-- report:x end -->\nafter\n")
    new = report.replace_region(path.read_text(), "x", "| new |", path)
    assert new == "before\n<!-- report:x begin -->\n| new |\n<!-- report:x end -->\nafter\n"
    with pytest.raises(SystemExit, match="no <!-- report:y"):
        report.replace_region(new, "y", "", path)


def test_every_character_race_is_a_row_naming_both_scores_machine_and_commit():
    found = report.char_races()
    assert found, "docs/runs/race holds at least one character race"
    table = report.char_race_table(found).splitlines()[2:]
    assert len(table) == len(found)
    for row, (artifact, result) in zip(table, found):
        test = result["sides"]["lstmlm"]["final"]["test"]["bits_per_character"]
        theirs = result["sides"]["nanogpt"]["final"]["test"]["bits_per_character"]
        assert f"{test:.4f}" in row and f"{theirs:.4f}" in row and Path(artifact).name in row
        assert ("(lstmlm won)" in row) == (test < theirs) and "CPUs" in row and "load" in row
