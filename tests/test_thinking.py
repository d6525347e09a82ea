"""Reasoning teachers and students on every backend, with tiny-thinker (cotdistill/models/tiny_thinker.py: a tiny Llama
whose vocabulary holds <think> and </think>, with a thinking switch in its chat template, trained in seconds to
think before it answers):

- vLLM's reasoning parser on a local engine (vllm, ray) splits reasoning from answer exactly as vLLM's server
  started with --reasoning-parser does, with the thinking switch on and off;
- budget forcing closes the reasoning at the budget and the completion goes on to answer, on a local engine
  (vLLM's thinking_token_budget) and through the openai backend's completions endpoint (continued by the client);
- chat_template_kwargs reach the prompt of every backend, and reasoning settings that are off leave fingerprints
  as they were."""

from __future__ import annotations

from pathlib import Path

import pytest

from cotdistill.config.sections import ModelConfig
from cotdistill.models.tiny_thinker import build_tiny_thinker
from cotdistill.teachers import teacher_settings
from cotdistill.teachers.base import Sampling, TeacherRequest, render_prompt
from cotdistill.teachers.openai_server import OpenAIConfig
from cotdistill.teachers.ray_pool import RayConfig
from tests.conftest import TINY_ENGINE

QUESTIONS = [
    "Ivy has 3 pencils. Ivy gets 2 more pencils. How many pencils does Ivy have now?",
    "Max buys 4 bags with 7 apples in each bag. How many apples does Max buy in total?",
    "Noah had 9 stickers and gave 4 of them to a friend. How many stickers does Noah have left?",
    "One notebook costs $6. How many dollars do 3 notebooks cost?",
    "Zoe shares 12 cards equally among 3 friends. How many cards does each friend get?",
    "Leo has 8 shells. Leo gets 5 more shells. How many shells does Leo have now?",
]
PARSER = "deepseek_r1"


@pytest.fixture(scope="session")
def thinker(tmp_path_factory) -> Path:
    return build_tiny_thinker(tmp_path_factory.mktemp("thinker") / "model")


def thinker_config(model: Path, **settings) -> ModelConfig:
    return ModelConfig(model=str(model), engine=dict(TINY_ENGINE), reasoning_parser=PARSER, **settings)


SWITCHES = [{"enable_thinking": True}, {"enable_thinking": False}, {"open_thinking": True}]


def requests(tokenizer, kwargs: dict, **sampling) -> list[TeacherRequest]:
    out = []
    for i, question in enumerate(QUESTIONS):
        messages = [{"role": "user", "content": question}]
        text, ids = render_prompt(tokenizer, messages, kwargs)
        out.append(TeacherRequest(f"q{i}", messages, text, ids, Sampling(**{"n": 1, "temperature": 0.0,
                                                                             "max_tokens": 48, **sampling})))
    return out


def splits(teacher, reqs) -> dict[str, tuple]:
    return {f.key: tuple((c.reasoning, c.text, c.finish_reason) for c in f.completions)
            for f in teacher.generate(reqs)}


@pytest.fixture(scope="module")
def served_thinker(thinker):
    from tests.servers import start_vllm_server, stop_server

    process, base_url = start_vllm_server(thinker, timeout=240, extra_args=["--reasoning-parser", PARSER])
    try:
        yield base_url
    finally:
        stop_server(process)


@pytest.mark.engine
def test_the_thinker_thinks_and_its_tokenizer_has_the_think_tokens(thinker):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(thinker)
    assert len(tokenizer("<think></think>", add_special_tokens=False)["input_ids"]) == 2
    on, off, opened = (render_prompt(tokenizer, [{"role": "user", "content": "2 + 3?"}], kwargs)[0]
                       for kwargs in SWITCHES)
    assert off == on + "<think>\n\n</think>\n\n"  # the switch, as Qwen3's template has it
    assert opened == on + "<think>\n"  # the block opened by the prompt, as R1's distills have it


