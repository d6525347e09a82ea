"""The models of benchmarks/distill_quality.py, built offline: a teacher that has learnt the wordsteps task from
program-written rationales, and an untrained student of the same vocabulary.

    resolve_model("wordsteps-teacher")        # built once into the cache (10-30 minutes on 2 cores), then loaded
    python -m cotdistill.models.wordsteps teacher|student DIR

Both are Llamas with one byte-level BPE tokenizer trained on the task's text, digits split one by one (arithmetic
is learnt digit by digit), and a ChatML template. The teacher (4 layers, hidden 128) is trained on
questions.wordsteps' `pretrain` split, each question answered by a worked rationale in phrasings drawn at random,
so that at temperature 1 it writes varied rationales, mostly right, sometimes wrong, as a teacher does. The student
(2 layers, hidden 128) is the same tokenizer with random weights: everything it knows of the task it learns from
the corpus the pipeline makes. Neither sees a question of the `train`, `validation` or `test` splits while built.
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

WORDSTEPS_VERSION = 2  # part of the models' fingerprints: bump when a recipe below changes what is built
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# 4 layers of 128 (0.9M parameters): 4 x 256 (3.5M) trained at 1.7 s a step on 2 busy cores, far over the hour the
# benchmark may take; this one at 0.5-1.8 s. Measured on wordsteps' validation split, greedy: 7% after this recipe's
# schedule at 400 steps; continued (two more cosine cycles of 300 steps from lr 1.5e-3, a pilot, not this recipe)
# 15% after 700 and 41% after 1,000 (73% of depth 1, 17% of depth 4; 27% of samples right at temperature 1).
# This recipe's single 1,000-step cosine cycle: 79.3% greedy [74.7, 83.7] on validation, built in 9 minutes on 2
# cores (benchmarks/distill_quality.py --validation).
TEACHER = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4}
STUDENT = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4}


def build_tokenizer(seed: int = 0):
    """A byte-level BPE of 512 tokens trained on the task's questions and rationales, digits one token each."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from cotdistill.questions.wordsteps import make_problem, worked_rationale

    rng = random.Random(seed + 1)
    texts = []
    for i in range(4000):
        problem = make_problem(rng, depth=i % 4 + 1)
        texts.append(f"{problem['question']}\n{worked_rationale(problem, rng)}")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<pad>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def new_model(tokenizer, sizes: dict, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), num_key_value_heads=sizes["num_attention_heads"], max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True, **sizes))


def save(model, tokenizer, target: str | Path) -> Path:
    from cotdistill.core.shards import write_dir_atomic

    write_dir_atomic(Path(target), lambda folder: (model.save_pretrained(folder), tokenizer.save_pretrained(folder)))
    return Path(target)


def build_teacher(target: str | Path, steps: int = 1000, batch_size: int = 32, seed: int = 0,
                  sizes: dict | None = None, problems: list[dict] | None = None) -> Path:
    """The teacher: trained on the pretrain split's worked rationales (a fresh phrasing each time a question comes
    round), with a cosine learning rate. `sizes` (default TEACHER) and `problems` (default the pretrain split) are
    for the benchmark's --smoke, which builds a tiny teacher on its own few questions in seconds."""
    import math

    import torch

    from cotdistill.models.tiny_thinker import train_steps
    from cotdistill.questions.wordsteps import SPLITS, make_splits, worked_rationale

    tokenizer = build_tokenizer(seed)
    model = new_model(tokenizer, sizes or TEACHER, seed)
    if problems is None:
        problems = make_splits(seed, SPLITS)["pretrain"]
    rng = random.Random(seed)
    # The chat template's text for one user message (CHATML_TEMPLATE), tokenized in batches: fast.
    prompts = tokenizer([f"<|im_start|>user\n{p['question']}<|im_end|>\n<|im_start|>assistant\n" for p in problems],
                        add_special_tokens=False)["input_ids"]
    examples = []
    for _ in range(max(1, steps * batch_size // len(problems) + 1)):  # each pass a new phrasing of every question
        answers = tokenizer([worked_rationale(p, rng) + "<|im_end|>" for p in problems],
                            add_special_tokens=False)["input_ids"]
        examples += [(prompt + answer, len(prompt)) for prompt, answer in zip(prompts, answers)]
    rng.shuffle(examples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    warmup = min(100, max(1, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this small, one thread is fastest: two on 2 busy cores are 2-3x slower (measured)
    try:
        train_steps(model, optimizer, examples, steps, batch_size, tokenizer.pad_token_id, schedule=schedule,
                    name="wordsteps-teacher")
    finally:
        torch.set_num_threads(threads)
    return save(model, tokenizer, target)


def build_student(target: str | Path, seed: int = 0) -> Path:
    """The student: the task's tokenizer and random weights."""
    tokenizer = build_tokenizer(seed)
    return save(new_model(tokenizer, STUDENT, seed + 1), tokenizer, target)


# name -> (recipe version, builder): models.resolve_model builds them by name into the cache.
WORDSTEPS_MODELS = {"wordsteps-teacher": (WORDSTEPS_VERSION, build_teacher),
                    "wordsteps-student": (WORDSTEPS_VERSION, build_student)}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if len(sys.argv) != 3 or sys.argv[1] not in ("teacher", "student"):
        raise SystemExit("usage: python -m cotdistill.models.wordsteps teacher|student DIR")
    print((build_teacher if sys.argv[1] == "teacher" else build_student)(sys.argv[2]))
