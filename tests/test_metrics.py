"""maj@k, pass@k, tie credit and the bootstrap against hand-computed cases."""

import itertools

import pytest

from cotdistill.stages.evaluate.metrics import agreement, bootstrap_ci, expected_maj_at_k, majority_vote, pass_at_k


def maj(answers, gold, k, **kw):
    return expected_maj_at_k(answers, [a == gold for a in answers], k, **kw)


def test_maj_at_k_by_hand():
    answers = ["A", "A", "B"]
    assert maj(answers, "A", 1) == pytest.approx(2 / 3)
    # pairs: {A,A} -> 1, {A,B} -> tie 1/2, {A,B} -> 1/2
    assert maj(answers, "A", 2) == pytest.approx(2 / 3)
    assert maj(answers, "A", 3) == pytest.approx(1.0)
    assert maj(answers, "B", 3) == 0.0
    assert maj(answers, "B", 2) == pytest.approx(1 / 3)  # only the two ties give 1/2 each


def test_unparseable_answers_do_not_vote():
    answers = ["A", None, "B", "B"]
    assert maj(answers, "A", 1) == pytest.approx(1 / 4)
    # 6 pairs: {A,N} 1, {A,B} 1/2 twice, {N,B} 0 twice, {B,B} 0
    assert maj(answers, "A", 2) == pytest.approx(2 / 6)
    assert maj(["A", None, None], "A", 2) == pytest.approx(2 / 3)  # {N,N} has no vote and scores 0


def test_all_unparseable_scores_zero():
    for k in (1, 2, 3):
        assert maj([None, None, None], "A", k) == 0.0


def test_tie_credit_is_one_over_t():
    assert maj(["A", "B"], "A", 2) == pytest.approx(0.5)
    assert maj(["A", "B", "C"], "C", 3) == pytest.approx(1 / 3)


def test_sampled_maj_at_k_is_seeded_and_close_to_exact():
    answers = ["A"] * 7 + ["B"] * 6 + ["C"] * 4 + [None] * 3
    k = 9  # C(20, 9) = 167,960 subsets: drawn, not enumerated
    exact = sum(
        _score([answers[i] for i in subset], "A") for subset in itertools.combinations(range(20), k)
    ) / 167960
    sampled = maj(answers, "A", k, seed=3)
    assert sampled == maj(answers, "A", k, seed=3)
    assert sampled == pytest.approx(exact, abs=0.04)


def _score(chosen, gold):
    votes = [a for a in chosen if a is not None]
    if not votes:
        return 0.0
    counts = {a: votes.count(a) for a in set(votes)}
    top = max(counts.values())
    tied = [a for a, c in counts.items() if c == top]
    return 1 / len(tied) if gold in tied else 0.0


def test_bad_k():
    with pytest.raises(ValueError):
        maj(["A"], "A", 2)


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)


def test_bootstrap_ci():
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    low, high = bootstrap_ci([0.0, 1.0] * 50, seed=1)
    assert low < 0.5 < high and 0.15 < high - low < 0.25  # about +-1.96 * 0.05
    assert bootstrap_ci([0.0, 1.0] * 50, seed=1) == (low, high)
    assert bootstrap_ci([]) == (0.0, 0.0)


def test_majority_vote_and_agreement():
    assert majority_vote(["B", "A", None, "A"]) == ("A", [("A", 2), ("B", 1)])
    assert majority_vote(["B", "A"])[0] == "B"  # a recorded tie goes to the first seen
    assert majority_vote([None]) == (None, [])
    assert agreement(["1", "2", None], ["1", "3", None]) == pytest.approx(1 / 3)


def test_equivalent_answers_are_one_vote_in_evaluate():
    # \frac{1}{2}, 0.5 and \dfrac12 are one answer with 3 votes against 1/3's 2: the vote, and maj@k recomputed
    # from the stored answers, both see one answer.
    from cotdistill.verify.answers import get_answer_format
    from cotdistill.stages.evaluate.scoring import score_row
    from cotdistill.core.records import Question
    from cotdistill.teachers.base import Completion

    fmt = get_answer_format("math")
    texts = ["The answer is $\\frac{1}{3}$", "The answer is $\\frac{1}{2}$", "The answer is $0.5$",
             "So the answer is $\\frac{1}{3}$", "The answer is $\\dfrac12$"]
    row = score_row({}, Question("q", "half?", "\\frac{1}{2}"), [Completion(t, "stop", 2) for t in texts], fmt)
    assert row["voted_answer"] == "\\frac{1}{2}" and row["voted_correct"]
    assert row["votes"] == [{"answer": "\\frac{1}{2}", "count": 3}, {"answer": "\\frac{1}{3}", "count": 2}]
    assert len(set(a for a in row["sample_answers"])) == 2
    assert expected_maj_at_k(row["sample_answers"], row["sample_correct"], 5) == 1.0
