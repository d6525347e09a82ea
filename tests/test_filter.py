"""The filter: its logic on hand-made rationales where the right verdict is known, then the stage on real
generations (the session's `pipeline`, the parrot on the engine)."""

import shutil

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cotdistill.config.load import load_config
from cotdistill.config.sections import FilterConfig
from cotdistill.core.paths import RunPaths
from cotdistill.core.records import FILTERED_SCHEMA
from cotdistill.core.records import SAMPLE_SCHEMA, Sample, samples_to_table
from cotdistill.core.shards import read_json, read_shards, write_parquet_atomic
from cotdistill.stages import filter as filter_stage
from cotdistill.stages.filter.checks import build_contamination_index, is_degenerate, repeated_ngram_share
from cotdistill.stages.filter.dedup import near_duplicate_flags
from cotdistill.stages.filter.phases import REASONS
from cotdistill.stages.filter.phases import FilterContext, judge_table
from cotdistill.verify.answers import get_answer_format


def sample(qid, index, rationale, finish="stop", gold="12", question="What is 3 times 4?"):
    return Sample(question_id=qid, sample_index=index, question=question, gold_answer=gold, choices=None,
                  prompt_messages=[], prompt_text="", rationale=rationale, finish_reason=finish, prompt_tokens=1,
                  completion_tokens=1, teacher="t", sampling={}, seed=0, run_id="r")


def context(**settings):
    cfg = FilterConfig(**settings)
    return FilterContext(cfg=cfg, fmt=get_answer_format(cfg.answer_format), seed=0)


def judge(samples, ctx):
    """Judged as the stage judges a shard (judge_table over its table), back as Sample records."""
    return [Sample(**row) for row in judge_table(samples_to_table(samples, SAMPLE_SCHEMA), ctx).to_pylist()]


def verdicts(samples, ctx):
    return [(s.sample_index, s.filter_reason) for s in judge(samples, ctx)]


LOOP = "then I add 4 again and " * 30


def test_each_reason_in_gold_mode():
    samples = [
        sample("a", 0, "3 * 4 = 12. The answer is 12"),
        sample("a", 1, "3 * 4 = 12.   The answer is\n12"),  # the same after whitespace normalisation
        sample("a", 2, "The answer is 13"),
        sample("a", 3, "I am not sure"),
        sample("a", 4, "3 * 4 = 12 and then", finish="length"),
        sample("a", 5, "   "),
        sample("a", 6, "The answer is 12. No, the answer is 11."),
        sample("a", 7, "Four threes make twelve, so the answer is 12"),
        sample("a", 8, LOOP + "The answer is 12"),
    ]
    judged = judge(samples, context())
    assert [(s.sample_index, s.filter_reason) for s in judged] == [
        (0, None), (1, "duplicate"), (2, "wrong"), (3, "unparseable"), (4, "truncated"), (5, "empty"),
        (6, "ambiguous"), (7, None), (8, "degenerate")]
    assert judged[0].extracted_answer == "12" and judged[0].is_correct
    assert judged[2].extracted_answer == "13" and judged[2].is_correct is False
    assert judged[4].extracted_answer == "12"  # the answer is still recorded on a rejected row


def test_max_per_question_is_a_seeded_uniform_draw():
    samples = [sample("a", i, f"Step {i}: we set aside {i} apples, so the answer is 12") for i in range(10)]
    ctx = context(max_per_question=3, near_duplicates=False)
    first = [i for i, why in verdicts(samples, ctx) if why is None]
    assert len(first) == 3 and first == [i for i, why in verdicts(samples, ctx) if why is None]
    draws = set()
    for seed in range(40):
        ctx.seed = seed
        draws.add(tuple(i for i, why in verdicts(samples, ctx) if why is None))
    assert len(draws) > 20  # uniform over 120 subsets: many distinct draws, not the first three
    counts = [sum(i in d for d in draws) for i in range(10)]
    assert min(counts) > 0  # every rationale can be drawn


def test_min_per_question_drops_thin_questions():
    samples = [sample("a", 0, "The answer is 12"), sample("a", 1, "The answer is 13"),
               sample("b", 0, "The answer is 12"), sample("b", 1, "So 6 + 6 makes the answer 12")]
    assert verdicts(samples, context(min_per_question=2)) == [
        (0, "under_min_per_question"), (1, "wrong"), (0, None), (1, None)]


def test_questions_are_judged_separately():
    samples = [sample("a", 0, "The answer is 12"), sample("b", 0, "The answer is 12"),
               sample("b", 1, "The answer is 12")]
    assert verdicts(samples, context()) == [(0, None), (0, None), (1, "duplicate")]


def test_near_duplicates_keep_the_lowest_index():
    base = ("Each box holds three apples and there are four boxes on the table so we multiply three by four "
            "to get the total number of apples which gives twelve apples in all. The answer is 12")
    close = base.replace("on the table", "on the big table")  # one word added: Jaccard well above 0.8
    other = "Four groups of three: 3 + 3 + 3 + 3 = 12. The answer is 12"
    samples = [sample("a", 2, close), sample("a", 0, base), sample("a", 1, other)]
    assert sorted(verdicts(samples, context())) == [(0, None), (1, None), (2, "near_duplicate")]
    assert sorted(verdicts(samples, context(near_duplicates=False))) == [(0, None), (1, None), (2, None)]


