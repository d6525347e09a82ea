"""onpolicy: the student samples its own completions to the run's training questions and learns the teacher's
next-token distribution on them (on-policy distillation, Agarwal et al. 2024) -> onpolicy/model/.

    cotdistill onpolicy pipelines/demo_onpolicy.yaml

The student starts from train's student (`onpolicy.start: student`, the default) or from the untrained one
(`base_student`). Each question of `data` becomes a prompt in the student's own template (`train.prompt`) and chat
template, with its chat_template_kwargs (a thinking student's switches); the student samples a completion of at
most `max_completion_length` tokens, and the loss is TRL's generalized JSD between the teacher's and the student's
next-token distributions at every completion token (`beta`: 0 forward KL, 1 reverse KL). The trainer is TRL's:

  a local teacher (any of the run's teachers whose backend runs a local engine): DistillationTrainer, the teacher
      loaded in this process by transformers;
  a served teacher (backend openai, a vLLM server): the server-distillation trainer, on the server's top-k prompt
      logprobs of the student's tokens (cotdistill/trainers/onpolicy.py: the key, retries and fatal errors as the
      openai backend has them);
  a teacher with another tokenizer (`cross_tokenizer: true`): GOLD.

`onpolicy:` holds, besides its own keys (config/sections.py OnPolicyConfig), that trainer's TRL config fields,
passed through as they are and checked at load. LoRA is train's (`train.peft`, `train.merge_adapter`).
Checkpoints go to onpolicy/checkpoints/ and a rerun resumes from the last complete one; the final model is swapped
into onpolicy/model/ whole; stats.json records the steps, the student tokens sampled, the completions cut at
max_completion_length, the teacher tokens scored and the wall time. evaluate scores the result as
`student_onpolicy`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.config.sections import OnPolicyConfig, ModelConfig, onpolicy_trl_class
from cotdistill.core.fields import ConfigError
from cotdistill.core.fingerprints import (
    data_settings, file_digest, folder_digest, make_fingerprint, template_fingerprint, upstream,
)
from cotdistill.core.paths import ONPOLICY, PRUNE, TRAIN
from cotdistill.core.prompts import PromptTemplate
from cotdistill.models.adapters import is_adapter, merge_adapter
from cotdistill.models.resolve import model_fingerprint, resolve_model
from cotdistill.questions.sources import QuestionSource
from cotdistill.stages.base import Stage
from cotdistill.teachers import teacher_settings
from cotdistill.trainers.checkpoints import finish, run_stats, train_resuming
from cotdistill.trainers.setup import BOOKKEEPING, load_student, trainer_args

logger = logging.getLogger(__name__)


def settings(config: RunConfig) -> OnPolicyConfig:
    """The onpolicy: section; `cotdistill onpolicy` on a config without it stops here, saying what is missing."""
    if config.onpolicy is None:
        raise ConfigError("onpolicy is not set: there is nothing to distill on-policy; add an onpolicy: section "
                          "(e.g. {beta: 0.5, max_steps: 50})")
    return config.onpolicy


def teacher_of(config: RunConfig) -> ModelConfig:
    return settings(config).teacher_model(config)


def served(config: RunConfig) -> bool:
    return not teacher_of(config).local_engine


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """What the on-policy student depends on: where it starts (train's fingerprint, or the base student's weights),
    the teacher, the questions and the student's prompt, the TRL settings, LoRA and the seed."""
    section, student = settings(config), config.student
    if section.start == "student":
        start: Any = {"train": upstream(config.paths.train)}
    else:
        start = {"student": {"model": student.model, "weights": model_fingerprint(student.model)},
                 "prune": upstream(config.paths.prune) if student.prune is not None else None}
    return make_fingerprint({
        "start": start,
        "teacher": teacher_settings(teacher_of(config)),
        "questions": data_settings(config.data),
        "prompt_template": template_fingerprint(config.train.prompt),
        "cross_tokenizer": section.cross_tokenizer,
        "held_out": section.held_out,
        "trl": {k: v for k, v in section.trl.items() if k not in BOOKKEEPING},
        "peft": config.train.peft, "merge_adapter": config.train.merge_adapter if config.train.peft else None,
        "seed": config.seed,
        **({"chat_template_kwargs": student.chat_template_kwargs} if student.chat_template_kwargs else {}),
    })


