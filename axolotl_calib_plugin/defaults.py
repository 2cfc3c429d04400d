"""The one home of the defaults that several commands share, so they cannot drift apart: the paper's pair of
evaluation tasks (the table's in- and out-of-domain columns, Sec. 6.1) and the rows ``axolotl-calib reproduce``
builds. Imports nothing: the CLI's parser, :mod:`axolotl_calib_plugin.reproduce` and
:mod:`axolotl_calib_plugin.eval.compare` read these names.
"""

from __future__ import annotations

__all__ = ["EVAL_TASKS", "IN_TASK", "METHODS", "OUT_TASK", "ROW_NAMES"]

#: the in-domain column: the pooled MMLU / MedMCQA / OpenBookQA suite
IN_TASK = "calib_in_domain_pooled"
#: the out-of-domain column: ARC-Challenge
OUT_TASK = "calib_arc_challenge"
#: the tasks ``axolotl-calib eval`` runs unless told otherwise
EVAL_TASKS = (IN_TASK, OUT_TASK)
#: ``reproduce``'s rows besides the start model, in table order: temperature scaling (trains nothing), label
#: smoothing, SFT alone (calib_lambda 0: what the calibration loss adds is CFT minus this row), CFT and RCFT
METHODS = ("ts", "ls", "sft", "cft", "rcft")
#: each row's name in the table (``dpo`` is the start model)
ROW_NAMES = {"dpo": "DPO", "ts": "TS", "ls": "LS", "sft": "SFT", "cft": "CFT", "rcft": "RCFT"}
