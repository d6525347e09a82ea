"""A local engine's completions split into reasoning and answer, exactly as vLLM's server splits them.

    splitter = ReasoningSplitter("deepseek_r1", tokenizer, chat_template_kwargs, model_config)
    reasoning, answer, reasoning_tokens = splitter.split(request, text, token_ids)

`vllm serve --reasoning-parser NAME` builds, for every choice of a chat completion, a Parser from vLLM's
ParserManager with the request's chat template kwargs, gives it the prompt's token ids (a template may open the
think block in the prompt: the completion then holds only its end) and parses the finished text and token ids
(chat_completion/serving.py). This makes the same calls offline, so the shards of a local engine (backend vllm or
ray) hold `reasoning` and `rationale` as a served model's do; a test compares the two on the same model and
prompts. The text split by delimiters (the openai backend's completions endpoint) is `split_by_delimiters`.
"""

from __future__ import annotations

from typing import Any

from cotdistill.teachers.base import TeacherRequest


class ReasoningSplitter:
    def __init__(self, parser_name: str, tokenizer: Any, chat_template_kwargs: dict[str, Any] | None = None,
                 model_config: Any = None):
        from vllm.parser import ParserManager

        self.parser_cls = ParserManager.get_parser(reasoning_parser_name=parser_name, tokenizer=tokenizer)
        self.tokenizer, self.model_config = tokenizer, model_config
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        marks = self.parser_cls(tokenizer, None, chat_template_kwargs=self.chat_template_kwargs,
                                model_config=model_config).reasoning_parser
        start, end = getattr(marks, "reasoning_start_str", None), getattr(marks, "reasoning_end_str", None)
        # The token ids that open and close a reasoning block, to count its tokens (None: the parser counts).
        self.start_ids = tokenizer.encode(start, add_special_tokens=False) if start else []
        self.end_ids = tokenizer.encode(end, add_special_tokens=False) if end else None

    def split(self, request: TeacherRequest, text: str, token_ids: list[int]) -> tuple[str | None, str, int]:
        """(reasoning or None, answer, reasoning tokens) of one finished completion of `request`: the tokens of
        the reasoning the answer follows, its tags left out (budget forcing keeps them at most the budget)."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        chat = ChatCompletionRequest(model="local", messages=request.messages,
                                     chat_template_kwargs=self.chat_template_kwargs or None)
        kwargs = chat.build_chat_params(None, "auto").chat_template_kwargs  # what the server's parser is given
        parser = self.parser_cls(self.tokenizer, None, chat_template_kwargs=kwargs, model_config=self.model_config)
        if request.prompt_token_ids is not None:
            parser.set_prompt_token_ids(request.prompt_token_ids)
        reasoning, content, _ = parser.parse(text, chat, enable_auto_tools=False, model_output_token_ids=token_ids)
        # As the openai backend reads a served reply: no reasoning is None, no answer is "".
        if not reasoning:
            return None, content or "", 0
        if self.end_ids is None:
            return reasoning, content or "", parser.count_reasoning_tokens(token_ids)
        return reasoning, content or "", block_tokens(token_ids, self.start_ids, self.end_ids)

    def tokens_opened_in_prompt(self, prompt_token_ids: list[int] | None) -> int:
        """Tokens of a reasoning block the prompt opens and leaves open (after R1-style `<think>\n`): vLLM's
        thinking_token_budget counts them against the budget, so whether the budget was hit counts them too."""
        if not prompt_token_ids or not self.start_ids or not self.end_ids:
            return 0
        opening, closing = last_index(prompt_token_ids, self.start_ids), last_index(prompt_token_ids, self.end_ids)
        return len(prompt_token_ids) - opening - len(self.start_ids) if opening > closing else 0


def last_index(ids: list[int], sequence: list[int]) -> int:
    """Where `sequence` last starts in `ids`, or -1."""
    for i in range(len(ids) - len(sequence), -1, -1):
        if ids[i:i + len(sequence)] == sequence:
            return i
    return -1


def find(ids: list[int], sequence: list[int], start: int = 0) -> int:
    """Where `sequence` first starts in `ids` at or after `start`, or -1."""
    for i in range(start, len(ids) - len(sequence) + 1):
        if ids[i:i + len(sequence)] == sequence:
            return i
    return -1


def block_tokens(token_ids: list[int], start_ids: list[int], end_ids: list[int]) -> int:
    """Tokens inside the first reasoning block: after its opening (when the completion holds it; a template may
    open it in the prompt) up to its closing, or to the end when it never closes."""
    opening = find(token_ids, start_ids) if start_ids else -1
    first = opening + len(start_ids) if opening >= 0 else 0
    closing = find(token_ids, end_ids, first)
    return (closing if closing >= 0 else len(token_ids)) - first


def split_by_delimiters(text: str, delimiters: tuple[str, str]) -> tuple[str | None, str]:
    """(reasoning or None, answer) of a completion whose reasoning is marked by `delimiters` in the text, split as
    vLLM's think parsers split it: the reasoning ends at the first closing delimiter (its opening, if there, left
    out), and the answer is all after it; a block that never closes is all reasoning; a text with neither
    delimiter is all answer."""
    start, end = delimiters
    close = text.find(end)
    if close < 0:
        return (text.split(start, 1)[1], "") if start in text else (None, text)
    reasoning = text[:close]
    return reasoning.split(start, 1)[1] if start in reasoning else reasoning, text[close + len(end):]