def starting_model(config: RunConfig) -> str:
    """The folder the student starts from: train's student (a LoRA adapter alone merged into its base once, as
    onpolicy/start_merged/), or the base student."""
    if settings(config).start == "base_student":
        return config.student_base()
    folder = config.paths.trained_model
    if is_adapter(folder):
        source = file_digest(folder / "adapter_config.json") + folder_digest(folder, "adapter_model*")
        return merge_adapter(folder, config.paths.onpolicy / "start_merged", source)
    return str(folder)


def prompt_datasets(config: RunConfig) -> tuple[Any, Any | None]:
    """The training questions as a `datasets.Dataset` of conversational prompts (the student's template), and the
    last `held_out` of them apart (None when none are). For GOLD (cross_tokenizer), each row also has a completion,
    the gold answer as train.label_format writes it (what GOLD's off-policy batches learn when lmbda < 1, and what
    its held-out loss is taken on), and the student's chat_template_kwargs (GOLD renders each row with them)."""
    import datasets

    template, section = PromptTemplate(config.train.prompt), settings(config)
    kwargs = config.student.chat_template_kwargs

    def row(q: Any) -> dict[str, Any]:
        prompt = {"prompt": template.render(question=q.question, choices=q.choices)}
        if not section.cross_tokenizer:
            return prompt
        answer = config.train.label_format.format(answer=q.gold_answer if q.gold_answer is not None else "")
        return {**prompt, "completion": [{"role": "assistant", "content": answer}],
                **({"chat_template_kwargs": dict(kwargs)} if kwargs else {})}

    rows = [row(q) for q in QuestionSource(config.data).questions()]
    held_out = settings(config).held_out
    if len(rows) <= held_out:
        raise ValueError(f"onpolicy.held_out: {held_out} of {len(rows)} questions held out leaves none to train on")
    if not held_out:
        return datasets.Dataset.from_list(rows), None
    return datasets.Dataset.from_list(rows[:-held_out]), datasets.Dataset.from_list(rows[-held_out:])


def trl_args(config: RunConfig, cls: type) -> Any:
    """The TRL config: onpolicy's pass-through keys over cotdistill's defaults (trainer_args), with the student's
    chat_template_kwargs and, for a served teacher, its server."""
    section, teacher = settings(config), teacher_of(config)
    fields = dict(section.trl)
    if config.student.chat_template_kwargs and "chat_template_kwargs" not in fields and not section.cross_tokenizer:
        fields["chat_template_kwargs"] = dict(config.student.chat_template_kwargs)
    if not teacher.local_engine:
        fields["teacher_model_server_url"] = teacher.settings.servers()[0]  # the client is cotdistill's own
    if section.cross_tokenizer:  # GOLD: on-policy unless lmbda says otherwise, the teacher's tokens aligned by ULD
        fields = {"lmbda": 1.0, "use_uld_loss": True, **fields,
                  "teacher_tokenizer_name_or_path": resolve_model(teacher.model)}
    return trainer_args(cls, fields, config.paths.onpolicy_checkpoints, config.seed, "onpolicy")


def load_teacher(teacher: ModelConfig, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model(teacher.model), dtype=dtype)


def build_trainer(config: RunConfig, start: str, dataset: Any, held: Any | None) -> Any:
    """The TRL trainer for the section: local, served or cross-tokenizer (module docstring), costed."""
    from trl import DistillationTrainer

    from cotdistill.trainers.onpolicy import costed, served_client, served_trainer_class

    section, teacher = settings(config), teacher_of(config)
    cls = onpolicy_trl_class(section.cross_tokenizer, served(config))
    args = trl_args(config, cls)
    model, tokenizer, peft_config = load_student(start, args, config.train.peft)
    if tokenizer.chat_template is None:
        raise ValueError(f"student {config.student.model}: its tokenizer has no chat template")
    tokenizer.padding_side = "left"
    common = dict(model=model, args=args, train_dataset=dataset, eval_dataset=held, processing_class=tokenizer,
                  peft_config=peft_config)
    if section.cross_tokenizer:
        from cotdistill.trainers.onpolicy import gold_trainer_class

        return gold_trainer_class()(teacher_model=load_teacher(teacher, model.dtype), **common)
    if not teacher.local_engine:
        return served_trainer_class()(teacher_client=served_client(teacher), **common)
    return costed(DistillationTrainer)(teacher_model=load_teacher(teacher, model.dtype), **common)


