"""``axolotl-calib``: the project's console script (``axolotl-calib <command> --help`` explains each).

    eval         calibration report of a model folder or peft adapter (lm-eval + report + diagrams)
    tasks-path   the lm-eval task folder to pass as ``lm_eval --include_path``
    temperature  temperature-scaling baseline fitted on lm-eval samples
    table        a Table-2-style comparison of several evaluated runs
    diagnose     conf-ECE / cw-ECE / acc of a model on an MCQ file and the calibratable-regime verdict
    preference   does the model still prefer the chosen responses of a held-out preference file (DPO check)
    make-tiny    a local tiny Llama + tokenizer (no hub) for trying configs on a CPU
    reproduce    a DPO model + an MCQ calibration set -> TS / LS / SFT / CFT / RCFT trained, evaluated, Table 2
    demo         the offline reproduction (world with known truth -> SFT -> DPO -> fixes -> lm-eval)

A shell over library functions: :mod:`.parser` (argparse types, the shared flags, help text, pre-flight checks)
and :mod:`.commands` (one thin ``cmd_*`` per command, and :func:`main`). No module of the package imports it.
"""

from .commands import main

__all__ = ["main"]