def test_near_duplicate_flags_threshold():
    words = [f"w{i}" for i in range(100)]
    a = " ".join(words)
    b = " ".join(words[:95] + [f"x{i}" for i in range(5)])  # 3-gram Jaccard ~0.88
    c = " ".join(words[:50] + [f"y{i}" for i in range(50)])  # ~0.33
    assert near_duplicate_flags([a, b, c], 0.8, 3, 128) == [False, True, False]
    assert near_duplicate_flags([a, b], 0.95, 3, 128) == [False, False]


def test_majority_mode_uses_the_teachers_majority_as_label():
    # No gold: 3 of 4 parsed answers say 12, so 12 is the label.
    samples = [sample("a", 0, "The answer is 12", gold=None), sample("a", 1, "So, the answer is 12", gold=None),
               sample("a", 2, "The answer is 15", gold=None), sample("a", 3, "Thus the answer is 12", gold=None),
               sample("a", 4, "no idea", gold=None)]
    judged = judge(samples, context(label="majority"))
    assert [(s.sample_index, s.filter_reason) for s in judged] == [
        (0, None), (1, None), (2, "wrong"), (3, None), (4, "unparseable")]
    assert judged[0].is_correct is None  # no gold to compare with


def test_majority_mode_drops_a_question_without_a_clear_winner():
    samples = [sample("a", 0, "The answer is 1", gold=None), sample("a", 1, "The answer is 2", gold=None),
               sample("a", 2, "The answer is 3", gold=None), sample("a", 3, "The answer is 1!", gold=None)]
    assert verdicts(samples, context(label="majority", majority_min_share=0.6)) == [
        (0, "no_majority"), (1, "no_majority"), (2, "no_majority"), (3, "no_majority")]
    # 2 of 4 = 0.5 share passes a 0.5 threshold: the majority answer 1 is kept, the others are wrong.
    assert verdicts(samples, context(label="majority", majority_min_share=0.5)) == [
        (0, None), (1, "wrong"), (2, "wrong"), (3, None)]


def test_majority_mode_a_tie_for_first_place_is_no_majority():
    # 2 votes for 1, 2 for 2: at the default share of 0.5 each passes the threshold, but neither won.
    samples = [sample("a", 0, "The answer is 1", gold=None), sample("a", 1, "The answer is 2", gold=None),
               sample("a", 2, "So the answer is 1", gold=None), sample("a", 3, "So the answer is 2", gold=None)]
    assert verdicts(samples, context(label="majority")) == [
        (0, "no_majority"), (1, "no_majority"), (2, "no_majority"), (3, "no_majority")]


def test_majority_label_is_voted_before_the_student_side_checks():
    # Three long rationales say 12, two short ones say 15. The student can only train on the short ones, but
    # the teacher's label is still 12: the short ones are wrong, never promoted to the label.
    long_text = " ".join(f"step{j} adds {j} apples," for j in range(12)) + " "
    samples = [sample("a", i, long_text + f"Step {i}. The answer is 12", gold=None) for i in range(3)]
    samples += [sample("a", 3, "The answer is 15", gold=None), sample("a", 4, "Quickly: the answer is 15", gold=None)]
    samples.append(sample("a", 5, LOOP + "The answer is 12", gold=None))  # degenerate, but it still votes
    ctx = context(label="majority", near_duplicates=False)
    ctx.count_student_tokens = lambda questions, rationales, choices: [len(r.split()) for r in rationales]
    ctx.max_student_tokens = 30
    assert verdicts(samples, ctx) == [
        (0, "too_long"), (1, "too_long"), (2, "too_long"), (3, "wrong"), (4, "wrong"), (5, "degenerate")]


def test_majority_mode_counts_equivalent_answers_as_one():
    # math format: \frac{1}{2}, 0.5 and \dfrac12 are one answer (3 votes) against 1/3 (2 votes).
    texts = ["The answer is $\\frac{1}{2}$", "The answer is $0.5$", "The answer is $\\dfrac12$",
             "The answer is $\\frac{1}{3}$", "Therefore the answer is $\\frac{1}{3}$"]
    samples = [sample("a", i, t, gold=None) for i, t in enumerate(texts)]
    assert verdicts(samples, context(label="majority", answer_format="math", near_duplicates=False)) == [
        (0, None), (1, None), (2, None), (3, "wrong"), (4, "wrong")]


