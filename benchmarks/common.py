"""What the benchmarks share: the A/B timing protocol, its report, and the synthetic MCQ rows.

Timing protocol: warm-up runs first, then repeated timed runs that alternate A and B (and alternate
which goes first) so drift from other processes on a shared machine hits both sides; verdicts use the
median of the per-pair ratios B/A (each pair runs back to back, so a slow spell cancels).
"""

from __future__ import annotations

import os
import random
import statistics
import time
from dataclasses import dataclass

import torch

WORDS = ("alpha beta gamma delta red green blue cat dog the of and what which is true false question answer "
         "option heart lung cell atom light water energy force mass").split()


def make_rows(n: int, words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = 4 if i % 8 else 5  # mostly 4 options, some 5 (mixed K, as in ARC)
        q = " ".join(rng.choice(WORDS) for _ in range(words)) + "?"
        choices = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(k)]
        rows.append({"question": q, "choices": choices, "answer": rng.randrange(k)})
    return rows


_CLOCK = {"clock": time.perf_counter}


def now() -> float:
    """The benchmarks' clock: wall time (``time.perf_counter``), or with ``--clock cpu`` this process's CPU time
    (``time.process_time``). On a CPU box shared with other jobs, their time slices inflate wall times at random;
    with one torch thread the CPU time keeps the work done (bench_e2e.py's verdicts use it too). Never on a GPU."""
    return _CLOCK["clock"]()


def set_clock(name: str) -> None:
    _CLOCK["clock"] = {"wall": time.perf_counter, "cpu": time.process_time}[name]


def clock_name() -> str:
    return "CPU time of this process" if _CLOCK["clock"] is time.process_time else "wall time"


def ab_timings(fn_a, fn_b, repeats: int, warmup: int, sync_fn=lambda: None):
    """Alternate A and B (and who goes first) ``repeats`` times after ``warmup`` rounds of each."""
    for _ in range(warmup):
        fn_a(); fn_b()  # noqa: E702
    sync_fn()
    ta, tb = [], []
    for r in range(repeats):
        pair = ((fn_a, ta), (fn_b, tb)) if r % 2 == 0 else ((fn_b, tb), (fn_a, ta))
        for fn, acc in pair:
            t0 = now()
            fn()
            sync_fn()
            acc.append(now() - t0)
    return ta, tb


def report_ratio(label_a, ta, label_b, tb, target, unit_div=1, unit="ms/step"):
    ma, mb = statistics.median(ta), statistics.median(tb)
    paired = statistics.median(b / a for a, b in zip(ta, tb))
    scale = 1e3 / unit_div
    print(f"   {label_a:<44} median {ma * scale:9.1f} {unit}   (runs: {', '.join(f'{t * scale:.0f}' for t in ta)})")
    print(f"   {label_b:<44} median {mb * scale:9.1f} {unit}   (runs: {', '.join(f'{t * scale:.0f}' for t in tb)})")
    ratio = mb / ma
    verdict = "PASS" if paired <= target else "FAIL"
    print(f"   ratio B/A: {paired:.3f}x (median of the per-pair ratios; ratio of the medians {ratio:.3f}x)   "
          f"target <= {target:.2f}x: {verdict}")
    return paired


def timed(fn, repeats: int):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), times


def timed_interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median wall time of each function over ``repeats`` rounds; every round runs each once."""
    outs, wall, _ = timed_interleaved_cpu(fns, repeats)
    return outs, wall


def timed_interleaved_cpu(fns: dict, repeats: int) -> tuple[dict, dict, dict]:
    """:func:`timed_interleaved` plus the median CPU time of this process per call
    (``time.process_time``): on a box shared with other jobs, time slices given to them inflate
    the wall time of a few-ms call by whole slices, but not its CPU time."""
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    outs = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            outs[name] = fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = statistics.median
    return outs, {k: med(v) for k, v in wall.items()}, {k: med(v) for k, v in cpu.items()}


class HeadOnly(torch.nn.Module):
    """Just an output head, with the accessor ``loss.option_logits`` uses."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)

    def get_output_embeddings(self):
        return self.lm_head


