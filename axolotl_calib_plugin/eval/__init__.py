"""Evaluation: lm-eval runs of the calib tasks, reports, reliability plots, temperature scaling, the regime
diagnosis and run comparison. Uses the shared core only: never imports train/ (tests/unit/test_layout.py)."""
