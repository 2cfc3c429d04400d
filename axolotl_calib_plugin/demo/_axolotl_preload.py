"""Imported once by the demo's fork server (:mod:`axolotl_calib_plugin.demo.launcher`): Axolotl's train CLI
and what it pulls in, so every forked training run starts with them already imported."""

from axolotl_calib_plugin.offline import OFFLINE_ENV

import os

for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

import axolotl.cli.train  # noqa: E402,F401
import axolotl.train  # noqa: E402,F401
