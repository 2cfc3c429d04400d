"""The environment that keeps every local run (tests, demo, benchmarks) off the network.

Nothing here may reach the Hugging Face hub or a telemetry endpoint: models and data are built
locally. One definition, imported by the demo pipeline, the CLI, the test suite and the benchmarks.
"""

from __future__ import annotations

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "PYTHONUNBUFFERED": "1",
}
