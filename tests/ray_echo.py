"""A stand-in for the vLLM engine inside the real Ray actor (EngineActor), for tests of the Ray pool's bookkeeping
that a real engine is too slow or too fast to show: EchoTeacher answers each request with its own prompt text after
`engine.delay` seconds, one request at a time; "hang" in a prompt hangs it and "boom" makes it raise. With
`engine.slow_start_if` naming a file that exists, an actor takes a minute to start."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator

from cotdistill.teachers.base import Completion, Finished, Sampling, TeacherRequest
from cotdistill.teachers.ray_actor import EngineActor
from cotdistill.teachers.ray_pool import RayPoolTeacher


class EchoTeacher:
    """Stands in for VLLMTeacher inside the actor: answers each request after `delay` seconds, one at a time,
    pulling requests the way VLLMTeacher does (while fewer than max_in_flight are held)."""

    def __init__(self, delay: float):
        self.delay, self.max_in_flight = delay, 512
        self.calls = self.max_held = 0

    def max_model_len(self) -> int:
        return 512

    def generate(self, requests):
        self.calls += 1
        pending, held, exhausted = iter(requests), [], False
        while True:
            while not exhausted and len(held) < self.max_in_flight:
                request = next(pending, None)
                if request is None:
                    exhausted = True
                    break
                held.append(request)
            if not held:
                return
            self.max_held = max(self.max_held, len(held))
            time.sleep(self.delay)
            request = held.pop(0)
            if "hang" in request.messages[0]["content"]:
                time.sleep(3600)
            if "boom" in request.messages[0]["content"]:
                raise ValueError("boom: a request the engine refuses")
            yield Finished(key=request.key, prompt_tokens=len(request.prompt_token_ids),
                           completions=[Completion(text=request.messages[0]["content"], finish_reason="stop",
                                                   completion_tokens=1)] * request.sampling.n)


class EchoActor(EngineActor):
    def _build_teacher(self, model, seed, model_path):
        # An engine that takes a minute to load, once this file exists (a replacement that never comes up in time).
        slow = model.engine.get("slow_start_if")
        if slow and os.path.exists(slow):
            time.sleep(60)
        self.model_seen = model.model, model_path
        return EchoTeacher(delay=float(model.engine.get("delay", 0.05)))

    def paths(self) -> tuple[str, str | None]:
        return self.model_seen

    def environment(self, names: list[str]) -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in names}

    def stats(self) -> dict[str, int]:
        return {"calls": self._teacher.calls, "max_held": self._teacher.max_held}


class EchoPool(RayPoolTeacher):
    actor_class = EchoActor


def echo_requests(count: int, special: dict[int, str] | None = None) -> list[TeacherRequest]:
    texts = [(special or {}).get(i, f"echo {i}") for i in range(count)]
    return [TeacherRequest(key=f"e{i}", messages=[{"role": "user", "content": text}], prompt_text="",
                           prompt_token_ids=[1, 2, 3], sampling=Sampling(n=2)) for i, text in enumerate(texts)]


@contextlib.contextmanager
def pickled_by_value() -> Iterator[None]:
    """Ray's workers (on every node) get these classes by value: they need not import the tests package."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
