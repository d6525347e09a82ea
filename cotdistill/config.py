"""Typed run configuration: one YAML file per run, loaded into dataclasses, checked before anything starts.

    config = load_config("pipelines/demo.yaml", ["generate.num_samples=4", "train.sft.max_steps=10"])

The YAML keys are the dataclass fields. A key that is not a field is an error naming the key and the file (a
misspelt `temprature` must never be silently ignored). `engine`, `sft` and `peft` are passed through as they
are, to `vllm.LLM(...)`, `trl.SFTConfig(...)` and `peft.LoraConfig(...)`. Overrides on the command line are
dotted `key=value` pairs, parsed as YAML values.

Each field declares its own allowed values with `setting(...)` (a range, a registry of names), so a range sits
beside the field it bounds; `check_fields` applies them to the whole tree, a section's `rules()` add the checks
between its own fields, `check_references` checks what the config names outside itself (files, templates, model
folders), and `validate` keeps the rules that span sections. A mistake costs seconds, never an engine start.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

import yaml

from cotdistill.answers import ANSWER_FORMATS, GOLD_PARSERS
from cotdistill.code_answers import CODE_TEST_FORMATS
from cotdistill.paths import RunPaths
from cotdistill.stopping import STOPPING_RULES


class ConfigError(ValueError):
    """A configuration problem, with the file and key it concerns in the message."""


LABEL_MODES = ("gold", "majority", "none")  # filter.label
DIFFICULTY_WEIGHTS = ("none", "harder_more")  # filter.difficulty.weight
TEACHER_BACKENDS = ("vllm", "openai", "ray")  # teacher.backend (cotdistill/teachers/)
OPENAI_ENDPOINTS = ("chat", "completions")
EVAL_MODELS = ("teacher", "base_student", "student", "student_dpo")  # evaluate.models: the run's own models
EXTRA_MODEL_PROMPTS = ("student", "teacher")  # evaluate.extra_models.<name>.prompt
TRAIN_LOSSES = ("sft", "kd")  # train.loss
KD_INTERPOLATIONS = ("none", "taid")  # train.kd.interpolation
SCORE_CONTEXTS = ("student", "teacher")  # score.context
SELECTIONS = ("random", "shortest", "longest")  # filter.select
SANDBOX_EXECUTORS = ("local", "piston")  # sandbox.executor
# filter.pair_reasons: the reasons that make a rationale a preference pair's rejected side (a subset of the
# filter's reasons, filter/judge.py): its answer or program is wrong, or it never reached one. Duplicates, the
# question's cap and question-level reasons say nothing against the text itself.
LABEL_PAIR_REASONS = ("wrong", "tests_failed", "runtime_error", "exec_timeout", "memory_limit", "output_limit")
PAIR_REASONS = (*LABEL_PAIR_REASONS, "truncated", "unfinished_reasoning", "unparseable", "ambiguous", "degenerate",
                "no_code", "syntax_error", "overlong")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"  # a teacher's or an extra model's name: it names files and folders
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")  # in a variable's name: never written into a run's files


# --- a field and its check ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """The values a field allows. None always passes (an optional setting that is off)."""

    at_least: float | None = None
    above: float | None = None
    within: tuple[float, float] | None = None
    low_open: bool = False  # within (low, high] instead of [low, high]
    one_of: Collection[str] | None = None  # a registry of names
    off: int | None = None  # a value outside the range that turns the setting off (top_k: -1)

    def problem(self, value: Any) -> str | None:
        if isinstance(value, list):  # a list of names: each is checked
            return next((p for p in map(self.problem, value) if p), None)
        if value is None or (self.off is not None and value == self.off):
            return None
        if self.one_of is not None and value not in self.one_of:
            return f"unknown value {value!r}; known: {', '.join(sorted(self.one_of))}"
        if self.at_least is not None and value < self.at_least:
            off = f"{self.off} (off) or " if self.off is not None else ""
            return f"must be {off}at least {self.at_least}, got {value}"
        if self.above is not None and value <= self.above:
            return f"must be above {self.above}, got {value}"
        if self.within is not None:
            low, high = self.within
            if not (low < value <= high if self.low_open else low <= value <= high):
                return f"must be in {'(' if self.low_open else '['}{low}, {high}], got {value}"
        return None


def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, **check: Any) -> Any:
    """A dataclass field with its Check (at_least, above, within, low_open, one_of, off)."""
    value = {"default_factory": factory} if factory is not None else {"default": default}
    return field(metadata={"check": Check(**check)} if check else {}, **value)


# --- the sections -----------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where questions come from and how to read them."""

    path: str  # a hub dataset id, a local file (.jsonl/.json/.parquet/.csv), a directory, or a glob
    split: str = "train"
    name: str | None = None  # hub dataset configuration, e.g. "main" for openai/gsm8k
    question_field: str = "question"
    answer_field: str | None = "answer"  # null for unlabelled questions (filter.label: majority)
    choices_field: str | None = None  # list of option texts, for multiple choice
    id_field: str | None = None  # when absent, ids are a hash of the question text
    gold_format: str = setting("plain", one_of=GOLD_PARSERS)  # how to parse the gold: gsm8k | plain | choice_letter
    limit: int | None = setting(None, at_least=1)
    # Code problems (answer_format code): their tests, read once per question (code_answers.parse_code_tests).
    # functional: tests_field holds test code (HumanEval's check(candidate), MBPP's list of asserts) and
    # entry_point_field the function it tests (inferred from MBPP-style asserts when unset). stdio: tests_field
    # holds input/output pairs, as a JSON string or a structure (APPS' input_output, CodeContests' tests,
    # LiveCodeBench's test cases); a function name (APPS' fn_name, or entry_point_field) makes them call-based.
    # answer_field, when set, is the reference solution (the STaR hint). Unset: fingerprints stay as they were.
    tests_format: str | None = setting(None, one_of=CODE_TEST_FORMATS)
    tests_field: str | None = None
    entry_point_field: str | None = None

    def rules(self) -> Iterator[tuple[str, str]]:
        if (self.tests_format is None) != (self.tests_field is None):
            yield "tests_format" if self.tests_format is None else "tests_field", (
                "code problems need both data.tests_format (functional | stdio) and data.tests_field")
        if self.entry_point_field is not None and self.tests_format is None:
            yield "entry_point_field", "is read only for code problems: set data.tests_format and data.tests_field"


