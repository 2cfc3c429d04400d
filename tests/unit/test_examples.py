"""Every ``examples/*.yml`` validates against Axolotl's config schema with the plugin args merged.

Real-model configs are validated as ``load_cfg`` would on a GPU box (``prepare_plugins`` +
``validate_config`` with A100-like capabilities) but stop before ``normalize_config``, which would
fetch the model config from the hub. The tiny CPU configs go through the full ``load_cfg`` and the
dataset pipeline on the model and data that ``examples/make_tiny.py`` builds.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import A100, validate_on_gpu_box

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.yml"))
TINY = [p for p in CONFIGS if p.name.startswith("tiny_cpu_")]
#: presets mirroring the authors' reference code (their lambda-equivalent, non-max split): tested on their own
REFERENCE = [p for p in CONFIGS if p.name.endswith("_reference.yml")]
PAPER = [p for p in CONFIGS if p not in TINY and p not in REFERENCE]


def _raw(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def test_expected_examples_exist():
    names = {p.name for p in CONFIGS}
    assert {"llama_cft.yml", "llama_rcft.yml", "llama_rcft_qlora.yml", "vicuna_7b_cft.yml", "olmo2_7b_cft.yml",
            "mistral_7b_cft.yml", "tiny_cpu_cft.yml", "tiny_cpu_rcft.yml", "llama_cft_fsdp2.yml"} <= names


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_examples_validate_with_gpu_capabilities(path, monkeypatch):
    raw, out = validate_on_gpu_box(path, monkeypatch)
    mode = raw["calib_mode"]
    assert out.calib_sft_scope == {"cft": "answer", "rcft": "prompt_and_answer"}[mode]
    assert out.train_on_inputs is (mode == "rcft")
    assert out.calib_lambda == 1.0 and out.calib_bins == 10 and out.calib_refresh == "epoch"
    # the paper's data and settings (Sec. 6 of the paper and the authors' scripts)
    assert raw["datasets"] == [{"path": "aaronwzl/mcqa_calibration_dataset", "split": "calibration_train",
                                "type": "axolotl_calib_plugin.mcq"}]
    assert (out.lora_r, out.lora_alpha, out.lora_dropout, out.lora_target_linear) == (128, 64, 0.05, True)
    assert out.adapter == ("qlora" if "qlora" in path.name else "lora")
    assert (float(out.learning_rate), out.lr_scheduler, out.warmup_ratio) == (5e-6, "cosine", 0.1)
    assert (out.num_epochs, out.micro_batch_size, out.gradient_accumulation_steps) == (5, 2, 1)
    assert (out.bf16, out.gradient_checkpointing, out.seed) == (True, True, 42)
    if path.name in FLAGSHIP:  # what a user copies: held-out ECE at every evaluation and the post-training report
        assert (out.val_set_size, out.eval_strategy) == (0.05, "epoch")
        assert out.calib_eval_tasks == ["calib_in_domain_pooled", "calib_arc_challenge"]


def test_reference_preset_validates_and_mirrors_the_authors_code(monkeypatch):
    """examples/llama_cft_reference.yml: the paper's run with the reference code's choices (the lambda
    equivalent of alpha * 1e-3 * L_cal / n_m, the tanh non-max split) and the post-training report."""
    (path,) = [p for p in REFERENCE if p.name == "llama_cft_reference.yml"]
    raw, out = validate_on_gpu_box(path, monkeypatch)
    alpha, batch, n_m = 0.5, out.micro_batch_size, 300
    assert out.calib_lambda == pytest.approx(alpha * 1e-3 * batch / ((1 - alpha) * n_m), rel=0.06)
    assert out.calib_nonmax_split == "reference" and out.calib_ece_loss == "mse" and out.calib_prompt_format == "plain"
    assert out.calib_sft_scope == "answer" and out.train_on_inputs is False
    assert out.calib_eval_tasks == ["calib_in_domain_pooled", "calib_arc_challenge"]
    assert raw["datasets"] == [{"path": "aaronwzl/mcqa_calibration_dataset", "split": "calibration_train",
                                "type": "axolotl_calib_plugin.mcq"}]
    assert (out.lora_r, out.lora_alpha, out.lora_dropout, out.lora_target_linear) == (128, 64, 0.05, True)
    assert (float(out.learning_rate), out.num_epochs, out.micro_batch_size, out.seed) == (5e-6, 5, 2, 42)


def test_fsdp2_example_shards_the_paper_run_with_axolotl_fsdp2():
    """examples/llama_cft_fsdp2.yml: the paper's CFT run (checked above) sharded with FSDP2 over 8 GPUs."""
    import torch
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(_raw(EXAMPLES / "llama_cft_fsdp2.yml"))
    prepare_plugins(cfg)
    out = validate_config(cfg, capabilities={**A100, "n_gpu": 8},
                          env_capabilities={"torch_version": torch.__version__.split("+")[0]})
    assert out.fsdp_version == 2 and out.fsdp_config.fsdp_version == 2
    fsdp = out.fsdp_config
    assert (fsdp.auto_wrap_policy, fsdp.transformer_layer_cls_to_wrap) == ("TRANSFORMER_BASED_WRAP", "LlamaDecoderLayer")
    assert (fsdp.reshard_after_forward, fsdp.state_dict_type) == (True, "SHARDED_STATE_DICT")
    assert (out.calib_mode, out.calib_lambda, out.calib_estep_batch_size, out.adapter) == ("cft", 1.0, 16, "lora")
    assert out.base_model == "allenai/Llama-3.1-Tulu-3-8B-DPO"


