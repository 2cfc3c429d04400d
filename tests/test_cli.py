"""``axolotl-calib`` console script: parser, make-tiny, diagnose (lm-eval on a tiny local model)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from axolotl_calib_plugin.cli import build_parser, main


def test_parser_subcommands():
    p = build_parser()
    a = p.parse_args(["demo", "--out", "x", "--fast", "--seed", "3"])
    assert a.fast and a.seed == 3 and a.out == "x"
    a = p.parse_args(["diagnose", "--model", "m", "--data", "d.jsonl", "--acc-star", "0.6"])
    assert a.acc_star == 0.6
    with pytest.raises(SystemExit):
        p.parse_args([])


def test_entry_point_declared():
    import configparser
    import pathlib

    cfg = configparser.ConfigParser()
    cfg.read(pathlib.Path(__file__).resolve().parents[1] / "setup.cfg")
    assert "axolotl-calib = axolotl_calib_plugin.cli:main" in cfg["options.entry_points"]["console_scripts"]


@pytest.mark.slow
def test_make_tiny_and_diagnose(tmp_path):
    from axolotl_calib_plugin.demo.world import World, generate

    world = World(seed=1)
    d = generate(str(tmp_path / "data"), world, 10, 10, 10, 60, 10)
    assert main(["make-tiny", "--out", str(tmp_path / "m"), "--data", d.eval_in]) == 0
    proc = subprocess.run([sys.executable, "-m", "axolotl_calib_plugin.cli", "diagnose", "--model", str(tmp_path / "m"),
                           "--data", d.eval_in, "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 60 and out["advice"] in ("CFT", "RCFT")
    assert abs(out["conf_ece"] - out["lm_eval"]["conf_ece"]) < 1e-6
    proc = subprocess.run([sys.executable, "-m", "axolotl_calib_plugin.cli", "diagnose", "--model", str(tmp_path / "m"),
                           "--data", d.eval_in], capture_output=True, text=True, timeout=600)
    assert "Verdict:" in proc.stdout and "not from the paper" in proc.stdout
