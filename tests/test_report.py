"""The report tells the truth: every ratio and difference with its paired interval (and in words when the interval
spans no difference), sizes in parameters and in bytes, each named, sections only when they have content, and
plots that show every series on plain axes, with no line drawn through bins of a few samples. On metrics built
from rows as evaluate builds them (no engine)."""

from __future__ import annotations

import random

import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.stages.evaluate import add_comparisons
from cotdistill.stages.evaluate.report import MIN_BIN_SAMPLES, report_markdown, write_plots
from cotdistill.stages.evaluate.scoring import answer_format, summarize_model
from cotdistill.verify.answers import get_answer_format

QUESTIONS, K = 40, 4


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "run.yaml"
    (tmp_path / "q.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    path.write_text(yaml.safe_dump({"run_name": "r", "output_dir": str(tmp_path / "runs"),
                                    "data": {"path": str(tmp_path / "q.jsonl"), "gold_format": "gsm8k"},
                                    "teacher": {"model": "t"}, "student": {"model": "s"},
                                    "evaluate": {"data": {"path": str(tmp_path / "q.jsonl")}, "num_samples": K}}))
    return load_config(path)


def rows(accuracy: float, seed: int, tokens: int = 40) -> list[dict]:
    """QUESTIONS questions of K samples each, right with probability `accuracy`, as evaluate's rows hold them."""
    rng = random.Random(seed)
    out = []
    for q in range(QUESTIONS):
        correct = [rng.random() < accuracy for _ in range(K)]
        answers = ["1" if c else str(2 + rng.randrange(3)) for c in correct]
        out.append({"question_id": f"q{q}", "skip_reason": None, "samples": answers, "sample_answers": answers,
                    "sample_correct": correct, "sample_tokens": tokens * K, "voted_answer": answers[0],
                    "greedy_correct": rng.random() < accuracy, "sample_answer_reasons": [None] * K,
                    "sample_finish_reasons": ["stop"] * K, "sample_completion_tokens": [tokens] * K,
                    "sample_reasoning_tokens": [None] * K})
    return out


def metrics_for(config, models: dict[str, tuple[float, dict]]) -> tuple[dict, dict]:
    all_rows, metrics = {}, {}
    for i, (name, (accuracy, cost)) in enumerate(models.items()):
        all_rows[name] = rows(accuracy, seed=i)
        metrics[name] = summarize_model(all_rows[name], {"greedy_seconds": 1.0, "sampled_seconds": 2.0,
                                                         "greedy_tokens": 100, "sampled_tokens": 40 * K * QUESTIONS,
                                                         **cost}, config)
    add_comparisons(metrics, all_rows, answer_format(config), config)
    return metrics, all_rows


SAME = {"parameters": 135_000_000, "weights_mb": 513.0, "weights_format": "safetensors", "tokens_per_s": 300.0,
        "tokens_per_s_range": [290.0, 310.0]}


def test_every_ratio_and_difference_has_its_interval_and_says_when_it_spans_none(config):
    metrics, _ = metrics_for(config, {"teacher": (0.5, SAME), "base_student": (0.3, SAME), "student": (0.5, SAME)})
    student = metrics["student"]
    for key in ("maj_share", "maj_difference", "greedy_difference", "agreement"):
        assert student["vs_teacher"][key] is not None and len(student["vs_teacher"][key + "_ci"]) == 2
    low, high = student["vs_teacher"]["maj_share_ci"]
    assert low < student["vs_teacher"]["maj_share"] < high
    assert student["vs_base"]["maj_difference_ci"][0] < student["vs_base"]["maj_difference"]
    report = report_markdown(config, metrics, [])
    line = next(line for line in report.splitlines() if line.startswith("- **student**"))
    assert "of the teacher's maj@4" in line and "[" in line
    if low <= 1 <= high:
        assert "not distinguishable from the teacher" in line
    assert "runs at 1.00x the teacher's tokens/s [0.94, 1.07] (the range spans 1x: the same speed within noise)" \
        in line
    assert "1.00x its parameters and 1.00x its bytes on disk (exact)" in line
    assert "over base_student" in line


def test_a_share_of_a_teacher_that_is_rarely_right_says_why_it_has_no_interval(config):
    """A teacher right on 1 question in 40 scores 0 in many resamples: the share has no interval, and the
    report says so and gives the difference with its interval instead of a bare percentage."""
    metrics, all_rows = metrics_for(config, {"teacher": (0.0, SAME), "student": (0.0, SAME)})
    first = all_rows["teacher"][0]
    first["sample_correct"] = [True] * K
    metrics["teacher"] = summarize_model(all_rows["teacher"], {"greedy_seconds": 1.0, "sampled_seconds": 2.0,
                                                                "greedy_tokens": 100, "sampled_tokens": 1, **SAME},
                                         config)
    metrics["student"].pop("vs_teacher", None)
    add_comparisons(metrics, all_rows, answer_format(config), config)
    t = metrics["student"]["vs_teacher"]
    assert t["maj_share"] == 0.0 and t["maj_share_ci"] is None
    line = next(line for line in report_markdown(config, metrics, []).splitlines()
                if line.startswith("- **student**"))
    assert "keeps 0% of the teacher's maj@4 (too few of the teacher's answers are right for an interval" in line
    assert "the difference: -2.5 points [" in line


