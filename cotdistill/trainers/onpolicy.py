"""What the onpolicy stage trains with: TRL's on-policy distillation trainers, each made to count what it costs,
and the client that asks a served teacher for its top-k logprobs.

    cls = costed(DistillationTrainer)            # or ServerDistillationTrainer, GOLDTrainer
    trainer = cls(model=..., teacher_model=..., args=..., train_dataset=...)
    trainer.costs()                              # student tokens sampled, teacher tokens scored, truncated, wall time

The divergence, the sampling and the loop are TRL's; a costed trainer only counts, in `_generate` (the student's
completions of one generation batch, each scored once by the teacher), and keeps its counts in each checkpoint
(`onpolicy_costs.json`, written before the checkpoint's trainer_state.json, which marks it complete), so a run
resumed from a checkpoint goes on counting from there.

A served teacher (`ServedTeacherClient`): TRL's VLLMClient asks a vLLM server for the prompt logprobs of the
student's token ids (`/v1/completions`, `prompt_logprobs: k`); here with the `openai` backend's rules: the key from
the environment variable `openai.api_key_env` names (never written anywhere), retries on 429, 5xx, timeouts and
dropped connections with exponential backoff, at most `openai.max_retries` per request, and errors no request can
get past (401, 403, a model the server does not serve, a quota) stopping the stage with TeacherUnavailable.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from cotdistill.teachers.base import TeacherUnavailable

logger = logging.getLogger(__name__)

COSTS_FILE = "onpolicy_costs.json"  # in each checkpoint: the counts up to it
COUNTS = ("student_tokens_sampled", "completions", "truncated_completions", "teacher_tokens_scored",
          "teacher_tokens_read", "train_wall_s")


def costed(base: type) -> type:
    """`base` (a TRL on-policy trainer class) counting its costs: see the module docstring."""

    class Costed(base):
        def _counts(self) -> dict[str, float]:
            if not hasattr(self, "_cost_counts"):
                self._cost_counts = dict.fromkeys(COUNTS, 0)
                self._cost_clock = None
            return self._cost_counts

        def _tick(self) -> None:
            """Add the training time since the last tick to train_wall_s."""
            counts, now = self._counts(), time.monotonic()
            if self._cost_clock is not None:
                counts["train_wall_s"] += now - self._cost_clock
            self._cost_clock = now

        def count_completions(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> None:
            if not self.model.training:  # held-out evaluation is not training cost
                return
            stops = {*self.eos_token_ids, self._tokenizer.pad_token_id}
            counts = self._counts()
            sampled = sum(len(ids) for ids in completion_ids)
            counts["student_tokens_sampled"] += sampled
            counts["completions"] += len(completion_ids)
            # cut at max_completion_length: the last token is no end of sequence (TRL's clipped_ratio rule)
            counts["truncated_completions"] += sum(1 for ids in completion_ids if not ids or ids[-1] not in stops)
            counts["teacher_tokens_scored"] += sampled  # each completion token's distribution, once
            counts["teacher_tokens_read"] += sampled + sum(len(ids) for ids in prompt_ids)

        def _generate(self, prompts: list) -> Any:
            result = super()._generate(prompts)
            self.count_completions(result[0], result[1])
            return result

        def train(self, *args: Any, **kwargs: Any) -> Any:
            self._counts()
            self._cost_clock = time.monotonic()
            try:
                return super().train(*args, **kwargs)
            finally:
                self._tick()
                self._cost_clock = None

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            self._tick()
            folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            if self.is_world_process_zero():
                folder.mkdir(parents=True, exist_ok=True)
                (folder / COSTS_FILE).write_text(json.dumps(self._counts()))
            super()._save_checkpoint(model, trial)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            saved = Path(resume_from_checkpoint) / COSTS_FILE
            if saved.is_file():
                self._cost_counts = {**dict.fromkeys(COUNTS, 0), **json.loads(saved.read_text())}
            else:
                logger.warning("onpolicy: %s has no %s: the costs count from this run only", resume_from_checkpoint,
                               COSTS_FILE)

        def costs(self) -> dict[str, Any]:
            counts = self._counts()
            return {**{k: int(v) for k, v in counts.items() if k != "train_wall_s"},
                    "train_wall_s": round(counts["train_wall_s"], 2)}

    Costed.__name__ = Costed.__qualname__ = f"Costed{base.__name__}"
    return Costed


def served_trainer_class() -> type:
    """TRL's ServerDistillationTrainer, costed, taking its teacher client from the caller (ServedTeacherClient)
    rather than building TRL's own (which sends no key and retries by other rules)."""
    from trl import DistillationTrainer
    from trl.experimental.server_distillation import ServerDistillationTrainer

    class ServedTeacherTrainer(costed(ServerDistillationTrainer)):
        def __init__(self, *, teacher_client: Any, **kwargs: Any) -> None:
            # ServerDistillationTrainer.__init__ is DistillationTrainer's without a teacher, then these four lines.
            DistillationTrainer.__init__(self, teacher_model=None, **kwargs)
            self.reverse_kl_top_1_mode = self.args.reverse_kl_top_1_mode
            self.loss_top_k = self.args.loss_top_k
            self.loss_add_tail = self.args.loss_add_tail
            self.teacher_client = teacher_client

    return ServedTeacherTrainer