@dataclass
class OpenAIConfig:
    """teacher.backend: openai. Any OpenAI-compatible server: `vllm serve`, OpenAI, DeepSeek, a gateway."""

    # one server, or a list of servers of the same model: each request goes to the one with the fewest in flight,
    # and one that keeps failing is left out for a while (interchangeable: not part of any fingerprint)
    base_url: str | list[str] = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = "OPENAI_API_KEY"  # the NAME of the environment variable holding the key, never the key
    model: str | None = None  # the served model name; defaults to the model's `model`
    # chat (/v1/chat/completions, messages) | completions (/v1/completions, prompt text)
    endpoint: str = setting("chat", one_of=OPENAI_ENDPOINTS)
    max_concurrency: int = setting(16, at_least=1)  # requests in flight at once
    requests_per_minute: float | None = setting(None, above=0)  # client-side limits, for APIs that meter them
    tokens_per_minute: float | None = setting(None, above=0)
    timeout_s: float = setting(600.0, above=0)  # per request
    # on 429, 5xx, timeouts and dropped connections, with exponential backoff and jitter
    max_retries: int = setting(6, at_least=0)
    # every request failing for this long (servers unreachable, each request refused) stops the run
    failing_timeout_s: float = setting(300.0, above=0)
    n_per_request: bool = True  # one request with n=N (vLLM and OpenAI support it), else N requests of n=1
    tokenizer: str | None = None  # a Hugging Face tokenizer for counting prompt tokens; defaults to `model`
    price_per_million_input: float | None = None  # for the estimated cost in stats.json and --dry-run
    price_per_million_output: float | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)  # passed as is (e.g. top_k for vLLM servers)

    def servers(self) -> list[str]:
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)


@dataclass
class RayConfig:
    """teacher.backend: ray. `replicas` actors, each holding one vLLM engine with the model's `engine` args."""

    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:10001" for a running cluster
    replicas: int = setting(2, at_least=1)
    num_gpus: float = setting(0.0, at_least=0)  # per replica: usually engine.tensor_parallel_size (0 on CPU)
    num_cpus: float = setting(1.0, at_least=0)  # per replica
    # a chunk whose actor died is handed to another, this many times at most; as many replacements are started
    max_actor_restarts: int = setting(3, at_least=0)
    chunk_size: int = setting(32, at_least=1)  # requests sent to an actor at once
    chunks_per_actor: int = setting(4, at_least=1)  # chunks in flight on each actor: its engine never runs dry
    # an actor whose chunk runs this long is killed and the chunk re-sent (null: no limit)
    chunk_timeout_s: float | None = setting(3600.0, above=0)
    # an actor (first start or replacement) not up by then is given up; with no actor up for this long, the run stops
    start_timeout_s: float = setting(1800.0, above=0)
    # passed to Ray as is for every actor (working_dir, pip, env_vars, ...), for nodes without the package;
    # its env_vars join those the actors need. Written to the run's config.yaml: never put secrets here.
    runtime_env: dict[str, Any] | None = None

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.runtime_env is None:
            return
        env_vars = self.runtime_env.get("env_vars") or {}
        if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
            yield "runtime_env.env_vars", "must map variable names to strings"
            return
        for name in env_vars:
            if any(word in name.upper() for word in SECRET_WORDS):
                yield f"runtime_env.env_vars.{name}", (
                    "looks like a secret, and runtime_env is written to the run's config.yaml: set it in the "
                    "environment of `ray start` on every node instead")


@dataclass
class PruneConfig:
    """student.prune: the student is `student.model` cut smaller (cotdistill/prune.py; Minitron, ShortGPT).
    Importance is measured on the teacher's rationales; every layer keeps the same sizes (vLLM needs them)."""

    # decoder blocks to keep (depth): the lowest Block Influence ones go
    num_layers: int | None = setting(None, at_least=1)
    # MLP channels to keep in every block (width), by activation size
    intermediate_size: int | None = setting(None, at_least=1)
    # Attention heads to keep in every block, whole key/value groups at a time (the query heads per KV head stay
    # the same), so it must be a multiple of that ratio.
    num_attention_heads: int | None = setting(None, at_least=1)
    # Instead of num_layers: drop the least important blocks one at a time until the total parameter count
    # (after any width and head pruning) is at or below this.
    parameter_budget: int | None = setting(None, at_least=1)
    # teacher rationales (finish_reason stop first) run to measure importance
    calibration_samples: int = setting(64, at_least=1)
    calibration_max_tokens: int = setting(512, at_least=1)  # each calibration text is cut to this many tokens

    def rules(self) -> Iterator[tuple[str, str]]:
        targets = (self.num_layers, self.intermediate_size, self.num_attention_heads, self.parameter_budget)
        if all(t is None for t in targets):
            yield "", ("prunes nothing: set num_layers, intermediate_size, num_attention_heads or "
                       "parameter_budget")
        if self.parameter_budget is not None and self.num_layers is not None:
            yield "parameter_budget", ("chooses the number of layers itself: set it or student.prune.num_layers, "
                                       "not both")


@dataclass
class ModelConfig:
    """A model served by vLLM (the teacher; evaluate's models), locally, behind a server, or as Ray actors."""

    model: str  # hub id, local folder, or a model cotdistill names (models.named_model, e.g. tiny-thinker)
    engine: dict[str, Any] = field(default_factory=dict)  # vllm.LLM keyword arguments, passed through
    # vllm (a local engine) | openai (a served model) | ray (many engines as Ray actors)
    backend: str = setting("vllm", one_of=TEACHER_BACKENDS)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # Passed to the model's chat template wherever it is rendered (generate, evaluate, score, the filter's token
    # counts, train), and to a served model in the request body: e.g. {enable_thinking: false} for Qwen3, or
    # {reasoning_effort: high}.
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # A reasoning model on a local engine (backend vllm or ray): one of vLLM's reasoning parsers, by the name
    # `vllm serve --reasoning-parser` takes (deepseek_r1, qwen3, ...). It splits each completion into its reasoning
    # and its answer as vLLM's server does, so every backend's shards look the same. A served model is split by its
    # server.
    reasoning_parser: str | None = None
    # [opening, closing] of the reasoning block in the text, for the answer formats (which read only after it) and
    # for the openai backend's completions endpoint (which splits and budget-forces by them); default
    # ["<think>", "</think>"].
    reasoning_delimiters: list[str] | None = None

    def delimiters(self) -> tuple[str, str]:
        from cotdistill.answers import THINK_DELIMITERS

        return tuple(self.reasoning_delimiters) if self.reasoning_delimiters else THINK_DELIMITERS

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.backend == "openai":
            servers = self.openai.servers()
            if not servers or len(set(servers)) != len(servers):
                yield "openai.base_url", f"must name one server, or several different ones; got {servers}"
            for url in servers:
                if not url.startswith(("http://", "https://")):
                    yield "openai.base_url", f"must start with http:// or https://, got {url!r}"
        if self.reasoning_delimiters is not None and (len(self.reasoning_delimiters) != 2
                                                      or not all(d.strip() for d in self.reasoning_delimiters)):
            yield "reasoning_delimiters", ("must be [opening, closing], two non-empty strings; got "
                                           f"{self.reasoning_delimiters}")
        if self.reasoning_parser is not None and self.backend == "openai":
            yield "reasoning_parser", ("splits a local engine's completions; a served model's reasoning is split by "
                                       "its server (vllm serve --reasoning-parser), or by reasoning_delimiters with "
                                       "the completions endpoint")


