"""Small models that the demos and tests build offline, in seconds: a tiny Llama that thinks before it answers.

    resolve_model("tiny-thinker")                     # built once into the cache, then loaded from there
    python -m cotdistill.models.tiny_thinker DIR              # the same model, written to DIR

SmolLM2's tokenizer has no think tokens, and vLLM's reasoning parsers need them, so a thinking teacher or student
on CPU has to be built. tiny-thinker is a 2-layer Llama (hidden 128, heads of 32: vLLM's CPU attention refuses
smaller ones) with a byte-level BPE tokenizer trained on arithmetic problems made like the project's own
(questions/arithmetic.make_problem), whose vocabulary holds `<think>` and `</think>` as single tokens (added, not special, so
decoded text keeps them, as DeepSeek-R1's and Qwen3's do), and a ChatML chat template with two switches (below).
It is trained for a few seconds to answer as "<think>\\n{the worked step}\\n</think>\\n\\nThe answer is N." It
learns the format and some of the arithmetic: enough for vLLM's parser to split its completions, for the filter to
find right and wrong answers, and for a student to learn think blocks from it.
"""

from __future__ import annotations

import logging
import random
import re
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

THINKER_VERSION = 2  # part of the model's fingerprint: bump when the recipe below changes what is built
# ChatML with two switches: Qwen3's `enable_thinking: false` (an empty think block in the generation prompt), and
# `open_thinking: true`, as DeepSeek-R1's distills do (the prompt opens the block: the completion holds only its
# end).
CHATML_THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% elif open_thinking is defined and open_thinking %}<think>\n{% endif %}{% endif %}"
)


def thinking_answer(problem: dict[str, str]) -> str:
    """A problem's worked answer as the thinker writes it: the step inside the think block, then the answer."""
    steps, final = problem["answer"].rsplit("####", 1)
    steps = re.sub(r"<<[^>]*>>", "", steps).strip()
    return f"<think>\n{steps}\n</think>\n\nThe answer is {final.strip()}."


def build_tiny_thinker(target: str | Path, problems: int = 2000, steps: int = 300, seed: int = 0) -> Path:
    """Build tiny-thinker into `target` (written to a temporary folder, then renamed): about 20 s on 2 cores."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from cotdistill.questions.arithmetic import make_problem
    from cotdistill.core.shards import write_dir_atomic

    target = Path(target)
    rng = random.Random(seed)
    data = [make_problem(rng) for _ in range(problems)]
    texts = [f"{p['question']}\n{thinking_answer(p)}" for p in data]

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<pad>", unk_token="<|endoftext|>")
    tokenizer.add_tokens(["<think>", "</think>"])  # single tokens, kept in decoded text
    tokenizer.chat_template = CHATML_THINKING_TEMPLATE

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True))
    examples = []
    for i, p in enumerate(data):
        # One in eight without thinking (the generation prompt then holds the empty think block), one in eight with
        # the block opened by the prompt; the rest think from the start.
        switches = [{"enable_thinking": False}, {"open_thinking": True}][i % 8] if i % 8 < 2 else {}
        messages = [{"role": "user", "content": p["question"]}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **switches)
        answer = thinking_answer(p)
        if switches:  # what the prompt already holds is not the answer's
            answer = answer.split("</think>\n\n" if "enable_thinking" in switches else "<think>\n", 1)[1]
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        examples.append((prompt_ids + answer_ids, len(prompt_ids)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    batch_size = 16
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this small, one thread is fastest, and several on a busy machine are much slower
    try:
        train_steps(model, optimizer, examples, steps, batch_size, tokenizer.pad_token_id)
    finally:
        torch.set_num_threads(threads)

    write_dir_atomic(target, lambda folder: (model.save_pretrained(folder), tokenizer.save_pretrained(folder)))
    return target


def train_steps(model, optimizer, examples: list[tuple[list[int], int]], steps: int, batch_size: int,
                pad_id: int, schedule=None, name: str = "tiny-thinker") -> None:
    """Plain torch: next-token loss on the answer tokens (the prompt masked), batches taken in turn; `schedule`, a
    learning-rate scheduler stepped after each step."""
    import torch

    for step in range(steps):
        batch = [examples[(step * batch_size + j) % len(examples)] for j in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((batch_size, width), pad_id)
        labels = torch.full((batch_size, width), -100)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        for row, (ids, start) in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            labels[row, start:len(ids)] = torch.tensor(ids[start:])
            attention[row, :len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if schedule is not None:
            schedule.step()
        if step % 100 == 0 or step == steps - 1:
            logger.info("%s: step %d of %d, loss %.3f", name, step + 1, steps, loss.item())


# name -> (recipe version, builder): models.resolve_model builds them by name into the cache.
BUILT_MODELS = {"tiny-thinker": (THINKER_VERSION, build_tiny_thinker)}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m cotdistill.models.tiny_thinker DIR")
    print(build_tiny_thinker(sys.argv[1]))
