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
