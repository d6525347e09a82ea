"""Adaptive self-consistency in evaluate: the stopping rules against hand computations, the walk over a question's
drawn samples on answer lists whose stopping point is known, and the evaluate stage with evaluate.adaptive set."""

from __future__ import annotations

import json
from fractions import Fraction

import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.config.sections import AdaptiveEvalConfig
from cotdistill.core.fields import ConfigError
from cotdistill.stages.evaluate.metrics import majority_vote
from cotdistill.stages.evaluate.report import format_table
from cotdistill.stages.evaluate.scoring import adaptive_stop, score_row
from cotdistill.verify.stopping import beta_should_stop, leader_beats_runner_up, should_stop, window_should_stop
from tests.conftest import tiny_config_dict

# --- the stopping rules ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("leader, runner_up, probability", [
    (0, 0, Fraction(1, 2)),  # Beta(1, 1) is uniform
    (1, 1, Fraction(1, 2)),  # Beta(2, 2) is symmetric about 1/2
    (1, 0, Fraction(3, 4)),  # Beta(2, 1): density 2p, P(p > 1/2) = 1 - 1/4
    (3, 0, Fraction(15, 16)),  # Beta(4, 1): 1 - (1/2)^4
    (4, 0, Fraction(31, 32)),  # Beta(5, 1)
    (2, 1, Fraction(11, 16)),  # Beta(3, 2): P(Binomial(4, 1/2) <= 2) = (1 + 4 + 6) / 16
    (3, 1, Fraction(26, 32)),  # Beta(4, 2): (1 + 5 + 10 + 10) / 32
    (6, 1, Fraction(247, 256)),  # Beta(7, 2): 1 - (1 + 8) / 256
    (1, 3, Fraction(6, 32)),  # the leader behind: Beta(2, 4), 1 - 26/32
])
def test_beta_posterior_by_hand(leader, runner_up, probability):
    assert leader_beats_runner_up(leader, runner_up) == pytest.approx(float(probability), abs=1e-12)


def test_beta_posterior_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for a in range(0, 12):
        for b in range(0, 12):
            assert leader_beats_runner_up(a, b) == pytest.approx(stats.beta.sf(0.5, a + 1, b + 1), abs=1e-12)


def test_beta_rule_counts_the_top_two_answers_and_ignores_unparseable():
    assert not beta_should_stop(["7", "7", "7"], 0.95)  # 15/16 = 0.9375
    assert beta_should_stop(["7", "7", "7", "7"], 0.95)  # 31/32 = 0.969
    assert not beta_should_stop(["7", None, "7", None, "7", None], 0.95)  # still 3 votes
    assert beta_should_stop(["7", "7", "7"], 0.9)
    # A third answer does not count against the leader: only leader vs runner-up.
    assert beta_should_stop(["7"] * 6 + ["1", "2", "3"], 0.95) == (leader_beats_runner_up(6, 1) >= 0.95)
    assert not beta_should_stop([], 0.95) and not beta_should_stop([None, None], 0.95)


def test_window_rule():
    assert window_should_stop(["1", "2", "2", "2"], 3)
    assert not window_should_stop(["2", "2", "1"], 3)
    assert not window_should_stop(["2", "2"], 3)  # fewer answers than the window
    assert not window_should_stop([None, None, None], 3)  # agreeing on no answer is not settled
    assert not window_should_stop(["2", None, "2"], 3)
    assert should_stop(["4"] * 4, "window", window=4) and not should_stop(["4"] * 3, "window", window=4)
    with pytest.raises(ValueError, match="unknown stopping rule"):
        should_stop(["1"], "entropy")


# --- the walk over the K samples already drawn ----------------------------------------------------------------


def beta(**settings) -> AdaptiveEvalConfig:
    return AdaptiveEvalConfig(rule="beta", **settings)


@pytest.mark.parametrize("answers, settings, used, answer", [
    (["7"] * 16, {}, 4, "7"),  # unanimous: 31/32 >= 0.95 after the 4th
    (["7", "8", "7", "7", "7", "7", "7", "7"], {}, 7, "7"),  # (6, 1) is the first over 0.95: 247/256
    (["7"] * 16, {"round_size": 3}, 6, "7"),  # asked after 3 (15/16, go on) and 6
    (["7"] * 16, {"confidence": 0.9}, 3, "7"),  # 15/16 >= 0.9
    (["1", "2", "3", "4", "5", "6", "7", "8"], {"round_size": 5}, 8, "1"),  # never settled: all K, a partial
    # last round, and the 8-way tie goes to the answer seen first (as voted_answer's does)
    ([None] * 6, {}, 6, None),  # nothing parses: all K, no answer
    ([None, "3", None, "3", "3", "3", "3", "3"], {}, 6, "3"),  # the 4th vote arrives with the 6th sample
    ([], {}, 0, None),  # a skipped question: no samples
])
def test_adaptive_walk_beta(answers, settings, used, answer):
    assert adaptive_stop(answers, beta(**settings)) == (used, answer)


