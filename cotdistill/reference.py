"""The generated reference pages and figures, written from the code and from what a command measured, so that they
cannot drift from either:

    python -m cotdistill.reference            # (make docs) docs/config.md, docs/reasons.md, the figure blocks
    python -m cotdistill.reference --figures  # (make figures) first runs the demos: docs/figures/<demo>.json

docs/config.md lists every configuration key: each section's dataclass, its fields in order with their type,
default, allowed values (their Check) and the comments written beside them in config/sections.py, config/run.py
and the teacher backends' settings. docs/reasons.md lists the filter's reasons, phase by phase, from the phases
the filter applies (stages/filter/phases.py). The README's and the docs' demo figures are blocks made from
docs/figures/<demo>.json, which `make figures` writes by running each demo. tests/test_docs.py checks that
every generated page and block is current.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import shutil
import sys
import types
import typing
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1] / "docs"


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment: the `#` lines right above it and the one at the end of its line, joined."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    tree = ast.parse(source)
    body = tree.body[0].body
    comments = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        i = node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            above.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        last = lines[node.end_lineno - 1]
        trailing = last.split("  # ", 1)[1].strip() if "  # " in last else ""
        comments[node.target.id] = " ".join(p for p in (*above, trailing) if p)
    return comments


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"list[{type_name(typing.get_args(hint)[0])}]"
    if origin is dict:
        args = typing.get_args(hint)
        return f"dict[{type_name(args[0])}, {type_name(args[1])}]" if args else "dict"
    if hint is type(None):
        return "null"
    if hint is Any:
        return "any"
    return getattr(hint, "__name__", str(hint))


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(its section's defaults)"
    else:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def check_text(f: dataclasses.Field) -> str:
    check = f.metadata.get("check")
    if check is None:
        return ""
    parts = []
    if check.one_of is not None:
        parts.append("one of " + ", ".join(f"`{v}`" for v in sorted(check.one_of)))
    if check.at_least is not None:
        parts.append(f"at least {check.at_least:g}")
    if check.above is not None:
        parts.append(f"above {check.above:g}")
    if check.within is not None:
        low, high = check.within
        parts.append(f"in {'(' if check.low_open else '['}{low:g}, {high:g}]")
    if check.off is not None:
        parts.append(f"`{check.off}` turns it off")
    return "; ".join(parts)


def section_classes() -> list[tuple[type, list[str]]]:
    """Every section class reachable from RunConfig, in order of first appearance, with the keys it is written
    under; each backend's settings under `<model>.<backend>`."""
    from cotdistill.config.run import RunConfig
    from cotdistill.teachers import BACKENDS

    found: dict[type, list[str]] = {}

    def visit(cls: type, key: str) -> None:
        for parent in reversed([b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)]):
            visit(parent, key)  # the fields it inherits are listed under the class that declares them
        first = cls not in found
        found.setdefault(cls, []).append(key)
        if not first:  # its fields are listed once, under its first key
            return
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in vars(cls).get("__annotations__", {}):
                continue  # inherited: visited with its own class
            if "key_named_by" in f.metadata:  # a model's backend settings, under each backend's name
                for name, backend in BACKENDS.items():
                    if backend.settings is not None:
                        visit(backend.settings, f"<model>.{name}")
                continue
            for inner, suffix in nested(hints[f.name]):
                visit(inner, f"{key}.{f.name}{suffix}".lstrip("."))

    visit(RunConfig, "")
    found[RunConfig] = ["(top level)"]
    return list(found.items())