# A teachers: entry's keys that replace generate's for that teacher alone (unset: generate's).
TEACHER_GENERATE_KEYS = ("prompt", "examples", "num_samples", "temperature", "top_p", "max_tokens",
                         "max_reasoning_tokens")


@dataclass
class TeacherEntryConfig(ModelConfig):
    """teachers: one of several teachers of a run: a model as above (backend, engine, reasoning settings), named,
    with optionally its own prompt, sampling and number of samples; each unset key is generate's."""

    name: str = ""  # the folder generate/teachers/<name>/, and the rows' teacher_name
    prompt: str | None = None
    examples: str | None = None
    num_samples: int | None = setting(None, at_least=1)
    temperature: float | None = setting(None, at_least=0.0)
    top_p: float | None = setting(None, within=(0.0, 1.0), low_open=True)
    max_tokens: int | None = setting(None, at_least=1)
    max_reasoning_tokens: int | None = setting(None, at_least=1)

    def rules(self) -> Iterator[tuple[str, str]]:
        yield from super().rules()
        if not re.fullmatch(NAME_PATTERN, self.name):
            yield "name", (f"{self.name!r}: every teacher needs a name of letters, digits, '_', '.' and '-' (it "
                           "names its folder and its rows)")


@dataclass
class ExtraModelConfig(ModelConfig):
    """evaluate.extra_models: any model scored beside the run's own (a quantized teacher, a public reference
    student, last month's student), with the student's prompt unless `prompt: teacher`."""

    prompt: str = setting("student", one_of=EXTRA_MODEL_PROMPTS)  # train.prompt, or the teacher's generate prompt


@dataclass
class StudentConfig(ModelConfig):
    """The student: a model as above, which train fine-tunes, and which may first be pruned."""

    # the student is `model` pruned as this says (written to <run>/prune/model); null: not pruned
    prune: PruneConfig | None = None


@dataclass
class StoppingRuleConfig:
    """A self-consistency stopping rule (cotdistill/stopping.py), for generate.adaptive and evaluate.adaptive."""

    # a name from cotdistill.stopping.STOPPING_RULES: beta (Adaptive-Consistency's Beta criterion: P(leader's
    # share > 1/2) under Beta(v1 + 1, v2 + 1) reaches `confidence`) | window (ESC: the last `window` answers agree)
    rule: str = setting("beta", one_of=STOPPING_RULES)
    confidence: float = setting(0.95, within=(0.5, 1.0), low_open=True)
    window: int = setting(4, at_least=1)


@dataclass
class AdaptiveGenerateConfig(StoppingRuleConfig):
    """generate.adaptive: sample in rounds of `round_size` per still-open question, up to generate.num_samples (N)
    in all, instead of N at once. A question closes when it has `target_correct` rationales that reach the gold
    (filter.label gold; checked as the filter checks them) or, without gold (filter.label majority), when the
    stopping rule says its majority answer is settled; else at N."""

    round_size: int = setting(4, at_least=1)  # b: samples asked per open question per round
    target_correct: int = setting(2, at_least=1)  # label gold: close once this many rationales reach the gold answer


@dataclass
class RequestCacheConfig:
    """generate.cache: the teacher's answers kept across runs (cotdistill/teachers/cache.py). A request's key is
    everything that determines its answer, so a run with other settings only misses; never part of a fingerprint."""

    enabled: bool = False
    # default ~/.cache/cotdistill/requests ($COTDISTILL_CACHE); for a cluster, a folder on a shared filesystem
    dir: str | None = None
    max_gb: float = setting(20.0, above=0)  # past this, the least recently used entries are removed
    # Also keep requests without a per-request seed (generate.seed_per_request false): a later run then reuses
    # samples it would otherwise have drawn afresh.
    unseeded: bool = False


@dataclass
class GenerateConfig:
    prompt: str = "math_zero_shot_cot.jinja"  # a template in prompts/, or a path
    examples: str | None = None  # JSONL of few-shot examples, given to the template as `examples`
    num_samples: int = setting(30, at_least=1)  # SCoTD's N
    temperature: float = setting(1.0, at_least=0.0)
    top_p: float = setting(1.0, within=(0.0, 1.0), low_open=True)
    top_k: int = setting(-1, at_least=1, off=-1)
    max_tokens: int = setting(512, at_least=1)
    stop: list[str] = field(default_factory=list)
    # memory is bounded by one shard of questions and their rationales
    questions_per_shard: int = setting(256, at_least=1)
    # Per-request seeds make each question's samples independent of shard order and batch (on CPU this needs
    # chunked prefill off, which build_llm sets there by default).
    seed_per_request: bool = False
    # Store the teacher's top-k logprobs at every generated token (k, e.g. 20; null: off), for train.loss: kd.
    # A local engine only (backend vllm or ray); for other text, the score step computes the same columns.
    logprobs: int | None = setting(None, at_least=1)
    # Adaptive sampling (AdaptiveGenerateConfig above); null: off, every question gets N samples at once (SCoTD).
    adaptive: AdaptiveGenerateConfig | None = None
    # Budget forcing (s1): a completion still thinking after this many tokens has its reasoning closed and goes on
    # to answer, in the same text; rows record whether the budget was hit. Needs to know where the thinking ends:
    # teacher.reasoning_parser on a local engine, or reasoning_delimiters with the openai completions endpoint.
    max_reasoning_tokens: int | None = setting(None, at_least=1)
    # STaR rationalization (needs filter.label gold): a question left with no rationale reaching the gold is
    # asked once more, for `rationalize_samples` samples, with `rationalize_prompt` (which receives question,
    # choices and hint = the gold answer). Its rationales are stored with rationalized = true and the question's
    # ordinary prompt; the filter drops those that quote the hint (quotes_hint).
    rationalize: bool = False
    rationalize_prompt: str = "math_rationalize.jinja"
    rationalize_samples: int = setting(4, at_least=1)
    cache: RequestCacheConfig = field(default_factory=RequestCacheConfig)

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.cache.enabled and not (self.seed_per_request or self.cache.unseeded):
            yield "cache", ("keeps seeded requests only, and generate.seed_per_request is false: set it true, or "
                            "set generate.cache.unseeded true to reuse unseeded samples")