def test_decontamination_hashes_are_64_bit():
    from cotdistill.stages.filter.checks import question_ngrams

    hashes = question_ngrams("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                             "clips in May. How many clips did Natalia sell altogether?", 13)
    assert len(hashes) > 5 and all(0 <= h < 2**64 for h in hashes)
    assert any(h >= 2**32 for h in hashes)  # crc32 never gets there: its collisions grow with the eval sets


def test_gold_mode_without_gold_is_an_error():
    with pytest.raises(ValueError, match="no gold answer; use filter.label: majority"):
        judge([sample("a", 0, "The answer is 1", gold=None)], context())


def test_decontamination_drops_questions_sharing_a_13_gram():
    eval_question = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
                     "muffins for her friends every day with four.")
    index = build_contamination_index([eval_question], 13)
    copied = "A farmer notes: she eats three for breakfast every morning and bakes muffins for her friends every day."
    fresh = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    ctx = context()
    ctx.contamination = index
    samples = [sample("a", 0, "The answer is 12", question=copied), sample("a", 1, "So the answer is 12", question=copied),
               sample("b", 0, "The answer is 12", question=fresh)]
    assert verdicts(samples, ctx) == [(0, "contaminated"), (1, "contaminated"), (0, None)]
    # 12 shared words are not enough at n = 13.
    twelve = "she eats three for breakfast every morning and bakes muffins for her"
    assert verdicts([sample("c", 0, "The answer is 12", question=twelve)], ctx) == [(0, None)]


def test_too_long_for_the_student():
    ctx = context()
    ctx.max_student_tokens = 10
    ctx.count_student_tokens = lambda qs, rs, cs: [len(r.split()) for r in rs]  # a word is a token here
    samples = [sample("a", 0, "The answer is 12"), sample("a", 1, "We see that three fours make " * 3 + "the answer is 12")]
    assert verdicts(samples, ctx) == [(0, None), (1, "too_long")]


def test_repeated_ngram_share_and_its_shortcut():
    assert repeated_ngram_share("the cat sat on the mat and looked at the dog", 4) == 0.0
    assert repeated_ngram_share("go on " * 50, 4) > 0.9
    texts = ["the cat sat on the mat and looked at the dog", "go on " * 50, "a b c d a b c d e f g h " * 3,
             "one two three four " * 2 + "five six seven eight nine ten"]
    for text in texts:
        for share in (0.1, 0.3, 0.5, 0.9):
            assert is_degenerate(text, 4, share) == (repeated_ngram_share(text, 4) > share), (text, share)


def test_every_reason_gets_examples_however_late_in_the_shard(tmp_path):
    from cotdistill.stages.filter import filter_shard
    from cotdistill.core.records import SAMPLE_SCHEMA, samples_to_table
    from cotdistill.core.shards import write_parquet_atomic

    samples = [sample(f"q{i}", 0, "The answer is 13") for i in range(2500)]  # all wrong
    samples.append(sample("last", 0, "no number at all"))  # the only unparseable one, at row 2501
    shard = tmp_path / "generate" / "00000.parquet"
    write_parquet_atomic(samples_to_table(samples, SAMPLE_SCHEMA), shard)
    meta = filter_shard(shard, RunPaths(tmp_path), "key", context())
    assert meta["rejected"] == {"wrong": 2500, "unparseable": 1}
    assert [e["question_id"] for e in meta["examples"]["unparseable"]] == ["last"]
    assert len(meta["examples"]["wrong"]) == 3


def test_too_long_counts_the_reasoning_the_student_will_train_on():
    # A short answer with a long reasoning kept apart: the student trains on both, so both are counted.
    import pyarrow as pa

    from cotdistill.stages.filter.phases import judge_table
    from cotdistill.core.records import SAMPLE_SCHEMA, samples_to_table

    rows = [sample("a", 0, "The answer is 12"), sample("a", 1, "So the answer is 12")]
    rows[1].reasoning = " ".join(f"step{j}" for j in range(40))
    ctx = context(near_duplicates=False)
    ctx.count_student_tokens = lambda questions, texts, choices: [len(t.split()) for t in texts]
    ctx.max_student_tokens = 30
    judged = judge_table(samples_to_table(rows, SAMPLE_SCHEMA), ctx)
    assert judged.column("filter_reason").to_pylist() == [None, "too_long"]
    assert isinstance(judged, pa.Table)


# --- label: none, pass rates and difficulty-aware selection (filter.difficulty) --------------------------------


def difficulty_context(**difficulty):
    from cotdistill.config.sections import DifficultyConfig

    ctx = context(near_duplicates=False)
    ctx.cfg.difficulty = DifficultyConfig(**difficulty)
    return ctx


def question_with(qid, right, wrong, truncated_right=0):
    """`right` distinct finished rationales reaching 12, `wrong` reaching 13, `truncated_right` cut off after 12."""
    rows = [sample(qid, i, f"Way {i}: three fours. The answer is 12") for i in range(right)]
    rows += [sample(qid, right + i, f"Way {i}: a slip. The answer is 13") for i in range(wrong)]
    rows += [sample(qid, right + wrong + i, f"Way {i}: 3 * 4 = 12 and then", finish="length")
             for i in range(truncated_right)]
    return rows


