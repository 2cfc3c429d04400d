"""One-command GPU benchmark of the plugin's costs on a 1B-class model (no network, no Axolotl needed).

    python benchmarks/gpu_benchmark.py                 # on a GPU machine, from a fresh checkout (~3-6 min on one H100/H200)
    python benchmarks/gpu_benchmark.py --smoke         # a tiny CPU run of the same code (what the test suite does)

The script installs nothing: besides this checkout it needs torch, transformers, numpy, scipy and numba;
``make bench-gpu`` pip-installs the last three when missing and keeps the machine's own CUDA torch (or
``pip install -e .``). Liger is used when ``liger_kernel`` is
importable. The model is a randomly initialised Llama-3.2-1B-shaped config (hidden 2048, 16 layers,
vocabulary 128256) in bf16; the data are synthetic MCQ rows (random prompt tokens + 4 option letters), so
nothing is downloaded. The training step is the plugin's own computation in a plain PyTorch loop -- one
forward with ``output_hidden_states``, the SFT cross-entropy, ``loss.option_logits`` x the K letter rows,
``loss.ece_loss`` against targets from ``em.EMState`` -- because Axolotl itself is not on every GPU image.

Printed (and written as JSON with ``--out``), each measured side by side in this one run:

* training step with the ECE term vs plain SFT (forward + backward + AdamW), paired A/B runs;
* the exact E-step (``estep.run_estep`` over every training prompt + the M-step) vs one training epoch;
* the online E-step (``online.OnlineRecord`` filled by the epoch's forwards + the M-step) vs one epoch;
* peak GPU memory of a training step with and without the ECE term;
* with Liger's fused linear cross-entropy (no full logits): the step with vs without the ECE term.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's axolotl_calib_plugin, no install needed
sys.path.insert(0, HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from common import ab_timings  # noqa: E402

LETTER_IDS = (32, 33, 34, 35)  # any four token ids: the model is random, only the shapes matter


def make_batches(n_rows: int, batch: int, seq_len: int, vocab: int, device, seed: int = 0):
    """Synthetic MCQ rows: random prompt tokens, the answer position t* = len - 2, the gold letter at t*+1,
    SFT labels on the letter (CFT's answer-only scope); calib_* columns as the dataset strategy emits them."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n_rows):
        n = int(seq_len * (0.75 + 0.25 * torch.rand(1, generator=g).item()))
        ids = torch.randint(100, vocab, (n,), generator=g)
        gold = int(torch.randint(0, 4, (1,), generator=g))
        ids[-1] = LETTER_IDS[gold]
        rows.append((ids, gold))
    batches = []
    for s in range(0, n_rows, batch):
        chunk = rows[s:s + batch]
        width = max(len(r[0]) for r in chunk)
        inp = torch.zeros(len(chunk), width, dtype=torch.long)
        att = torch.zeros_like(inp)
        lab = torch.full_like(inp, -100)
        sid = torch.full_like(inp, -1)
        ans = torch.full_like(inp, -1)
        nopt = torch.zeros_like(inp)
        for j, (ids, gold) in enumerate(chunk):
            n = len(ids)
            inp[j, :n], att[j, :n] = ids, 1
            lab[j, n - 1] = ids[-1]
            t = n - 2
            sid[j, t], ans[j, t], nopt[j, t] = s + j + 1, gold, 4
        batches.append({k: v.to(device) for k, v in dict(input_ids=inp, attention_mask=att, labels=lab,
                                                         calib_sample_id=sid, calib_answer_idx=ans,
                                                         calib_num_options=nopt).items()})
    return batches


def build_model(args, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      max_position_embeddings=4096, tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model


class Step:
    """forward + backward + AdamW step, plain SFT or SFT + lambda * ECE (the trainer's computation)."""

    def __init__(self, model, em_state, lam: float = 1.0, online=None):
        from axolotl_calib_plugin.train import head, loss

        self.model, self.em_state, self.lam, self.online = model, em_state, lam, online
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=next(model.parameters()).is_cuda)
        self.loss, self.head = loss, head
        self.ids = torch.tensor(LETTER_IDS, device=next(model.parameters()).device)
        # as the trainer: the K head rows are taken inside the head's own forward (hooks), else from
        # hidden_states[-1] when the head is never called (a fused loss such as Liger FLCE)
        head.install_head_capture(model, LETTER_IDS)

    def __call__(self, batch, with_ece: bool):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        out = self.model(**inputs, output_hidden_states=with_ece)
        loss = out.loss
        if with_ece:
            sid = batch["calib_sample_id"]
            b, t = (sid >= 0).nonzero(as_tuple=True)
            k = batch["calib_num_options"][b, t]
            logits = self.head.captured_option_logits(self.model, b, t, LETTER_IDS, sid.shape)
            if logits is None:
                logits = self.head.option_logits(self.model, out.hidden_states[-1][b, t], self.ids)
            loss = loss + self.lam * self.loss.ece_loss(logits, self.em_state.lookup(sid[b, t]), k)
            if self.online is not None:
                self.online.record(sid[b, t], self.loss.option_probs(logits.detach(), k))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def estep_data(batches):
    """The E-step's flat answer positions (estep.EStepData) of the synthetic rows (a list of dict rows: the
    ``datasets`` library is not needed)."""
    from axolotl_calib_plugin.train.estep import EStepData

    keys = ("input_ids", "calib_sample_id", "calib_answer_idx", "calib_num_options")
    rows = []
    for b in batches:
        for j in range(b["input_ids"].shape[0]):
            n = int(b["attention_mask"][j].sum())
            rows.append({k: b[k][j, :n].tolist() for k in keys})
    return EStepData(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU (checks the script, measures nothing real)")
    ap.add_argument("--rows", type=int, default=1024, help="training rows (one epoch = rows / batch steps)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512, help="longest prompt, tokens")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--repeats", type=int, default=10, help="paired A/B runs per timing")
    ap.add_argument("--estep-batch", type=int, default=32)
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rows, args.batch, args.seq_len, args.hidden, args.intermediate = 32, 4, 48, 64, 128
        args.layers, args.heads, args.kv_heads, args.vocab, args.repeats, args.estep_batch = 2, 4, 2, 1024, 3, 8
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    from axolotl_calib_plugin.train.em_state import EMState
    from axolotl_calib_plugin.train.estep import run_estep
    from axolotl_calib_plugin.train.online import OnlineRecord

    t_setup = time.perf_counter()
    model = build_model(args, device)
    n_params = sum(p.numel() for p in model.parameters())
    batches = make_batches(args.rows, args.batch, args.seq_len, args.vocab, device)
    data = estep_data(batches)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print("=" * 100)
    print(f"gpu_benchmark: {name}, torch {torch.__version__}, model {n_params / 1e9:.2f}B params "
          f"({'bf16' if cuda else 'fp32'}), {args.rows} rows x <= {args.seq_len} tokens, batch {args.batch}; "
          f"setup {time.perf_counter() - t_setup:.0f}s")
    results: dict = {"device": name, "params": n_params, "rows": args.rows, "batch": args.batch, "seq_len": args.seq_len}

    def exact_refresh():
        model.eval()
        out = run_estep(model, data, list(LETTER_IDS), batch_size=args.estep_batch, device=device, pad_id=0,
                        show_progress=False)
        model.train()
        return EMState.from_estep(out["sample_ids"], out["probs"], out["labels"], out["num_options"], n_bins=10)

    em_state = exact_refresh()
    step = Step(model, em_state)
    model.train()

    # (a) step ratio -------------------------------------------------------------------------------
    b0 = batches[0]
    ta, tb = ab_timings(lambda: step(b0, False), lambda: step(b0, True), args.repeats, warmup=2, sync_fn=sync)
    ratio = statistics.median(y / x for x, y in zip(ta, tb))
    results["step_ms"] = {"sft": statistics.median(ta) * 1e3, "sft_ece": statistics.median(tb) * 1e3, "ratio": ratio}
    print(f"(a) training step: plain SFT {statistics.median(ta) * 1e3:.1f} ms, SFT + ECE term "
          f"{statistics.median(tb) * 1e3:.1f} ms -> ratio {ratio:.3f}x (target <= 1.05)")

    # (b) exact E-step vs one epoch, (e) online E-step ------------------------------------------------
    online = OnlineRecord()
    step.online = online
    sync()
    t0 = time.perf_counter()
    for b in batches:
        step(b, True)
    sync()
    t_epoch = time.perf_counter() - t0
    step.online = None
    sync()
    t0 = time.perf_counter()
    em_state = exact_refresh()
    sync()
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids, probs = online.collect(device, len(LETTER_IDS))
    table = probs[torch.searchsorted(ids, torch.from_numpy(data.sample_id))]
    EMState.from_estep(torch.from_numpy(data.sample_id), table, torch.from_numpy(data.answer_idx),
                       torch.from_numpy(data.num_options), n_bins=10)
    t_online = time.perf_counter() - t0
    results["epoch_s"] = t_epoch
    results["exact_estep_over_epoch"] = t_exact / t_epoch
    results["online_estep_over_epoch"] = t_online / t_epoch
    print(f"(b) one epoch ({len(batches)} steps with the ECE term) {t_epoch:.2f} s; exact E-step {t_exact:.2f} s "
          f"-> {t_exact / t_epoch:.3f}x an epoch (target <= 0.40); online E-step {t_online * 1e3:.1f} ms -> "
          f"{t_online / t_epoch:.4f}x an epoch (target <= 0.02)")
    sync()
    t0 = time.perf_counter()
    for b in batches:
        step(b, False)
    sync()
    t_plain = time.perf_counter() - t0
    results["plain_epoch_s"] = t_plain
    for e in (2, 5):
        total = t_exact + e * t_epoch + (e - 1) * t_online
        results[f"online_total_over_sft_{e}ep"] = total / (e * t_plain)
        print(f"    total training time, online E-step run vs plain SFT, {e} epochs: {total / (e * t_plain):.3f}x "
              f"(one exact E-step first; plain SFT epoch {t_plain:.2f} s; target <= 1.05)")

    # (c) peak memory ---------------------------------------------------------------------------------
    if cuda:
        peaks = {}
        for with_ece in (False, True):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step(batches[0], with_ece)
            torch.cuda.synchronize()
            peaks["sft_ece" if with_ece else "sft"] = torch.cuda.max_memory_allocated() / 2**30
        results["peak_gib"] = peaks
        print(f"(c) peak memory of a step: plain SFT {peaks['sft']:.2f} GiB, with the ECE term {peaks['sft_ece']:.2f} GiB "
              f"({peaks['sft_ece'] - peaks['sft']:+.3f} GiB)")
    else:
        print("(c) peak memory: GPU only (skipped)")

    # (d) Liger fused linear cross-entropy --------------------------------------------------------------
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError:
        print("(d) Liger FLCE: liger_kernel not importable here (skipped)")
        results["liger"] = None
    else:
        if not cuda:
            print("(d) Liger FLCE: needs a GPU (skipped)")
        else:
            apply_liger_kernel_to_llama(model=model, fused_linear_cross_entropy=True, cross_entropy=False)
            ta2, tb2 = ab_timings(lambda: step(b0, False), lambda: step(b0, True), args.repeats, warmup=2, sync_fn=sync)
            r2 = statistics.median(y / x for x, y in zip(ta2, tb2))
            results["liger"] = {"sft_ms": statistics.median(ta2) * 1e3, "sft_ece_ms": statistics.median(tb2) * 1e3,
                                "ratio": r2}
            print(f"(d) with Liger FLCE: plain SFT {statistics.median(ta2) * 1e3:.1f} ms, SFT + ECE "
                  f"{statistics.median(tb2) * 1e3:.1f} ms -> {r2:.3f}x")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
