"""What the filter reports: each shard's statistics, stats.json (counts per reason, questions by number kept),
audit.md (examples of every reason) and the accepted folder's dataset card.

    meta = shard_stats(judged, code=False)       # one judged shard's counts and examples (its meta file)
    stats = summarize(paths, shards)             # the filter stage, after every shard is judged
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cotdistill.config.run import RunConfig
from cotdistill.core.paths import RunPaths
from cotdistill.core.shards import read_json
from cotdistill.stages.filter.difficulty import (
    LENGTH_EDGES, length_counts, length_summary, merge_length_counts, pass_rate_summary,
)
from cotdistill.stages.filter.phases import PHASES, REASONS

EXAMPLES_PER_REASON = 3
MEANINGS = {reason: meaning for phase in PHASES for reason, meaning in phase.reasons.items()}


EXAMPLE_COLUMNS = ["question_id", "sample_index", "question", "gold_answer", "rationale", "extracted_answer",
                   "filter_reason", "pass_rate", "rationalized", "teacher_name"]


def shard_stats(judged: pa.Table, code: bool) -> dict[str, Any]:
    """One judged shard's counts (per reason, per question, per teacher), pass rates, lengths and the first few
    examples of every reason: its meta, which summarize adds up."""
    reasons = judged.column("filter_reason").to_pylist()
    qids = judged.column("question_id").to_pylist()
    accepted_flags = [why is None for why in reasons]
    pass_rates: dict[str, float | None] = {}  # per question (every row of a question holds the same)
    for qid, rate in zip(qids, judged.column("pass_rate").to_pylist()):
        pass_rates.setdefault(qid, rate)
    first_reasons: dict[str, str | None] = {}  # too_easy / too_hard are question-level: counted once per question
    for qid, why in zip(qids, reasons):
        first_reasons.setdefault(qid, why)
    accepted_per_question = Counter(q for q, ok in zip(qids, accepted_flags) if ok)
    rejected_counts = Counter(r for r in reasons if r is not None)
    rejected = judged.filter(pc.invert(judged.column("filter_reason").is_null()))
    examples = {  # the first few of every reason in this shard, however far into the shard it first appears
        reason: rejected.filter(pc.equal(rejected.column("filter_reason"), reason))
        .select(EXAMPLE_COLUMNS).slice(0, EXAMPLES_PER_REASON).to_pylist()
        for reason in rejected_counts
    }
    stats: dict[str, Any] = {
        "rationales": len(judged),
        "accepted": sum(accepted_flags),
        "rejected": dict(rejected_counts),
        "questions": len(pass_rates),
        "accepted_per_question": dict(Counter(accepted_per_question.get(q, 0) for q in pass_rates)),
        "pass_rates": [round(r, 6) for r in pass_rates.values() if r is not None],
        "questions_out_of_band": dict(Counter(w for w in first_reasons.values() if w in ("too_easy", "too_hard"))),
        "lengths": length_counts(zip(judged.column("pass_rate").to_pylist(), accepted_flags,
                                     judged.column("completion_tokens").to_pylist())),
        "examples": examples,
    }
    hinted = judged.column("rationalized").to_pylist()
    if any(hinted):  # generate.rationalize: its questions and rationales counted apart
        kept = [bool(h) and why is None for h, why in zip(hinted, reasons)]
        stats["rationalized"] = {
            "questions": len({q for q, h in zip(qids, hinted) if h}),
            "rationales": sum(bool(h) for h in hinted),
            "accepted": sum(kept),
            "questions_served": len({q for q, k in zip(qids, kept) if k}),
            "quotes_hint": sum(bool(h) and why == "quotes_hint" for h, why in zip(hinted, reasons)),
        }
    teacher_names = judged.column("teacher_name").to_pylist()
    if any(name is not None for name in teacher_names):  # several teachers: every count per teacher too
        stats["teachers"] = {}
        for name, why in zip(teacher_names, reasons):
            counts = stats["teachers"].setdefault(name, {"rationales": 0, "accepted": 0, "rejected": {}})
            counts["rationales"] += 1
            if why is None:
                counts["accepted"] += 1
            else:
                counts["rejected"][why] = counts["rejected"].get(why, 0) + 1
    if code:  # answer_format code: what the sandbox found
        answers = judged.column("extracted_answer").to_pylist()
        correct = judged.column("is_correct").to_pylist()
        stats["code"] = {
            "programs_passed": sum(c is True for c in correct),
            "programs_failed": sum(c is False for c in correct),
            # execution classes could not be recorded (no entry point known): their votes were pass / fail
            "questions_voting_pass_fail": len({q for q, a in zip(qids, answers) if a in ("pass", "fail")}),
        }
    return stats


def summarize(paths: RunPaths, shards: list[Path]) -> dict[str, Any]:
    metas = [read_json(paths.filter_meta / s.with_suffix(".json").name) for s in shards]
    rejected: Counter = Counter()
    per_question: Counter = Counter()
    out_of_band: Counter = Counter()
    for m in metas:
        rejected.update(m["rejected"])
        per_question.update({int(k): v for k, v in m["accepted_per_question"].items()})
        out_of_band.update(m.get("questions_out_of_band", {}))
    stats = {
        "shards": len(shards),
        # The corpus train reads: these files, nothing else in the folder (shards that kept no rationale have none).
        "accepted_files": [s.name for s, m in zip(shards, metas) if m["accepted"]],
        "rationales": sum(m["rationales"] for m in metas),
        "accepted": sum(m["accepted"] for m in metas),
        "rejected": {reason: rejected.get(reason, 0) for reason in REASONS},
        "questions": sum(m["questions"] for m in metas),
        "questions_by_accepted_count": {str(k): per_question[k] for k in sorted(per_question)},
        # Per question: finished rationales reaching the label over all its rationales (questions with a label).
        "pass_rate": pass_rate_summary(r for m in metas for r in m.get("pass_rates", [])),
        # Per pass-rate decile, accepted and rejected: how long the rationales run (completion tokens).
        "lengths": length_summary(merge_length_counts(m.get("lengths", {}) for m in metas)),
        "questions_too_easy": out_of_band.get("too_easy", 0),
        "questions_too_hard": out_of_band.get("too_hard", 0),
        "seconds_in_workers": round(sum(m["seconds"] for m in metas), 3),
    }
    if any("unused_samples" in m for m in metas):  # filter.use_samples: the samples beyond it, judged by no one
        stats["unused_samples"] = sum(m.get("unused_samples", 0) for m in metas)
    code = [m["code"] for m in metas if "code" in m]
    if code:  # answer_format code: programs that passed their tests, and questions whose votes were pass / fail
        stats["code"] = {key: sum(c[key] for c in code) for key in code[0]}
    teachers = [m["teachers"] for m in metas if "teachers" in m]
    if teachers:  # several teachers: every count per teacher too
        stats["teachers"] = {}
        for per in teachers:
            for name, counts in per.items():
                total = stats["teachers"].setdefault(name, {"rationales": 0, "accepted": 0, "rejected": Counter()})
                total["rationales"] += counts["rationales"]
                total["accepted"] += counts["accepted"]
                total["rejected"].update(counts["rejected"])
        for total in stats["teachers"].values():
            total["rejected"] = {reason: total["rejected"][reason] for reason in REASONS if total["rejected"][reason]}
    pairs = [(s, m["pairs"]) for s, m in zip(shards, metas) if "pairs" in m]
    if pairs:  # filter.preference_pairs: the pairs the dpo stage reads, from these files
        by_reason: Counter = Counter()
        for _, p in pairs:
            by_reason.update(p["by_reason"])
        stats["pairs"] = {"pairs": sum(p["pairs"] for _, p in pairs),
                          "questions": sum(p["questions"] for _, p in pairs),
                          "by_reason": dict(sorted(by_reason.items())),
                          "files": [s.name for s, p in pairs if p["pairs"]]}
    judged = [m["judge"] for m in metas if "judge" in m]
    if judged:  # filter.judge: its verdicts on rationales the rules could not read, and the cache's share
        verdicts: Counter = Counter()
        for j in judged:
            verdicts.update(j["verdicts"])
        stats["judge"] = {"verdicts": dict(sorted(verdicts.items())),
                          "asked": sum(n for v, n in verdicts.items() if v != "over_budget"),
                          "over_budget": verdicts.get("over_budget", 0),
                          "cache_hits": sum(j["cache_hits"] for j in judged)}
    rationalized = [m["rationalized"] for m in metas if "rationalized" in m]
    if rationalized:  # generate.rationalize: questions asked again with the gold as a hint, counted apart
        stats["rationalized"] = {key: sum(r[key] for r in rationalized) for key in rationalized[0]}
    return stats


def audit_markdown(stats: dict[str, Any], paths: RunPaths, shards: list[Path], config_teacher: str = "teacher") -> str:
    """audit.md: the counts of the reasons that occurred, with their meanings, by teacher, and examples of each
    (naming the teacher that wrote it: sample indices repeat across teachers). `config_teacher`: the model of a
    run's one teacher, for rows without teacher_name."""
    lines = [
        "# Filter audit", "",
        f"{stats['accepted']:,} of {stats['rationales']:,} rationales accepted "
        f"({stats['accepted'] / max(1, stats['rationales']):.1%}), over {stats['questions']:,} questions.", "",
        "The reasons that occurred (a rationale carries the first it fails; every reason the filter can give is in "
        "docs/reasons.md):", "",
        "| reason | rationales | share | what it means |", "| --- | ---: | ---: | --- |",
    ]
    for reason, count in stats["rejected"].items():
        if count:
            lines.append(f"| {reason} | {count:,} | {count / max(1, stats['rationales']):.1%} | {MEANINGS[reason]} |")
    if not any(stats["rejected"].values()):
        lines.append("| (none) | 0 | 0.0% | every rationale was accepted |")
    if stats.get("teachers"):
        lines += ["", "By teacher:", "", "| teacher | rationales | accepted | share | rejected by reason |",
                  "| --- | ---: | ---: | ---: | --- |"]
        for name, t in stats["teachers"].items():
            lines.append(f"| {name} | {t['rationales']:,} | {t['accepted']:,} | "
                         f"{t['accepted'] / max(1, t['rationales']):.1%} | "
                         + (", ".join(f"{k} {v:,}" for k, v in t["rejected"].items()) or "-") + " |")
    lines += ["", "Questions by number of accepted rationales: "
              + ", ".join(f"{k}: {v}" for k, v in stats["questions_by_accepted_count"].items()), ""]
    rates = stats.get("pass_rate") or {}
    if rates.get("questions"):
        lines += [f"Pass rate (finished rationales reaching the label, per question): mean {rates['mean']:.2f} over "
                  f"{rates['questions']:,} questions; by bin: "
                  + ", ".join(f"{k}: {v}" for k, v in rates["histogram"].items())
                  + f". Out of the difficulty band: {stats['questions_too_easy']:,} too easy, "
                  f"{stats['questions_too_hard']:,} too hard.", ""]
    if stats.get("lengths"):
        lines += ["Lengths in completion tokens by pass rate (the question's), accepted against rejected: rationales, "
                  "mean, and the bucket holding the median.", "",
                  "| pass rate | accepted | mean | median | rejected | mean | median |",
                  "| --- | ---: | ---: | --- | ---: | ---: | --- |"]
        for decile, by_status in stats["lengths"].items():
            cells = []
            for status in ("accepted", "rejected"):
                e = by_status.get(status) or {"rationales": 0, "mean_tokens": None, "median_bucket": None}
                cells += [f"{e['rationales']:,}", "-" if e["mean_tokens"] is None else f"{e['mean_tokens']:.0f}",
                          e["median_bucket"] or "-"]
            label = "no label" if decile == "none" else f"{decile}-{float(decile) + 0.1:.1f}"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", f"(Buckets' upper edges: {', '.join(map(str, LENGTH_EDGES))} tokens.)", ""]
    hinted = stats.get("rationalized")
    if hinted:
        lines += [f"Rationalized (STaR: questions with no rationale reaching the gold, asked again with the gold as a "
                  f"hint): {hinted['questions']:,} questions, {hinted['rationales']:,} rationales, "
                  f"{hinted['accepted']:,} accepted ({hinted['questions_served']:,} questions served by them), "
                  f"{hinted['quotes_hint']:,} dropped as quotes_hint.", ""]
    if stats.get("pairs"):
        pairs = stats["pairs"]
        lines += [f"Preference pairs (filter/pairs/): {pairs['pairs']:,} over {pairs['questions']:,} questions; "
                  "rejected sides by reason: "
                  + (", ".join(f"{k} {v:,}" for k, v in pairs["by_reason"].items()) or "none") + ".", ""]
    if stats.get("judge"):
        judge = stats["judge"]
        lines += [f"LLM judge (filter.judge) on rationales the rules could not read: {judge['asked']:,} verdicts ("
                  + (", ".join(f"{k} {v:,}" for k, v in judge["verdicts"].items() if k != "over_budget") or "none")
                  + f"), {judge['cache_hits']:,} of them from the request cache; {judge['over_budget']:,} left with "
                  "the rules' verdict past max_requests. Equivalent: kept as correct; different: rejected as wrong.",
                  ""]
    if stats.get("audit_verifier"):  # filter.audit_verifier: the second verifier's disagreements
        from cotdistill.stages.filter.second import audit_section

        lines += audit_section(stats["audit_verifier"])
    examples: dict[str, list[dict[str, Any]]] = {}
    for shard in shards:
        for reason, rows in read_json(paths.filter_meta / shard.with_suffix(".json").name)["examples"].items():
            bucket = examples.setdefault(reason, [])
            bucket.extend(rows[: EXAMPLES_PER_REASON - len(bucket)])
    for reason in REASONS:
        if not examples.get(reason):
            continue
        lines += [f"## {reason}", "", f"{MEANINGS[reason][0].upper()}{MEANINGS[reason][1:]}.", ""]
        for row in examples[reason]:
            rationale = (row["rationale"] or "").strip()
            if len(rationale) > 600:
                rationale = rationale[:300] + " [...] " + rationale[-300:]
            teacher = row.get("teacher_name") or config_teacher
            lines += [
                f"- question `{row['question_id']}`, teacher `{teacher}`, sample {row['sample_index']}: extracted "
                f"`{row['extracted_answer']}`, gold `{row['gold_answer']}`"
                + (f", pass rate {row['pass_rate']:.2f}" if row.get("pass_rate") is not None else "")
                + (", rationalized (written with the gold as a hint)" if row.get("rationalized") else ""), "",
                "  > " + rationale.replace("\n", "\n  > "), "",
            ]
    return "\n".join(lines) + "\n"


def card_header(tags: list[str]) -> str:
    """A dataset card's YAML header, up to its tags: every Parquet file of the folder is the train split."""
    return ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: \"*.parquet\"\ntags:\n"
            + "".join(f"- {tag}\n" for tag in tags))


