"""End-to-end training time: plain SFT vs CFT (exact E-step, online E-step, held-out bins), measured whole.

bench_step.py and bench_estep.py time the parts (one step, one E-step, one refresh) and can only *compute* a
run's total from them. This script times whole ``Trainer.train()`` calls, the training loop ``axolotl train`` runs, with the
trainer classes and callback the plugin installs (``CalibrationPlugin.add_callbacks_post_trainer``):

* ``sft``:     the stock ``AxolotlTrainer`` on the same rows without the calib_* columns (no plugin);
* ``exact``:   ``calib_estep: exact`` (Algorithm 1: an E-step forward over every training prompt each epoch);
* ``online``:  ``calib_estep: online`` at its defaults (the first E-step over 10 % of the prompts, live targets for
  the others in epoch 0; later refreshes reuse the training forwards);
* ``heldout``: online + ``calib_bin_accuracy: heldout`` on held-out rows (a quarter of the training rows' count)
  with no evaluation in the run, so each refresh also runs a forward over the held-out rows (the worst case:
  with ``eval_strategy: epoch`` a refresh reuses the evaluation's forwards).

Each variant trains 1, 2 and 5 epochs on the same tiny Llama (hidden 256, 4 layers, 64 MCQ rows of ~120
tokens, batch 8 as in bench_step.py), every run from the same initial weights. Timed: ``trainer.train()``
(dataloader, optimizer, every step, every refresh, the end-of-training state file); not timed: building the
model (once per variant), copying the initial weights in, building the trainer, and collecting the garbage the
previous runs left (``gc.collect()`` before the clock starts; the collection ``Trainer.train()`` itself starts with is
timed).

Protocol: ``--repeats`` rounds; in a round, for each epoch count, blocks in which the variants run back to back in
an order that rotates from block to block, so a slow spell of the machine hits every variant alike. With
``--balance`` (default) an epoch count e gets ceil(max epochs / e) blocks per round (1, 2, 5 epochs: 5, 3, 1): every
epoch count gets about the same timed seconds, and the short runs, whose ratios scatter most (identical 2.4 s runs
back to back: sd 0.06-0.10 s), the most pairs. A variant's ratio to plain SFT is the median of its time / the SFT
time of the same block; the geometric mean with a 95 % t interval is printed beside it. Both
clocks are printed; the verdict uses the CPU time of this process on CPU (1 torch thread, in-process data loading:
other jobs' time slices inflate wall time, not the work done) and wall time on a GPU.
Target: online / SFT <= 1.05 at 1, 2 and 5 epochs (calibration cheap enough to leave on) (PASS/FAIL; run_all exits 2 on a FAIL);
exact and held-out are reported beside it.

``--model DIR`` (e.g. the real model, ``axolotl-calib real-model``'s model/ folder) runs the same variants on that
model and on ``--data`` rows (default: data/train.jsonl beside it; the held-out rows follow the training rows).

Usage: python benchmarks/bench_e2e.py [--repeats 3] [--epochs 1 2 5] [--no-balance] [--variants sft exact online heldout]
       [--rows 64] [--batch 8] [--hidden 256] [--layers 4] [--threads 1] [--model DIR] [--data FILE.jsonl]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time

from axolotl_calib_plugin.offline import OFFLINE_ENV
os.environ.update(OFFLINE_ENV)

import torch  # noqa: E402

from common import add_model_source_args, load_model_and_rows  # noqa: E402

VARIANTS = ("sft", "exact", "online", "heldout")
TARGET = 1.05  # online total / plain SFT total: at most 5 % over plain SFT

#: calib keys of each calibration variant (on top of the CFT preset, lambda 1, letters A-E)
VARIANT_CFG = {
    "exact": {"calib_estep": "exact", "calib_bin_accuracy": "train"},
    "online": {"calib_estep": "online", "calib_bin_accuracy": "train"},
    "heldout": {"calib_estep": "online", "calib_bin_accuracy": "heldout", "val_set_size": 0.25},
}


class Bench:
    """The data (tokenized once), ONE model every run of every variant trains (its initial weights copied back
    in first) and those initial weights.

    One model, not a copy per variant: separate copies of the same weights differ in step time by up to 2.5 %,
    from memory placement alone (measured: identical forward+backward steps on three deep copies, median of 20
    interleaved rounds, 0.985-1.026x the first copy, a different order in each process), a bias as large as the
    effect measured here. The plugin takes its head hooks off at the end of training
    (``remove_head_capture`` in ``EMRefreshCallback.on_train_end``), so an SFT run after a calibration run
    trains a hook-free model; :meth:`run` checks it."""

    def __init__(self, args):
        import datasets

        from axolotl.utils.dict import DictDefault

        from axolotl_calib_plugin.train.args import CalibrationArgs
        from axolotl_calib_plugin.train.columns import CALIB_COLUMNS
        from axolotl_calib_plugin.train.mcq import MCQStrategy

        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        n_held = max(2, args.rows // 4)
        self.tok, first, raw_rows, letters, self.what = load_model_and_rows(args, args.rows + n_held)
        base = {"plugins": ["axolotl_calib_plugin.CalibrationPlugin"], "calib_mode": "cft", "calib_lambda": 1.0,
                **letters}
        self.cfgs = {v: DictDefault({**base, **extra}) for v, extra in VARIANT_CFG.items()}
        strategy = MCQStrategy(self.tok, CalibrationArgs.from_cfg(self.cfgs["exact"]), train_on_inputs=False,
                               sequence_len=1024)
        rows = [strategy.tokenize_row(r, i) for i, r in enumerate(raw_rows)]
        self.seq_len = statistics.mean(len(r["input_ids"]) for r in rows[: args.rows])
        self.train = datasets.Dataset.from_list(rows[: args.rows])
        self.heldout = datasets.Dataset.from_list(rows[args.rows:])
        self.plain_train = self.train.remove_columns(list(CALIB_COLUMNS))
        self.init = copy.deepcopy(first.state_dict())
        self.model = first.to(self.device)
        self.n_params = sum(p.numel() for p in first.parameters())
        #: (variant, epochs) -> per round: wall seconds and CPU seconds of this process
        self.times: dict[tuple[str, int], list[float]] = {}
        self.cpu: dict[tuple[str, int], list[float]] = {}
        self.stats: dict[tuple[str, int], dict] = {}

    def trainer(self, variant: str, epochs: int, out_dir: str):
        from axolotl.core.trainers.base import AxolotlTrainer
        from axolotl.core.training_args import AxolotlTrainingArguments
        from axolotl.utils.collators.batching import DataCollatorForSeq2Seq

        from axolotl_calib_plugin.train.collator import CalibDataCollatorForSeq2Seq
        from axolotl_calib_plugin.train.plugin import CalibrationPlugin
        from axolotl_calib_plugin.train.trainer import AxolotlCalibTrainer

        a = self.args
        model = self.model
        model.load_state_dict(self.init)
        head = model.get_output_embeddings()
        if head._forward_pre_hooks or model._forward_pre_hooks:
            raise RuntimeError("the benchmark model still has forward hooks from an earlier run: the runs would not "
                               "train the same model")
        targs = AxolotlTrainingArguments(
            output_dir=out_dir, per_device_train_batch_size=a.batch, per_device_eval_batch_size=a.batch,
            num_train_epochs=epochs, learning_rate=1e-4, lr_scheduler_type="linear", seed=0, report_to=[],
            save_strategy="no", eval_strategy="no", logging_strategy="steps", logging_steps=1, disable_tqdm=True,
            remove_unused_columns=False, use_cpu=self.device.type == "cpu", dataloader_num_workers=0,
        )
        if variant == "sft":
            coll = DataCollatorForSeq2Seq(tokenizer=self.tok, padding=True, return_tensors="pt")
            return AxolotlTrainer(model=model, args=targs, train_dataset=self.plain_train, data_collator=coll,
                                  processing_class=self.tok)
        coll = CalibDataCollatorForSeq2Seq(tokenizer=self.tok, padding=True, return_tensors="pt")
        tr = AxolotlCalibTrainer(model=model, args=targs, train_dataset=self.train, data_collator=coll,
                                 eval_dataset=self.heldout if variant == "heldout" else None,
                                 eval_data_collator=coll, processing_class=self.tok)
        for cb in CalibrationPlugin().add_callbacks_post_trainer(self.cfgs[variant], tr):  # as axolotl train does
            tr.add_callback(cb)
        return tr

    def run(self, variant: str, epochs: int) -> float:
        out_dir = os.path.join(self.args.workdir, f"{variant}_{epochs}")
        shutil.rmtree(out_dir, ignore_errors=True)
        tr = self.trainer(variant, epochs, out_dir)
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        for quiet in (PrinterCallback, ProgressCallback):  # no per-step log lines in the benchmark's output
            tr.remove_callback(quiet)
        # Collect the previous runs' cyclic garbage (trainers, optimizers) now, untimed: Trainer.train() starts with
        # accelerate's free_memory() -> gc.collect(), which would otherwise charge it to whichever variant runs next
        # (measured: 0.4-0.5 s of a 2.4 s run, and variant-dependent). A real run pays one such collection of
        # its own, timed here too.
        gc.collect()
        sync(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        tr.train()
        sync(self.device)
        sec = time.perf_counter() - t0
        self.times.setdefault((variant, epochs), []).append(sec)
        self.cpu.setdefault((variant, epochs), []).append(time.process_time() - c0)
        cbs = [c for c in tr.callback_handler.callbacks if type(c).__name__ == "EMRefreshCallback"]
        if cbs:
            hist = cbs[0].history
            self.stats[(variant, epochs)] = {
                "refreshes": len(hist), "online": sum(h["calib/estep_online"] for h in hist),
                "refresh_s": sum(h["calib/refresh_seconds"] for h in hist),
                "first_refresh_s": hist[0]["calib/refresh_seconds"] if hist else 0.0,
            }
        self.stats.setdefault((variant, epochs), {})["steps"] = tr.state.global_step
        return sec


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class OnceFilter(logging.Filter):
    """Let a message that starts with ``prefix`` through once: the first E-step's "only 7 prompts" warning is
    expected on the 64 benchmark rows and would otherwise repeat for every online run."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.prefix):
            return True
        first, self.seen = not self.seen, True
        return first


