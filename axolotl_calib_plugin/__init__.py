"""axolotl-calib: calibration-aware fine-tuning (CFT / RCFT, Xiao et al., ICML 2025) for Axolotl.

Enable it in an Axolotl config with::

    plugins:
      - axolotl_calib_plugin.CalibrationPlugin

Importing this package is cheap (the lm-eval tasks import :mod:`axolotl_calib_plugin.metrics`);
the plugin class, which needs axolotl, is imported lazily on first access.
"""

__version__ = "0.1.0"

__all__ = ["CalibrationPlugin", "CalibrationArgs", "__version__"]


def __getattr__(name):  # PEP 562: keep `import axolotl_calib_plugin` free of axolotl's import cost
    if name == "CalibrationPlugin":
        from .train.plugin import CalibrationPlugin

        return CalibrationPlugin
    if name == "CalibrationArgs":
        from .train.args import CalibrationArgs

        return CalibrationArgs
    raise AttributeError(f"module 'axolotl_calib_plugin' has no attribute {name!r}")
