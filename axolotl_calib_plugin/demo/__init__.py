"""The offline reproduction behind ``axolotl-calib demo`` (see ``README.md`` in this folder).

Modules: :mod:`.world` (synthetic MCQ world with a known p*), :mod:`.configs` (the Axolotl YAMLs),
:mod:`.support` (a small Axolotl plugin that makes the DPO run's per-step gc cheap),
:mod:`.evaluate` (lm-eval runner with the ``calib_jsonl`` tasks), :mod:`.analysis` (metrics, preference
collapse, temperature scaling), :mod:`.report` (table, reliability diagrams), :mod:`.pipeline` (the run),
:mod:`.study` (the multi-seed runner), :mod:`.studies` (one Study subclass per study), :mod:`.stats` (their
statistics).
Nothing here imports axolotl or lm-eval at import time except :mod:`.support` (an Axolotl plugin).
"""
