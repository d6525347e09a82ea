"""Typed run configuration: one YAML file per run, loaded into dataclasses.

The YAML keys are the dataclass fields. A key that is not a field is an error naming the key and the file
(a misspelt `temprature` must never be silently ignored). `engine` and `sft` are the exceptions: they are
passed through as is to `vllm.LLM(...)` and `trl.SFTConfig(...)`, which check them themselves.

Overrides on the command line are dotted `key=value` pairs, parsed as YAML values:
    cotdistill run pipelines/demo.yaml generate.num_samples=4 train.sft.max_steps=10
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the file and key it concerns in the message."""


LABEL_MODES = ("gold", "majority", "none")  # filter.label
DIFFICULTY_WEIGHTS = ("none", "harder_more")  # filter.difficulty.weight
TEACHER_BACKENDS = ("vllm", "openai", "ray")  # teacher.backend (cotdistill/teachers/)
OPENAI_ENDPOINTS = ("chat", "completions")
EVAL_MODELS = ("teacher", "base_student", "student")  # evaluate.models: the run's own models
TRAIN_LOSSES = ("sft", "kd")  # train.loss
KD_INTERPOLATIONS = ("none", "taid")  # train.kd.interpolation
SCORE_CONTEXTS = ("student", "teacher")  # score.context


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
    gold_format: str = "plain"  # how to parse the gold: gsm8k | plain | choice_letter
    limit: int | None = None


@dataclass
class OpenAIConfig:
    """teacher.backend: openai. Any OpenAI-compatible server: `vllm serve`, OpenAI, DeepSeek, a gateway."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = "OPENAI_API_KEY"  # the NAME of the environment variable holding the key, never the key
    model: str | None = None  # the served model name; defaults to the model's `model`
    endpoint: str = "chat"  # chat (/v1/chat/completions, messages) | completions (/v1/completions, prompt text)
    max_concurrency: int = 16  # requests in flight at once
    requests_per_minute: float | None = None  # client-side limits, for APIs that meter them
    tokens_per_minute: float | None = None
    timeout_s: float = 600.0  # per request
    max_retries: int = 6  # on 429, 5xx, timeouts and dropped connections, with exponential backoff and jitter
    n_per_request: bool = True  # one request with n=N (vLLM and OpenAI support it), else N requests of n=1
    tokenizer: str | None = None  # a Hugging Face tokenizer for counting prompt tokens; defaults to `model`
    price_per_million_input: float | None = None  # for the estimated cost in stats.json and --dry-run
    price_per_million_output: float | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)  # passed as is (e.g. top_k for vLLM servers)


@dataclass
class RayConfig:
    """teacher.backend: ray. `replicas` actors, each holding one vLLM engine with the model's `engine` args."""

    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:10001" for a running cluster
    replicas: int = 2
    num_gpus: float = 0.0  # per replica: usually engine.tensor_parallel_size (0 on CPU)
    num_cpus: float = 1.0  # per replica
    max_actor_restarts: int = 3  # a chunk whose actor died is handed to another, this many times at most


@dataclass
class PruneConfig:
    """student.prune: the student is `student.model` cut smaller (cotdistill/prune.py; Minitron, ShortGPT).
    Importance is measured on the teacher's rationales; every layer keeps the same sizes (vLLM needs them)."""

    num_layers: int | None = None  # decoder blocks to keep (depth): the lowest Block Influence ones go
    intermediate_size: int | None = None  # MLP channels to keep in every block (width), by activation size
    # Attention heads to keep in every block, whole key/value groups at a time (the query heads per KV head stay
    # the same), so it must be a multiple of that ratio.
    num_attention_heads: int | None = None
    # Instead of num_layers: drop the least important blocks one at a time until the total parameter count
    # (after any width and head pruning) is at or below this.
    parameter_budget: int | None = None
    calibration_samples: int = 64  # teacher rationales (finish_reason stop first) run to measure importance
    calibration_max_tokens: int = 512  # each calibration text is cut to this many tokens


@dataclass
class ModelConfig:
    """A model served by vLLM (teacher) or trained by TRL (student)."""

    model: str  # hub id, local folder, or a name from cotdistill.models.EMBEDDED_MODELS
    engine: dict[str, Any] = field(default_factory=dict)  # vllm.LLM keyword arguments, passed through
    backend: str = "vllm"  # vllm (a local engine) | openai (a served model) | ray (many engines as Ray actors)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # student only: the student is `model` pruned as this says (written to <run>/prune/model); null: not pruned
    prune: PruneConfig | None = None


