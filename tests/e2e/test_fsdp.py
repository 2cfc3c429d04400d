"""FSDP2 (torch ``fully_shard``) with 2 CPU processes (gloo, torchrun): the calibration term on a sharded model.

The worker (this file run by torchrun) shards a tiny Llama the way Axolotl 0.19 / accelerate 1.13 do
(``fsdp2_prepare_model``: every decoder layer, for LoRA every ``lora_A`` / ``lora_B``, then the root, all
with an EXPLICIT ``reshard_after_forward=True``, so even the root unit holding ``lm_head`` is resharded
after the forward) plus a variant with ``lm_head`` as a unit of its own, and checks per rank:

* the option logits of two training steps (the first before the head hooks exist, the second through
  them) equal an unsharded reference, and so does EVERY parameter gradient of SFT + lambda * ECE
  (reduced over the ranks by FSDP), with the ECE term's own head-gradient part non-zero;
* a training step with the ECE term runs exactly the all-gathers and reduce-scatters of a plain SFT step;
* the E-step through ``EMRefreshCallback`` on an odd number of samples (uneven shards) finishes (gloo
  timeout 60 s) and every rank holds the same bins and targets as a 1-process run (this test process);
* ``calib_state.pt`` written at a checkpoint is restored on both ranks by a resumed callback.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the torchrun worker imports helpers too
from helpers import CPU_DEVICE_MAP_FIX, OFFLINE_ENV, TRAIN_MAIN, make_mcq_rows  # noqa: E402

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve()
WORLD = 2
N_SAMPLES = 9  # odd: the E-step shards of the 2 ranks differ in length and need padding
LETTERS = list("ABCDE")
LAM = 3.0
VARIANTS = ("root", "head_unit", "lora")


# ---------------------------------------------------------------------- shared by the test and the worker
def _setup():
    """Tokenizer, tokenized MCQ rows (the real ``mcq`` strategy) and the resolved calibration settings."""
    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.mcq import MCQStrategy, option_token_ids
    from axolotl_calib_plugin.testing import build_tokenizer

    tok = build_tokenizer()
    settings = CalibrationArgs.from_cfg({"calib_mode": "cft", "calib_bins": 5, "calib_estep_batch_size": 2,
                                         "calib_option_letters": LETTERS})
    strategy = MCQStrategy(tok, settings, train_on_inputs=False, sequence_len=256)
    raw = make_mcq_rows(N_SAMPLES, num_options=(4, 3, 5, 2), seed=6)
    rows = [strategy.tokenize_row(r, i) for i, r in enumerate(raw)]
    ids = option_token_ids(tok, settings, 5)
    return tok, settings, rows, ids


def _model(tok, lora: bool):
    from axolotl_calib_plugin.testing import build_llama

    model = build_llama(tok, hidden_size=32, num_layers=2, num_heads=4, seed=1)
    if lora:
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                           target_modules=["q_proj", "lm_head"]))
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():  # a non-zero adapter, so the LoRA rows matter
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _em_state(out, settings):
    from axolotl_calib_plugin.train.em import EMState

    return EMState.from_estep(out["sample_ids"], out["probs"], out["labels"], out["num_options"],
                              n_bins=settings.calib_bins, split=settings.calib_nonmax_split)


# ---------------------------------------------------------------------- the worker (one per rank)
def _shard(model, variant: str) -> None:
    """FSDP2 as Axolotl's ``fsdp2_prepare_model`` applies it (bottom-up), + ``lm_head`` alone for ``head_unit``."""
    from torch.distributed.fsdp import fully_shard

    kw = {"reshard_after_forward": True}  # accelerate always passes it, which makes the ROOT reshard too
    if variant == "lora":
        from peft.tuners.lora import LoraLayer

        for m in list(model.modules()):
            if isinstance(m, LoraLayer):
                for name in m.active_adapters:
                    fully_shard(m.lora_A[name], **kw)
                    fully_shard(m.lora_B[name], **kw)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.model.layers:
        fully_shard(layer, **kw)
    if variant == "head_unit":
        fully_shard(base.lm_head, **kw)
    fully_shard(model, **kw)


class _Collectives:
    """Counts FSDP2's all-gathers and reduce-scatters (``dist.all_gather_single`` / ``reduce_scatter_single``)."""

    def __init__(self):
        import torch.distributed as dist

        self.n = {"all_gather": 0, "reduce_scatter": 0}
        for key, fn in (("all_gather", "all_gather_single"), ("reduce_scatter", "reduce_scatter_single")):
            orig = getattr(dist, fn)

            def counted(*a, _orig=orig, _key=key, **k):
                self.n[_key] += 1
                return _orig(*a, **k)

            setattr(dist, fn, counted)

    def take(self) -> dict:
        out, self.n = dict(self.n), {k: 0 for k in self.n}
        return out