@pytest.mark.engine
@pytest.mark.parametrize("backend", ["vllm", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_local_parser_splits_as_vllms_server_does(thinker, served_thinker, backend):
    """The same prompts, greedy, through vLLM's server (--reasoning-parser) and through a local backend with the
    same parser: the same reasoning and the same answer, thinking on, off, and opened by the prompt."""
    import ray

    from cotdistill.teachers import build_teacher

    compared = 0
    for switch in SWITCHES:
        kwargs = {"chat_template_kwargs": switch}
        local = build_teacher(thinker_config(thinker, backend=backend,
                                             settings=RayConfig(replicas=1, num_cpus=1) if backend == "ray" else None,
                                             **kwargs), seed=0)
        try:
            tokenizer = local.tokenizer()
            expected = splits(local, requests(tokenizer, switch))
        finally:
            local.close()
            if ray.is_initialized():
                ray.shutdown()
        served = build_teacher(ModelConfig(model=str(thinker), backend="openai", **kwargs, settings=OpenAIConfig(
            base_url=served_thinker, api_key_env=None, model=str(thinker))), seed=0)
        try:
            got = splits(served, requests(tokenizer, switch))
        finally:
            served.close()
        assert got == expected
        compared += len(got)
        if switch != {"enable_thinking": False}:  # it thinks: there is reasoning to split, also with no opening tag
            assert sum(r is not None and r.strip() != "" for (r, _, _), in expected.values()) >= 4
    assert compared == len(SWITCHES) * len(QUESTIONS)


@pytest.mark.engine
def test_budget_forcing_on_a_local_engine_closes_the_reasoning_then_answers(thinker):
    from cotdistill.teachers.vllm_local import build

    budget = 3
    teacher = build(thinker_config(thinker), seed=0)
    try:
        tokenizer = teacher.tokenizer()
        free = splits(teacher, requests(tokenizer, {}))
        done = list(teacher.generate(requests(tokenizer, {}, max_reasoning_tokens=budget, n=2, temperature=1.0)))
        opened = list(teacher.generate(requests(tokenizer, {"open_thinking": True}, max_reasoning_tokens=budget)))
    finally:
        teacher.close()
    completions = [c for f in done for c in f.completions]
    assert len(completions) == 2 * len(QUESTIONS)
    assert sum(len(tokenizer(r or "", add_special_tokens=False)["input_ids"]) > budget
               for (r, _, _), in free.values()) >= 4  # unforced, it thinks longer than the budget
    for c in completions:  # the reasoning's tokens, its tags left out: never over the budget
        assert c.reasoning is not None and c.reasoning_tokens <= budget
        assert c.budget_hit == (c.reasoning_tokens >= budget)
    hit = [c for c in completions if c.budget_hit]
    assert len(hit) >= len(completions) // 2
    # Closed, then it went on to answer in the same text. (How tiny-thinker words that answer depends on
    # its 20-second training, which differs between CPUs: "The answer is" on some, the sentence's end on others.)
    assert sum(bool(c.text.strip()) for c in hit) >= len(hit) // 2
    # The block opened by the prompt: the completion starts inside it, and the budget holds there too.
    assert all(c.reasoning_tokens <= budget for f in opened for c in f.completions)
    assert sum(c.budget_hit for f in opened for c in f.completions) >= len(QUESTIONS) // 2


def test_budget_forcing_through_the_completions_endpoint(thinker, served_thinker):
    from cotdistill.teachers import build_teacher

    budget = 3
    config = ModelConfig(model=str(thinker), backend="openai", reasoning_delimiters=["<think>", "</think>"],
                         settings=OpenAIConfig(base_url=served_thinker, api_key_env=None, model=str(thinker),
                                             endpoint="completions"))
    teacher = build_teacher(config, seed=0)
    try:
        tokenizer = teacher.tokenizer()
        done = list(teacher.generate(requests(tokenizer, {}, max_reasoning_tokens=budget, n=2, temperature=1.0)))
    finally:
        teacher.close()
    completions = [c for f in done for c in f.completions]
    assert len(completions) == 2 * len(QUESTIONS) and not any(f.error for f in done)
    for c in completions:  # at most the budget: the client closed it there, with the delimiter after it
        assert c.reasoning_tokens is not None and c.reasoning_tokens <= budget
        assert c.budget_hit is not None
    hit = [c for c in completions if c.budget_hit]
    assert hit and sum(bool(c.text.strip()) for c in hit) >= len(hit) // 2  # it went on after the close


def test_chat_template_kwargs_go_to_the_server_and_off_settings_keep_fingerprints(tmp_path, monkeypatch):
    from cotdistill.teachers.openai_server import OpenAITeacher

    # The request body only: no server here, so the probe every served teacher makes before its first request is
    # left out (tests/test_teacher_errors.py tests the probe).
    monkeypatch.setattr(OpenAITeacher, "_check_servers", lambda self: None)

    plain = ModelConfig(model="m")
    assert set(teacher_settings(plain)) == {"model", "weights", "engine"}  # as before reasoning settings existed
    thinking = ModelConfig(model="m", chat_template_kwargs={"enable_thinking": False}, reasoning_parser=PARSER)
    settings = teacher_settings(thinking)
    assert settings["chat_template_kwargs"] == {"enable_thinking": False} and settings["reasoning_parser"] == PARSER
    served = ModelConfig(model="m", backend="openai", chat_template_kwargs={"enable_thinking": False},
                         settings=OpenAIConfig(base_url="http://127.0.0.1:9/v1", api_key_env=None))
    teacher = OpenAITeacher(served, seed=0)
    try:
        body = teacher._request_kwargs(TeacherRequest("q", [{"role": "user", "content": "2+3?"}], "", None,
                                                      Sampling()), 1, None)
    finally:
        teacher.close()
    assert body["extra_body"]["chat_template_kwargs"] == {"enable_thinking": False}


BUDGET_MISTAKES = [  # (overrides, the key the message names, a phrase of it)
    (["generate.max_reasoning_tokens=64"], "generate.max_reasoning_tokens", "set teacher.reasoning_parser"),
    (["generate.max_reasoning_tokens=64", "teacher.backend=openai"], "generate.max_reasoning_tokens",
     "cannot continue a chat reply"),
    (["generate.max_reasoning_tokens=64", "teacher.backend=openai", "teacher.openai.endpoint=completions"],
     "generate.max_reasoning_tokens", "set teacher.reasoning_delimiters"),
    (["evaluate.max_reasoning_tokens=64", "teacher.reasoning_parser=deepseek_r1"], "evaluate.max_reasoning_tokens",
     "set student.reasoning_parser"),
    (["teacher.reasoning_parser=deepseek_r2"], "teacher.reasoning_parser", "unknown value 'deepseek_r2'"),
    (["teacher.reasoning_parser=deepseek_r1", "teacher.backend=openai"], "teacher.reasoning_parser",
     "split by its server"),
    (["teacher.reasoning_delimiters=[<think>]"], "teacher.reasoning_delimiters", "[opening, closing]"),
    (["generate.max_reasoning_tokens=0"], "generate.max_reasoning_tokens", "at least 1"),
]


@pytest.mark.parametrize("overrides, key, phrase", BUDGET_MISTAKES, ids=[m[1] + ":" + m[2] for m in BUDGET_MISTAKES])
def test_reasoning_settings_that_cannot_work_are_refused_at_load(overrides, key, phrase):
    from cotdistill.core.fields import ConfigError
    from cotdistill.config.load import load_config
    from tests.conftest import REPO

    with pytest.raises(ConfigError) as caught:
        load_config(REPO / "pipelines" / "demo.yaml", overrides)
    assert f"demo.yaml: {key}: " in str(caught.value) and phrase in str(caught.value), str(caught.value)


def test_evaluate_reports_what_thinking_costs():
    from cotdistill.stages.evaluate.scoring import thinking_metrics

    rows = [{"sample_answer_reasons": [None, "unfinished_reasoning", None, "unparseable"],
             "sample_finish_reasons": ["stop", "length", "length", "stop"],
             "sample_completion_tokens": [20, 64, 64, 10], "sample_reasoning_tokens": [12, 64, 50, 10],
             "sample_correct": [True, False, False, False]}]
    m = thinking_metrics(rows, budget=50)
    assert m["no_answer_rate"] == 0.5 and m["no_answer_reasons"] == {"unfinished_reasoning": 1, "unparseable": 1}
    assert m["truncation_rate"] == 0.5 and m["truncated_in_reasoning"] == 0.5
    assert m["reasoning_tokens_mean"] == 34.0 and m["answer_tokens_mean"] == 5.5
    assert m["reasoning_budget_hit_rate"] == 0.5
    by_length = m["accuracy_by_length"]
    # 10 to 64 tokens: eight bins of 7 from 10 (equal widths: the longest is under 8 times the shortest)
    assert by_length["low"] == 10 and by_length["edges"] == [17, 24, 31, 38, 45, 52, 59, 65]
    assert by_length["samples"] == [1, 1, 0, 0, 0, 0, 0, 2] and not by_length["geometric"]
    assert by_length["accuracy"][:3] == [0.0, 1.0, None] and by_length["wrong"][-1] == 2


@pytest.mark.engine
def test_the_thinking_demo_runs_end_to_end(tmp_path):
    """pipelines/demo_thinking.yaml, as a user runs it from a fresh clone: tiny-thinker built into an empty cache,
    every stage, and a report with the thinking figures and the length plot."""
    import json
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from tests.conftest import REPO

    env = dict(os.environ, COTDISTILL_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    result = subprocess.run([sys.executable, "-m", "cotdistill", "run", "pipelines/demo_thinking.yaml",
                             f"output_dir={tmp_path / 'runs'}"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "demo-thinking"
    samples = pq.read_table(run / "generate" / "samples" / "00000.parquet").to_pylist()
    assert all(r["reasoning"] is not None and "<think>" not in r["rationale"] for r in samples[:8])
    assert any(r["reasoning_budget_hit"] for r in samples) and all(r["reasoning_tokens"] <= 12 for r in samples)
    student = pq.read_table(run / "evaluate" / "student.parquet").to_pylist()
    assert sum(r is not None for row in student for r in row["sample_reasonings"]) >= len(student)  # it thinks
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())["models"]
    for name in ("teacher", "base_student", "student"):
        assert {"no_answer_rate", "truncation_rate", "reasoning_tokens_mean"} <= set(metrics[name])
    report = (run / "evaluate" / "report.md").read_text()
    assert "## What thinking costs" in report
    # The length plot is drawn only for a model with MIN_BINS bins of MIN_BIN_SAMPLES completions; the report
    # shows it exactly when it was drawn.
    from cotdistill.stages.evaluate.report import MIN_BIN_SAMPLES, MIN_BINS

    drawable = any(sum(n >= MIN_BIN_SAMPLES for n in m["accuracy_by_length"]["samples"]) >= MIN_BINS
                   for m in metrics.values() if m.get("accuracy_by_length"))
    plot = run / "evaluate" / "accuracy_vs_length.png"
    assert ("accuracy_vs_length.png" in report) == drawable == plot.exists()
    assert not drawable or plot.stat().st_size > 0
