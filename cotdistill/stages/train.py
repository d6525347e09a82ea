"""train: accepted rationales -> TRL's SFTTrainer -> the student model.

    cotdistill train pipelines/demo.yaml

Each accepted rationale becomes a conversational prompt/completion pair: the prompt is the question rendered by
the student template (`train.prompt`, the bare question: not the teacher's instructions or few-shot examples),
the completion is the teacher's rationale. SFTTrainer then masks the prompt tokens, so the loss is on the
completion only. `train.sft` holds `trl.SFTConfig` fields, passed through as they are.

`train.loss: kd` trains on the teacher's token ids and stored top-k logprobs instead (cotdistill/trainers/kd.py,
cotdistill/trainers/losses.py); `train.peft` adds a LoRA adapter; with `student.prune` the student starts from the pruned
model (cotdistill/stages/prune.py).

Checkpoints go to `train/checkpoints/` and a rerun resumes from the last complete one; the final model, its
tokenizer and a card naming the corpus are written to a temporary folder and moved to `train/model/` when complete.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.core.fingerprints import make_fingerprint, template_fingerprint, upstream
from cotdistill.core.paths import FILTER, PRUNE, SCORE, TRAIN
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import student_text
from cotdistill.core.shards import list_shards, read_json_or_none
from cotdistill.models.resolve import model_fingerprint
from cotdistill.models.resolve import resolve_model
from cotdistill.stages.base import Stage, read_summary
from cotdistill.trainers.checkpoints import finish, run_stats, train_resuming
from cotdistill.trainers.setup import BOOKKEEPING, check_passed_through, load_student, trainer_args

logger = logging.getLogger(__name__)

def nothing_to_train(accepted_dir: Path) -> RuntimeError:
    return RuntimeError(f"{accepted_dir}: the filter accepted no rationales, so there is nothing to train on; "
                        f"see {accepted_dir.parent / 'stats.json'} for why they were rejected")


def build_sft_dataset(accepted_dir: Path, template: PromptTemplate, shard_files: list[str] | None = None,
                      reasoning_format: str = "{answer}", chat_template_kwargs: dict[str, Any] | None = None) -> Any:
    """Accepted shards (all in the folder, or only `shard_files`) -> a `datasets.Dataset` of conversational
    {prompt, completion} rows, with the student's chat_template_kwargs on each (TRL renders each row with them)."""
    import datasets

    if shard_files is None:
        shards = [str(p) for p in list_shards(accepted_dir)]
    else:
        shards = [str(accepted_dir / name) for name in shard_files]
    if not shards:
        raise nothing_to_train(accepted_dir)
    corpus = datasets.load_dataset("parquet", data_files=shards, split="train")
    if len(corpus) == 0:
        raise nothing_to_train(accepted_dir)

    def to_pair(row: dict[str, Any]) -> dict[str, Any]:
        pair = {
            "prompt": template.render(question=row["question"], choices=row["choices"]),
            "completion": [{"role": "assistant", "content": student_text(
                row["rationale"], row.get("reasoning"), reasoning_format)}],
        }
        if chat_template_kwargs:
            pair["chat_template_kwargs"] = dict(chat_template_kwargs)
        return pair

    return corpus.map(to_pair, remove_columns=corpus.column_names, desc="student prompts")


def sft_config(config: RunConfig, output_dir: Path) -> Any:
    from trl import SFTConfig

    return trainer_args(SFTConfig, config.train.sft, output_dir, config.seed, "train.sft")


def logprob_tokenizer_model(config: RunConfig) -> str:
    """The model whose tokenizer the stored logprobs' ids belong to."""
    if config.score is not None and config.score.model:
        return config.score.model
    return config.kd_teacher().model


def check_kd_vocabulary(config: RunConfig, student_tokenizer: Any | None = None,
                        student_vocab_size: int | None = None) -> None:
    """train.loss kd: refuse a student whose vocabulary is not the teacher's, before any training starts (the
    CLI's preflight with the tokenizers alone; build_trainer again with the model's embedding size)."""
    from transformers import AutoTokenizer

    from cotdistill.trainers.kd import check_vocabularies

    if config.train.loss != "kd":
        return
    teacher_name = logprob_tokenizer_model(config)
    teacher = AutoTokenizer.from_pretrained(resolve_model(teacher_name))
    student = student_tokenizer or AutoTokenizer.from_pretrained(resolve_model(config.student.model))
    check_vocabularies(teacher, student, teacher_name, config.student.model, student_vocab_size)


