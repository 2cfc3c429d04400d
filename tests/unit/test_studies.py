"""The Study shape: the committed summaries re-render byte for byte from their JSON, and run_study dispatches
through the registry (a new study is one subclass)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from axolotl_calib_plugin.demo import pipeline
from axolotl_calib_plugin.demo import study as runner
from axolotl_calib_plugin.demo.studies import STUDIES, Study, get_study, register, seed_values

STUDY_DIR = Path(__file__).resolve().parents[2] / "study"


@pytest.mark.parametrize("name", ["main", "heldout", "alignment", "online", "heldout_optimism", "real", "real_staged"])
def test_committed_summary_rerenders_byte_identical_from_its_json(tmp_path, name):
    """study/<stem>.md is what the study code renders from study/<stem>.json (re-summarised from the per-seed
    numbers), and the JSON itself round-trips: nothing in the committed summary is hand-edited or stale."""
    s = get_study(name)
    shutil.copy(STUDY_DIR / f"{s.stem}.json", tmp_path / f"{s.stem}.json")
    s.rerender(str(tmp_path))
    assert (tmp_path / f"{s.stem}.md").read_bytes() == (STUDY_DIR / f"{s.stem}.md").read_bytes()
    assert (tmp_path / f"{s.stem}.json").read_bytes() == (STUDY_DIR / f"{s.stem}.json").read_bytes()


def test_the_studies_are_registered_study_subclasses_with_their_own_files():
    assert set(STUDIES) == {"main", "heldout", "alignment", "online", "heldout_optimism", "real", "real_staged"}
    assert all(issubclass(cls, Study) for cls in STUDIES.values())
    assert sorted(cls.stem for cls in STUDIES.values()) == ["alignment", "heldout", "heldout_optimism", "online",
                                                              "real_model", "real_model_staged", "study"]
    with pytest.raises(KeyError, match="unknown study 'nope'; known: main, heldout, alignment, online, heldout_optimism, "
                                       "real, real_staged"):
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

    monkeypatch.setattr(pipeline, "run_seed", fake_run_seed)  # the synthetic seed pipeline every Study uses by default
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


ROOT = STUDY_DIR.parent
#: a verdict quoted in a doc: ``> [study/heldout.md](...): <the line, verbatim>``
QUOTE = re.compile(r"^\s*> \[(study/[a-z_]+\.md)\]\([^)]*\): (.+)$", re.M)
DOCS = ("README.md", "study/README.md", "axolotl_calib_plugin/README.md")


@pytest.mark.parametrize("doc", DOCS)
def test_docs_quote_their_verdicts_word_for_word_from_the_rendered_study_markdown(doc):
    """The docs' verdicts are quoted from study/*.md (which the study code renders from the pre-registered margins),
    so a doc cannot call a variant level, kept or significant where the study does not; and the claims the study
    does not support are gone."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    quotes = QUOTE.findall(text)
    assert quotes, f"{doc} quotes no verdict from study/*.md"
    for path, line in quotes:
        assert line in (ROOT / path).read_text(encoding="utf-8"), f"{doc} quotes a line {path} does not have: {line}"
    for claim in (r"goal of issue \d+ is met", r"not yet significant", r"seeds so far", r"statistically tied",
                  r"every held-out variant at λ=10", r"[Ll]evel\s+with\s+temperature\s+scaling\s+(on|fitted|\()"):
        assert not re.search(claim, text), f"{doc}: {claim}"


def _d(mean, lo, hi, p=None):
    return {"mean": mean, "lo": lo, "hi": hi, "n": 5, "half": (hi - lo) / 2, "p": p}


@pytest.mark.parametrize("ts, acc, p_holm, want", [
    # the held-out study's numbers: gain after Holm, accuracy non-inferior, TS interval reaching past +0.01
    (_d(0.010, -0.018, 0.038), _d(0.0028, -0.0053, 0.0109), 0.0214,
     {"ece_gain_holm": True, "acc": "reproduced", "vs_ts": "not shown level with TS", "all_three": False}),
    # no worse than TS (upper end below +0.01) but not level (lower end past -0.01); gain not after Holm
    (_d(-0.003, -0.011, 0.005), _d(0.0001, -0.0088, 0.0091), 0.0525,
     {"ece_gain_holm": False, "acc": "reproduced", "vs_ts": "no worse than TS, not shown level",
      "all_three": False, "all_three_unadjusted": True}),
    # accuracy interval reaching below -1 point: not shown non-inferior
    (_d(0.003, -0.007, 0.009), _d(-0.0027, -0.0145, 0.0092), 0.01,
     {"acc": "inconclusive", "vs_ts": "level with TS", "all_three": False}),
    # worse than TS: interval above 0
    (_d(0.044, 0.004, 0.084), _d(-0.006, -0.0094, -0.0026), 0.01,
     {"vs_ts": "worse than TS", "acc": "reproduced", "all_three": False}),
    (_d(0.001, -0.005, 0.008), _d(0.001, -0.004, 0.006), 0.01, {"all_three": True, "vs_ts": "level with TS"}),
])
def test_variant_verdicts_follow_the_pre_registered_margins(ts, acc, p_holm, want):
    from axolotl_calib_plugin.demo.studies.heldout import variant_verdict

    gain = _d(-0.09, -0.12, -0.05)
    gain["p_holm"] = p_holm
    v = variant_verdict({"vs_lam0": {"conf_ece_in": gain, "acc_in": acc}, "vs_ts": {"conf_ece_in": ts}})
    assert {k: v[k] for k in want} == want


def test_equivalence_by_hand():
    from axolotl_calib_plugin.demo.stats import equivalence

    assert equivalence(_d(0.0, -0.009, 0.009), 0.01) == "equivalent"
    assert equivalence(_d(0.0, -0.011, 0.005), 0.01) == "inconclusive"
    assert equivalence(_d(-0.088, -0.127, -0.050), 0.01) == "different"
    assert equivalence({"n": 1, "mean": 0.0, "lo": float("nan"), "hi": float("nan")}, 0.01) == "inconclusive"