def nested(hint: Any) -> list[tuple[type, str]]:
    """The section classes a field holds, with the suffix of their key ([i] in a list, .<name> in a mapping)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return [(hint, "")]
    if origin is list:
        return [(c, "[i]" + s) for c, s in nested(typing.get_args(hint)[0])]
    if origin is dict:
        args = typing.get_args(hint)
        return [(c, ".<name>" + s) for c, s in nested(args[1])] if args else []
    return [pair for arg in typing.get_args(hint) for pair in nested(arg)]


def config_reference() -> str:
    lines = ["# Configuration reference", "",
             "[back to the README](../README.md) · generated by `python -m cotdistill.reference` (`make docs`) from "
             "the dataclasses of `cotdistill/config/` and the teacher backends' settings; `tests/test_docs.py` "
             "checks that it is current. A key that is not listed here is an error at load.", ""]
    for cls, keys in section_classes():
        comments = field_comments(cls)
        hints = typing.get_type_hints(cls)
        doc = inspect.getdoc(cls) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        lines += [f"## {', '.join(f'`{k}`' for k in keys)}", "", f"`{cls.__module__}.{cls.__name__}`"
                  + (f": {' '.join(doc.split())}" if doc else ""), ""]
        own = [f for f in dataclasses.fields(cls) if f.name in vars(cls).get("__annotations__", {})]
        parents = [b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)]
        if parents:
            lines += [f"And every key of `{parents[0].__name__}` (above).", ""]
        for f in own:
            if "key_named_by" in f.metadata:
                lines.append(f"- `<{f.metadata['key_named_by']}>`: {comments.get(f.name, '')}")
                continue
            if "other_keys" in f.metadata:  # no key of its own: every key not listed here goes into it
                lines.append(f"- every other key: {comments.get(f.name, '')}")
                continue
            facts = [type_name(hints[f.name]), "default " + default_text(f)]
            check = check_text(f)
            if check:
                facts.append(check)
            comment = comments.get(f.name, "")
            lines.append(f"- `{f.name}` ({', '.join(facts)})" + (f": {comment}" if comment else ""))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def reasons_reference() -> str:
    from cotdistill.stages.filter.phases import PHASES

    lines = ["# The filter's reasons", "",
             "[back to the README](../README.md) · generated by `python -m cotdistill.reference` (`make docs`) from "
             "the phases the filter applies (`cotdistill/stages/filter/phases.py`). A rejected rationale carries the "
             "first reason it fails, in this order; `stats.json` counts them, `audit.md` shows examples of those "
             "that occurred.", ""]
    for phase in PHASES:
        lines += [f"## {phase.name}", "", "| reason | what it means |", "| --- | --- |"]
        lines += [f"| `{reason}` | {meaning} |" for reason, meaning in phase.reasons.items()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


PAGES = {"config.md": config_reference, "reasons.md": reasons_reference}

# --- figures: the demos' measured results, quoted in the README and the docs from the files a command writes ------

REPO = DOCS.parent
FIGURES = DOCS / "figures"
# name -> (pipeline, the page that quotes it)
DEMOS = {"demo": ("pipelines/demo.yaml", "README.md"),
         "demo_thinking": ("pipelines/demo_thinking.yaml", "docs/reasoning.md"),
         "demo_two_teachers": ("pipelines/demo_two_teachers.yaml", "docs/teachers.md"),
         "humaneval_smollm2_cpu": ("pipelines/humaneval_smollm2_cpu.yaml", "docs/code.md")}


def machine() -> str:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def run_demo(name: str, keep: Path | None = None) -> dict[str, Any]:
    """`cotdistill run` on the demo's pipeline in a fresh run folder; what it measured, for docs/figures/. With
    `keep`, the run folder is kept there (keep/<run_name>/: its report and plots, to look at)."""
    import datetime
    import json
    import subprocess
    import tempfile
    import time

    from cotdistill.stages.evaluate.report import format_table

    pipeline, _ = DEMOS[name]
    with tempfile.TemporaryDirectory(prefix="cotdistill-figures-", dir=keep) as out:
        command = [sys.executable, "-m", "cotdistill", "run", pipeline, f"output_dir={out}"]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{pipeline}: exit {result.returncode}: {result.stderr[-3000:]}")
        run_dir = next(Path(out).iterdir())
        if keep is not None:  # out of the temporary folder before it goes
            kept = keep / run_dir.name
            shutil.rmtree(kept, ignore_errors=True)
            run_dir = Path(shutil.move(str(run_dir), kept))
        read = lambda stage: json.loads((run_dir / stage / "stats.json").read_text())  # noqa: E731
        metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["models"]
        generated, filtered = read("generate"), read("filter")
        keep = ("k", "questions", "greedy_accuracy", "greedy_accuracy_ci", "maj@1", "maj_at_K_ci", "pass_at_K_ci",
                "tokens_per_s", "tokens_per_s_range", "parameters", "weights_mb", "vs_teacher", "vs_base")
        return {
            "pipeline": pipeline, "command": f"cotdistill run {pipeline}", "machine": machine(),
            "date": datetime.date.today().isoformat(), "seconds": round(seconds, 1),
            "generate": {k: generated.get(k) for k in ("questions", "rationales", "completion_tokens",
                                                       "tokens_per_s", "truncated")},
            "filter": {"rationales": filtered["rationales"], "accepted": filtered["accepted"],
                       "rejected": {k: v for k, v in filtered["rejected"].items() if v}},
            "table": format_table(metrics),
            "models": {m: {k: v for k, v in values.items() if k in keep or k.startswith("maj@")
                           or k.startswith("pass@")} for m, values in metrics.items()},
        }


# benchmarks whose figures a page quotes: name -> (the command that writes docs/figures/<name>.json, the page)
BENCHMARKS = {"distill_quality": ("python benchmarks/distill_quality.py", "README.md")}
ARM_NAMES = {"teacher": "teacher", "base_student": "untrained student", "label": "labels only",
             "n1": "N = 1", "n4": "N = 4", "n16": "N = 16", "n16_unfiltered": "N = 16, unfiltered",
             "kd_n4": "N = 4, KD", "n16_onpolicy": "N = 16, then on-policy", "n16_longer": "N = 16, SFT as long"}


def distill_quality_block(f: dict[str, Any]) -> str:
    """benchmarks/distill_quality.py's figures: one row per model, the paired differences, the plot."""
    k = f["k"]
    pct = lambda v: f"{100 * v:.1f}%" if v is not None else "-"  # noqa: E731
    ci = lambda c: f"[{100 * c[0]:.1f}, {100 * c[1]:.1f}]" if c else ""  # noqa: E731
    diff = lambda d: f"{100 * d['maj_difference']:+.1f} {ci(d['maj_difference_ci'])}" if d else ""  # noqa: E731
    seconds = f["seconds"]
    work = seconds.get("work", seconds["total"])
    reused = (f" The arms were trained once, by the run on the validation split that chose the settings; this run "
              f"reused them (their fingerprints held) and scored the test split in {seconds['total'] / 60:.0f} "
              "minutes." if work - seconds["total"] > 60 else "")
    lines = [f"`{f['command']}`: {work / 60:.0f} minutes of work on {f['machine']}, {f['date']}, each stage timed "
             "when it ran (it writes `docs/figures/distill_quality.json` and the plot, which this block is made "
             f"from).{reused} "
             f"{f['models']['teacher']['questions']} test questions; 95% intervals, paired for the differences.",
             "", f"| model | greedy | maj@{k} | vs labels only (maj@{k}) | vs N = 1 (maj@{k}) | of the teacher's maj@{k} "
             "| examples | teacher tokens |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in f["models"].items():
        share = (m.get("vs_teacher") or {}).get("maj_share")
        share_ci = (m.get("vs_teacher") or {}).get("maj_share_ci")
        lines.append(f"| {ARM_NAMES.get(name, name)} | {pct(m['greedy'])} {ci(m['greedy_ci'])} | {pct(m['maj'])} "
                     f"{ci(m['maj_ci'])} | {diff(m.get('vs_label'))} | {diff(m.get('vs_n1'))} | "
                     f"{pct(share) + ' ' + ci(share_ci) if share is not None and name != 'teacher' else ''} | "
                     f"{m.get('examples', '')} | {m.get('teacher_tokens', '') or ''} |")
    onpolicy, longer = f["models"].get("n16_onpolicy"), f["models"].get("n16_longer")
    if onpolicy and longer:
        vs = onpolicy.get("vs_n16_longer") or {}
        kl = onpolicy.get("kl_minus_n16_longer") or {}
        interval = lambda c: f"[{c[0]:.4f}, {c[1]:.4f}]"  # noqa: E731
        lines += ["", f"On-policy distillation after SFT (N = 16's student, then {onpolicy['onpolicy_steps']} on-policy "
                  f"steps: {onpolicy['onpolicy_seconds'] / 60:.1f} minutes, {onpolicy['student_tokens_sampled']:,} "
                  f"student tokens sampled, {onpolicy['teacher_tokens_scored']:,} teacher tokens scored) against SFT "
                  f"alone trained {longer['steps']} steps instead of {f['models']['n16']['steps']}, the steps the "
                  f"on-policy stage's time buys at N = 16's time per step (wall times as measured: "
                  f"{onpolicy['seconds'] / 60:.1f} and {longer['seconds'] / 60:.1f} minutes): maj@{k} "
                  f"{100 * vs.get('maj_difference', 0):+.1f} points {ci(vs.get('maj_difference_ci'))}, greedy "
                  f"{100 * vs.get('greedy_difference', 0):+.1f} {ci(vs.get('greedy_difference_ci'))}, paired over "
                  f"the questions. KL(teacher || student) per token on {onpolicy['kl_rationales']} of the teacher's "
                  f"own rationales for the test questions: {onpolicy['kl_to_teacher']:.4f} "
                  f"{interval(onpolicy['kl_to_teacher_ci'])} on-policy, {longer['kl_to_teacher']:.4f} "
                  f"{interval(longer['kl_to_teacher_ci'])} SFT as long, {f['models']['n16']['kl_to_teacher']:.4f} "
                  f"{interval(f['models']['n16']['kl_to_teacher_ci'])} N = 16 before either; paired difference "
                  f"{kl.get('mean', 0):+.4f} {interval(kl.get('ci') or [0, 0])}."]
    lines += ["", "![accuracy against N](docs/figures/distill_quality.png)"]
    return "\n".join(lines)


def figures_block(name: str) -> str:
    """The figures of one demo (or benchmark) as its page quotes them, from docs/figures/<name>.json."""
    import json

    f = json.loads((FIGURES / f"{name}.json").read_text())
    if name in BENCHMARKS:
        return distill_quality_block(f)
    rejected = ", ".join(f"{k} {v:,}" for k, v in sorted(f["filter"]["rejected"].items(), key=lambda kv: -kv[1]))
    return (f"`{f['command']}` from a fresh run folder: {f['seconds']:.0f} s on {f['machine']}, {f['date']} "
            f"(`make figures` writes `docs/figures/{name}.json`, which this block is made from). generate: "
            f"{f['generate']['questions']:,} questions, {f['generate']['rationales']:,} rationales; filter: "
            f"{f['filter']['accepted']:,} of {f['filter']['rationales']:,} accepted (rejected: {rejected or 'none'}).\n\n"
            f"```\n{f['table']}\n```")


def with_figures(text: str) -> str:
    """A page with each `<!-- figures: NAME -->` ... `<!-- /figures -->` block made from its figures file."""
    import re

    def block(match: re.Match) -> str:
        name = match.group(1)
        if not (FIGURES / f"{name}.json").exists():
            return match.group(0)
        return f"<!-- figures: {name} -->\n{figures_block(name)}\n<!-- /figures -->"

    return re.sub(r"<!-- figures: (\w+) -->.*?<!-- /figures -->", block, text, flags=re.S)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="regenerate docs/config.md, docs/reasons.md and the figure blocks")
    parser.add_argument("--figures", nargs="*", metavar="DEMO", help=f"first run these demos ({', '.join(DEMOS)}; "
                        "none named: all) and write docs/figures/<demo>.json")
    parser.add_argument("--keep", metavar="DIR", help="with --figures: keep each demo's run folder in DIR")
    args = parser.parse_args()
    DOCS.mkdir(exist_ok=True)
    if args.figures is not None:
        import json

        FIGURES.mkdir(exist_ok=True)
        for name in args.figures or list(DEMOS):
            print(f"running {DEMOS[name][0]} ...", file=sys.stderr)
            keep = Path(args.keep).resolve() if args.keep else None
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
            (FIGURES / f"{name}.json").write_text(json.dumps(run_demo(name, keep), indent=2) + "\n")
    for name, make in PAGES.items():
        (DOCS / name).write_text(make())
        print(f"wrote {DOCS / name}", file=sys.stderr)
    for page in {page for _, page in (*DEMOS.values(), *BENCHMARKS.values())}:
        path = REPO / page
        path.write_text(with_figures(path.read_text()))


if __name__ == "__main__":
    main()