def test_model_ids():
    ids = {p.name: _raw(p)["base_model"] for p in PAPER}
    assert ids["llama_cft.yml"] == ids["llama_rcft.yml"] == "allenai/Llama-3.1-Tulu-3-8B-DPO"
    assert ids["vicuna_7b_cft.yml"] == "lmsys/vicuna-7b-v1.5"
    assert ids["olmo2_7b_cft.yml"] == "allenai/OLMo-2-1124-7B-DPO"
    assert ids["mistral_7b_cft.yml"] == "mistralai/Mistral-7B-Instruct-v0.2"
    assert "without the exact checkpoint" in (EXAMPLES / "mistral_7b_cft.yml").read_text()


def test_every_example_has_its_own_cache_and_output_dir():
    raws = [_raw(p) for p in CONFIGS]
    for key in ("dataset_prepared_path", "output_dir"):
        values = [r[key] for r in raws]
        assert len(values) == len(set(values)), f"{key} shared between examples: {values}"


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.name)
def test_tiny_cpu_examples_have_the_cpu_settings(path):
    raw = _raw(path)
    for key, value in {"bf16": False, "fp16": False, "tf32": False, "flash_attention": False,
                       "optimizer": "adamw_torch", "dataset_num_proc": 1}.items():
        assert raw[key] == value, key
    if raw.get("adapter") in ("lora", "qlora"):
        assert raw["lora_mlp_kernel"] is False and raw["lora_qkv_kernel"] is False and raw["lora_o_kernel"] is False
    assert raw["base_model"] == "./outputs/tiny-model"  # built by examples/make_tiny.py, not a hub id


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    """A cwd holding ./outputs/tiny-model and ./outputs/tiny_mcq.jsonl, built by examples/make_tiny.py."""
    spec = importlib.util.spec_from_file_location("make_tiny", EXAMPLES / "make_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    work = tmp_path_factory.mktemp("examples")
    module.main(["--out", str(work / "outputs"), "--rows", "24"])
    return work


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.name)
def test_tiny_cpu_examples_load_and_tokenize_offline(path, tiny_workdir, monkeypatch):
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets

    from axolotl_calib_plugin.train.columns import CALIB_COLUMNS

    monkeypatch.chdir(tiny_workdir)
    cfg = load_cfg(str(path))  # full load_cfg: plugins, schema, normalize_config on the local model
    assert cfg.model_config_type == "llama"
    assert cfg.train_on_inputs is (cfg.calib_mode == "rcft")
    train = load_datasets(cfg=cfg).train_dataset
    assert len(train) == 24
    assert set(CALIB_COLUMNS) <= set(train.column_names)
    assert all(sum(v >= 0 for v in row["calib_sample_id"]) == 1 for row in train)


