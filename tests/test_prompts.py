import pytest

from cotdistill.core.prompts import PromptError, PromptTemplate

REPO_FEWSHOT = "data/fewshot/arithmetic.jsonl"


def test_zero_shot_renders_system_and_user():
    messages = PromptTemplate("math_zero_shot_cot.jinja").render(question="What is 2 + 3?")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"].startswith("What is 2 + 3?")
    assert "The answer is N" in messages[1]["content"]


def test_few_shot_renders_examples_as_turns():
    from tests.conftest import REPO

    template = PromptTemplate("math_few_shot_cot.jinja", str(REPO / REPO_FEWSHOT))
    messages = template.render(question="What is 2 + 3?")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 4 + ["user"]
    assert messages[2]["content"].endswith("The answer is 84")
    assert messages[-1]["content"] == "What is 2 + 3?"


def test_multiple_choice_letters_the_options():
    messages = PromptTemplate("multiple_choice_cot.jinja").render(question="Pick one", choices=["red", "blue"])
    assert "(A) red\n(B) blue" in messages[-1]["content"]


def test_student_prompt_is_the_bare_question():
    assert PromptTemplate("student_question.jinja").render(question=" Q? ".strip()) == [{"role": "user", "content": "Q?"}]


def test_undefined_variable_is_an_error(tmp_path):
    path = tmp_path / "bad.jinja"
    path.write_text('{% call message("user") %}{{ question }} {{ hint }}{% endcall %}')
    with pytest.raises(PromptError, match=r"bad.jinja: 'hint' is undefined"):
        PromptTemplate(str(path)).render(question="q")


def test_templates_refuse_missing_examples_or_choices():
    with pytest.raises(PromptError, match="needs few-shot examples: set generate.examples"):
        PromptTemplate("math_few_shot_cot.jinja", None).render(question="q")
    with pytest.raises(PromptError, match="needs choices"):
        PromptTemplate("multiple_choice_cot.jinja").render(question="q")


def test_unknown_template_lists_known_ones():
    with pytest.raises(PromptError, match="math_zero_shot_cot.jinja"):
        PromptTemplate("nope.jinja")


def test_bad_role_and_syntax(tmp_path):
    bad_role = tmp_path / "role.jinja"
    bad_role.write_text('{% call message("robot") %}x{% endcall %}')
    with pytest.raises(PromptError, match="unknown role 'robot'"):
        PromptTemplate(str(bad_role)).render(question="q")
    bad_syntax = tmp_path / "syntax.jinja"
    bad_syntax.write_text("{% call message('user') %}x")
    with pytest.raises(PromptError, match="syntax.jinja: line 1"):
        PromptTemplate(str(bad_syntax))


def test_malformed_examples_file(tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text('{"question": "a", "rationale": "b"}\n{oops\n')
    with pytest.raises(PromptError, match=r"ex.jsonl: line 2: not valid JSON"):
        PromptTemplate("math_few_shot_cot.jinja", str(path))