def test_label_none_keeps_wrong_answers_but_drops_truncated_degenerate_and_duplicates():
    samples = [
        sample("a", 0, "3 * 4 = 12. The answer is 12"),
        sample("a", 1, "The answer is 13"),  # wrong: kept, answers are not checked
        sample("a", 2, "I am not sure"),  # no answer: kept
        sample("a", 3, "The answer is 12. No, the answer is 11."),  # two answers: kept
        sample("a", 4, "3 * 4 = 12 and then", finish="length"),
        sample("a", 5, "   "),
        sample("a", 6, LOOP + "The answer is 12"),
        sample("a", 7, "The answer   is 13"),  # the same text as sample 1 after whitespace normalisation
        sample("b", 0, "Unlabelled: the answer is 5", gold=None),  # no gold needed either
    ]
    judged = judge(samples, context(label="none"))
    assert [(s.sample_index, s.filter_reason) for s in judged] == [
        (0, None), (1, None), (2, None), (3, None), (4, "truncated"), (5, "empty"), (6, "degenerate"),
        (7, "duplicate"), (0, None)]
    assert all(s.is_correct is None and s.pass_rate is None for s in judged)
    assert judged[1].extracted_answer == "13"  # still recorded, for the audit and the user


def test_label_none_still_drops_too_long_and_contaminated():
    ctx = context(label="none")
    ctx.max_student_tokens = 10
    ctx.count_student_tokens = lambda qs, rs, cs: [len(r.split()) for r in rs]
    ctx.contamination = build_contamination_index(["Tom has 3 apples and buys 4 more today"], 5)
    ctx.cfg.decontamination_ngram = 5
    long_text = " ".join(f"step{j}" for j in range(12)) + " so the answer is 13"
    samples = [sample("a", 0, "The answer is 13"), sample("a", 1, long_text),
               sample("b", 0, "The answer is 7", question="Tom has 3 apples and buys 4 more today. How many?")]
    assert verdicts(samples, ctx) == [(0, None), (1, "too_long"), (0, "contaminated")]


def test_pass_rate_counts_finished_rationales_reaching_the_label():
    from cotdistill.stages.filter.phases import judge_table
    from cotdistill.core.records import FILTERED_SCHEMA, SAMPLE_SCHEMA, samples_to_table

    rows = question_with("a", 2, 1, truncated_right=1)  # 2 of 4: the truncated 12 never finished
    rows += question_with("b", 3, 0) + question_with("c", 0, 5)
    judged = judge_table(samples_to_table(rows, SAMPLE_SCHEMA), context(near_duplicates=False))
    assert judged.schema.equals(FILTERED_SCHEMA)
    rates = dict(zip(judged.column("question_id").to_pylist(), judged.column("pass_rate").to_pylist()))
    assert rates == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert judged.column("is_correct").to_pylist()[3] is True  # the truncated row's 12 is still recorded
    assert len(set(zip(judged.column("question_id").to_pylist(), judged.column("pass_rate").to_pylist()))) == 3

    # majority: votes for the majority answer over all rationales (the unparseable one is sampled, not a vote);
    # no majority and contamination leave no label, so no pass rate.
    texts = ["The answer is 12", "So the answer is 12", "Thus the answer is 12", "The answer is 15", "no idea"]
    tied = ["The answer is 1", "The answer is 2"]
    rows = [sample("m", i, t, gold=None) for i, t in enumerate(texts)]
    rows += [sample("t", i, t, gold=None) for i, t in enumerate(tied)]
    judged = judge(rows, context(label="majority", near_duplicates=False))
    assert [s.pass_rate for s in judged] == [0.6] * 5 + [None] * 2
    ctx = context()
    ctx.contamination = build_contamination_index(["What is 3 times 4?"], 13)
    assert [s.pass_rate for s in judge(question_with("x", 2, 0), ctx)] == [None, None]


def test_difficulty_band_drops_too_easy_and_too_hard_questions_whole():
    samples = (question_with("easy", 4, 0)  # pass rate 1.0
               + question_with("hard", 1, 4, truncated_right=1)  # 1 of 6
               + question_with("mid", 2, 2)  # 0.5
               + question_with("edge", 3, 1))  # 0.75, exactly the upper bound: kept
    judged = judge(samples, difficulty_context(min_pass_rate=0.25, max_pass_rate=0.75))
    by_question: dict = {}
    for s in judged:
        by_question.setdefault(s.question_id, []).append(s.filter_reason)
    assert by_question == {
        "easy": ["too_easy"] * 4,
        "hard": ["too_hard"] * 6,  # every rationale, the truncated and the right one too
        "mid": [None, None, "wrong", "wrong"],
        "edge": [None, None, None, "wrong"],
    }
    rates = {s.question_id: s.pass_rate for s in judged}
    assert rates == {"easy": 1.0, "hard": 1 / 6, "mid": 0.5, "edge": 0.75}
    # Without a difficulty setting nothing is out of band.
    assert "too_easy" not in {why for _, why in verdicts(samples, context(near_duplicates=False))}


def test_difficulty_band_in_majority_mode():
    # 4 of 4 agree: pass rate 1.0, too easy under max 0.9; 3 of 5 agree: 0.6, kept.
    agree = [sample("a", i, f"Route {i}: the answer is 12", gold=None) for i in range(4)]
    split = [sample("b", i, f"Route {i}: the answer is {12 if i < 3 else 15}", gold=None) for i in range(5)]
    ctx = difficulty_context(max_pass_rate=0.9)
    ctx.cfg.label = "majority"
    assert verdicts(agree + split, ctx) == [(i, "too_easy") for i in range(4)] + [
        (0, None), (1, None), (2, None), (3, "wrong"), (4, "wrong")]


