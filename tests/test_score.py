"""score on the real engine: a local copy of the teacher scores the accepted rationales in one prefill pass, and
in the teacher's own context it reproduces what generate captured while sampling."""

from __future__ import annotations

import numpy as np
import pytest

from cotdistill.config.load import load_config
from cotdistill.stages import score
from tests.test_kd import accepted_rows


def test_score_in_the_teachers_context_reproduces_what_generate_captured(kd_run, tmp_path):
    config, path, _, raw = kd_run
    scored_config = load_config(path, ["score={logprobs: 5, context: teacher}"])
    stats = score.STAGE.run(scored_config)
    assert stats["context"] == "teacher" and stats["rationales"] > 0
    made = {(r["question_id"], r["sample_index"]): r for r in accepted_rows(config.run_dir / "filter")}
    for r in accepted_rows(config.run_dir / "score"):
        source = made[(r["question_id"], r["sample_index"])]
        assert r["completion_token_ids"] == source["completion_token_ids"]
        assert r["teacher_topk_ids"][0] == source["teacher_topk_ids"][0]
        a, b = np.array(r["teacher_topk_logprobs"], float), np.array(source["teacher_topk_logprobs"], float)
        assert np.abs(a[:, 0] - b[:, 0]).max() < 2e-2  # float16 storage, prefill against decode numerics
    assert score.STAGE.is_complete(scored_config)


def test_score_and_prune_without_their_sections_say_so(kd_run, caplog):
    from cotdistill import cli

    for command, message in (("score", "score: is not set"), ("prune", "student.prune is not set")):
        caplog.clear()
        with pytest.raises(SystemExit) as exited:
            cli.main([command, str(kd_run[1])])
        assert exited.value.code == 2
        assert any(message in r.getMessage() for r in caplog.records), command
