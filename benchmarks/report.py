#!/usr/bin/env python
"""The results tables of README.md and docs/race.md, written from the committed artifacts and nothing else.

    python benchmarks/report.py            # rewrite the generated regions in place
    python benchmarks/report.py --check    # exit 1 if a committed table differs from what this writes

Sources: every docs/runs/subword/*.json (benchmarks/subword.py: BPE on WikiText-2, scored per word) and every
docs/runs/race/*.json (a race's result.json: commands, commit, CPU model and flags, threads,
load average, both sides' histories and final scores): word races against pytorch/examples (benchmarks/race.py)
and character races against nanoGPT (benchmarks/char_race.py), each in its own table. Every race is shown, won or lost, with the peer it ran
against (the real pytorch/examples program at a commit, or the re-implementation). A generated region sits
between `<!-- report:NAME begin -->` and `<!-- report:NAME end -->`; tests/test_report.py runs --check, so a
table edited by hand, or an artifact added without regenerating, fails the tests.
"""

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RACES = ROOT / "docs" / "runs" / "race"
SUBWORD = ROOT / "docs" / "runs" / "subword"
CORPUS = {"ptb": "PTB", "wikitext-2": "WikiText-2", "quick": "quick"}
STANDARD_FLAGS = {"--train", "--valid", "--test", "--max-vocabulary-size", "--max-vocab"}


def races(directory=RACES):
    """(artifact path relative to the repository, result) for each committed race, in a stable order."""
    found = []
    for path in sorted(Path(directory).glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if "sides" in result and "peer" in result["sides"]:
            found.append((path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path), result))
    return sorted(found, key=lambda item: (item[1]["corpus"]["name"], item[1]["minutes"], item[1]["threads"],
                                           item[1]["mode"], item[0]))


def char_races(directory=RACES):
    """(artifact path, result) for each committed character race (benchmarks/char_race.py)."""
    found = []
    for path in sorted(Path(directory).glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if "nanogpt" in result.get("sides", {}):
            found.append((path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path), result))
    return sorted(found, key=lambda item: (item[1]["minutes"], item[1]["threads"], item[1]["mode"], item[0]))


