"""The Study shape: the committed summaries re-render byte for byte from their JSON, and run_study dispatches
through the registry (a new study is one subclass)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from axolotl_calib_plugin.demo import study as runner
from axolotl_calib_plugin.demo.studies import STUDIES, Study, get_study, register, seed_values

STUDY_DIR = Path(__file__).resolve().parents[2] / "study"


@pytest.mark.parametrize("name", ["main", "heldout", "alignment", "online"])
def test_committed_summary_rerenders_byte_identical_from_its_json(tmp_path, name):
    """study/<stem>.md is what the study code renders from study/<stem>.json (re-summarised from the per-seed
    numbers), and the JSON itself round-trips: nothing in the committed summary is hand-edited or stale."""
    s = get_study(name)
    shutil.copy(STUDY_DIR / f"{s.stem}.json", tmp_path / f"{s.stem}.json")
    s.rerender(str(tmp_path))
    assert (tmp_path / f"{s.stem}.md").read_bytes() == (STUDY_DIR / f"{s.stem}.md").read_bytes()
    assert (tmp_path / f"{s.stem}.json").read_bytes() == (STUDY_DIR / f"{s.stem}.json").read_bytes()


def test_the_four_studies_are_registered_study_subclasses_with_their_own_files():
    assert set(STUDIES) == {"main", "heldout", "alignment", "online"}
    assert all(issubclass(cls, Study) for cls in STUDIES.values())
    assert sorted(cls.stem for cls in STUDIES.values()) == ["alignment", "heldout", "online", "study"]
    with pytest.raises(KeyError, match="unknown study 'nope'; known: main, heldout, alignment, online"):
        get_study("nope")


def test_a_new_study_is_one_registered_subclass_and_runs_through_run_study(tmp_path, monkeypatch):
    """What a fifth study needs: a plan, summarize and render; run_study runs its plan per seed and write() puts
    <stem>.json / <stem>.md / its figures in the summary folder."""
    from axolotl_calib_plugin.demo.pipeline import Plan

    plans = []

    def fake_run_seed(out, seed, settings, plan, parallel, reuse, plots):
        plans.append(plan)
        rows = {"base": {"in": {"conf_ece": 0.1 * (seed + 1), "cw_ece": 0.0, "acc": 0.5, "mean_conf": 0.5}}}
        return {"rows": rows, "meta": {"errors": {}, "timings_s": {}, "wall_time_s": 1.0}}

    class Toy(Study):
        name, stem, plan = "toy-test", "toy", Plan(arms=("aligned",), lambdas=(0.0,))

        def seed_extras(self, seed_dir):
            return {"folder": Path(seed_dir).name}

        def summarize(self, per_seed):
            return {"mean": sum(v for v in seed_values(per_seed, "base", "in", "conf_ece")) / len(per_seed)}

        def render(self, study):
            return f"# toy\n\nmean {study['summary']['mean']:.2f}\n"

        def figures(self, study, summary_dir):
            (Path(summary_dir) / "toy.png").write_bytes(b"png")
            return [str(Path(summary_dir) / "toy.png")]

    monkeypatch.setattr(runner, "run_seed", fake_run_seed)
    monkeypatch.delitem(STUDIES, "toy-test", raising=False)
    register(Toy)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register(type("Toy", (Toy,), {}))
        res = runner.run_study(str(tmp_path / "out"), [0, 1], summary_dir=str(tmp_path / "sum"), kind="toy-test")
    finally:
        STUDIES.pop("toy-test", None)
    assert plans == [Toy.plan, Toy.plan] and res["per_seed"]["1"]["folder"] == "seed1"
    assert (tmp_path / "sum" / "toy.md").read_text() == "# toy\n\nmean 0.15\n"
    assert json.loads((tmp_path / "sum" / "toy.json").read_text())["summary"]["mean"] == pytest.approx(0.15)
    assert (tmp_path / "sum" / "toy.png").exists()
    with pytest.raises(TypeError, match="sets name and stem"):
        register(type("Nameless", (Study,), {}))