def gold_trainer_class() -> type:
    """TRL's GOLDTrainer (a teacher with another tokenizer, by ULD), costed: its on-policy completions counted in
    generate_on_policy_outputs, the teacher's tokens (in its own tokenizer) in compute_loss."""
    from trl.experimental.gold import GOLDTrainer

    class CostedGOLD(costed(GOLDTrainer)):
        def generate_on_policy_outputs(self, model: Any, inputs: Any, generation_config: Any) -> Any:
            result = super().generate_on_policy_outputs(model, inputs, generation_config)
            input_ids, _, labels = result[:3]
            eos = generation_config.eos_token_id
            stops = set(eos if isinstance(eos, list) else [eos]) | {self._tokenizer.pad_token_id}
            completions = [ids[mask].tolist() for ids, mask in zip(input_ids, labels != -100)]
            counts = self._counts()
            counts["student_tokens_sampled"] += sum(len(ids) for ids in completions)
            counts["completions"] += len(completions)
            counts["truncated_completions"] += sum(1 for ids in completions if not ids or ids[-1] not in stops)
            return result

        def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            if self.model.training:
                counts = self._counts()
                if self.use_uld_loss and self.teacher_tokenizer is not None:  # the teacher reads its own tokens
                    prompts = self.teacher_tokenizer(list(inputs["original_prompt_text"]), add_special_tokens=False)
                    texts = self.teacher_tokenizer(list(inputs["original_completion_text"]), add_special_tokens=False)
                    scored = sum(len(ids) for ids in texts["input_ids"])
                    read = scored + sum(len(ids) for ids in prompts["input_ids"])
                else:
                    scored, read = int((inputs["labels"] != -100).sum()), int(inputs["attention_mask"].sum())
                counts["teacher_tokens_scored"] += scored
                counts["teacher_tokens_read"] += read
            return super().compute_loss(model, inputs, *args, **kwargs)

    return CostedGOLD


# --- the served teacher ------------------------------------------------------------------------------------------

FATAL_STATUS = {401: "authentication refused (401)", 403: "permission refused (403)"}