@dataclass
class AdaptiveGenerateConfig:
    """generate.adaptive: sample in rounds of `round_size` per still-open question, up to generate.num_samples (N)
    in all, instead of N at once. A question closes when it has `target_correct` rationales that reach the gold
    (filter.label gold; checked as the filter checks them) or, without gold (filter.label majority), when the
    stopping rule says its majority answer is settled; else at N."""

    round_size: int = 4  # b: samples asked per open question per round
    target_correct: int = 2  # label gold: close once this many rationales reach the gold answer
    # label majority: a name from cotdistill.stopping.STOPPING_RULES: beta (Adaptive-Consistency's Beta
    # criterion: P(leader's share > 1/2) under Beta(v1 + 1, v2 + 1) reaches `confidence`) | window (ESC: the last
    # `window` answers agree)
    rule: str = "beta"
    confidence: float = 0.95
    window: int = 4


@dataclass
class GenerateConfig:
    prompt: str = "math_zero_shot_cot.jinja"  # a template in prompts/, or a path
    examples: str | None = None  # JSONL of few-shot examples, given to the template as `examples`
    num_samples: int = 30  # SCoTD's N
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    questions_per_shard: int = 256  # memory is bounded by one shard of questions and their rationales
    # Per-request seeds make each question's samples independent of shard order and batch (on CPU this needs
    # chunked prefill off, which build_llm sets there by default).
    seed_per_request: bool = False
    # Store the teacher's top-k logprobs at every generated token (k, e.g. 20; null: off), for train.loss: kd.
    # A local engine only (backend vllm or ray); for other text, the score step computes the same columns.
    logprobs: int | None = None
    # Adaptive sampling (AdaptiveGenerateConfig above); null: off, every question gets N samples at once (SCoTD).
    adaptive: AdaptiveGenerateConfig | None = None
    # STaR rationalization (needs filter.label gold): a question left with no rationale reaching the gold is
    # asked once more, for `rationalize_samples` samples, with `rationalize_prompt` (which receives question,
    # choices and hint = the gold answer). Its rationales are stored with rationalized = true and the question's
    # ordinary prompt; the filter drops those that quote the hint (quotes_hint).
    rationalize: bool = False
    rationalize_prompt: str = "math_rationalize.jinja"
    rationalize_samples: int = 4


@dataclass
class DifficultyConfig:
    """filter.difficulty: select questions by their pass rate, the share of the question's rationales that reach
    its label (finished, not truncated, with the label's answer, over all its rationales; gold or majority
    label). Needs a label: an error with label none."""

    # Keep questions whose pass rate lies in [min_pass_rate, max_pass_rate]; every rationale of a question
    # above the band is rejected as too_easy, below it as too_hard (whatever else it fails).
    min_pass_rate: float = 0.0
    max_pass_rate: float = 1.0
    # none: every question keeps up to filter.max_per_question. harder_more (needs filter.max_per_question =
    # M): a question with pass rate p keeps up to max(min_per_question, ceil(M * (1 - p))) of its survivors,
    # by the same seeded uniform draw; the others are over_max_per_question. Hard questions keep up to M, easy
    # ones few: p = 0.9 with M = 8 keeps 1, p = 0.25 keeps 6.
    weight: str = "none"


@dataclass
class FilterConfig:
    answer_format: str = "number"  # a name from cotdistill.answers.ANSWER_FORMATS
    # gold: keep rationales that reach the gold answer. majority: no gold needed; the teacher's own majority
    # answer over a question's rationales is the label, if it wins at least majority_min_share of the votes.
    # none: answers are not checked (OpenThoughts: answer filtering did not help at scale); truncated, empty,
    # degenerate, too_long, contaminated and duplicate rationales are still dropped; is_correct is null.
    label: str = "gold"
    majority_min_share: float = 0.5
    drop_duplicates: bool = True  # exact, after whitespace normalisation
    near_duplicates: bool = True  # MinHash over word n-grams, within a question
    near_duplicate_threshold: float = 0.8  # estimated Jaccard similarity at or above which two are near duplicates
    near_duplicate_ngram: int = 3
    minhash_num_perm: int = 64
    repetition_ngram: int = 4  # degenerate: share of repeated word n-grams above max_repeated_ngram_share
    max_repeated_ngram_share: float = 0.5
    # Longer than the student can train on: tokens of the student's chat-formatted prompt + rationale, counted
    # with its tokenizer, over train.sft.max_length (or this value). Off when neither is set.
    max_student_tokens: int | None = None
    decontaminate: list[DataConfig] = field(default_factory=list)  # evaluation sets; only their questions are read
    decontamination_ngram: int = 13
    max_per_question: int | None = None  # SCoTD-style cap, drawn uniformly with the run's seed
    min_per_question: int = 1  # a question left with fewer is dropped whole
    num_workers: int = 2  # worker processes, one shard each at a time
    difficulty: DifficultyConfig | None = None  # select and weight questions by pass rate (above); null: off