def dataset_card(config: RunConfig, stats: dict[str, Any]) -> str:
    gen, cfg = config.generate, config.filter
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()  # optional sections only when set
                if k != "decontaminate" and not (k in ("audit_verifier", "judge") and v is None)}
    decontaminated = ", ".join(f"`{d.path}`" for d in cfg.decontaminate) or "none"
    if config.teachers:  # each teacher, its model and what of its rationales was kept
        counts = stats.get("teachers", {})
        teachers = "\n".join(
            f"  - `{t.name}`: `{t.model}`, {counts.get(t.name, {}).get('accepted', 0):,} accepted of "
            f"{counts.get(t.name, {}).get('rationales', 0):,}" for t in config.teachers)
        teacher_line = f"Teachers (rows tagged by `teacher_name`):\n{teachers}"
    else:
        teacher_line = f"Teacher: `{config.teacher.model}`"
    return card_header(["cotdistill", "chain-of-thought", "distillation"]) + f"""size_categories:
- {"n<1K" if stats["accepted"] < 1000 else "1K<n<10K" if stats["accepted"] < 10000 else "10K<n<100K" if stats["accepted"] < 100000 else "n>100K"}
---
# {config.run_name}: filtered teacher rationales

Chain-of-thought rationales sampled from a teacher and filtered by cotdistill, one row per rationale
(schema `FILTERED_SCHEMA` in `cotdistill/core/records.py`).

- {teacher_line}
- Questions: `{config.data.path}` (split `{config.data.split}`), {stats["questions"]:,} questions
- Prompt template: `{gen.prompt}`{f" with few-shot examples `{gen.examples}`" if gen.examples else ""}
- Sampling: n={gen.num_samples}, temperature={gen.temperature}, top_p={gen.top_p}, top_k={gen.top_k},
  max_tokens={gen.max_tokens}, seed={config.seed}
- Filter: answer format `{cfg.answer_format}`, label `{cfg.label}`, decontaminated against {decontaminated}
- Filter settings: `{settings}`
- Counts: {stats["accepted"]:,} accepted of {stats["rationales"]:,} generated; rejected by reason:
  {", ".join(f"{k} {v:,}" for k, v in stats["rejected"].items() if v) or "none"}

Load it with `datasets.load_dataset("parquet", data_dir="{config.paths.accepted}")`.
"""