def server_root(base_url: str) -> str:
    """The server's root as TRL's client wants it: the openai backend's base_url without its /v1."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def served_client_class() -> type:
    """ServedTeacherClient: TRL's VLLMClient with the openai backend's key, retry and fatal-error rules."""
    import requests
    from trl.generation.vllm_client import VLLMClient

    class ServedTeacherClient(VLLMClient):
        def __init__(self, base_url: str, model: str, api_key: str, max_retries: int, timeout_s: float,
                     backoff_max_s: float = 60.0) -> None:
            # Not VLLMClient.__init__: that one sends no key and retries 5xx by its own rules. get_sequence_logprobs
            # needs only base_url, model and _post.
            self.base_url = server_root(base_url)
            self.model = model
            self.session = requests.Session()
            self.session.headers["Authorization"] = f"Bearer {api_key}"
            self.max_retries, self.timeout_s, self.backoff_max_s = max_retries, timeout_s, backoff_max_s
            self.retries = 0  # retried attempts, all requests together
            self.communicator = None
            served = [m["id"] for m in self._get(f"{self.base_url}/v1/models").get("data", [])]
            if model not in served:
                raise TeacherUnavailable(f"onpolicy: the server {self.base_url} does not serve {model!r} (it serves "
                                         f"{', '.join(served) or 'nothing'}): set teacher.openai.model")

        def _request(self, method: str, url: str, **kwargs: Any) -> dict:
            for attempt in range(self.max_retries + 1):
                try:
                    response = self.session.request(method, url, timeout=self.timeout_s, **kwargs)
                except (requests.ConnectionError, requests.Timeout) as e:
                    problem, wait = f"{type(e).__name__}: {e}", None
                else:
                    if response.status_code == 200:
                        try:
                            return response.json()
                        except ValueError as e:  # a body cut off: retried as a dropped connection
                            problem, wait = f"bad body: {e}", None
                    else:
                        problem, wait = self._failure(response, url)
                if attempt == self.max_retries:
                    raise TeacherUnavailable(f"onpolicy: the teacher at {self.base_url} failed {attempt + 1} times "
                                             f"({problem}); stopping (teacher.openai.max_retries)")
                self.retries += 1
                delay = wait if wait is not None else random.uniform(0, min(self.backoff_max_s, 2 ** attempt))
                logger.warning("onpolicy: teacher request failed (%s); retry %d of %d in %.1f s", problem,
                               attempt + 1, self.max_retries, delay)
                time.sleep(delay)
            raise AssertionError("unreachable")

        def _failure(self, response: Any, url: str) -> tuple[str, float | None]:
            """(what failed, the wait the server asks for) for a retryable answer; raises for a fatal one."""
            from cotdistill.teachers.openai_server import retry_after_seconds

            status, body = response.status_code, response.text[:300]
            where = f"onpolicy: the teacher at {self.base_url}"
            if status in FATAL_STATUS:
                raise TeacherUnavailable(f"{where}: {FATAL_STATUS[status]}: {body}")
            if status == 429 and "insufficient_quota" in body:
                raise TeacherUnavailable(f"{where}: quota exhausted (429 insufficient_quota): {body}")
            if status == 404:
                raise TeacherUnavailable(f"{where}: 404 for {url} (is {self.model!r} the served model?): {body}")
            if status == 429 or status >= 500:
                return f"{status}: {body}", retry_after_seconds(_AsError(response))
            raise TeacherUnavailable(f"{where}: refused the request ({status}): {body}")

        def _get(self, url: str, **kwargs: Any) -> dict:
            return self._request("GET", url, **kwargs)

        def _post(self, url: str, **kwargs: Any) -> dict:
            return self._request("POST", url, **kwargs)

    return ServedTeacherClient


class _AsError:
    """A requests response where retry_after_seconds expects an error carrying one."""

    def __init__(self, response: Any) -> None:
        self.response = response


def served_client(model: Any, timeout_s: float | None = None) -> Any:
    """The client for a served teacher (a ModelConfig whose backend is openai): its first server, its served name,
    its key from the environment (resolve_api_key: never kept but by the HTTP session), its max_retries."""
    from cotdistill.teachers.openai_server import resolve_api_key

    settings = model.settings
    return served_client_class()(settings.servers()[0], settings.model or model.model, resolve_api_key(settings),
                                 settings.max_retries, timeout_s or settings.timeout_s)