@dataclass
class KDConfig:
    """train.kd: the distillation loss when train.loss is kd (cotdistill/losses.py)."""

    alpha: float = 0.5  # weight of CE on the teacher's sampled tokens; 1 - alpha goes to the KL term
    temperature: float = 1.0  # T: both distributions softened by T; the KL term is scaled by T^2
    interpolation: str = "none"  # none | taid: the target moves from the student's own to the teacher's
    taid_start: float = 0.1  # TAID's interpolation weight at the first step ...
    taid_end: float = 1.0  # ... and at the last (linear in the step)


@dataclass
class ScoreConfig:
    """score: the teacher scores the accepted rationales in one prefill pass (prompt_logprobs), writing the
    same top-k columns generate.logprobs writes, for text that came without them (an API teacher's) or to
    compute them after the student's prompt."""

    logprobs: int = 20  # k
    # student: after the student's prompt (train.prompt, in the teacher's chat template): the distribution the
    # student is trained to match, in the context it sees. teacher: after the teacher's own prompt (prompt_text),
    # as generate.logprobs captures it.
    context: str = "student"
    model: str | None = None  # a local copy of the teacher (defaults to teacher.model; needed for a served one)
    batch_size: int = 64  # rationales sent to the engine at once


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
    loss: str = "sft"
    kd: KDConfig = field(default_factory=lambda: KDConfig())
    # LoRA: peft.LoraConfig fields, passed through as is (e.g. {r: 16, lora_alpha: 32, target_modules:
    # all-linear}); null: full fine-tuning. merge_adapter: true saves the merged model, false the adapter alone
    # (evaluate merges it into the base model before serving it).
    peft: dict[str, Any] | None = None
    merge_adapter: bool = True


@dataclass
class AdaptiveEvalConfig:
    """evaluate.adaptive: adaptive self-consistency, reported beside the fixed-K maj@K of the same samples. Per
    question, the K samples already drawn are walked in order, `round_size` at a time, until the stopping rule
    says the vote is settled (or all K are used); that vote is the adaptive answer. The samples are i.i.d., so
    this is what sampling round by round would have given, and one pass of K serves both."""

    rule: str = "beta"  # a name from cotdistill.stopping.STOPPING_RULES: beta (Adaptive-Consistency) | window (ESC)
    confidence: float = 0.95  # beta: stop when P(leader's share > 1/2) under Beta(v1 + 1, v2 + 1) reaches this
    window: int = 4  # window: stop when the last `window` answers agree (ESC as published: round_size = window)
    round_size: int = 1  # samples per round; the rule is asked after each round


@dataclass
class EvaluateConfig:
    data: DataConfig | None = None  # the test questions
    models: list[str] = field(default_factory=lambda: ["teacher", "base_student", "student"])
    num_samples: int = 16  # K: one request of K samples per question gives maj@k and pass@k for every k <= K
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    greedy: bool = True  # also one greedy (temperature 0) completion per question
    answer_format: str | None = None  # defaults to filter.answer_format
    # Stored generations scored without running a model: a name -> a folder of Sample shards, e.g.
    # {teacher_test: runs/teacher-on-test/generate/samples}.
    stored: dict[str, str] = field(default_factory=dict)
    maj_draws: int = 1000  # maj@k: exact when there are at most this many k-subsets, else this many draws
    bootstrap_resamples: int = 1000
    adaptive: AdaptiveEvalConfig | None = None  # adaptive self-consistency beside maj@K (above); null: off


@dataclass
class RunConfig:
    run_name: str
    data: DataConfig
    teacher: ModelConfig
    student: ModelConfig
    output_dir: str = "runs"
    seed: int = 0
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig | None = None  # null: no score step (train.loss kd then reads generate.logprobs' columns)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    validate(config, str(path))
    return config