def test_harder_more_gives_hard_questions_more_of_the_cap():
    from cotdistill.stages.filter.difficulty import question_cap

    # max_per_question 4: cap = max(min_per_question, ceil(4 * (1 - pass rate))).
    samples = (question_with("p100", 4, 0)  # cap max(1, 0) = 1
               + question_with("p75", 6, 2)  # ceil(4 * 0.25) = 1
               + question_with("p50", 4, 4)  # ceil(4 * 0.5) = 2
               + question_with("p25", 2, 6)  # ceil(4 * 0.75) = 3, but only 2 survive
               + question_with("p10", 1, 9))  # ceil(3.6) = 4, 1 survives
    ctx = difficulty_context(weight="harder_more")
    ctx.cfg.max_per_question = 4
    kept: dict = {}
    reasons: dict = {}
    for s in judge(samples, ctx):
        kept[s.question_id] = kept.get(s.question_id, 0) + (s.filter_reason is None)
        reasons.setdefault(s.question_id, set()).add(s.filter_reason)
    assert kept == {"p100": 1, "p75": 1, "p50": 2, "p25": 2, "p10": 1}
    assert "over_max_per_question" in reasons["p100"] and "over_max_per_question" in reasons["p50"]
    # weight none: every question keeps up to max_per_question.
    ctx.cfg.difficulty.weight = "none"
    flat: dict = {}
    for s in judge(samples, ctx):
        flat[s.question_id] = flat.get(s.question_id, 0) + (s.filter_reason is None)
    assert flat == {"p100": 4, "p75": 4, "p50": 4, "p25": 2, "p10": 1}
    # min_per_question is a floor; the ceiling is exact (3 of 10 passing: ceil(10 * 0.7) = 7, not float's 8).
    harder = difficulty_context(weight="harder_more").cfg.difficulty
    assert question_cap(10, 1, harder, 3, 10) == 7
    assert question_cap(8, 3, harder, 9, 10) == 3 and question_cap(8, 0, harder, 10, 10) == 0
    assert question_cap(8, 1, harder, None, 10) == 8 and question_cap(None, 1, harder, 3, 10) is None


def test_pass_rates_and_out_of_band_questions_in_stats_and_audit(tmp_path):
    from cotdistill.stages.filter import filter_shard
    from cotdistill.stages.filter.audit import audit_markdown, summarize
    from cotdistill.core.records import SAMPLE_SCHEMA, samples_to_table
    from cotdistill.core.shards import write_parquet_atomic

    samples = question_with("easy", 4, 0) + question_with("hard", 0, 4) + question_with("mid", 1, 3)
    shards = []
    for i, part in enumerate((samples[:8], samples[8:])):  # two shards, merged by summarize
        shards.append(tmp_path / "generate" / f"0000{i}.parquet")
        write_parquet_atomic(samples_to_table(part, SAMPLE_SCHEMA), shards[-1])
        filter_shard(shards[-1], RunPaths(tmp_path), "key", difficulty_context(min_pass_rate=0.1,
                                                                                max_pass_rate=0.9))
    stats = summarize(RunPaths(tmp_path), shards)
    assert stats["rejected"]["too_easy"] == 4 and stats["rejected"]["too_hard"] == 4
    assert stats["questions_too_easy"] == 1 and stats["questions_too_hard"] == 1
    assert stats["pass_rate"]["questions"] == 3 and stats["pass_rate"]["mean"] == round((1 + 0 + 0.25) / 3, 4)
    assert stats["pass_rate"]["histogram"] == {"0.0": 1, "0.1": 0, "0.2": 1, "0.3": 0, "0.4": 0, "0.5": 0,
                                               "0.6": 0, "0.7": 0, "0.8": 0, "0.9": 1}
    audit = audit_markdown(stats, RunPaths(tmp_path), shards)
    assert "## too_easy" in audit and "## too_hard" in audit and "pass rate 1.00" in audit
    assert "1 too easy, 1 too hard" in audit


def test_the_audit_shows_the_reasons_that_occurred_with_their_meaning_and_each_examples_teacher(tmp_path):
    import dataclasses

    from cotdistill.core.records import SAMPLE_SCHEMA, samples_to_table
    from cotdistill.core.shards import write_parquet_atomic
    from cotdistill.stages.filter import filter_shard
    from cotdistill.stages.filter.audit import audit_markdown, summarize
    from cotdistill.stages.filter.phases import PHASES

    samples = [dataclasses.replace(s, teacher_name=name) for name in ("qwq", "r1")
               for s in question_with("mid", 2, 2)]  # both teachers: the same sample indices
    shard = tmp_path / "generate" / "00000.parquet"
    write_parquet_atomic(samples_to_table(samples, SAMPLE_SCHEMA), shard)
    filter_shard(shard, RunPaths(tmp_path), "key", difficulty_context())
    stats = summarize(RunPaths(tmp_path), [shard])
    audit = audit_markdown(stats, RunPaths(tmp_path), [shard], "a-model")
    occurred = {r for r, n in stats["rejected"].items() if n}
    meanings = {r: m for phase in PHASES for r, m in phase.reasons.items()}
    table = [line for line in audit.splitlines() if line.startswith("| ") and not line.startswith("| reason")]
    assert occurred and {line.split(" | ")[0][2:] for line in table if " | " in line} >= occurred
    assert all(f"| {meanings[r]} |" in audit for r in occurred)  # each with what it means
    assert "| too_easy |" not in audit and "| contaminated |" not in audit  # none of those: not listed
    examples = [line for line in audit.splitlines() if line.startswith("- question ")]
    assert examples and all("teacher `qwq`" in line or "teacher `r1`" in line for line in examples)


