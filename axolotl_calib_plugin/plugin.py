"""``plugins: [axolotl_calib_plugin.plugin.CalibrationPlugin]`` in existing configs: this path is the module
:mod:`axolotl_calib_plugin.train.plugin` itself (same object), so both spellings load one plugin class."""

import sys

from .train import plugin as _plugin

sys.modules[__name__] = _plugin
