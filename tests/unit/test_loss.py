"""Option logits from hidden states x K head rows, and the ECE loss, against direct computations."""

import math
from types import SimpleNamespace

import pytest
import torch

from axolotl_calib_plugin.train.columns import answer_positions
from axolotl_calib_plugin.train.head import option_logits, postprocess_logits
from axolotl_calib_plugin.train.loss import ece_loss, option_probs
from axolotl_calib_plugin.testing import build_llama, build_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    model = build_llama(tok, hidden_size=32, num_layers=2, num_heads=4, seed=1)
    letters = [tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in "ABCDE"]
    return tok, model, letters


def _batch(tok):
    texts = ["red cat?\nA. x\nB. y\nAnswer: B", "what is true?\nA. a\nB. b\nC. c\nAnswer: C"]
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc


def test_hidden_states_last_times_head_rows_equals_model_logits(tiny):
    """transformers 5.x Llama: hidden_states[-1] is the NORMED state the head consumes."""
    tok, model, letters = tiny
    model.eval()
    enc = _batch(tok)
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    h = out.hidden_states[-1]
    torch.testing.assert_close(h @ model.lm_head.weight.T, out.logits, rtol=1e-5, atol=1e-5)
    b = torch.tensor([0, 0, 1, 1])
    t = torch.tensor([3, 5, 2, 7])
    got = option_logits(model, h[b, t], letters)
    torch.testing.assert_close(got, out.logits[b, t][:, letters], rtol=1e-5, atol=1e-5)


def test_option_logits_bias_softcap_and_scales():
    head = torch.nn.Linear(4, 10, bias=True)
    torch.manual_seed(0)
    h = torch.randn(3, 4)
    ids = [7, 2, 5]

    class M(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.lm_head = head
            self.config = config

        def get_output_embeddings(self):
            return self.lm_head

    full = head(h)
    cfg = SimpleNamespace(final_logit_softcapping=2.0)
    torch.testing.assert_close(option_logits(M(cfg), h, ids), (torch.tanh(full / 2.0) * 2.0)[:, ids])
    cfg = SimpleNamespace(logit_scale=0.5, logits_scaling=4.0)
    torch.testing.assert_close(option_logits(M(cfg), h, ids), (full * 0.5 / 4.0)[:, ids])
    torch.testing.assert_close(postprocess_logits(full, None), full)


def test_option_logits_lora_on_lm_head(tiny):
    peft = pytest.importorskip("peft")
    tok, base, letters = tiny
    model = build_llama(tok, hidden_size=32, num_layers=2, num_heads=4, seed=2)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], lora_dropout=0.0)
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():  # a non-zero adapter so the delta matters
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    pm.eval()
    enc = _batch(tok)
    with torch.no_grad():
        out = pm(**enc, output_hidden_states=True)
        b, t = torch.tensor([0, 1]), torch.tensor([4, 9])
        got = option_logits(pm, out.hidden_states[-1][b, t], letters)
        base_only = out.hidden_states[-1][b, t] @ pm.get_base_model().lm_head.base_layer.weight[letters].T
    want = out.logits[b, t][:, letters]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(base_only, want, atol=1e-3)  # the LoRA delta is really included


def test_answer_positions_packed_rows():
    sid = torch.tensor([[-1, 5, -1, -1, 9], [-1, -1, -1, 3, -1]])
    b, t = answer_positions(sid)
    assert b.tolist() == [0, 0, 1] and t.tolist() == [1, 4, 3]
    with pytest.raises(ValueError, match="per-token"):
        answer_positions(torch.tensor([1, 2]))