@pytest.mark.parametrize("filter_settings, key, phrase", [
    ({"label": "none", "difficulty": {"max_pass_rate": 0.8}}, "filter.difficulty", "label none"),
    ({"difficulty": {"min_pass_rate": 0.6, "max_pass_rate": 0.4}}, "filter.difficulty.min_pass_rate", "above"),
    ({"difficulty": {"max_pass_rate": 1.5}}, "filter.difficulty.max_pass_rate", r"\[0.0, 1.0\]"),
    ({"difficulty": {"weight": "heavier"}}, "filter.difficulty.weight", "harder_more"),
    ({"difficulty": {"weight": "harder_more"}}, "filter.difficulty.weight", "max_per_question"),
    ({"label": "silver"}, "filter.label", "none"),
    ({"label": "none", "max_length_ratio": 2.0}, "filter.max_length_ratio", "label none"),
    ({"max_length_ratio": 0.5}, "filter.max_length_ratio", "at least 1.0"),
    ({"select": "newest"}, "filter.select", "unknown value 'newest'"),
])
def test_difficulty_and_length_settings_are_checked_at_load(tmp_path, filter_settings, key, phrase):
    import yaml

    from cotdistill.core.fields import ConfigError
    from cotdistill.config.load import load_config
    from tests.test_config import BASE

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "filter": filter_settings}))
    with pytest.raises(ConfigError, match=rf"run.yaml: {key}: .*{phrase}"):
        load_config(path)


def test_difficulty_and_label_none_load():
    from cotdistill.config.sections import DifficultyConfig
    from cotdistill.config.load import load_config
    from tests.test_config import REPO

    config = load_config(REPO / "pipelines" / "demo.yaml", [
        "filter.difficulty={min_pass_rate: 0.1, max_pass_rate: 0.9, weight: harder_more}",
        "filter.max_per_question=4"])
    assert config.filter.difficulty == DifficultyConfig(0.1, 0.9, "harder_more")
    assert load_config(REPO / "pipelines" / "demo.yaml", ["filter.label=none"]).filter.label == "none"


# --- reasoning models: answers after the thinking, unfinished reasoning, length-aware selection ----------------


def thinking(qid, index, rationale, reasoning=None, finish="stop", gold="12", tokens=10):
    s = sample(qid, index, rationale, finish=finish, gold=gold)
    s.reasoning, s.completion_tokens = reasoning, tokens
    return s


def test_reasoning_cut_off_or_left_open_is_unfinished_reasoning_not_truncated():
    samples = [
        thinking("a", 0, "", reasoning="3 * 4 is", finish="length"),  # cut inside its reasoning
        thinking("a", 1, "", reasoning="3 * 4 = 12, so", finish="stop"),  # reasoning, and no answer at all
        thinking("a", 2, "The answer is 1", reasoning="3 * 4 = 12", finish="length"),  # cut in its answer
        thinking("a", 3, "<think>3 * 4 = 12, and", finish="length"),  # a raw text, cut inside the block
        thinking("a", 4, "<think>3 * 4 = 12</think> The answer", finish="length"),  # raw, cut after it
        thinking("a", 5, "<think>3 * 4 = 12 so the answer is 12"),  # raw, finished without closing it
        thinking("a", 6, "<think>The answer is 12.</think> The answer is 13."),  # only the answer after counts
        thinking("a", 7, "The answer is 12.", reasoning="3 * 4 = 12"),
    ]
    assert verdicts(samples, context(near_duplicates=False)) == [
        (0, "unfinished_reasoning"), (1, "empty"), (2, "truncated"), (3, "unfinished_reasoning"),
        (4, "truncated"), (5, "unfinished_reasoning"), (6, "wrong"), (7, None)]


def by_length_context(**settings):
    ctx = context(near_duplicates=False, **settings)
    ctx.count_text_tokens = lambda texts: [len(t.split()) for t in texts]  # a word a token
    return ctx


def test_select_keeps_the_shortest_or_the_longest_right_rationales():
    steps = ["3 * 4 = 12.", "Three fours: 4 + 4 + 4 = 12.", "We add 4, then 4, then 4 again: 4 + 4 + 4 = 12 in all."]
    samples = [sample("a", i, f"{text} The answer is 12") for i, text in enumerate(steps)]
    samples.append(sample("a", 3, "3 * 4 = 13. The answer is 13"))
    shortest = verdicts(samples, by_length_context(max_per_question=1, select="shortest"))
    longest = verdicts(samples, by_length_context(max_per_question=1, select="longest"))
    assert [i for i, why in shortest if why is None] == [0] and [i for i, why in longest if why is None] == [2]
    assert dict(shortest)[1] == "over_max_per_question" and dict(shortest)[3] == "wrong"


