"""Regenerate tests/data/math_verify_cases.json: math-verify's own regression cases, as data.

    python tests/data/vendor_math_verify.py --git-dir /path/to/Math-Verify/.git [--rev HEAD]

Reads every tests/*.py of huggingface/Math-Verify at `rev` with `git show` (never importing or running it), and
with `ast` takes each `@pytest.mark.parametrize` case whose argument names hold gold, pred and expected (or
test_yujianll's `result`), with the settings the test function passes math-verify: `compare_strings(...)`'s
match_types, precision, strict and allow_set_relation_comp (a keyword written in the call, or a parametrize
argument it names), or math-verify's defaults for `verify(parse(gold), parse(pred))`. One f-string case
(test_float_precision's f"{math.sqrt(17):.15f}") is computed as Python would, from `math` calls only.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import subprocess
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "math_verify_cases.json"
REPOSITORY = "https://github.com/huggingface/Math-Verify"
# The notice at the head of math-verify's test files (its repository's LICENCE file is Apache-2.0).
LICENSE = """MIT License

Copyright (c) 2024 The HuggingFace Team

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE."""

# compare_strings' defaults (tests/test_all.py); its latex config is LatexExtractionConfig(boxed_match_priority=0)
COMPARE_STRINGS = {"match_types": ["latex", "expr"], "precision": 6, "strict": True,
                   "allow_set_relation_comp": False, "boxed_match_priority": 0}
# verify(parse(gold), parse(pred)) as math-verify ships it
DEFAULTS = {"match_types": ["latex", "expr"], "precision": 6, "strict": True,
            "allow_set_relation_comp": False, "boxed_match_priority": 50}
EXPECTED_NAMES = ("expected", "result")


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True,
                          text=True).stdout


def literal(node: ast.AST) -> Any:
    """ast.literal_eval, and f-strings whose fields are literals or math.<function>(literals)."""
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                spec = literal(value.format_spec) if value.format_spec is not None else ""
                parts.append(format(literal(value.value), spec))
            else:
                raise ValueError(f"unsupported f-string part {ast.dump(value)}")
        return "".join(parts)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "math" and not node.keywords):
        return getattr(math, node.func.attr)(*(literal(a) for a in node.args))
    if isinstance(node, ast.Tuple):
        return tuple(literal(e) for e in node.elts)
    return ast.literal_eval(node)


def settings_of(function: ast.FunctionDef, names: list[str]) -> dict[str, Any] | None:
    """How the test compares: compare_strings' keywords (constants, or the names of parametrize arguments kept as
    "=name"), or math-verify's defaults for a bare verify(parse(gold), parse(pred)). None: neither."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "compare_strings":
            settings = dict(COMPARE_STRINGS)
            for keyword in node.keywords:
                if isinstance(keyword.value, ast.Name) and keyword.value.id in names:
                    settings[keyword.arg] = "=" + keyword.value.id
                else:
                    settings[keyword.arg] = literal(keyword.value)
            return settings
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "verify":
            if all(isinstance(a, ast.Call) and getattr(a.func, "id", "") == "parse" and len(a.args) == 1
                   and not a.keywords for a in node.args) and not node.keywords:
                return dict(DEFAULTS)
    return None


def cases_of(path: str, source: str) -> list[dict[str, Any]]:
    cases = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, ast.FunctionDef):
            continue
        for decorator in function.decorator_list:
            if not (isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "parametrize"):
                continue
            names = [n.strip() for n in literal(decorator.args[0]).split(",")]
            expected_name = next((n for n in EXPECTED_NAMES if n in names), None)
            if "gold" not in names or "pred" not in names or expected_name is None:
                continue
            settings = settings_of(function, names)
            if settings is None:
                raise SystemExit(f"{path}::{function.name}: neither compare_strings nor verify(parse, parse)")
            for element in decorator.args[1].elts:
                row = dict(zip(names, literal(element)))
                config = {k: row[v[1:]] if isinstance(v, str) and v.startswith("=") else v
                          for k, v in settings.items()}
                cases.append({"file": path, "test": function.name, "gold": row["gold"], "pred": row["pred"],
                              "expected": bool(row[expected_name]), "config": config})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--git-dir", required=True, help="a clone (or bare mirror) of huggingface/Math-Verify")
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    commit = git(args.git_dir, "rev-parse", args.rev).strip()
    paths = [p for p in git(args.git_dir, "ls-tree", "--name-only", commit, "tests/").split()
             if p.endswith(".py")]
    cases = [case for path in sorted(paths) for case in cases_of(path, git(args.git_dir, "show", f"{commit}:{path}"))]
    document = {
        "source": REPOSITORY, "commit": commit, "license": LICENSE,
        "note": ("Regression cases of math-verify's tests (tests/*.py, every parametrize case with gold, pred and "
                 "expected), vendored as data by tests/data/vendor_math_verify.py; `config` is what the test "
                 "passes math-verify. `license` is the notice at the head of its test files; the repository's "
                 "LICENCE file is Apache-2.0."),
        "cases": cases,
    }
    args.out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases from {commit[:12]} -> {args.out}")


if __name__ == "__main__":
    main()