@dataclass
class DifficultyConfig:
    """filter.difficulty: select questions by their pass rate, the share of the question's rationales that reach
    its label (finished, not truncated, with the label's answer, over all its rationales; gold or majority
    label). Needs a label: an error with label none."""

    # Keep questions whose pass rate lies in [min_pass_rate, max_pass_rate]; every rationale of a question
    # above the band is rejected as too_easy, below it as too_hard (whatever else it fails).
    min_pass_rate: float = setting(0.0, within=(0.0, 1.0))
    max_pass_rate: float = setting(1.0, within=(0.0, 1.0))
    # none: every question keeps up to filter.max_per_question. harder_more (needs filter.max_per_question =
    # M): a question with pass rate p keeps up to max(min_per_question, ceil(M * (1 - p))) of its survivors,
    # by the same seeded uniform draw; the others are over_max_per_question. Hard questions keep up to M, easy
    # ones few: p = 0.9 with M = 8 keeps 1, p = 0.25 keeps 6.
    weight: str = setting("none", one_of=DIFFICULTY_WEIGHTS)

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.min_pass_rate > self.max_pass_rate:
            yield "min_pass_rate", (f"{self.min_pass_rate} is above filter.difficulty.max_pass_rate "
                                    f"({self.max_pass_rate})")


@dataclass
class FilterConfig:
    answer_format: str = setting("number", one_of=ANSWER_FORMATS)  # a name from cotdistill.answers.ANSWER_FORMATS
    # gold: keep rationales that reach the gold answer. majority: no gold needed; the teacher's own majority
    # answer over a question's rationales is the label, if it wins at least majority_min_share of the votes.
    # none: answers are not checked (OpenThoughts: answer filtering did not help at scale); truncated, empty,
    # degenerate, too_long, contaminated and duplicate rationales are still dropped; is_correct is null.
    label: str = setting("gold", one_of=LABEL_MODES)
    majority_min_share: float = setting(0.5, within=(0.0, 1.0), low_open=True)
    drop_duplicates: bool = True  # exact, after whitespace normalisation
    near_duplicates: bool = True  # MinHash over word n-grams, within a question
    # estimated Jaccard similarity at or above which two are near duplicates
    near_duplicate_threshold: float = setting(0.8, within=(0.0, 1.0), low_open=True)
    near_duplicate_ngram: int = setting(3, at_least=1)
    minhash_num_perm: int = setting(64, at_least=1)
    # degenerate: share of repeated word n-grams above max_repeated_ngram_share
    repetition_ngram: int = setting(4, at_least=1)
    max_repeated_ngram_share: float = setting(0.5, within=(0.0, 1.0))
    # Longer than the student can train on: tokens of the student's chat-formatted prompt + rationale, counted
    # with its tokenizer, over train.sft.max_length (or this value). Off when neither is set.
    max_student_tokens: int | None = setting(None, at_least=1)
    decontaminate: list[DataConfig] = field(default_factory=list)  # evaluation sets; only their questions are read
    decontamination_ngram: int = setting(13, at_least=1)
    max_per_question: int | None = setting(None, at_least=1)  # SCoTD-style cap, drawn uniformly with the run's seed
    min_per_question: int = setting(1, at_least=0)  # a question left with fewer is dropped whole
    num_workers: int = setting(2, at_least=1)  # worker processes, one shard each at a time
    difficulty: DifficultyConfig | None = None  # select and weight questions by pass rate (above); null: off
    # Which survivors a question keeps when it has more than max_per_question: a seeded uniform draw (random,
    # SCoTD's balance), or by length in tokens of the student's text (reasoning and answer as train joins them):
    # shortest or longest first.
    select: str = setting("random", one_of=SELECTIONS)
    # Drop a rationale longer than this many times the median length (student tokens) of its question's rationales
    # that reach the label, as overlong: overthinking. Needs a label. null: off.
    max_length_ratio: float | None = setting(None, at_least=1.0)
    # Preference pairs for DPO (filter/pairs/, TRL's prompt/chosen/rejected): per question, up to
    # pairs_per_question pairs drawn with the run's seed, chosen an accepted rationale, rejected one of the same
    # question rejected for one of pair_reasons; the prompt is the student's (train.prompt).
    # With several teachers: max_per_question applies to each teacher's rationales of a question (true), or to all
    # of them together (false).
    per_teacher: bool = False
    preference_pairs: bool = False
    pair_reasons: list[str] = setting(factory=lambda: ["wrong"], one_of=PAIR_REASONS)
    pairs_per_question: int = setting(1, at_least=1)

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.preference_pairs and not self.pair_reasons:
            yield "pair_reasons", "is empty: name the reasons a rejected rationale may have, e.g. [wrong]"
        if self.preference_pairs and self.label == "none" and set(self.pair_reasons) <= set(LABEL_PAIR_REASONS):
            yield "pair_reasons", (f"{self.pair_reasons} are verdicts of a label, and filter.label none checks no "
                                   "answers: no rationale would ever be rejected so; use label gold or majority")
        if self.preference_pairs and "overlong" in self.pair_reasons and self.max_length_ratio is None:
            yield "pair_reasons", "overlong is given only with filter.max_length_ratio, which is not set"
        if self.max_per_question is not None and self.max_per_question < self.min_per_question:
            yield "max_per_question", (f"{self.max_per_question} is below filter.min_per_question "
                                       f"({self.min_per_question})")
        if self.difficulty is not None and self.label == "none":
            yield "difficulty", ("needs a pass rate, and filter.label none checks no answers; use label gold or "
                                 "majority, or remove filter.difficulty")
        if self.difficulty is not None and self.difficulty.weight != "none" and self.max_per_question is None:
            yield "difficulty.weight", f"{self.difficulty.weight} shares out filter.max_per_question, which is not set"
        if self.max_length_ratio is not None and self.label == "none":
            yield "max_length_ratio", ("compares a rationale with its question's rationales that reach the label, and "
                                       "filter.label none checks no answers; use label gold or majority")


