"""The training progress bar's ETA covers training steps only: the first E-step (and Axolotl's step-0 evaluation)
run before the first step, after the bar was created, and have bars of their own."""

from __future__ import annotations

import time

from helpers import make_mcq_rows
from test_trainer import _cfg, _trainer


def test_first_eta_excludes_the_first_estep(tmp_path, tiny_model_dir):
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from axolotl_calib_plugin.train.callbacks import EMRefreshCallback

    tr, _, _ = _trainer(tmp_path, tiny_model_dir, _cfg(), make_mcq_rows(8, num_options=4, seed=3))
    cb = EMRefreshCallback(tr.calib, tr)
    slow = 3.0
    refresh = cb.refresh_now

    def slow_refresh(state, epoch):  # an E-step that takes `slow` seconds, as on a real model
        time.sleep(slow)
        return refresh(state, epoch)

    cb.refresh_now = slow_refresh
    tr.add_callback(cb)
    tr.remove_callback(PrinterCallback)  # the test trainer runs with disable_tqdm; a user's shows the bar
    bar_cb = ProgressCallback()
    tr.add_callback(bar_cb)
    seen = {}

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.setdefault(state.global_step, bar_cb.training_bar.format_dict["elapsed"])

    tr.add_callback(FirstStep())
    tr.args.num_train_epochs = 1
    tr.train()
    assert tr.calib.em_state is not None and tr.calib.em_state.refresh_count == 1
    # the bar's clock at step 1 holds one training step, not the 3 s E-step as well (the bar's first ETA is this
    # time per step)
    step = (seen[4] - seen[1]) / 3
    assert seen[1] < step + slow / 2, seen
