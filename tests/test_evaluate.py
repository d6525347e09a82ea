"""evaluate on the real engine: every output written for the teacher, the base student, the trained student and a
stored set; a retrained student evaluated again, and only it."""

from __future__ import annotations

import pyarrow.parquet as pq

from cotdistill.config.load import load_config
from cotdistill.core.records import EVAL_SCHEMA
from cotdistill.core.shards import read_json
from cotdistill.stages import evaluate
from cotdistill.stages import train
from cotdistill.stages.evaluate.report import format_table


def test_evaluate_writes_every_output(trained, pipeline):
    teacher_generations = pipeline[0].run_dir / "generate" / "samples"
    config = load_config(pipeline[1], ["run_name=tiny-train", f"evaluate.stored={{stored_teacher: {teacher_generations}}}"])
    result = evaluate.STAGE.run(config)
    out = config.run_dir / "evaluate"
    metrics = read_json(out / "metrics.json")
    assert set(metrics["models"]) == {"teacher", "base_student", "student", "stored_teacher"}
    for name in ("teacher", "base_student", "student"):
        m = metrics["models"][name]
        assert m["questions"] == 3 and m["k"] == 3
        assert len(m["maj_at_k"]) == 3 and len(m["pass_at_k"]) == 3
        assert all(a <= b + 1e-9 for a, b in zip(m["pass_at_k"], m["pass_at_k"][1:]))  # pass@k grows with k
        assert m["maj_at_K_ci"][0] <= m["maj@3"] <= m["maj_at_K_ci"][1]
        assert 0.0 <= m["greedy_accuracy"] <= 1.0 and m["greedy_accuracy_ci"] is not None
        assert m["sampled_tokens"] > 0 and m["tokens_per_s"] > 0 and m["seconds_per_question"] > 0
        assert m["parameters"] > 100_000 and m["weights_mb"] > 0
        table = pq.read_table(out / f"{name}.parquet")
        assert table.schema.equals(EVAL_SCHEMA) and len(table) == 3
        assert all(len(s) == 3 for s in table.column("samples").to_pylist())
    assert 0.0 <= metrics["models"]["student"]["vs_teacher"]["agreement"] <= 1.0
    stored = metrics["models"]["stored_teacher"]
    assert stored["questions"] == 5 and stored["k"] == 3 and stored["greedy_accuracy"] is None
    report = (out / "report.md").read_text()
    assert "| student |" in report and "1/t" in report and "agrees with the teacher's vote" in report
    assert "What thinking costs" not in report  # a run without thinking has no section on it
    for plot in ("accuracy_vs_k.png", "accuracy_vs_tokens.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "student" in format_table(result["models"]) and "maj@K" in format_table(result["models"])
    assert evaluate.STAGE.is_complete(config)


def test_a_retrained_student_is_evaluated_again_and_only_it(trained, pipeline):
    config = load_config(pipeline[1], ["run_name=tiny-train"])
    evaluate.STAGE.run(config)
    out = config.run_dir / "evaluate"
    before = {name: (out / f"{name}.cost.json").stat().st_mtime_ns for name in ("teacher", "base_student", "student")}
    retrain = load_config(pipeline[1], ["run_name=tiny-train", "train.sft.learning_rate=0.002"])
    assert not train.STAGE.is_complete(retrain)
    stats = train.STAGE.run(retrain)
    assert stats["resumed_from_step"] == 0  # checkpoints of the old settings were not resumed
    assert not evaluate.STAGE.is_complete(retrain)
    evaluate.STAGE.run(retrain)
    after = {name: (out / f"{name}.cost.json").stat().st_mtime_ns for name in before}
    assert after["teacher"] == before["teacher"] and after["base_student"] == before["base_student"]
    assert after["student"] != before["student"]
    assert evaluate.STAGE.is_complete(retrain)
