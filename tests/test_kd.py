"""The KD loss by hand, and teacher logprobs through generate, filter, score and a KD training run on the tiny
Llama (the real vLLM engine and the real TRL trainer)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.shards import list_shards, read_json
from cotdistill.stages import train
from cotdistill.trainers.losses import bucket_logprobs, kd_loss, taid_lambda
from tests.conftest import REPO


# --- the loss, by hand -------------------------------------------------------------------------------------------

def _case():
    """One sequence of 4 positions over a vocabulary of 5; position 0 is prompt; tokens 1-3 are completion.
    The teacher's top-2 is known at positions 1 and 2, not at 3 (say an appended end-of-sequence token)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4, 5, generator=g)
    labels = torch.tensor([[-100, 1, 4, 2]])
    teacher_ids = torch.tensor([[[0, 0], [1, 3], [4, 0], [0, 0]]])
    # Top-2 probabilities 0.5 and 0.2 (leftover 0.3) at position 1; 0.6 and 0.3 (leftover 0.1) at position 2.
    teacher_logprobs = torch.log(torch.tensor([[[1.0, 1.0], [0.5, 0.2], [0.6, 0.3], [1.0, 1.0]]]))
    teacher_mask = torch.tensor([[0, 1, 1, 0]])
    return logits, labels, teacher_ids, teacher_logprobs, teacher_mask


def _by_hand(alpha: float, temperature: float) -> float:
    logits, labels, ids, lps, mask = _case()
    q = np.exp(logits[0].double().numpy())
    q /= q.sum(-1, keepdims=True)  # q[i]: the student's distribution predicting token i + 1
    ce = [-math.log(q[i][labels[0, i + 1]]) for i in range(3)]  # completion tokens 1, 2, 3
    kl = 0.0
    for i in (1, 2):  # positions with the teacher known; predicted by logits row i - 1
        p_top = np.exp(lps[0, i].double().numpy())
        t = np.append(p_top, 1 - p_top.sum())
        s_top = q[i - 1][ids[0, i].numpy()]
        s = np.append(s_top, 1 - s_top.sum())
        t = t ** (1 / temperature) / (t ** (1 / temperature)).sum()
        s = s ** (1 / temperature) / (s ** (1 / temperature)).sum()
        kl += float((t * np.log(t / s)).sum())
    return alpha * sum(ce) / 3 + (1 - alpha) * temperature ** 2 * kl / 3


@pytest.mark.parametrize("alpha,temperature", [(0.5, 1.0), (0.2, 2.0), (0.0, 1.0)])
def test_kd_loss_matches_a_hand_computation_with_the_leftover_mass_and_the_mask(alpha, temperature):
    logits, labels, ids, lps, mask = _case()
    loss, parts = kd_loss(logits, labels, ids, lps, mask, alpha=alpha, temperature=temperature)
    assert loss.item() == pytest.approx(_by_hand(alpha, temperature), rel=1e-5)


def test_the_leftover_mass_is_a_bucket_of_its_own():
    buckets = bucket_logprobs(torch.log(torch.tensor([0.5, 0.2])))
    assert torch.allclose(buckets.exp(), torch.tensor([0.5, 0.2, 0.3]), atol=1e-6)


def test_with_alpha_one_the_kd_loss_is_the_sft_loss():
    logits, labels, ids, lps, mask = _case()
    loss, _ = kd_loss(logits, labels, ids, lps, mask, alpha=1.0)
    sft = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
    assert loss.item() == pytest.approx(sft.item(), rel=1e-6)


def test_prompt_positions_and_unknown_teacher_positions_carry_no_kl():
    logits, labels, ids, lps, mask = _case()
    base, _ = kd_loss(logits, labels, ids, lps, mask, alpha=0.0)
    lps2 = lps.clone()
    lps2[0, 0], lps2[0, 3] = torch.log(torch.tensor([0.9, 0.05])), torch.log(torch.tensor([0.9, 0.05]))
    moved, _ = kd_loss(logits, labels, ids, lps2, mask, alpha=0.0)
    assert moved.item() == pytest.approx(base.item())
    lps2[0, 1] = torch.log(torch.tensor([0.9, 0.05]))  # a completion position with the teacher known: counts
    changed, _ = kd_loss(logits, labels, ids, lps2, mask, alpha=0.0)
    assert changed.item() != pytest.approx(base.item())


