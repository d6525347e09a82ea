"""Shared fixtures: the offline environment, GSM8K from ../shared/data, and a tiny Llama built once per session.

The tiny model has random weights, a BPE tokenizer trained here on GSM8K questions, and a ChatML chat template;
attention head size 32 (vLLM on CPU refuses 16). It drives the real vLLM engine and the real TRL trainer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

REPO = Path(__file__).resolve().parent.parent

# What a test needs, by the fixtures it uses: markers (pyproject.toml) that `make test-fast` leaves out. A test that
# starts an engine, a server or Ray in its own body carries the marker itself; what_runs_is_marked fails one that
# starts an engine or a server in this process without it.
NEEDS = {
    "served_parrot": "server", "served_thinker": "server", "server": "server",
    "own_ray": "ray", "echo_model": "ray",
    "pipeline": "engine", "trained": "engine", "kd_run": "engine", "local_run": "engine",
    "parrot_model": "slow", "thinker": "slow",  # built once, in 20 to 30 seconds
}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        for fixture in item.fixturenames:
            if fixture in NEEDS:
                item.add_marker(NEEDS[fixture])


@pytest.fixture(autouse=True)
def what_runs_is_marked(request, monkeypatch):
    """A test that starts a vLLM engine (or server) in this process must say so (@pytest.mark.engine, server), so that
    `make test-fast` stays fast: here it fails at once, naming the marker, instead of running."""
    marks = {m.name for m in request.node.iter_markers()}

    def refuse(what: str, mark: str):
        def stop(*args, **kwargs):
            pytest.fail(f"{request.node.nodeid} starts {what} and is not marked @pytest.mark.{mark}")
        return stop

    if "engine" not in marks:
        monkeypatch.setattr("cotdistill.teachers.vllm_local.build_llm", refuse("a vLLM engine", "engine"))
    if "server" not in marks:
        monkeypatch.setattr("tests.servers.start_vllm_server", refuse("a vLLM server", "server"))
    yield
SHARED_DATA = REPO.parent / "shared" / "data"
GSM8K_TEST = SHARED_DATA / "gsm8k" / "test.jsonl"
GSM8K_TRAIN = SHARED_DATA / "gsm8k" / "train.jsonl"

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def build_tiny_llama(target: Path, vocab_size: int = 512) -> Path:
    """Random-weight Llama, 2 layers, hidden 128, 4 heads of 32, vocabulary 512 (or `vocab_size`: another
    tokenizer), with a trained tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [r["question"] + "\n" + r["answer"] for r in read_jsonl(GSM8K_TRAIN, limit=2000)]
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def gsm8k_rows() -> list[dict]:
    if not GSM8K_TEST.exists():
        pytest.fail(f"{GSM8K_TEST} is missing: the tests read GSM8K from ../shared/data beside the checkout")
    return read_jsonl(GSM8K_TEST)


TINY_ENGINE = {"dtype": "float32", "max_model_len": 512, "enforce_eager": True,
               "kv_cache_memory_bytes": 64 * 1024 * 1024}


def tiny_config_dict(tmp_path: Path, model: Path, questions: Path, test_questions: Path | None = None) -> dict:
    """A complete pipeline config for the tiny model, as the YAML would hold it."""
    return {
        "run_name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "seed": 0,
        "data": {"path": str(questions), "gold_format": "gsm8k"},
        "teacher": {"model": str(model), "engine": dict(TINY_ENGINE)},
        "student": {"model": str(model), "engine": dict(TINY_ENGINE)},
        "generate": {"prompt": "math_zero_shot_cot.jinja", "num_samples": 3, "temperature": 1.0,
                     "max_tokens": 24, "questions_per_shard": 2},
        "filter": {"answer_format": "number"},
        "train": {"sft": {"max_steps": 3, "per_device_train_batch_size": 2, "max_length": 512,
                          "learning_rate": 1e-3, "save_steps": 2, "logging_steps": 1}},
        "evaluate": {"data": {"path": str(test_questions or questions), "gold_format": "gsm8k"},
                     "num_samples": 3, "max_tokens": 24},
    }


def set_dotted(data: dict, changes: dict) -> None:
    """{"section.key": value, ...} into a config mapping (a test's variations of tiny_config_dict)."""
    for key, value in changes.items():
        section, _, field = key.partition(".")
        data[section][field] = value


PARROT_ANSWER = "We count them all. The answer is 7."


