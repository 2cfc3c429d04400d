"""The shape every study has: a plan of runs per seed, a summary of the seeds, a Markdown rendering, figures.

A study is a :class:`Study` subclass; :func:`axolotl_calib_plugin.demo.study.run_study` runs its plan for every
seed (the pipeline of :mod:`axolotl_calib_plugin.demo.pipeline`), builds ``{"meta", "per_seed"}`` and calls
:meth:`Study.write`, which is the only place a study's files are written: ``<stem>.json`` (meta, every seed's
numbers and the summary), ``<stem>.md`` (rendered from that JSON alone, so a committed summary can be re-rendered
byte for byte without rerunning anything: :meth:`Study.rerender`) and the figures.
"""

from __future__ import annotations

import json
import os

from ..pipeline import Plan

__all__ = ["ACC_NONINFERIORITY_MARGIN", "HOLM_ALPHA", "MARGINS_TEXT", "Study", "TS_EQUIVALENCE_MARGIN", "seed_values"]

#: Pre-registered margins, fixed before the verdicts are read and shared by every study that compares methods.
#: Accuracy is "kept" (non-inferior) when the 95% interval of the paired accuracy difference lies above -1 point.
ACC_NONINFERIORITY_MARGIN = 0.01
#: Two methods are "level" on in-domain conf-ECE when the 95% interval of their paired difference lies inside
#: +-0.01 (equivalence); a method is "no worse" than temperature scaling when that interval's upper end is below
#: +0.01 (the conf-ECE margin of the online study too).
TS_EQUIVALENCE_MARGIN = 0.01
#: family-wise error rate of the Holm-adjusted p-values
HOLM_ALPHA = 0.05
MARGINS_TEXT = (f"Pre-registered margins: accuracy non-inferior when the 95% interval of Δ accuracy lies above "
                f"−{100 * ACC_NONINFERIORITY_MARGIN:g} point; level with a baseline when the 95% interval of Δ in-domain "
                f"conf-ECE lies inside ±{TS_EQUIVALENCE_MARGIN:g}, no worse than it when its upper end lies below "
                f"+{TS_EQUIVALENCE_MARGIN:g}; Holm-adjusted p below {HOLM_ALPHA:g}.")


def seed_values(per_seed: dict, key: str, dom: str, metric: str) -> list:
    """Seed by seed, ``metric`` of run ``key`` on split ``dom`` (None where a seed lacks it)."""
    return [s["rows"].get(key, {}).get(dom, {}).get(metric) for s in per_seed.values()]


class Study:
    """Subclass and set ``name`` (the ``--study`` value and registry key), ``stem`` (the output file names),
    ``plan`` (and ``settings`` to change the data / model sizes); override :meth:`summarize` and :meth:`render`, and :meth:`figures` / :meth:`seed_extras` when the
    study has them. Register the subclass with :func:`axolotl_calib_plugin.demo.studies.register`."""

    name: str = ""
    stem: str = ""
    plan: Plan = Plan()
    #: ``DemoSettings`` fields the study sets over the runner's settings (a reduced study); none by default
    settings: dict = {}

    def run_seed(self, seed_dir: str, seed: int, settings, plan: Plan, parallel: int, reuse: bool) -> dict:
        """Run (or resume) one seed into ``seed_dir``; returns ``{"meta": {errors, timings_s, wall_time_s,
        reused_runs}, "rows"}``. Default: the synthetic world's pipeline with ``plan`` (the runner's ``run_seed``)."""
        from ..pipeline import run_seed

        return run_seed(seed_dir, seed, settings, plan, parallel=parallel, reuse=reuse, plots=False)

    def finished_seed(self, seed_dir: str, seed: int) -> dict:
        """A seed that already ran, read back without running anything (``{"meta", "rows"}`` of its
        ``results.json``); :class:`~axolotl_calib_plugin.orchestrate.StepFailed` naming the file when it is not
        there. Studies whose runs can be checked against the current code override this to check them."""
        from ...orchestrate import StepFailed

        path = os.path.join(seed_dir, "results.json")
        try:
            with open(path, encoding="utf-8") as f:
                res = json.load(f)
        except (OSError, ValueError) as e:
            raise StepFailed(f"seed {seed}: cannot read {path} ({e}); run the seed first") from None
        if not isinstance(res, dict) or not isinstance(res.get("meta"), dict) or not isinstance(res.get("rows"), dict):
            raise StepFailed(f"seed {seed}: {path} is not a seed's results (meta and rows); run the seed again")
        return res

    def describe(self, settings, plan: Plan) -> dict:
        """What the study's meta records of its settings and plan."""
        from dataclasses import asdict

        from ..pipeline import calib_name

        return {"settings": asdict(settings), "plan": asdict(plan),
                "lambda_key": {str(lam): calib_name("aligned", "cft", lam) for lam in plan.lambdas}}

    def seed_extras(self, seed_dir: str) -> dict:
        """Anything beyond the run rows a seed's entry in ``per_seed`` keeps, read from the seed's folder."""
        return {}

    def summarize(self, per_seed: dict) -> dict:
        """The across-seed summary of ``per_seed`` (seed -> ``{"rows", ...}``): what :meth:`render` reads."""
        raise NotImplementedError

    def render(self, study: dict) -> str:
        """The Markdown of ``study`` (``{"meta", "per_seed", "summary"}``), from the study dict alone."""
        raise NotImplementedError

    def figures(self, study: dict, summary_dir: str) -> list[str]:
        """Write the study's figures into ``summary_dir``; returns their paths (none by default)."""
        return []

    def paths(self, summary_dir: str) -> dict:
        return {ext: os.path.join(summary_dir, f"{self.stem}.{ext}") for ext in ("json", "md")}

    def write(self, study: dict, summary_dir: str, figures: bool = True) -> dict:
        """Summarise ``study["per_seed"]`` into ``study["summary"]``, then write the JSON, the Markdown and (with
        ``figures``) the figures into ``summary_dir``."""
        study["summary"] = self.summarize(study["per_seed"])
        paths = self.paths(summary_dir)
        with open(paths["json"], "w", encoding="utf-8") as f:
            json.dump(study, f, indent=1)
        with open(paths["md"], "w", encoding="utf-8") as f:
            f.write(self.render(study))
        if figures:
            self.figures(study, summary_dir)
        return study

    def rerender(self, summary_dir: str, figures: bool = False) -> dict:
        """Re-summarise and re-render ``<stem>.json`` in ``summary_dir`` in place (no run is touched)."""
        with open(self.paths(summary_dir)["json"], encoding="utf-8") as f:
            study = json.load(f)
        return self.write(study, summary_dir, figures=figures)