def test_with_the_whole_vocabulary_the_kl_is_the_full_kl():
    g = torch.Generator().manual_seed(1)
    logits, teacher_logits = torch.randn(1, 3, 6, generator=g), torch.randn(1, 3, 6, generator=g)
    labels = torch.tensor([[-100, 2, 5]])
    teacher = torch.log_softmax(teacher_logits, -1)
    ids = torch.arange(6).expand(1, 3, 6)
    loss, _ = kd_loss(logits, labels, ids, teacher, torch.ones(1, 3), alpha=0.0)
    full = F.kl_div(torch.log_softmax(logits[0, :-1], -1), teacher[0, 1:], log_target=True, reduction="sum") / 2
    assert loss.item() == pytest.approx(full.item(), rel=1e-4)


def test_taid_moves_the_target_from_the_student_to_the_teacher():
    logits, labels, ids, lps, mask = _case()
    plain, _ = kd_loss(logits, labels, ids, lps, mask, alpha=0.0)
    at_teacher, _ = kd_loss(logits, labels, ids, lps, mask, alpha=0.0, taid_lambda=1.0)
    at_student, _ = kd_loss(logits, labels, ids, lps, mask, alpha=0.0, taid_lambda=0.0)
    halfway, _ = kd_loss(logits, labels, ids, lps, mask, alpha=0.0, taid_lambda=0.5)
    assert at_teacher.item() == pytest.approx(plain.item(), rel=1e-5)
    assert at_student.item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < halfway.item() < plain.item()
    assert taid_lambda(0.0, 0.1, 1.0) == 0.1 and taid_lambda(0.5, 0.1, 1.0) == pytest.approx(0.55)
    assert taid_lambda(2.0, 0.1, 1.0) == 1.0


def test_the_collator_lays_teacher_columns_out_as_trl_lays_out_tokens():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from cotdistill.trainers.kd import TeacherCollator

    def example(n: int, start: int) -> dict:
        return {"input_ids": list(range(start, start + n)), "labels": list(range(start, start + n)),
                "teacher_ids": [[start + i, 0] for i in range(n)], "teacher_logprobs": [[-0.5, -1.0]] * n,
                "teacher_mask": [1] * n}

    padded = TeacherCollator(DataCollatorForLanguageModeling(pad_token_id=0))([example(3, 10), example(2, 20)])
    assert padded["input_ids"].shape == (2, 3) and padded["teacher_ids"].shape == (2, 3, 2)
    assert padded["teacher_ids"][1, :2, 0].tolist() == [20, 21] and not padded["teacher_mask"][1, 2]
    flat = TeacherCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))(
        [example(3, 10), example(2, 20)])
    assert flat["input_ids"].shape == (1, 5)
    assert flat["teacher_ids"][0, :, 0].tolist() == flat["input_ids"][0].tolist()  # aligned token by token


def accepted_rows(stage_dir) -> list[dict]:
    return [r for p in list_shards(stage_dir / "accepted") for r in pq.read_table(p).to_pylist()]


# --- teacher logprobs through the stages, on the real engine and trainer -----------------------------------------

def test_generate_stores_top_k_logprobs_per_completion_token(kd_run):
    config, _, stats, _ = kd_run
    rows = pq.read_table(config.run_dir / "generate" / "samples").to_pylist()
    assert rows and all(r["logprobs_context"] == "teacher" for r in rows)
    for r in rows:
        ids, lps = np.array(r["teacher_topk_ids"]), np.array(r["teacher_topk_logprobs"], dtype=float)
        assert ids.shape == lps.shape == (r["completion_tokens"], 5) == (len(r["completion_token_ids"]), 5)
        assert (np.diff(lps, axis=1) <= 1e-3).all()  # ranks 1..k in order
        assert (np.exp(lps).sum(1) <= 1 + 1e-2).all()
    assert 0 < stats["logprob_bytes_per_token"] < 100 and stats["logprobs_k"] == 5


