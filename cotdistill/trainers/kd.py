"""train.loss: kd. The teacher's top-k logprobs, per token, fed to TRL's SFTTrainer with a KD loss.

    dataset, dropped = build_kd_dataset(shards, template, tokenizer, args)     # train.build_trainer, loss kd

Each accepted rationale becomes one tokenized example: the student's prompt (train.prompt in the student's chat
template), then the teacher's own completion tokens (completion_token_ids: the ids its logprobs were computed
at, so no re-tokenization can misalign them), then the end-of-sequence token if the teacher's ids lack one.
Per position the example carries the teacher's k ids and logprobs and a mask of where they are known; labels are
-100 on the prompt, so CE and KL are taken on the completion only.

`KDTrainer` is an SFTTrainer: its arguments, accelerate/DeepSpeed/FSDP, gradient accumulation, LoRA
(peft_config), logging and checkpoints are SFTTrainer's. Only three things differ: the dataset arrives
tokenized (SFTTrainer's own preparation would drop the teacher columns, so truncation and packing are done here,
packing with TRL's own `pack_dataset`, which carries every per-position column along), the collator pads the
teacher columns as TRL's collator pads input_ids, and `compute_loss` is losses.kd_loss_fused where the model
allows (the last hidden states and the LM head in, no [B, L, V] logits; see `fused_head`), else losses.kd_loss
on the model's logits, in their own dtype.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cotdistill.core.prompts import PromptTemplate

logger = logging.getLogger(__name__)

TEACHER_COLUMNS = ("teacher_ids", "teacher_logprobs", "teacher_mask")


class VocabularyMismatch(ValueError):
    """The teacher's token ids do not mean the same tokens to the student: token-level KD is impossible."""


def check_vocabularies(teacher_tokenizer: Any, student_tokenizer: Any, teacher_name: str, student_name: str,
                       student_vocab_size: int | None = None) -> None:
    """Refuse token-level KD between tokenizers that disagree on any id: the same token must have the same id
    (a KL over ids that name different tokens would train nonsense, silently)."""
    teacher, student = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    differ = [(tok, i, student.get(tok)) for tok, i in teacher.items() if student.get(tok) != i]
    if differ:
        examples = ", ".join(f"{tok!r} is {i} for the teacher and {j} for the student" for tok, i, j in differ[:3])
        raise VocabularyMismatch(
            f"train.loss kd: the teacher ({teacher_name}) and the student ({student_name}) do not share a "
            f"vocabulary: {len(differ)} of the teacher's {len(teacher)} tokens differ ({examples}). Token-level "
            f"KD needs the same tokenizer family; use train.loss: sft for this pair")
    if student_vocab_size is not None and max(teacher.values()) >= student_vocab_size:
        raise VocabularyMismatch(
            f"train.loss kd: the teacher's ids reach {max(teacher.values())}, beyond the student's "
            f"{student_vocab_size} embedding rows")


