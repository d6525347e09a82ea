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


def build_tiny_llama(target: Path) -> Path:
    """Random-weight Llama, 2 layers, hidden 128, 4 heads of 32, vocabulary 512, with a trained tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
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