def build_trainer(config: RunConfig, dataset: Any = None, shards: list[Path] | None = None) -> Any:
    """An SFTTrainer for the student: on a prompt/completion `dataset` (train.loss sft; tokenized, labels masked
    on creation), or for train.loss kd a KDTrainer on the accepted `shards` with their logprob columns.
    With train.peft, SFTTrainer wraps the model in a LoRA adapter (peft.LoraConfig(**train.peft))."""
    from trl import SFTTrainer

    args = sft_config(config, config.paths.checkpoints)
    model, tokenizer, peft_config = load_student(config.student_base(), args, config.train.peft)
    if tokenizer.chat_template is None:
        raise ValueError(f"student {config.student.model}: its tokenizer has no chat template")
    if config.train.loss == "sft":
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config)
    from cotdistill.trainers.kd import build_kd_dataset, kd_trainer_class

    check_kd_vocabulary(config, tokenizer, model.get_input_embeddings().num_embeddings)
    dataset, dropped = build_kd_dataset(shards, PromptTemplate(config.train.prompt), tokenizer, args,
                                        config.student.chat_template_kwargs)
    if dropped:
        logger.warning("train: %d KD examples dropped: the prompt fills max_length=%s", dropped, args.max_length)
    args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}  # prepared above
    return kd_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=peft_config, kd=config.train.kd)


def build_label_dataset(sample_dir: Path, template: PromptTemplate, label_format: str,
                        chat_template_kwargs: dict[str, Any] | None = None) -> Any:
    """train.target label: one {prompt, completion} row per question of the generate shards, the completion its
    gold answer written as `label_format` (no teacher text). Questions without a gold answer are left out, said."""
    import datasets
    import pyarrow.parquet as pq

    rows: dict[str, dict[str, Any]] = {}
    unlabelled = 0
    for shard in list_shards(sample_dir):
        table = pq.read_table(shard, columns=["question_id", "question", "choices", "gold_answer"])
        for row in table.to_pylist():
            if row["question_id"] in rows:
                continue
            if row["gold_answer"] is None:
                unlabelled += 1
                continue
            rows[row["question_id"]] = row
    if unlabelled:
        logger.warning("train: %d questions have no gold answer and are left out (train.target label)", unlabelled)
    if not rows:
        raise RuntimeError(f"{sample_dir}: no question with a gold answer, so there is nothing to train on "
                           "(train.target label)")

    def to_pair(row: dict[str, Any]) -> dict[str, Any]:
        pair = {"prompt": template.render(question=row["question"], choices=row["choices"]),
                "completion": [{"role": "assistant", "content": label_format.format(answer=row["gold_answer"])}]}
        if chat_template_kwargs:
            pair["chat_template_kwargs"] = dict(chat_template_kwargs)
        return pair

    return datasets.Dataset.from_list([to_pair(r) for r in rows.values()])


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """What the trained student depends on: the filtered corpus, the base model, the prompt, SFTConfig, seed."""
    return make_fingerprint({
        "filter": upstream(config.paths.filter),
        "student": {"model": config.student.model, "weights": model_fingerprint(config.student.model)},
        "prompt_template": template_fingerprint(config.train.prompt),
        "sft": {k: v for k, v in config.train.sft.items() if k not in BOOKKEEPING},
        "loss": config.train.loss,
        # kd.teacher only when set: runs from before it keep their fingerprints
        "kd": {k: v for k, v in vars(config.train.kd).items() if not (k == "teacher" and v is None)}
        if config.train.loss == "kd" else None,
        "score": upstream(config.paths.score) if config.score is not None and config.train.loss == "kd" else None,
        "prune": upstream(config.paths.prune) if config.student.prune is not None else None,
        "peft": config.train.peft, "merge_adapter": config.train.merge_adapter if config.train.peft else None,
        "reasoning_format": config.train.reasoning_format,
        "seed": config.seed,
        # only when set: runs without them keep their fingerprints
        **({"chat_template_kwargs": config.student.chat_template_kwargs}
           if config.student.chat_template_kwargs else {}),
        **({"target": "label", "label_format": config.train.label_format, "generate": upstream(config.paths.generate)}
           if config.train.target == "label" else {}),
    })


