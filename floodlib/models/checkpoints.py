"""Self-describing model checkpoints: written atomically, rebuilt from the file alone, loaded without
unpickling (``torch.load(weights_only=True)``). Loading a model needs torch and this package, not Lightning."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

import floodlib
from floodlib.data.store import atomic_write
from floodlib.models.base import ABSENT_KEY_VALUES, FloodModel
from floodlib.models.registry import create_model, resolve_model_name


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temporary file + rename)."""
    return atomic_write(path, lambda temporary: torch.save(obj, temporary))


def save_model(model: FloodModel, path: str | Path, *, epoch: int | None = None, best_val_loss: float | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint that rebuilds ``model`` on its own: float32 weights on CPU, the architecture's
    name and keyword arguments, the downsampler, epoch, best validation loss and the floodlib version."""
    if not isinstance(model, FloodModel):
        raise TypeError(f"save_model needs a FloodModel from create_model, got {type(model).__name__}")
    checkpoint = {
        "format": "floodlib.model/1",
        "floodlib_version": floodlib.__version__,
        "config": model.config,
        "state_dict": {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
                       for k, v in model.state_dict().items()},
        "epoch": epoch,
        "best_val_loss": best_val_loss,
        "extra": extra or {},
    }
    return atomic_torch_save(checkpoint, path)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not a floodlib model."""


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _why_unreadable(path: Path, error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in words a user can act on (torch's own message
    for a weights-only refusal goes on to suggest unpickling the file, which floodlib never does)."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as file:
            hdf5 = file.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE
        found = "an HDF5 file (a simulation store or plan?)" if hdf5 else "not the zip archive torch.save writes"
        return f"{found}; expected a model.pth that floodlib saved"
    text = str(error)
    if isinstance(error, pickle.UnpicklingError):
        # torch names what it refused after "WeightsUnpickler error:" (e.g. "Unsupported global: GLOBAL x.Y").
        refused = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed|\.\s|\n|$)", text)
        return ("it holds objects other than tensors, numbers, strings and containers, which floodlib does not "
                f"unpickle{f' ({refused.group(1)})' if refused else ''}; expected a model.pth that floodlib saved")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dictionary of a model file (weights_only: nothing is unpickled)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: model checkpoint does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable model checkpoint ({_why_unreadable(path, error)})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != "floodlib.model/1":
        raise CheckpointError(f"{path}: not a floodlib model checkpoint (no 'format': 'floodlib.model/1' entry)")
    return checkpoint


def load_model(path: str | Path, *, expected_arch: str | None = None, device: str | torch.device = "cpu") -> FloodModel:
    """Rebuild a model from its checkpoint alone, in eval mode.

    ``expected_arch`` guards against a checkpoint of another architecture (CheckpointError naming both).
    """
    checkpoint = read_checkpoint(path)
    config = dict(checkpoint["config"])
    if expected_arch is not None:
        try:
            wanted = resolve_model_name(expected_arch)  # a reference name or an alias, as create_model takes
        except ValueError as error:
            raise CheckpointError(f"expected_arch: {error}") from None
        if config.get("arch") != wanted:
            named = wanted if wanted == expected_arch else f"{wanted} ({expected_arch})"
            raise CheckpointError(f"{path}: holds architecture {config.get('arch')!r}, expected {named!r}")
    bad = [name for name, tensor in checkpoint["state_dict"].items()
           if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]!r}); "
                              "the training that wrote it diverged — retrain, or use an earlier checkpoint")
    try:  # keys a checkpoint may predate take the value that reproduces what it computed then
        model = create_model(
            config["arch"],
            downsampler=config["downsampler"],
            downsampler_kwargs=config.get("downsampler_kwargs") or {},
            **{key: config.get(key, value) for key, value in ABSENT_KEY_VALUES.items()},
            init=None,
            **(config.get("arch_kwargs") or {}),
        )
    except (TypeError, ValueError, KeyError) as error:  # e.g. a scale factor that is not a positive number
        raise CheckpointError(f"{path}: its config cannot rebuild a model ({error})") from None
    expected = model.state_dict()
    stored = checkpoint["state_dict"]
    missing = [name for name in expected if name not in stored]
    unexpected = [name for name in stored if name not in expected]
    misshapen = [f"{name} {tuple(stored[name].shape)} for {tuple(tensor.shape)}" for name, tensor in expected.items()
                 if name in stored and isinstance(stored[name], torch.Tensor) and stored[name].shape != tensor.shape]
    if missing or unexpected or misshapen:  # one line, not torch's listing of every key
        parts = [f"{len(found)} {what} (first: {found[0]})" for what, found in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", misshapen)) if found]
        raise CheckpointError(f"{path}: weights do not fit architecture {config['arch']!r} as its config builds it: "
                              f"{'; '.join(parts)} weight tensor(s); the file's weights and config disagree")
    try:
        model.load_state_dict(stored)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit architecture {config['arch']!r}: {error}") from None
    trained_on = (checkpoint.get("extra") or {}).get("trained_on")
    model.trained_on = dict(trained_on) if isinstance(trained_on, dict) else None
    return model.to(device).eval()
