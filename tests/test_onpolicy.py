"""The onpolicy stage: TRL's on-policy distillation trainers on tiny real models. The student (the tiny Llama,
random) samples its own completions to the training questions and learns a teacher's distribution on them: its
weights change and the divergence on held-out prompts falls; a kill -9 while a checkpoint is written is resumed
from the one before; a changed beta redoes the stage and evaluate then scores only student_onpolicy again; a
served teacher (a stub vLLM server returning prompt logprobs) is asked with the key, and its fatal errors stop the
stage; a teacher with another tokenizer trains by GOLD; configuration mistakes are refused at load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.fields import ConfigError
from cotdistill.core.shards import read_json
from tests.conftest import REPO, tiny_config_dict

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def build_peaked_teacher(student: Path, target: Path, scale: float = 8.0, seed: int = 1) -> Path:
    """A teacher with the student's tokenizer: the tiny Llama's architecture with other random weights, its (tied)
    embeddings scaled so that its next-token distributions are peaked, far from the student's near-uniform ones."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shutil.copytree(student, target)
    config = LlamaConfig.from_pretrained(target)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(scale)
    model.save_pretrained(target)
    return target


@pytest.fixture(autouse=True)
def one_thread():
    """These models are so small that one thread is fastest; several, on a busy machine, are many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def peaked_teacher(tmp_path_factory, tiny_model) -> Path:
    return build_peaked_teacher(tiny_model, tmp_path_factory.mktemp("peaked") / "model")


def write_questions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def onpolicy_config(tmp_path: Path, student: Path, teacher: Path, questions: Path, **onpolicy) -> dict:
    data = tiny_config_dict(tmp_path, teacher, questions)
    data["student"]["model"] = str(student)
    data["onpolicy"] = {"start": "base_student", "beta": 0.5, "max_steps": 4, "per_device_train_batch_size": 2,
                        "max_completion_length": 12, "learning_rate": 5.0e-2, "save_steps": 2, "logging_steps": 1,
                        "gradient_checkpointing": False, **onpolicy}
    return data


def load(tmp_path: Path, data: dict, overrides: list[str] = (), name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return load_config(path, list(overrides)), path


def weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_onpolicy_trains_the_student_toward_the_teacher(tmp_path, tiny_model, peaked_teacher, gsm8k_rows):
    from cotdistill.stages import onpolicy

    questions = write_questions(tmp_path / "q.jsonl", gsm8k_rows[:14])
    config, _ = load(tmp_path, onpolicy_config(tmp_path, tiny_model, peaked_teacher, questions, held_out=6,
                                               max_steps=6, save_steps=3))
    stats = onpolicy.STAGE.run(config)

    assert stats["trainer"] == "DistillationTrainer" and stats["teacher_kind"] == "local"
    assert stats["global_steps"] == 6 and stats["steps_this_run"] == 6 and stats["questions"] == 8
    # costs: 6 steps of 2 completions of at most 12 tokens, each token scored once by the teacher
    assert stats["completions"] == 12 and 0 < stats["student_tokens_sampled"] <= 12 * 12
    assert stats["teacher_tokens_scored"] == stats["student_tokens_sampled"]
    assert stats["teacher_tokens_read"] > stats["student_tokens_sampled"] and stats["train_wall_s"] > 0
    assert 0 <= stats["truncated_completions"] <= 12
    held = stats["held_out"]
    # the trainer's own divergence on the student's samples of questions it never trained on
    assert held["questions"] == 6 and held["divergence_after"] < 0.9 * held["divergence_before"], held
    assert read_json(config.paths.onpolicy / "stats.json") == stats
    assert "distilled on-policy" in (config.paths.onpolicy_model / "README.md").read_text()
    before, after = weights(tiny_model), weights(config.paths.onpolicy_model)
    assert any(abs(before[k] - after[k]).max() > 0 for k in before)
    assert onpolicy.STAGE.is_complete(config)


def test_kill_9_while_checkpointing_then_rerun_resumes_from_the_checkpoint(tmp_path, tiny_model, peaked_teacher,
                                                                            gsm8k_rows):
    from cotdistill.stages import onpolicy

    questions = write_questions(tmp_path / "q.jsonl", gsm8k_rows[:8])
    data = onpolicy_config(tmp_path, tiny_model, peaked_teacher, questions, max_steps=4, save_steps=1)
    config, path = load(tmp_path, data)
    # a real SIGKILL of the command while checkpoint-2's optimizer.pt is half written (tests/kill_at.py)
    result = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at.py"), "train-checkpoint", "2",
                             "onpolicy", str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                            env={**os.environ, **ENV, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -9, result.stderr[-3000:]
    checkpoints = config.paths.onpolicy_checkpoints
    assert (checkpoints / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (checkpoints / "checkpoint-2" / "trainer_state.json").exists()
    assert not onpolicy.STAGE.is_complete(config)

    stats = onpolicy.STAGE.run(config)  # the rerun: the partial checkpoint set aside, checkpoint-1 resumed
    assert stats["resumed_from_checkpoint"] == "checkpoint-1" and stats["resumed_from_step"] == 1
    assert stats["steps_this_run"] == 3 and stats["global_steps"] == 4
    # the costs go on from the checkpoint's: 4 steps of 2 completions in all
    assert stats["completions"] == 8 and stats["teacher_tokens_scored"] == stats["student_tokens_sampled"]
    assert any((checkpoints / "partial").iterdir())
    assert onpolicy.STAGE.is_complete(config)


@pytest.mark.engine
def test_a_changed_beta_redoes_onpolicy_and_evaluate_scores_only_student_onpolicy_again(
        tmp_path, tiny_model, peaked_teacher, gsm8k_rows):
    from cotdistill.stages import evaluate, onpolicy
    from cotdistill.stages.evaluate.report import format_table

    questions = write_questions(tmp_path / "q.jsonl", gsm8k_rows[:6])
    data = onpolicy_config(tmp_path, tiny_model, peaked_teacher, questions, max_steps=2, save_steps=50)
    data["evaluate"] = {"data": {"path": str(write_questions(tmp_path / "test.jsonl", gsm8k_rows[100:102])),
                                 "gold_format": "gsm8k"},
                        "models": ["base_student", "student_onpolicy"], "num_samples": 1, "greedy": False,
                        "max_tokens": 8, "speed": None}
    config, _ = load(tmp_path, data)
    onpolicy.STAGE.run(config)
    metrics = evaluate.STAGE.run(config)["models"]
    assert set(metrics) == {"base_student", "student_onpolicy"}
    report = (config.paths.evaluate / "report.md").read_text()
    assert "student_onpolicy" in report and "## Training cost" in report
    # each student's training cost beside its accuracy, in the command's table too
    assert metrics["student_onpolicy"]["training"]["student_tokens_sampled"] > 0 and "training" not in \
        metrics["base_student"]
    table = format_table(metrics)
    assert table.splitlines()[0].split()[-4:] == ["train", "s", "sampled", "teacher"]
    row = next(line for line in table.splitlines() if line.startswith("student_onpolicy")).split()
    assert row[-2] == str(metrics["student_onpolicy"]["training"]["student_tokens_sampled"])
    scored = {name: config.paths.eval_cost(name).stat().st_mtime_ns for name in metrics}

    changed, _ = load(tmp_path, data, ["onpolicy.beta=0.9"])
    assert not onpolicy.STAGE.is_complete(changed)
    stats = onpolicy.STAGE.run(changed)
    assert stats["beta"] == 0.9 and stats["steps_this_run"] == 2 and stats["resumed_from_checkpoint"] is None
    evaluate.STAGE.run(changed)
    assert config.paths.eval_cost("base_student").stat().st_mtime_ns == scored["base_student"]
    assert config.paths.eval_cost("student_onpolicy").stat().st_mtime_ns != scored["student_onpolicy"]


@pytest.mark.parametrize("change, blamed", [
    ({"onpolicy.betta": 0.5}, "onpolicy.betta: unknown DistillationConfig field"),
    ({"onpolicy.beta": 1.5}, "beta must be in [0.0, 1.0], got 1.5"),
    ({"onpolicy.lmbda": 0.5}, "onpolicy.lmbda: unknown DistillationConfig field (TRL's DistillationTrainer samples"),
    ({"onpolicy.learning_rate": "1e-4"}, "onpolicy.learning_rate: must be a number"),
    ({"onpolicy.teacher": "big"}, "onpolicy.teacher: names one of several teachers"),
    ({"onpolicy.start": "teacher"}, "onpolicy.start: unknown value 'teacher'"),
    ({"onpolicy.held_out": -1}, "onpolicy.held_out: must be at least 0"),
    ({"onpolicy.cross_tokenizer": True}, "onpolicy.cross_tokenizer: the teacher"),
    ({"onpolicy.teacher_model_name_or_path": "x"}, "onpolicy.teacher_model_name_or_path: is set by cotdistill"),
    ({"onpolicy": None, "evaluate.models": ["student_onpolicy"]}, "evaluate.models: student_onpolicy is the onpolicy"),
    ({"teacher.backend": "openai", "onpolicy.cross_tokenizer": True}, "onpolicy.cross_tokenizer: GOLD needs"),
    ({"teacher.backend": "openai", "onpolicy.loss_top_k": 5},
     "ServerDistillationConfig refuses these settings: loss_top_k must be 1 with beta>0"),
])
def test_configuration_mistakes_are_refused_at_load(tmp_path, tiny_model, change, blamed):
    questions = write_questions(tmp_path / "q.jsonl", [{"question": "1 + 1?", "answer": "#### 2"}])
    data = onpolicy_config(tmp_path, tiny_model, tiny_model, questions)
    load(tmp_path, data)  # as written, it loads
    for key, value in change.items():
        section, _, name = key.partition(".")
        if not name:
            data[section] = value
        else:
            data[section][name] = value
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, data)
    assert blamed in str(refused.value)


def test_onpolicy_keys_round_trip_through_the_resolved_config(tmp_path, tiny_model):
    """The TRL keys are written back as onpolicy's own (config.yaml loads again to the same settings)."""
    from cotdistill.config.load import dump_config

    questions = write_questions(tmp_path / "q.jsonl", [{"question": "1 + 1?", "answer": "#### 2"}])
    config, _ = load(tmp_path, onpolicy_config(tmp_path, tiny_model, tiny_model, questions))
    assert config.onpolicy.trl["beta"] == 0.5 and config.onpolicy.start == "base_student"
    dumped = yaml.safe_load(dump_config(config))["onpolicy"]
    assert dumped["beta"] == 0.5 and "trl" not in dumped
    (tmp_path / "again.yaml").write_text(dump_config(config))
    assert load_config(tmp_path / "again.yaml").onpolicy == config.onpolicy