def build_parrot_llama(source: Path, target: Path, steps: int = 120) -> Path:
    """The tiny Llama trained (a few seconds, plain torch) to answer every question, in the teacher's and the
    student's prompt, with PARROT_ANSWER: questions whose gold is 7 then get accepted rationales and the
    others wrong ones, so a run on it goes through the filter's accepted path as well as its rejections."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from cotdistill.core.prompts import PromptTemplate

    shutil.copytree(source, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = LlamaForCausalLM.from_pretrained(target, dtype=torch.float32)
    questions = [r["question"] for r in read_jsonl(GSM8K_TRAIN, limit=64)]
    templates = [PromptTemplate("math_zero_shot_cot.jinja"), PromptTemplate("student_question.jinja")]
    examples = []
    for i, q in enumerate(questions):
        prompt = tokenizer.apply_chat_template(templates[i % 2].render(question=q), tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-200:]
        answer_ids = tokenizer(PARROT_ANSWER + "<|im_end|>", add_special_tokens=False)["input_ids"]
        examples.append((prompt_ids + answer_ids, len(prompt_ids)))
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as models/tiny_thinker does: this small, one thread is fastest, several on a busy machine slow
    try:
        train_parrot(model, optimizer, examples, steps, tokenizer.pad_token_id)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(target)
    return target


def train_parrot(model, optimizer, examples: list[tuple[list[int], int]], steps: int, pad_token_id: int) -> None:
    import torch

    for step in range(steps):
        batch = [examples[(step * 8 + j) % len(examples)] for j in range(8)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((8, width), pad_token_id)
        labels = torch.full((8, width), -100)
        for row, (ids, start) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, start: len(ids)] = torch.tensor(ids[start:])
        loss = model(input_ids=input_ids, attention_mask=(labels != -100) | (input_ids != pad_token_id),
                     labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.fixture(scope="session")
def parrot_model(tmp_path_factory, tiny_model) -> Path:
    return build_parrot_llama(tiny_model, tmp_path_factory.mktemp("parrot") / "model")


def write_finished_filter(run_dir: Path, gsm8k_rows: list[dict]) -> None:
    """What a finished filter stage leaves for train, with GSM8K's own worked answers as the accepted corpus
    (so training has real rationales to learn): the accepted shard, stats naming it, and a fingerprint."""
    from cotdistill.core.fingerprints import make_fingerprint, write_fingerprint
    from cotdistill.core.records import FILTERED_SCHEMA, Sample, samples_to_table
    from cotdistill.core.shards import write_json_atomic, write_parquet_atomic

    samples = [
        Sample(question_id=f"q{i}", sample_index=0, question=r["question"],
               gold_answer=r["answer"].split("####")[-1].strip(), choices=None, prompt_messages=[], prompt_text="",
               rationale=r["answer"], finish_reason="stop", prompt_tokens=0, completion_tokens=0, teacher="gsm8k",
               sampling={}, seed=0, run_id=run_dir.name, extracted_answer=None, is_correct=True, filter_reason=None)
        for i, r in enumerate(gsm8k_rows)
    ]
    filter_dir = run_dir / "filter"
    write_parquet_atomic(samples_to_table(samples, FILTERED_SCHEMA), filter_dir / "accepted" / "00000.parquet")
    write_json_atomic({"accepted_files": ["00000.parquet"], "accepted": len(samples)}, filter_dir / "stats.json")
    write_fingerprint(filter_dir, make_fingerprint({"corpus": [r["question"] for r in gsm8k_rows]}))


@pytest.fixture(scope="session")
def served_parrot(parrot_model):
    """vLLM's OpenAI-compatible server on 127.0.0.1 serving the parrot model, once for the whole session
    (about 40 s to start on CPU); stopped at the end, passed or failed. Yields its base URL (.../v1)."""
    from tests.servers import start_vllm_server, stop_server

    process, base_url = start_vllm_server(parrot_model, timeout=240)
    try:
        yield base_url
    finally:
        stop_server(process)


# --- one run on the real engine, shared by the stages' test files (tests/test_generate.py, test_filter.py,
# test_train.py, test_evaluate.py): generated once per session; each file's tests leave it as they found it ---

LONG_QUESTION = "How many apples are there? " + "The farmer counts apples in the orchard again. " * 60


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, parrot_model, gsm8k_rows):
    """generate on the parrot model (it answers 7 to everything): questions 1-3 have gold 7, so the filter has
    rationales to accept, and questions 4-5 keep their real gold, so it has wrong ones to reject; the last one's
    prompt is over the context."""
    import yaml

    from cotdistill.config.load import load_config
    from cotdistill.stages import generate

    tmp = tmp_path_factory.mktemp("pipeline")
    rows = [{"question": r["question"], "answer": "We count.\n#### 7"} for r in gsm8k_rows[:3]] + gsm8k_rows[3:5]
    rows.append({"question": LONG_QUESTION, "answer": "They count.\n#### 7"})
    questions = tmp / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test_questions = tmp / "test.jsonl"
    test_questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[100:103]))
    config_path = tmp / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config_dict(tmp, parrot_model, questions, test_questions)))
    config = load_config(config_path)
    stats = generate.STAGE.run(config)
    return config, config_path, stats


@pytest.fixture(scope="session")
def trained(pipeline, gsm8k_rows):
    """A run whose accepted corpus is GSM8K's own worked answers (so training has real rationales to learn), and
    its student trained (3 steps, a checkpoint at step 2)."""
    from cotdistill.config.load import load_config
    from cotdistill.stages import train

    config, config_path, _ = pipeline
    config = load_config(config_path, ["run_name=tiny-train"])
    write_finished_filter(config.run_dir, gsm8k_rows[200:208])
    train.STAGE.run(config)
    return config


def trained_config_path(config) -> Path:
    return config.run_dir.parent.parent / "tiny.yaml"


@pytest.fixture(scope="session")
def kd_run(tmp_path_factory, parrot_model, gsm8k_rows):
    """generate with logprobs on the parrot model (every question has gold 7, so the filter accepts), filter: the
    corpus tests/test_kd.py trains on and tests/test_score.py scores."""
    import yaml

    from cotdistill.config.load import load_config
    from cotdistill.stages import filter as filter_stage
    from cotdistill.stages import generate

    tmp = tmp_path_factory.mktemp("kd")
    rows = [{"question": r["question"], "answer": "We count.\n#### 7"} for r in gsm8k_rows[:4]]
    questions = tmp / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = tiny_config_dict(tmp, parrot_model, questions)
    raw["generate"]["logprobs"] = 5
    raw["filter"]["near_duplicates"] = False
    raw["filter"]["drop_duplicates"] = False  # the parrot says the same thing every time
    raw["train"]["loss"] = "kd"
    raw["train"]["kd"] = {"alpha": 0.5, "temperature": 2.0}
    raw["train"]["sft"] = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 512,
                           "learning_rate": 1e-3, "save_steps": 50, "logging_steps": 1}
    path = tmp / "kd.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    stats = generate.STAGE.run(config)
    filter_stage.STAGE.run(config)
    return config, path, stats, raw
