"""How optimistic is a calibration number scored on the rows that set the targets?

The held-out M-step variants (held-out bin accuracies, temperature targets) set their targets from the model's
predictions on held-out rows. A conf-ECE scored on those same rows measures how well the model reached its own
targets, not how calibrated it is on new questions. This study trains, per seed, the over-fine-tuned arm's CFT
with both held-out variants at lambda 1, its lambda-0 run (plain SFT through the plugin) and temperature scaling
(all fitted on the TS-fit split, ``calib_target_fraction`` 1), scores every model on the fit split (its target
rows) and on ``eval_in`` (report rows, which set no target), and prints the optimism (:func:`.heldout.optimism_lines`).

A reduced plan of the held-out study (CFT only, lambda 0 and 1, 1000 training questions, no preference domain) so
that a seed fits in 2-11 minutes of one core (measured, on a shared machine); the held-out study (``study/heldout.md``) is not affected by this
optimism: its targets come from the TS-fit split and its numbers from ``eval_in``.
"""

from __future__ import annotations

from ..pipeline import Plan
from .heldout import FIT_SPLIT, HeldoutStudy, absolute_lines, header_lines, optimism_lines

__all__ = ["OptimismStudy", "PLAN", "SETTINGS", "TITLE"]

PLAN = Plan(arms=("overfit",), lambdas=(0.0, 1.0), label_smoothing=False, online=False, sweep_overfit=True,
            variants=("heldout", "temp"), fix_arms=("overfit",), heldout_eval=True, modes=("cft",))
#: the DemoSettings fields this study changes (a seed in 2-11 min on one core); the smaller training set changes every
#: later draw of a seed's data, so its TS-fit and eval questions are not the held-out study's
SETTINGS = {"n_train": 1000, "n_pref_base": 0, "n_pref_dpo": 0, "n_pref_eval": 0}
TITLE = "# Optimism of scoring on target rows: the held-out M-step's fit split vs rows that set no target"


class OptimismStudy(HeldoutStudy):
    """``--study heldout_optimism``: ``heldout_optimism.json``, ``heldout_optimism.md``."""

    name = "heldout_optimism"
    stem = "heldout_optimism"
    plan = PLAN
    settings = SETTINGS
    title = TITLE

    def render(self, study: dict) -> str:
        s = study["summary"]
        lines = header_lines(study, self.title)
        lines += [f"Runs per seed (over-fine-tuned arm): CFT at λ=0, CFT with held-out bins and with held-out "
                  f"temperature targets at λ=1 (their targets set from every `{FIT_SPLIT}` row), temperature scaling "
                  "fitted on the same rows. Every model is scored on both splits by lm-eval.", ""]
        lines += optimism_lines(s) or ["No seed was scored on the fit split: no optimism to report.", ""]
        lines += absolute_lines(s)
        lines.append("")
        return "\n".join(lines)

    def figures(self, study: dict, summary_dir: str) -> list[str]:
        return []
