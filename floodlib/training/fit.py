"""``fit``: train any registered model on a split, with monitoring, checkpoints and resume (PyTorch Lightning)."""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from torch.utils.data import DataLoader, Sampler

import floodlib
from floodlib.models import FloodModel
from floodlib.training.artifacts import atomic_json, atomic_torch_save, save_model
from floodlib.training.monitor import analyse_convergence, no_change_loss

PROGRESS_MODES = ("auto", "bar", "epoch", "none")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


@dataclass(frozen=True)
class PlateauSchedule:
    """ReduceLROnPlateau on the validation loss; defaults are the reference's settings."""

    factor: float = 0.5
    patience: int = 10
    threshold: float = 0.006
    cooldown: int = 5
    min_lr: float = 1e-7


@dataclass
class TrainingResult:
    """What :func:`fit` returns: the model with its best weights restored, and what happened."""

    name: str
    model: FloodModel
    history: dict[str, list[float]]
    baseline_val_loss: float
    analysis: dict[str, Any]
    model_path: Path
    losses_path: Path
    summary_path: Path
    resumed_from_epoch: int = 0
    seconds_per_epoch: float = float("nan")


class EpochShuffleSampler(Sampler[int]):
    """A random order per epoch derived from (seed, epoch) alone, so a resumed run replays the same batches."""

    def __init__(self, length: int, seed: int):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at the start of every epoch
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


class SurrogateModule(L.LightningModule):
    """L1 loss on the depth change, Adam, optional ReduceLROnPlateau; one shared step for train/val/test.

    Epoch losses are exact sample-weighted means (sums of |error| over cells / cells), and the per-epoch
    history, the best validation loss and the plateau scheduler live in the checkpoint, so a resumed run
    continues exactly where the interrupted one stopped.
    """

    def __init__(self, model: FloodModel, *, lr: float, plateau: PlateauSchedule | None, best_model_path: Path,
                 baseline_val_loss: float):
        super().__init__()
        self.model = model
        self.lr = lr
        self.plateau_settings = plateau
        self.best_model_path = best_model_path
        self.baseline_val_loss = baseline_val_loss
        self.history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "lr": [], "epoch_time_s": []}
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._sums = {"train": [0.0, 0], "val": [0.0, 0]}
        self._epoch_start = time.perf_counter()

    def forward(self, terrain: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        return self.model(terrain, depths)

    def _step(self, batch, stage: str, batch_idx: int) -> torch.Tensor:
        prediction = self.model(batch.terrain, batch.depths)
        loss = F.l1_loss(prediction.float(), batch.depth_change.float())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{stage} loss is {loss.item()} at epoch {self.current_epoch + 1}, batch {batch_idx + 1}")
        sums = self._sums.get(stage)
        if sums is not None:
            sums[0] += float(loss.detach()) * batch.depth_change.numel()
            sums[1] += batch.depth_change.numel()
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx):
        loss = self._step(batch, "test", batch_idx)
        self.log("test_loss", loss, batch_size=len(batch.depths))
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        if self.plateau_settings is not None:
            s = self.plateau_settings
            # Stepped by this module after each validation (see on_validation_epoch_end), so its state in
            # the checkpoint is always the post-epoch one.
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=s.factor, patience=s.patience, threshold=s.threshold,
                cooldown=s.cooldown, min_lr=s.min_lr)
            if getattr(self, "_pending_plateau_state", None):
                self.plateau.load_state_dict(self._pending_plateau_state)
        return optimizer

    def on_train_epoch_start(self) -> None:
        self._sums["train"] = [0.0, 0]
        self._epoch_start = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._sums["val"] = [0.0, 0]

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        train_sum, train_count = self._sums["train"]
        val_sum, val_count = self._sums["val"]
        train_loss = train_sum / max(train_count, 1)
        val_loss = val_sum / max(val_count, 1)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.history["train_loss"].append(train_loss)
        self.history["val_loss"].append(val_loss)
        self.history["lr"].append(lr)
        self.history["epoch_time_s"].append(time.perf_counter() - self._epoch_start)
        self.log("val_loss", val_loss, prog_bar=True)
        self.log("train_loss", train_loss, prog_bar=True)
        if val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            self.best_epoch = len(self.history["val_loss"])
            save_model(self.model, self.best_model_path, epoch=self.best_epoch, best_val_loss=val_loss,
                       extra={"baseline_val_loss": self.baseline_val_loss})
        if self.plateau is not None:
            self.plateau.step(val_loss)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["floodlib"] = {
            "history": self.history,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["floodlib"]
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.best_val_loss = state["best_val_loss"]
        self.best_epoch = state["best_epoch"]
        self._pending_plateau_state = state["plateau"]
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])


