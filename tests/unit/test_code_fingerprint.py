"""The demo / study reuse a finished run only when its config and code are unchanged: the code fingerprint covers
every file that can change a trained model or an evaluation dump, at any depth, and only those."""

from __future__ import annotations

import os
import shutil

import pytest

from axolotl_calib_plugin import orchestrate


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """The fingerprinted files copied to a scratch tree (same relative paths) and their list."""
    files = orchestrate.code_files()
    base = os.path.dirname(os.path.dirname(os.path.abspath(orchestrate.__file__)))
    out = tmp_path_factory.mktemp("code")
    for rel in files:
        os.makedirs(out / os.path.dirname(rel), exist_ok=True)
        shutil.copy(os.path.join(base, rel), out / rel)
    return out, files


def test_code_files_reach_every_subpackage_and_the_task_folder_and_skip_reports():
    files = set(orchestrate.code_files())
    for must in ("axolotl_calib_plugin/train/em.py", "axolotl_calib_plugin/train/callbacks.py",
                 "axolotl_calib_plugin/demo/world.py", "axolotl_calib_plugin/demo/pipeline.py",
                 "axolotl_calib_plugin/testing/tiny.py", "axolotl_calib_plugin/metrics.py",
                 "axolotl_calib_plugin/eval/evaluation.py"):
        assert must in files, must
    # what reproduce evaluates through (it calls them directly; the CLI is a shell over them)
    for must in ("axolotl_calib_plugin/reproduce.py", "axolotl_calib_plugin/eval/report.py",
                 "axolotl_calib_plugin/eval/samples.py", "axolotl_calib_plugin/eval/temperature.py",
                 "axolotl_calib_plugin/defaults.py"):
        assert must in files, must
    assert any(f.endswith("lm_eval_tasks/calib/utils.py") for f in files)
    assert any(f.endswith("lm_eval_tasks/calib/calib_jsonl.yaml") for f in files)
    for neutral in ("axolotl_calib_plugin/demo/report.py", "axolotl_calib_plugin/demo/study.py",
                    "axolotl_calib_plugin/demo/studies/heldout.py", "axolotl_calib_plugin/demo/studies/alignment.py",
                    "axolotl_calib_plugin/demo/studies/base.py", "axolotl_calib_plugin/demo/studies/__init__.py",
                    "axolotl_calib_plugin/eval/plots.py",
                    "axolotl_calib_plugin/cli.py"):
        assert neutral not in files, neutral


@pytest.mark.parametrize("rel", ["axolotl_calib_plugin/demo/world.py", "axolotl_calib_plugin/testing/tiny.py",
                                 "axolotl_calib_plugin/train/em.py", "lm_eval_tasks/calib/utils.py"])
def test_fingerprint_changes_when_a_result_affecting_file_changes(copy, rel):
    out, files = copy
    assert orchestrate.fingerprint_files(str(out), files) == orchestrate.code_fingerprint()
    rel = next(f for f in files if f.endswith(rel))
    path = out / rel
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# one more line\n")
        assert orchestrate.fingerprint_files(str(out), files) != orchestrate.code_fingerprint()
    finally:
        path.write_bytes(original)
    assert orchestrate.fingerprint_files(str(out), files) == orchestrate.code_fingerprint()


def test_a_run_key_changes_with_its_data_files_contents(tmp_path):
    """Same config, same paths, edited data: a finished run or evaluation of the old rows is never reused."""
    from axolotl_calib_plugin import orchestrate

    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    test.write_text('{"question": "t", "choices": ["a", "b"], "answer": 1}\n')
    cfg = {"datasets": [{"path": str(train), "type": "axolotl_calib_plugin.mcq"}, {"path": "org/hub-dataset"}],
           "test_datasets": [{"path": str(test)}], "learning_rate": 1e-5}
    assert orchestrate.data_files(cfg) == [str(train), str(test)]  # a hub id is not a local file
    before = orchestrate.config_hash(cfg)
    assert orchestrate.config_hash(cfg) == before
    for path in (train, test):
        original = path.read_text()
        path.write_text(original.replace('"answer": 0', '"answer": 9').replace('"answer": 1', '"answer": 0'))
        assert orchestrate.config_hash(cfg) != before, path
        path.write_text(original)
        assert orchestrate.config_hash(cfg) == before
    folder = tmp_path / "split"
    folder.mkdir()
    (folder / "part.jsonl").write_text("x")
    key = orchestrate.files_digest([str(folder)])
    (folder / "part.jsonl").write_text("y")
    assert orchestrate.files_digest([str(folder)]) != key