def test_logprob_columns_pass_through_the_filter_unchanged(kd_run):
    config = kd_run[0]
    made = {(r["question_id"], r["sample_index"]): r for r in pq.read_table(config.run_dir / "generate" /
                                                                            "samples").to_pylist()}
    accepted = [r for p in list_shards(config.run_dir / "filter" / "accepted") for r in pq.read_table(p).to_pylist()]
    assert accepted
    for r in accepted:
        source = made[(r["question_id"], r["sample_index"])]
        for column in ("completion_token_ids", "teacher_topk_ids", "teacher_topk_logprobs", "logprobs_context"):
            assert r[column] == source[column]


def test_kd_training_reads_the_teacher_tokens_and_their_distributions(kd_run):
    config = kd_run[0]
    stats = train.STAGE.run(config)
    assert stats["loss"] == "kd" and stats["global_steps"] == 2 and math.isfinite(stats["train_loss"])
    assert (config.run_dir / "train" / "model" / "config.json").exists()
    trainer = train.build_trainer(config, shards=list_shards(config.run_dir / "filter" / "accepted"))
    example = trainer.train_dataset[0]
    start = next(i for i, label in enumerate(example["labels"]) if label != -100)
    source = accepted_rows(config.run_dir / "filter")
    match = [r for r in source if example["input_ids"][start:start + len(r["completion_token_ids"])] ==
             r["completion_token_ids"]]
    assert match, "the completion must be the teacher's own token ids"
    n = len(match[0]["completion_token_ids"])
    assert example["teacher_ids"][start:start + n] == match[0]["teacher_topk_ids"]
    assert all(m == 0 for m in example["teacher_mask"][:start]) and all(example["teacher_mask"][start:start + n])


def test_kd_trainer_with_alpha_one_gives_sfttrainers_loss_on_the_same_batch(kd_run, tmp_path):
    from trl import SFTTrainer

    config, path, _, _ = kd_run
    one = load_config(path, ["train.kd.alpha=1.0", f"output_dir={tmp_path}"])
    kd_trainer = train.build_trainer(one, shards=list_shards(config.run_dir / "filter" / "accepted"))
    batch = kd_trainer.data_collator([dict(kd_trainer.train_dataset[i]) for i in range(2)])
    sft_trainer = SFTTrainer(model=kd_trainer.model, args=kd_trainer.args, processing_class=kd_trainer.processing_class,
                             train_dataset=kd_trainer.train_dataset.select_columns(["input_ids", "labels"]))
    plain = {k: batch[k] for k in ("input_ids", "labels", "attention_mask")}
    kd_trainer.model.eval()
    with torch.no_grad():
        kd = kd_trainer.compute_loss(kd_trainer.model, dict(batch))
        sft = sft_trainer.compute_loss(sft_trainer.model, dict(plain))
    assert kd.item() == pytest.approx(sft.item(), rel=1e-4)


def test_a_vocabulary_mismatch_is_refused_before_training(kd_run, tiny_model, tmp_path):
    """A student whose tokenizer gives other ids to the same tokens: the CLI refuses it (exit 2, one line),
    before any engine starts or any step runs."""
    import shutil

    from tokenizers import Tokenizer

    config, path, _, raw = kd_run
    other = tmp_path / "other-student"
    shutil.copytree(tiny_model, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    by_id = {i: tok for tok, i in vocab.items()}
    a, b = by_id[100], by_id[101]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ordinary tokens swap ids
    (other / "tokenizer.json").write_text(json.dumps(spec))
    Tokenizer.from_file(str(other / "tokenizer.json"))
    raw = {**raw, "student": {**raw["student"], "model": str(other)}, "run_name": "mismatch"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "cotdistill", "train", str(bad)], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "do not share a vocabulary" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "mismatch" / "train").exists()


