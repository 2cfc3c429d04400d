"""``type: axolotl_calib_plugin.mcq`` (the dataset type every config names): this path is the module
:mod:`axolotl_calib_plugin.train.mcq` itself (same object), where Axolotl finds the strategy's ``load``."""

import sys

from .train import mcq as _mcq

sys.modules[__name__] = _mcq