def blocks_per_round(epochs, balance: bool) -> dict[int, int]:
    """How often each epoch count's block (every variant once) runs in a round: with ``balance``, ceil(max / e), so
    every epoch count gets about the same timed seconds and the short runs, whose ratios scatter most, the most
    pairs (1, 2, 5 epochs: 5, 3, 1 blocks)."""
    top = max(epochs)
    return {e: (math.ceil(top / e) if balance else 1) for e in epochs}


def ratio_interval(ratios) -> tuple[float, float, float]:
    """Geometric mean of paired ratios and its 95 % t interval (the studies' :func:`mean_ci` on the log ratios), for
    the reader next to the median verdict."""
    from axolotl_calib_plugin.demo.stats import mean_ci

    ci = mean_ci([math.log(x) for x in ratios])
    return math.exp(ci["mean"]), math.exp(ci["lo"]), math.exp(ci["hi"])


def rotated(items, r: int) -> list:
    k = r % len(items)
    return list(items[k:]) + list(items[:k])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="rounds (each runs every variant at every epoch count)")
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 5])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--rows", type=int, default=64, help="training rows (one epoch = rows / batch steps)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--words", type=int, default=75, help="question length in words (~120 tokens per row at 75)")
    ap.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                    help="repeat each epoch count's block ceil(max epochs / e) times per round (default), so the short "
                    "runs get as many timed seconds as the long ones")
    ap.add_argument("--warmup", type=int, default=1, help="untimed 1-epoch runs of each variant before round 1")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default); see "
                    "benchmarks/README.md for why 1 on a shared small CPU box")
    add_model_source_args(ap)
    ap.add_argument("--out", help="also write the times, ratios and per-run refresh counts here as JSON")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("BENCH_WORKDIR", "/tmp/axolotl_calib_bench"),
                                                      "e2e"))
    args = ap.parse_args(argv)
    if "sft" not in args.variants:
        ap.error("--variants must include sft (every ratio is to plain SFT)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    os.makedirs(args.workdir, exist_ok=True)
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("axolotl_calib_plugin.train.callbacks").addFilter(OnceFilter("calib first E-step:"))

    t0 = time.perf_counter()
    b = Bench(args)
    steps = -(-args.rows // args.batch)
    print("=" * 100)
    print("bench_e2e: whole Trainer.train() runs, calibration (CFT, calib_lambda=1) vs plain SFT, on "
          + (f"the model folder {args.model}" if args.model else "a local tiny Llama"))
    print(f"device {b.device}, torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
          f"{transformers.__version__}; {b.what}; mean {b.seq_len:.0f} tokens; {args.rows} training rows, batch "
          f"{args.batch} ({steps} steps per epoch), {len(b.heldout)} held-out rows (heldout variant); setup "
          f"{time.perf_counter() - t0:.1f}s")
    print(f"{args.repeats} rounds x epochs {args.epochs} (blocks per round {blocks_per_round(args.epochs, args.balance)})"
          f" x variants {args.variants}, variant order rotating per block; "
          f"{args.warmup} untimed 1-epoch warm-up run(s) per variant; load average at start "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for _ in range(args.warmup):
        for v in args.variants:
            b.run(v, 1)
    b.times.clear()
    b.cpu.clear()
    t_rounds = time.perf_counter()
    blocks = blocks_per_round(args.epochs, args.balance)
    for r in range(args.repeats):
        for e in args.epochs:
            for j in range(blocks[e]):
                for v in rotated(args.variants, r + e + j):
                    b.run(v, e)
        print(f"   round {r + 1}/{args.repeats} done ({time.perf_counter() - t_rounds:.0f} s); load average "
              f"{os.getloadavg()[0]:.2f}", flush=True)

    med = statistics.median
    # On CPU the verdict uses the CPU time of this process (1 torch thread, data loading in-process): on a box shared
    # with other jobs, time slices given to them inflate wall times by 2-3x at random, CPU time keeps the work done.
    # On a GPU the CPU time means nothing (the host waits in cuda syncs): wall time there.
    clock = "wall" if b.device.type == "cuda" else "cpu"
    series = {"wall": b.times, "cpu": b.cpu}
    pairs = {c: {k: [t / s for t, s in zip(ts, series[c][("sft", k[1])])] for k, ts in series[c].items()}
             for c in series}
    ratios = {c: {k: med(p) for k, p in pairs[c].items()} for c in pairs}
    print(f"\n time of trainer.train(): median over blocks (every block in parentheses), and the ratio to plain SFT = "
          f"median over blocks of the within-block ratio; verdicts on {clock} time")
    print(f"   {'variant':<8} {'epochs':>6} {'CPU s':>8} {'ratio':>7} {'wall s':>8} {'ratio':>7}  {'refreshes (online)':>18} "
          f"{'refresh s':>9} {'1st refresh s':>13}   CPU s of each block / wall s of each block")
    for e in args.epochs:
        for v in args.variants:
            st = b.stats.get((v, e), {})
            refr = f"{st['refreshes']} ({st['online']})" if "refreshes" in st else "-"
            rs = f"{st['refresh_s']:.2f}" if "refresh_s" in st else "-"
            fs = f"{st['first_refresh_s']:.2f}" if "first_refresh_s" in st else "-"
            print(f"   {v:<8} {e:>6} {med(b.cpu[(v, e)]):8.2f} {ratios['cpu'][(v, e)]:6.3f}x {med(b.times[(v, e)]):8.2f} "
                  f"{ratios['wall'][(v, e)]:6.3f}x  {refr:>18} {rs:>9} {fs:>13}   "
                  f"({', '.join(f'{t:.1f}' for t in b.cpu[(v, e)])} / {', '.join(f'{t:.1f}' for t in b.times[(v, e)])})")
    print("   (refresh s / 1st refresh s: wall seconds inside the EM refreshes of the last round's run, from the callback)")
    ratio = ratios[clock]
    print(f"\n verdicts ({clock} time, median of the paired ratios; target: online / SFT <= {TARGET:.2f} at every "
          "epoch count); n pairs, geometric mean [95% t interval]")
    for e in args.epochs:
        parts = [f"{v} {ratio[(v, e)]:.3f}x" for v in args.variants if v not in ("sft", "online")]
        if "online" in args.variants:
            verdict = "PASS" if ratio[("online", e)] <= TARGET else "FAIL"
            p = pairs[clock][("online", e)]
            gm, lo, hi = ratio_interval(p)
            print(f"   {e} epoch(s): online / SFT {ratio[('online', e)]:.3f}x (target <= {TARGET:.2f}x: {verdict}; "
                  f"n {len(p)}, {gm:.3f}x [{lo:.3f}, {hi:.3f}])" + (f"; beside it: {', '.join(parts)}" if parts else ""))
        else:
            print(f"   {e} epoch(s): {', '.join(parts)} (online not run: no verdict)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"settings": vars(args), "device": str(b.device),
                       "verdict_clock": clock,
                       "runs": [{"variant": v, "epochs": e, "seconds": ts, "cpu_seconds": b.cpu[(v, e)],
                                 "ratio_to_sft": ratio[(v, e)], "wall_ratio_to_sft": ratios["wall"][(v, e)],
                                 "cpu_ratio_to_sft": ratios["cpu"][(v, e)], **b.stats.get((v, e), {})}
                                for (v, e), ts in b.times.items()]}, fh, indent=1)
    print(f" total {time.perf_counter() - t0:.0f} s; load average at end {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