class EpochLines(Callback):
    """One progress line per epoch: readable in papermill's saved output, a log file or a terminal."""

    def __init__(self, name: str, baseline: float, stream=None):
        self.name = name
        self.baseline = baseline
        self.stream = stream

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        history = pl_module.history
        if not history["val_loss"]:
            return
        print(f"{self.name} epoch {len(history['val_loss'])}/{trainer.max_epochs}: train {history['train_loss'][-1]:.5f}"
              f"  val {history['val_loss'][-1]:.5f}  no-change {self.baseline:.5f}  lr {history['lr'][-1]:.2e}"
              f"  {history['epoch_time_s'][-1]:.1f} s", file=self.stream or sys.stdout, flush=True)


def _progress_mode(progress: str) -> str:
    if progress not in PROGRESS_MODES:
        raise ValueError(f"progress={progress!r}; expected one of {list(PROGRESS_MODES)}")
    if progress != "auto":
        return progress
    try:  # inside a Jupyter kernel with a live front end: a widget bar
        from IPython import get_ipython

        if get_ipython() is not None and "IPKernelApp" in get_ipython().config:
            return "bar"
    except ImportError:
        pass
    return "bar" if sys.stderr.isatty() else "epoch"


def _check_arguments(model, train, val, epochs, lr, batch_size, patience) -> None:
    if not isinstance(model, FloodModel):
        raise TypeError(f"fit needs a model from floodlib.models.create_model, got {type(model).__name__}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a positive learning rate")
    for split_name, split in (("train", train), ("val", val)):
        if len(split) == 0:
            raise ValueError(f"the {split_name} split ({getattr(split, 'name', '?')!r}) has no samples")