def _batch(rows, idx, pad_id):
    width = max(len(rows[i]["input_ids"]) for i in idx)
    out = {}
    for key, pad in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100), ("calib_sample_id", -1),
                     ("calib_num_options", 0)):
        out[key] = torch.tensor([list(rows[i][key]) + [pad] * (width - len(rows[i][key])) for i in idx])
    return out


def _step(model, batch, ids, targets, calib: bool, reference: bool = False):
    """SFT (+ lambda * ECE) as the trainer computes it (``_answer_option_logits``: the head capture, else
    hidden states); ``reference``: the option logits read off the full logits instead."""
    from axolotl_calib_plugin.train.columns import answer_positions
    from axolotl_calib_plugin.train.head import captured_option_logits, option_logits
    from axolotl_calib_plugin.train.loss import ece_loss

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                output_hidden_states=calib and not reference)
    if not calib:
        return out.loss, None, None
    b, t = answer_positions(batch["calib_sample_id"])
    k = batch["calib_num_options"][b, t]
    if reference:
        logits, source = out.logits[b, t][:, ids], "full logits"
    else:
        logits, source = captured_option_logits(model, b, t, ids, batch["input_ids"].shape), "captured"
        if logits is None:
            logits, source = option_logits(model, out.hidden_states[-1][b, t], ids), "hidden_states"
    return out.loss + LAM * ece_loss(logits, targets, k), logits, source


def _grads(model) -> dict:
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            out[name] = g.detach().clone()
    return out


def _check_variant(variant, tok, rows, ids, rank, counter) -> dict:
    """Two training steps on the sharded model vs an unsharded copy fed both ranks' batches."""
    lora = variant == "lora"
    model, ref = _model(tok, lora), _model(tok, lora)
    _shard(model, variant)
    batches = [_batch(rows, [2 * r, 2 * r + 1], tok.pad_token_id) for r in range(WORLD)]
    targets = torch.softmax(torch.randn(2, len(ids), generator=torch.Generator().manual_seed(7)), -1)
    mine = batches[rank]
    # a plain SFT step: the collectives any training step needs
    counter.take()
    _step(model, mine, ids, None, calib=False)[0].backward()
    plain = counter.take()
    model.zero_grad(set_to_none=True)
    steps = []
    for _ in range(2):
        counter.take()
        loss, logits, source = _step(model, mine, ids, targets, calib=True)
        loss.backward()
        calib = counter.take()
        got = _grads(model)
        model.zero_grad(set_to_none=True)
        # reference: FSDP averages the ranks' gradients
        ref.zero_grad(set_to_none=True)
        for r in range(WORLD):
            ref_loss, r_logits, _ = _step(ref, batches[r], ids, targets, calib=True, reference=True)
            (ref_loss / WORLD).backward()
            if r == rank:
                ref_logits = r_logits.detach()
        want = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
        assert sorted(got) == sorted(want), (sorted(got), sorted(want))
        steps.append({
            "source": source,
            "logit_diff": float((logits.detach() - ref_logits).abs().max()),
            "grad_diff": max(float((got[n] - want[n]).abs().max()) for n in want),
            "grad_scale": max(float(want[n].abs().max()) for n in want),
            "collectives": calib,
        })
    # the ECE term's own share of the head gradient is non-zero (so the gradient check above covers it)
    ref.zero_grad(set_to_none=True)
    head_w = [p for n, p in ref.named_parameters() if "lm_head" in n and p.requires_grad]
    loss = _step(ref, mine, ids, targets, True, reference=True)[0] - _step(ref, mine, ids, targets, False)[0]
    ece_head_grad = max(float(g.abs().max()) for g in torch.autograd.grad(loss, head_w))
    return {"plain_collectives": plain, "steps": steps, "ece_head_grad": ece_head_grad}


def _fake_trainer(model, rows, tok, out_dir):
    logs = []
    return SimpleNamespace(model=model, model_wrapped=model, train_dataset=rows, processing_class=tok,
                           is_fsdp_enabled=True, control=SimpleNamespace(should_log=False), logs=logs,
                           log=logs.append, is_world_process_zero=lambda: int(os.environ.get("RANK", "0")) == 0,
                           args=SimpleNamespace(device=torch.device("cpu"), disable_tqdm=True, output_dir=str(out_dir)))


