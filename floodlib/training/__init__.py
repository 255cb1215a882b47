"""Training: one ``fit`` for every stage (PyTorch Lightning) and its monitoring. The checkpoints it writes
are :mod:`floodlib.models.checkpoints`' (``load_model`` and friends, also importable from here).

>>> result = fit(create_model("Arch_04"), train, val, out_dir="outputs/run/A", epochs=300, lr=1e-4)
>>> model = load_model("outputs/run/A/models/Arch_04/model.pth")

The names are imported on first use, so that a submodule that needs no Lightning (``python -m
floodlib.training.launch`` refusing its arguments, for one) does not pay the seconds of importing it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports each on first use
    from floodlib.models.checkpoints import CheckpointError, load_model, read_checkpoint, save_model
    from floodlib.models.init import INIT_SCHEMES, init_weights
    from floodlib.training.fitting import NonFiniteLossError, PlateauSchedule, TrainingResult, fit
    from floodlib.training.monitor import ConvergenceReport, analyse_convergence, no_change_loss

#: Each exported name and the module that defines it.
_EXPORTS = {
    "CheckpointError": "floodlib.models.checkpoints", "load_model": "floodlib.models.checkpoints",
    "read_checkpoint": "floodlib.models.checkpoints", "save_model": "floodlib.models.checkpoints",
    "INIT_SCHEMES": "floodlib.models.init", "init_weights": "floodlib.models.init",
    "NonFiniteLossError": "floodlib.training.fitting", "PlateauSchedule": "floodlib.training.fitting",
    "TrainingResult": "floodlib.training.fitting", "fit": "floodlib.training.fitting",
    "ConvergenceReport": "floodlib.training.monitor", "analyse_convergence": "floodlib.training.monitor",
    "no_change_loss": "floodlib.training.monitor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