def machine_info() -> list[str]:
    """What a timing depends on besides our code, as lines to print before the numbers: the CPU model (the
    interpreter loop of a baseline and a compiled kernel speed up differently from one model to the next),
    the SIMD extensions numpy dispatches to, the CPU numba compiles for (LLVM tunes the kernel to that model),
    the thread settings, the BLAS core override and the load average."""
    import platform

    import numpy as np

    cpu = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                cpu.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    model = cpu.get("model name") or platform.processor() or "unknown"
    ident = f"family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')} stepping {cpu.get('stepping', '?')}"
    flags = set(cpu.get("flags", "").split())
    simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
                        "avx512_fp16", "amx_tile") if f in flags]
    try:
        from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_baseline__, __cpu_features__
    np_on = [k for k, v in __cpu_features__.items() if v and k not in __cpu_baseline__]
    try:
        import llvmlite.binding as llvm
        import numba

        jit = (f"numba {numba.__version__} compiles for CPU '{numba.config.CPU_NAME or llvm.get_host_cpu_name()}'"
               f"{' (NUMBA_CPU_NAME)' if numba.config.CPU_NAME else ' (the host model)'}, "
               f"NUMBA_NUM_THREADS {numba.config.NUMBA_NUM_THREADS} (the metrics kernel runs on one)")
    except ImportError:
        jit = "numba not installed"
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                       "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "NUMBA_CPU_NAME") if k in os.environ}
    mhz = cpu.get("cpu MHz")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    return [
        f"cpu: {model} ({ident}{f', {float(mhz):.0f} MHz' if mhz else ''}), {os.cpu_count()} cores; "
        f"python {platform.python_version()}; load average {', '.join(f'{x:.2f}' for x in load)}",
        f"simd (/proc/cpuinfo): {' '.join(simd) or 'none of sse4_2..avx512'}; numpy {np.__version__} dispatches "
        f"beyond its baseline to: {' '.join(np_on) or 'nothing'}",
        f"threads: torch {torch.get_num_threads()}; {jit}; environment: "
        + (", ".join(f"{k}={v}" for k, v in env.items()) or "no thread / BLAS variables set"),
    ]


# ----------------------------------------------------------------------------- the tiny-Llama training setup
# Shared by bench_step.py, bench_estep.py and bench_memory.py: one model, one data set, one optimizer, and the
# same batches for the plugin's trainer (with the calib_* columns) and Axolotl's stock trainer (without them).
def add_model_args(ap) -> None:
    """The model / data / thread options every tiny-Llama benchmark takes (defaults: ~2.6M parameters, 64 rows
    of ~128 tokens, batch 8)."""
    ap.add_argument("--rows", type=int, default=64, help="training rows (one epoch = rows / batch steps)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--words", type=int, default=75, help="question length in words (~128 tokens per row at 75)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (0: torch's default). Default 1: on a shared small CPU box two "
                         "threads wait on each other and the run-to-run noise swamps a 5%% difference")
    ap.add_argument("--workdir", default=os.environ.get("BENCH_WORKDIR", "/tmp/axolotl_calib_bench"))
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="what the timings measure: wall time (default) or this process's CPU time (a busy shared "
                         "CPU box, 1 thread; not on a GPU, whose work the CPU time does not see)")
    add_model_source_args(ap)


def add_model_source_args(ap) -> None:
    """``--model`` / ``--data``: the same benchmark on a model folder (e.g. the real model) and real MCQ rows."""
    ap.add_argument("--model", default=None, metavar="DIR",
                    help="a model folder (tokenizer included) to measure instead of the tiny Llama, e.g. the "
                         "`axolotl-calib real-model` output's model/ (float32, plain prompts); --hidden, --layers and "
                         "--heads are then unused")
    ap.add_argument("--data", default=None, metavar="FILE.jsonl",
                    help="MCQ rows (question, choices, answer) instead of the synthetic ones, the first --rows of "
                         "them (default with --model: data/train.jsonl beside the model folder, when there)")


def model_args(args) -> list[str]:
    """:func:`add_model_args`'s options as a command line, for a benchmark's fresh child processes."""
    return ["--rows", str(args.rows), "--batch", str(args.batch), "--hidden", str(args.hidden),
            "--layers", str(args.layers), "--heads", str(args.heads), "--words", str(args.words),
            "--threads", str(args.threads), "--workdir", args.workdir, "--clock", args.clock,
            *(["--model", args.model] if args.model else []), *(["--data", args.data] if args.data else [])]


