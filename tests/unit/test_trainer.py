"""AxolotlCalibTrainer.compute_loss / logging / eval and the E-step callback on a real tiny Llama
(in process, no CLI): every number is checked against an independent direct computation."""

import math
import numpy as np
import pytest
import torch

from helpers import PLUGIN, direct_option_probs, make_mcq_rows

LETTERS = list("ABCDE")


def _cfg(**kw):
    from axolotl.utils.dict import DictDefault

    cfg = {"plugins": [PLUGIN], "calib_option_letters": LETTERS, "calib_mode": "cft", "calib_bins": 4,
           "calib_estep_batch_size": 3}
    cfg.update(kw)
    return DictDefault(cfg)


def _tokenize(tok, cfg, rows):
    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.mcq import MCQStrategy

    settings = CalibrationArgs.from_cfg(cfg)
    strat = MCQStrategy(tok, settings, train_on_inputs=settings.train_on_inputs)
    return [strat.tokenize_row(r, i) for i, r in enumerate(rows)]


def _trainer(tmp_path, tiny_model_dir, cfg, rows, *, mb=2, ga=1, seed=0):
    import datasets
    from axolotl.core.training_args import AxolotlTrainingArguments
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_calib_plugin.train.collator import CalibDataCollatorForSeq2Seq
    from axolotl_calib_plugin.train.trainer import AxolotlCalibTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ds = datasets.Dataset.from_list(_tokenize(tok, cfg, rows))
    args = AxolotlTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=mb,
                                    per_device_eval_batch_size=mb, gradient_accumulation_steps=ga, report_to=[],
                                    use_cpu=True, learning_rate=1e-3, disable_tqdm=True, seed=seed,
                                    dataloader_drop_last=False)
    from axolotl_calib_plugin.train.context import CalibrationContext

    coll = CalibDataCollatorForSeq2Seq(tok, padding=True, return_tensors="pt")
    tr = AxolotlCalibTrainer(model=model, args=args, train_dataset=ds, eval_dataset=ds, data_collator=coll,
                             eval_data_collator=coll, processing_class=tok)
    tr.attach_calibration(CalibrationContext.from_cfg(cfg, tok, [ds]))
    return tr, tok, ds


def _direct_probs(model, ds, letters):
    """Independent E-step (one sample at a time, FULL sequence, full logits at t*), float32 like the trainer's;
    the model is left in training mode."""
    probs = direct_option_probs(model, ds, letters)[3].float()
    model.train()
    return probs


def _refresh(tr, cfg):
    from axolotl_calib_plugin.train.callbacks import EMRefreshCallback

    cb = EMRefreshCallback(tr.calib, tr)
    tr.model.train()
    tr.state.epoch = 0.0
    cb.refresh_now(tr.state, 0)
    return cb


@pytest.fixture
def rows():
    return make_mcq_rows(7, num_options=(4, 3, 5, 2), seed=3)


