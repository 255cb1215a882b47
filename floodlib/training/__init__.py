"""Training: one ``fit`` for every stage (PyTorch Lightning) and its monitoring. The checkpoints it writes
are :mod:`floodlib.models.checkpoints`' (``load_model`` and friends, also importable from here).

>>> result = fit(create_model("Arch_04"), train, val, out_dir="outputs/run/A", epochs=300, lr=1e-4)
>>> model = load_model("outputs/run/A/models/Arch_04/model.pth")
"""

from floodlib.models.checkpoints import CheckpointError, load_model, read_checkpoint, save_model
from floodlib.models.init import INIT_SCHEMES, init_weights
from floodlib.training.fit import NonFiniteLossError, PlateauSchedule, TrainingResult, fit
from floodlib.training.monitor import ConvergenceReport, analyse_convergence, no_change_loss

__all__ = [
    "CheckpointError", "ConvergenceReport", "INIT_SCHEMES", "NonFiniteLossError", "PlateauSchedule",
    "TrainingResult", "analyse_convergence", "fit", "init_weights", "load_model", "no_change_loss",
    "read_checkpoint", "save_model",
]
