"""``fit``: train any registered model on a split, with monitoring, checkpoints and resume (PyTorch Lightning)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
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

import floodlib
from floodlib.data.batches import PLACEMENTS, BatchLoader
from floodlib.data.dataset import PatchDataset
from floodlib.data.locks import hold_folder
from floodlib.models import FloodModel
from floodlib.data.store import atomic_json
from floodlib.environment import environment
from floodlib.models.checkpoints import CheckpointError, atomic_torch_save, save_model
from floodlib.training.monitor import analyse_convergence, no_change_loss

PROGRESS_MODES = ("auto", "bar", "epoch", "none")
#: Precisions ``fit`` accepts: Lightning's names, and ``"auto"`` (bf16 autocast on CUDA, float32 elsewhere).
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


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
    #: The median time of this call's epochs (training and validation), s — as the summary records it;
    #: the call's whole wall time, set-up included, is the summary's ``wall_time_s``.
    seconds_per_epoch: float = float("nan")


@dataclass(frozen=True)
class LoaderSettings:
    """How :class:`SurrogateModule` batches its splits (see :class:`~floodlib.data.batches.BatchLoader`)."""

    batch_size: int
    seed: int = 0
    placement: str = "auto"


def blend_rings(depths: torch.Tensor, fraction: float, *, ring_cells: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Depths (B, 2, P, P) = [ring at n+1, depth at n] with a random ``fraction`` of the samples' rings moved
    toward the depth at n: ring + w (depth at n on the ring - ring), w uniform in [0, 1) per chosen sample.

    Full-domain prediction (:mod:`floodlib.predict`) starts each step's closure from the depth at n and
    iterates its rings toward n+1; a model trained only on the true rings at n+1 reads their change as the
    patch's change, so on those intermediate rings it predicts little change and the closure settles near
    no change. Trained on blended rings (the target stays the true change) it learns to take the change
    from the depth at n and the terrain as well. Values stay between the two depths, so never negative.
    """
    count = depths.shape[0]
    draws = torch.rand(2, count, 1, 1, device=depths.device, generator=generator)
    weight = draws[1] * (draws[0] < fraction)
    ring, now = depths[:, 0], depths[:, 1]
    on_ring = torch.ones_like(now[0], dtype=torch.bool)
    on_ring[ring_cells:-ring_cells, ring_cells:-ring_cells] = False
    blended = torch.where(on_ring, ring + weight * (now - ring), ring)
    return torch.stack([blended, now], dim=1)


