"""Every ``examples/*.yml`` validates against Axolotl's config schema with the plugin args merged.

Real-model configs are validated as ``load_cfg`` would on a GPU box (``prepare_plugins`` +
``validate_config`` with A100-like capabilities) but stop before ``normalize_config``, which would
fetch the model config from the hub. The tiny CPU configs go through the full ``load_cfg`` and the
dataset pipeline on the model and data that ``examples/make_tiny.py`` builds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.yml"))
TINY = [p for p in CONFIGS if p.name.startswith("tiny_cpu_")]
PAPER = [p for p in CONFIGS if p not in TINY]
A100 = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 1, "compute_capability": "sm_80"}


def _raw(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def test_expected_examples_exist():
    names = {p.name for p in CONFIGS}
    assert {"llama_cft.yml", "llama_rcft.yml", "llama_rcft_qlora.yml", "vicuna_7b_cft.yml", "olmo2_7b_cft.yml",
            "mistral_7b_cft.yml", "tiny_cpu_cft.yml", "tiny_cpu_rcft.yml"} <= names


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_examples_validate_with_gpu_capabilities(path):
    import torch
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    raw = _raw(path)
    cfg = DictDefault(raw)
    prepare_plugins(cfg)
    out = validate_config(cfg, capabilities=A100, env_capabilities={"torch_version": torch.__version__.split("+")[0]})
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

    from axolotl_calib_plugin.columns import CALIB_COLUMNS

    monkeypatch.chdir(tiny_workdir)
    cfg = load_cfg(str(path))  # full load_cfg: plugins, schema, normalize_config on the local model
    assert cfg.model_config_type == "llama"
    assert cfg.train_on_inputs is (cfg.calib_mode == "rcft")
    train = load_datasets(cfg=cfg).train_dataset
    assert len(train) == 24
    assert set(CALIB_COLUMNS) <= set(train.column_names)
    assert all(sum(v >= 0 for v in row["calib_sample_id"]) == 1 for row in train)
