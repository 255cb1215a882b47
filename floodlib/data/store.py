"""The simulation store: one HDF5 file per plan, the contract every data source writes to.

Layout (readable without floodlib, e.g. with h5py or HDFView):

- ``terrain`` — float32 (rows * r + 1, cols * r + 1), elevation in m, r = cell_size_m / terrain_spacing_m;
  terrain points sit on cell edges, so neighbouring patches share their edge row/column.
- ``water_depth`` — float32 (times, rows, cols), m, one frame every ``output_interval_s`` from t = 0;
  NaN marks cells outside the model's area (the same cells in every frame).
- attributes: ``project``, ``plan``, ``cell_size_m``, ``terrain_spacing_m``, ``output_interval_s``,
  ``source`` (solver and version, or the file read), ``origin_x``, ``origin_y`` (outer corner of cell
  row 0, column 0, in the source's coordinates, m; row 0 is the northern edge when the source is
  georeferenced), ``crs`` (when known), ``event`` (JSON: inflow hydrograph or rainfall), and any
  source-specific extras (e.g. the solver's mass balance).

Datasets are stored contiguous and uncompressed so that a reader can memory-map them.
Files are written to a temporary name and renamed into place: a crash never leaves a half-written plan.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

STORE_FORMAT = "floodlib.simulation/1"
REQUIRED_ATTRS = ("project", "plan", "cell_size_m", "terrain_spacing_m", "output_interval_s", "source",
                  "origin_x", "origin_y")


class SimulationFileError(ValueError):
    """A simulation file (or a source being converted into one) is missing something or holds bad values.

    The message names the file, the field, the offending value and what was expected.
    """


def field_error(path: Path | str, field_name: str, problem: str) -> SimulationFileError:
    """The error for a bad ``field_name`` of ``path``: "<path>: <field>: <problem>"."""
    return SimulationFileError(f"{path}: {field_name}: {problem}")


@dataclass
class Simulation:
    """One plan: terrain, water depth over time and where the grid lies.

    Attributes
    ----------
    terrain : (rows * r + 1, cols * r + 1) float32, m.
    water_depth : (times, rows, cols) float32, m; NaN outside the model's area.
    """

    project: str
    plan: str
    terrain: np.ndarray
    water_depth: np.ndarray
    cell_size_m: float
    terrain_spacing_m: float
    output_interval_s: float
    source: str
    origin_x: float = 0.0
    origin_y: float = 0.0
    crs: str | None = None
    event: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def terrain_ratio(self) -> int:
        """Terrain points per cell edge, r = cell_size_m / terrain_spacing_m."""
        return int(round(self.cell_size_m / self.terrain_spacing_m))

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.water_depth.shape[1:])

    @property
    def times_s(self) -> np.ndarray:
        """Output times in s since the start of the plan."""
        return np.arange(self.water_depth.shape[0]) * self.output_interval_s

    def validate(self, where: str | Path = "<simulation>") -> "Simulation":
        """Check shapes and values; raise :class:`SimulationFileError` naming what is wrong. Returns self."""
        validate_arrays(
            where,
            terrain=self.terrain,
            water_depth=self.water_depth,
            cell_size_m=self.cell_size_m,
            terrain_spacing_m=self.terrain_spacing_m,
            output_interval_s=self.output_interval_s,
        )
        return self


def terrain_ratio(where: str | Path, cell_size_m: float, terrain_spacing_m: float) -> int:
    """r = cell_size_m / terrain_spacing_m, which must be a positive whole number."""
    for name, value in (("cell_size_m", cell_size_m), ("terrain_spacing_m", terrain_spacing_m)):
        if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
            raise field_error(where, name, f"{value!r} must be a positive number of metres")
    ratio = cell_size_m / terrain_spacing_m
    if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
        raise field_error(where, "cell_size_m / terrain_spacing_m",
                    f"{cell_size_m} / {terrain_spacing_m} = {ratio:g} must be a whole number of terrain spacings per cell")
    return int(round(ratio))


def validate_arrays(
    where: str | Path,
    *,
    terrain: np.ndarray,
    water_depth: np.ndarray,
    cell_size_m: float,
    terrain_spacing_m: float,
    output_interval_s: float,
    check_values: bool = True,
) -> None:
    """The store's invariants: shapes consistent with cell size and terrain spacing, finite terrain,
    depths non-negative (NaN only where a cell is outside the area in every frame)."""
    ratio = terrain_ratio(where, cell_size_m, terrain_spacing_m)
    if not (math.isfinite(output_interval_s) and output_interval_s > 0):
        raise field_error(where, "output_interval_s", f"{output_interval_s!r} must be a positive number of seconds")
    if water_depth.ndim != 3 or min(water_depth.shape) < 1:
        raise field_error(where, "water_depth", f"shape {water_depth.shape} must be (times, rows, cols), none empty")
    _, rows, cols = water_depth.shape
    expected = (rows * ratio + 1, cols * ratio + 1)
    if terrain.shape != expected:
        raise field_error(where, "terrain", f"shape {terrain.shape} does not cover the {rows}x{cols} grid of "
                    f"{cell_size_m} m cells at {terrain_spacing_m} m spacing: expected {expected}")
    if not check_values:
        return
    bad = ~np.isfinite(terrain)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise field_error(where, "terrain", f"{int(bad.sum())} points are NaN or infinite (first at row {r}, column {c}: "
                    f"{terrain[r, c]}); terrain must be finite everywhere the grid reaches")
    outside = np.isnan(water_depth[0])
    for t in range(water_depth.shape[0]):
        frame = water_depth[t]
        nan = np.isnan(frame)
        if not np.array_equal(nan, outside):
            raise field_error(where, "water_depth", f"frame {t} has NaN cells that differ from frame 0's; NaN must mark "
                        "the same out-of-area cells in every frame")
        values = frame[~nan]
        if values.size and (not np.isfinite(values).all() or values.min() < 0):
            r, c = np.argwhere(~nan & ~(frame >= 0) | np.isinf(frame))[0]
            raise field_error(where, "water_depth", f"frame {t}, row {r}, column {c} holds {frame[r, c]}; depths must be "
                        "finite and >= 0 m")


def user_path(text: str) -> Path:
    """A path given on a command line, "~" expanded (the shell leaves it in ``--out=~/x`` or in quotes)."""
    return Path(text).expanduser()


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(temporary_path)`` and rename the result to ``path``: readers see the old file or the
    complete new one, never a partial one. The temporary file sits beside ``path`` (same file system, so the
    rename is atomic) and is removed when ``write`` raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        # mkstemp makes the file private (0600); the result gets the mode any new file gets here (the umask's).
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if _out_of_space(error):
            raise WriteError(f"{path}: could not be written: {_reason(error)}; "
                             f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free on its file system. "
                             f"Nothing was replaced: {'the previous file is intact' if path.exists() else 'no file was left'}. "
                             "Free some space (or point the run at another disk) and run again.") from error
        raise
    return path


class WriteError(OSError):
    """A file could not be written for want of space (or a size limit); the message names it and the space left."""


def _umask() -> int:
    """This process's umask: read where the OS tells it (Linux), else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _out_of_space(error: BaseException) -> bool:
    """A full disk, a quota, or a file-size limit, as the OS reports it or as torch's writer rewords it."""
    codes = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno in codes
    text = str(error)
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    # HDF5 (through h5py) names the OS error inside its message: "... errno = 28, error message = ..."
    quoted = re.search(r"errno = (\d+)", text)
    if quoted:
        return int(quoted.group(1)) in codes
    return "PytorchStreamWriter failed" in text or "inline_container" in text or "file write failed" in text


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} (errno {errno.errorcode.get(error.errno, error.errno)})"
    quoted = re.search(r"errno = (\d+)", str(error))
    if quoted:
        code = int(quoted.group(1))
        return f"{os.strerror(code)} (errno {errno.errorcode.get(code, code)})"
    return f"the writer failed ({str(error).splitlines()[0][:160]}), which means the disk is full or the file too large"