@pytest.mark.parametrize("answers, window, round_size, used, answer", [
    (["1", "2", "2", "2", "5", "5"], 3, 1, 4, "2"),
    (["1", "1", "2", "2", "2", "1"], 3, 1, 5, "2"),  # the window (2, 2, 2); the vote of all five, 3 to 2: 2
    (["1", "2", "2", "2", "5", "5"], 3, 3, 6, "2"),  # ESC's disjoint windows: (1, 2, 2), then (2, 5, 5); all K
    (["4", "4", "4", "4", "4", "4"], 2, 2, 2, "4"),
])
def test_adaptive_walk_window(answers, window, round_size, used, answer):
    assert adaptive_stop(answers, AdaptiveEvalConfig(rule="window", window=window, round_size=round_size)) == (
        used, answer)


def test_score_row_stores_the_adaptive_columns_and_groups_equivalent_answers():
    from cotdistill.verify.answers import get_answer_format
    from cotdistill.core.records import Question
    from cotdistill.teachers.base import Completion

    fmt = get_answer_format("math")
    # 0.5 and \frac{1}{2} are one answer: four votes after the 4th sample, so the rule stops there.
    texts = ["The answer is $0.5$", "The answer is $\\frac{1}{2}$", "The answer is $\\frac{1}{2}$",
             "The answer is $0.5$", "The answer is $3$", "The answer is $3$"]
    completions = [Completion(t, "stop", 10) for t in texts]
    row = score_row({}, Question("q", "half?", "1/2"), completions, fmt, beta())
    assert row["adaptive_samples"] == 4 and row["adaptive_answer"] == "0.5" and row["adaptive_correct"] is True
    assert "adaptive_samples" not in score_row({}, Question("q", "half?", "1/2"), completions, fmt)


@pytest.mark.parametrize("settings, key", [
    ({"rule": "entropy"}, "evaluate.adaptive.rule"),
    ({"confidence": 0.5}, "evaluate.adaptive.confidence"),
    ({"confidence": 1.5}, "evaluate.adaptive.confidence"),
    ({"window": 0}, "evaluate.adaptive.window"),
    ({"round_size": 0}, "evaluate.adaptive.round_size"),
    ({"rounds": 2}, "evaluate.adaptive.rounds"),
])
def test_adaptive_settings_are_checked_at_load(tmp_path, settings, key):
    from tests.test_config import BASE

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "evaluate": {"adaptive": settings}}))
    with pytest.raises(ConfigError, match=rf"run.yaml: (unknown key ')?{key}"):
        load_config(path)


# --- the evaluate stage with evaluate.adaptive -----------------------------------------------------------------


@pytest.mark.engine
def test_evaluate_reports_adaptive_self_consistency(tmp_path, parrot_model, gsm8k_rows):
    """The parrot answers 7 to everything: each question's vote settles after 4 of its 8 samples (31/32 >= 0.95),
    right on the questions whose gold is 7. A stored model whose samples are hand-written has known outcomes."""
    from cotdistill.stages import evaluate
    from cotdistill.core.records import EVAL_SCHEMA, SAMPLE_SCHEMA, Sample, samples_to_table
    from cotdistill.core.shards import read_json, write_parquet_atomic

    rows = [{"question": r["question"], "answer": "We count.\n#### 7"} for r in gsm8k_rows[:2]] + gsm8k_rows[2:4]
    questions = tmp_path / "test.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Stored generations: s0 settles on 5 after 4 samples; s1 never settles and ends on a 4-4 tie, which goes to
    # the first-seen 3 (wrong); s2 reaches (6, 1) votes at its 7th sample of 8.
    answers = {"s0": ["5"] * 8, "s1": ["3", "4", "3", "4", "3", "4", "4", "3"],
               "s2": ["9", "8", "9", "9", "9", "9", "9", "9"]}
    gold = {"s0": "5", "s1": "4", "s2": "9"}
    stored = [Sample(question_id=q, sample_index=i, question=f"question {q}", gold_answer=gold[q], choices=None,
                     prompt_messages=[], prompt_text="", rationale=f"So the answer is {a}", finish_reason="stop",
                     prompt_tokens=1, completion_tokens=5, teacher="t", sampling={}, seed=0, run_id="r")
              for q, values in answers.items() for i, a in enumerate(values)]
    write_parquet_atomic(samples_to_table(stored, SAMPLE_SCHEMA), tmp_path / "stored" / "00000.parquet")

    data = tiny_config_dict(tmp_path, parrot_model, questions)
    data["evaluate"].update(models=["teacher"], num_samples=8, greedy=False, stored={"hand": str(tmp_path / "stored")},
                            adaptive={"rule": "beta", "confidence": 0.95})
    path = tmp_path / "adaptive.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    result = evaluate.STAGE.run(config)
    out = config.run_dir / "evaluate"
    metrics = read_json(out / "metrics.json")
    assert metrics["adaptive"] == {"rule": "beta", "confidence": 0.95, "window": 4, "round_size": 1}

    for name in ("teacher", "hand"):
        m = metrics["models"][name]
        table = pq.read_table(out / f"{name}.parquet")
        assert table.schema.equals(EVAL_SCHEMA)
        rows = table.to_pylist()
        used = [r["adaptive_samples"] for r in rows]
        assert all(1 <= u <= m["k"] == 8 for u in used)
        assert m["adaptive_samples_mean"] == pytest.approx(sum(used) / len(used))
        assert m["adaptive_sample_ratio"] == pytest.approx(m["adaptive_samples_mean"] / m["k"])
        assert m["adaptive_accuracy"] == pytest.approx(sum(r["adaptive_correct"] for r in rows) / len(rows))
        lo, hi = m["adaptive_accuracy_ci"]
        assert lo <= m["adaptive_accuracy"] <= hi
        assert m["adaptive_gap_to_maj_at_K"] == pytest.approx(m["adaptive_accuracy"] - m["maj@8"])
        for r in rows:  # the adaptive answer is the vote of the samples it used
            assert r["adaptive_answer"] == majority_vote(r["sample_answers"][:r["adaptive_samples"]])[0]

    hand = {r["question_id"]: r for r in pq.read_table(out / "hand.parquet").to_pylist()}
    assert {q: (r["adaptive_samples"], r["adaptive_answer"], r["adaptive_correct"]) for q, r in hand.items()} == {
        "s0": (4, "5", True), "s1": (8, "3", False), "s2": (7, "9", True)}
    assert metrics["models"]["hand"]["adaptive_samples_mean"] == pytest.approx(19 / 3)

    teacher = pq.read_table(out / "teacher.parquet").to_pylist()
    for r in teacher:
        if r["sample_answers"][:4] == ["7"] * 4:  # the parrot on form: settled after 4
            assert r["adaptive_samples"] == 4 and r["adaptive_answer"] == "7"
            assert r["adaptive_correct"] == (r["gold_answer"] == "7")
    assert sum(r["sample_answers"][:4] == ["7"] * 4 for r in teacher) >= 2  # the known outcome is exercised

    report = (out / "report.md").read_text()
    assert "## Adaptive self-consistency" in report and "| hand |" in report
    assert "adapt" in format_table(result["models"])
    assert evaluate.STAGE.is_complete(config)
    # The adaptive settings key the stored rows: another confidence is scored again, and only then complete.
    changed = load_config(path, ["evaluate.adaptive.confidence=0.9"])
    assert not evaluate.STAGE.is_complete(changed)