def test_estep_matches_direct_per_sample_computation(tmp_path, tiny_model_dir, rows):
    from axolotl_calib_plugin import metrics
    from axolotl_calib_plugin.train.em import build_targets

    cfg = _cfg()
    tr, tok, ds = _trainer(tmp_path, tiny_model_dir, cfg, rows)
    assert tr.model_accepts_loss_kwargs is False
    cb = _refresh(tr, cfg)
    st = tr.calib.em_state
    assert st.refresh_count == 1 and tr.model.training  # train mode restored
    probs = _direct_probs(tr.model, ds, list(tr.calib.option_ids))
    labels = torch.tensor([r["calib_answer_idx"][int(np.argmax(np.asarray(r["calib_sample_id"]) >= 0))] for r in ds])
    rb = metrics.reliability_bins(probs, labels, 4)
    assert st.bin_count.tolist() == rb.count.tolist()
    np.testing.assert_allclose(st.bin_accuracy.numpy(), rb.accuracy, rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(st.bin_confidence.numpy(), rb.mean_confidence, atol=1e-5, equal_nan=True)
    q = torch.from_numpy(rb.accuracy)[metrics.bin_index(probs.max(1).values, 4)]
    k = torch.tensor([r["calib_num_options"][int(np.argmax(np.asarray(r["calib_sample_id"]) >= 0))] for r in ds])
    want = build_targets(probs.double(), q, num_options=k).float()
    ids = torch.tensor([max(r["calib_sample_id"]) for r in ds])
    torch.testing.assert_close(st.lookup(ids), want, atol=1e-5, rtol=1e-5)
    summary = cb.history[-1]
    assert summary["calib/conf_ece"] == pytest.approx(metrics.conf_ece(probs, labels, 4), abs=1e-5)
    assert any("calib/conf_ece" in h for h in tr.state.log_history)


def test_compute_loss_is_sft_plus_lambda_ece_from_one_forward(tmp_path, tiny_model_dir, rows):
    cfg = _cfg(calib_lambda=2.5)
    tr, tok, ds = _trainer(tmp_path, tiny_model_dir, cfg, rows)
    batch = next(iter(tr.get_train_dataloader()))
    assert {"calib_sample_id", "calib_answer_idx", "calib_num_options"} <= set(batch)  # survived column removal
    tr.model.train()
    with pytest.raises(RuntimeError, match="no EM state"):
        tr.compute_loss(tr.model, dict(batch))
    _refresh(tr, cfg)
    calls = []
    hook = tr.model.register_forward_hook(lambda *a: calls.append(1))
    loss = tr.compute_loss(tr.model, dict(batch))
    hook.remove()
    assert len(calls) == 1  # exactly one forward

    inputs = {k: v for k, v in batch.items() if not k.startswith("calib_")}
    out = tr.model(**inputs)
    b, t = (batch["calib_sample_id"] >= 0).nonzero(as_tuple=True)
    k = batch["calib_num_options"][b, t]
    letters = list(tr.calib.option_ids)
    full = out.logits[b, t][:, letters]
    full = full.masked_fill(torch.arange(len(letters))[None] >= k[:, None], float("-inf"))
    pi = torch.softmax(full, -1)
    targets = tr.calib.em_state.lookup(batch["calib_sample_id"][b, t])
    ece = ((targets - pi) ** 2).sum(-1).mean()
    assert float(ece) > 0
    torch.testing.assert_close(loss, out.loss + 2.5 * ece, rtol=1e-5, atol=1e-6)

    tr.log({"loss": float(loss)})
    last = tr.state.log_history[-1]
    assert last["calib/sft_loss"] == pytest.approx(float(out.loss), rel=1e-4)
    assert last["calib/ece_loss"] == pytest.approx(float(ece), rel=1e-4)


def test_lambda_zero_is_plain_sft_and_answer_only_labels(tmp_path, tiny_model_dir, rows):
    cfg = _cfg(calib_lambda=0.0)
    tr, tok, ds = _trainer(tmp_path, tiny_model_dir, cfg, rows)
    batch = next(iter(tr.get_train_dataloader()))
    loss = tr.compute_loss(tr.model, dict(batch))  # no EM state needed
    inputs = {k: v for k, v in batch.items() if not k.startswith("calib_")}
    torch.testing.assert_close(loss, tr.model(**inputs).loss)
    # CFT: labels only after t* (the letter + EOS)
    for row in ds:
        t = int(np.argmax(np.asarray(row["calib_sample_id"]) >= 0))
        assert all(x == -100 for x in row["labels"][: t + 1]) and row["labels"][t + 1] != -100


def test_gradient_accumulation_matches_larger_micro_batch(tmp_path, tiny_model_dir):
    """GA=2 x mb=2 and GA=1 x mb=4 give the same gradient (CFT rows all have 2 label tokens)."""
    rows4 = make_mcq_rows(4, num_options=(4, 3, 5, 2), seed=5)
    cfg = _cfg(calib_lambda=3.0)
    grads = []
    for mb, ga in ((4, 1), (2, 2)):
        tr, tok, ds = _trainer(tmp_path, tiny_model_dir, cfg, rows4, mb=mb, ga=ga)
        _refresh(tr, cfg)
        coll = tr.data_collator
        feats = [ds[i] for i in range(4)]
        tr.model.zero_grad()
        tr.current_gradient_accumulation_steps = ga
        for chunk in range(ga):
            batch = coll(feats[chunk * mb:(chunk + 1) * mb])
            tr.training_step(tr.model, batch)
        grads.append({n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def test_eval_logs_held_out_calibration_of_the_whole_set_and_no_nan(tmp_path, tiny_model_dir, rows):
    from axolotl_calib_plugin import metrics

    cfg = _cfg()
    tr, tok, ds = _trainer(tmp_path, tiny_model_dir, cfg, rows)
    batch = next(iter(tr.get_eval_dataloader()))
    loss, logits, labels = tr.prediction_step(tr.model, dict(batch), prediction_loss_only=False)
    assert not isinstance(logits, tuple) or len(logits) == 1  # hidden_states were not gathered
    tr._calib_eval = []
    for evaluated in range(2):  # before and after the first refresh: the same keys, never NaN
        out = tr.evaluate()
        log = tr.state.log_history[-1]
        assert {"eval_calib/conf_ece", "eval_calib/cw_ece", "eval_calib/acc", "eval_calib/n"} <= set(log)
        assert not any(isinstance(v, float) and math.isnan(v) for v in log.values()), log
        assert "eval_calib/ece_loss" not in log
        # one number over the whole eval set (7 rows, 4 batches), equal to a direct per-sample forward
        probs = _direct_probs(tr.model, ds, list(tr.calib.option_ids))
        labels = torch.tensor([r["calib_answer_idx"][int(np.argmax(np.asarray(r["calib_sample_id"]) >= 0))] for r in ds])
        ks = [r["calib_num_options"][int(np.argmax(np.asarray(r["calib_sample_id"]) >= 0))] for r in ds]
        want = metrics.calibration_metrics(probs.double(), labels, 10, num_options=ks)  # mixed K: per-class rows
        assert out["eval_calib/n"] == len(ds) == 7
        assert out["eval_calib/conf_ece"] == pytest.approx(want["conf_ece"], abs=1e-5)
        assert out["eval_calib/cw_ece"] == pytest.approx(want["cw_ece"], abs=1e-5)
        assert out["eval_calib/acc"] == pytest.approx(want["accuracy"], abs=1e-12)
        _refresh(tr, cfg)
    # the eval loss is the SFT loss alone (held-out rows have no EM target)
    inputs = {k: v for k, v in batch.items() if not k.startswith("calib_")}
    tr.model.eval()
    with torch.no_grad():
        sft = tr.model(**inputs).loss
    torch.testing.assert_close(loss, sft)


def test_estep_data_handles_packed_rows_and_sharding():
    import datasets

    from axolotl_calib_plugin.train.estep import EStepData, shard_entries

    ds = datasets.Dataset.from_dict({
        "input_ids": [[1, 2, 3, 4, 5, 6], [7, 8, 9]],
        "calib_sample_id": [[-1, 11, -1, -1, 22, -1], [-1, -1, 33]],
        "calib_answer_idx": [[-1, 1, -1, -1, 0, -1], [-1, -1, 2]],
        "calib_num_options": [[0, 2, 0, 0, 3, 0], [0, 0, 4]],
    }).select([1, 0])  # an index mapping, as after a shuffle
    d = EStepData(ds)
    assert d.sample_id.tolist() == [33, 11, 22] and d.pos.tolist() == [2, 1, 4]
    ids, mask, last = d.prompts(np.array([1, 2, 0]), pad_id=0)
    assert ids.tolist() == [[1, 2, 0, 0, 0], [1, 2, 3, 4, 5], [7, 8, 9, 0, 0]]
    assert mask.sum(1).tolist() == [2, 5, 3] and last.tolist() == [1, 4, 2]
    order = np.arange(5)
    parts = [shard_entries(order, r, 2) for r in range(2)]
    assert parts[0][0].tolist() == [0, 2, 4] and parts[1][0].tolist() == [1, 3, 3]
    assert parts[1][1].tolist() == [True, True, False]


def test_refresh_every_n_steps_in_a_real_training_loop(tmp_path, tiny_model_dir):
    from axolotl_calib_plugin.train.callbacks import EMRefreshCallback

    cfg = _cfg(calib_refresh=2)
    tr, tok, ds = _trainer(tmp_path, tiny_model_dir, cfg, make_mcq_rows(6, num_options=(4, 3), seed=8))
    cb = EMRefreshCallback(tr.calib, tr)
    tr.add_callback(cb)
    tr.args.num_train_epochs = 2
    tr.args.save_strategy = "no"
    tr.args.logging_steps = 1
    tr.train()
    # before step 1, then after optimizer steps 2 and 4 (not after the last step, 6)
    assert [(h["calib/refresh"], h["global_step"]) for h in cb.history] == [(1, 0), (2, 2), (3, 4)]
    # a refresh inside on_step_end must not swallow that step's loss log (no gaps in the loss curve)
    assert [h["step"] for h in tr.state.log_history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert tr.calib.em_state.refresh_count == 3 and tr.calib.em_state.global_step == 4


def test_estep_rejects_nan_logits_with_sample_ids(tmp_path, tiny_model_dir, rows):
    cfg = _cfg()
    tr, tok, ds = _trainer(tmp_path, tiny_model_dir, cfg, rows)
    with torch.no_grad():
        tr.model.lm_head.weight[list(tr.calib.option_ids)[1]] = float("nan")
    with pytest.raises(FloatingPointError, match="calib_sample_id"):
        _refresh(tr, cfg)
    assert tr.model.training  # train mode restored even on error


def test_training_loss_rejects_nan_option_logits(tmp_path, tiny_model_dir, rows):
    cfg = _cfg()
    tr, tok, ds = _trainer(tmp_path, tiny_model_dir, cfg, rows)
    _refresh(tr, cfg)
    batch = next(iter(tr.get_train_dataloader()))
    with torch.no_grad():
        tr.model.lm_head.weight[list(tr.calib.option_ids)[0]] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite option logits"):
        tr.compute_loss(tr.model, dict(batch))


@pytest.mark.parametrize("refresh", ["epoch", 2])
def test_online_estep_equals_exact_when_the_model_does_not_move(tmp_path, tiny_model_dir, refresh):
    """lr = 0 and no dropout: the probabilities the training forwards record are the exact E-step's, so
    every online refresh reproduces the first (exact) refresh's bins and targets, without a forward."""
    from axolotl_calib_plugin.train.callbacks import EMRefreshCallback

    cfg = _cfg(calib_estep="online", calib_first_estep_fraction=1.0, calib_refresh=refresh)
    tr, tok, ds = _trainer(tmp_path, tiny_model_dir, cfg, make_mcq_rows(9, num_options=(4, 3, 5), seed=12))
    assert tr.calib.online is not None
    cb = EMRefreshCallback(tr.calib, tr)
    tr.add_callback(cb)
    states = []
    orig = cb.refresh_now

    def keep(state, epoch):
        st = orig(state, epoch)
        states.append(st)
        return st

    cb.refresh_now = keep
    calls = []
    hook = tr.model.register_forward_hook(lambda *a: calls.append(1))
    tr.args.learning_rate = 0.0
    tr.args.num_train_epochs = 2
    tr.args.save_strategy = "no"
    tr.train()
    hook.remove()
    modes = [h["calib/estep_online"] for h in cb.history]
    assert modes[0] == 0 and len(modes) >= 2 and all(m == 1 for m in modes[1:])
    n_train_steps = tr.state.global_step
    # exact refresh: ceil(9 / 3) = 3 batched forwards; online refreshes: none; training: one forward per step
    assert len(calls) == 3 + n_train_steps
    first = states[0]
    for st in states[1:]:
        assert torch.equal(st.sample_ids, first.sample_ids) and torch.equal(st.bin_count, first.bin_count)
        torch.testing.assert_close(st.targets, first.targets, atol=2e-6, rtol=0)
        torch.testing.assert_close(st.bin_accuracy, first.bin_accuracy, equal_nan=True)


def test_online_estep_keeps_targets_of_samples_not_seen_since_the_last_refresh(tmp_path, tiny_model_dir, rows):
    from axolotl_calib_plugin.train.callbacks import EMRefreshCallback

    cfg = _cfg(calib_estep="online", calib_first_estep_fraction=1.0)
    tr, tok, ds = _trainer(tmp_path, tiny_model_dir, cfg, rows)
    cb = EMRefreshCallback(tr.calib, tr)
    tr.state.epoch = 0.0
    first = cb.refresh_now(tr.state, 0)
    # one training batch seen (2 of 7 samples), with the model moved: only those 2 targets may change
    batch = next(iter(tr.get_train_dataloader()))
    with torch.no_grad():
        for p in tr.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tr.model.train()
    tr.compute_loss(tr.model, dict(batch))
    seen = batch["calib_sample_id"][batch["calib_sample_id"] >= 0]
    second = cb.refresh_now(tr.state, 1)
    assert cb.history[-1]["calib/estep_online"] == 1 and cb.history[-1]["calib/online_seen"] == 2
    unseen = ~torch.isin(second.sample_ids, seen)
    assert int(unseen.sum()) == 5
    torch.testing.assert_close(second.targets[unseen], first.targets[unseen])
    assert not torch.allclose(second.targets[~unseen], first.targets[~unseen], atol=1e-4)
    # the M-step's bins use every sample's latest probability (5 from the first refresh, 2 recorded)
    assert int(second.bin_count.sum()) == 7


def test_online_run_measures_a_fraction_first_and_trains_unmeasured_prompts_on_live_targets(tmp_path, tiny_model_dir):
    """lr = 0: the live probabilities are the exact E-step's, so (1) the first refresh measures ceil(f U) prompts
    with that many forwards, (2) every epoch-0 ECE term equals the term with the bin rule applied to the exact
    probabilities, q from running statistics kept by hand (every epoch-0 batch), (3) the second (online) refresh measures every prompt and equals a full exact one."""
    from axolotl_calib_plugin.train.callbacks import EMRefreshCallback
    from axolotl_calib_plugin.train.em import assign_bins, build_targets
    from axolotl_calib_plugin.train.em_state import EMState
    from axolotl_calib_plugin.train.loss import ece_loss

    rows = make_mcq_rows(9, num_options=(4, 3, 5), seed=12)
    cfg = _cfg(calib_estep="online", calib_first_estep_fraction=0.34)
    tr, tok, ds = _trainer(tmp_path, tiny_model_dir, cfg, rows)
    cb = EMRefreshCallback(tr.calib, tr)
    tr.add_callback(cb)
    states = []
    orig = cb.refresh_now
    cb.refresh_now = lambda state, epoch: states.append(orig(state, epoch)) or states[-1]
    calls = []
    hook = tr.model.register_forward_hook(lambda *a: calls.append(1))
    tr.args.learning_rate = 0.0
    tr.args.num_train_epochs = 2
    tr.args.save_strategy = "no"
    # the first refresh by hand, before training
    letters = list(tr.calib.option_ids)
    exact = _direct_probs(tr.model, ds, letters)
    tr.state.epoch = 0.0
    first = cb.refresh_now(tr.state, 0)
    cb.history.clear(), states.clear()
    assert int(first.bin_count.sum()) == math.ceil(0.34 * 9) == 4
    live_rows = torch.isnan(first.targets).all(dim=1)
    assert int(live_rows.sum()) == 5
    ds_ids = [int(np.asarray(r["calib_sample_id"])[np.asarray(r["calib_sample_id"]) >= 0][0]) for r in ds]
    tr.model.train()
    n_live = 0
    # the running per-bin statistics, by hand: start = the measured prompts' counts and hits; after each batch
    # forget in proportion (window = 4 measured positions) and add the batch's (bin, hit) pairs
    count = first.bin_count.double().numpy().copy()
    hits = (first.bin_count.double() * first.bin_accuracy.nan_to_num(0.0)).numpy()
    for batch in tr.get_train_dataloader():  # every epoch-0 batch: the trainer's ECE term with live targets
        sid = batch["calib_sample_id"]
        b_idx, t_idx = (sid >= 0).nonzero(as_tuple=True)
        ids, k = sid[b_idx, t_idx], batch["calib_num_options"][b_idx, t_idx]
        gold = batch["calib_answer_idx"][b_idx, t_idx]
        with torch.no_grad():
            _, outputs = tr.compute_loss(tr.model, dict(batch), return_outputs=True)
            logits = outputs.logits[b_idx, t_idx][:, letters]
        p = exact[[ds_ids.index(int(i)) for i in ids]]
        b = assign_bins(p.max(1).values, 4).numpy()
        q = torch.tensor([hits[m] / count[m] if count[m] > 0 else float(p[j].max()) for j, m in enumerate(b)])
        keep = max(0.0, 1 - len(b) / 4)
        count, hits = count * keep, hits * keep
        for j, m in enumerate(b):
            count[m] += 1
            hits[m] += float(int(p[j].argmax()) == int(gold[j]))
        is_live = torch.isnan(first.lookup(ids)).any(1, keepdim=True)
        n_live += int(is_live.sum())
        want = torch.where(is_live, build_targets(p, q, num_options=k), first.lookup(ids))
        torch.testing.assert_close(tr._calib_parts[-1][1], ece_loss(logits, want, k, kind=tr.calib.settings.calib_ece_loss),
                                   atol=1e-5, rtol=1e-4)
    assert n_live == 5
    tr._calib_parts.clear()
    tr.calib.online.clear()
    tr.calib.em_state = None
    calls.clear()
    tr.train()
    hook.remove()
    assert [h["calib/estep_online"] for h in cb.history] == [0, 1]
    assert cb.history[0]["calib/n"] == 4 and cb.history[0]["calib/live_targets"] == 5
    assert "calib/live_targets" not in cb.history[1] and cb.history[1]["calib/n"] == 9
    # first E-step: ceil(4 prompts / batch 3) = 2 forwards, not ceil(9 / 3) = 3; then one forward per training step
    assert len(calls) == 2 + tr.state.global_step
    golds = [r["calib_answer_idx"][int(np.nonzero(np.asarray(r["calib_sample_id"]) >= 0)[0][0])] for r in ds]
    full = EMState.from_estep(torch.tensor(ds_ids), exact, torch.tensor(golds), torch.tensor([len(r["choices"]) for r in rows]),
                              n_bins=4)
    second = states[-1]
    assert torch.equal(second.bin_count, full.bin_count)
    torch.testing.assert_close(second.targets, full.targets, atol=2e-6, rtol=0)


def test_online_run_killed_in_epoch_0_resumes_with_its_live_statistics(tmp_path, tiny_model_dir):
    """A run with live targets (first E-step over a fraction) saved at step 2 of epoch 0 and resumed from that
    checkpoint in a new trainer trains on the same live targets as the uninterrupted run: every later ECE term and
    the final weights and EM state match. The running statistics saved at step 2 are not the first E-step's, so a
    resume that restarted them from the measured prompts would give other targets."""
    from axolotl_calib_plugin.train.callbacks import EMRefreshCallback
    from axolotl_calib_plugin.train.em_state import LIVE_COUNT, LIVE_HITS, STATE_FILE, EMState

    rows = make_mcq_rows(12, num_options=(4, 3, 5), seed=21)
    cfg = _cfg(calib_estep="online", calib_first_estep_fraction=0.34)

    def run(out: str, resume=None):
        tr, _, _ = _trainer(tmp_path / out, tiny_model_dir, cfg, rows)
        tr.add_callback(EMRefreshCallback(tr.calib, tr))
        tr.args.num_train_epochs = 2
        tr.args.save_strategy, tr.args.save_steps = "steps", 2
        eces = {}
        keep = tr._calib_accumulate
        tr._calib_accumulate = lambda sft, ece: (eces.__setitem__(tr.state.global_step + 1, float(ece.detach())), keep(sft, ece))
        tr.train(resume_from_checkpoint=resume)
        return tr, eces

    whole, eces_whole = run("a")
    ckpt = tmp_path / "a" / "out" / "checkpoint-2"
    saved = EMState.load(ckpt / STATE_FILE)
    assert saved.has_live and saved.global_step == 0  # the first refresh's state, with its NaN rows
    first_count = saved.bin_count.double()
    assert not torch.equal(saved.extra[LIVE_COUNT], first_count)  # two batches already moved the statistics
    resumed, eces_resumed = run("b", resume=str(ckpt))
    assert sorted(eces_resumed) == list(range(3, 13)) and sorted(eces_whole) == list(range(1, 13))
    for step in range(3, 13):
        assert eces_resumed[step] == pytest.approx(eces_whole[step], abs=1e-6), step
    a, b = whole.calib.em_state, resumed.calib.em_state
    torch.testing.assert_close(b.targets, a.targets, atol=1e-6, rtol=0)
    assert not b.has_live and torch.equal(a.bin_count, b.bin_count)
    for (name, pa), (_, pb) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(pb, pa, atol=1e-6, rtol=1e-5, msg=name)
    assert LIVE_HITS in saved.extra