@dataclass
class KDConfig:
    """train.kd: the distillation loss when train.loss is kd (cotdistill/losses.py)."""

    # weight of CE on the teacher's sampled tokens; 1 - alpha goes to the KL term
    alpha: float = setting(0.5, within=(0.0, 1.0))
    temperature: float = setting(1.0, above=0)  # T: both distributions softened by T; the KL term is scaled by T^2
    # none | taid: the target moves from the student's own to the teacher's
    interpolation: str = setting("none", one_of=KD_INTERPOLATIONS)
    taid_start: float = setting(0.1, within=(0.0, 1.0))  # TAID's interpolation weight at the first step ...
    taid_end: float = setting(1.0, within=(0.0, 1.0))  # ... and at the last (linear in the step)
    # With several teachers: the one whose logprobs the student learns (the score step's model); default the first.
    teacher: str | None = None


@dataclass
class ScoreConfig:
    """score: the teacher scores the accepted rationales in one prefill pass (prompt_logprobs), writing the
    same top-k columns generate.logprobs writes, for text that came without them (an API teacher's) or to
    compute them after the student's prompt."""

    logprobs: int = setting(20, at_least=1)  # k
    # student: after the student's prompt (train.prompt, in the teacher's chat template): the distribution the
    # student is trained to match, in the context it sees. teacher: after the teacher's own prompt (prompt_text),
    # as generate.logprobs captures it.
    context: str = setting("student", one_of=SCORE_CONTEXTS)
    model: str | None = None  # a local copy of the teacher (defaults to teacher.model; needed for a served one)
    batch_size: int = setting(64, at_least=1)  # rationales sent to the engine at once


@dataclass
class TrainConfig:
    prompt: str = "student_question.jinja"  # the student's prompt: the bare question, not the teacher's
    sft: dict[str, Any] = field(default_factory=dict)  # trl.SFTConfig fields, passed through
    # How a reasoning teacher's reasoning (kept apart from its answer by the server) and answer are joined into
    # the text the student learns; rationales without separate reasoning are used as they are.
    reasoning_format: str = "<think>\n{reasoning}\n</think>\n\n{answer}"
    # sft: the teacher's text (cross-entropy on the completion). kd: α·CE + (1−α)·T²·KL to the teacher's stored
    # top-k logprobs (generate.logprobs, or the score step), settings in `kd`; the student must share the
    # teacher's vocabulary (checked before training starts).
    loss: str = setting("sft", one_of=TRAIN_LOSSES)
    kd: KDConfig = field(default_factory=lambda: KDConfig())
    # LoRA: peft.LoraConfig fields, passed through as is (e.g. {r: 16, lora_alpha: 32, target_modules:
    # all-linear}); null: full fine-tuning. merge_adapter: true saves the merged model, false the adapter alone
    # (evaluate merges it into the base model before serving it).
    peft: dict[str, Any] | None = None
    merge_adapter: bool = True

    def rules(self) -> Iterator[tuple[str, str]]:
        try:
            self.reasoning_format.format(reasoning="", answer="")
        except (KeyError, IndexError, ValueError) as e:
            yield "reasoning_format", f"may use only {{reasoning}} and {{answer}}: {e!r}"
        if not isinstance(self.sft.get("max_length", 0), (int, type(None))):
            yield "sft.max_length", f"must be an integer or null, got {self.sft['max_length']!r}"


@dataclass
class AdaptiveEvalConfig(StoppingRuleConfig):
    """evaluate.adaptive: adaptive self-consistency, reported beside the fixed-K maj@K of the same samples. Per
    question, the K samples already drawn are walked in order, `round_size` at a time, until the stopping rule
    says the vote is settled (or all K are used); that vote is the adaptive answer. The samples are i.i.d., so
    this is what sampling round by round would have given, and one pass of K serves both. ESC as published
    uses round_size = window."""

    round_size: int = setting(1, at_least=1)  # samples per round; the rule is asked after each round


@dataclass
class EvaluateConfig:
    data: DataConfig | None = None  # the test questions
    # the run's own (EVAL_MODELS), or with teachers: any teacher by its name (`teacher` is the first)
    models: list[str] = field(default_factory=lambda: ["teacher", "base_student", "student"])
    # K: one request of K samples per question gives maj@k and pass@k for every k <= K
    num_samples: int = setting(16, at_least=1)
    temperature: float = setting(0.7, at_least=0.0)
    top_p: float = setting(1.0, within=(0.0, 1.0), low_open=True)
    max_tokens: int = setting(512, at_least=1)
    greedy: bool = True  # also one greedy (temperature 0) completion per question
    answer_format: str | None = setting(None, one_of=ANSWER_FORMATS)  # defaults to filter.answer_format
    # Stored generations scored without running a model: a name -> a folder of Sample shards, e.g.
    # {teacher_test: runs/teacher-on-test/generate/samples}.
    stored: dict[str, str] = field(default_factory=dict)
    # Any other model scored exactly like the run's own, each under its name, with its own key (adding one scores
    # only it): a name -> model settings (model, engine, backend, chat_template_kwargs, ..., and prompt: student
    # | teacher), e.g. {teacher_int8: {model: org/teacher-W8A8, prompt: teacher}}.
    extra_models: dict[str, ExtraModelConfig] = field(default_factory=dict)
    # maj@k: exact when there are at most this many k-subsets, else this many draws
    maj_draws: int = setting(1000, at_least=1)
    bootstrap_resamples: int = setting(1000, at_least=1)
    max_reasoning_tokens: int | None = setting(None, at_least=1)  # budget forcing, as generate.max_reasoning_tokens
    adaptive: AdaptiveEvalConfig | None = None  # adaptive self-consistency beside maj@K (above); null: off

    def rules(self) -> Iterator[tuple[str, str]]:
        clash = sorted(set(self.stored) & set(self.models))
        if clash:
            yield "stored", f"{clash[0]!r} is also in evaluate.models; name it differently"
        for name in self.extra_models:
            if name in EVAL_MODELS or name in self.stored:
                yield f"extra_models.{name}", "is the name of a run's model or of a stored set; name it differently"
            elif not re.fullmatch(NAME_PATTERN, name):
                yield f"extra_models.{name}", "names files in evaluate/: letters, digits, '_', '.' and '-' only"


