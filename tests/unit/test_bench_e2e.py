"""The end-to-end training benchmark runs whole Trainer.train() calls of every variant with the plugin's own callback
(refresh schedule checked here), and the online-vs-exact quality script reads a study's paired seeds; timings are
never checked."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH_DIR))  # the scripts import their sibling common.py
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_bench_e2e_runs_every_variant_with_the_plugins_refresh_schedule(tmp_path, capsys):
    mod = _load("bench_e2e")
    out = tmp_path / "e2e.json"
    rc = mod.main(["--repeats", "1", "--epochs", "1", "2", "--rows", "8", "--batch", "4", "--hidden", "32",
                   "--layers", "1", "--heads", "2", "--words", "8", "--warmup", "0", "--workdir", str(tmp_path / "w"),
                   "--out", str(out)])
    assert rc == 0
    runs = {(r["variant"], r["epochs"]): r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {(v, e) for v in ("sft", "exact", "online", "heldout") for e in (1, 2)}
    for (variant, epochs), r in runs.items():
        assert r["steps"] == 2 * epochs  # 8 rows / batch 4, every epoch
        # balanced: 1-epoch runs get ceil(2 / 1) = 2 blocks per round, 2-epoch runs 1, paired within their block
        assert r["ratio_to_sft"] > 0 and len(r["seconds"]) == len(r["cpu_seconds"]) == {1: 2, 2: 1}[epochs]
        if variant == "sft":
            assert r["ratio_to_sft"] == 1.0 and "refreshes" not in r
        else:  # one refresh per epoch; the first is exact, the online variants' later ones read the record
            assert r["refreshes"] == epochs
            assert r["online"] == (0 if variant == "exact" else epochs - 1)
    text = capsys.readouterr().out
    assert "1 epoch(s): online / SFT" in text and "2 epoch(s): online / SFT" in text and "target <= 1.05x" in text
    assert "n 2, " in text and "n 1, " in text


def test_bench_e2e_measures_a_model_folder_on_the_rows_beside_it(tmp_path, capsys, tiny_model_dir):
    """--model DIR trains that folder's model on the data/train.jsonl that `axolotl-calib real-model` writes beside
    it (the same code as the tiny Llama); a file with too few rows is named."""
    import shutil

    model = tmp_path / "real" / "model"
    shutil.copytree(tiny_model_dir, model)
    (tmp_path / "real" / "data").mkdir()
    train = tmp_path / "real" / "data" / "train.jsonl"
    train.write_text("".join(json.dumps({"question": f"What is fact {i}?", "choices": ["one", "two", "three", "four"],
                                         "answer": i % 4, "id": f"train-{i}"}) + "\n" for i in range(10)))
    mod = _load("bench_e2e")
    out = tmp_path / "e2e.json"
    common = ["--model", str(model), "--repeats", "1", "--epochs", "1", "--variants", "sft", "online", "--batch",
              "4", "--warmup", "0", "--workdir", str(tmp_path / "w"), "--out", str(out)]
    assert mod.main(common + ["--rows", "8"]) == 0  # 8 training rows + 2 held-out rows: all 10 of the file
    text = capsys.readouterr().out
    assert f"the model folder {model}" in text and f"rows: the first 10 of {train}" in text
    runs = {(r["variant"], r["epochs"]): r for r in json.loads(out.read_text())["runs"]}
    assert runs[("sft", 1)]["steps"] == runs[("online", 1)]["steps"] == 2 and runs[("online", 1)]["refreshes"] == 1
    with pytest.raises(SystemExit, match=f"{train}: 10 rows, the benchmark needs 15 \\(lower --rows\\)"):
        mod.main(common + ["--rows", "12"])


def test_bench_e2e_blocks_per_round_and_the_ratio_interval():
    mod = _load("bench_e2e")
    assert mod.blocks_per_round([1, 2, 5], True) == {1: 5, 2: 3, 5: 1}
    assert mod.blocks_per_round([1, 2, 5], False) == {1: 1, 2: 1, 5: 1}
    gm, lo, hi = mod.ratio_interval([1.0, 1.1, 1.21])
    assert gm == pytest.approx(1.1) and lo < 1.0 < 1.21 < hi  # t(0.975, 2) = 4.303 on log-sd 0.0953
    assert hi == pytest.approx(1.1 * 2.718281828 ** (4.302653 * 0.0953102 / 3 ** 0.5), rel=1e-4)


def _study(tmp_path, online_minus_exact: dict) -> Path:
    rows = {}
    per_seed = {}
    for s in range(5):
        base = {split: {"conf_ece": 0.04 + 0.001 * s, "cw_ece": 0.03, "acc": 0.6 + 0.01 * s} for split in ("in", "out")}
        online = {split: {m: v + online_minus_exact[m] for m, v in vals.items()} for split, vals in base.items()}
        rows = {"aligned.cft": base, "aligned.cft_online": online}
        per_seed[str(s)] = {"rows": rows}
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"per_seed": per_seed}))
    return path


def test_online_vs_exact_reports_paired_differences_against_the_margins(tmp_path, capsys):
    mod = _load("online_vs_exact")
    # the same offset on every seed: sd 0, the interval is the point itself
    path = _study(tmp_path, {"conf_ece": 0.004, "cw_ece": -0.02, "acc": -0.001})
    assert mod.main(["--study", str(path)]) == 0
    lines = {ln.split()[0] + " " + ln.split()[1]: ln for ln in capsys.readouterr().out.splitlines()[2:]}
    assert "+0.0040 [+0.0040, +0.0040]" in lines["conf_ece in"] and " yes " in lines["conf_ece in"]
    assert "-0.0200 [-0.0200, -0.0200]" in lines["cw_ece out"] and " no " in lines["cw_ece out"]
    assert " yes " in lines["acc in"]


def test_online_vs_exact_seeds_needed_grows_with_the_spread_and_names_a_missing_run(tmp_path, capsys):
    mod = _load("online_vs_exact")
    small = mod.seeds_needed(0.0, 0.002, 0.01, 0.8)
    large = mod.seeds_needed(0.0, 0.0107, 0.01, 0.8)
    assert small is not None and large is not None and small < large
    assert mod.seeds_needed(0.02, 0.001, 0.01, 0.8) is None  # a true difference outside the margin: never
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"per_seed": {"0": {"rows": {"aligned.cft": {}}}}}))
    assert mod.main(["--study", str(path)]) == 1
    assert "seed 0 has no run 'aligned.cft_online'" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _quiet_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # bench_e2e pins 1 thread by default
