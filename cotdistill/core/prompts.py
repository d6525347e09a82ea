"""jinja2 templates in prompts/ -> chat messages.

    messages = PromptTemplate("math_few_shot_cot.jinja", examples).render(question=q, choices=None)

A template writes its turns with call blocks, so a prompt reads like the conversation it produces:

    {% call message("system") %}You are a careful math tutor.{% endcall %}
    {% call message("user") %}{{ question }}{% endcall %}

Variables: `question`, `choices` (list or None), `letters` (A, B, ...), and `examples` (few-shot examples read
from the JSONL file named in the config). An undefined variable is an error, never an empty string, and a
template can refuse its input with `{{ fail("why") }}`.

Templates render in jinja2's immutable sandbox, as Hugging Face chat templates do: a template (or a question
that reaches one) cannot touch Python internals such as `''.__class__.__mro__`, nor mutate what it is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
ROLES = ("system", "user", "assistant")


class PromptError(ValueError):
    pass


def resolve_prompt_path(name: str) -> Path:
    """A path as given, else a file of that name in the project's prompts/ folder."""
    path = Path(name)
    if path.is_file():
        return path
    if (PROMPTS_DIR / name).is_file():
        return PROMPTS_DIR / name
    known = sorted(p.name for p in PROMPTS_DIR.glob("*.jinja"))
    raise PromptError(f"prompt template {name!r} not found (in {PROMPTS_DIR}: {', '.join(known)})")


def load_examples(path: str | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    if not Path(path).is_file():
        raise PromptError(f"{path}: no such few-shot examples file")
    examples = []
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PromptError(f"{path}: line {line_number}: not valid UTF-8 at column {e.start + 1}") from None
            if not line.strip():
                continue
            try:
                examples.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise PromptError(f"{path}: line {line_number}: not valid JSON: {e.msg}") from None
            if not isinstance(examples[-1], dict):
                raise PromptError(f"{path}: line {line_number}: expected a JSON object")
    if not examples:
        raise PromptError(f"{path}: no few-shot examples in the file")
    return examples


class PromptTemplate:
    """One template file; `render(question=..., choices=...)` returns chat messages."""

    def __init__(self, name: str, examples_path: str | None = None):
        self.path = resolve_prompt_path(name)
        self.examples = load_examples(examples_path)
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.path.parent)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        try:
            self.template = env.get_template(self.path.name)
        except jinja2.TemplateSyntaxError as e:
            raise PromptError(f"{self.path}: line {e.lineno}: {e.message}") from None
        except UnicodeDecodeError:
            raise PromptError(f"{self.path}: not valid UTF-8") from None

    def render(self, question: str, choices: list[str] | None = None, **extra: Any) -> list[dict[str, str]]:
        messages: list[dict[str, str]] = []

        def message(role: str, caller) -> str:  # jinja2 passes the block body as `caller`
            if role not in ROLES:
                raise PromptError(f"{self.path}: unknown role {role!r} (use one of {', '.join(ROLES)})")
            messages.append({"role": role, "content": caller().strip()})
            return ""

        def fail(reason: str) -> None:  # lets a template refuse input it cannot use
            raise PromptError(f"{self.path}: {reason}")

        letters = [chr(ord("A") + i) for i in range(len(choices or []))]
        try:
            self.template.render(
                message=message, fail=fail, question=question, choices=choices, letters=letters,
                examples=self.examples, **extra,
            )
        except jinja2.UndefinedError as e:
            raise PromptError(f"{self.path}: {e.message}") from None
        except jinja2.sandbox.SecurityError as e:
            raise PromptError(f"{self.path}: refused by the template sandbox: {e}") from None
        if not messages or messages[-1]["role"] != "user":
            raise PromptError(f"{self.path}: a prompt must end with a user message")
        return messages