@dataclass
class SandboxConfig:
    """Where and how model-written programs run (answer_format code; cotdistill/sandbox.py)."""

    # local: this machine's sandbox (namespaces, limits; needs CAP_SYS_ADMIN). piston: a remote service speaking
    # Piston's API at `url` (no program runs here).
    executor: str = setting("local", one_of=SANDBOX_EXECUTORS)
    url: str | None = None
    workers: int = setting(2, at_least=1)  # programs run at once, per filter worker; memory: workers x memory_mb
    timeout_s: float = setting(10.0, above=0)  # wall clock per run (a functional problem's tests; one stdin)
    cpu_s: int = setting(10, at_least=1)
    memory_mb: int = setting(1024, at_least=32)  # address space per program
    # Run without namespaces where the OS allows none (no network or filesystem isolation): only on purpose.
    allow_unisolated: bool = False

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.executor == "piston" and not self.url:
            yield "url", "the piston executor needs the service's url (http://host:2000)"

    def limits(self) -> Any:
        """The sandbox's Limits (part of the code verdicts' fingerprints: a longer timeout can pass more)."""
        from cotdistill.sandbox import Limits

        return Limits(wall_s=self.timeout_s, cpu_s=self.cpu_s, memory_mb=self.memory_mb)


@dataclass(kw_only=True)
class RunConfig:
    run_name: str
    data: DataConfig
    # The teacher; or `teachers`, a list of several (each with a name), whose rows generate tags by teacher_name.
    # Where one teacher is meant (evaluate's `teacher`, score.model's default, prune's calibration rationales),
    # it is the first of the list: after loading, `teacher` is that one.
    teacher: ModelConfig | None = None
    teachers: list[TeacherEntryConfig] = field(default_factory=list)
    student: StudentConfig
    output_dir: str = "runs"
    seed: int = 0
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig | None = None  # null: no score step (train.loss kd then reads generate.logprobs' columns)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)  # for answer_format code
    # The dpo stage: TRL's DPOTrainer on filter/pairs/ from the SFT student (train/model/); trl.DPOConfig fields,
    # passed through as they are (e.g. {beta: 0.1, max_steps: 100, learning_rate: 5.0e-7}). null: no dpo stage.
    dpo: dict[str, Any] | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir, self.teacher_name)

    @property
    def teacher_name(self) -> str | None:
        """Set on the run as one teacher of `teachers` sees it (for_teacher); None otherwise."""
        return getattr(self, "_teacher_name", None)

    def for_teacher(self, name: str) -> RunConfig:
        """The run as the teacher `name` of `teachers` alone sees it: that teacher, generate's settings with its
        own in their place, and generate's folder generate/teachers/<name>/. generate runs each teacher so, with
        the single-teacher code, fingerprint, journals and resume."""
        entry = next(t for t in self.teachers if t.name == name)
        own = {k: getattr(entry, k) for k in TEACHER_GENERATE_KEYS if getattr(entry, k) is not None}
        derived = dataclasses.replace(self, teacher=entry, teachers=[],
                                      generate=dataclasses.replace(self.generate, **own))
        derived._teacher_name = name
        return derived

    def kd_teacher(self) -> ModelConfig:
        """The teacher whose logprobs a KD student learns: train.kd.teacher, else the first (or only) one."""
        named = self.train.kd.teacher
        return next(t for t in self.teachers if t.name == named) if named else self.teacher

    def teacher_runs(self) -> list[RunConfig]:
        """One run per teacher: for_teacher of each of `teachers`, or this run itself for a single teacher."""
        return [run for _, run in self.keyed_teacher_runs()]

    def keyed_teacher_runs(self) -> list[tuple[str, RunConfig]]:
        """teacher_runs, each with the key its settings are written under: "teacher", or "teachers[i]"."""
        if not self.teachers:
            return [("teacher", self)]
        return [(f"teachers[{i}]", self.for_teacher(t.name)) for i, t in enumerate(self.teachers)]

    def student_base(self) -> str:
        """What the student trains from (and base_student is): the pruned model with student.prune, else
        student.model (an embedded model converted once to a folder)."""
        from cotdistill.models import resolve_model

        if self.student.prune is not None:
            return str(self.paths.pruned_model)
        return resolve_model(self.student.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- loading --------------------------------------------------------------------------------------------------


def _check_type(value: Any, hint: Any, key: str, source: str) -> Any:
    """Build `hint` from a YAML value, or raise ConfigError naming the key and the file."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{source}: {key}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, source, prefix=key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        (item_hint,) = typing.get_args(hint)
        return [_check_type(v, item_hint, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        item_hint = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        if dataclasses.is_dataclass(item_hint):  # named sections (evaluate.extra_models)
            return {name: _check_type(v, item_hint, f"{key}.{name}", source) for name, v in value.items()}
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{source}: {key} must be {hint.__name__}, got {value!r}")
        return value
    return value


def _from_dict(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' (valid keys here: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_type(data[name], hints[name], prefix + name, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{prefix}{name}'")
    return cls(**kwargs)


def apply_override(data: dict[str, Any], override: str, source: str) -> None:
    """Set `a.b.c=value` (value parsed as YAML) into the raw config mapping."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    dotted, raw_value = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {dotted!r}: '{key}' is not a mapping")
    node[keys[-1]] = yaml.safe_load(raw_value)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a pipeline YAML, apply dotted overrides, and check every key against the dataclasses."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    for override in overrides:
        apply_override(data, override, f"{path} (override {override!r})")
    config = _from_dict(RunConfig, data, str(path))
    if (config.teacher is None) == (not config.teachers):
        raise ConfigError(f"{path}: " + ("set `teacher` or `teachers`, not both" if config.teachers else
                                         "missing required key 'teacher' (or 'teachers', a list of named teachers)"))
    if config.teachers:
        config.teacher = config.teachers[0]  # the teacher meant where one is
    validate(config, str(path))
    return config


# --- checking ---------------------------------------------------------------------------------------------------