def held_out_divergence(trainer: Any) -> float | None:
    """The trainer's own loss (the divergence, on the student's samples) on the held-out prompts."""
    if trainer.eval_dataset is None:
        return None
    return round(trainer.evaluate()["eval_loss"], 5)


def train_onpolicy(config: RunConfig) -> dict[str, Any]:
    """The stage's work: on-policy distillation from the starting student, resuming the newest complete checkpoint;
    the final model moved into place, stats.json last."""
    started = time.monotonic()
    section, teacher = settings(config), teacher_of(config)
    start = starting_model(config)
    dataset, held = prompt_datasets(config)
    trainer = build_trainer(config, start, dataset, held)
    before = held_out_divergence(trainer)
    result, checkpoint, steps = train_resuming(trainer, "onpolicy")
    after = held_out_divergence(trainer)
    kind, name = (("cross_tokenizer", "GOLDTrainer") if section.cross_tokenizer else
                  ("served", "ServerDistillationTrainer") if not teacher.local_engine else
                  ("local", "DistillationTrainer"))
    stats = {
        "started_from": start,
        "teacher": teacher.model,
        "teacher_kind": kind,
        "trainer": name,
        "beta": trainer.args.beta,
        "questions": len(dataset),
        **run_stats(result, checkpoint, steps),
        **trainer.costs(),
        "stage_wall_s_this_run": round(time.monotonic() - started, 2),
        **({"held_out": {"questions": len(held), "divergence_before": before, "divergence_after": after}}
           if held is not None else {}),
        **({"teacher_retries": trainer.teacher_client.retries} if not teacher.local_engine else {}),
    }
    merge = config.train.peft is not None and config.train.merge_adapter
    return finish(trainer, config.paths.onpolicy_model, merge, model_card(config, stats), stats)


def model_card(config: RunConfig, stats: dict[str, Any]) -> str:
    return f"""---
base_model: {config.student.model}
library_name: transformers
tags: [cotdistill, distillation, on-policy, trl]
---
# {config.run_name}: student distilled on-policy by cotdistill

- Started from: `{stats['started_from']}` (base `{config.student.model}`)
- Teacher: `{stats['teacher']}` ({stats['teacher_kind']}), trainer {stats['trainer']}, beta {stats['beta']}
- Questions: `{config.data.path}`, {stats['questions']} prompts in the student's template `{config.train.prompt}`
- Training: {stats['global_steps']} steps, final train loss {stats['train_loss']:.4f}; {stats['student_tokens_sampled']}
  student tokens sampled ({stats['truncated_completions']} of {stats['completions']} completions cut at
  max_completion_length), {stats['teacher_tokens_scored']} teacher tokens scored
- TRL overrides: `{json.dumps(settings(config).trl)}`
"""


def needs(config: RunConfig) -> tuple:
    """Train's student, or with start base_student the pruned student when there is one."""
    if settings(config).start == "student":
        return (TRAIN,)
    return (PRUNE,) if config.student.prune is not None else ()


def preflight(config: RunConfig) -> None:
    """What load could not check without reading models: a local teacher's tokenizer against the student's."""
    section, teacher = settings(config), teacher_of(config)
    if not teacher.local_engine:
        return
    problem = section.tokenizer_problem(teacher.model, config.student.model)
    if problem:
        raise ConfigError(f"onpolicy.cross_tokenizer: {problem}")


def trained(config: RunConfig) -> bool:
    model = config.paths.onpolicy_model
    return (model / "config.json").is_file() or (model / "adapter_config.json").is_file()


STAGE = Stage(
    outputs=ONPOLICY,
    help="on-policy distillation: the student samples, the teacher scores (onpolicy:) -> runs/<run>/onpolicy/model/",
    needs=needs, fingerprint=fingerprint, outputs_complete=trained, work=train_onpolicy,
    wanted=lambda config: config.onpolicy is not None, preflight=preflight,
    example="onpolicy.beta=0.5",
)
