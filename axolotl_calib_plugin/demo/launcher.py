"""Run Axolotl's train CLI for many configs, paying its import cost once.

``python -m axolotl.cli.train cfg.yml`` spends ~20 s of a tiny CPU run importing torch, transformers,
TRL and Axolotl before it reads the config. The study trains ~20 tiny models per seed, so the demo starts
them from a fork server that has imported Axolotl's train CLI once (``multiprocessing``'s forkserver
with a preload): every run is still a fresh process (its own Axolotl config, plugin manager, model and
logs) running exactly what ``python -m axolotl.cli.train`` runs -- ``axolotl.cli.train.do_cli(config)``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

__all__ = ["forkserver_context", "train_child", "train_in_forked_process"]

_PRELOAD = "axolotl_calib_plugin.demo._axolotl_preload"
_CTX = None


def forkserver_context():
    global _CTX
    if _CTX is None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([_PRELOAD])
        _CTX = ctx
    return _CTX


def train_child(cfg_path: str, log_path: str, env: dict) -> None:
    # multiprocessing makes a fork-server child's default start method "forkserver": every DataLoader worker of
    # the run (one per epoch and per evaluation) would then come from a new server and re-import Axolotl to
    # unpickle the dataset (~10-25 s each). Back to the interpreter's default, as in `python -m axolotl.cli.train`.
    mp.set_start_method(None, force=True)
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process ends with the run
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = ["axolotl.cli.train", cfg_path]
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    from axolotl.cli.train import do_cli

    do_cli(config=cfg_path)


def train_in_forked_process(cfg_path: str, log_path: str, env: dict) -> int:
    """Run ``axolotl.cli.train.do_cli(cfg_path)`` in a process forked from the preloaded server; output is
    appended to ``log_path``; returns the exit code (0 on success)."""
    proc = forkserver_context().Process(target=train_child, args=(cfg_path, log_path, dict(env)))
    proc.start()
    proc.join()
    return int(proc.exitcode if proc.exitcode is not None else 1)