def check_fields(section: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(key, problem) for every field whose value its Check refuses, and every rule of a section, in the order
    the fields are declared, through nested sections and lists of them."""
    for f in dataclasses.fields(section):
        if f.name == "teacher" and getattr(section, "teachers", None):
            continue  # the first of `teachers`, checked there under its own key
        value, key = getattr(section, f.name), prefix + f.name
        check = f.metadata.get("check")
        problem = check.problem(value) if check is not None else None
        if problem:
            yield key, problem
        if dataclasses.is_dataclass(value):
            yield from check_fields(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from check_fields(item, f"{key}[{i}].")
        elif isinstance(value, dict):
            for name, item in value.items():
                if dataclasses.is_dataclass(item):
                    yield from check_fields(item, f"{key}.{name}.")
    if hasattr(section, "rules"):
        for key, problem in section.rules():
            yield (prefix + key).rstrip("."), problem


def check_references(config: RunConfig) -> Iterator[tuple[str, str]]:
    """(key, problem) for what the config names outside itself: data files, local model folders, templates (which
    must exist and compile), few-shot files, stored shards, LoraConfig fields."""
    from cotdistill.models import named_model
    from cotdistill.paths import local_files, looks_local
    from cotdistill.prompts import PromptError, PromptTemplate

    data = [("data", config.data), ("evaluate.data", config.evaluate.data),
            *((f"filter.decontaminate[{i}]", d) for i, d in enumerate(config.filter.decontaminate))]
    for key, d in data:
        if d is not None and looks_local(d.path) and not local_files(d.path):
            yield f"{key}.path", f"no such file or folder: {d.path}"
    teachers = config.keyed_teacher_runs()
    models = [*((key, run.teacher) for key, run in teachers), ("student", config.student),
              *((f"evaluate.extra_models.{name}", m) for name, m in config.evaluate.extra_models.items())]
    for key, m in models:
        name = m.model  # a served model's `model` is the server's name for it, not a local path
        if m.backend != "openai" and not named_model(name) and (name.startswith(("/", ".", "~"))
                                                                     or name.count("/") > 1):
            if not Path(name).expanduser().exists():  # else it would be tried as a hub id, with a puzzling error
                yield f"{key}.model", f"no such local model folder: {name}"
    parsers = [(key, m.reasoning_parser) for key, m in models if m.reasoning_parser is not None]
    if parsers:  # vLLM's own registry, imported only when a parser is named (seconds)
        from vllm.reasoning import ReasoningParserManager

        known = ReasoningParserManager.list_registered()
        for key, name in parsers:
            if name not in known:
                yield f"{key}.reasoning_parser", f"unknown value {name!r}; vLLM knows: {', '.join(known)}"
    if config.score is not None and config.score.model is not None and looks_local(config.score.model) \
            and not Path(config.score.model).expanduser().exists():
        yield "score.model", f"no such local model folder: {config.score.model}"

    gen = config.generate
    templates = [("generate.prompt", gen.prompt, gen.examples), ("train.prompt", config.train.prompt, None)]
    templates += [(f"{key}.prompt", run.generate.prompt, run.generate.examples)
                  for key, run in teachers if run.teacher_name and (run.teacher.prompt or run.teacher.examples)]
    if gen.rationalize:
        templates.append(("generate.rationalize_prompt", gen.rationalize_prompt, gen.examples))
    for key, name, examples in templates:
        try:
            template = PromptTemplate(name, examples)
            if key == "generate.rationalize_prompt":
                shown = template.render(question="What is 2 + 3?", choices=None, hint="5 (hint 7f3a)")
                if not any("hint 7f3a" in m["content"] for m in shown):
                    yield key, "never shows `hint` (the gold answer): that would ask the question again without it"
        except PromptError as e:
            yield (key.replace(".prompt", ".examples") if key.startswith("teachers") else "generate.examples") \
                if examples and str(e).startswith(str(examples)) else key, str(e)
    if any(uses_code(config)) and config.sandbox.executor == "local" and not config.sandbox.allow_unisolated:
        from cotdistill.sandbox import isolation_problem

        problem = isolation_problem()  # one program run in the sandbox (a few tens of ms), only for code
        if problem:
            yield "sandbox", (f"model-written programs cannot be isolated here ({problem}); run where namespaces "
                              "are allowed (root or CAP_SYS_ADMIN), use sandbox.executor: piston, or set "
                              "sandbox.allow_unisolated: true to run them with resource limits only (no network or "
                              "filesystem isolation)")
    for name, path in config.evaluate.stored.items():
        if not Path(path).is_dir():
            yield f"evaluate.stored.{name}", f"no such folder of Sample shards: {path}"
    if config.train.peft is not None:
        try:
            from peft import LoraConfig
        except ImportError:
            yield "train.peft", "needs the peft package (pip install peft)"
            return
        known = {f.name for f in dataclasses.fields(LoraConfig)}
        for key in sorted(set(config.train.peft) - known):
            yield f"train.peft.{key}", "not a peft.LoraConfig field"


def cross_section_rules(config: RunConfig) -> Iterator[tuple[str, str]]:
    """(key, problem) for the rules that tie one section to another."""
    gen, flt, tr, sc = config.generate, config.filter, config.train, config.score
    yield from teachers_rules(config)
    known = (*EVAL_MODELS, *(t.name for t in config.teachers))
    for name in config.evaluate.models:
        if name not in known:
            yield "evaluate.models", f"unknown value {name!r}; known: {', '.join(sorted(known))}"
    if gen.logprobs is not None and config.teacher.backend == "openai":
        yield "generate.logprobs", ("needs a local engine (teacher.backend vllm or ray); for a served teacher's "
                                    "rationales, set score: to have a local copy of the teacher score them")
    if gen.adaptive is not None and flt.label == "none":
        yield "generate.adaptive", ("closes a question on rationales that reach its label, and filter.label none "
                                    "checks no answers; use label gold (target_correct) or majority (the stopping rule)")
    if gen.adaptive is not None and flt.label == "gold" and gen.adaptive.target_correct > gen.num_samples:
        yield "generate.adaptive.target_correct", (f"{gen.adaptive.target_correct} is above generate.num_samples "
                                                   f"({gen.num_samples}): no question could ever close by it")
    if gen.rationalize and flt.label != "gold":
        yield "generate.rationalize", (f"gives the gold answer as a hint, and filter.label is {flt.label}: "
                                       "rationalization needs gold labels (label gold)")
    if gen.rationalize and config.data.answer_field is None:
        yield "generate.rationalize", "gives the gold answer as a hint, and data.answer_field is null"
    if gen.rationalize and tr.loss == "kd" and sc is None:
        yield "generate.rationalize", ("rationalized rationales carry no teacher logprobs (the teacher's "
                                       "distribution after the hint prompt would pass the hint on to the student); "
                                       "with train.loss kd, add a score: section so the teacher scores every "
                                       "accepted rationale after the student's prompt")
    if tr.loss == "kd" and sc is None and gen.logprobs is None:
        yield "train.loss", ("kd needs the teacher's logprobs: set generate.logprobs (a local teacher) or a score: "
                             "section (the teacher scores the accepted rationales)")
    if sc is not None and sc.model is None and config.teacher.backend == "openai":
        yield "score.model", "a served teacher cannot score text here: name a local copy of it"
    if config.dpo is not None and not flt.preference_pairs:
        yield "dpo", "trains on the filter's preference pairs: set filter.preference_pairs: true"
    if "student_dpo" in config.evaluate.models and config.dpo is None:
        yield "evaluate.models", "student_dpo is the dpo stage's model, and there is no dpo: section"
    for key, run in config.keyed_teacher_runs():  # vLLM refuses n > 1 at temperature 0: every request would fail
        if run.teacher.backend != "openai" and run.generate.temperature == 0 and run.generate.num_samples > 1:
            yield (f"{key}.temperature" if getattr(run.teacher, "temperature", None) is not None
                   else "generate.temperature"), (
                f"0 samples greedily, and vLLM refuses n > 1 with greedy sampling ({run.generate.num_samples} copies "
                "of one text): use a temperature above 0, or num_samples 1")
    if config.evaluate.temperature == 0 and config.evaluate.num_samples > 1:
        yield "evaluate.temperature", ("0 samples greedily, and vLLM refuses n > 1 with greedy sampling: K samples "
                                       "need a temperature above 0 (evaluate.greedy adds the greedy answer)")
    yield from code_rules(config)
    budgets = [("generate.max_reasoning_tokens", run.generate.max_reasoning_tokens, key, run.teacher)
               for key, run in config.keyed_teacher_runs()]
    budgets += [("evaluate.max_reasoning_tokens", config.evaluate.max_reasoning_tokens, name, model)
                for name, model in (("teacher", config.teacher), ("student", config.student))
                if name in config.evaluate.models or (name == "student" and {"base_student", "student_dpo"}
                                                      & set(config.evaluate.models))]
    budgets += [("evaluate.max_reasoning_tokens", config.evaluate.max_reasoning_tokens,
                 f"evaluate.extra_models.{name}", model) for name, model in config.evaluate.extra_models.items()]
    for key, budget, name, model in budgets:
        problem = budget_problem(model, name) if budget is not None else None
        if problem:
            yield key, problem


def teachers_rules(config: RunConfig) -> Iterator[tuple[str, str]]:
    """teachers: names that tell them apart, one reading of answers, one teacher's logprobs for KD."""
    names = [t.name for t in config.teachers]
    for name in sorted({n for n in names if names.count(n) > 1}):
        yield "teachers", f"two teachers are named {name!r}: every teacher needs its own name"
    for name in names:
        if name in (*EVAL_MODELS, *config.evaluate.extra_models):
            yield "teachers", f"{name!r} is also the name of a model evaluate scores; name the teacher differently"
    if len({t.delimiters() for t in config.teachers}) > 1:
        yield "teachers", ("their reasoning_delimiters differ, and the filter reads every teacher's answers after "
                           "one reasoning block: give them the same delimiters")
    if config.filter.per_teacher and len(names) < 2:
        yield "filter.per_teacher", "applies max_per_question to each of several teachers, and this run has one"
    kd_teacher = config.train.kd.teacher
    if kd_teacher is not None and kd_teacher not in names:
        yield "train.kd.teacher", (f"{kd_teacher!r} is none of the teachers ({', '.join(names)})" if names else
                                   "names one of several teachers, and this run has one `teacher`")
    if len(names) > 1 and config.generate.logprobs is not None:
        yield "generate.logprobs", ("each teacher would store its own distribution, and KD from several teachers' "
                                    "logprobs is not supported: remove it, and add a score: section, whose model "
                                    "(train.kd.teacher's by default) scores every accepted rationale")
    if len(names) > 1 and config.train.loss == "kd" and config.score is None:
        yield "train.loss", ("kd with several teachers needs one teacher's logprobs on every rationale: add a score: "
                             "section (its model is train.kd.teacher's, or the first teacher's)")


def uses_code(config: RunConfig) -> tuple[bool, bool]:
    """Whether programs are run: by the filter (and generate's checks), and by evaluate."""
    ev = config.evaluate
    filtering = config.filter.answer_format == "code" and config.filter.label != "none"
    evaluating = (ev.answer_format or config.filter.answer_format) == "code" and bool(ev.models or ev.stored
                                                                                       or ev.extra_models)
    return filtering, evaluating


def code_rules(config: RunConfig) -> Iterator[tuple[str, str]]:
    """answer_format code: the data must hold tests, and programs must have somewhere safe to run."""
    filtering, evaluating = uses_code(config)
    if filtering and config.data.tests_format is None:
        yield "filter.answer_format", ("code runs each program against its question's tests: set data.tests_format "
                                       "and data.tests_field (or filter.label: none to check no answers)")
    ev_data = config.evaluate.data
    if evaluating and ev_data is not None and ev_data.tests_format is None:
        yield "evaluate.answer_format", ("code runs each program against its question's tests: set "
                                         "evaluate.data.tests_format and evaluate.data.tests_field")
    for data, key in ((config.data, "data"), (ev_data, "evaluate.data")):
        if data is not None and data.tests_format is not None and not (filtering or evaluating):
            yield f"{key}.tests_format", "code tests are read only with answer_format: code"


def budget_problem(model: ModelConfig, key: str) -> str | None:
    """Why budget forcing cannot work for this model, or None: it must know where the thinking ends."""
    if model.backend != "openai":
        return None if model.reasoning_parser else (
            f"needs to know where the thinking ends: set {key}.reasoning_parser (vLLM's parser for the model)")
    if model.openai.endpoint == "chat":
        return (f"cannot continue a chat reply ({key}.openai.endpoint chat returns the reasoning finished or not): "
                f"use endpoint completions with {key}.reasoning_delimiters")
    if not model.reasoning_delimiters:
        return f"needs to know where the thinking ends in the completion text: set {key}.reasoning_delimiters"
    return None


def validate(config: RunConfig, source: str) -> None:
    """Every value a run will use, checked before anything starts; the first problem is raised as a ConfigError
    naming the file and the key."""
    problems = itertools.chain(check_fields(config), cross_section_rules(config), check_references(config))
    for key, problem in problems:  # lazily: the first problem stops the checks
        raise ConfigError(f"{source}: {key}: {problem}")


def dump_config(config: RunConfig) -> str:
    data = config.to_dict()
    if config.teachers:  # `teacher` is the first of them, not a key the user wrote
        del data["teacher"]
    return yaml.safe_dump(data, sort_keys=False)
