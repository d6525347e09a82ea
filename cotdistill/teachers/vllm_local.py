"""teacher.backend: vllm. One local vLLM engine (`vllm.LLM`), kept fed across shard boundaries.

    teacher = build(config.teacher, seed=config.seed)      # teachers.build_teacher, backend vllm

Engine arguments in the YAML (`engine:`) pass straight to `vllm.LLM`: dtype, max_model_len,
tensor_parallel_size, gpu_memory_utilization, enable_prefix_caching, enforce_eager, and the rest.
On a GPU machine the defaults of vLLM apply; on CPU, vLLM reads `gpu_memory_utilization` as the share of RAM
reserved for the KV cache (its default 0.92 fails to start: set about 0.3).
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from cotdistill.models.resolve import resolve_model
from cotdistill.teachers.base import Backend, Completion, Finished, Sampling, TeacherRequest

if TYPE_CHECKING:
    from cotdistill.config.sections import ModelConfig

logger = logging.getLogger(__name__)


def build_llm(model_cfg: ModelConfig, seed: int, model_path: str | None = None) -> Any:
    """A `vllm.LLM` for the model (or for `model_path`, e.g. a trained student, with the same engine args)."""
    # An in-process engine core: no spawn of a second process (which would re-import the caller's __main__),
    # and the engine's memory is freed when the object goes. Set the variable to 1 to get vLLM's default.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM
    from vllm.platforms import current_platform

    model = model_path or resolve_model(model_cfg.model)
    engine_args = {"seed": seed, **model_cfg.engine}
    if model_cfg.reasoning_parser:  # the engine's reasoning config: what thinking_token_budget forces the end by
        engine_args.setdefault("reasoning_parser", model_cfg.reasoning_parser)
    if current_platform.is_cpu():
        # vLLM's CPU sampler cannot rewind the generator of a seeded request whose prompt was split across engine
        # steps ("CPU Generator does not use offset"), so per-request seeds (generate.seed_per_request) need whole
        # prompts scheduled at once. The engine args can still turn it back on.
        engine_args.setdefault("enable_chunked_prefill", False)
    logger.info("starting vLLM for %s with %s", model, engine_args)
    try:
        return LLM(model=model, **engine_args)
    except TypeError as e:  # an engine argument vLLM does not know
        raise ValueError(f"engine arguments for {model}: {e}") from None


def release_llm(llm: Any) -> None:
    """Stop the engine and give its KV cache back before the next stage needs the memory."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # older or newer engines differ here; dropping the reference is what matters
        pass
    del llm
    gc.collect()


def max_model_len(llm: Any) -> int:
    return int(llm.llm_engine.model_config.max_model_len)


def topk_arrays(logprobs: Any, k: int, start: int = 0) -> tuple[Any, Any]:
    """vLLM's FlatLogprobs (from position `start` on) -> the top-k ids and logprobs per position, ranks 1..k in
    order, as int32 and float32 arrays of shape [positions, k], with no Python loop over positions.

    FlatLogprobs holds, per position, the sampled (or prompt) token with its own rank, then ranks 1..k in order
    (vllm/logprobs.py append_logprobs_for_next_position): its flat lists become numpy arrays at C speed, and when
    every position has those k + 1 entries (always, for sampled tokens) the top k are columns 1..k of one reshape.
    Anything else takes the general path: every entry of rank 1..k is placed at its rank (-inf where none is)."""
    import numpy as np

    positions = len(logprobs.start_indices) - start
    if positions <= 0:
        return np.zeros((0, k), dtype=np.int32), np.zeros((0, k), dtype=np.float32)
    starts = np.asarray(logprobs.start_indices[start:], dtype=np.int64)
    ends = np.asarray(logprobs.end_indices[start:], dtype=np.int64)
    first, last = int(starts[0]), int(ends[-1])
    token_ids = np.asarray(logprobs.token_ids[first:last], dtype=np.int64)
    values = np.asarray(logprobs.logprobs[first:last], dtype=np.float32)
    widths = ends - starts
    if int(widths.sum()) != last - first:  # FlatLogprobs appends position after position, without gaps
        raise ValueError("FlatLogprobs with gaps between its positions")
    if (widths == k + 1).all():
        expected = np.arange(1, k + 1)
        try:  # columns 1..k must be ranks 1..k (the sampled token's own rank, column 0, may be anything)
            table = np.asarray(logprobs.ranks[first:last], dtype=np.int64).reshape(positions, k + 1)
            in_order = bool((table[:, 1:] == expected).all())
        except (TypeError, ValueError):  # a rank of None
            in_order = False
        if in_order:
            return (token_ids.reshape(positions, k + 1)[:, 1:].astype(np.int32),
                    np.ascontiguousarray(values.reshape(positions, k + 1)[:, 1:]))
    # General: each entry at its rank; the sampled token repeats the top-k entry of its rank, with the same values.
    ranks = np.array([-1 if r is None else r for r in logprobs.ranks[first:last]], dtype=np.int64)
    row = np.repeat(np.arange(positions), widths)
    keep = (ranks >= 1) & (ranks <= k)
    ids = np.zeros((positions, k), dtype=np.int32)
    out = np.full((positions, k), -np.inf, dtype=np.float32)
    ids[row[keep], ranks[keep] - 1] = token_ids[keep]
    out[row[keep], ranks[keep] - 1] = values[keep]
    return ids, out


