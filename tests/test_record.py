"""The typed run record: older records and references migrate on load, a newer version is refused, a record
survives a round trip through record.json unchanged."""

from __future__ import annotations

import json

import pytest

from bench.record import RECORD_VERSION, RunRecord, Summary, load_record, load_reference, migrate

V1 = {"record_version": 1, "sequence": "synth", "method": "knn",
      "model": {"name": "tiny-random", "pretrained": "random-init", "weights": "random-init, not pretrained"},
      "tasks": ["a", "b"], "steps_done": 2, "complete": True,
      "matrix": {"miou": [[50.0, None], [49.0, 60.0]]},
      "summary": {"miou": {"final_average": 54.5, "average_incremental": 52.25, "forgetting": [1.0, None],
                           "mean_forgetting": 1.0, "bwt": -1.0}},
      "memory_size": [10, 25], "config": {"proposals": {"kind": "gt"}}}


def test_a_version_1_record_is_migrated(tmp_path):
    (tmp_path / "record.json").write_text(json.dumps(V1))
    record = load_record(tmp_path)
    assert record.record_version == RECORD_VERSION == 3
    assert record.base == "maskclip" and record.proposer == "gt" and record.protocol == "cross-dataset"
    assert record.state_size == [{"memory_entries": 10}, {"memory_entries": 25}] and "memory_size" not in record
    assert isinstance(record.summary["miou"], Summary) and record.summary["miou"].bwt == -1.0
    assert record["matrix"]["miou"][1] == [49.0, 60.0] and record.get("nope", 3) == 3


def test_a_version_2_record_is_migrated_to_the_cross_dataset_protocol():
    """Records and references of version 2 (every run before the protocols) load, scored as they always were."""
    reference = migrate({k: V1[k] for k in ("sequence", "method", "tasks", "matrix")} | {"record_version": 2})
    assert reference["record_version"] == 3 and reference["protocol"] == "cross-dataset"
    record = RunRecord.model_validate(migrate({**V1, "record_version": 2, "state_size": []}))
    assert record.protocol == "cross-dataset" and record.cumulative == {} and record.intervals == {}


def test_a_reference_without_a_version_is_version_1(tmp_path):
    reference = {k: V1[k] for k in ("sequence", "method", "model", "tasks", "matrix", "summary", "config")}
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    loaded = load_reference(tmp_path / "ref.json")
    assert loaded["record_version"] == RECORD_VERSION and loaded["proposer"] == "gt"


def test_a_newer_record_is_refused_by_name(tmp_path):
    (tmp_path / "record.json").write_text(json.dumps({**V1, "record_version": RECORD_VERSION + 1}))
    with pytest.raises(ValueError, match=rf"record.json: record_version {RECORD_VERSION + 1} is newer than this "
                                         rf"suite reads \({RECORD_VERSION}\)"):
        load_record(tmp_path)


def test_a_record_with_a_wrong_field_names_it(tmp_path):
    (tmp_path / "record.json").write_text(json.dumps({**V1, "tasks": "ab"}))
    with pytest.raises(ValueError, match=r"record.json: field 'tasks'"):
        load_record(tmp_path)


def test_round_trip_and_mapping_access():
    record = RunRecord.model_validate(migrate(V1))
    again = RunRecord.model_validate(json.loads(json.dumps(record.to_json())))
    assert again == record and dict(again)["sequence"] == "synth" and next(iter(again)) == "record_version"