def worker(out_dir: str) -> None:
    import torch.distributed as dist

    from axolotl_calib_plugin.train.callbacks import EMRefreshCallback
    from axolotl_calib_plugin.train.context import CalibrationContext

    # a collective one rank never joins fails after 60 s instead of hanging
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    torch.set_num_threads(1)
    out = Path(out_dir)
    counter = _Collectives()
    tok, settings, rows, ids = _setup()
    report = {v: _check_variant(v, tok, rows, ids, rank, counter) for v in VARIANTS}

    # E-step (uneven shards) through the real callback, then checkpoint + resume of its state
    model = _model(tok, lora=False)
    _shard(model, "root")
    calib = CalibrationContext(settings=settings, option_ids=tuple(ids))
    trainer = _fake_trainer(model, rows, tok, out / "run")
    cb = EMRefreshCallback(calib, trainer)
    em = cb.refresh_now(SimpleNamespace(global_step=0), 0)
    em.save(out / f"estep_rank{rank}.pt")
    ckpt = out / "run" / "checkpoint-3"
    if rank == 0:
        ckpt.mkdir(parents=True)
    dist.barrier()
    control = SimpleNamespace()
    cb.on_save(trainer.args, SimpleNamespace(global_step=3, is_world_process_zero=rank == 0), control)
    dist.barrier()
    resumed = CalibrationContext(settings=settings, option_ids=tuple(ids), resume_from=True)
    EMRefreshCallback(resumed, _fake_trainer(model, rows, tok, out / "run")).on_train_begin(
        trainer.args, SimpleNamespace(global_step=3), control)
    resumed.em_state.save(out / f"restored_rank{rank}.pt")
    report["estep_logged_samples"] = trainer.logs[0]["calib/n"]
    (out / f"report_rank{rank}.json").write_text(json.dumps(report, indent=1))
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------- the test
def _same_state(a, b) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("sample_ids", "targets", "bin_count")) and all(
        torch.equal(torch.nan_to_num(getattr(a, k), nan=-1.0), torch.nan_to_num(getattr(b, k), nan=-1.0))
        for k in ("bin_accuracy", "bin_confidence"))


