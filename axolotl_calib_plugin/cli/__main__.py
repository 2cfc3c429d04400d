"""``python -m axolotl_calib_plugin.cli``: the console script without the installed entry point."""

import sys

from .commands import main

sys.exit(main())