def test_max_length_ratio_drops_overthinking_as_overlong():
    texts = ["3 * 4 = 12.", "Three fours make 12.", "4 + 4 + 4 = 12.",
             "Four and four are eight, and four more make twelve; checking with three times four also gives "
             "twelve, and twelve divided by four is three again, so the product is right."]
    samples = [sample("a", i, f"{t} The answer is 12") for i, t in enumerate(texts)]
    assert verdicts(samples, by_length_context(max_length_ratio=2.0)) == [
        (0, None), (1, None), (2, None), (3, "overlong")]
    assert all(why is None for _, why in verdicts(samples, by_length_context()))  # off by default


def test_stats_and_audit_give_lengths_per_pass_rate_decile(tmp_path):
    from cotdistill.stages.filter import filter_shard
    from cotdistill.stages.filter.audit import audit_markdown, summarize
    from cotdistill.core.shards import write_parquet_atomic

    samples = [thinking("a", i, f"Step {i}. The answer is {12 if i < 3 else 13}", tokens=20 + 10 * i)
               for i in range(4)]
    shard = tmp_path / "generate" / "00000.parquet"
    write_parquet_atomic(samples_to_table(samples, SAMPLE_SCHEMA), shard)
    filter_shard(shard, RunPaths(tmp_path), "key", context(near_duplicates=False))
    stats = summarize(RunPaths(tmp_path), [shard])
    lengths = stats["lengths"]["0.7"]  # pass rate 3/4
    assert lengths["accepted"]["rationales"] == 3 and lengths["accepted"]["mean_tokens"] == 30.0
    assert lengths["rejected"]["rationales"] == 1 and lengths["rejected"]["median_bucket"] == "32-64"
    assert "| 0.7-0.8 | 3 | 30 | 0-32 | 1 | 50 | 32-64 |" in audit_markdown(stats, RunPaths(tmp_path), [shard])


# --- on real generations (the session's `pipeline`, generated by the parrot on the engine) ---


