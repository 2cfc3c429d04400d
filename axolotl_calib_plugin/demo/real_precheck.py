"""Pre-check of the real model before any method comparison: what the start model can do and what plain SFT buys.

First the learning curve of plain SFT (lambda 0, full fine-tune, answer tokens only: the loss the plugin trains
at ``calib_lambda: 0``) with the CPU seconds of every epoch, since it decides the fine-tune budget; then per
prompt format (plain, chat_template) the start model's letter accuracy, conf-ECE, spread of predicted letters,
and cloze accuracy (each choice's own text scored after the question). The sequences are the ones the dataset strategy builds
(:func:`axolotl_calib_plugin.train.mcq.encode_mcq`); option probabilities are the softmax over the K letter
logits at the answer position, as everywhere in the package. Resumable: every finished epoch saves the model,
the optimizer and the curve so far.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path

from ..metrics import accuracy, conf_ece, cw_ece
from ..prompts import DEFAULT_LETTERS, format_mcq_prompt
from ..rows import read_jsonl
from ..train.mcq import encode_mcq

FORMATS = ("plain", "chat_template")


def encode_rows(tokenizer, rows, prompt_format: str, chat_template: str | None = None) -> list[dict]:
    """Each row as the strategy tokenizes it: prompt ids (ending at t*), the whole sequence, gold, letter ids."""
    out = []
    for r in rows:
        k = len(r["choices"])
        letters = DEFAULT_LETTERS[:k]
        prompt = format_mcq_prompt(r["question"], r["choices"], letters)
        seqs = [encode_mcq(tokenizer, prompt, L, prompt_format, chat_template) for L in letters]
        prompt_ids, full = seqs[r["answer"]]
        out.append({"prompt_ids": prompt_ids, "full_ids": full, "gold": int(r["answer"]),
                    "letter_ids": [s[1][len(s[0])] for s in seqs]})
    return out


def _pad(seqs, pad_id):
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def option_probs(model, encoded, pad_id: int, batch_size: int = 16):
    """(N, K) softmax over the letter logits at t* of each prompt (right-padded batches)."""
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i:i + batch_size]
            ids, mask = _pad([e["prompt_ids"] for e in chunk], pad_id)
            logits = model(input_ids=ids, attention_mask=mask).logits
            for j, e in enumerate(chunk):
                row = logits[j, len(e["prompt_ids"]) - 1, e["letter_ids"]].double()
                out.append(torch.softmax(row, -1))
    return torch.stack(out)


def letter_metrics(probs, golds) -> dict:
    import torch

    labels = torch.tensor(golds)
    pred = probs.argmax(-1).tolist()
    spread = Counter(DEFAULT_LETTERS[p] for p in pred)
    return {"n": len(golds), "accuracy": accuracy(probs, labels), "conf_ece": conf_ece(probs, labels),
            "cw_ece": cw_ece(probs, labels), "mean_confidence": float(probs.max(-1).values.mean()),
            "predicted_letters": {L: spread.get(L, 0) for L in DEFAULT_LETTERS[:probs.shape[1]]}}


def cloze_accuracy(model, tokenizer, rows, prompt_format: str, chat_template: str | None = None,
                   batch_size: int = 16) -> float:
    """Share of rows whose gold choice text has the highest summed log-probability after the question (plain:
    ``question\nAnswer: <choice>``; chat: the question as the user turn, the choice as the assistant's reply)."""
    import torch

    seqs, spans = [], []
    for r in rows:
        for c in r["choices"]:
            p, f = encode_mcq(tokenizer, r["question"] + "\nAnswer:", str(c), prompt_format, chat_template) \
                if prompt_format == "plain" else encode_mcq(tokenizer, r["question"], str(c), prompt_format,
                                                            chat_template)
            end = len(f) - (1 if prompt_format == "plain" and tokenizer.eos_token_id is not None else 0)
            if prompt_format != "plain":  # the assistant turn's own text, not the closing tokens
                end = len(p) + len(_encode_text(tokenizer, str(c)))
            seqs.append(f[:end])
            spans.append((len(p), end))
    scores = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i:i + batch_size]
            ids, mask = _pad(chunk, tokenizer.pad_token_id)
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.double(), -1)
            for j, (a, b) in enumerate(spans[i:i + batch_size]):
                tgt = ids[j, a:b]
                scores.append(float(logp[j, a - 1:b - 1].gather(-1, tgt[:, None]).sum()))
    right, pos = 0, 0
    for r in rows:
        k = len(r["choices"])
        s = scores[pos:pos + k]
        pos += k
        right += int(max(range(k), key=s.__getitem__) == r["answer"])
    return right / len(rows)


