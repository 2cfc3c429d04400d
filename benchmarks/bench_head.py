"""What does the ECE term cost at a real vocabulary? The output head alone, trainable vs frozen.

The tiny models' vocabulary (600) hides any cost that scales with the vocabulary, so this uses a synthetic
``lm_head`` with V = 128256 (Llama-3) and H = 256, and ``head.option_logits`` + ``loss.ece_loss``: SFT
cross-entropy over 256 positions, with and without the ECE term on ``--batch`` answer positions, with a trainable
(full fine-tuning) and a frozen (LoRA elsewhere) head. Each case runs in a fresh subprocess; the first
forward+backward gives the peak-RSS growth, then the times: the ECE term alone (best of 5) and the SFT head
(best of 3). Reported, no target.

Usage: python benchmarks/bench_head.py [--head-vocab 128256] [--head-hidden 256] [--head-rows 256] [--batch 8]
       [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from axolotl_calib_plugin.offline import OFFLINE_ENV
os.environ.update(OFFLINE_ENV)

import torch  # noqa: E402

from common import HeadOnly, machine_info  # noqa: E402


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+)", fh.read()).group(1))


def head_child(args) -> None:
    """One (d) scenario in this fresh process: the first fwd+bwd gives the peak-RSS growth (a
    fresh process, so no freed-but-kept memory hides allocations), the next 3 give the time."""
    import gc

    import torch.nn.functional as F

    from axolotl_calib_plugin.train.head import option_logits
    from axolotl_calib_plugin.train.loss import ece_loss

    trainable, with_ece = args.child == "head-train-ece" or args.child == "head-train", args.child.endswith("-ece")
    V, H, P, N = args.head_vocab, args.head_hidden, args.batch, args.head_rows
    torch.manual_seed(0)
    model = HeadOnly(V, H)
    model.lm_head.weight.requires_grad_(trainable)
    ids = list(range(100, 104))
    h_ans = torch.randn(P, H, requires_grad=True)
    targets = torch.softmax(torch.randn(P, 4), dim=-1)
    h_seq = torch.randn(N, H, requires_grad=True)
    y_seq = torch.randint(0, V, (N,))

    def fwd_bwd():
        loss = F.cross_entropy(model.lm_head(h_seq), y_seq)  # the SFT loss's part in the head
        if with_ece:
            loss = loss + ece_loss(option_logits(model, h_ans, ids), targets, kind="mse")
        loss.backward()
        model.lm_head.weight.grad = None
        h_seq.grad = h_ans.grad = None

    gc.collect()
    before = _vm_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    fwd_bwd()
    peak = (_vm_kb("VmHWM") - before) / 1024
    def ece_only():
        ece_loss(option_logits(model, h_ans, ids), targets, kind="mse").backward()
        model.lm_head.weight.grad = None
        h_ans.grad = None

    def best(fn, n):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    out = {"phase": args.child, "rss_peak_growth_mb": peak, "sec": best(fwd_bwd, 3)}
    if with_ece:
        out["ece_only_sec"] = best(ece_only, 5)
    print("MEMJSON " + json.dumps(out))


def head_report(args) -> None:
    """The ECE term's backward through the K head rows (``head.option_logits`` gathers them) builds a dense
    (V, H) zero gradient and adds it to lm_head.weight's gradient when the head is trainable (full
    fine-tuning). At the tiny models' vocabulary that is invisible; at a real vocabulary it is not."""
    V, H = args.head_vocab, args.head_hidden
    print(f"\nOutput head at a real vocabulary: synthetic lm_head V={V}, H={H} (float32, {V * H * 4 / 2**20:.0f} MB). "
          f"SFT cross-entropy over {args.head_rows} positions, with / without the ECE term on {args.batch} answer "
          f"positions (head.option_logits + loss.ece_loss); fresh subprocess each: peak-RSS growth of the first "
          f"fwd+bwd; times are best of 3 (SFT head) / 5 (ECE term alone)")
    base_cmd = [sys.executable, os.path.abspath(__file__), "--batch", str(args.batch), "--threads", str(args.threads),
                "--head-vocab", str(args.head_vocab), "--head-hidden", str(args.head_hidden), "--head-rows", str(args.head_rows)]
    res = {}
    for phase in ("head-train", "head-train-ece", "head-frozen", "head-frozen-ece"):
        proc = subprocess.run(base_cmd + ["--child", phase], capture_output=True, text=True, env={**os.environ})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMJSON ")]
        if proc.returncode != 0 or not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
            raise RuntimeError(f"head child {phase!r} failed (rc {proc.returncode})")
        res[phase] = json.loads(line[-1][len("MEMJSON "):])
    for head in ("train", "frozen"):
        a, b = res[f"head-{head}"], res[f"head-{head}-ece"]
        label = "trainable head (full FT)" if head == "train" else "frozen head (LoRA elsewhere)"
        print(f"   {label:<29} peak: SFT {a['rss_peak_growth_mb']:6.1f} MB, SFT+ECE {b['rss_peak_growth_mb']:6.1f} MB "
              f"-> ECE adds {b['rss_peak_growth_mb'] - a['rss_peak_growth_mb']:+6.1f} MB;  time: ECE term alone "
              f"{b['ece_only_sec'] * 1e3:7.2f} ms vs SFT head {a['sec'] * 1e3:7.1f} ms")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="answer positions of the ECE term")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--head-vocab", type=int, default=128256, help="vocabulary (Llama-3's by default)")
    ap.add_argument("--head-hidden", type=int, default=256, help="hidden size of the synthetic head")
    ap.add_argument("--head-rows", type=int, default=256, help="token positions of the SFT cross-entropy")
    ap.add_argument("--child", choices=["head-train", "head-train-ece", "head-frozen", "head-frozen-ece"],
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child:
        head_child(args)
        return 0
    print("=" * 100)
    print("bench_head: the ECE term's cost in the output head at a real vocabulary, trainable vs frozen head")
    for line in machine_info():
        print(line)
    head_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