SECRET = "sk-onpolicy-secret-42"


def served_config(tmp_path: Path, student: Path, url: str, questions: Path, served_name: str = "teacher",
                  **onpolicy) -> dict:
    data = onpolicy_config(tmp_path, student, student, questions, **onpolicy)
    data["teacher"] = {"model": "peaked-teacher", "backend": "openai",
                       "openai": {"base_url": url, "model": served_name, "api_key_env": "ONPOLICY_TEST_KEY",
                                  "max_retries": 2}}
    return data


def test_a_served_teacher_trains_the_student_with_its_key(tmp_path, tiny_model, peaked_teacher, gsm8k_rows,
                                                          monkeypatch):
    from cotdistill.stages import onpolicy
    from tests.servers import StubLogprobServer

    monkeypatch.setenv("ONPOLICY_TEST_KEY", SECRET)
    questions = write_questions(tmp_path / "q.jsonl", gsm8k_rows[:8])
    # two 503s first (Retry-After 0): retried, within openai.max_retries
    with StubLogprobServer(peaked_teacher, SECRET, behave=lambda n: ("status", 503) if n <= 2 else None) as stub:
        config, _ = load(tmp_path, served_config(tmp_path, tiny_model, stub.url, questions, max_steps=3,
                                                 save_steps=2))
        stats = onpolicy.STAGE.run(config)
    assert stats["trainer"] == "ServerDistillationTrainer" and stats["teacher_kind"] == "served"
    assert stats["global_steps"] == 3 and stats["teacher_retries"] == 2 and stats["completions"] == 6
    assert [status for path, status in stub.log if path == "/v1/completions"] == [503, 503, 200, 200, 200]
    before, after = weights(tiny_model), weights(config.paths.onpolicy_model)
    assert any(abs(before[k] - after[k]).max() > 0 for k in before)
    # the key went to the server only: no file of the run holds it
    for path in config.run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("fault, message", [
    ("key", "authentication refused (401)"),
    ("model", "does not serve 'peaked'"),
    ("down", "failed 3 times (503"),
])
def test_a_served_teachers_fatal_errors_stop_the_stage_in_one_line(tmp_path, tiny_model, peaked_teacher, gsm8k_rows,
                                                                  monkeypatch, capsys, fault, message):
    from cotdistill.cli import main
    from tests.servers import StubLogprobServer

    monkeypatch.setenv("ONPOLICY_TEST_KEY", "sk-wrong" if fault == "key" else SECRET)
    questions = write_questions(tmp_path / "q.jsonl", gsm8k_rows[:4])
    behave = (lambda n: ("status", 503)) if fault == "down" else None
    with StubLogprobServer(peaked_teacher, SECRET, behave=behave) as stub:
        data = served_config(tmp_path, tiny_model, stub.url, questions, "peaked" if fault == "model" else "teacher",
                             max_steps=2)
        _, path = load(tmp_path, data)
        with pytest.raises(SystemExit) as stopped:
            main(["onpolicy", str(path)])
    assert stopped.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "runs" / "tiny" / "onpolicy" / "stats.json").exists()


