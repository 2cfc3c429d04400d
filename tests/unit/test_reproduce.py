"""``axolotl-calib reproduce`` before anything trains: the configs it writes (base config + only the calibration
lines), ``--dry-run`` output that Axolotl's config validation accepts, bad rows and an uncached hub id refused
with what to do, and the multi-seed summary."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import yaml
from helpers import make_mcq_rows, validate_on_gpu_box

from axolotl_calib_plugin import reproduce as rp
from axolotl_calib_plugin.cli import main


def _write_rows(path, rows):
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture
def data(tmp_path):
    return {k: _write_rows(tmp_path / f"{k}.jsonl", make_mcq_rows(8, 4, seed=i)) for i, k in enumerate(("train", "in", "out"))}


def test_configs_are_the_base_config_plus_only_the_calibration_lines(tmp_path):
    base = {"learning_rate": 2e-5, "adapter": "lora", "plugins": ["other.Plugin", rp.PLUGIN], "seed": 3,
            "calib_label_smoothing": 0.2, "calib_lambda": 5.0, "train_on_inputs": True, "calib_estep_batch_size": 4}
    data = rp.dataset_entries([str(tmp_path / "t.jsonl")], None, None)
    runs = rp.plan(["ts", "ls", "cft", "rcft"], None)
    assert [(r.name, r.method, r.seed) for r in runs] == [("ls", "ls", None), ("cft", "cft", None), ("rcft", "rcft", None)]
    cfgs = rp.build_configs(runs, base, "org/model", data, str(tmp_path / "o"))
    kept = {"learning_rate": 2e-5, "adapter": "lora", "seed": 3, "calib_estep_batch_size": 4}
    common = {"base_model": "org/model", "datasets": [{"path": str(tmp_path / "t.jsonl"), "type": "axolotl_calib_plugin.mcq"}],
              "plugins": ["other.Plugin", rp.PLUGIN], "calib_bins": 10, "calib_refresh": "epoch"}
    for name, lines in (("ls", {"calib_mode": "cft", "calib_lambda": 0.0, "calib_label_smoothing": 0.1}),
                        ("cft", {"calib_mode": "cft", "calib_lambda": 1.0}),
                        ("rcft", {"calib_mode": "rcft", "calib_lambda": 1.0})):
        assert cfgs[name] == {**kept, **common, **lines, "output_dir": str(tmp_path / "o" / "models" / name),
                              "dataset_prepared_path": str(tmp_path / "o" / "prepared" / name)}
    seeded = rp.plan(["cft"], [0, 1])
    assert [(r.name, r.seed) for r in seeded] == [("cft_seed0", 0), ("cft_seed1", 1)]
    assert rp.build_configs(seeded, base, "m", data, "o")["cft_seed1"]["seed"] == 1
    # the default launch is Axolotl's train CLI on the written config
    assert rp.train_command("c.yml") == [sys.executable, "-m", "axolotl.cli.train", "c.yml"]


def test_dry_run_prints_configs_and_commands_that_axolotl_validates(tmp_path, data, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["reproduce", "--model", "allenai/Llama-3.1-Tulu-3-8B-DPO", "--train-data-files", data["train"],
            "--data-files", data["in"], "--ood-data-files", data["out"], "--output-dir", str(out), "--dry-run"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert not (out / "models").exists()  # nothing trained
    commands = (out / "commands.sh").read_text().splitlines()
    for name in ("ls", "cft", "rcft"):
        cfg_path = out / "configs" / f"{name}.yml"
        assert f"# ---- {cfg_path}" in printed and f"python -m axolotl.cli.train {cfg_path}" in commands
        raw, cfg = validate_on_gpu_box(cfg_path, monkeypatch)  # the paper's default settings, as on a GPU box
        assert cfg.calib_mode == ("rcft" if name == "rcft" else "cft") and cfg.train_on_inputs is (name == "rcft")
        assert (cfg.adapter, cfg.lora_r, cfg.bf16, cfg.gradient_checkpointing) == ("lora", 128, True, True)
        assert raw["base_model"] == "allenai/Llama-3.1-Tulu-3-8B-DPO"
    assert cfg.calib_lambda == 1.0 and yaml.safe_load((out / "configs" / "ls.yml").read_text())["calib_label_smoothing"] == 0.1
    ev = f"--data-files {data['in']} --ood-data-files {data['out']}"
    assert f"axolotl-calib eval --model allenai/Llama-3.1-Tulu-3-8B-DPO --output-dir {out}/eval/dpo " \
           f"--tasks calib_jsonl,calib_jsonl_ood {ev} --batch-size 8 --plot-format png" in commands
    assert f"axolotl-calib temperature --fit {out}/eval/dpo --fit-fraction 0.1 --seed 42 --apply {out}/eval/dpo " \
           f"--output-dir {out}/eval/ts --plot-format png" in commands
    assert commands[-1] == (f"axolotl-calib table --run DPO={out}/eval/dpo --run TS={out}/eval/ts --run LS={out}/eval/ls "
                            f"--run CFT={out}/eval/cft --run RCFT={out}/eval/rcft --in-task calib_jsonl --out-task "
                            f"calib_jsonl_ood --output-dir {out}/table --plot-format png")
    assert "\n".join(commands[3:]) in printed


def test_a_bad_row_fails_before_anything_with_file_and_line(tmp_path, data, capsys):
    rows = make_mcq_rows(4, 4)
    rows[2]["answer"] = 7  # line 3: no such option
    bad = _write_rows(tmp_path / "bad.jsonl", rows)
    out = str(tmp_path / "o")
    for argv in (["--train-data-files", bad], ["--train-data-files", data["train"], "--data-files", bad]):
        with pytest.raises(SystemExit) as e:
            main(["reproduce", "--model", "org/name", *argv, "--output-dir", out, "--dry-run"])
        assert e.value.code == 1
        assert f"{bad} line 3: field 'answer'" in capsys.readouterr().err
        assert not os.path.exists(out)  # no config, no command: nothing ran


def test_an_uncached_hub_id_offline_fails_fast_with_what_to_do(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--model", "nobody/not-a-cached-model", "--train-data-files", data["train"],
              "--data-files", data["in"], "--ood-data-files", data["out"], "--output-dir", str(tmp_path / "o")])
    assert time.time() - t0 < 1.0
    err = capsys.readouterr().err
    assert e.value.code == 2 and "nobody/not-a-cached-model" in err and "not in the local cache" in err
    assert "huggingface-cli download nobody/not-a-cached-model" in err and not (tmp_path / "o" / "models").exists()
    with pytest.raises(rp.ReproduceError, match="peft adapter folder"):
        os.makedirs(tmp_path / "adapter")
        (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
        rp.check_model(str(tmp_path / "adapter"))


def test_seed_summary_is_mean_and_sd_of_each_cell():
    def table(acc_in):
        return {"rows": [{"name": "CFT", "in": {"conf_ece": 0.1, "cw_ece": 0.2, "acc": acc_in}, "out": None}]}

    md = rp._seed_summary({"0": table(0.5), "1": table(0.7)})
    assert "| CFT | 0.1000 ± 0.0000 | - | 0.2000 ± 0.0000 | - | 0.6000 ± 0.1414 | - |" in md