def data_file(args) -> str | None:
    """The rows file: ``--data``, else with ``--model`` the ``data/train.jsonl`` that ``axolotl-calib real-model``
    writes beside its ``model/`` folder (None: synthetic rows)."""
    if args.data:
        return args.data
    if args.model:
        beside = os.path.join(os.path.dirname(os.path.abspath(args.model)), "data", "train.jsonl")
        if os.path.isfile(beside):
            return beside
    return None


def load_model_and_rows(args, n_rows: int):
    """(tokenizer, float32 model on the CPU, ``n_rows`` raw MCQ rows, the calib_* keys the rows need, a one-line
    description): ``--model``'s folder or the tiny Llama; ``--data``'s rows or the synthetic ones."""
    from axolotl_calib_plugin.rows import CalibDataError, read_jsonl

    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not os.path.isfile(os.path.join(args.model, "config.json")):
            raise SystemExit(f"--model {args.model}: not a model folder (no config.json); make the real model with "
                             "`axolotl-calib real-model --output-dir DIR` and pass DIR/model")
        tok = AutoTokenizer.from_pretrained(args.model)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        what = f"model {args.model} ({type(model).__name__}"
        extra = {}  # the default letters A-J: a K-option row uses the first K
    else:
        from axolotl_calib_plugin.testing import build_llama, build_tokenizer

        tok = build_tokenizer()
        torch.manual_seed(0)
        model = build_llama(tok, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                            max_position_embeddings=1024)
        what = f"tiny Llama (hidden {args.hidden}, {args.layers} layers"
        extra = {"calib_option_letters": list("ABCDE")}  # the tiny tokenizer has single-token " A".." E"
    n_params = sum(p.numel() for p in model.parameters())
    what += f", {n_params / 1e6:.1f}M params, {str(next(model.parameters()).dtype).removeprefix('torch.')})"
    path = data_file(args)
    if path:
        try:
            rows = read_jsonl(path)
        except CalibDataError as e:
            raise SystemExit(f"--data: {e}") from None
        if len(rows) < n_rows:
            raise SystemExit(f"{path}: {len(rows)} rows, the benchmark needs {n_rows} (lower --rows)")
        rows = [{k: r[k] for k in ("question", "choices", "answer")} for r in rows[:n_rows]]
        what += f"; rows: the first {n_rows} of {path}"
    else:
        rows = make_rows(n_rows, args.words)
        what += f"; rows: {n_rows} synthetic ({args.words}-word questions)"
    return tok, model, rows, extra, what


def apply_threads(args) -> None:
    """Thread count, work folder and clock of :func:`add_model_args`'s options."""
    set_clock(args.clock)
    if args.clock == "cpu" and torch.cuda.is_available():
        raise SystemExit("--clock cpu on a GPU would time the host's waiting, not the GPU's work: use --clock wall")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    os.makedirs(args.workdir, exist_ok=True)


@dataclass
class Setup:
    tok: object
    model: torch.nn.Module
    device: torch.device
    calib_trainer: object
    plain_trainer: object
    optimizer: torch.optim.Optimizer
    dataset: object
    calib_batches: list
    plain_batches: list
    estep_data: object
    settings: object
    seq_len: float
    what: str = ""