def _encode_text(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def sft_batches(encoded, batch_size: int, rng: random.Random):
    order = list(range(len(encoded)))
    rng.shuffle(order)
    return [[encoded[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


def sft_step(model, opt, chunk, pad_id: int) -> float:
    """One plain-SFT step on the answer tokens (the letter and what follows it in the training sequence)."""
    import torch

    model.train()
    ids, mask = _pad([e["full_ids"] for e in chunk], pad_id)
    labels = torch.full_like(ids, -100)
    for j, e in enumerate(chunk):
        n, m = len(e["prompt_ids"]), len(e["full_ids"])
        labels[j, n:m] = ids[j, n:m]
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def run(real_dir: str, out_dir: str, epochs: int = 8, lr: float = 1e-4, batch_size: int = 8, seed: int = 0,
        target_accuracy: float = 0.5, eval_rows: int = 120, cloze_rows: int = 60, eval_every: int = 20,
        log=print) -> dict:
    """The whole pre-check into ``out_dir/precheck.json`` (resumes from ``out_dir/ckpt``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    real, out = Path(real_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result_path, ckpt = out / "precheck.json", out / "ckpt"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    tok = AutoTokenizer.from_pretrained(str(real / "model"))
    pad = tok.pad_token_id
    data = {s: read_jsonl(str(real / "data" / f"{s}.jsonl")) for s in ("train", "test_in", "test_out")}
    for split in ("test_in", "test_out"):  # a seeded sample: one core of a shared machine is the budget
        data[split] = random.Random(seed).sample(data[split], min(eval_rows, len(data[split])))
    result.setdefault("setup", {"rows": {s: len(v) for s, v in data.items()}, "lr": lr, "batch_size": batch_size,
                                "seed": seed, "eval_rows": eval_rows, "cloze_rows": cloze_rows, "eval_every_steps": eval_every, "threads": torch.get_num_threads(),
                                "trainer": "plain SFT loop over the strategy's sequences (answer tokens only)"})

    def save():
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(result_path)

    curve = result.setdefault("sft_plain", [])
    train = encode_rows(tok, data["train"], "plain")
    test_in = encode_rows(tok, data["test_in"], "plain")
    test_out = encode_rows(tok, data["test_out"], "plain")
    if curve and (ckpt / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
    else:
        curve.clear()
        model = AutoModelForCausalLM.from_pretrained(str(real / "model"), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if curve and (ckpt / "optimizer.pt").is_file():
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt"))
    if not curve:
        ev = {"epoch": 0, "in": letter_metrics(option_probs(model, test_in, pad), [e["gold"] for e in test_in])}
        curve.append(ev)
        save()
    while len(curve) <= epochs:
        epoch = len(curve)
        rng = random.Random(seed * 1000 + epoch)
        t0, w0 = time.process_time(), time.time()
        losses = []
        for chunk in sft_batches(train, batch_size, rng):
            losses.append(sft_step(model, opt, chunk, pad))
            if len(losses) % 5 == 0:
                result["progress"] = {"epoch": epoch, "steps": len(losses), "cpu_s": round(time.process_time() - t0, 1),
                                      "wall_s": round(time.time() - w0, 1), "loss_last5": sum(losses[-5:]) / 5}
                if len(losses) % eval_every == 0:  # the curve within an epoch (in-domain only: one core)
                    e0 = time.process_time()
                    result["progress"]["in"] = letter_metrics(option_probs(model, test_in, pad),
                                                              [e["gold"] for e in test_in])
                    result["progress"]["eval_cpu_s"] = round(time.process_time() - e0, 1)
                    t0 += time.process_time() - e0
                    result.setdefault("sft_plain_steps", []).append(dict(result["progress"]))
                save()
                log(f"epoch {epoch} step {len(losses)}: {result['progress']}")
        train_cpu, train_wall = time.process_time() - t0, time.time() - w0
        ev = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "steps": len(losses),
              "train_cpu_s": round(train_cpu, 1), "train_wall_s": round(train_wall, 1),
              "in": letter_metrics(option_probs(model, test_in, pad), [e["gold"] for e in test_in]),
              "out": letter_metrics(option_probs(model, test_out, pad), [e["gold"] for e in test_out])}
        model.save_pretrained(str(ckpt))
        torch.save(opt.state_dict(), ckpt / "optimizer.pt")
        curve.append(ev)
        save()
        log(f"epoch {epoch}: {ev}")
        if ev["in"]["accuracy"] >= target_accuracy + 0.1:
            break
    del model, opt

    start = result.setdefault("start", {})
    todo = [(f, s) for f in FORMATS for s in ("test_in", "test_out") if s not in start.get(f, {})]
    if todo:
        model = AutoModelForCausalLM.from_pretrained(str(real / "model"), dtype=torch.float32)
        for fmt, split in todo:
            template = tok.chat_template if fmt == "chat_template" else None
            t0 = time.process_time()
            enc = encode_rows(tok, data[split], fmt, template)
            m = letter_metrics(option_probs(model, enc, pad), [e["gold"] for e in enc])
            sample = random.Random(seed).sample(data[split], min(cloze_rows, len(data[split])))
            m["cloze_accuracy"] = cloze_accuracy(model, tok, sample, fmt, template)
            m["cloze_n"] = len(sample)
            m["cpu_s"] = round(time.process_time() - t0, 1)
            start.setdefault(fmt, {})[split] = m
            save()
            log(f"start {fmt} {split}: {m}")
        del model
    return result


if __name__ == "__main__":  # nice -n 10 python -m axolotl_calib_plugin.demo.real_precheck REAL_DIR OUT_DIR
    import sys

    import torch

    torch.set_num_threads(int(os.environ.get("PRECHECK_THREADS", "1")))
    run(sys.argv[1], sys.argv[2], epochs=int(os.environ.get("PRECHECK_EPOCHS", "8")),
        lr=float(os.environ.get("PRECHECK_LR", "1e-4")))


def _fmt(m: dict) -> str:
    letters = ", ".join(f"{k} {v}" for k, v in m["predicted_letters"].items())
    return (f"{m['accuracy']:.3f} | {m['conf_ece']:.3f} | {m['cw_ece']:.3f} | {m['mean_confidence']:.3f} | "
            f"{letters}")


def render_markdown(result: dict) -> str:
    """The pre-check's numbers as Markdown tables (from ``precheck.json`` alone)."""
    setup = result.get("setup", {})
    lines = ["# Real-model pre-check (SmolLM2-135M-Instruct, real facts)", "",
             f"Rows: {setup.get('rows')} (test sets: a seeded sample of {setup.get('eval_rows')} rows each); "
             f"plain SFT at lr {setup.get('lr')}, batch {setup.get('batch_size')}, AdamW, full fine-tune, "
             f"{setup.get('threads')} torch thread; {setup.get('trainer')}.", ""]
    steps = result.get("sft_plain_steps", [])
    curve = result.get("sft_plain", [])
    if curve or steps:
        lines += ["## Plain SFT (λ=0) learning curve, held-out in-domain (test_in)", "",
                  "| epoch | step | train loss (last 5 steps) | acc | conf-ECE | cw-ECE | mean conf | predicted letters | "
                  "CPU s of training so far this epoch |", "|---|---|---|---|---|---|---|---|---|"]
        if curve:
            lines.append(f"| 0 | 0 | – | {_fmt(curve[0]['in'])} | – |")
        points = [(p["epoch"], p["steps"], p) for p in steps]
        for p in curve[1:]:
            points.append((p["epoch"], p["steps"], {**p, "loss_last5": p["train_loss"], "cpu_s": p["train_cpu_s"]}))
        for epoch, step, p in sorted(points, key=lambda t: (t[0], t[1])):
            lines.append(f"| {epoch} | {step} | {p['loss_last5']:.3f} | {_fmt(p['in'])} | {p['cpu_s']} |")
        lines.append("")
    start = result.get("start", {})
    if start:
        lines += ["## Start model (as shipped) per prompt format", "",
                  "| format | split | acc | conf-ECE | cw-ECE | mean conf | predicted letters | cloze acc (n) |",
                  "|---|---|---|---|---|---|---|---|"]
        for fmt, by_split in start.items():
            for split, m in by_split.items():
                lines.append(f"| {fmt} | {split} | {_fmt(m)} | {m['cloze_accuracy']:.3f} ({m['cloze_n']}) |")
        lines.append("")
    if result.get("budget"):
        lines += ["## Fine-tune budget picked from this (before any method comparison)", "", result["budget"], ""]
    return "\n".join(lines) + "\n"