def test_ece_loss_hand_values_mse_and_kl_variable_k():
    logits = torch.tensor([[0.0, 0.0, 123.0], [math.log(3.0), 0.0, 0.0]])  # row 0 has K=2: 123 is padding
    k = torch.tensor([2, 3])
    targets = torch.tensor([[0.8, 0.2, 0.0], [0.5, 0.25, 0.25]])
    # row0: pi=(.5,.5) -> .3^2+.3^2 = .18 ; row1: pi=(.6,.2,.2) -> .1^2+.05^2+.05^2 = .015
    assert float(ece_loss(logits, targets, k, "mse")) == pytest.approx((0.18 + 0.015) / 2)
    kl0 = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    kl1 = 0.5 * math.log(0.5 / 0.6) + 2 * 0.25 * math.log(0.25 / 0.2)
    assert float(ece_loss(logits, targets, k, "kl")) == pytest.approx((kl0 + kl1) / 2, rel=1e-5)
    # zero target entries (0 log 0 = 0) do not produce NaN
    t1 = torch.tensor([[1.0, 0.0, 0.0]])
    assert float(ece_loss(torch.tensor([[2.0, 0.0, 0.0]]), t1, None, "kl")) == pytest.approx(
        -math.log(math.exp(2) / (math.exp(2) + 2)), rel=1e-5)
    torch.testing.assert_close(option_probs(logits, k)[0], torch.tensor([0.5, 0.5, 0.0]))


def test_ece_loss_is_mean_over_positions_batch_size_invariant():
    torch.manual_seed(0)
    logits = torch.randn(4, 4)
    targets = torch.softmax(torch.randn(4, 4), -1)
    whole = ece_loss(logits, targets)
    halves = (ece_loss(logits[:2], targets[:2]) + ece_loss(logits[2:], targets[2:])) / 2
    torch.testing.assert_close(whole, halves)
    assert float(ece_loss(logits[:0], targets[:0])) == 0.0


def test_ece_loss_rejects_nan_and_bad_kind():
    with pytest.raises(FloatingPointError, match="non-finite option logits at answer positions \\[1\\]"):
        ece_loss(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="calib_ece_loss"):
        ece_loss(torch.zeros(1, 2), torch.zeros(1, 2), kind="l1")


def test_ece_loss_and_gradient_match_full_logits_computation(tiny):
    """Loss value and parameter gradients equal a direct computation from the full logits."""
    tok, model, letters = tiny
    model.train()
    enc = _batch(tok)
    b, t = torch.tensor([0, 1]), torch.tensor([10, 12])
    k = torch.tensor([2, 3])
    targets = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3]])
    out = model(**enc, output_hidden_states=True)
    ours = ece_loss(option_logits(model, out.hidden_states[-1][b, t], letters[:3]), targets, k)
    g_ours = torch.autograd.grad(ours, [model.lm_head.weight, model.model.layers[0].mlp.up_proj.weight])
    out = model(**enc)
    full = out.logits[b, t][:, letters[:3]]
    full = full.masked_fill(torch.arange(3)[None] >= k[:, None], float("-inf"))
    direct = ((targets - torch.softmax(full, -1)) ** 2).sum(-1).mean()
    g_direct = torch.autograd.grad(direct, [model.lm_head.weight, model.model.layers[0].mlp.up_proj.weight])
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-6)
    for a, c in zip(g_ours, g_direct):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)
    assert float(g_ours[0].abs().sum()) > 0