def kd_example(row: dict[str, Any], template: PromptTemplate, tokenizer: Any,
               chat_template_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One accepted rationale with logprob columns -> input_ids, labels and the per-position teacher columns."""
    from cotdistill.teachers.base import render_prompt

    messages = template.render(question=row["question"], choices=row["choices"])
    prompt_ids = render_prompt(tokenizer, messages, chat_template_kwargs)[1]
    completion = list(row["completion_token_ids"])
    topk_ids, topk_logprobs = row["teacher_topk_ids"], row["teacher_topk_logprobs"]
    k = len(topk_ids[0]) if topk_ids else 1
    mask = [1] * len(completion)
    if tokenizer.eos_token_id is not None and (not completion or completion[-1] != tokenizer.eos_token_id):
        completion.append(tokenizer.eos_token_id)  # trained by CE only: the teacher said nothing about it
        topk_ids, topk_logprobs, mask = topk_ids + [[0] * k], topk_logprobs + [[0.0] * k], mask + [0]
    blank_ids, blank_logprobs = [[0] * k] * len(prompt_ids), [[0.0] * k] * len(prompt_ids)
    return {
        "input_ids": prompt_ids + completion,
        "labels": [-100] * len(prompt_ids) + completion,
        "teacher_ids": blank_ids + [list(r) for r in topk_ids],
        "teacher_logprobs": blank_logprobs + [list(r) for r in topk_logprobs],
        "teacher_mask": [0] * len(prompt_ids) + mask,
    }


def build_kd_dataset(shards: list[Path], template: PromptTemplate, tokenizer: Any, args: Any,
                     chat_template_kwargs: dict[str, Any] | None = None) -> tuple[Any, int]:
    """Accepted shards with logprob columns -> a tokenized `datasets.Dataset`, truncated and packed as SFTConfig
    says (what SFTTrainer's own preparation would do). Returns it and the number of examples dropped."""
    import datasets
    from trl import pack_dataset

    corpus = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train")
    missing = corpus.filter(lambda r: r["completion_token_ids"] is None or r["teacher_topk_ids"] is None)
    if len(missing):
        first = missing[0]
        raise ValueError(f"train.loss kd: {len(missing)} accepted rationales have no teacher logprobs (first: "
                         f"question {first['question_id']}, sample {first['sample_index']}); set "
                         f"generate.logprobs, or add a score: section")
    dataset = corpus.map(kd_example, fn_kwargs={"template": template, "tokenizer": tokenizer,
                                                "chat_template_kwargs": chat_template_kwargs},
                         remove_columns=corpus.column_names, desc="KD examples")
    before = len(dataset)
    if args.max_length is not None and not args.packing:
        keep = slice(None, args.max_length) if args.truncation_mode == "keep_start" else slice(-args.max_length, None)
        dataset = dataset.map(lambda r: {c: r[c][keep] for c in ("input_ids", "labels", *TEACHER_COLUMNS)},
                              desc="truncating")
        dataset = dataset.filter(lambda r: any(label != -100 for label in r["labels"]))  # nothing left to learn
    if args.packing:
        if args.max_length is None:
            raise ValueError("train.sft: packing needs max_length")
        if args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        dataset = pack_dataset(dataset, args.max_length, args.packing_strategy)
    return dataset, before - len(dataset) if not args.packing else 0


class TeacherCollator:
    """TRL's collator for input_ids and labels, and the teacher columns laid out the same way: right-padded
    rows, or with padding-free packing one concatenated row."""

    def __init__(self, base: Any):
        self.base = base

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        teacher = [{c: ex.pop(c) for c in TEACHER_COLUMNS} for ex in examples]
        batch = self.base(examples)
        rows, length = batch["input_ids"].shape
        k = len(next((r for t in teacher for r in t["teacher_ids"]), [0]))
        ids = torch.zeros(rows, length, k, dtype=torch.long)
        logprobs = torch.zeros(rows, length, k, dtype=torch.float32)
        mask = torch.zeros(rows, length, dtype=torch.bool)
        concatenated = getattr(self.base, "padding_free", False)
        offset = 0
        for i, t in enumerate(teacher):
            n = len(t["teacher_mask"])
            row, start = (0, offset) if concatenated else (i, 0)
            ids[row, start:start + n] = torch.tensor(t["teacher_ids"], dtype=torch.long).reshape(n, k)
            logprobs[row, start:start + n] = torch.tensor(t["teacher_logprobs"], dtype=torch.float32).reshape(n, k)
            mask[row, start:start + n] = torch.tensor(t["teacher_mask"], dtype=torch.bool)
            offset += n
        batch.update(teacher_ids=ids, teacher_logprobs=logprobs, teacher_mask=mask)
        return batch


def kd_trainer_class() -> type:
    """SFTTrainer with the KD loss (a function, so that importing this module does not import TRL)."""
    import inspect

    import torch
    from trl import SFTTrainer

    from cotdistill.trainers.losses import kd_loss, kd_loss_fused, taid_lambda

    class KDTrainer(SFTTrainer):
        def __init__(self, *args: Any, kd: Any, **kwargs: Any):
            self.kd = kd
            super().__init__(*args, **kwargs)
            self.data_collator = TeacherCollator(self.data_collator)
            self.fused_loss = None  # the fused loss: None until its first step checks it, then True or False

        def _set_signature_columns_if_needed(self) -> None:
            # Trainer drops dataset columns the model's forward does not take; the teacher's are the loss's.
            super()._set_signature_columns_if_needed()
            self._signature_columns = [*self._signature_columns, *TEACHER_COLUMNS]

        def fused_head(self, model: Any) -> Any:
            """The student's LM head when the loss can take the last hidden states and the head's weight instead
            of the logits (losses.kd_loss_fused), else None: a plain nn.Linear head (not a LoRA-wrapped one), whole
            on this process (not sharded by FSDP or DeepSpeed ZeRO-3), on a model whose forward takes
            `logits_to_keep` and does nothing to the logits after the head (no scaling, no soft-capping)."""
            if self.fused_loss is False or self.is_fsdp_enabled or self.is_deepspeed_enabled:
                return None
            unwrapped = self.accelerator.unwrap_model(model)
            if hasattr(unwrapped, "get_base_model"):  # PEFT: the transformers model inside
                unwrapped = unwrapped.get_base_model()
            head = unwrapped.get_output_embeddings()
            config = unwrapped.config.get_text_config()
            post_head = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                         "logits_scaling")
            if (not isinstance(head, torch.nn.Linear) or head.weight.dim() != 2 or head.weight.numel() == 0
                    or "logits_to_keep" not in inspect.signature(unwrapped.forward).parameters
                    or any(getattr(config, name, None) is not None for name in post_head)):
                return None
            return head

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            teacher = {c: inputs.pop(c) for c in TEACHER_COLUMNS}
            labels = inputs.pop("labels")
            progress = self.state.global_step / self.state.max_steps if self.state.max_steps else 0.0
            lam = (taid_lambda(progress, self.kd.taid_start, self.kd.taid_end)
                   if self.kd.interpolation == "taid" else None)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                num_items_in_batch = num_items_in_batch / self.accelerator.num_processes  # as SFTTrainer scales
            options = {"alpha": self.kd.alpha, "temperature": self.kd.temperature, "taid_lambda": lam,
                       "num_items_in_batch": num_items_in_batch}
            # The fused loss: the model makes the logits of the last position only and hands back its last
            # hidden states; the loss projects them through the head slice by slice, so the [B, L, V] logits
            # never exist. (Not when the caller wants the outputs: it gets the model's full logits then.)
            head = None if return_outputs else self.fused_head(model)
            outputs = model(**inputs, use_cache=False, **({"output_hidden_states": True, "logits_to_keep": 1}
                                                             if head is not None else {}))
            if head is not None and self.fused_loss is None:
                self.fused_loss = self._head_gives_the_logits(head, outputs)
                if not self.fused_loss:
                    head, outputs = None, model(**inputs, use_cache=False)
            if head is not None:
                loss, parts = kd_loss_fused(outputs.hidden_states[-1], head.weight, labels, teacher["teacher_ids"],
                                            teacher["teacher_logprobs"], teacher["teacher_mask"], bias=head.bias,
                                            **options)
            else:
                loss, parts = kd_loss(outputs.logits, labels, teacher["teacher_ids"], teacher["teacher_logprobs"],
                                      teacher["teacher_mask"], **options)
            mode = "train" if model.training else "eval"
            for name, value in parts.items():
                self._metrics[mode][f"kd_{name}"].append(value)
            if lam is not None:
                self._metrics[mode]["taid_lambda"].append(lam)
            return (loss, outputs) if return_outputs else loss

        @staticmethod
        def _head_gives_the_logits(head: Any, outputs: Any) -> bool:
            """The first fused step's check: the head applied to the last hidden state gives the model's own
            last-position logits (a model that scales or caps its logits in a way `fused_head` does not know of
            would not). If not, KD takes the full logits from then on."""
            with torch.no_grad():
                if getattr(outputs, "hidden_states", None) is not None:
                    last = outputs.hidden_states[-1][:, -1:]
                    mine = torch.nn.functional.linear(last.to(head.weight.dtype), head.weight, head.bias).float()
                    theirs = outputs.logits[:, -1:].float()
                    if mine.shape == theirs.shape and torch.allclose(mine, theirs, rtol=1e-2, atol=1e-2):
                        return True
            logger.warning("train.loss kd: the student's LM head applied to its last hidden state does not give "
                           "its logits; the KD loss takes the full logits (more memory)")
            return False

    return KDTrainer