def atomic_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON (keys sorted, other values as ``str``) to ``path`` atomically."""

    def write(temporary: str) -> None:
        with open(temporary, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")

    return atomic_write(path, write)


#: The file name ending of a plan's store in a data folder (``<project>/<plan>.h5``).
SIMULATION_SUFFIX = ".h5"
#: Characters a plan's name keeps as they are in its file name (see :func:`plan_file_name`).
_FILE_NAME_SAFE = " -_.,()[]+=@~"


def plan_file_name(plan: str) -> str:
    """The file name of a plan in a data folder (``<project>/<file name>``): its name with every character
    that a file name cannot hold everywhere, or that would change the path (``/``, ``\\``, ``:``, ``%``, ...),
    written as ``%XX`` of its UTF-8 bytes, and a leading ``.`` as ``%2E``. Distinct names give distinct file
    names, and "100yr/24h" is the file ``100yr%2F24h.h5``, not a folder ``100yr``."""
    if not plan:
        raise ValueError("a plan's name must not be empty")
    from urllib.parse import quote

    stem = quote(plan, safe=_FILE_NAME_SAFE)
    if stem.startswith("."):
        stem = "%2E" + stem[1:]
    return stem + SIMULATION_SUFFIX


def set_aside(paths: list[Path], data_dir: str | Path) -> Path | None:
    """Move plan files out of a data folder, keeping them: ``<data_dir>/<project>/<file>`` goes to
    ``<data_dir>.replaced-<time>/<project>/<file>`` (the way a redone stage's folder is kept beside it).
    Returns that folder, or None when there was nothing to move."""
    import time

    data_dir = Path(data_dir)
    if not paths:
        return None
    kept = data_dir.parent / f"{data_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    for path in paths:
        target = kept / Path(path).relative_to(data_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    return kept


def write_simulation(path: str | Path, simulation: Simulation) -> Path:
    """Validate ``simulation`` and write it to ``path`` atomically (temporary file + rename).

    An existing file at ``path`` is replaced only once the new one is complete.
    """
    path = Path(path)
    simulation.validate(path)

    def write(temporary: str) -> None:
        with h5py.File(temporary, "w") as h5:
            h5.create_dataset("terrain", data=np.asarray(simulation.terrain, dtype=np.float32))
            h5.create_dataset("water_depth", data=np.asarray(simulation.water_depth, dtype=np.float32))
            h5["terrain"].attrs["units"] = "m"
            h5["water_depth"].attrs["units"] = "m"
            attrs = h5.attrs
            attrs["format"] = STORE_FORMAT
            attrs["project"] = str(simulation.project)
            attrs["plan"] = str(simulation.plan)
            attrs["cell_size_m"] = float(simulation.cell_size_m)
            attrs["terrain_spacing_m"] = float(simulation.terrain_spacing_m)
            attrs["output_interval_s"] = float(simulation.output_interval_s)
            attrs["source"] = str(simulation.source)
            attrs["origin_x"] = float(simulation.origin_x)
            attrs["origin_y"] = float(simulation.origin_y)
            if simulation.crs is not None:
                attrs["crs"] = str(simulation.crs)
            if simulation.event is not None:
                attrs["event"] = json.dumps(simulation.event)
            for key, value in simulation.extra.items():
                attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value

    return atomic_write(path, write)


def _read_attr(h5: h5py.File, path: Path, name: str):
    if name not in h5.attrs:
        raise field_error(path, name, "attribute is missing; a simulation file needs " + ", ".join(REQUIRED_ATTRS))
    value = h5.attrs[name]
    return value.decode() if isinstance(value, bytes) else value


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    return value


#: What a file that is no HDF5 is, by its first bytes, for the error that refuses it.
_KNOWN_FORMATS = ((b"II*\x00", "a TIFF (GeoTIFF) image"), (b"MM\x00*", "a TIFF (GeoTIFF) image"),
                  (b"PK\x03\x04", "a zip archive, as a torch checkpoint (model.pth) is"),
                  (b"\x80", "a Python pickle"), (b"{", "JSON text"))


def open_hdf5(path: Path) -> h5py.File:
    """``path`` opened read-only by h5py; SimulationFileError in one line naming it when it is missing, a
    folder, or not HDF5 (saying what it looks like instead)."""
    if not path.exists():
        raise field_error(path, "file", "does not exist")
    if path.is_dir():
        raise field_error(path, "file", "is a folder; expected an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        try:
            with open(path, "rb") as handle:
                head = handle.read(8)
        except OSError:
            head = b""
        what = next((name for magic, name in _KNOWN_FORMATS if head.startswith(magic)), None)
        reason = f"it is {what}" if what else ("it is empty" if not head else
                                              " ".join(str(error).split())[:200])
        raise field_error(path, "file", f"is not a readable HDF5 file ({reason})") from None


def read_simulation(path: str | Path, *, memory_map: bool = False, validate: bool = True) -> Simulation:
    """Load and validate a plan written by :func:`write_simulation` (or by any tool following the layout).

    With ``memory_map=True`` the arrays are read-only ``numpy.memmap`` views of the file (no copy in
    memory); otherwise they are loaded. Raises :class:`SimulationFileError` naming the file and field.
    """
    path = Path(path)
    with open_hdf5(path) as h5:
        for name in ("terrain", "water_depth"):
            if name not in h5 or not isinstance(h5[name], h5py.Dataset):
                hint = ("; it looks like HEC-RAS plan results: convert them first (floodlib.data.convert_hecras, or a "
                        "profile's data.hecras)" if "Geometry/2D Flow Areas" in h5 or "Results/Unsteady" in h5 else "")
                raise field_error(path, name, "dataset is missing; a simulation file needs 'terrain' and "
                                  f"'water_depth'{hint}")
        attrs = {name: _read_attr(h5, path, name) for name in REQUIRED_ATTRS}
        optional = {key: _decode(h5.attrs[key]) for key in h5.attrs if key not in REQUIRED_ATTRS}
        arrays = {}
        for name in ("terrain", "water_depth"):
            dataset = h5[name]
            if dataset.dtype != np.float32:
                raise field_error(path, name, f"dtype {dataset.dtype} must be float32")
            offset = dataset.id.get_offset()
            if memory_map and offset is not None and dataset.chunks is None and dataset.compression is None:
                arrays[name] = np.memmap(path, mode="r", dtype=np.float32, offset=offset, shape=dataset.shape)
            else:
                arrays[name] = dataset[()]
    try:
        numbers = {key: float(attrs[key]) for key in ("cell_size_m", "terrain_spacing_m", "output_interval_s",
                                                       "origin_x", "origin_y")}
    except (TypeError, ValueError) as error:
        raise field_error(path, "attributes", f"a numeric attribute is not a number ({error})") from None
    if validate:
        validate_arrays(path, terrain=arrays["terrain"], water_depth=arrays["water_depth"],
                        cell_size_m=numbers["cell_size_m"], terrain_spacing_m=numbers["terrain_spacing_m"],
                        output_interval_s=numbers["output_interval_s"])
    event = optional.pop("event", None)
    crs = optional.pop("crs", None)
    optional.pop("format", None)
    extra = {}
    for key, value in optional.items():
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        extra[key] = value
    return Simulation(
        project=str(attrs["project"]),
        plan=str(attrs["plan"]),
        terrain=arrays["terrain"],
        water_depth=arrays["water_depth"],
        source=str(attrs["source"]),
        crs=crs,
        event=json.loads(event) if isinstance(event, str) else event,
        extra=extra,
        **numbers,
    )
