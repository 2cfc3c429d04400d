"""The demo's evaluation step re-evaluates only what is missing (a model lacking just its replies file is not
scored again on every set)."""

from __future__ import annotations

import json

import pytest

from axolotl_calib_plugin.demo.evaluate import outputs_to_write

SETS = [("in", "in.jsonl", None), ("out", "out.jsonl", None), ("train", "train.jsonl", {"aligned"})]


def _touch(path):
    path.write_text("{}", encoding="utf-8")


def test_everything_is_written_without_only_missing(tmp_path):
    for n in ("in", "out", "train", "replies"):
        _touch(tmp_path / f"aligned__{n}.json")
    todo, replies = outputs_to_write(str(tmp_path), "aligned", SETS, True, only_missing=False)
    assert todo == [("in", "in.jsonl"), ("out", "out.jsonl"), ("train", "train.jsonl")] and replies


def test_only_the_missing_replies_file_is_written(tmp_path):
    for n in ("in", "out", "train"):
        _touch(tmp_path / f"aligned__{n}.json")
    assert outputs_to_write(str(tmp_path), "aligned", SETS, True, only_missing=True) == ([], True)
    # without --replies nothing at all is left to do: the model is not even loaded
    assert outputs_to_write(str(tmp_path), "aligned", SETS, False, only_missing=True) == ([], False)


def test_a_set_restricted_to_other_models_is_skipped_and_other_models_files_do_not_count(tmp_path):
    _touch(tmp_path / "aligned__in.json")
    _touch(tmp_path / "cft__replies.json")
    todo, replies = outputs_to_write(str(tmp_path), "cft", SETS, True, only_missing=True)
    assert todo == [("in", "in.jsonl"), ("out", "out.jsonl")] and not replies
    todo, replies = outputs_to_write(str(tmp_path), "aligned", SETS, True, only_missing=True)
    assert todo == [("out", "out.jsonl"), ("train", "train.jsonl")] and replies


def test_a_write_that_fails_midway_leaves_no_output_file(tmp_path):
    from axolotl_calib_plugin.demo.evaluate import write_json_atomic

    path = tmp_path / "aligned__in.json"
    with pytest.raises(TypeError):  # json.dump has already written '{"metrics": ' when it meets the object
        write_json_atomic(str(path), {"metrics": {"acc": 0.5}, "logliks": object()})
    assert not path.exists()  # so --only-missing evaluates it again
    assert outputs_to_write(str(tmp_path), "aligned", SETS, False, only_missing=True)[0][0] == ("in", "in.jsonl")
    write_json_atomic(str(path), {"metrics": {"acc": 0.5}})
    assert json.loads(path.read_text(encoding="utf-8")) == {"metrics": {"acc": 0.5}}