def char_race_table(found, link_prefix="runs/race/"):
    header = ("| budget | threads each | mode | lstmlm recipe | lstmlm valid / test bits/char | nanoGPT valid / test "
              "bits/char | lstmlm's test lower by | epochs lstmlm / nanoGPT | characters/s lstmlm / nanoGPT | "
              "machine (CPU; 1-min load start -> end) | commit | artifact |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for artifact, result in found:
        ours, theirs, checks = result["sides"]["lstmlm"], result["sides"]["nanogpt"], result["checks"]
        margin = checks.get("lstmlm_test_lower_by_bits_per_character")
        outcome = "-" if margin is None else f"{margin:+.4f} ({'lstmlm' if margin > 0 else 'nanoGPT'} won)"
        pairs = [f"{side['final']['valid']['bits_per_character']:.4f} / {side['final']['test']['bits_per_character']:.4f}"
                 if "final" in side else "failed" for side in (ours, theirs)]
        rows.append(f"| {result['minutes']:g} min | {result['threads']} | {result['mode']} | `{result['preset']}` | "
                    f"{pairs[0]} | {pairs[1]} (nanoGPT {str(result['nanogpt'].get('commit'))[:7]}) | {outcome} | "
                    f"{ours.get('epochs', 0):.2f} / {theirs.get('epochs', 0):.2f} | "
                    f"{ours.get('characters_per_second', 0):,.0f} / {theirs.get('characters_per_second', 0):,.0f} | "
                    f"{machine(result)} | {(result.get('git_commit') or '?')[:7]} | "
                    f"[{Path(artifact).name}]({link_prefix}{Path(artifact).name}) |")
    return "\n".join([header, *rows])


def recipe(result):
    """lstmlm's preset plus any flags the race added (--lstmlm-args), read from the command it ran."""
    commands = result["sides"]["lstmlm"].get("commands") or [""]
    words = shlex.split(commands[0])
    extra = words[words.index("--no-report") + 1:] if "--no-report" in words else []
    kept, skip = [], False
    for word in extra:
        if skip:
            skip = False
        elif word in STANDARD_FLAGS:
            skip = True
        else:
            kept.append(word)
    return "`" + " ".join([result["preset"], *kept]) + "`"


def peer(result):
    info = result.get("peer") or {"kind": "re-implementation"}
    if info["kind"] == "real program":
        return f"real program ({str(info.get('commit'))[:7]})"
    return "re-implementation"


def machine(result):
    start, end = result["machine_at_start"], result["machine_at_end"]
    flags = start["cpu_flags"]
    bf16 = "bf16/AMX" if flags.get("amx_bf16") or flags.get("avx512_bf16") else "no bf16"
    cpu = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", start["cpu"]).split()
    return (f"{' '.join(cpu)}, {start['logical_cpus']} CPUs, {bf16}; load {start['load_average'][0]:g} -> "
            f"{end['load_average'][0]:g}")


def pair(side):
    if "error" in side:
        return "failed"
    final = side["final"]
    return f"{final['valid']['perplexity']:.2f} / {final['test']['perplexity']:.2f}"


def race_row(artifact, result):
    lstmlm, other, checks = result["sides"]["lstmlm"], result["sides"]["peer"], result["checks"]
    margin = checks.get("lstmlm_test_lower_by_percent")
    outcome = "-" if margin is None else f"{margin:+.1f}% ({'lstmlm' if margin > 0 else 'peer'} won)"
    epochs = "-" if not checks.get("complete") else f"{lstmlm['epochs']:.2f} / {other['epochs']:.2f}"
    commit = (result.get("git_commit") or "?")[:7]
    name = result["corpus"]["name"]
    return (f"| {CORPUS.get(name, name)} | {result['minutes']:g} min | {result['threads']} | "
            f"{result['mode']} | {recipe(result)} | {pair(lstmlm)} | {pair(other)} | {peer(result)} | {outcome} | "
            f"{epochs} | {machine(result)} | {commit} | [{Path(artifact).name}](runs/race/{Path(artifact).name}) |")


def race_table(found):
    header = ("| corpus | budget | threads each | mode | lstmlm recipe | lstmlm valid / test | peer valid / test | "
              "peer | lstmlm's test lower by | epochs lstmlm / peer | machine (CPU; 1-min load start -> end) | "
              "commit | artifact |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    return "\n".join([header, *(race_row(artifact, result) for artifact, result in found)])


def ptb_results_table(found):
    """README's PTB table: lstmlm's side of every committed PTB race, linked to its artifact."""
    header = ("| lstmlm recipe | budget | threads | valid / test ppl | test accuracy | epochs | tokens/s | machine | "
              "artifact |\n|---|---|---|---|---|---|---|---|---|")
    rows = []
    for artifact, result in found:
        side = result["sides"]["lstmlm"]
        if result["corpus"]["name"] != "ptb" or "error" in side:
            continue
        rows.append(f"| {recipe(result)} | {result['minutes']:g} min | {result['threads']} ({result['mode']}) | "
                    f"{pair(side)} | {side['final']['test']['accuracy']:.4f} | {side['epochs']:.2f} | "
                    f"{side['tokens_per_second']:,.0f} ({side.get('precision')}) | {machine(result)} | "
                    f"[{Path(artifact).name}](docs/runs/race/{Path(artifact).name}) |")
    return "\n".join([header, *rows])


def subword_runs(directory=SUBWORD):
    """(artifact path, result) for each committed subword run (benchmarks/subword.py)."""
    found = []
    for path in sorted(Path(directory).glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        found.append((path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path), result))
    return sorted(found, key=lambda item: (item[1]["minutes"], item[1]["threads"], item[0]))


def subword_table(found, races_found, link_prefix="runs/"):
    """WikiText-2 test word perplexity: each BPE run beside the word-level lstmlm races at its budget."""
    header = ("| budget | threads | recipe | tokenizer | test word perplexity | test bits/char | epochs | tokens/s | "
              "machine (CPU; 1-min load start -> end) | commit | artifact |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for artifact, result in found:
        load = result["load_average"]
        if "error" in result:
            continue
        test = result["final"]["test"]
        cpu = " ".join(re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", result["machine"]["cpu"]).split())
        rows.append(f"| {result['minutes']:g} min | {result['threads']} | `{result['preset']}` | bpe "
                    f"{result['vocabulary_size']:,} | **{test['word_perplexity']:.2f}** | "
                    f"{test['bits_per_character']:.4f} | {result['epochs']:.2f} | {result['tokens_per_second']:,.0f} | "
                    f"{cpu}, {result['machine']['logical_cpus']} CPUs; load {load['start'][0]:g} -> "
                    f"{load['end'][0]:g} | {(result.get('git_commit') or '?')[:7]} | "
                    f"[{Path(artifact).name}]({link_prefix}subword/{Path(artifact).name}) |")
    budgets = {result["minutes"] for _, result in found}
    for artifact, result in races_found:
        side = result["sides"]["lstmlm"]
        if result["corpus"]["name"] != "wikitext-2" or result["minutes"] not in budgets or "error" in side:
            continue
        rows.append(f"| {result['minutes']:g} min | {result['threads']} ({result['mode']}) | {recipe(result)} | "
                    f"word {side['vocabulary_size']:,} | {side['final']['test']['perplexity']:.2f} | - | "
                    f"{side['epochs']:.2f} | {side['tokens_per_second']:,.0f} | {machine(result)} | "
                    f"{(result.get('git_commit') or '?')[:7]} | "
                    f"[{Path(artifact).name}]({link_prefix}race/{Path(artifact).name}) |")
    return "\n".join([header, *rows])


def ladder_rungs_table(path=ROOT / "docs" / "runs" / "ladder" / "rungs.json"):
    """The corpus ladder's rungs (benchmarks/ladder.py --summary): sizes, vocabulary and the `<unk>` they add."""
    header = ("| rung | cut from | training tokens | vocabulary (with `<eos>`) | valid / test words made `<unk>` |\n"
              "|---|---|---|---|---|")
    if not Path(path).is_file():
        return header
    rows = []
    for rung in json.loads(Path(path).read_text(encoding="utf-8"))["rungs"]:
        splits = rung["splits"]
        rows.append(f"| {rung['rung']} | {rung['corpus']} | {splits['train']['tokens']:,} | "
                    f"{rung['vocabulary_size']:,} | {splits['valid']['unknown_replaced']:,} / "
                    f"{splits['test']['unknown_replaced']:,} |")
    return "\n".join([header, *rows])


def regions(found, found_char=None, found_subword=None):
    """{file: {region: text}} this generator owns."""
    found_char = char_races() if found_char is None else found_char
    found_subword = subword_runs() if found_subword is None else found_subword
    return {ROOT / "docs" / "race.md": {"race-table": race_table(found),
                                        "char-race-table": char_race_table(found_char),
                                        "ladder-rungs": ladder_rungs_table()},
            ROOT / "docs" / "corpus.md": {"subword-table": subword_table(found_subword, found)},
            ROOT / "README.md": {"ptb-results": ptb_results_table(found),
                                 "char-results": char_race_table(found_char, "docs/runs/race/")}}


def replace_region(text, name, body, path):
    pattern = re.compile(rf"(<!-- report:{name} begin -->\n)(.*?)(<!-- report:{name} end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"report: error: {path} has no <!-- report:{name} begin/end --> region")
    return pattern.sub(lambda match: match.group(1) + body + "\n" + match.group(3), text, count=1)


def render(found=None):
    """{path: (committed text, generated text)}."""
    found = races() if found is None else found
    out = {}
    for path, generated in regions(found).items():
        text = path.read_text(encoding="utf-8")
        new = text
        for name, body in generated.items():
            new = replace_region(new, name, body, path)
        out[path] = (text, new)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed table is not the generated one")
    args = parser.parse_args(argv)
    stale = []
    for path, (text, new) in render().items():
        if text != new:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"report: stale tables in {', '.join(map(str, stale))}: run python benchmarks/report.py")
        return 1
    print("report: " + ("written: " + ", ".join(map(str, stale)) if stale and not args.check else "up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
