"""The teacher interface: what generate and evaluate send (TeacherRequest), what comes back (Finished), the
Teacher protocol every backend implements, and Backend, how a backend declares itself to the registry
(teachers/__init__.py).

    for done in teacher.generate(requests):        # Iterable[TeacherRequest] -> Iterator[Finished]
        ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol

if TYPE_CHECKING:
    from cotdistill.config.sections import ModelConfig


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
    # Generate max_tokens whatever the text: evaluate's speed measurement, the same work for every model.
    ignore_eos: bool = False


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
    # With Sampling.logprobs = k: the generated token ids ([completion_tokens]), and per token the teacher's k most
    # likely ids and their raw logprobs (before temperature), as numpy arrays of shape [completion_tokens, k]
    # (int32, float32); a local engine's token ids are an int32 array too (a list is taken as well).
    token_ids: Any = None
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


@dataclass(frozen=True)
class Backend:
    """A teacher backend as it declares itself (each backend module holds one, `BACKEND`; teachers/__init__.py
    lists them). config and generate ask these capabilities, never the backend's name."""

    name: str  # teacher.backend
    build: Callable[[ModelConfig, int, str | None], Teacher]  # (the model's settings, the run's seed, a model folder)
    # Its own settings: a dataclass written under its name (`openai: {base_url: ...}`); None: it has none.
    settings: type | None = None
    # vLLM runs in this process or its actors: the model is a local folder or hub id, `engine` and a
    # `reasoning_parser` apply, the tokenizer loads without the engine, and greedy sampling refuses n > 1.
    local_engine: bool = False
    logprobs: bool = False  # returns the teacher's top-k logprobs of every generated token (generate.logprobs)
    # What of its settings changes the answers, beside the model and engine: joined into the teacher's fingerprint
    # and the request cache's key (never which server answers).
    answer_settings: Callable[[ModelConfig], dict[str, Any]] = lambda model: {}
    # The tokenizer that counts its prompts without sending them (generate --dry-run): a name or folder.
    tokenizer: Callable[[ModelConfig], str] = lambda model: model.model
    # Whether one request returns all n samples of a question; else it sends n requests of one (billed prompts).
    n_per_request: Callable[[ModelConfig], bool] = lambda model: True
    # (input, output) prices per million tokens, for estimated costs; None: not billed.
    price: Callable[[ModelConfig], tuple[float, float] | None] = lambda model: None
    # Before a stage writes anything: raise TeacherUnavailable when the teacher cannot answer at all (no server).
    check: Callable[[ModelConfig], None] = lambda model: None
    # Why s1's budget forcing (max_reasoning_tokens) cannot work for this model, named by `key`; None: it can.
    budget_problem: Callable[[ModelConfig, str], str | None] = lambda model, key: (
        None if model.reasoning_parser else
        f"needs to know where the thinking ends: set {key}.reasoning_parser (vLLM's parser for the model)")


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


def load_tokenizer(model: ModelConfig, model_path: str | None = None) -> Any:
    """A local engine's tokenizer, without the engine: `engine.tokenizer`, else the model's own (what vLLM loads)."""
    from transformers import AutoTokenizer

    from cotdistill.models.resolve import resolve_model

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
