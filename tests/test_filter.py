"""The filter's logic on hand-made rationales (the stage itself runs on real generations in test_pipeline)."""

from cotdistill.config import FilterConfig
from cotdistill.filter import filter_samples
from cotdistill.records import Sample


def sample(qid, index, rationale, finish="stop", gold="12"):
    return Sample(question_id=qid, sample_index=index, question="q", gold_answer=gold, choices=None,
                  prompt_messages=[], prompt_text="", rationale=rationale, finish_reason=finish, prompt_tokens=1,
                  completion_tokens=1, teacher="t", sampling={}, seed=0, run_id="r")


def reasons(samples):
    return [(s.sample_index, s.filter_reason) for s in samples]


def test_each_reason():
    samples = [
        sample("a", 0, "3 * 4 = 12. The answer is 12"),
        sample("a", 1, "3 * 4 = 12.   The answer is\n12"),  # the same after whitespace normalisation
        sample("a", 2, "The answer is 13"),
        sample("a", 3, "I am not sure"),
        sample("a", 4, "3 * 4 = 12 and then", finish="length"),
        sample("a", 5, "   "),
        sample("a", 6, "The answer is 12. No, the answer is 11."),
        sample("a", 7, "4 * 3 = 12, so the answer is 12"),
    ]
    judged = list(filter_samples(samples, FilterConfig(), seed=0))
    assert reasons(judged) == [(0, None), (1, "duplicate"), (2, "wrong"), (3, "unparseable"), (4, "truncated"),
                               (5, "empty"), (6, "ambiguous"), (7, None)]
    assert judged[0].extracted_answer == "12" and judged[0].is_correct
    assert judged[2].extracted_answer == "13" and judged[2].is_correct is False


def test_max_per_question_is_a_seeded_uniform_draw():
    samples = [sample("a", i, f"Step {i}: the answer is 12") for i in range(10)]
    cfg = FilterConfig(max_per_question=3)
    first = [s.sample_index for s in filter_samples(samples, cfg, seed=0) if s.filter_reason is None]
    again = [s.sample_index for s in filter_samples(samples, cfg, seed=0) if s.filter_reason is None]
    assert len(first) == 3 and first == again
    draws = {tuple(s.sample_index for s in filter_samples(samples, cfg, seed=k) if s.filter_reason is None)
             for k in range(20)}
    assert len(draws) > 5  # not always the first three
    assert all(s.filter_reason in (None, "over_max_per_question") for s in filter_samples(samples, cfg, seed=0))


def test_questions_are_judged_separately():
    samples = [sample("a", 0, "The answer is 12"), sample("b", 0, "The answer is 12"),
               sample("b", 1, "The answer is 12")]
    assert reasons(filter_samples(samples, FilterConfig(), seed=0)) == [(0, None), (0, None), (1, "duplicate")]
