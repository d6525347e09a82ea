"""Adaptive sampling and STaR rationalization in generate: closing rounds known in advance (a scripted teacher and
the parrot model), resume after kill -9 between and inside rounds, the verdict shared with the filter, the hint
kept out of the student's prompt, and the filter's quotes_hint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict

import pyarrow as pa
import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.config.sections import FilterConfig
from cotdistill.core.fields import ConfigError
from cotdistill.core.records import SAMPLE_SCHEMA, Question, Sample, samples_to_table
from cotdistill.core.shards import read_json, read_shards
from cotdistill.stages import generate
from cotdistill.stages.base import SettingsChanged
from cotdistill.stages.filter.phases import FilterContext, judge_table
from cotdistill.stages.generate.progress import Policy, Progress
from cotdistill.teachers.base import Completion, Finished
from cotdistill.verify.answers import get_answer_format
from tests.conftest import REPO, tiny_config_dict

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


# --- a scripted teacher ------------------------------------------------------------------------------------------


class ScriptedTeacher:
    """The Teacher protocol over scripted completions: each question's texts in sample order, handed out n at a
    time as requests ask; records every request (key, n) it was sent."""

    name = "scripted"

    def __init__(self, script: dict[str, list[str]], crash_after: int | None = None):
        self.script, self.sent, self.given, self.crash_after = script, [], Counter(), crash_after

    def tokenizer(self):
        return None

    def max_model_len(self):
        return None

    def generate(self, requests):
        for r in requests:
            question = r.messages[-1]["content"].split("\n")[0]
            self.sent.append((question, r.sampling.n, r.messages))
            if self.crash_after is not None and len(self.sent) > self.crash_after:
                raise RuntimeError("the teacher died")  # this request's answer never comes back
            start = self.given[question]
            texts = self.script[question][start:start + r.sampling.n]
            self.given[question] += r.sampling.n
            yield Finished(key=r.key, prompt_tokens=10,
                           completions=[Completion(text=t, finish_reason="stop", completion_tokens=5) for t in texts])

    def close(self):
        pass


def scripted_config(tmp_path, questions: dict[str, str | None], overrides: list[str]):
    rows = [{"question": q, **({"answer": f"#### {gold}"} if gold is not None else {})}
            for q, gold in questions.items()]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"run_name": "scripted", "output_dir": str(tmp_path / "runs"), "data": {"path": str(path),
            "gold_format": "gsm8k", **({} if all(questions.values()) else {"answer_field": None})},
            "teacher": {"model": "scripted"}, "student": {"model": "scripted"},
            "generate": {"num_samples": 8, "questions_per_shard": 2, "max_tokens": 16}}
    config_path = tmp_path / "scripted.yaml"
    config_path.write_text(yaml.safe_dump(data))
    return load_config(config_path, overrides)


RIGHT, WRONG = "3 + 4 = 7. The answer is 7.", "3 + 3 = 6. The answer is 6."


def rows_by_question(config):
    table = read_shards(config.run_dir / "generate" / "samples").to_pylist()
    grouped = defaultdict(list)
    for row in table:
        grouped[row["question"]].append(row)
    return grouped


def test_questions_close_in_the_round_their_script_says(tmp_path):
    # b = 2, N = 8, target_correct = 2: A's second correct rationale is sample 3 (round 2), B's is sample 5
    # (round 3), C never has one (4 rounds, the cap).
    script = {
        "A": [WRONG, RIGHT, WRONG, RIGHT] + [RIGHT] * 4,
        "B": [RIGHT, WRONG, WRONG, WRONG, WRONG, RIGHT] + [RIGHT] * 2,
        "C": [WRONG] * 8,
    }
    config = scripted_config(tmp_path, {"A": "7", "B": "7", "C": "7"}, [
        "generate.adaptive.round_size=2", "generate.adaptive.target_correct=2"])
    teacher = ScriptedTeacher(script)
    stats = generate.STAGE.run(config, teacher=teacher)
    rows = rows_by_question(config)
    expected = {"A": (2, 4), "B": (3, 6), "C": (4, 8)}  # rounds, samples
    for q, (rounds, samples) in expected.items():
        assert [r["sample_index"] for r in rows[q]] == list(range(samples))
        assert [r["rationale"] for r in rows[q]] == script[q][:samples]
        assert [r["round"] for r in rows[q]] == [i // 2 + 1 for i in range(samples)]
        assert {r["rounds"] for r in rows[q]} == {rounds}
        assert {r["rationalized"] for r in rows[q]} == {None}  # rationalize off
    assert Counter(q for q, _, _ in teacher.sent) == {"A": 2, "B": 3, "C": 4}
    assert {n for _, n, _ in teacher.sent} == {2}
    assert stats["adaptive"] == {"questions": 3, "samples_per_question_mean": 6.0, "rounds_mean": 3.0,
                                 "closed": {"target": 2, "rule": 0, "cap": 1, "error": 0}}
    assert stats["rationales"] == 18 and stats["completion_tokens"] == 18 * 5
    assert "rationalized" not in stats


def test_a_crash_inside_a_round_resumes_where_the_journal_stops(tmp_path):
    """In process, a teacher that dies with the 5th answer (inside round 2) and a journal with a record written
    twice: the rerun sends only the missing rounds, and the shards hold what an uninterrupted run writes."""
    script = {
        "A": [WRONG, RIGHT, WRONG, RIGHT] + [RIGHT] * 4,
        "B": [RIGHT, WRONG, WRONG, WRONG, WRONG, RIGHT] + [RIGHT] * 2,
        "C": [WRONG] * 8,
    }
    overrides = ["generate.adaptive.round_size=2", "generate.adaptive.target_correct=2"]
    config = scripted_config(tmp_path, {"A": "7", "B": "7", "C": "7"}, overrides)
    dying = ScriptedTeacher(script, crash_after=4)
    with pytest.raises(RuntimeError, match="the teacher died"):
        generate.STAGE.run(config, teacher=dying)
    journal = config.run_dir / "generate" / "journal" / "00000.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    assert [json.loads(line)["round"] for line in lines] == [1, 1, 2]  # A, B in round 1 and A's round 2
    with open(journal, "a") as f:
        f.write(lines[0])  # the same record twice: counted once
    again = ScriptedTeacher(script)
    again.given = Counter(dying.given)
    stats = generate.STAGE.run(config, teacher=again)
    # Left to send: B's rounds 2-3 (A closed in round 2), C's rounds 2-4 (its round 1 is in shard 1's journal).
    assert Counter(q for q, _, _ in again.sent) == {"B": 2, "C": 3}
    rows = rows_by_question(config)
    for q, (rounds, samples) in {"A": (2, 4), "B": (3, 6), "C": (4, 8)}.items():
        assert [r["sample_index"] for r in rows[q]] == list(range(samples))
        assert [r["rationale"] for r in rows[q]] == script[q][:samples]
        assert {r["rounds"] for r in rows[q]} == {rounds}
    assert stats["rationales"] == 18 and not list((config.run_dir / "generate" / "journal").glob("*.jsonl"))


def test_the_last_round_asks_only_what_is_left_of_n(tmp_path):
    config = scripted_config(tmp_path, {"C": "7"}, ["generate.num_samples=5", "generate.adaptive.round_size=2"])
    teacher = ScriptedTeacher({"C": [WRONG] * 5})
    generate.STAGE.run(config, teacher=teacher)
    assert [n for _, n, _ in teacher.sent] == [2, 2, 1]
    assert [r["sample_index"] for r in rows_by_question(config)["C"]] == [0, 1, 2, 3, 4]


def test_without_gold_the_stopping_rule_closes_a_settled_majority(tmp_path):
    # label majority, Beta rule at 0.95, b = 2: four agreeing answers give P = 31/32 >= 0.95 (round 2); three
    # give 15/16 < 0.95. A split vote never settles and runs to N.
    script = {"A": [RIGHT] * 8, "B": [RIGHT, WRONG] * 4, "C": ["no idea"] + [RIGHT] * 7}
    config = scripted_config(tmp_path, {"A": None, "B": None, "C": None}, [
        "filter.label=majority", "generate.adaptive.round_size=2"])
    generate.STAGE.run(config, teacher=ScriptedTeacher(script))
    rows = rows_by_question(config)
    # C: its first answer does not vote, so its fourth vote comes with sample 4 (round 3).
    assert {q: (len(rows[q]), rows[q][0]["rounds"]) for q in rows} == {"A": (4, 2), "B": (8, 4), "C": (6, 3)}
    stats = read_json(config.run_dir / "generate" / "stats.json")
    assert stats["adaptive"]["closed"] == {"target": 0, "rule": 2, "cap": 1, "error": 0}


def test_window_rule_closes_on_agreeing_answers(tmp_path):
    script = {"A": [WRONG, RIGHT, RIGHT, RIGHT] + [WRONG] * 4}
    config = scripted_config(tmp_path, {"A": None}, [
        "filter.label=majority", "generate.adaptive.round_size=1", "generate.adaptive.rule=window",
        "generate.adaptive.window=3"])
    generate.STAGE.run(config, teacher=ScriptedTeacher(script))
    assert len(rows_by_question(config)["A"]) == 4


def test_fixed_n_rationalizes_only_questions_without_a_correct_rationale(tmp_path):
    script = {"A": [RIGHT] * 8, "B": [WRONG] * 8 + ["4 + 4 = 8. The answer is 8."] * 2}
    config = scripted_config(tmp_path, {"A": "7", "B": "8"}, [
        "generate.rationalize=true", "generate.rationalize_samples=2"])
    teacher = ScriptedTeacher(script)
    stats = generate.STAGE.run(config, teacher=teacher)
    rows = rows_by_question(config)
    assert [r["rationalized"] for r in rows["A"]] == [False] * 8
    assert [r["rationalized"] for r in rows["B"]] == [False] * 8 + [True] * 2
    assert [r["sample_index"] for r in rows["B"]] == list(range(10))
    assert {r["round"] for r in rows["B"]} == {None} and {r["rounds"] for r in rows["B"]} == {None}  # fixed N
    hint_request = [m for q, _, m in teacher.sent if q == "B"][-1]
    assert "The correct final answer is 8" in hint_request[-1]["content"]
    ordinary, hinted = rows["B"][0], rows["B"][-1]
    assert hinted["prompt_messages"] == ordinary["prompt_messages"] and hinted["prompt_text"] == ordinary["prompt_text"]
    assert "The correct final answer is 8" in hinted["hint_prompt_text"] and ordinary["hint_prompt_text"] is None
    assert stats["rationalized"] == {"questions_without_correct": 1, "questions": 1, "rationales": 2,
                                     "reaching_gold": 2, "completion_tokens": 10}


# --- generate's verdict is the filter's ------------------------------------------------------------------------


VERDICT_CASES = {
    "number": ("12", None, [
        ("3 * 4 = 12. The answer is 12", "stop"), ("The answer is 12.0", "stop"), ("#### 12", "stop"),
        ("3 * 4 = 12 and so on", "length"), ("The answer is 13", "stop"), ("", "stop"), ("   ", "stop"),
        ("I think 12, no, the answer is 11", "stop"), ("The answer is $12", "stop"), ("twelve", "stop"),
        ("The answer is 12. The answer is 13.", "stop"), ("then I add 4 again and " * 30 + "12", "stop"),
    ]),
    "math": ("\\frac{1}{2}", None, [
        ("So $\\boxed{0.5}$.", "stop"), ("The final answer is $\\boxed{\\frac12}$", "stop"),
        ("The answer is 1/3", "stop"), ("\\boxed{0.5", "length"), ("Final Answer: 0.5", "stop"),
    ]),
    "choice": ("B", ["red", "blue", "green"], [
        ("The answer is (B).", "stop"), ("The answer is A", "stop"), ("Answer: B", "length"), ("B", "stop"),
    ]),
}


@pytest.mark.parametrize("answer_format", sorted(VERDICT_CASES))
def test_generate_and_filter_agree_on_which_rationales_reach_the_gold(tmp_path, answer_format):
    """Every rationale, alone, through generate's Policy (what adaptive counts toward target_correct) and through
    the filter (is_correct and finished, what its pass rate counts): the same verdict on every row."""
    gold, choices, cases = VERDICT_CASES[answer_format]
    config = scripted_config(tmp_path, {"A": "7"}, [
        f"filter.answer_format={answer_format}", "generate.adaptive.target_correct=1"])
    policy = Policy(config)
    q = Question("q", "What?", gold, choices)
    samples = [Sample(question_id=f"q{i}", sample_index=0, question="What?", gold_answer=gold, choices=choices,
                      prompt_messages=[], prompt_text="", rationale=text, finish_reason=finish, prompt_tokens=1,
                      completion_tokens=1, teacher="t", sampling={}, seed=0, run_id="r")
               for i, (text, finish) in enumerate(cases)]
    cfg = FilterConfig(answer_format=answer_format, near_duplicates=False)
    judged = judge_table(samples_to_table(samples, SAMPLE_SCHEMA),
                         FilterContext(cfg=cfg, fmt=get_answer_format(answer_format), seed=0)).to_pylist()
    for (text, finish), row in zip(cases, judged):
        progress = Progress()
        policy.absorb(progress, {"question_id": "q", "samples": [{"rationale": text, "finish_reason": finish}],
                                 "skipped": None, "error": None, "round": 1}, q)
        in_filter = bool(row["is_correct"]) and row["finish_reason"] != "length"
        assert progress.correct == in_filter == (row["pass_rate"] == 1.0), (answer_format, text, finish)
        assert (progress.closed == "target") == in_filter


# --- quotes_hint ---------------------------------------------------------------------------------------------


def test_quotes_hint_drops_rationalized_rationales_that_quote_instead_of_derive():
    question = "Ivy has 3 pencils. Ivy gets 5 more pencils. How many pencils does Ivy have now?"
    texts = [
        ("Ivy has 3 + 5 = 8 pencils.\nThe answer is 8", True, None),  # derived: kept
        ("Using the hint, Ivy has 3 + 5 = 8 pencils. The answer is 8", True, "quotes_hint"),  # names the hint
        ("We are told the answer is 8, so Ivy has 3 + 5 = 8.", True, "quotes_hint"),
        ("The answer is 8. Ivy has 3 + 5 = 8 pencils.", True, "quotes_hint"),  # 8 before any calculation
        ("Ivy ends up with 8 pencils. The answer is 8", True, "quotes_hint"),  # no calculation at all
        ("Ivy has 3 + 4 = 7 pencils. The answer is 7", True, "wrong"),  # rationalized and wrong
        ("The answer is 8. Ivy has 3 + 5 = 8 pencils.", False, None),  # not rationalized: never checked
    ]
    samples = [Sample(question_id="q", sample_index=i, question=question, gold_answer="8", choices=None,
                      prompt_messages=[], prompt_text="", rationale=text, finish_reason="stop", prompt_tokens=1,
                      completion_tokens=1, teacher="t", sampling={}, seed=0, run_id="r", rationalized=hinted)
               for i, (text, hinted, _) in enumerate(texts)]
    cfg = FilterConfig(near_duplicates=False, drop_duplicates=False)
    judged = judge_table(samples_to_table(samples, SAMPLE_SCHEMA),
                         FilterContext(cfg=cfg, fmt=get_answer_format("number"), seed=0)).to_pylist()
    assert [r["filter_reason"] for r in judged] == [why for _, _, why in texts]
    assert {r["pass_rate"] for r in judged} == {1.0}  # the teacher's own: the one ordinary row, not the hinted


def test_quotes_hint_spares_numbers_the_question_already_holds():
    from cotdistill.stages.filter.checks import quotes_hint

    assert not quotes_hint("There are 8 boxes, so 8 * 1 = 8. The answer is 8", "8", "Tom has 8 boxes of 1 pen.")
    assert quotes_hint("The hint says 8 and 8 * 1 = 8", "8", "Tom has 8 boxes of 1 pen.")
    assert not quotes_hint("3 - 1 = 2, so the answer is B", "B", "Which?")  # letters: phrases only
    assert quotes_hint("Given answer B, so B", "B", "Which?")


# --- configuration and fingerprints ------------------------------------------------------------------------------


def test_config_refuses_what_cannot_work(tmp_path):
    with pytest.raises(ConfigError, match="generate.rationalize: .*gold labels"):
        scripted_config(tmp_path, {"A": "7"}, ["generate.rationalize=true", "filter.label=majority"])
    with pytest.raises(ConfigError, match="generate.adaptive: .*label none"):
        scripted_config(tmp_path, {"A": "7"}, ["generate.adaptive.round_size=2", "filter.label=none"])
    with pytest.raises(ConfigError, match="generate.adaptive.rule: unknown value 'vote'"):
        scripted_config(tmp_path, {"A": "7"}, ["generate.adaptive.rule=vote"])
    with pytest.raises(ConfigError, match="generate.adaptive.target_correct: 9 is above generate.num_samples"):
        scripted_config(tmp_path, {"A": "7"}, ["generate.adaptive.target_correct=9"])
    with pytest.raises(ConfigError, match="generate.rationalize_prompt: .*not found"):
        scripted_config(tmp_path, {"A": "7"}, ["generate.rationalize=true", "generate.rationalize_prompt=nope.jinja"])
    with pytest.raises(ConfigError, match="generate.rationalize_prompt: never shows `hint`"):
        scripted_config(tmp_path, {"A": "7"}, ["generate.rationalize=true",
                                               "generate.rationalize_prompt=math_zero_shot_cot.jinja"])


def test_fixed_n_fingerprint_is_unchanged_and_adaptive_keys_are_named(tmp_path):
    fixed = scripted_config(tmp_path, {"A": "7"}, [])
    settings = generate.fingerprint(fixed)["settings"]["generate"]
    assert not {"adaptive", "rationalize", "rationalize_prompt", "rationalize_samples", "answer_check"} & set(settings)
    adaptive = scripted_config(tmp_path, {"A": "7"}, ["generate.adaptive.round_size=2"])
    generate.STAGE.run(fixed, teacher=ScriptedTeacher({"A": [RIGHT] * 8}))
    with pytest.raises(SettingsChanged, match="generate.adaptive.confidence, generate.adaptive.round_size"):
        generate.STAGE.run(adaptive, teacher=ScriptedTeacher({"A": [RIGHT] * 8}))


# --- the real engine: the parrot model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parrot(tmp_path_factory, parrot_model, gsm8k_rows):
    """Four GSM8K questions, gold 7 (the parrot's answer, every sample correct) and 8 (never), in two shards, and
    one engine for the in-process runs."""
    from cotdistill.teachers.vllm_local import build

    tmp = tmp_path_factory.mktemp("adaptive")
    golds = [7, 8, 7, 8]
    questions = tmp / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": r["question"], "answer": f"#### {g}"}) + "\n"
                                 for r, g in zip(gsm8k_rows[:4], golds)))
    data = tiny_config_dict(tmp, parrot_model, questions)
    data["generate"].update(num_samples=6, temperature=0.1, max_tokens=24,
                            adaptive={"round_size": 2, "target_correct": 2})
    config_path = tmp / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = load_config(config_path)
    teacher = build(config.teacher, config.seed)
    yield tmp, config_path, teacher, {r["question"].strip(): g for r, g in zip(gsm8k_rows[:4], golds)}
    teacher.close()


def rounds_of(run_dir):
    table = read_shards(run_dir / "generate" / "samples").to_pylist()
    keys = [(r["question_id"], r["sample_index"]) for r in table]
    assert len(keys) == len(set(keys))  # every (question, sample) exactly once
    by_question = defaultdict(list)
    for r in table:
        by_question[r["question"]].append(r)
    return {q: (sorted(r["sample_index"] for r in rows), {r["rounds"] for r in rows})
            for q, rows in by_question.items()}


def test_parrot_gold_7_closes_in_round_1_and_gold_8_runs_all_n(parrot):
    tmp, config_path, teacher, golds = parrot
    config = load_config(config_path, [f"output_dir={tmp / 'uninterrupted'}"])
    stats = generate.STAGE.run(config, teacher=teacher)
    got = rounds_of(config.run_dir)
    for q, gold in golds.items():
        assert got[q] == ((list(range(2)), {1}) if gold == 7 else (list(range(6)), {3})), q
    assert stats["adaptive"]["closed"] == {"target": 2, "rule": 0, "cap": 2, "error": 0}
    # Against fixed N = 6 on the same questions: 2 + 2 + 6 + 6 samples instead of 24.
    assert stats["rationales"] == 16


def test_kill_9_between_and_inside_rounds_resumes_without_loss_or_duplicates(parrot):
    tmp, config_path, teacher, golds = parrot
    out = [f"output_dir={tmp / 'killed'}"]
    # Round 1 is 4 journal appends (one a question); the 4th is the last before round 2 is sent.
    for n in (4, 1):  # between rounds 1 and 2; then, in the rerun, inside round 2 (after 1 of its 2 records)
        killed = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at.py"), "journal-append", str(n),
                                 "generate", str(config_path), *out], capture_output=True, text=True, cwd=tmp,
                                timeout=600, env={**os.environ, **ENV})
        assert killed.returncode == -9, killed.stderr[-3000:]
    config = load_config(config_path, out)
    journals = [json.loads(line) for p in sorted((config.run_dir / "generate" / "journal").glob("*.jsonl"))
                for line in p.read_text().splitlines()]
    assert Counter(r["round"] for r in journals) == {1: 4, 2: 1}
    assert not list((config.run_dir / "generate" / "samples").glob("*.parquet"))  # every shard has an open question
    sent = []

    class Counting:
        name = teacher.name

        def tokenizer(self):
            return teacher.tokenizer()

        def max_model_len(self):
            return teacher.max_model_len()

        def generate(self, requests):
            def counted():
                for r in requests:
                    sent.append((r.key, r.sampling.n))
                    yield r
            return teacher.generate(counted())

    generate.STAGE.run(config, teacher=Counting())
    # Only the missing rounds: 16 samples in all (2 + 6 + 2 + 6), less those journaled before the kills.
    assert sum(n for _, n in sent) == 16 - sum(len(r["samples"]) for r in journals) == 6
    uninterrupted = load_config(config_path, [f"output_dir={tmp / 'reference'}"])
    generate.STAGE.run(uninterrupted, teacher=teacher)
    assert rounds_of(config.run_dir) == rounds_of(uninterrupted.run_dir)


def test_rationalized_rows_keep_the_hint_out_of_the_students_prompt(parrot, tmp_path):
    from cotdistill.stages import train
    from cotdistill.core.prompts import PromptTemplate
    from cotdistill.core.records import FILTERED_SCHEMA
    from cotdistill.core.shards import write_parquet_atomic

    _, config_path, teacher, golds = parrot
    config = load_config(config_path, [f"output_dir={tmp_path}", "generate.rationalize=true",
                                       "generate.rationalize_samples=2"])
    stats = generate.STAGE.run(config, teacher=teacher)
    table = read_shards(config.run_dir / "generate" / "samples").to_pylist()
    hinted = [r for r in table if r["rationalized"]]
    # The parrot never reaches 8: both gold-8 questions are asked again, with the hint; gold 7 ones are not.
    assert {golds[r["question"]] for r in hinted} == {8} and len(hinted) == 2 * 2
    assert stats["rationalized"]["questions"] == 2 and stats["rationalized"]["rationales"] == 4
    for r in hinted:
        ordinary = next(o for o in table if o["question_id"] == r["question_id"] and not o["rationalized"])
        assert r["prompt_text"] == ordinary["prompt_text"] and r["prompt_messages"] == ordinary["prompt_messages"]
        assert "The correct final answer is 8" in r["hint_prompt_text"]
        assert "8" not in r["prompt_text"].split(r["question"])[-1]  # nothing after the question names the gold
        assert r["sample_index"] >= 6 and r["round"] is None and r["rounds"] == 3
    # Whatever the filter would keep, train builds the student's prompt from the question alone.
    write_parquet_atomic(pa.Table.from_pylist([{**r, "filter_reason": None} for r in hinted], schema=FILTERED_SCHEMA),
                         tmp_path / "accepted" / "00000.parquet")
    dataset = train.build_sft_dataset(tmp_path / "accepted", PromptTemplate(config.train.prompt), ["00000.parquet"])
    assert len(dataset) == len(hinted)
    for example, row in zip(dataset, hinted):
        prompt = json.dumps(example["prompt"])
        assert "correct final answer" not in prompt and "hint" not in prompt.lower()
        assert example["prompt"] == PromptTemplate(config.train.prompt).render(question=row["question"])


@pytest.mark.engine
def test_seeded_rounds_draw_exactly_fixed_ns_first_samples(tmp_path, tiny_model, gsm8k_rows):
    """generate.seed_per_request on the real CPU engine: adaptive rounds of 2 (later passes, other batches) draw
    the very samples one request of N draws. The token budget is small enough that chunked prefill would split the
    prompts, which vLLM's CPU sampler cannot do for seeded requests: build_llm turns it off there."""
    from cotdistill.teachers.vllm_local import build

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n"
                                 for r in gsm8k_rows[:4]))
    data = tiny_config_dict(tmp_path, tiny_model, questions)
    data["teacher"]["engine"]["max_num_batched_tokens"] = 512
    data["generate"].update(num_samples=6, temperature=1.0, max_tokens=16, seed_per_request=True)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(data))
    fixed = load_config(config_path, ["run_name=fixed"])
    # The random model never reaches a GSM8K gold: every question runs its 3 rounds to the cap.
    adaptive = load_config(config_path, ["run_name=adaptive", "generate.adaptive.round_size=2",
                                         "generate.adaptive.target_correct=6"])
    teacher = build(fixed.teacher, fixed.seed)
    try:
        assert teacher.llm.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill is False
        generate.STAGE.run(fixed, teacher=teacher)
        stats = generate.STAGE.run(adaptive, teacher=teacher)
    finally:
        teacher.close()
    assert stats["adaptive"]["closed"]["cap"] == 4 and stats["adaptive"]["rounds_mean"] == 3

    def samples(config):
        return {(r["question_id"], r["sample_index"]): (r["rationale"], r["completion_tokens"], r["round"])
                for r in read_shards(config.run_dir / "generate" / "samples").to_pylist()}

    got, want = samples(adaptive), samples(fixed)
    assert len(got) == len(want) == 24
    assert {k: v[:2] for k, v in got.items()} == {k: v[:2] for k, v in want.items()}
    assert {k[1]: v[2] for k, v in got.items()} == {0: 1, 1: 1, 2: 2, 3: 2, 4: 3, 5: 3}
    assert len({v[0] for v in got.values()}) > 12  # distinct draws, not one seed repeated
