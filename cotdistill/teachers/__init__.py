"""Teachers: the one place that knows how text is generated. generate and evaluate call only this interface.

A backend takes a stream of requests (one per question, each asking for n samples) and yields each question as
soon as all its samples are back, in any order. It pulls the next requests while earlier ones are still
running, so the engine (or the server) is never left idle between shards; the caller journals every finished
question at once, so a crash loses only what was in flight.

    teacher = build_teacher(config.teacher, seed=config.seed)
    for done in teacher.generate(requests):        # Iterable[TeacherRequest] -> Iterator[Finished]
        ...
    teacher.close()

A backend is one module declaring a `Backend` (teachers/base.py): its name, its settings dataclass, its
capabilities and how to build it. BACKENDS below lists them; that is all there is to plugging one in:
`vllm` (a local engine, vllm_local.py), `openai` (any OpenAI-compatible server, openai_server.py), `ray` (many
local engines as Ray actors, ray_pool.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cotdistill.teachers import openai_server, ray_pool, vllm_local
from cotdistill.teachers.base import Backend, Teacher, output_engine_args

if TYPE_CHECKING:
    from cotdistill.config.sections import ModelConfig

BACKENDS: dict[str, Backend] = {b.name: b for b in (vllm_local.BACKEND, openai_server.BACKEND, ray_pool.BACKEND)}


def register(backend: Backend) -> None:
    """Add a backend (a plug-in, or a test's) under its name: configs may then name it as teacher.backend."""
    BACKENDS[backend.name] = backend


def backend_of(model: ModelConfig) -> Backend:
    return BACKENDS[model.backend]


def build_teacher(model: ModelConfig, seed: int, model_path: str | None = None) -> Teacher:
    """The backend `model.backend` names, for `model` (or a trained model in `model_path`)."""
    return backend_of(model).build(model, seed, model_path)


def teacher_settings(model: ModelConfig, weights: str | None = None) -> dict[str, Any]:
    """What of a model changes its answers, for fingerprints and the request cache: the weights and engine, and
    what its backend declares (a served model: how it is asked). A local engine and Ray actors running the same
    engine are the same teacher."""
    from cotdistill.models.resolve import model_fingerprint

    settings: dict[str, Any] = {"model": model.model, "weights": weights or model_fingerprint(model.model),
                                "engine": output_engine_args(model.engine)}
    # What reasoning models add, only when set: runs without them keep the fingerprints they had.
    for key in ("chat_template_kwargs", "reasoning_parser", "reasoning_delimiters"):
        if getattr(model, key):
            settings[key] = getattr(model, key)
    settings.update(backend_of(model).answer_settings(model))
    return settings
