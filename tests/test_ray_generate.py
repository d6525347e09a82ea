"""The generate stage through the `ray` backend: two engines as actors on a local Ray write exactly the shards,
schema and stats that the single local engine writes (top_k=1, so both generate the same tokens)."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.fingerprints import read_fingerprint
from cotdistill.core.shards import list_shards, read_shards
from cotdistill.stages import generate
from tests.conftest import tiny_config_dict

pytestmark = [pytest.mark.ray, pytest.mark.engine]


def test_ray_backend_writes_what_the_local_engine_writes(tmp_path, parrot_model, gsm8k_rows):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:8]))
    data = tiny_config_dict(tmp_path, parrot_model, questions)
    data["generate"].update(questions_per_shard=3, top_k=1)  # 3 shards; argmax tokens on every engine
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    local = load_config(path, ["run_name=local"])
    pooled = load_config(path, ["run_name=pooled", "teacher.backend=ray", "teacher.ray.replicas=2",
                                "teacher.ray.num_cpus=1"])
    local_stats, pooled_stats = generate.STAGE.run(local), generate.STAGE.run(pooled)

    local_dir, pooled_dir = local.run_dir / "generate", pooled.run_dir / "generate"
    assert [p.name for p in list_shards(pooled_dir / "samples")] == [p.name for p in list_shards(local_dir / "samples")]
    a, b = read_shards(local_dir / "samples"), read_shards(pooled_dir / "samples")
    assert a.schema.equals(b.schema) and len(a) == len(b) == 8 * 3
    assert pc.all(pc.equal(b.column("run_id"), "pooled")).as_py()
    assert a.drop_columns(["run_id"]).equals(b.drop_columns(["run_id"]))  # the same rows, in the same order
    for key in ("shards", "questions", "rationales", "prompt_tokens", "completion_tokens", "truncated",
                "num_skipped", "num_failed"):
        assert pooled_stats[key] == local_stats[key], key
    # The same teacher by its fingerprint: a run may move between one engine and many without regenerating.
    assert read_fingerprint(pooled_dir)["fingerprint"] == read_fingerprint(local_dir)["fingerprint"]