def build(args) -> Setup:
    """The model (tiny Llama or ``--model``), its MCQ rows and both trainers; the E-step targets installed as the
    callback would."""
    import datasets
    from axolotl.core.trainers.base import AxolotlTrainer
    from axolotl.core.training_args import AxolotlTrainingArguments
    from axolotl.utils.collators.batching import DataCollatorForSeq2Seq
    from axolotl.utils.dict import DictDefault

    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.estep import EStepData
    from axolotl_calib_plugin.train.collator import CalibDataCollatorForSeq2Seq
    from axolotl_calib_plugin.train.columns import CALIB_COLUMNS
    from axolotl_calib_plugin.train.context import CalibrationContext
    from axolotl_calib_plugin.train.mcq import MCQStrategy
    from axolotl_calib_plugin.train.trainer import AxolotlCalibTrainer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok, model, raw_rows, extra, what = load_model_and_rows(args, args.rows)
    model = model.to(device)
    cfg = DictDefault({
        "plugins": ["axolotl_calib_plugin.CalibrationPlugin"],
        "calib_mode": "cft",
        "calib_lambda": 1.0,
        **extra,
    })
    settings = CalibrationArgs.from_cfg(cfg)
    strategy = MCQStrategy(tok, settings, train_on_inputs=settings.train_on_inputs, sequence_len=1024)
    rows = [strategy.tokenize_row(r, i) for i, r in enumerate(raw_rows)]
    dataset = datasets.Dataset.from_list(rows)
    plain_dataset = dataset.remove_columns(list(CALIB_COLUMNS))

    targs = AxolotlTrainingArguments(
        output_dir=os.path.join(args.workdir, "out"), per_device_train_batch_size=args.batch,
        learning_rate=1e-5, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
        remove_unused_columns=False, use_cpu=device.type == "cpu", dataloader_num_workers=0,
    )
    calib_coll = CalibDataCollatorForSeq2Seq(tokenizer=tok, padding=True, return_tensors="pt")
    plain_coll = DataCollatorForSeq2Seq(tokenizer=tok, padding=True, return_tensors="pt")
    calib_trainer = AxolotlCalibTrainer(model=model, args=targs, train_dataset=dataset, data_collator=calib_coll,
                                        processing_class=tok)
    calib_trainer.attach_calibration(CalibrationContext.from_cfg(cfg, tok, [dataset]))
    plain_trainer = AxolotlTrainer(model=model, args=targs, train_dataset=plain_dataset, data_collator=plain_coll,
                                   processing_class=tok)
    from transformers.trainer_callback import PrinterCallback

    for tr in (calib_trainer, plain_trainer):
        tr.current_gradient_accumulation_steps = 1  # normally set by the training loop
        tr.remove_callback(PrinterCallback)  # the refreshes' log dicts would interleave with the tables
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def batches(ds, coll):
        out = []
        for s in range(0, len(ds) - args.batch + 1, args.batch):
            b = coll([ds[i] for i in range(s, s + args.batch)])
            out.append({k: v.to(device) for k, v in b.items()})
        return out

    calib_batches = batches(dataset, calib_coll)
    plain_batches = batches(plain_dataset, plain_coll)
    for cb, pb in zip(calib_batches, plain_batches):
        assert torch.equal(cb["input_ids"], pb["input_ids"]) and torch.equal(cb["labels"], pb["labels"])

    estep_data = EStepData(dataset)
    setup = Setup(tok, model, device, calib_trainer, plain_trainer, optimizer, dataset, calib_batches,
                  plain_batches, estep_data, settings,
                  seq_len=statistics.mean(len(r["input_ids"]) for r in rows), what=what)
    calib_trainer.calib.em_state = em_refresh(setup)  # targets for the ECE term, as the callback would install
    return setup


def em_refresh(s: Setup):
    """One EM refresh as ``EMRefreshCallback.refresh_now`` does it (minus logging)."""
    from axolotl_calib_plugin.train.estep import run_estep
    from axolotl_calib_plugin.train.em_state import EMState

    was_training = s.model.training
    s.model.eval()
    try:
        out = run_estep(s.model, s.estep_data, list(s.calib_trainer.calib.option_ids),
                        batch_size=s.settings.calib_estep_batch_size, device=s.device,
                        pad_id=int(s.tok.pad_token_id), show_progress=False)
    finally:
        s.model.train(was_training)
    return EMState.from_estep(out["sample_ids"], out["probs"], out["labels"], out["num_options"],
                              n_bins=s.settings.calib_bins, split=s.settings.calib_nonmax_split)


def step(s: Setup, trainer, batch) -> None:
    """forward + backward (the trainer's own training_step) + optimizer step."""
    trainer.training_step(s.model, batch)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)


def sync(s: Setup) -> None:
    if s.device.type == "cuda":
        torch.cuda.synchronize()


def banner(s: Setup, args, title: str, setup_seconds: float) -> None:
    import transformers

    print("=" * 100)
    print(title if not args.model else title.replace("a local tiny Llama", "the model folder below"))
    print(f"device {s.device}, torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
          f"{transformers.__version__}; {s.what}; "
          f"{len(s.dataset)} rows, mean {s.seq_len:.0f} tokens, batch {args.batch} "
          f"(padded width {s.calib_batches[0]['input_ids'].shape[1]}); setup {setup_seconds:.1f}s; "
          f"timings: {clock_name()}")
    for line in machine_info():
        print(line)