def completion(c: Any, request: TeacherRequest, splitter: Any = None) -> Completion:
    """One of vLLM's CompletionOutputs as a Completion: its top-k logprobs when asked for, its reasoning apart
    when the model has a reasoning parser (`splitter`), and whether a reasoning budget was hit."""
    import numpy as np

    sampling = request.sampling
    out = Completion(text=c.text, finish_reason=str(c.finish_reason), completion_tokens=len(c.token_ids))
    if splitter is not None:
        out.reasoning, out.text, out.reasoning_tokens = splitter.split(request, c.text, list(c.token_ids))
    if sampling.max_reasoning_tokens is not None and out.reasoning_tokens is not None:
        opened = splitter.tokens_opened_in_prompt(request.prompt_token_ids) if splitter is not None else 0
        out.budget_hit = out.reasoning_tokens + opened >= sampling.max_reasoning_tokens
    if sampling.logprobs is not None:  # numpy arrays, through Ray's object store without a copy
        out.token_ids = np.asarray(c.token_ids, dtype=np.int32)
        out.topk_ids, out.topk_logprobs = topk_arrays(c.logprobs, sampling.logprobs)
    return out


def request_errors() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it refuses (the request's fault, not the engine's)."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM: validation errors are ValueErrors
        return (ValueError,)
    return (ValueError, VLLMClientError)


def sampling_params(sampling: Sampling) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                            top_k=sampling.top_k, max_tokens=sampling.max_tokens, stop=sampling.stop or None,
                            seed=sampling.seed, logprobs=sampling.logprobs,
                            flat_logprobs=sampling.logprobs is not None,
                            # s1's budget forcing, by the engine: past the budget it writes the end of the reasoning
                            # and the completion goes on, so the answer continues the same text
                            thinking_token_budget=sampling.max_reasoning_tokens, ignore_eos=sampling.ignore_eos)
    params.output_kind = RequestOutputKind.FINAL_ONLY  # only finished questions come back from step()
    return params


class VLLMTeacher:
    """One local vLLM engine, fed request by request through its engine API (`add_request` / `step`), as
    `LLM.generate` drives it, but with the next requests added while earlier ones run: the engine does not drain
    to a small batch at the end of every shard, nor wait while a shard is written."""

    def __init__(self, llm: Any, name: str, max_in_flight: int = 512, reasoning_parser: str | None = None,
                 chat_template_kwargs: dict[str, Any] | None = None):
        self.llm, self.name, self.max_in_flight = llm, name, max_in_flight
        self._ids = itertools.count()
        self.splitter = None
        if reasoning_parser:
            from cotdistill.teachers.reasoning import ReasoningSplitter

            self.splitter = ReasoningSplitter(reasoning_parser, llm.get_tokenizer(), chat_template_kwargs,
                                              llm.llm_engine.model_config)

    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    def max_model_len(self) -> int:
        return max_model_len(self.llm)

    def generate(self, requests: Iterable[TeacherRequest]) -> Iterator[Finished]:
        from vllm.inputs import TokensPrompt

        refused = request_errors()
        engine = self.llm.llm_engine
        pending = iter(requests)
        in_flight: dict[str, TeacherRequest] = {}
        exhausted = False
        try:
            while True:
                # Top up first: questions waiting in the engine's queue are what keeps it busy at a shard's tail.
                while not exhausted and len(in_flight) < self.max_in_flight:
                    request = next(pending, None)
                    if request is None:
                        exhausted = True
                        break
                    # Outputs (and abort_request) use the id given here; add_request returns an internal one.
                    request_id = f"{request.key}#{next(self._ids)}"
                    try:
                        engine.add_request(request_id, TokensPrompt(prompt_token_ids=request.prompt_token_ids),
                                           sampling_params(request.sampling))
                    except refused as e:  # vLLM refuses this request (its length, its parameters): its error only
                        logger.warning("vLLM refused request %s: %s", request.key, e)
                        yield Finished(key=request.key, prompt_tokens=len(request.prompt_token_ids), completions=[],
                                       error=f"refused by the engine: {e}")
                        continue
                    in_flight[request_id] = request
                if not in_flight:
                    return
                for output in engine.step():
                    if not output.finished:
                        continue
                    request = in_flight.pop(output.request_id)
                    completions = sorted(output.outputs, key=lambda c: c.index)
                    yield Finished(
                        key=request.key, prompt_tokens=len(request.prompt_token_ids),
                        completions=[completion(c, request, self.splitter) for c in completions],
                    )
        finally:
            if in_flight:  # the caller stopped early (or failed): leave no request running in the engine
                engine.abort_request(list(in_flight))

    def close(self) -> None:
        release_llm(self.llm)


def build(model: ModelConfig, seed: int, model_path: str | None = None) -> VLLMTeacher:
    return VLLMTeacher(build_llm(model, seed, model_path), name=model.model, reasoning_parser=model.reasoning_parser,
                       chat_template_kwargs=model.chat_template_kwargs)


BACKEND = Backend(name="vllm", build=build, local_engine=True, logprobs=True)