def pairs_card(config: RunConfig, stats: dict[str, Any]) -> str:
    """filter/pairs/README.md: what the preference pairs are and how they were drawn."""
    cfg, pairs = config.filter, stats["pairs"]
    reasons = ", ".join(f"{k} {v:,}" for k, v in pairs["by_reason"].items()) or "none"
    return card_header(["cotdistill", "dpo", "preference"]) + f"""---
# {config.run_name}: preference pairs from filtered teacher rationales

Chosen/rejected pairs in TRL's conversational preference format (`prompt`, `chosen`, `rejected`; schema
`PAIR_SCHEMA` in `cotdistill/core/records.py`), for `trl.DPOTrainer` as they are.

- Teacher: `{config.teacher.model}`; questions: `{config.data.path}`
- Prompt: the student's (`{config.train.prompt}`); texts joined as train joins them (`{config.train.reasoning_format!r}`)
- chosen: a rationale the filter accepted (answer format `{cfg.answer_format}`, label `{cfg.label}`)
- rejected: a rationale of the same question rejected for one of {cfg.pair_reasons}
- Drawn uniformly with seed {config.seed}, at most {cfg.pairs_per_question} per question
- Counts: {pairs["pairs"]:,} pairs over {pairs["questions"]:,} of {stats["questions"]:,} questions; rejected sides
  by reason: {reasons}

Load it with `datasets.load_dataset("parquet", data_dir="{config.paths.pairs}")`.
"""