# --------------------------------------------------------------------------------------------------
# The flagship examples on the paper's training-set layout (string-encoded choices, int answers,
# splits calibration_train / test_1): tests/fixtures/mcqa_calibration_dataset, a local stand-in.
# --------------------------------------------------------------------------------------------------
AUTHORS_DATA = Path(__file__).resolve().parents[1] / "fixtures" / "mcqa_calibration_dataset"
FLAGSHIP = ["llama_cft.yml", "llama_rcft.yml"]


def _authors_rows(split: str) -> list[dict]:
    path = AUTHORS_DATA / "data" / f"{split}-00000-of-00001.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _authors_gold(split: str) -> list[tuple[list[str], int]]:
    """What the authors' loader means by each row: the listed choices and int(answer) (ours: literal_eval)."""
    return [(list(ast.literal_eval(r["choices"])), int(r["answer"])) for r in _authors_rows(split)]


def _on_local_data(name: str, model_dir: str, data_dir: Path, work: Path, **extra) -> Path:
    """examples/<name> with only the model and the dataset path swapped, plus the CPU settings of the tests."""
    from helpers import CPU_SETTINGS

    raw = _raw(EXAMPLES / name)
    raw["base_model"] = model_dir
    raw["datasets"] = [dict(ds, path=str(data_dir)) for ds in raw["datasets"]]  # split, type kept
    raw.update(CPU_SETTINGS)
    raw.update(lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False,
               dataset_prepared_path=str(work / "prepared"), output_dir=str(work / "out"), **extra)
    path = work / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_authors_fixture_has_the_papers_layout():
    import datasets

    dd = datasets.load_dataset(str(AUTHORS_DATA))
    assert set(dd) == {"calibration_train", "test_1"}
    feats = dd["calibration_train"].features
    assert (feats["choices"].dtype, feats["answer"].dtype) == ("string", "int64")
    # the authors' regex breaks options with apostrophes; the literal parse does not
    row = _authors_rows("calibration_train")[2]
    assert re.findall(r"'([^']*)'", row["choices"]) != ast.literal_eval(row["choices"])


@pytest.mark.parametrize("name", FLAGSHIP)
def test_flagship_examples_load_the_papers_layout(name, tiny_model_dir, tmp_path, monkeypatch):
    """examples/llama_{cft,rcft}.yml, model and dataset path swapped: Axolotl loads split calibration_train of
    the local folder and our strategy reads the string-encoded choices and int answers as the authors do."""
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets

    from axolotl_calib_plugin.prompts import format_mcq_prompt

    monkeypatch.chdir(tmp_path)
    # the 10-row fixture is too small for the examples' 5% eval split; the report's hub tasks are offline here
    cfg = load_cfg(str(_on_local_data(name, tiny_model_dir, AUTHORS_DATA, tmp_path, shuffle_merged_datasets=False,
                                      val_set_size=0, eval_strategy="no", calib_eval_tasks=None)))
    assert cfg.datasets[0].split == "calibration_train" and cfg.datasets[0].type == "axolotl_calib_plugin.mcq"
    train = load_datasets(cfg=cfg).train_dataset
    expected = _authors_gold("calibration_train")
    assert len(train) == len(expected)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for row, src, (choices, gold) in zip(train, _authors_rows("calibration_train"), expected):
        t = next(i for i, v in enumerate(row["calib_sample_id"]) if v >= 0)
        assert (row["calib_answer_idx"][t], row["calib_num_options"][t]) == (gold, len(choices))
        assert row["input_ids"][: t + 1] == tok(format_mcq_prompt(src["question"], choices))["input_ids"]