def stored_shard(path, rows):
    """A Sample shard of (question_id, sample_index, rationale, round, rationalized) rows; gold 7 throughout."""
    from cotdistill.core.records import SAMPLE_SCHEMA, Sample, samples_to_table
    from cotdistill.core.shards import write_parquet_atomic

    samples = [Sample(question_id=q, sample_index=i, question=f"question {q}", gold_answer="7", choices=None,
                      prompt_messages=[], prompt_text="", rationale=text, finish_reason="stop", prompt_tokens=1,
                      completion_tokens=3, teacher="t", sampling={}, seed=0, run_id="r", round=rnd,
                      rationalized=hinted)
               for q, i, text, rnd, hinted in rows]
    write_parquet_atomic(samples_to_table(samples, SAMPLE_SCHEMA), path / "00000.parquet")


def test_stored_shards_leave_rationalized_rows_out(tmp_path):
    from cotdistill.verify.answers import get_answer_format
    from cotdistill.stages.evaluate.scoring import stored_rows

    # Fixed N = 2 with rationalization: q2 got no correct sample, then two hinted ones that reach the gold.
    stored_shard(tmp_path, [("q1", 0, "The answer is 7", None, False), ("q1", 1, "The answer is 7", None, False),
                            ("q2", 0, "The answer is 5", None, False), ("q2", 1, "The answer is 6", None, False),
                            ("q2", 2, "The answer is 7", None, True), ("q2", 3, "The answer is 7", None, True)])
    rows, cost = stored_rows(tmp_path, "teacher", get_answer_format("number"))
    by_id = {r["question_id"]: r for r in rows}
    assert [len(by_id[q]["samples"]) for q in ("q1", "q2")] == [2, 2]
    assert by_id["q2"]["sample_correct"] == [False, False]  # the hint's answers do not count for the teacher
    assert cost["sampled_tokens"] == 4 * 3


def test_stored_adaptive_shards_are_refused_naming_why(tmp_path):
    from cotdistill.verify.answers import get_answer_format
    from cotdistill.stages.evaluate.scoring import stored_rows

    stored_shard(tmp_path, [("q1", 0, "The answer is 7", 1, None),
                            ("q2", 0, "The answer is 5", 1, None), ("q2", 1, "The answer is 7", 2, None)])
    with pytest.raises(RuntimeError, match=r"evaluate.stored.teacher: .* generate.adaptive: each question's "
                                           r"sampling stopped on its answers \(1 to 2 samples\)"):
        stored_rows(tmp_path, "teacher", get_answer_format("number"))
    # Even when every question stopped after as many samples (here both at their first, correct one).
    stored_shard(tmp_path, [("q1", 0, "The answer is 7", 1, None), ("q2", 0, "The answer is 7", 1, None)])
    with pytest.raises(RuntimeError, match=r"generate.adaptive: .* \(1 to 1 samples\)"):
        stored_rows(tmp_path, "teacher", get_answer_format("number"))