def test_sections_appear_only_with_content(config):
    metrics, _ = metrics_for(config, {"teacher": (0.5, SAME), "student": (0.4, SAME)})
    report = report_markdown(config, metrics, [])
    assert "## What thinking costs" not in report and "## Distill or quantize" not in report
    assert "## Code" not in report and "## Adaptive" not in report
    quantized = {**SAME, "weights_format": "compressed-tensors", "weights_mb": 210.0}
    metrics, _ = metrics_for(config, {"teacher": (0.5, SAME), "teacher_int8": (0.5, quantized)})
    report = report_markdown(config, metrics, [])
    assert "## Distill or quantize" in report
    row = next(line for line in report.splitlines() if line.startswith("| teacher_int8 | compressed-tensors"))
    assert "| 1.00x |" in row and "| 0.41x |" in row  # parameters and bytes on disk, each as a share
    assert "keeps" in report and "0.41x its bytes on disk" in report


def test_plots_draw_no_line_through_bins_of_a_few_samples(config, tmp_path):
    metrics, _ = metrics_for(config, {"teacher": (0.5, SAME), "student": (0.5, SAME)})
    for m in metrics.values():  # 160 completions over 8 length bins of 20: every bin at the minimum
        m["accuracy_by_length"] = {"low": 10, "edges": [20 + 10 * b for b in range(8)], "geometric": False,
                                   "samples": [MIN_BIN_SAMPLES] * 8, "accuracy": [0.5] * 8,
                                   "correct": [10] * 8, "wrong": [10] * 8}
    assert write_plots(metrics, tmp_path) == ["accuracy_vs_k.png", "accuracy_vs_tokens.png", "accuracy_vs_length.png"]
    for m in metrics.values():  # too few completions per bin: no line, and no plot at all
        m["accuracy_by_length"]["samples"] = [MIN_BIN_SAMPLES - 1] * 8
    assert write_plots(metrics, tmp_path) == ["accuracy_vs_k.png", "accuracy_vs_tokens.png"]
    assert not (tmp_path / "accuracy_vs_length.png").exists()
    report = report_markdown(config, metrics, ["accuracy_vs_k.png", "accuracy_vs_tokens.png"])
    assert "accuracy_vs_length.png" not in report and "accuracy_vs_k.png" in report


def test_a_code_run_reconciles_its_verdicts(config):
    metrics, _ = metrics_for(config, {"teacher": (0.5, SAME)})
    metrics["teacher"]["code"] = {"programs": 64, "passed": 1, "failures": {"no_code": 22, "runtime_error": 31,
                                                                            "syntax_error": 6, "tests_failed": 4},
                                  "questions_voting_pass_fail": 0, "execution_classes_per_question": 3.5}
    report = report_markdown(config, metrics, [])
    row = next(line for line in report.splitlines() if line.startswith("| teacher | 64 |"))
    shares = [float(cell.strip().rstrip("%")) for cell in row.split("|")[3:12]]
    assert abs(sum(shares) - 100.0) < 0.5  # passed and every failure: each program once
    assert "classes/question is the mean number" in report and "## What thinking costs" not in report


def test_a_paired_interval_is_paired():
    from cotdistill.stages.evaluate.metrics import paired_bootstrap_ci

    a = [float(i % 2) for i in range(50)]
    assert paired_bootstrap_ci(a, a, "difference") == (0.0, 0.0)  # the same questions: no spread at all
    assert paired_bootstrap_ci(a, a, "ratio") == (1.0, 1.0)
    assert paired_bootstrap_ci(a, [0.0] * 50, "ratio") is None  # no share of 0 is defined
    low, high = paired_bootstrap_ci([1.0] * 50, [0.0] * 50, "difference")
    assert low == high == 1.0


def test_format_table_is_unchanged_in_shape(config):
    from cotdistill.stages.evaluate.report import format_table

    metrics, _ = metrics_for(config, {"teacher": (0.5, SAME)})
    table = format_table(metrics)
    assert table.splitlines()[0].split() == ["model", "greedy", "maj@1", "maj@K", "pass@K", "K", "tok/q", "tok/s",
                                             "params"]
    assert get_answer_format("number").name == "number"


def test_compare_to_adds_paired_comparisons_against_any_model_scored(config, tmp_path):
    """evaluate.compare_to: every model against each named one (vs_<name>), paired over the same questions; the
    default keeps vs_teacher and vs_base only. A name that is not scored is refused at load."""
    import dataclasses

    arms = {"teacher": (0.8, SAME), "base_student": (0.1, SAME), "label": (0.2, SAME), "n1": (0.5, SAME)}
    metrics, _ = metrics_for(config, arms)
    assert "vs_label" not in metrics["n1"] and "vs_base" in metrics["n1"]
    wide = dataclasses.replace(config, evaluate=dataclasses.replace(
        config.evaluate, compare_to=["teacher", "base_student", "label"]))
    metrics, _ = metrics_for(wide, arms)
    vs = metrics["n1"]["vs_label"]
    assert vs["questions"] == QUESTIONS and vs["maj_difference_ci"][0] <= vs["maj_difference"] <= vs["maj_difference_ci"][1]
    assert "vs_label" not in metrics["label"] and "maj_share" not in vs  # the share is the teacher's alone
    path = tmp_path / "bad.yaml"
    data = yaml.safe_load((tmp_path / "run.yaml").read_text())
    data["evaluate"]["compare_to"] = ["teacher", "nobody"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(Exception, match="compare_to"):
        load_config(path)