def test_filter_on_real_generations_accounts_for_every_row(pipeline, tmp_path):
    config, _, _ = pipeline
    stats = filter_stage.STAGE.run(config)
    out = config.run_dir / "filter"
    accepted, rejected = read_shards(out / "accepted"), read_shards(out / "rejected")
    assert accepted.schema.equals(FILTERED_SCHEMA) and rejected.schema.equals(FILTERED_SCHEMA)
    assert len(accepted) + len(rejected) == 15 == stats["rationales"]
    # The parrot answers 7: only questions with gold 7 keep rationales, at least one each, the rest duplicates.
    assert len(accepted) >= 3 and set(accepted.column("extracted_answer").to_pylist()) == {"7"}
    assert set(accepted.column("gold_answer").to_pylist()) == {"7"} and all(accepted.column("is_correct").to_pylist())
    assert stats["rejected"]["wrong"] >= 6 and stats["rejected"]["duplicate"] >= 1
    reasons = rejected.column("filter_reason").to_pylist()
    assert all(r in REASONS for r in reasons)
    assert sum(stats["rejected"].values()) == len(rejected)
    truncated = [r for r in rejected.to_pylist() if r["finish_reason"] == "length"]
    assert all(r["filter_reason"] == "truncated" for r in truncated)
    assert sum(int(k) * v for k, v in stats["questions_by_accepted_count"].items()) == len(accepted)
    audit = (out / "audit.md").read_text()
    assert audit.startswith("# Filter audit")
    # the audit's table lists the reasons that occurred, and only those
    assert all((f"| {reason} |" in audit) == bool(count) for reason, count in stats["rejected"].items())
    for reason, count in stats["rejected"].items():
        if count:
            assert f"## {reason}" in audit
    card = (out / "accepted" / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and config.teacher.model in card
    loaded = datasets.load_dataset("parquet", data_dir=str(out / "rejected"), split="train")
    assert len(loaded) == len(rejected) and "filter_reason" in loaded.column_names
    if len(accepted):  # the card's front matter must point datasets at the shards
        assert len(datasets.load_dataset(str(out / "accepted"), split="train", cache_dir=str(tmp_path))) == len(accepted)


def test_filter_workers_give_the_same_verdicts_as_one_process(pipeline):
    config, config_path, _ = pipeline
    assert config.filter.num_workers == 2
    single = load_config(config_path, ["run_name=tiny-one-worker", "filter.num_workers=1"])
    shutil.copytree(config.run_dir / "generate", single.run_dir / "generate")
    filter_stage.STAGE.run(single)
    for sub in ("accepted", "rejected"):
        assert read_shards(single.run_dir / "filter" / sub).equals(read_shards(config.run_dir / "filter" / sub))
    assert len(read_shards(single.run_dir / "filter" / "accepted")) > 0  # not two empty tables


def test_a_changed_filter_setting_refilters_and_retrains(pipeline):
    config, config_path, _ = pipeline
    filter_stage.STAGE.run(config)
    assert filter_stage.STAGE.is_complete(config)
    meta = config.run_dir / "filter" / "meta" / "00000.json"
    before = meta.stat().st_mtime_ns
    assert filter_stage.STAGE.run(config) and meta.stat().st_mtime_ns == before  # unchanged: skipped

    changed = load_config(config_path, ["filter.drop_duplicates=false", "filter.near_duplicates=false"])
    assert not filter_stage.STAGE.is_complete(changed)
    stats = filter_stage.STAGE.run(changed)
    assert meta.stat().st_mtime_ns != before and stats["rejected"]["duplicate"] == 0
    card = (config.run_dir / "filter" / "accepted" / "README.md").read_text()
    assert "'drop_duplicates': False" in card  # the card and the verdicts describe the same settings
    assert filter_stage.STAGE.is_complete(changed) and not filter_stage.STAGE.is_complete(config)
    filter_stage.STAGE.run(config)  # back to the fixture's settings for the tests that follow


def test_filter_outputs_of_vanished_generate_shards_are_removed(pipeline):
    config, _, _ = pipeline
    accepted = config.run_dir / "filter" / "accepted"
    shutil.copy(accepted / "00000.parquet", accepted / "00099.parquet")  # a leftover of an earlier, larger run
    stats = filter_stage.STAGE.run(config)
    assert not (accepted / "00099.parquet").exists()
    assert stats["shards"] == 3 and set(stats["accepted_files"]) <= {"00000.parquet", "00001.parquet", "00002.parquet"}


def test_a_regenerated_shard_is_filtered_again(pipeline):
    config, _, _ = pipeline
    filter_stage.STAGE.run(config)
    meta = config.run_dir / "filter" / "meta" / "00001.json"
    before = read_json(meta)["fingerprint"]
    untouched = (config.run_dir / "filter" / "meta" / "00000.json").stat().st_mtime_ns
    # What a regenerated shard is (same settings, other random rationales): other bytes under the same name.
    shard = config.run_dir / "generate" / "samples" / "00001.parquet"
    original = pq.read_table(shard)
    rationales = original.column("rationale").to_pylist()
    rationales[0] = "Seven, by counting. The answer is 7."
    write_parquet_atomic(original.set_column(original.schema.get_field_index("rationale"), "rationale",
                                             pa.array(rationales, pa.string())), shard)
    try:
        assert not filter_stage.STAGE.is_complete(config)
        filter_stage.STAGE.run(config)
        assert read_json(meta)["fingerprint"] != before
        assert (config.run_dir / "filter" / "meta" / "00000.json").stat().st_mtime_ns == untouched
        assert "Seven, by counting. The answer is 7." in read_shards(config.run_dir / "filter" / "rejected").column(
            "rationale").to_pylist() + read_shards(config.run_dir / "filter" / "accepted").column("rationale").to_pylist()
    finally:
        write_parquet_atomic(original, shard)
        filter_stage.STAGE.run(config)


def test_use_samples_judges_the_first_n_of_each_question_and_counts_the_rest(pipeline):
    """filter.use_samples N: the pool a run of N samples would have drawn (sample_index < N), judged as such;
    the rest in neither accepted nor rejected, counted in stats.json. Runs without it keep their fingerprint."""
    config, config_path, _ = pipeline
    one = load_config(config_path, ["run_name=tiny-use-one", "filter.use_samples=1"])
    shutil.copytree(config.run_dir / "generate", one.run_dir / "generate")
    stats = filter_stage.STAGE.run(one)
    judged = pa.concat_tables([read_shards(one.run_dir / "filter" / sub) for sub in ("accepted", "rejected")])
    assert set(judged.column("sample_index").to_pylist()) == {0}
    total = filter_stage.STAGE.run(config)["rationales"]
    assert stats["rationales"] + stats["unused_samples"] == total and stats["unused_samples"] > 0
    assert "unused_samples" not in filter_stage.STAGE.run(config)
    assert filter_stage.fingerprint(one) != filter_stage.fingerprint(config)
    assert "use_samples" not in str(filter_stage.fingerprint(config)["settings"])


def test_the_same_pool_filtered_in_two_runs_gives_the_same_corpus_row_for_row(pipeline):
    """What the quality benchmark's arms rely on: one pool of samples, copied into each arm's run, is filtered
    to the same corpus every time (same rows, same order, same verdicts), with use_samples as without it."""
    config, config_path, _ = pipeline
    corpora = []
    for run_name in ("tiny-same-a", "tiny-same-b"):
        run = load_config(config_path, [f"run_name={run_name}", "filter.use_samples=2"])
        shutil.copytree(config.run_dir / "generate", run.run_dir / "generate")
        filter_stage.STAGE.run(run)
        corpora.append({sub: read_shards(run.run_dir / "filter" / sub) for sub in ("accepted", "rejected")})
    assert corpora[0]["accepted"].num_rows > 0
    for sub in ("accepted", "rejected"):
        assert corpora[0][sub].equals(corpora[1][sub]), sub