def fit(
    model: FloodModel,
    train,
    val,
    *,
    out_dir: str | Path,
    name: str | None = None,
    epochs: int = 300,
    lr: float = 1e-4,
    batch_size: int = 300,
    patience: int = 30,
    plateau: PlateauSchedule | None = None,
    seed: int = 0,
    num_workers: int = 0,
    progress: str = "auto",
    accelerator: str = "auto",
    resume: bool = True,
    keep_resume_checkpoint: bool = False,
    callbacks: Sequence[Callback] = (),
) -> TrainingResult:
    """Train ``model`` on ``train``, validating on ``val`` every epoch, and save its artifacts.

    Parameters
    ----------
    model : a model from :func:`floodlib.models.create_model` (initialised there: Xavier or Kaiming).
    train, val : datasets of :class:`~floodlib.data.dataset.Sample` items.
    out_dir : the stage folder; writes ``models/<name>/model.pth`` (best weights, self-describing),
        ``losses/<name>/losses.pt`` (per-epoch train/val loss, learning rate, epoch time, no-change val loss),
        ``models/<name>/summary.json`` and, while running, ``checkpoints/<name>/last.ckpt``.
    name : folder name of this model (default: the architecture's name).
    epochs : maximum epochs; ``patience`` epochs without a better validation loss stop earlier.
    lr, batch_size : Adam's learning rate and the batch size.
    plateau : a :class:`PlateauSchedule` to reduce the learning rate on a validation plateau, or None.
    seed : seeds initial shuffles and every epoch's order; the same seed gives the same run on CPU.
    num_workers : DataLoader worker processes.
    progress : ``"bar"`` (tqdm; a widget in JupyterLab), ``"epoch"`` (a line per epoch), ``"none"``, or
        ``"auto"`` (a bar in a terminal or notebook, lines otherwise).
    accelerator : Lightning's accelerator (``"auto"`` = CUDA when present, else CPU). bf16 autocast on GPU.
    resume : continue from ``checkpoints/<name>/last.ckpt`` when a previous run was interrupted.
    keep_resume_checkpoint : keep last.ckpt (with optimizer state) after a completed run.
    callbacks : further Lightning callbacks (e.g. an Optuna pruning callback).

    Returns
    -------
    TrainingResult with the best weights loaded into ``result.model``.
    """
    _check_arguments(model, train, val, epochs, lr, batch_size, patience)
    mode = _progress_mode(progress)
    name = name or model.arch
    out_dir = Path(out_dir)
    model_path = out_dir / "models" / name / "model.pth"
    losses_path = out_dir / "losses" / name / "losses.pt"
    summary_path = out_dir / "models" / name / "summary.json"
    checkpoint_dir = out_dir / "checkpoints" / name
    last_checkpoint = checkpoint_dir / "last.ckpt"

    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    L.seed_everything(seed, workers=True, verbose=False)
    baseline = no_change_loss(val, batch_size=max(batch_size, 256))
    module = SurrogateModule(model, lr=lr, plateau=plateau, best_model_path=model_path, baseline_val_loss=baseline)

    train_loader = DataLoader(train, batch_size=batch_size, sampler=EpochShuffleSampler(len(train), seed),
                              num_workers=num_workers, persistent_workers=num_workers > 0)
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            persistent_workers=num_workers > 0)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    extra_callbacks = list(callbacks)
    callbacks: list[Callback] = [
        EarlyStopping(monitor="val_loss", patience=patience, mode="min", check_finite=True),
        ModelCheckpoint(dirpath=checkpoint_dir, filename="last", save_last=False, save_top_k=1,
                        monitor=None, every_n_epochs=1, enable_version_counter=False),
    ]
    callbacks = [*extra_callbacks, *callbacks]
    if mode == "bar":
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, len(train_loader) // 20)))
    elif mode == "epoch":
        callbacks.append(EpochLines(name, baseline))
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        precision="bf16-mixed" if on_gpu else "32-true",
        # Our CPU kernels are deterministic at a fixed thread count; torch.use_deterministic_algorithms would
        # also fill every new tensor with NaN (measured: 7x slower epochs) without changing a result.
        deterministic=False,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=mode == "bar",
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
    )
    resumed_from = 0
    ckpt_path = None
    if resume and last_checkpoint.exists():
        ckpt_path = str(last_checkpoint)
        resumed_from = int(torch.load(last_checkpoint, map_location="cpu", weights_only=True)["epoch"]) + 1
    model.train()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        try:
            trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
        except NonFiniteLossError as error:
            raise NonFiniteLossError(
                f"{name}: {error}. Training stopped; the best weights so far are in {model_path}"
                + (f" and the last complete epoch in {last_checkpoint}" if last_checkpoint.exists() else "")
            ) from None
    elapsed = time.perf_counter() - started

    history = module.history
    if not history["val_loss"]:
        raise RuntimeError(f"{name}: no epoch completed")
    best = torch.load(model_path, map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    model.eval()
    analysis = analyse_convergence(history["train_loss"], history["val_loss"], baseline_val_loss=baseline,
                                   max_epochs=epochs).to_dict()
    atomic_torch_save({
        "train_loss": torch.tensor(history["train_loss"], dtype=torch.float64),
        "val_loss": torch.tensor(history["val_loss"], dtype=torch.float64),
        "lr": torch.tensor(history["lr"], dtype=torch.float64),
        "epoch_time_s": torch.tensor(history["epoch_time_s"], dtype=torch.float64),
        "baseline_val_loss": baseline,
    }, losses_path)
    epochs_here = max(1, len(history["val_loss"]) - resumed_from)
    summary = {
        "name": name,
        "arch": model.arch,
        "config": model.config,
        "floodlib_version": floodlib.__version__,
        "train_split": getattr(train, "name", None),
        "val_split": getattr(val, "name", None),
        "train_samples": len(train),
        "val_samples": len(val),
        "settings": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "patience": patience, "seed": seed,
                     "plateau": asdict(plateau) if plateau else None, "accelerator": str(trainer.accelerator.__class__.__name__),
                     "precision": trainer.precision},
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_epoch": float(np.median(history["epoch_time_s"][resumed_from:] or history["epoch_time_s"])),
        "wall_time_s": elapsed,
        "resumed_from_epoch": resumed_from,
        "analysis": analysis,
        "model_path": str(model_path.relative_to(out_dir)),
        "losses_path": str(losses_path.relative_to(out_dir)),
    }
    atomic_json(summary, summary_path)
    if not keep_resume_checkpoint:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        for parent in checkpoint_dir.parents:  # drop the checkpoints/ folders left empty
            if parent == out_dir or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
    return TrainingResult(name=name, model=model, history=history, baseline_val_loss=baseline, analysis=analysis,
                          model_path=model_path, losses_path=losses_path, summary_path=summary_path,
                          resumed_from_epoch=resumed_from, seconds_per_epoch=elapsed / epochs_here)
