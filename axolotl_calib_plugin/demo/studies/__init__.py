"""The studies behind ``axolotl-calib demo --seeds N --study NAME``: one :class:`~.base.Study` subclass each.

:data:`STUDIES` maps each ``--study`` name to its class; :func:`register` adds one (see ``demo/README.md``,
"Adding a study"). :func:`axolotl_calib_plugin.demo.study.run_study` runs any registered study.
"""

from __future__ import annotations

from .alignment import AlignmentStudy
from .base import Study, seed_values
from .heldout import HeldoutStudy
from .main import MainStudy
from .online import OnlineStudy
from .optimism import OptimismStudy
from .real import RealStudy
from .real_staged import RealStagedStudy

__all__ = ["STUDIES", "AlignmentStudy", "HeldoutStudy", "MainStudy", "OnlineStudy", "OptimismStudy", "RealStagedStudy", "RealStudy",
           "Study",
           "get_study", "register",
           "seed_values"]

#: ``--study`` name -> Study subclass
STUDIES: dict[str, type[Study]] = {}


def register(cls: type[Study]) -> type[Study]:
    """Add a Study subclass under its ``name`` (usable as a class decorator); a name taken by another class is an
    error, so two studies never write over each other's files."""
    if not (isinstance(cls, type) and issubclass(cls, Study)) or not cls.name or not cls.stem:
        raise TypeError(f"{cls!r}: register a Study subclass that sets name and stem")
    if STUDIES.get(cls.name, cls) is not cls:
        raise ValueError(f"a study named {cls.name!r} is already registered ({STUDIES[cls.name].__qualname__})")
    STUDIES[cls.name] = cls
    return cls


def get_study(name: str) -> Study:
    """An instance of the study registered as ``name``; an unknown name lists the known ones."""
    if name not in STUDIES:
        raise KeyError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    return STUDIES[name]()


for _cls in (MainStudy, HeldoutStudy, AlignmentStudy, OnlineStudy, OptimismStudy, RealStudy, RealStagedStudy):
    register(_cls)