def test_run_prunes_scores_in_the_students_context_trains_kd_and_evaluates(kd_run, tmp_path):
    """`cotdistill run` with every optional step: prune, score (student context), kd; a rerun skips them all."""
    from cotdistill import cli
    from cotdistill.stages import pipeline

    config, _, _, raw = kd_run
    raw = json.loads(json.dumps(raw))
    raw.update(run_name="full", output_dir=str(tmp_path / "runs"))
    raw["student"]["prune"] = {"num_layers": 1, "calibration_samples": 4}
    raw["score"] = {"logprobs": 5, "context": "student"}
    raw["train"]["kd"] = {"alpha": 0.5, "interpolation": "taid"}
    raw["evaluate"].update(models=["base_student", "student"], num_samples=2, max_tokens=8)
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(raw))
    cli.main(["run", str(path)])
    full = load_config(path)
    assert [s.name for s in pipeline(full)] == ["generate", "filter", "prune", "score", "train", "evaluate"]
    prune_stats = read_json(full.run_dir / "prune" / "stats.json")
    assert prune_stats["parameters_after"] < prune_stats["parameters_before"]
    scored = accepted_rows(full.run_dir / "score")
    assert scored and {r["logprobs_context"] for r in scored} == {"student"}
    # In the student's context the teacher sees another prompt: its distributions differ from the captured ones.
    captured = {(r["question_id"], r["sample_index"]): r for r in accepted_rows(full.run_dir / "filter")}
    assert any(r["teacher_topk_logprobs"] != captured[(r["question_id"], r["sample_index"])]["teacher_topk_logprobs"]
               for r in scored)
    stats = read_json(full.run_dir / "train" / "stats.json")
    assert stats["loss"] == "kd" and stats["global_steps"] == 2
    metrics = read_json(full.run_dir / "evaluate" / "metrics.json")["models"]
    assert metrics["base_student"]["parameters"] == prune_stats["parameters_after"] == metrics["student"]["parameters"]
    for stage in pipeline(full):
        assert stage.is_complete(full), stage.name


@pytest.mark.parametrize("override,message", [
    (["generate.logprobs=null"], "train.loss: kd needs the teacher's logprobs"),
    (["train.kd.alpha=1.5"], "train.kd.alpha: must be in [0.0, 1.0]"),
    (["train.kd.temperature=0"], "train.kd.temperature: must be above 0"),
    (["train.kd.interpolation=linear"], "train.kd.interpolation: unknown value 'linear'"),
    (["train.loss=distill"], "train.loss: unknown value 'distill'"),
    (["score={context: teacher_prompt}"], "score.context: unknown value 'teacher_prompt'"),
    (["score={logprobs: 0}"], "score.logprobs: must be at least 1"),
    (["generate.logprobs=0"], "generate.logprobs: must be at least 1"),
    (["teacher.backend=openai", "score=null"], "generate.logprobs: needs a local engine"),
])
def test_kd_configuration_mistakes_are_caught_at_load(kd_run, override, message):
    from cotdistill.core.fields import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(kd_run[1], override)
    assert message in str(caught.value)


def test_packing_carries_the_teacher_columns_along_and_trains(kd_run, tmp_path):
    config, path, _, _ = kd_run
    packed = load_config(path, ["train.sft.packing=true", "train.sft.max_length=400", "train.sft.max_steps=1",
                                f"output_dir={tmp_path}"])
    trainer = train.build_trainer(packed, shards=list_shards(config.run_dir / "filter" / "accepted"))
    dataset = trainer.train_dataset
    assert "seq_lengths" in dataset.column_names and len(dataset) < len(accepted_rows(config.run_dir / "filter"))
    for row in dataset:
        n = len(row["input_ids"])
        assert n <= 400 and len(row["labels"]) == len(row["teacher_ids"]) == len(row["teacher_mask"]) == n
        assert all(label != -100 for label, known in zip(row["labels"], row["teacher_mask"]) if known)
    assert trainer.train().global_step == 1
