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
                     "max_tokens": 16, "questions_per_shard": 2},
        "filter": {"answer_format": "number"},
        "train": {"sft": {"max_steps": 3, "per_device_train_batch_size": 2, "max_length": 512,
                          "learning_rate": 1e-3, "save_steps": 2, "logging_steps": 1}},
        "evaluate": {"data": {"path": str(test_questions or questions), "gold_format": "gsm8k"},
                     "num_samples": 3, "max_tokens": 12},
    }
