"""Teachers: the one place that knows how text is generated. generate and evaluate call only this interface.

A backend takes a stream of requests (one per question, each asking for n samples) and yields each question as
soon as all its samples are back, in any order. It pulls the next requests while earlier ones are still
running, so the engine (or the server) is never left idle between shards; the caller journals every finished
question at once, so a crash loses only what was in flight.

    teacher = build_teacher(config.teacher, seed=config.seed)
    for done in teacher.generate(requests):        # Iterable[TeacherRequest] -> Iterator[Finished]
        ...
    teacher.close()

Backends, by `teacher.backend`: `vllm` (a local engine, teachers/vllm_local.py), `openai` (any OpenAI-compatible
server, teachers/openai_server.py), `ray` (many local engines as Ray actors, teachers/ray_pool.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol

from cotdistill.config import ModelConfig


@dataclass
class Sampling:
    """What to sample for one request; the same fields whatever the backend."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # a per-request seed: sample i is drawn with seed + i
    logprobs: int | None = None  # the top-k logprobs of every generated token (generate.logprobs), else none
    # Budget forcing: reasoning still open after this many tokens is closed, and the completion goes on to answer.
    max_reasoning_tokens: int | None = None


@dataclass
class TeacherRequest:
    key: str  # unique within one generate() call: the question id (evaluate: "<id>/greedy", "<id>/sampled")
    messages: list[dict[str, str]]  # the chat turns (what a chat server is sent)
    prompt_text: str  # the teacher's chat template applied ("" when the backend has no local tokenizer)
    prompt_token_ids: list[int] | None  # that text tokenized (what a local engine is sent)
    sampling: Sampling
    first_sample: int = 0  # the index of its first sample among the question's (later rounds go on from there)


@dataclass
class Completion:
    text: str  # the answer text (for reasoning models: without the reasoning)
    finish_reason: str  # "stop" | "length" | ...
    completion_tokens: int
    reasoning: str | None = None  # the reasoning, when split from the answer (a reasoning parser, or the server)
    reasoning_tokens: int | None = None  # of completion_tokens, the reasoning's (when split)
    budget_hit: bool | None = None  # with Sampling.max_reasoning_tokens: the reasoning was closed at the budget
    # With Sampling.logprobs = k: the generated token ids, and per token the teacher's k most likely ids and their
    # raw logprobs (before temperature), as numpy arrays of shape [completion_tokens, k] (int32, float32).
    token_ids: list[int] | None = None
    topk_ids: Any = None
    topk_logprobs: Any = None


@dataclass
class Finished:
    key: str
    completions: list[Completion]  # n of them, in sample order; empty when the request failed
    prompt_tokens: int  # as the backend counted them (the server's usage, or the prompt's token ids)
    error: str | None = None  # why it failed after all its retries: recorded and counted, never dropped
    retries: int = 0  # retried attempts behind this result (rate limits, 5xx, timeouts, dropped connections)
    missing: int = 0  # samples asked for that never came back (a server short of n, even after topping up)
    cached: bool = False  # answered from the request cache (teachers/cache.py): nothing was sent


class TeacherUnavailable(RuntimeError):
    """The teacher can never answer as configured (a refused key, an exhausted quota, its servers unreachable
    for longer than the bound): the run stops with this message; what was journaled stays, and a rerun resumes."""


class Teacher(Protocol):
    name: str  # what the Sample records name as teacher

    def tokenizer(self) -> Any | None:
        """The teacher's Hugging Face tokenizer (renders prompts, counts tokens), or None if not available."""

    def max_model_len(self) -> int | None:
        """The context length requests must fit in, when known."""

    def generate(self, requests: Iterable[TeacherRequest]) -> Iterator[Finished]:
        """Every request's result, each as soon as all its samples are done, in any order."""

    def close(self) -> None:
        """Free the engine, the actors or the connections."""


# Engine arguments that change only speed or memory, never a generated token: left out of fingerprints, so
# moving a run to a bigger GPU or another cache size does not count as new settings.
RESOURCE_ENGINE_ARGS = frozenset({
    "gpu_memory_utilization", "kv_cache_memory_bytes", "swap_space", "cpu_offload_gb", "enforce_eager",
    "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "max_num_seqs",
    "max_num_batched_tokens", "enable_prefix_caching", "enable_chunked_prefill", "disable_log_stats",
    "distributed_executor_backend", "compilation_config", "block_size",
})


def output_engine_args(engine: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in engine.items() if k not in RESOURCE_ENGINE_ARGS}


def teacher_settings(model: ModelConfig, weights: str | None = None) -> dict[str, Any]:
    """What of a model changes its answers, for fingerprints: the weights and engine; for a served model, how
    it is asked. A local engine and Ray actors running the same engine are the same teacher."""
    from cotdistill.fingerprints import model_fingerprint

    settings: dict[str, Any] = {"model": model.model, "weights": weights or model_fingerprint(model.model),
                                "engine": output_engine_args(model.engine)}
    # What reasoning models add, only when set: runs without them keep the fingerprints they had.
    for key in ("chat_template_kwargs", "reasoning_parser", "reasoning_delimiters"):
        if getattr(model, key):
            settings[key] = getattr(model, key)
    if model.backend == "openai":
        o = model.openai  # which servers answer does not change the answers: base_url is left out
        settings["served"] = {"model": o.model, "endpoint": o.endpoint, "n_per_request": o.n_per_request,
                              "extra_body": o.extra_body}
    return settings


BACKENDS = {"vllm": "cotdistill.teachers.vllm_local", "openai": "cotdistill.teachers.openai_server",
            "ray": "cotdistill.teachers.ray_pool"}


def build_teacher(model: ModelConfig, seed: int, model_path: str | None = None) -> Teacher:
    """The backend `model.backend` names, for `model` (or a trained model in `model_path`)."""
    module = importlib.import_module(BACKENDS[model.backend])
    return module.build(model, seed, model_path)


def load_tokenizer(model: ModelConfig, model_path: str | None = None) -> Any:
    """A local engine's tokenizer, without the engine: `engine.tokenizer`, else the model's own (what vLLM loads)."""
    from transformers import AutoTokenizer

    from cotdistill.models import resolve_model

    engine = model.engine
    source = engine.get("tokenizer") or model_path or resolve_model(model.model)
    return AutoTokenizer.from_pretrained(source, revision=engine.get("tokenizer_revision"),
                                         trust_remote_code=bool(engine.get("trust_remote_code", False)))


def prompt_too_long(num_prompt_tokens: int, context: int | None) -> str | None:
    """The recorded reason when a prompt leaves no room for a single generated token, else None."""
    if context is None or num_prompt_tokens < context:
        return None
    return f"prompt_too_long: {num_prompt_tokens} prompt tokens, max_model_len is {context}"


def render_prompt(tokenizer: Any, messages: list[dict[str, str]],
                  chat_template_kwargs: dict[str, Any] | None = None) -> tuple[str, list[int]]:
    """The exact text the model sees (its own chat template, with the model's chat_template_kwargs, e.g.
    enable_thinking) and its token ids, tokenized once."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **(chat_template_kwargs or {}))
    # The chat template already holds any BOS token; adding special tokens again would double it.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text, ids
