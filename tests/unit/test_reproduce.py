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
from helpers import make_mcq_rows, validate_on_gpu_box, validate_on_this_box

from axolotl_calib_plugin import reproduce as rp
from axolotl_calib_plugin.cli import main


def _write_rows(path, rows):
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _rows_of(name, seed):
    """make_mcq_rows with questions of their own: the same n and seed in another file are other questions."""
    return [{**r, "question": f"({name}) {r['question']}"} for r in make_mcq_rows(8, 4, seed=seed)]


@pytest.fixture
def data(tmp_path):
    return {k: _write_rows(tmp_path / f"{k}.jsonl", _rows_of(k, i)) for i, k in enumerate(("train", "in", "out"))}


def test_configs_are_the_base_config_plus_only_the_calibration_lines(tmp_path):
    # the plugin under its other documented spelling: listed once in every config, never twice
    base = {"learning_rate": 2e-5, "adapter": "lora", "plugins": ["other.Plugin", "axolotl_calib_plugin.plugin.CalibrationPlugin"],
            "seed": 3, "calib_label_smoothing": 0.2, "calib_lambda": 5.0, "train_on_inputs": True,
            "calib_estep_batch_size": 4, "calib_eval_tasks": ["calib_mmlu"], "calib_eval_limit": 5}
    data = rp.dataset_entries([str(tmp_path / "t.jsonl")], None, None)
    runs = rp.plan(["ts", "ls", "sft", "cft", "rcft"], None)
    assert [(r.name, r.method, r.seed) for r in runs] == [("ls", "ls", None), ("sft", "sft", None), ("cft", "cft", None),
                                                          ("rcft", "rcft", None)]
    cfgs = rp.build_configs(runs, base, "org/model", data, str(tmp_path / "o"))
    kept = {"learning_rate": 2e-5, "adapter": "lora", "seed": 3, "calib_estep_batch_size": 4}
    common = {"base_model": "org/model", "datasets": [{"path": str(tmp_path / "t.jsonl"), "type": "axolotl_calib_plugin.mcq"}],
              "plugins": ["other.Plugin", rp.PLUGIN], "calib_bins": 10, "calib_refresh": "epoch"}
    for name, lines in (("ls", {"calib_mode": "cft", "calib_lambda": 0.0, "calib_label_smoothing": 0.1}),
                        ("sft", {"calib_mode": "cft", "calib_lambda": 0.0}),
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
    """On this CPU box the written configs are what ``axolotl train`` accepts here (float32, plain AdamW, LoRA
    kernels off); ``--device cuda`` writes the paper's GPU settings; every command runs in this environment."""
    import torch

    assert not torch.cuda.is_available()  # the CPU box this test stands for
    out = tmp_path / "out"
    argv = ["reproduce", "--model", "allenai/Llama-3.1-Tulu-3-8B-DPO", "--train-data-files", data["train"],
            "--data-files", data["in"], "--ood-data-files", data["out"], "--output-dir", str(out), "--dry-run"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert not (out / "models").exists()  # nothing trained
    commands = (out / "commands.sh").read_text().splitlines()
    assert "# training device cpu (no CUDA device found): bf16: False, fp16: False, tf32: False, optimizer: adamw_torch, " \
           "lora_mlp_kernel: False, lora_qkv_kernel: False, lora_o_kernel: False, lora_embedding_kernel: False" in printed
    for name in ("ls", "sft", "cft", "rcft"):
        cfg_path = out / "configs" / f"{name}.yml"
        assert f"# ---- {cfg_path}" in printed and f"{sys.executable} -m axolotl.cli.train {cfg_path}" in commands
        raw, cfg = validate_on_this_box(cfg_path)
        assert cfg.calib_mode == ("rcft" if name == "rcft" else "cft") and cfg.train_on_inputs is (name == "rcft")
        assert (cfg.adapter, cfg.lora_r, cfg.gradient_checkpointing) == ("lora", 128, True)
        assert (raw["bf16"], raw["fp16"], raw["tf32"], raw["optimizer"]) == (False, False, False, "adamw_torch")
        assert not cfg.bf16 and not cfg.tf32 and cfg.optimizer == "adamw_torch"
        assert [cfg[k] for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel")] == [False] * 3
        assert raw["base_model"] == "allenai/Llama-3.1-Tulu-3-8B-DPO"
    assert cfg.calib_lambda == 1.0 and yaml.safe_load((out / "configs" / "ls.yml").read_text())["calib_label_smoothing"] == 0.1
    assert yaml.safe_load((out / "configs" / "sft.yml").read_text())["calib_lambda"] == 0.0
    cli = f"{sys.executable} -m axolotl_calib_plugin.cli"
    ev = f"--data-files {data['in']} --ood-data-files {data['out']}"
    assert f"{cli} eval --model allenai/Llama-3.1-Tulu-3-8B-DPO --output-dir {out}/eval/dpo " \
           f"--tasks calib_jsonl,calib_jsonl_ood {ev} --option-letters A,B,C,D,E,F,G,H,I,J --batch-size 8 " \
           "--plot-format png" in commands
    assert f"{cli} temperature --fit {out}/eval/dpo --fit-fraction 0.1 --seed 42 --apply {out}/eval/dpo " \
           f"--output-dir {out}/eval/ts --plot-format png" in commands
    assert commands[-1] == (f"{cli} table --run DPO={out}/eval/dpo --run TS={out}/eval/ts --run LS={out}/eval/ls "
                            f"--run SFT={out}/eval/sft --run CFT={out}/eval/cft --run RCFT={out}/eval/rcft --in-task "
                            f"calib_jsonl --out-task calib_jsonl_ood --output-dir {out}/table --plot-format png")
    assert "\n".join(c for c in commands if c.startswith(sys.executable)) in printed

    # --device cuda: the paper's settings for a GPU machine (as Axolotl validates them there); kernels left to Axolotl
    assert main([*argv[:-1], "--device", "cuda", "--dry-run"]) == 0
    assert "# training device cuda: bf16: True, tf32: True, optimizer: adamw_torch_fused" in capsys.readouterr().out
    raw, cfg = validate_on_gpu_box(out / "configs" / "cft.yml", monkeypatch)
    assert (raw["bf16"], raw["tf32"], raw["optimizer"]) == (True, True, "adamw_torch_fused")
    assert "lora_mlp_kernel" not in raw and cfg.bf16 is True


def test_a_base_config_is_kept_where_it_decides_and_each_replaced_key_is_named(tmp_path, data, capsys):
    """The user's precision / optimizer are kept (said so); the keys reproduce replaces or drops are named; every
    row is asked as the base config says (letters, prompt format): the start model's evaluation too."""
    base = tmp_path / "base.yml"
    base.write_text(yaml.safe_dump({"bf16": "auto", "optimizer": "adamw_torch", "adapter": "lora", "calib_bins": 5,
                                    "calib_refresh": 2, "calib_lambda": 3.0, "calib_eval_tasks": ["calib_mmlu"],
                                    "calib_eval_data_files": [data["in"]], "calib_option_letters": list("EDCBA"),
                                    "calib_prompt_format": "chat_template", "calib_system_prompt": "Be brief.",
                                    "plugins": ["axolotl_calib_plugin.plugin.CalibrationPlugin"]}))
    out = tmp_path / "out"
    assert main(["reproduce", "--model", "org/dpo", "--train-data-files", data["train"], "--data-files", data["in"],
                 "--ood-data-files", data["out"], "--base-config", str(base), "--output-dir", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "# kept from --base-config: bf16: auto, optimizer: adamw_torch" in printed
    assert "# training device cpu (no CUDA device found): fp16: False, tf32: False, lora_mlp_kernel: False" in printed
    assert "# --base-config sets calib_eval_tasks, calib_eval_data_files: dropped, reproduce evaluates every model " \
           "itself (DIR/eval/), each once" in printed
    assert "# --base-config sets calib_bins: 5; replaced by 10 (the paper's) in every run" in printed
    assert "# --base-config sets calib_refresh: 2; replaced by epoch (the paper's) in every run" in printed
    assert "# --base-config sets calib_lambda: 3.0; replaced by each method's own (LS 0.0, SFT 0.0, CFT 1.0, RCFT 1.0)" \
           in printed
    cfg = yaml.safe_load((out / "configs" / "cft.yml").read_text())
    assert cfg["plugins"] == [rp.PLUGIN] and "calib_eval_tasks" not in cfg and "calib_eval_data_files" not in cfg
    assert (cfg["bf16"], cfg["optimizer"], cfg["calib_bins"], cfg["calib_lambda"]) == ("auto", "adamw_torch", 10, 1.0)
    assert cfg["calib_option_letters"] == list("EDCBA")
    # every evaluation (the start model's: no calib_settings.json to read) asks with the trained letters and format
    evals = [c for c in (out / "commands.sh").read_text().splitlines() if " eval --model " in c]
    assert len(evals) == 5 and all("--option-letters E,D,C,B,A --apply-chat-template --system-instruction 'Be brief.'"
                                   in c for c in evals)
    rows = rp.row_settings(yaml.safe_load(base.read_text()))
    assert rows["task_metadata"]["option_letters"] == list("EDCBA") and rows["apply_chat_template"] is True
    assert rows["system_instruction"] == "Be brief."


def test_hostile_base_configs_and_output_dirs_are_usage_errors_before_anything(tmp_path, data, capsys):
    argv = ["reproduce", "--model", "org/dpo", "--train-data-files", data["train"], "--data-files", data["in"],
            "--ood-data-files", data["out"], "--dry-run"]
    tagged = tmp_path / "tagged.yml"
    tagged.write_text("learning_rate: 1e-5\nx: !!python/object/apply:os.system ['echo hi']\n")
    kernels = tmp_path / "kernels.yml"
    kernels.write_text(yaml.safe_dump({"adapter": "lora", "lora_mlp_kernel": True}))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    letters = tmp_path / "letters.yml"
    letters.write_text(yaml.safe_dump({"calib_option_letters": ["A", "A", "B", "C"]}))
    for extra, msg in ((["--base-config", str(tagged), "--output-dir", str(tmp_path / "o1")], "no !!python tags"),
                       (["--base-config", str(letters), "--output-dir", str(tmp_path / "o1")],
                        f"--base-config {letters}: calib_option_letters has duplicates ['A']"),
                       (["--base-config", str(kernels), "--output-dir", str(tmp_path / "o2")],
                        "lora_mlp_kernel: true, but the runs train on cpu"),
                       (["--output-dir", str(a_file)], f"{a_file} is a file, not a folder"),
                       (["--output-dir", str(a_file / "sub")], f"{a_file} is a file, not a folder")):
        with pytest.raises(SystemExit) as e:
            main([*argv, *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and "Traceback" not in err, err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    with pytest.raises(SystemExit) as e:  # a run (not --dry-run) on a GPU this machine does not have
        main([*argv[:-1], "--output-dir", str(tmp_path / "o3"), "--device", "cuda"])
    assert e.value.code == 2 and "add --dry-run to write the configs" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()


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


def test_evaluation_files_that_are_training_questions_are_refused_or_named(tmp_path, data, capsys):
    """In-domain questions that are all training questions: refused; some of them: named. The same files as both
    columns: refused. A base config's run keys are said to be replaced; a plugins string is one plugin."""
    part = _write_rows(tmp_path / "part.jsonl", _rows_of("train", 0)[:3] + _rows_of("other", 9)[3:])  # 3 training ones
    base = tmp_path / "base.yml"
    base.write_text(yaml.safe_dump({"plugins": "axolotl_calib_plugin.CalibrationPlugin", "datasets": [{"path": "x"}]}))
    argv = ["reproduce", "--model", "org/dpo", "--train-data-files", data["train"], "--base-config", str(base),
            "--dry-run"]
    for files, msg in (([data["train"], data["out"]], "--data-files: all 8 questions are training questions"),
                       ([data["in"], data["in"]], "--data-files and --ood-data-files are the same files")):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--data-files", files[0], "--ood-data-files", files[1], "--output-dir", str(tmp_path / "o")])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    out = tmp_path / "o2"
    assert main([*argv, "--data-files", part, "--ood-data-files", data["out"], "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "# --data-files: 3 of its 8 questions are also training questions; that column scores them as well" in printed
    assert "# --base-config sets datasets: replaced by --model, the calibration set and each run's folders" in printed
    assert yaml.safe_load((out / "configs" / "cft.yml").read_text())["plugins"] == [rp.PLUGIN]


def test_device_settings_follow_the_device_found_and_the_plugin_leaves_a_gpu_alone(monkeypatch):
    """No --device: what torch finds decides (a bf16 GPU: the paper's; an older GPU: fp16; a CPU: float32 and the
    LoRA kernels off). The plugin's CPU switch touches only LoRA configs on a machine without CUDA."""
    import torch

    from axolotl_calib_plugin.train.plugin import LORA_KERNEL_KEYS, lora_kernels_off_without_cuda

    lora = {"adapter": "lora"}
    for cuda, bf16, want in ((True, True, rp.GPU_LINES), (True, False, rp.GPU_FP16_LINES),
                             (False, False, {**rp.CPU_LINES, **{k: False for k in LORA_KERNEL_KEYS}})):
        monkeypatch.setattr(torch.cuda, "is_available", lambda c=cuda: c)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, b=bf16, **k: b)
        lines, notices = rp.device_lines(None, lora, user_base=False)
        assert lines == want and notices[0].startswith("training device " + ("cuda (found)" if cuda else "cpu")), notices
    cfg = dict(lora)
    assert lora_kernels_off_without_cuda(cfg, cuda=True) == [] and cfg == lora  # Axolotl decides on a GPU
    assert lora_kernels_off_without_cuda({"adapter": None}, cuda=False) == []  # full fine-tune: no kernels
    cfg = {"adapter": "qlora", "lora_o_kernel": False}
    assert lora_kernels_off_without_cuda(cfg, cuda=False) == ["lora_mlp_kernel", "lora_qkv_kernel", "lora_embedding_kernel"]
    assert all(cfg[k] is False for k in LORA_KERNEL_KEYS)
    with pytest.raises(ValueError, match="lora_qkv_kernel: true, but this machine has no CUDA device"):
        lora_kernels_off_without_cuda({"adapter": "lora", "lora_qkv_kernel": True}, cuda=False)


def test_temperature_scaling_alone_trains_nothing_and_still_writes_its_commands(tmp_path, data, capsys):
    out = tmp_path / "ts_only"
    assert main(["reproduce", "--model", "org/dpo", "--train-data-files", data["train"], "--data-files", data["in"],
                 "--ood-data-files", data["out"], "--methods", "ts", "--output-dir", str(out), "--dry-run"]) == 0
    commands = [c for c in (out / "commands.sh").read_text().splitlines() if c.startswith(sys.executable)]
    assert [c.split()[2] for c in commands] == ["axolotl_calib_plugin.cli"] * 3  # eval, temperature, table
    assert not (out / "configs").exists()