@pytest.fixture(scope="module")
def other_vocabulary_teacher(tmp_path_factory) -> Path:
    """A teacher with another tokenizer (a BPE vocabulary of 384, not the student's 512), peaked like the other."""
    import torch
    from transformers import LlamaForCausalLM

    from tests.conftest import build_tiny_llama

    target = build_tiny_llama(tmp_path_factory.mktemp("other-vocab") / "model", vocab_size=384)
    model = LlamaForCausalLM.from_pretrained(target, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(8.0)
    model.save_pretrained(target)
    return target


def test_a_teacher_with_another_tokenizer_trains_by_gold(tmp_path, tiny_model, other_vocabulary_teacher, gsm8k_rows):
    from transformers import AutoTokenizer

    from cotdistill.stages import onpolicy

    student_vocab, teacher_vocab = (AutoTokenizer.from_pretrained(m).get_vocab()
                                    for m in (tiny_model, other_vocabulary_teacher))
    assert len(student_vocab) != len(teacher_vocab)
    questions = write_questions(tmp_path / "q.jsonl", gsm8k_rows[:8])
    data = onpolicy_config(tmp_path, tiny_model, other_vocabulary_teacher, questions, max_steps=3, save_steps=50)
    with pytest.raises(ConfigError, match="different tokenizers: set onpolicy.cross_tokenizer: true"):
        load(tmp_path, data)
    data["onpolicy"].update(cross_tokenizer=True, max_length=256)  # max_length: a GOLDConfig field
    config, _ = load(tmp_path, data)
    stats = onpolicy.STAGE.run(config)

    assert stats["trainer"] == "GOLDTrainer" and stats["teacher_kind"] == "cross_tokenizer"
    assert stats["global_steps"] == 3 and stats["completions"] == 6  # lmbda 1: every batch the student's own
    assert 0 < stats["student_tokens_sampled"] <= 6 * 12 and stats["teacher_tokens_scored"] > 0
    before, after = weights(tiny_model), weights(config.paths.onpolicy_model)
    assert any(abs(before[k] - after[k]).max() > 0 for k in before)


def test_a_real_vllm_server_scores_the_students_tokens(tmp_path, tiny_model, served_parrot, gsm8k_rows,
                                                       monkeypatch):
    """TRL's request (token-id prompts, prompt_logprobs) against vLLM's own OpenAI server: the parrot teacher
    (conftest.served_parrot, shared with the other server tests) scores the tiny student's completions."""
    from cotdistill.stages import onpolicy

    monkeypatch.delenv("ONPOLICY_TEST_KEY", raising=False)  # a loopback server takes no key
    questions = write_questions(tmp_path / "q.jsonl", gsm8k_rows[:4])
    data = served_config(tmp_path, tiny_model, served_parrot, questions, max_steps=2, save_steps=50)
    data["teacher"]["openai"].pop("model")  # vLLM serves the model under its folder's path, the teacher's `model`
    data["teacher"]["model"] = served_parrot_model_name(served_parrot)
    config, _ = load(tmp_path, data)
    stats = onpolicy.STAGE.run(config)
    assert stats["trainer"] == "ServerDistillationTrainer" and stats["global_steps"] == 2
    assert stats["teacher_retries"] == 0 and stats["teacher_tokens_scored"] == stats["student_tokens_sampled"] > 0
    assert (config.paths.onpolicy_model / "config.json").is_file()


def served_parrot_model_name(base_url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=10) as answer:
        return json.loads(answer.read())["data"][0]["id"]


def test_a_thinking_students_switches_reach_its_sampling(tmp_path, tiny_model, peaked_teacher):
    """student.chat_template_kwargs (enable_thinking: false) reach the prompts the trainer tokenizes for sampling."""
    import shutil

    from transformers import AutoTokenizer

    from cotdistill.stages import onpolicy
    from tests.conftest import CHATML_TEMPLATE

    student = tmp_path / "thinker"
    shutil.copytree(tiny_model, student)
    tokenizer = AutoTokenizer.from_pretrained(student)
    tokenizer.chat_template = CHATML_TEMPLATE + ("{% if add_generation_prompt and enable_thinking is defined and "
                                                 "not enable_thinking %}<think>\n\n</think>\n\n{% endif %}")
    tokenizer.save_pretrained(student)
    questions = write_questions(tmp_path / "q.jsonl", [{"question": "What is 2 + 3?", "answer": "#### 5"}] * 3)
    data = onpolicy_config(tmp_path, student, peaked_teacher, questions)
    data["student"]["chat_template_kwargs"] = {"enable_thinking": False}
    config, _ = load(tmp_path, data)
    dataset, _ = onpolicy.prompt_datasets(config)
    trainer = onpolicy.build_trainer(config, str(student), dataset, None)
    (ids,), _, _ = trainer._tokenize_prompts([dataset[0]["prompt"]])
    assert "</think>" in tokenizer.decode(ids)
    assert trainer.args.chat_template_kwargs == {"enable_thinking": False}


@pytest.mark.parametrize("merge", [True, False])
def test_lora_as_in_train(tmp_path, tiny_model, peaked_teacher, gsm8k_rows, merge):
    """train.peft wraps the student in a LoRA adapter; the result is merged (an ordinary model) or the adapter alone,
    as train.merge_adapter says."""
    from cotdistill.models.adapters import is_adapter
    from cotdistill.stages import onpolicy

    questions = write_questions(tmp_path / "q.jsonl", gsm8k_rows[:6])
    data = onpolicy_config(tmp_path, tiny_model, peaked_teacher, questions, max_steps=2, save_steps=50)
    data["train"].update(peft={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}, merge_adapter=merge)
    config, _ = load(tmp_path, data)
    stats = onpolicy.STAGE.run(config)
    assert stats["global_steps"] == 2
    model = config.paths.onpolicy_model
    assert is_adapter(model) is not merge
    if merge:
        before, after = weights(tiny_model), weights(model)
        changed = {k for k in before if abs(before[k] - after[k]).max() > 0}
        assert changed and all("q_proj" in k or "v_proj" in k for k in changed)  # the adapted layers alone