# ---------------------------------------------------------------------- rows taken inside the head's forward
def test_head_capture_equals_model_logits_plain_lora_with_dropout_and_dora(tiny):
    """The option logits captured in the head's own forward equal the model's logits: plain head; LoRA head
    in train mode with dropout (the capture reuses the step's own dropout draw, exactly); DoRA is not hooked
    (None) and falls back to calling the head on the P rows."""
    peft = pytest.importorskip("peft")
    from axolotl_calib_plugin.train.head import captured_option_logits

    tok, _, letters = tiny
    enc = _batch(tok)
    b, t = torch.tensor([0, 1, 1]), torch.tensor([4, 2, 9])
    shape = enc["input_ids"].shape
    plain = build_llama(tok, hidden_size=32, num_layers=2, num_heads=4, seed=3)
    assert captured_option_logits(plain, b, t, letters, shape) is None  # first call installs the hooks
    out = plain(**enc)
    got = captured_option_logits(plain, b, t, letters, shape)
    torch.testing.assert_close(got, out.logits[b, t][:, letters], rtol=1e-5, atol=1e-5)
    assert captured_option_logits(plain, b, t, letters, shape) is None  # one record per forward

    # taken off at the end of training: no hook left on the model or its head, later forwards record nothing
    from axolotl_calib_plugin.train.head import remove_head_capture

    plain(**enc)
    assert remove_head_capture(plain) and not remove_head_capture(plain)
    assert not plain._forward_pre_hooks and not plain.lm_head._forward_pre_hooks
    plain(**enc)
    assert captured_option_logits(plain, b, t, letters, shape) is None  # nothing captured; this re-installs them
    out = plain(**enc)
    torch.testing.assert_close(captured_option_logits(plain, b, t, letters, shape), out.logits[b, t][:, letters],
                               rtol=1e-5, atol=1e-5)

    for dora in (False, True):
        model = peft.get_peft_model(
            build_llama(tok, hidden_size=32, num_layers=2, num_heads=4, seed=4),
            peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], lora_dropout=0.5, use_dora=dora))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        model.train()  # dropout active
        assert captured_option_logits(model, b, t, letters, shape) is None
        torch.manual_seed(0)
        out = model(**enc, output_hidden_states=True)
        want = out.logits[b, t][:, letters]
        got = captured_option_logits(model, b, t, letters, shape)
        if dora:
            assert got is None
            model.eval()
            out = model(**enc, output_hidden_states=True)
            got = option_logits(model, out.hidden_states[-1][b, t], letters)
            want = out.logits[b, t][:, letters]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if not dora:  # a separate dropout draw on the hidden states would not match
            redo = option_logits(model, out.hidden_states[-1][b, t], letters)
            assert not torch.allclose(redo, want, atol=1e-3)
            got.sum().backward()  # the gradient reaches the adapter through the captured rows
            lora_b = model.get_base_model().lm_head.lora_B["default"].weight
            assert float(lora_b.grad[letters].abs().sum()) > 0
            assert float(lora_b.grad.abs().sum()) == float(lora_b.grad[letters].abs().sum())


def test_head_capture_needs_this_forward_to_call_the_head_on_the_whole_sequence():
    """No record when the last forward skipped the head (a fused loss), or ran it on fewer positions
    (``logits_to_keep``), or with other option ids: the caller then falls back to the hidden states."""
    from axolotl_calib_plugin.train.head import captured_option_logits

    class Fused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = torch.nn.Linear(4, 4)
            self.lm_head = torch.nn.Linear(4, 10, bias=True)

        def get_output_embeddings(self):
            return self.lm_head

        def forward(self, x, call_head=True, keep=None):
            h = self.body(x)
            if keep is not None:
                h = h[:, -keep:]
            return self.lm_head(h) if call_head else h

    model = Fused()
    x = torch.randn(2, 5, 4)
    b, t = torch.tensor([0, 1]), torch.tensor([4, 2])
    ids = [7, 2, 5]
    assert captured_option_logits(model, b, t, ids, (2, 5)) is None  # installs
    with torch.inference_mode():  # an E-step forward first: the training step after it still has a graph
        model(x)
    logits = model(x)
    got = captured_option_logits(model, b, t, ids, (2, 5))
    torch.testing.assert_close(got, logits[b, t][:, ids])
    got.sum().backward()
    assert float(model.lm_head.weight.grad[ids].abs().sum()) > 0
    model(x)
    model(x, call_head=False)  # the model ran, its head did not: the previous record is gone
    assert captured_option_logits(model, b, t, ids, (2, 5)) is None
    model(x, keep=1)
    assert captured_option_logits(model, b, t, ids, (2, 5)) is None
    model(x)
    assert captured_option_logits(model, b, t, [7, 2], (2, 5)) is None  # rows of other ids
    logits = model(x)  # the new ids apply from the next forward
    torch.testing.assert_close(captured_option_logits(model, b, t, [7, 2], (2, 5)), logits[b, t][:, [7, 2]])