class SurrogateModule(L.LightningModule):
    """L1 loss on the depth change, Adam, optional ReduceLROnPlateau; one shared step for train and val.

    Epoch losses are exact sample-weighted means (sums of |error| over cells / cells, summed over every
    process under data parallelism), and the per-epoch history, the best validation loss and the plateau
    scheduler live in the checkpoint, so a resumed run continues exactly where the interrupted one stopped.
    Batches are assembled where the model runs (:class:`~floodlib.data.batches.BatchLoader`); only the
    process of global rank 0 writes files.
    """

    def __init__(self, model: FloodModel, train, val, *, loader: LoaderSettings, lr: float,
                 plateau: PlateauSchedule | None, best_model_path: Path, baseline_val_loss: float,
                 ring_blend: float = 0.0):
        super().__init__()
        self.model = model
        self.ring_blend = ring_blend
        self.ring_cells = train.spec.ring_cells
        self.train_split, self.val_split = train, val
        self.loader = loader
        self.lr = lr
        self.plateau_settings = plateau
        self.best_model_path = best_model_path
        self.baseline_val_loss = baseline_val_loss
        self.history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "lr": [], "epoch_time_s": []}
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._sums: dict[str, torch.Tensor] = {}
        self._first_non_finite: torch.Tensor | None = None
        self._epoch_start = time.perf_counter()

    def _loader(self, split, *, training: bool) -> BatchLoader:
        return BatchLoader(split, batch_size=self.loader.batch_size, device=self.trainer.strategy.root_device,
                           shuffle=training, seed=self.loader.seed, placement=self.loader.placement,
                           rank=self.trainer.global_rank, world_size=self.trainer.world_size, even=training)

    def train_dataloader(self) -> BatchLoader:
        return self._loader(self.train_split, training=True)

    def val_dataloader(self) -> BatchLoader:
        return self._loader(self.val_split, training=False)

    #: Check each step's loss on the host as it is computed (None: on a CPU, where that costs nothing).
    #: Otherwise — on a GPU, where reading the loss back would stall it every step — the first non-finite
    #: training batch is recorded on the device and checked once, before the epoch's validation (and so
    #: before any checkpoint of that epoch is written).
    check_loss_each_step: bool | None = None

    def _step(self, batch, stage: str, batch_idx: int) -> torch.Tensor:
        depths = batch.depths
        if stage == "train" and self.ring_blend > 0:
            # Drawn from the seed, epoch, batch and rank, so a resumed run blends exactly as an uninterrupted one
            # (numpy's SeedSequence: the same draw on every Python version and platform).
            key = [self.loader.seed, self.current_epoch, batch_idx, self.global_rank]
            state = np.random.SeedSequence(key).generate_state(1, np.uint64)[0]
            generator = torch.Generator(depths.device).manual_seed(int(state) >> 1)
            depths = blend_rings(depths, self.ring_blend, ring_cells=self.ring_cells, generator=generator)
        prediction = self.model(batch.terrain, depths)
        loss = F.l1_loss(prediction.float(), batch.depth_change.float())
        finite = torch.isfinite(loss)
        each_step = self.check_loss_each_step
        if each_step or (each_step is None and loss.device.type == "cpu"):
            if not finite:
                raise NonFiniteLossError(f"{stage} loss is {loss.item()} at epoch {self.current_epoch + 1}, "
                                         f"batch {batch_idx + 1}")
        elif stage == "train":
            first = self._first_non_finite
            self._first_non_finite = torch.where(~finite & (first < 0), batch_idx, first)
        sums = self._sums.setdefault(stage, torch.zeros(2, dtype=torch.float64, device=loss.device))
        sums[0] += loss.detach().double() * batch.depth_change.numel()
        sums[1] += batch.depth_change.numel()
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch, batch_idx):
        if len(batch.depth_change) == 0:  # this rank's share of a split smaller than the number of ranks
            return None
        return self._step(batch, "val", batch_idx)

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
        self._sums.pop("train", None)
        self._first_non_finite = torch.tensor(-1, device=self.trainer.strategy.root_device)
        self._epoch_start = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._sums.pop("val", None)
        first = self._first_non_finite
        if first is not None and int(first) >= 0:
            raise NonFiniteLossError(f"train loss is not finite at epoch {self.current_epoch + 1}, batch {int(first) + 1}")

    def _epoch_loss(self, stage: str) -> float:
        """The epoch's mean loss of ``stage`` over every process's samples."""
        sums = self._sums.get(stage)
        if sums is None:
            sums = torch.zeros(2, dtype=torch.float64, device=self.trainer.strategy.root_device)
        total, count = self.trainer.strategy.reduce(sums, reduce_op="sum").tolist()
        return total / max(count, 1)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        train_loss = self._epoch_loss("train")
        val_loss = self._epoch_loss("val")
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
            # Every rank keeps the best weights (they are identical under DDP); rank 0 also saves them.
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if self.trainer.is_global_zero:
                save_model(self.model, self.best_model_path, epoch=self.best_epoch, best_val_loss=val_loss,
                           extra={"baseline_val_loss": self.baseline_val_loss, "trained_on": self.model.trained_on})
        if self.plateau is not None:
            self.plateau.step(val_loss)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["floodlib"] = {
            "settings": self.resume_settings(),
            "history": self.history,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def resume_settings(self) -> dict:
        """What a resumed run must share with the interrupted one (its checkpoint records them): the network,
        learning rate, batch, seed, ring blending, learning-rate schedule and the training and validation
        samples. Epochs and patience may change (training longer)."""
        return {"config": json.loads(json.dumps(self.model.config)), "lr": float(self.lr),
                "batch_size": int(self.loader.batch_size), "seed": int(self.loader.seed),
                "ring_blend": float(self.ring_blend),
                "plateau": asdict(self.plateau_settings) if self.plateau_settings is not None else None,
                "train": samples_fingerprint(self.train_split), "val": samples_fingerprint(self.val_split)}

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
        if not history["val_loss"] or not trainer.is_global_zero:
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


def resolve_precision(precision: str, *, on_gpu: bool) -> str:
    """Lightning's precision for ``precision`` (``"auto"``: ``"bf16-mixed"`` on CUDA, ``"32-true"`` elsewhere)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {list(PRECISIONS)}")
    if precision == "auto":
        return "bf16-mixed" if on_gpu else "32-true"
    if precision == "16-mixed" and not on_gpu:
        # Lightning would train in bf16 instead, saying so only in a log line.
        raise ValueError("precision='16-mixed' (float16 autocast) needs a CUDA GPU; on a CPU use 'bf16-mixed' or "
                         "'32-true'")
    return precision


def _check_arguments(model, train, val, epochs, lr, batch_size, patience, placement, strategy) -> None:
    if not isinstance(model, FloodModel):
        raise TypeError(f"fit needs a model from floodlib.models.create_model, got {type(model).__name__}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a positive learning rate")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r}; expected one of {list(PLACEMENTS)}")
    if isinstance(strategy, str) and strategy.startswith("ddp_"):
        raise ValueError(f"strategy={strategy!r}: fit keeps its history in the process that called it; use "
                         "strategy='ddp' (floodlib starts the other processes, or torchrun / SLURM does)")
    for split_name, split in (("train", train), ("val", val)):
        if not isinstance(split, PatchDataset):
            raise TypeError(f"fit's {split_name} split must be a PatchDataset (e.g. from floodlib.data.load_splits), "
                            f"got {type(split).__name__}")
        if len(split) == 0:
            raise ValueError(f"the {split_name} split ({split.name!r}) has no samples: {split.summary.empty_reason()}")


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
    progress: str = "auto",
    accelerator: str = "auto",
    precision: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    placement: str = "auto",
    resume: bool = True,
    keep_resume_checkpoint: bool = False,
    ring_blend: float = 0.0,
    callbacks: Sequence[Callback] = (),
) -> TrainingResult:
    """Train ``model`` on ``train``, validating on ``val`` every epoch, and save its artifacts.

    Parameters
    ----------
    model : a model from :func:`floodlib.models.create_model` (initialised there: Xavier or Kaiming).
    train, val : :class:`~floodlib.data.dataset.PatchDataset` splits.
    out_dir : the stage folder; writes ``models/<name>/model.pth`` (best weights, self-describing),
        ``losses/<name>/losses.pt`` (per-epoch train/val loss, learning rate, epoch time, no-change val loss),
        ``models/<name>/summary.json`` and, while running, ``checkpoints/<name>/last.ckpt``.
    name : folder name of this model (default: the architecture's name).
    epochs : maximum epochs; ``patience`` epochs without a better validation loss stop earlier.
    lr, batch_size : Adam's learning rate and the batch size (the global batch under data parallelism:
        each of the processes trains on its share of every batch).
    plateau : a :class:`PlateauSchedule` to reduce the learning rate on a validation plateau, or None.
    seed : seeds initial shuffles and every epoch's order; the same seed gives the same run on CPU.
    progress : ``"bar"`` (tqdm; a widget in JupyterLab), ``"epoch"`` (a line per epoch), ``"none"``, or
        ``"auto"`` (a bar in a terminal or notebook, lines otherwise).
    accelerator : Lightning's accelerator (``"auto"`` = CUDA when present, else CPU).
    precision : ``"auto"`` (bf16 autocast on CUDA, float32 on CPU), ``"32-true"``, ``"bf16-mixed"`` or
        ``"16-mixed"``.
    devices, num_nodes, strategy : Lightning's data parallelism (e.g. ``devices=4, strategy="ddp"``). Under
        ``torchrun`` or SLURM: the processes they started. From one plain process (a notebook's kernel), fit
        starts the other ranks of this machine itself, and for ``num_nodes > 1`` writes the job into
        ``out_dir`` for ``python -m floodlib.training.launch --serve`` on each other machine (which must see
        ``out_dir``; MASTER_ADDR names this machine to them when its host name does not). Only global rank 0
        writes files.
    placement : where batches are assembled (:func:`floodlib.data.batches.resolve_placement`): ``"auto"``
        (on a GPU with room for the split, else on the host), ``"device"`` or ``"host"``.
    resume : continue from ``checkpoints/<name>/last.ckpt`` when a previous run was interrupted.
    keep_resume_checkpoint : keep last.ckpt (with optimizer state) after a completed run.
    ring_blend : the fraction of training samples (drawn anew every batch) whose boundary ring is moved a
        random part of the way from the depth at n+1 toward the depth at n (:func:`blend_rings`), so the model
        also predicts well from the rings full-domain prediction iterates through. 0 (the default): the
        reference's training, on true rings only. Validation always uses the true rings.
    callbacks : further Lightning callbacks (e.g. an Optuna pruning callback).

    Returns
    -------
    TrainingResult with the best weights loaded into ``result.model``.
    """
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"accelerator={accelerator!r}, but this torch {torch.__version__} sees no CUDA device"
                         f"{' (a CPU-only build)' if torch.version.cuda is None else ''}; use 'auto' or 'cpu', or "
                         "install a CUDA build of torch (make install TORCH_SPEC=...)")
    _check_arguments(model, train, val, epochs, lr, batch_size, patience, placement, strategy)
    if isinstance(ring_blend, bool) or not isinstance(ring_blend, (int, float)) or not 0 <= ring_blend <= 1:
        raise ValueError(f"ring_blend={ring_blend!r} must be a fraction of the training samples, from 0 to 1")
    mode = _progress_mode(progress)
    name = name or model.arch
    if not isinstance(name, str) or not name.strip("./") or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"name={name!r} must be a folder (or sub-folder) name inside out_dir: fit writes "
                         "models/<name>/ there")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed={seed!r} must be a whole number from 0 to 2**32 - 1")
    if plateau is not None and not isinstance(plateau, PlateauSchedule):
        raise TypeError(f"plateau={plateau!r} must be a PlateauSchedule (e.g. PlateauSchedule()) or None")
    strange = [callback for callback in callbacks if not isinstance(callback, Callback)]
    if strange:
        raise TypeError(f"callbacks: {strange[0]!r} is not a Lightning Callback")
    if strategy == "auto" and ((isinstance(devices, int) and not isinstance(devices, bool) and devices > 1)
                               or num_nodes > 1):
        strategy = "ddp"  # several processes: floodlib's data parallelism (it starts the other ranks itself)
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
    model.trained_on = train.trained_on()
    module = SurrogateModule(model, train, val, loader=LoaderSettings(batch_size=batch_size, seed=seed, placement=placement),
                             lr=lr, plateau=plateau, best_model_path=model_path, baseline_val_loss=baseline,
                             ring_blend=float(ring_blend))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = resolve_precision(precision, on_gpu=on_gpu)
    extra_callbacks = list(callbacks)
    callbacks: list[Callback] = [
        EarlyStopping(monitor="val_loss", patience=patience, mode="min", check_finite=True),
        ModelCheckpoint(dirpath=checkpoint_dir, filename="last", save_last=False, save_top_k=1,
                        monitor=None, every_n_epochs=1, enable_version_counter=False),
    ]
    callbacks = [*extra_callbacks, *callbacks]
    if mode == "bar":
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, math.ceil(len(train) / batch_size) // 20)))
    elif mode == "epoch":
        callbacks.append(EpochLines(name, baseline))
    # Several processes (on this machine, or on several) that no launcher started: floodlib starts the
    # other ranks here, and hands the job to the servers of the other machines (floodlib.training.launch).
    from floodlib.training.launch import JOB_FOLDER, launched_externally, local_processes, local_ranks, started_ddp_strategy

    processes = local_processes(strategy=strategy, devices=devices, num_nodes=num_nodes, on_gpu=on_gpu)
    if num_nodes > 1 and strategy != "ddp" and not launched_externally():
        raise ValueError(f"num_nodes={num_nodes} with strategy={strategy!r}: training on several machines needs "
                         "strategy='ddp'")
    if processes and extra_callbacks:
        raise ValueError("callbacks cannot be sent to the processes fit starts for devices > 1; start them with "
                         "torchrun or SLURM instead, or train on one device")
    launch, trainer_strategy = contextlib.nullcontext(), strategy
    if processes:
        trainer_strategy = started_ddp_strategy()
        launch = local_ranks(processes, model=model, train=train, val=val, settings={
            "out_dir": str(out_dir), "name": name, "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "patience": patience, "plateau": asdict(plateau) if plateau else None, "seed": seed, "progress": "none",
            "accelerator": accelerator, "precision": precision, "devices": devices, "num_nodes": num_nodes,
            "strategy": strategy, "placement": placement, "resume": resume,
            "keep_resume_checkpoint": keep_resume_checkpoint, "ring_blend": ring_blend}, num_nodes=num_nodes, job_folder=out_dir / JOB_FOLDER / name)
    # One training per model folder at a time: a second would adopt the first's live last.ckpt as its own.
    # Global rank 0 holds it for the ranks it trains with.
    owner = hold_folder(model_path.parent, what=f"training of {name}") if _global_rank_zero() else contextlib.nullcontext()
    with owner, launch:
        kept_aside = None
        if _global_rank_zero() and not (resume and last_checkpoint.exists()) and summary_path.exists():
            kept_aside = _set_aside_finished(name, out_dir, [model_path, summary_path, losses_path])
        trainer, resumed_from, elapsed = _train(module, callbacks, epochs=epochs, accelerator=accelerator,
                                                devices=devices, num_nodes=num_nodes, strategy=trainer_strategy,
                                                precision=precision, mode=mode, out_dir=out_dir, name=name,
                                                resume=resume, model_path=model_path,
                                                last_checkpoint=last_checkpoint, kept_aside=kept_aside)
        return _finish(module, trainer, train, val, resumed_from=resumed_from, elapsed=elapsed, epochs=epochs,
                       lr=lr, batch_size=batch_size, patience=patience, seed=seed, plateau=plateau,
                       placement=placement, ring_blend=ring_blend, name=name, out_dir=out_dir, model_path=model_path,
                       losses_path=losses_path, summary_path=summary_path, checkpoint_dir=checkpoint_dir,
                       keep_resume_checkpoint=keep_resume_checkpoint)


def _global_rank_zero() -> bool:
    """Whether this process is global rank 0 by the environment a launcher (torchrun, SLURM, floodlib) sets."""
    from floodlib.training.launch import launched_externally

    names = ("RANK", "NODE_RANK", "LOCAL_RANK") + (("SLURM_PROCID",) if launched_externally() else ())
    return all(int(os.environ.get(name) or 0) == 0 for name in names)


def _resume_state(last_checkpoint: Path) -> tuple[int, dict | None]:
    """The epoch after the one ``last_checkpoint`` holds, and the settings it was trained with (None in
    checkpoints written before they were recorded); CheckpointError naming it when it cannot be read."""
    try:
        checkpoint = torch.load(last_checkpoint, map_location="cpu", weights_only=True)
        return int(checkpoint["epoch"]) + 1, (checkpoint.get("floodlib") or {}).get("settings")
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError ... for a damaged file
        raise CheckpointError(
            f"{last_checkpoint}: the resume checkpoint of an interrupted training cannot be read "
            f"({type(error).__name__}: {str(error)[:200]}); a crash or a full disk may have cut it short. Set it "
            f"aside to train this model afresh: mv '{last_checkpoint}' '{last_checkpoint}.damaged' (or call fit "
            "with resume=False, which ignores it)") from None


def _set_aside_finished(name: str, out_dir: Path, paths: list[Path]) -> Path:
    """A model this folder already holds, finished, before a new training of the same name replaces it: its
    files go to ``models/<name>.replaced-<time>/``, so the new run's first epoch overwrites nothing."""
    kept = out_dir / "models" / f"{name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    kept.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if path.exists():
            os.replace(path, kept / path.name)
    print(f"{name}: a finished model of that name was in {out_dir}; its files are kept in {kept}", flush=True)
    return kept


def samples_fingerprint(dataset) -> str:
    """A split's samples in a line: ``<name>: <n> samples of <m> plans, <digest>``, the digest (SHA-256, 12
    hex digits) of its plans' names and its sample index, so that another split, a subset or another sample
    definition differs even with as many samples."""
    import hashlib

    summary = getattr(dataset, "summary", None)
    index = getattr(dataset, "index", None)
    plans = list(getattr(summary, "plans", []) or [])
    digest = hashlib.sha256(json.dumps(plans).encode())
    if index is not None:
        digest.update(np.ascontiguousarray(index).tobytes())
    return (f"{getattr(dataset, 'name', 'split')}: {len(dataset)} samples of {len(plans)} plans, "
            f"{digest.hexdigest()[:12]}")


#: Resume settings that checkpoints of earlier floodlib versions do not record: not compared for those.
_ADDED_RESUME_SETTINGS = ("plateau", "train", "val")


def _check_resume_settings(recorded: dict | None, wanted: dict, *, last_checkpoint: Path, name: str) -> None:
    """Refuse to resume an interrupted training with other settings: its optimizer state and history would
    continue under a summary that describes settings it did not train with."""
    if recorded is None:
        return

    def flat(settings: dict) -> dict:  # the network's configuration keys beside the others, as config.<key>
        config = settings.get("config") or {}
        return {**{k: v for k, v in settings.items() if k != "config"}, **{f"config.{k}": v for k, v in config.items()}}

    recorded, wanted = flat(recorded), flat(wanted)
    keys = sorted(key for key in {*recorded, *wanted} if key in recorded or key not in _ADDED_RESUME_SETTINGS)
    differ = [f"{key} {recorded.get(key)!r} there, {wanted.get(key)!r} now" for key in keys
              if recorded.get(key) != wanted.get(key)]
    if differ:
        raise ValueError(f"{name}: {last_checkpoint} holds an interrupted training with other settings "
                         f"({'; '.join(differ)}). "
                         f"Call fit with its settings to resume it, or with resume=False to train afresh (the "
                         f"interrupted run's checkpoint is then replaced)")


def _train(module: SurrogateModule, callbacks, *, epochs, accelerator, devices, num_nodes, strategy, precision, mode,
           out_dir: Path, name: str, resume: bool, model_path: Path, last_checkpoint: Path,
           kept_aside: Path | None = None):
    """Run Lightning's fit loop; returns (trainer, epoch resumed from, wall seconds)."""
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
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
    if trainer.world_size > 1:  # Lightning creates the process group and leaves it for the exit to tear down
        from floodlib.training.launch import destroy_process_group_at_exit

        destroy_process_group_at_exit()
    resumed_from = 0
    ckpt_path = None
    if resume and last_checkpoint.exists():
        ckpt_path = str(last_checkpoint)
        resumed_from, recorded = _resume_state(last_checkpoint)
        _check_resume_settings(recorded, module.resume_settings(), last_checkpoint=last_checkpoint, name=name)
    module.model.train()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        # A resumed run's own checkpoint folder: Lightning warns that it is not empty, which is the point.
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        try:
            trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit:
            # Lightning answers Ctrl-C (SIGINT) by stopping gracefully and exiting with status 1, silently.
            if not trainer.interrupted:
                raise
            done = len(module.history["val_loss"])
            raise KeyboardInterrupt(
                f"{name}: training interrupted after {done} complete epoch(s); calling fit again with the same "
                f"arguments resumes from {last_checkpoint}" if last_checkpoint.exists() else
                f"{name}: training interrupted before its first epoch completed; nothing to resume from") from None
        except NonFiniteLossError as error:
            if module.history["val_loss"] and model_path.exists():
                kept = f"the best weights so far are in {model_path}"
            elif model_path.exists():
                kept = f"no epoch of this run completed; {model_path} still holds the weights saved before it"
            elif kept_aside is not None:
                kept = f"no epoch of this run completed; the finished model that was there is kept in {kept_aside}"
            else:
                kept = "no epoch completed, so no weights were saved"
            raise NonFiniteLossError(
                f"{name}: {error}. Training stopped; {kept}"
                + (f"; the last complete epoch is in {last_checkpoint}" if last_checkpoint.exists() else "")
            ) from None
    return trainer, resumed_from, time.perf_counter() - started


def _finish(module: SurrogateModule, trainer, train, val, *, resumed_from, elapsed, epochs, lr, batch_size, patience,
            seed, plateau, placement, ring_blend, name, out_dir: Path, model_path: Path, losses_path: Path, summary_path: Path,
            checkpoint_dir: Path, keep_resume_checkpoint: bool) -> TrainingResult:
    """Best weights into the model; on global rank 0, the losses, the summary and the clean-up."""
    model, baseline = module.model, module.baseline_val_loss
    history = module.history
    if not history["val_loss"]:
        raise RuntimeError(f"{name}: no epoch completed")
    if module.best_state is not None:
        model.load_state_dict(module.best_state)
    else:  # resumed after the best epoch: its weights are only in the file
        model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True)["state_dict"])
    model.cpu().eval()
    analysis = analyse_convergence(history["train_loss"], history["val_loss"], baseline_val_loss=baseline,
                                   max_epochs=epochs).to_dict()
    seconds_per_epoch = float(np.median(history["epoch_time_s"][resumed_from:] or history["epoch_time_s"]))
    result = TrainingResult(name=name, model=model, history=history, baseline_val_loss=baseline, analysis=analysis,
                            model_path=model_path, losses_path=losses_path, summary_path=summary_path,
                            resumed_from_epoch=resumed_from, seconds_per_epoch=seconds_per_epoch)
    if not trainer.is_global_zero:
        return result
    atomic_torch_save({
        "train_loss": torch.tensor(history["train_loss"], dtype=torch.float64),
        "val_loss": torch.tensor(history["val_loss"], dtype=torch.float64),
        "lr": torch.tensor(history["lr"], dtype=torch.float64),
        "epoch_time_s": torch.tensor(history["epoch_time_s"], dtype=torch.float64),
        "baseline_val_loss": baseline,
    }, losses_path)
    summary = {
        "name": name,
        "arch": model.arch,
        "config": model.config,
        "floodlib_version": floodlib.__version__,
        "environment": environment(),
        "train_split": getattr(train, "name", None),
        "val_split": getattr(val, "name", None),
        "train_samples": len(train),
        "val_samples": len(val),
        "settings": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "patience": patience, "seed": seed,
                     "plateau": asdict(plateau) if plateau else None,
                     "accelerator": str(trainer.accelerator.__class__.__name__), "precision": trainer.precision,
                     "devices": trainer.num_devices, "num_nodes": trainer.num_nodes,
                     "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__,
                     "placement": placement, "ring_blend": ring_blend},
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_epoch": seconds_per_epoch,
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
    return result
