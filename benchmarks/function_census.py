#!/usr/bin/env python
"""Function lengths in a source tree (lines from `def` to the last line of the body, docstring included).

    python benchmarks/function_census.py src/lstmlm                 # every function over 40 lines, and totals
    python benchmarks/function_census.py src/lstmlm/training --over 30

docs/architecture.md's census is this script's output. Reads the code with `ast`; runs nothing of it.
"""

import argparse
import ast
from pathlib import Path


def census(root):
    """[(lines, 'path:line:name')] of every function and method under `root`, longest first."""
    rows = []
    for path in sorted(Path(root).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((node.end_lineno - node.lineno + 1, f"{path}:{node.lineno}:{node.name}"))
    return sorted(rows, reverse=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--over", type=int, default=40, help="list the functions longer than this")
    args = parser.parse_args(argv)
    rows = census(args.root)
    for lines, name in rows:
        if lines > args.over:
            print(f"{lines:4d}  {name}")
    print(f"{len(rows)} functions; over 60 lines: {sum(n > 60 for n, _ in rows)}; over 40: "
          f"{sum(n > 40 for n, _ in rows)}; longest: {rows[0][0] if rows else 0}")


if __name__ == "__main__":
    main()