def test_fsdp2_two_processes_option_logits_gradients_estep_and_resume(tmp_path):
    from axolotl_calib_plugin.train.em import EMState
    from axolotl_calib_plugin.train.estep import EStepData, run_estep

    # the 1-process reference E-step (this process: no process group)
    tok, settings, rows, ids = _setup()
    model = _model(tok, lora=False).eval()
    single = _em_state(run_estep(model, EStepData(rows), ids, batch_size=2, device=torch.device("cpu"),
                                 pad_id=int(tok.pad_token_id), show_progress=False), settings)

    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port", _free_port(),
           str(HERE), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env, cwd=str(HERE.parent))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-8000:]

    reports = [json.loads((tmp_path / f"report_rank{r}.json").read_text()) for r in range(WORLD)]
    for rank, rep in enumerate(reports):
        for variant in VARIANTS:
            v = rep[variant]
            # step 1: before the head hooks exist (hidden states; the FSDP2 unit holding the head is
            # unsharded first); step 2 on: the rows taken inside the head's own forward
            assert [s["source"] for s in v["steps"]] == ["hidden_states", "captured"], (rank, variant)
            for s in v["steps"]:
                assert s["logit_diff"] < 1e-5, (rank, variant, s)
                assert s["grad_diff"] < 1e-5 * max(1.0, s["grad_scale"]), (rank, variant, s)
            assert v["ece_head_grad"] > 1e-4, (rank, variant)
            # no extra all-gather / reduce-scatter for the ECE term
            assert v["steps"][1]["collectives"] == v["plain_collectives"], (rank, variant, v)
            if variant != "lora":  # (step 1 with a LoRA head calls the small lora_A unit once more)
                assert v["steps"][0]["collectives"] == v["plain_collectives"], (rank, variant, v)
        assert rep["estep_logged_samples"] == N_SAMPLES

    estep = [EMState.load(tmp_path / f"estep_rank{r}.pt") for r in range(WORLD)]
    assert int(single.bin_count.sum()) == N_SAMPLES
    assert _same_state(estep[0], estep[1])  # every rank holds exactly the same bins and targets
    assert torch.equal(estep[0].sample_ids, single.sample_ids) and torch.equal(estep[0].bin_count, single.bin_count)
    torch.testing.assert_close(estep[0].targets, single.targets, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(estep[0].bin_accuracy, single.bin_accuracy, equal_nan=True)
    torch.testing.assert_close(estep[0].bin_confidence, single.bin_confidence, equal_nan=True, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "run" / "checkpoint-3" / "calib_state.pt").is_file()
    for r in range(WORLD):
        assert _same_state(EMState.load(tmp_path / f"restored_rank{r}.pt"), estep[0])


# ---------------------------------------------------------------------- opt-in: Axolotl's own CLI under FSDP2
#: Axolotl 0.19 + accelerate 1.13 do not run FSDP on CPU: Axolotl builds its device mesh on "cuda"
#: (utils/distributed.py:build_parallelism_config), accelerate drops the FSDP plugin for MULTI_CPU, and a
#: FULL_STATE_DICT checkpoint fails in safetensors on CPU (SHARDED_STATE_DICT works). This launcher is
#: Axolotl's train CLI with those two CPU gaps bridged (plus the device_map fix in helpers.py).
FSDP2_CPU_TRAIN = CPU_DEVICE_MAP_FIX + """
from accelerate.parallelism_config import ParallelismConfig
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

_mesh = ParallelismConfig.build_device_mesh
ParallelismConfig.build_device_mesh = lambda self, device_type: _mesh(self, "cpu")
_state_init = AcceleratorState.__init__


def state_init(self, *args, fsdp_plugin=None, **kwargs):
    _state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = state_init
""" + TRAIN_MAIN

CLI_ENV = "AXOLOTL_CALIB_TEST_FSDP_CLI"


@pytest.mark.skipif(os.environ.get(CLI_ENV) != "1",
                    reason=f"two 2-process `axolotl train` runs (~3-5 min on 2 cores); set {CLI_ENV}=1 to run")
def test_axolotl_cli_fsdp2_trains_checkpoints_and_resumes(tmp_path, tiny_cfg, mcq_rows):
    """`axolotl train` with Axolotl's FSDP2 settings, 2 CPU processes: it trains past the first
    ECE term, both ranks hold the same EM state, and a run resumed from a sharded checkpoint
    restores calib_state.pt and ends with the same targets as the uninterrupted run."""
    import shutil

    from axolotl_calib_plugin.train.callbacks import DEBUG_DUMP_ENV
    from axolotl_calib_plugin.train.em import EMState
    from helpers import log_history, loss_logs, refresh_logs, run_train

    data = mcq_rows(N_SAMPLES, num_options=(4, 3, 5, 2), seed=6)
    common = dict(datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}], calib_mode="cft",
                  calib_bins=5, num_epochs=2, logging_steps=1, save_strategy="epoch", seed=3,
                  calib_estep_batch_size=2, ddp_backend="gloo", fsdp_version=2,
                  fsdp_config={"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True,
                               "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                               "state_dict_type": "SHARDED_STATE_DICT"})
    script = tmp_path / "fsdp2_cpu_train.py"
    script.write_text(FSDP2_CPU_TRAIN)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
                "--master_port", _free_port(), str(script)]
    env = {"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}

    full = tiny_cfg(**common, output_dir=str(tmp_path / "full"), dataset_prepared_path=str(tmp_path / "p1"))
    (tmp_path / "a").mkdir()
    out = run_train(full, tmp_path / "a", launcher=launcher, env_extra={**env, DEBUG_DUMP_ENV: str(tmp_path / "d1")})
    assert "disagree with the model's logits" not in out
    history = log_history(full.output_dir)
    assert [(r["calib/refresh"], r["step"]) for r in refresh_logs(history)] == [(1, 0), (2, 3)]
    assert len(loss_logs(history)) == 5 and all(h["calib/ece_loss"] > 0 for h in loss_logs(history))
    d1 = {f: EMState.load(tmp_path / "d1" / f) for f in sorted(os.listdir(tmp_path / "d1"))}
    for r in (1, 2):
        assert _same_state(d1[f"refresh{r}_rank0.pt"], d1[f"refresh{r}_rank1.pt"])

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", resumed_dir / "checkpoint-3")
    res = tiny_cfg(**common, output_dir=str(resumed_dir), dataset_prepared_path=str(tmp_path / "p2"),
                   auto_resume_from_checkpoints=True)
    (tmp_path / "b").mkdir()
    out = run_train(res, tmp_path / "b", launcher=launcher, env_extra={**env, DEBUG_DUMP_ENV: str(tmp_path / "d2")})
    assert "restored EM state (refresh 1, epoch 0, step 0)" in out
    assert sorted(os.listdir(tmp_path / "d2")) == ["final_rank0.pt", "final_rank1.pt", "refresh2_rank0.pt",
                                                   "refresh2_rank1.pt"]
    for f in ("refresh2_rank0.pt", "refresh2_rank1.pt"):
        assert _same_state(EMState.load(tmp_path / "d2" / f), d1["refresh2_rank0.pt"])
    a, b = EMState.load(full.output_dir), EMState.load(res.output_dir)
    assert torch.equal(a.targets, b.targets) and a.refresh_count == b.refresh_count == 2


if __name__ == "__main__":  # torchrun entry: python -m torch.distributed.run ... tests/e2e/test_fsdp.py OUT_DIR
    os.environ.update(OFFLINE_ENV)
    worker(sys.argv[1])