def train_student(config: RunConfig) -> dict[str, Any]:
    """The stage's work: train on the accepted rationales (resuming the newest complete checkpoint), then move the
    final model into place."""
    paths = config.paths
    filter_stats = read_summary(config, FILTER)

    if config.train.loss == "kd":  # the score step's copy of the accepted rows (with logprobs) when there is one
        folder, files = ((paths.scored, read_summary(config, SCORE)["accepted_files"]) if config.score
                         else (paths.accepted, filter_stats["accepted_files"]))
        if not files:
            raise nothing_to_train(paths.accepted)
        trainer = build_trainer(config, shards=[folder / name for name in files])
        corpus_size = len(trainer.train_dataset)
    elif config.train.target == "label":
        first = config.teacher_runs()[0].paths.samples  # every teacher was asked the same questions
        dataset = build_label_dataset(first, PromptTemplate(config.train.prompt), config.train.label_format,
                                      config.student.chat_template_kwargs)
        trainer = build_trainer(config, dataset)
        corpus_size = len(dataset)
    else:
        dataset = build_sft_dataset(paths.accepted, PromptTemplate(config.train.prompt),
                                    filter_stats["accepted_files"], config.train.reasoning_format,
                                    config.student.chat_template_kwargs)
        trainer = build_trainer(config, dataset)
        corpus_size = len(dataset)
    dropped = corpus_size - len(trainer.train_dataset)
    if dropped:  # SFTTrainer drops examples whose prompt alone fills max_length: say so, never silently
        logger.warning("train: %d of %d examples dropped by SFTTrainer: the prompt fills max_length=%s",
                       dropped, corpus_size, trainer.args.max_length)
    result, checkpoint, steps = train_resuming(trainer, "train")

    stats = {
        "base_model": config.student.model,
        "loss": config.train.loss,
        **({"target": "label"} if config.train.target == "label" else {}),
        "peft": "merged" if config.train.peft is not None and config.train.merge_adapter else (
            "adapter" if config.train.peft is not None else None),
        "examples": len(trainer.train_dataset),
        "examples_dropped_prompt_over_max_length": dropped,
        **run_stats(result, checkpoint, steps),
    }
    merge = config.train.peft is not None and config.train.merge_adapter
    return finish(trainer, paths.trained_model, merge, model_card(config, stats), stats)


def model_card(config: RunConfig, stats: dict[str, Any]) -> str:
    filter_stats = read_json_or_none(config.paths.filter / "stats.json") or {}
    gen = config.generate
    return f"""---
base_model: {config.student.model}
library_name: transformers
tags: [cotdistill, distillation, chain-of-thought, trl, sft]
---
# {config.run_name}: student distilled by cotdistill

- Base model: `{config.student.model}`
- Teacher: `{config.teacher.model}`
- Corpus: `{config.paths.accepted}`, {stats['examples']} accepted rationales
  ({filter_stats.get('rationales', '?')} generated, filter answer format `{config.filter.answer_format}`)
- Questions: `{config.data.path}` (split `{config.data.split}`)
- Teacher prompt: `{gen.prompt}`; sampling: n={gen.num_samples}, temperature={gen.temperature},
  top_p={gen.top_p}, max_tokens={gen.max_tokens}
- Student prompt: `{config.train.prompt}`; loss on the completion (rationale) only
- Loss: {"sft (cross-entropy on the teacher's text)" if config.train.loss == "sft" else
         f"kd: {config.train.kd.alpha} x CE + {1 - config.train.kd.alpha:g} x T^2 x KL to the teacher's top-k "
         f"logprobs (T = {config.train.kd.temperature}, interpolation {config.train.kd.interpolation})"}
- Started from: `{config.student_base()}`{" (pruned from " + config.student.model + ", see its card)"
                                          if config.student.prune is not None else ""}
- LoRA: {json.dumps(config.train.peft) + (", merged" if config.train.merge_adapter else ", saved as an adapter")
         if config.train.peft is not None else "no (full fine-tuning)"}
- Training: {stats['global_steps']} steps, final train loss {stats['train_loss']:.4f}
- SFTConfig overrides: `{json.dumps(config.train.sft)}`
"""


def needs(config: RunConfig) -> tuple:
    """The filtered corpus; the score step's copy of it for kd with a score: section; the pruned student."""
    return (FILTER, *((SCORE,) if config.score is not None and config.train.loss == "kd" else ()),
            *((PRUNE,) if config.student.prune is not None else ()))


def preflight(config: RunConfig) -> None:
    """train.sft's keys against SFTConfig's fields, and for kd the two vocabularies: seconds, not a failed run."""
    from trl import SFTConfig

    check_passed_through(SFTConfig, config.train.sft, "train.sft")
    if config.train.loss == "kd":  # the tokenizers alone: a vocabulary mismatch costs seconds, not a run
        check_kd_vocabulary(config)


def trained(config: RunConfig) -> bool:
    return ((config.paths.trained_model / "config.json").is_file()
            or (config.paths.trained_model / "adapter_config.json").is_file())


STAGE = Stage(
    outputs=TRAIN, help="fine-tune the student with TRL's SFTTrainer (sft or kd loss) -> runs/<run>/train/model/",
    needs=needs, fingerprint=fingerprint, outputs_complete=trained, work=train_student, preflight=preflight,
    example="train.sft.max_steps=10",
)