def test_authors_test_split_evaluates_through_calib_jsonl():
    """The test_1 file is read by the lm-eval loader with the same normalizer: same choices, same gold."""
    spec = importlib.util.spec_from_file_location("calib_utils_examples", EXAMPLES.parent / "lm_eval_tasks/calib/utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    docs = utils.load_suite("calib_jsonl", data_files=str(AUTHORS_DATA / "data" / "test_1-00000-of-00001.jsonl"))["test"]
    assert [(list(c), g) for c, g in zip(docs["choices"], docs["gold"])] == _authors_gold("test_1")


def _tokenize_split(tokenizer, cfg, data_dir, split="calibration_train"):
    import datasets
    from axolotl.datasets import TokenizedPromptDataset
    from axolotl.prompt_strategies import load

    ds = datasets.load_dataset(str(data_dir), split=split)
    strategy = load("axolotl_calib_plugin.mcq", tokenizer, cfg,
                    {"path": str(data_dir), "split": split, "type": "axolotl_calib_plugin.mcq"})
    return TokenizedPromptDataset(strategy, ds, process_count=1)


def _copy_fixture(tmp_path, change):
    out = tmp_path / "authors_copy"
    for split in ("calibration_train", "test_1"):
        rows = [change(dict(r)) for r in _authors_rows(split)]
        (out / "data").mkdir(parents=True, exist_ok=True)
        (out / "data" / f"{split}-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_numeric_string_answers_never_guess(tmp_path, tiny_tokenizer, tiny_cfg, validate_cfg):
    """If the published answer column holds numeric strings ("0"), auto refuses the rows whose answer is
    also a choice's text at another index; calib_answer_format: index reads them as the authors' int()."""
    data = _copy_fixture(tmp_path, lambda r: dict(r, answer=str(r["answer"])))
    cfg = validate_cfg(tiny_cfg())
    with pytest.raises(ValueError, match=rf"^{data} \[split calibration_train\]: row 4 \(question 'What is 12 - 9\?'\): "
                                         r"field 'answer': '0' is ambiguous: as an index it is option A \('3'\), as a "
                                         r"choice text it is option D \('0'\); say how answers are written"):
        _tokenize_split(tiny_tokenizer, cfg, data)
    ds = _tokenize_split(tiny_tokenizer, validate_cfg(tiny_cfg(calib_answer_format="index")), data)
    golds = [r["calib_answer_idx"][next(i for i, v in enumerate(r["calib_sample_id"]) if v >= 0)] for r in ds]
    assert golds == [g for _, g in _authors_gold("calibration_train")]


def test_out_of_range_answers_are_named_not_wrapped(tmp_path, tiny_tokenizer, tiny_cfg, validate_cfg):
    """The authors' loader wraps answer >= K with a modulo; we name every such row and count them."""
    def push(r):
        if r["question"].startswith(("What is 3", "Which gas")):
            r["answer"] = r["answer"] + 4  # 5 -> option B under a modulo, silently
        return r

    data = _copy_fixture(tmp_path, push)
    with pytest.raises(ValueError) as info:
        _tokenize_split(tiny_tokenizer, validate_cfg(tiny_cfg()), data)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{data} [split calibration_train]: 2 bad rows among rows 0..9")
    assert "row 1 (question 'What is 3 + 4?'): field 'answer': index 5 is out of range for 4 choices" in lines[1]
    assert "row 5 (question 'Which gas do plants take in for photosynthesis?'): field 'answer': index 5" in lines[2]
    assert "never wrapped around" in lines[1]


@pytest.mark.slow
def test_flagship_rcft_trains_on_the_papers_layout(tiny_model_dir, tmp_path):
    """The one real run: Axolotl's train CLI (``run_train``) on examples/llama_rcft.yml (model, dataset path and
    CPU settings swapped; 2 optimizer steps): plugin, strategy, E-step and the LoRA adapter save."""
    from helpers import run_train

    cfg = _on_local_data("llama_rcft.yml", tiny_model_dir, AUTHORS_DATA, tmp_path, max_steps=2, save_strategy="no",
                         logging_steps=1, val_set_size=0, eval_strategy="no", calib_eval_tasks=None)
    log = run_train(yaml.safe_load(cfg.read_text()), tmp_path, name=cfg.name, timeout=900)  # the same file, rewritten
    assert "calib/ece_loss" in log
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