def validate(config: RunConfig, source: str) -> None:
    """Every value a run will use, checked before anything starts: ranges, registry names, templates (which
    must exist and compile), few-shot and data files, local model folders. Raises ConfigError naming the file
    and the key, so a mistake costs seconds, not an engine start or hours of generation."""
    from cotdistill.answers import ANSWER_FORMATS, GOLD_PARSERS
    from cotdistill.prompts import PromptError, PromptTemplate
    from cotdistill.sources import local_files, looks_local

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{source}: {key}: {message}")

    def at_least(key: str, value: float | None, low: float) -> None:
        if value is not None and value < low:
            fail(key, f"must be at least {low}, got {value}")

    def within(key: str, value: float | None, low: float, high: float, low_open: bool = False) -> None:
        if value is not None and not (low < value <= high if low_open else low <= value <= high):
            fail(key, f"must be in {'(' if low_open else '['}{low}, {high}], got {value}")

    def one_of(key: str, value: str | None, known: Any) -> None:
        if value is not None and value not in known:
            fail(key, f"unknown value {value!r}; known: {', '.join(sorted(known))}")

    def data(key: str, d: DataConfig) -> None:
        one_of(f"{key}.gold_format", d.gold_format, GOLD_PARSERS)
        at_least(f"{key}.limit", d.limit, 1)
        if looks_local(d.path) and not local_files(d.path):
            fail(f"{key}.path", f"no such file or folder: {d.path}")

    def model(key: str, m: ModelConfig) -> None:
        from cotdistill.models import EMBEDDED_MODELS

        one_of(f"{key}.backend", m.backend, TEACHER_BACKENDS)
        o = m.openai
        one_of(f"{key}.openai.endpoint", o.endpoint, OPENAI_ENDPOINTS)
        for field_name in ("max_concurrency", "max_retries"):
            at_least(f"{key}.openai.{field_name}", getattr(o, field_name), 1 if field_name == "max_concurrency" else 0)
        for field_name in ("requests_per_minute", "tokens_per_minute", "timeout_s"):
            value = getattr(o, field_name)
            if value is not None and value <= 0:
                fail(f"{key}.openai.{field_name}", f"must be above 0, got {value}")
        if m.backend == "openai" and not o.base_url.startswith(("http://", "https://")):
            fail(f"{key}.openai.base_url", f"must start with http:// or https://, got {o.base_url!r}")
        at_least(f"{key}.ray.replicas", m.ray.replicas, 1)
        at_least(f"{key}.ray.num_gpus", m.ray.num_gpus, 0)
        at_least(f"{key}.ray.num_cpus", m.ray.num_cpus, 0)
        at_least(f"{key}.ray.max_actor_restarts", m.ray.max_actor_restarts, 0)
        if m.backend == "openai":
            return  # a served model: `model` is the server's name for it, not a local path
        name = m.model
        if name not in EMBEDDED_MODELS and (name.startswith(("/", ".", "~")) or name.count("/") > 1):
            if not Path(name).expanduser().exists():  # else it would be tried as a hub id, with a puzzling error
                fail(f"{key}.model", f"no such local model folder: {name}")

    def template(key: str, name: str, examples: str | None = None, examples_key: str = "") -> None:
        try:
            PromptTemplate(name, examples)
        except PromptError as e:
            fail(examples_key if examples and str(e).startswith(str(examples)) else key, str(e))

    data("data", config.data)
    model("teacher", config.teacher)
    model("student", config.student)
    if config.teacher.prune is not None:
        fail("teacher.prune", "only the student is pruned: move this section to student.prune")
    if config.student.prune is not None:
        pr = config.student.prune
        for key in ("num_layers", "intermediate_size", "num_attention_heads", "parameter_budget",
                    "calibration_samples", "calibration_max_tokens"):
            at_least(f"student.prune.{key}", getattr(pr, key), 1)
        if all(getattr(pr, key) is None for key in
               ("num_layers", "intermediate_size", "num_attention_heads", "parameter_budget")):
            fail("student.prune", "prunes nothing: set num_layers, intermediate_size, num_attention_heads or "
                 "parameter_budget")
        if pr.parameter_budget is not None and pr.num_layers is not None:
            fail("student.prune.parameter_budget", "chooses the number of layers itself: set it or "
                 "student.prune.num_layers, not both")

    gen = config.generate
    template("generate.prompt", gen.prompt, gen.examples, "generate.examples")
    at_least("generate.num_samples", gen.num_samples, 1)
    at_least("generate.temperature", gen.temperature, 0.0)
    within("generate.top_p", gen.top_p, 0.0, 1.0, low_open=True)
    if gen.top_k != -1 and gen.top_k < 1:
        fail("generate.top_k", f"must be -1 (off) or at least 1, got {gen.top_k}")
    at_least("generate.max_tokens", gen.max_tokens, 1)
    at_least("generate.questions_per_shard", gen.questions_per_shard, 1)
    at_least("generate.logprobs", gen.logprobs, 1)
    if gen.logprobs is not None and config.teacher.backend == "openai":
        fail("generate.logprobs", "needs a local engine (teacher.backend vllm or ray); for a served teacher's "
             "rationales, set score: to have a local copy of the teacher score them")
    if gen.adaptive is not None:
        from cotdistill.stopping import STOPPING_RULES

        ad = gen.adaptive
        at_least("generate.adaptive.round_size", ad.round_size, 1)
        at_least("generate.adaptive.target_correct", ad.target_correct, 1)
        one_of("generate.adaptive.rule", ad.rule, STOPPING_RULES)
        within("generate.adaptive.confidence", ad.confidence, 0.5, 1.0, low_open=True)
        at_least("generate.adaptive.window", ad.window, 1)
        if config.filter.label == "none":
            fail("generate.adaptive", "closes a question on rationales that reach its label, and filter.label none "
                 "checks no answers; use label gold (target_correct) or majority (the stopping rule)")
        if config.filter.label == "gold" and ad.target_correct > gen.num_samples:
            fail("generate.adaptive.target_correct", f"{ad.target_correct} is above generate.num_samples "
                 f"({gen.num_samples}): no question could ever close by it")
    if gen.rationalize:
        if config.filter.label != "gold":
            fail("generate.rationalize", f"gives the gold answer as a hint, and filter.label is {config.filter.label}: "
                 "rationalization needs gold labels (label gold)")
        if config.data.answer_field is None:
            fail("generate.rationalize", "gives the gold answer as a hint, and data.answer_field is null")
        template("generate.rationalize_prompt", gen.rationalize_prompt, gen.examples, "generate.examples")
        try:
            shown = PromptTemplate(gen.rationalize_prompt, gen.examples).render(
                question="What is 2 + 3?", choices=None, hint="5 (hint 7f3a)")
        except PromptError as e:
            fail("generate.rationalize_prompt", str(e))
        if not any("hint 7f3a" in m["content"] for m in shown):
            fail("generate.rationalize_prompt", "never shows `hint` (the gold answer): that would ask the question "
                 "again without it")
        at_least("generate.rationalize_samples", gen.rationalize_samples, 1)
        if config.train.loss == "kd" and config.score is None:
            fail("generate.rationalize", "rationalized rationales carry no teacher logprobs (the teacher's "
                 "distribution after the hint prompt would pass the hint on to the student); with train.loss kd, "
                 "add a score: section so the teacher scores every accepted rationale after the student's prompt")

    flt = config.filter
    one_of("filter.answer_format", flt.answer_format, ANSWER_FORMATS)
    one_of("filter.label", flt.label, LABEL_MODES)
    within("filter.majority_min_share", flt.majority_min_share, 0.0, 1.0, low_open=True)
    within("filter.near_duplicate_threshold", flt.near_duplicate_threshold, 0.0, 1.0, low_open=True)
    for key in ("near_duplicate_ngram", "minhash_num_perm", "repetition_ngram", "decontamination_ngram",
                "max_student_tokens", "max_per_question", "num_workers"):
        at_least(f"filter.{key}", getattr(flt, key), 1)
    within("filter.max_repeated_ngram_share", flt.max_repeated_ngram_share, 0.0, 1.0)
    at_least("filter.min_per_question", flt.min_per_question, 0)
    if flt.max_per_question is not None and flt.max_per_question < flt.min_per_question:
        fail("filter.max_per_question", f"{flt.max_per_question} is below filter.min_per_question "
             f"({flt.min_per_question})")
    for i, d in enumerate(flt.decontaminate):
        data(f"filter.decontaminate[{i}]", d)
    if flt.difficulty is not None:
        dif = flt.difficulty
        if flt.label == "none":
            fail("filter.difficulty", "needs a pass rate, and filter.label none checks no answers; use label gold "
                 "or majority, or remove filter.difficulty")
        within("filter.difficulty.min_pass_rate", dif.min_pass_rate, 0.0, 1.0)
        within("filter.difficulty.max_pass_rate", dif.max_pass_rate, 0.0, 1.0)
        if dif.min_pass_rate > dif.max_pass_rate:
            fail("filter.difficulty.min_pass_rate", f"{dif.min_pass_rate} is above filter.difficulty.max_pass_rate "
                 f"({dif.max_pass_rate})")
        one_of("filter.difficulty.weight", dif.weight, DIFFICULTY_WEIGHTS)
        if dif.weight != "none" and flt.max_per_question is None:
            fail("filter.difficulty.weight", f"{dif.weight} shares out filter.max_per_question, which is not set")

    template("train.prompt", config.train.prompt)
    try:
        config.train.reasoning_format.format(reasoning="", answer="")
    except (KeyError, IndexError, ValueError) as e:
        fail("train.reasoning_format", f"may use only {{reasoning}} and {{answer}}: {e!r}")
    tr = config.train
    one_of("train.loss", tr.loss, TRAIN_LOSSES)
    within("train.kd.alpha", tr.kd.alpha, 0.0, 1.0)
    if tr.kd.temperature <= 0:
        fail("train.kd.temperature", f"must be above 0, got {tr.kd.temperature}")
    one_of("train.kd.interpolation", tr.kd.interpolation, KD_INTERPOLATIONS)
    within("train.kd.taid_start", tr.kd.taid_start, 0.0, 1.0)
    within("train.kd.taid_end", tr.kd.taid_end, 0.0, 1.0)
    if tr.loss == "kd" and config.score is None and config.generate.logprobs is None:
        fail("train.loss", "kd needs the teacher's logprobs: set generate.logprobs (a local teacher) or a score: "
             "section (the teacher scores the accepted rationales)")
    if tr.peft is not None:
        try:
            from peft import LoraConfig
        except ImportError:
            fail("train.peft", "needs the peft package (pip install peft)")
        known = {f.name for f in dataclasses.fields(LoraConfig)}
        unknown = sorted(set(tr.peft) - known)
        if unknown:
            fail(f"train.peft.{unknown[0]}", "not a peft.LoraConfig field")
    if config.score is not None:
        sc = config.score
        at_least("score.logprobs", sc.logprobs, 1)
        at_least("score.batch_size", sc.batch_size, 1)
        one_of("score.context", sc.context, SCORE_CONTEXTS)
        if sc.model is None and config.teacher.backend == "openai":
            fail("score.model", "a served teacher cannot score text here: name a local copy of it")
        if sc.model is not None and looks_local(sc.model) and not Path(sc.model).expanduser().exists():
            fail("score.model", f"no such local model folder: {sc.model}")
    if not isinstance(config.train.sft.get("max_length", 0), (int, type(None))):
        fail("train.sft.max_length", f"must be an integer or null, got {config.train.sft['max_length']!r}")

    ev = config.evaluate
    if ev.data is not None:
        data("evaluate.data", ev.data)
    for name in ev.models:
        one_of("evaluate.models", name, EVAL_MODELS)
    clash = sorted(set(ev.stored) & set(ev.models))
    if clash:
        fail("evaluate.stored", f"{clash[0]!r} is also in evaluate.models; name it differently")
    for name, path in ev.stored.items():
        if not Path(path).is_dir():
            fail(f"evaluate.stored.{name}", f"no such folder of Sample shards: {path}")
    at_least("evaluate.num_samples", ev.num_samples, 1)
    at_least("evaluate.temperature", ev.temperature, 0.0)
    within("evaluate.top_p", ev.top_p, 0.0, 1.0, low_open=True)
    at_least("evaluate.max_tokens", ev.max_tokens, 1)
    one_of("evaluate.answer_format", ev.answer_format, ANSWER_FORMATS)
    at_least("evaluate.maj_draws", ev.maj_draws, 1)
    at_least("evaluate.bootstrap_resamples", ev.bootstrap_resamples, 1)
    if ev.adaptive is not None:
        from cotdistill.stopping import STOPPING_RULES

        one_of("evaluate.adaptive.rule", ev.adaptive.rule, STOPPING_RULES)
        within("evaluate.adaptive.confidence", ev.adaptive.confidence, 0.5, 1.0, low_open=True)
        at_least("evaluate.adaptive.window", ev.adaptive.window, 1)
        at_least("evaluate.adaptive.round_size", ev.adaptive.round_size, 1)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
