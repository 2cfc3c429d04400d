"""What does an EM refresh cost against a training epoch? Exact, first-of-an-online-run, online and held-out.

On the tiny Llama of bench_step.py (same model, data and batches; benchmarks/common.py builds them):

(b) one EM refresh (``estep.run_estep`` over the whole training set + the M-step ``EMState.from_estep``) vs one
    training epoch (every batch once, with the ECE term). Target: ratio <= 0.40.
(b') the exact E-step against its floor (a bare ``inference_mode`` forward over the same prompts, batched alike),
    and the first E-step of an online run at its default (``calib_first_estep_fraction`` 0.1).
    Target: first E-step / epoch <= 0.05, so that an online run stays within 5 % of plain SFT at one epoch.
(e) ``calib_estep: online``: its refresh (gather the record + M-step, no forward) vs the epoch whose forwards
    recorded it. Target: ratio <= 0.02. Then the total of an online run over 1, 2, 5, 10 epochs *computed* from
    the parts (bench_e2e.py measures whole runs).
(f) the held-out M-step variants (``calib_bin_accuracy: heldout``, ``calib_targets: temperature``) per refresh, as
    a ratio to one epoch, and the forward over the held-out rows a refresh runs when no evaluation left them.
    Reported, no target.

Timing protocol as in bench_step.py (alternating runs, verdicts on the median of per-pair ratios).

``--model DIR`` / ``--data FILE.jsonl`` / ``--clock cpu``: as in bench_step.py.

Usage: python benchmarks/bench_estep.py [--rows 64] [--batch 8] [--hidden 256] [--layers 4] [--words 75]
       [--repeats 5] [--threads 1] [--model DIR] [--data FILE.jsonl] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from axolotl_calib_plugin.offline import OFFLINE_ENV
os.environ.update(OFFLINE_ENV)

import torch  # noqa: E402

from common import (Setup, ab_timings, add_model_args, apply_threads, banner, build, em_refresh,  # noqa: E402
                    now, report_ratio, step, sync)


# ----------------------------------------------------------------------------- (b') the E-step's floor
def estep_floor_report(s: Setup, reps: int) -> float:
    """(b') Is the exact E-step at its floor? The same prompts (cut at t*, length-sorted, batched as run_estep does),
    pre-built, through a bare ``inference_mode`` forward with ``logits_to_keep=1`` and nothing else, timed in the same
    rounds as the E-step and a training epoch. Also timed there: the first E-step of an online run at its defaults,
    ``run_estep`` over ``calib_first_estep_fraction`` = 0.1 of the prompts, which must cost <= 0.05 of an epoch
    for an online run to stay within 5 % of plain SFT at one epoch (verdict printed here). Returns (first E-step at the online default, exact E-step) / epoch."""
    import numpy as np

    from axolotl_calib_plugin.train.args import ONLINE_FIRST_ESTEP_FRACTION
    from axolotl_calib_plugin.train.estep import first_estep_entries, run_estep

    d, bs = s.estep_data, s.settings.calib_estep_batch_size
    order = np.argsort(d.pos, kind="stable")
    prompts = [tuple(t.to(s.device) if torch.is_tensor(t) else t for t in d.prompts(order[i:i + bs], int(s.tok.pad_token_id)))
               for i in range(0, len(order), bs)]

    def bare():
        s.model.eval()
        with torch.inference_mode():
            for ids, mask, _ in prompts:
                s.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
        s.model.train()

    def estep(data):
        s.model.eval()
        run_estep(s.model, data, list(s.calib_trainer.calib.option_ids), batch_size=bs, device=s.device,
                  pad_id=int(s.tok.pad_token_id), show_progress=False)
        s.model.train()

    sub = d.subset(first_estep_entries(d.sample_id, ONLINE_FIRST_ESTEP_FRACTION, seed=0))

    def epoch():
        for b in s.calib_batches:
            step(s, s.calib_trainer, b)

    fns = {"epoch": epoch, "estep": lambda: estep(d), "bare": bare, "first": lambda: estep(sub)}
    times = {k: [] for k in fns}
    bare(); estep(d)  # noqa: E702  (warm-up)
    for r in range(reps):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = now()
            fns[k]()
            sync(s)
            times[k].append(now() - t0)
    med = statistics.median
    e_over_epoch = med(a / b for a, b in zip(times["estep"], times["epoch"]))
    bare_over_epoch = med(a / b for a, b in zip(times["bare"], times["epoch"]))
    e_over_bare = med(a / b for a, b in zip(times["estep"], times["bare"]))
    first_over_epoch = med(a / b for a, b in zip(times["first"], times["epoch"]))
    print(f"\n(b') The exact E-step against its floor: the same {len(d)} prompts, pre-built and batched alike "
          f"({len(prompts)} batches), through a bare inference_mode forward (logits_to_keep=1, nothing else); "
          f"{reps} rounds of epoch / E-step / bare forward (order alternating)")
    print(f"   medians: epoch {med(times['epoch']) * 1e3:.0f} ms, run_estep {med(times['estep']) * 1e3:.0f} ms, "
          f"bare forward {med(times['bare']) * 1e3:.0f} ms")
    print(f"   run_estep / bare forward {e_over_bare:.3f}x (the E-step's own overhead: batching, gather, softmax); "
          f"bare forward / epoch {bare_over_epoch:.3f}x (the floor of any exact E-step on this model and data)")
    print(f"   exact E-step (every refresh of calib_estep: exact; the first with calib_first_estep_fraction: 1) / epoch: "
          f"{e_over_epoch:.3f}x (reported)")
    print(f"   first E-step of an online run (calib_first_estep_fraction {ONLINE_FIRST_ESTEP_FRACTION}: {len(sub)} of "
          f"{len(d)} prompts) / epoch: {first_over_epoch:.3f}x   target <= 0.05x: "
          f"{'PASS' if first_over_epoch <= 0.05 else 'FAIL'}")
    return first_over_epoch, e_over_epoch


# ----------------------------------------------------------------------------- (e) the online E-step
def online_report(s: Setup, reps: int, exact_epochs: list, exact_refreshes: list, first_per_epoch: float
                  ) -> tuple[float, dict]:
    """(e) ``calib_estep: online``: its refresh (gather the record + M-step, no forward) vs the epoch whose
    training forwards filled the record, through the real callback; then the total training time of an
    online run (its first E-step over a tenth of the prompts, ``first_per_epoch`` of a calibration epoch from (b'),
    then E epochs with recording and E-1 online refreshes) vs plain SFT."""
    from axolotl_calib_plugin.train.callbacks import EMRefreshCallback
    from axolotl_calib_plugin.train.online import OnlineRecord

    calib = s.calib_trainer.calib
    calib.online = OnlineRecord()
    cb = EMRefreshCallback(calib, s.calib_trainer)
    st = s.calib_trainer.state
    st.epoch, st.global_step = 0.0, 0
    cb.refresh_now(st, 0)  # the first refresh is exact and builds the online table
    print(f"\n(e) Online E-step (calib_estep: online): its refresh (gather the record + M-step, no forward) vs the "
          f"epoch whose training forwards recorded it ({len(s.calib_batches)} steps); {reps} rounds, each a plain SFT "
          "epoch and an online epoch + refresh in alternating order")
    t_epoch, t_refresh, t_plain = [], [], []

    def online_epoch(r):
        t0 = now()
        for b in s.calib_batches:
            step(s, s.calib_trainer, b)
        sync(s)
        t_epoch.append(now() - t0)
        assert len(calib.online) == len(s.calib_batches) * s.calib_batches[0]["input_ids"].shape[0]
        t0 = now()
        cb.refresh_now(st, r + 1)
        t_refresh.append(now() - t0)
        assert cb.history[-1]["calib/estep_online"] == 1

    def plain_epoch():
        t0 = now()
        for b in s.plain_batches:
            step(s, s.plain_trainer, b)
        sync(s)
        t_plain.append(now() - t0)

    for r in range(reps):
        for side in ((plain_epoch, lambda: online_epoch(r)) if r % 2 == 0 else (lambda: online_epoch(r), plain_epoch)):
            side()
    ratio = report_ratio("A: one epoch recording the probabilities", t_epoch, "B: one online refresh", t_refresh,
                         0.02, unit="ms")
    calib.online = None
    med = statistics.median
    # everything in units of a plain SFT epoch, from ratios within a round (a slow spell of the box cancels out)
    q = med(e / p for e, p in zip(t_epoch, t_plain))
    r_online = med(x / p for x, p in zip(t_refresh, t_plain))
    r_exact = med(x / e for x, e in zip(exact_refreshes, exact_epochs)) * q
    r_first = first_per_epoch * q
    print(f"   per plain SFT epoch (medians of within-round ratios): online epoch {q:.3f}x, online refresh "
          f"{r_online:.4f}x, exact E-step {r_exact:.3f}x (from (b)), online first E-step {r_first:.3f}x (from (b'))")
    print("   total training time vs plain SFT, COMPUTED from the parts: online = (its first E-step + E online epochs + "
          "(E-1) online refreshes) / E plain epochs; exact = E x (exact E-step + epoch) / E plain epochs")
    totals = {}
    for e in (1, 2, 5, 10):
        totals[e] = (r_first + e * q + (e - 1) * r_online) / e
        print(f"   {e:2d} epochs: online {totals[e]:.3f}x plain SFT (computed; the measured totals and their "
              f"verdicts are bench_e2e.py's); exact E-step every epoch {r_exact + q:.3f}x")
    return ratio, totals


# ----------------------------------------------------------------------------- (f) held-out M-step variants
def heldout_report(s: Setup, reps: int, epoch_times: list) -> dict:
    """(f) Cost of the held-out M-step variants per refresh, as a ratio to one plain epoch (median of ``epoch_times``):
    the M-step alone with training-row bins, held-out bins and temperature targets (held-out rows = a quarter of the
    training rows' count, their probabilities given), and the forward over the held-out rows that a refresh runs when
    no evaluation at the same step left them (with ``eval_strategy: epoch`` only the first refresh does)."""
    from axolotl_calib_plugin.train.em_state import EMState
    from axolotl_calib_plugin.train.estep import run_estep

    s.model.eval()
    with torch.no_grad():
        out = run_estep(s.model, s.estep_data, list(s.calib_trainer.calib.option_ids),
                        batch_size=s.settings.calib_estep_batch_size, device=s.device, pad_id=int(s.tok.pad_token_id),
                        show_progress=False)
    s.model.train()
    n_h = max(2, len(s.estep_data) // 4)
    held = (out["probs"][:n_h], out["labels"][:n_h], out["num_options"][:n_h])

    def mstep(**kw):
        return lambda: EMState.from_estep(out["sample_ids"], out["probs"], out["labels"], out["num_options"],
                                          n_bins=s.settings.calib_bins, **kw)

    from axolotl_calib_plugin.train.estep import EStepData

    sub = EStepData(s.dataset.select(range(n_h)))

    def heldout_forward():
        s.model.eval()
        run_estep(s.model, sub, list(s.calib_trainer.calib.option_ids), batch_size=s.settings.calib_estep_batch_size,
                  device=s.device, pad_id=int(s.tok.pad_token_id), show_progress=False)
        s.model.train()

    fns = {"M-step, training-row bins": mstep(),
           "M-step, held-out bins": mstep(heldout=held, bin_accuracy="heldout"),
           "M-step, held-out temperature targets": mstep(heldout=held, targets_kind="temperature"),
           f"forward over {n_h} held-out rows (no cached evaluation)": heldout_forward}
    epoch = statistics.median(epoch_times)
    print(f"\n(f) Held-out M-step variants per refresh, as a ratio to one training epoch ({epoch * 1e3:.0f} ms; "
          f"{len(s.estep_data)} training rows, {n_h} held-out rows), median of {reps} runs each")
    ratios = {}
    for label, fn in fns.items():
        fn()  # warm-up
        times = []
        for _ in range(reps):
            t0 = now()
            fn()
            sync(s)
            times.append(now() - t0)
        ratios[label] = statistics.median(times) / epoch
        print(f"   {label:<62s} {statistics.median(times) * 1e3:9.2f} ms  = {ratios[label]:.4f}x an epoch")
    return ratios


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds of each comparison")
    args = ap.parse_args(argv)
    apply_threads(args)
    t0 = time.perf_counter()
    s = build(args)
    banner(s, args, "bench_estep: EM refresh (exact, online, held-out) vs a training epoch (CFT, calib_lambda=1) on a "
                    "local tiny Llama", time.perf_counter() - t0)
    reps = args.repeats

    # (b) E-step vs one epoch --------------------------------------------------------------------
    n_steps = len(s.calib_batches)
    print(f"\n(b) One EM refresh (E-step over all {len(s.dataset)} rows + M-step, "
          f"calib_estep_batch_size={s.settings.calib_estep_batch_size}) vs one training epoch ({n_steps} steps "
          f"with the ECE term); {reps} alternating runs")

    def run_epoch():
        for b in s.calib_batches:
            step(s, s.calib_trainer, b)

    def run_refresh():
        s.calib_trainer.calib.em_state = em_refresh(s)

    te, tr_ = ab_timings(run_epoch, run_refresh, reps, warmup=0, sync_fn=lambda: sync(s))
    ratio_b = report_ratio("A: one training epoch", te, "B: one EM refresh (E-step + M-step)", tr_, 0.40,
                           unit="ms")
    from axolotl_calib_plugin.train.estep import EStepData

    t1 = now()
    EStepData(s.dataset)
    print(f"   (not included above: EStepData(train_dataset), built once per run and cached: "
          f"{(now() - t1) * 1e3:.1f} ms)")
    ratio_first, ratio_exact_first = estep_floor_report(s, reps)
    # (e) the online E-step, (f) the held-out M-step variants -------------------------------------------
    ratio_online, totals = online_report(s, reps, te, tr_, ratio_first)
    heldout_report(s, reps, te)

    print(f"\n summary: exact E-step/epoch {ratio_b:.3f}x (target <= 0.40), "
          f"first E-step of an online run/epoch {ratio_first:.3f}x (target <= 0.05; exact {ratio_exact_first:.3f}x), "
          f"online E-step/epoch {ratio_online:.4f}x "
          "(target <= 0.02), total training time online vs plain SFT computed from the parts "
          + ", ".join(f"{e} epochs {r:.3f}x" for e, r in totals.items()) + " (measured: bench_e2e.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
