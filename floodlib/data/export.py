"""Depth maps out of the store as GeoTIFFs, for a GIS (QGIS, ArcGIS, GDAL).

Any simulation file — a simulated plan, a converted HEC-RAS plan, or a surrogate's prediction written by
``python -m floodlib.predict`` — gives, in one folder:

- ``<stem>_depth_<t>min.tif``: the water depth at time t (minutes since the plan's start), m;
- ``<stem>_max_depth.tif``: the greatest depth of each cell over all of the file's frames, m (a prediction's
  from its start, whose depth is the plan's; the band's description and tags give the time span);
- with a reference file (``against``, e.g. the solver's plan a prediction was made from):
  ``<stem>_error_<t>min.tif``, depth minus the reference's depth at the same time, m (positive: too wet).

Each is one float32 band, DEFLATE-compressed, NaN as nodata outside the model's area, georeferenced by the
file's origin, cell size and CRS (a CRS in feet gets its geotransform in feet; the depths stay in metres,
the band's unit says so). Files are written whole or not at all, and none is written unless all can be:
an existing one is kept unless ``force``.

``python -m floodlib.data.export PLAN.h5 --out maps/ [--every-min 60 | --times 60 120] [--against SOLVER.h5]``
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from floodlib.data.store import (Simulation, SimulationFileError, WriteError, atomic_write, read_simulation,
                                 user_path)

#: Minutes between the exported frames unless told otherwise: the surrogates' lead time.
DEFAULT_EVERY_MIN = 60.0
# Frame times closer than this (s) are the same time: stored intervals are whole seconds or hour fractions.
_TIME_TOLERANCE_S = 1e-3


@dataclass(frozen=True)
class Georeference:
    """Where a grid lies: ``origin_x``, ``origin_y`` the outer north-west corner, ``cell_size_m`` (all m),
    and the CRS (EPSG code or WKT; None for a local grid in metres)."""

    origin_x: float
    origin_y: float
    cell_size_m: float
    crs: str | None = None

    @classmethod
    def of(cls, simulation: Simulation) -> "Georeference":
        return cls(float(simulation.origin_x), float(simulation.origin_y), float(simulation.cell_size_m),
                   simulation.crs)


def map_crs(where: str | Path, crs_text: str | None):
    """(rasterio CRS or None, metres per unit of its coordinates) of a grid's CRS; SimulationFileError naming
    ``where`` (the simulation file) unless it is a projected CRS in metres or feet, the grids' own units."""
    if crs_text is None:
        return None, 1.0
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    from floodlib.data.geotiff import _linear_unit

    try:
        crs = CRS.from_user_input(crs_text)
        return crs, _linear_unit(Path(where), crs)[1]
    except (CRSError, SimulationFileError) as error:
        reason = str(error).split(": crs: ", 1)[-1].split("; reproject", 1)[0]
        raise SimulationFileError(f"{where}: crs: {reason}; expected a projected CRS in metres or feet, in which "
                                  "the grid's origin and cell size are given") from None


def write_geotiff(path: str | Path, values: np.ndarray, where: Georeference, *, description: str = "water depth",
                  tags: dict | None = None) -> Path:
    """Write ``values`` (rows, cols; row 0 the northern edge) as a one-band float32 GeoTIFF at ``path``,
    atomically; NaN is the nodata value. The band's unit is metre; ``tags`` go into its metadata."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.transform import Affine

    path = Path(path)
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"{path}: values have shape {values.shape}; expected (rows, cols)")
    crs, factor = map_crs(path, where.crs)
    size = where.cell_size_m / factor
    transform = Affine(size, 0.0, where.origin_x / factor, 0.0, -size, where.origin_y / factor)
    rows, cols = values.shape
    blocked = rows >= 256 and cols >= 256  # tiles of 256 only pay on rasters at least that big

    def failed(error: BaseException) -> WriteError:
        from floodlib.data.geotiff import _reasons

        return WriteError(f"{path}: could not be written whole ({_reasons(error)[:200]}), which means the disk is full "
                          f"or the file too large; {shutil.disk_usage(path.parent).free / 1e6:.1f} MB free on its file "
                          "system. Nothing was replaced.")

    def write(temporary: str) -> None:
        profile = dict(driver="GTiff", height=rows, width=cols, count=1, dtype="float32", crs=crs,
                       transform=transform, nodata=float("nan"), compress="deflate", predictor=3)
        if blocked:
            profile.update(tiled=True, blockxsize=256, blockysize=256)
        try:
            with rasterio.open(temporary, "w", **profile) as dataset:
                dataset.write(values, 1)
                dataset.set_band_description(1, description)
                dataset.set_band_unit(1, "metre")
                dataset.update_tags(1, **{key: str(value) for key, value in (tags or {}).items()})
            # libtiff may report a failed write (a full disk, a file-size limit) as a warning only: the file is
            # read back whole before it replaces anything.
            with rasterio.open(temporary) as written:
                complete = written.read(1)
        except RasterioError as error:
            raise failed(error) from None
        if not np.array_equal(complete, values, equal_nan=True):
            raise WriteError(f"{path}: the file written does not read back as the values given; nothing was replaced")

    # GDAL's messages about a failure go into the error, not onto the terminal as well (libtiff's own lines about
    # a full disk still reach it).
    logger = logging.getLogger("rasterio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return atomic_write(path, write)
    finally:
        logger.setLevel(level)


def frame_times_s(simulation: Simulation) -> np.ndarray:
    """The times of a file's frames, s since the plan's start (a prediction's first frame is its start)."""
    return float(simulation.extra.get("start_s", 0.0)) + simulation.times_s


def _frame_at(where: str, times_s: np.ndarray, minutes: float) -> int:
    matches = np.flatnonzero(np.abs(times_s - minutes * 60.0) <= _TIME_TOLERANCE_S)
    if not matches.size:
        shown = ", ".join(f"{t / 60:g}" for t in times_s[:8]) + (", ..." if len(times_s) > 8 else "")
        raise SimulationFileError(
            f"{where}: times: {minutes:g} min is not one of its frames; expected one of {shown} "
            f"(min since the plan's start, {len(times_s)} frames)")
    return int(matches[0])


def maps_of(out_dir: str | Path, stem: str) -> list[Path]:
    """The maps of a file named ``<stem>.h5`` that ``out_dir`` holds (its depth, error and maximum-depth maps,
    by their exact names: ``plan_006``'s maps are not ``plan``'s)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(stem)}_(?:(?:depth|error)_[-+0-9.e]+min|max_depth)\.tif")
    return sorted(p for p in out_dir.iterdir() if pattern.fullmatch(p.name))


def refuse_existing(out_dir: str | Path, stem: str) -> None:
    """SimulationFileError when ``out_dir`` holds maps of a file named ``<stem>.h5`` (see :func:`maps_of`)."""
    existing = maps_of(out_dir, stem)
    if existing:
        raise SimulationFileError(
            f"{existing[0]}: exists ({len(existing)} map(s) of {stem} in {out_dir}); pass force=True (--force) to "
            "replace them all")


def check_folder(folder: str | Path, what: str) -> None:
    """SimulationFileError unless ``folder`` is, or can be made as, a folder this process writes in."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise SimulationFileError(f"{folder}: {what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SimulationFileError(f"{folder}: {what}: {existing} is not writable by this user")


def export_maps(path: str | Path, out_dir: str | Path, *, times_min: list[float] | None = None,
                every_min: float | None = None, against: str | Path | None = None, max_depth: bool = True,
                force: bool = False) -> list[Path]:
    """Write the depth maps of simulation file ``path`` into ``out_dir`` (see the module's description).

    Frames: ``times_min`` (minutes since the plan's start, each one of the file's frames), else every
    ``every_min`` minutes from the file's first frame (default 60; the last frame too when it falls between).
    ``against``: a simulation file on the same grid whose frames include those times; an error map per time.
    Maps of the file's name already in ``out_dir`` are refused unless ``force``, which replaces them all: those
    the new set does not hold are removed once it is written, so that no map of an earlier export is left
    beside it. Returns the files written. Raises :class:`SimulationFileError` naming the file, the field and
    the value (a time that is no frame, another grid, a CRS that is not projected, a folder that cannot be
    written, maps that exist without ``force``) before writing anything.
    """
    path = Path(path)
    out_dir = Path(out_dir)
    check_folder(out_dir, "out (the folder for the maps)")
    simulation = read_simulation(path, memory_map=True)
    map_crs(path, simulation.crs)
    times_s = frame_times_s(simulation)
    if times_min is not None and every_min is not None:
        raise ValueError("give times_min or every_min, not both")
    if times_min is None:
        every = DEFAULT_EVERY_MIN if every_min is None else float(every_min)
        if not every > 0:
            raise SimulationFileError(f"{path}: every_min: {every_min!r}; expected minutes > 0")
        wanted = np.arange(times_s[0], times_s[-1] + _TIME_TOLERANCE_S, every * 60.0)
        frames = sorted({int(np.argmin(np.abs(times_s - t))) for t in wanted
                         if np.abs(times_s - t).min() <= _TIME_TOLERANCE_S} | {len(times_s) - 1})
    else:
        if not len(times_min):
            raise SimulationFileError(f"{path}: times: none given; expected at least one time in minutes")
        frames = sorted({_frame_at(str(path), times_s, float(t)) for t in times_min})

    reference = reference_frames = None
    if against is not None:
        reference = read_simulation(against, memory_map=True)
        if reference.grid_shape != simulation.grid_shape or Georeference.of(reference) != Georeference.of(simulation):
            raise SimulationFileError(
                f"{against}: grid: {reference.grid_shape[0]}x{reference.grid_shape[1]} cells of "
                f"{reference.cell_size_m:g} m from ({reference.origin_x:.2f}, {reference.origin_y:.2f}), CRS "
                f"{reference.crs or 'none'}; expected the grid of {path}: {simulation.grid_shape[0]}x"
                f"{simulation.grid_shape[1]} cells of {simulation.cell_size_m:g} m from ({simulation.origin_x:.2f}, "
                f"{simulation.origin_y:.2f}), CRS {simulation.crs or 'none'}")
        reference_times = frame_times_s(reference)
        reference_frames = [_frame_at(str(against), reference_times, times_s[k] / 60.0) for k in frames]

    stem = path.stem
    planned: list[tuple[Path, str, int | None, int | None]] = []
    for i, k in enumerate(frames):
        minutes = f"{times_s[k] / 60:g}"
        planned.append((out_dir / f"{stem}_depth_{minutes}min.tif", "water depth", k, None))
        if reference is not None:
            planned.append((out_dir / f"{stem}_error_{minutes}min.tif", "depth error", k, reference_frames[i]))
    span = f"{times_s[0] / 60:g}-{times_s[-1] / 60:g} min"
    if max_depth:
        planned.append((out_dir / f"{stem}_max_depth.tif", f"maximum water depth, {span}", None, None))
    existing = maps_of(out_dir, stem)
    if not force:
        refuse_existing(out_dir, stem)

    where = Georeference.of(simulation)
    common = {"source_file": path.name, "project": simulation.project, "plan": simulation.plan,
              "source": simulation.source}
    window = (simulation.extra or {}).get("terrain_source") or {}
    mirrored = [axis for axis in ("rows", "cols") if window.get(f"mirrored_{axis}")]
    if mirrored:  # a grid larger than its DEM: the far part of the map lies over reflected terrain
        common["terrain_mirror_tiled"] = " and ".join(mirrored)
        warnings.warn(f"{path}: the plan's grid is larger than its DEM ({window.get('dem')}) along its "
                      f"{' and '.join(mirrored)}: its terrain is mirror-tiled there, so the maps reach past the "
                      "DEM's extent over reflected, not surveyed, terrain (tag terrain_mirror_tiled)",
                      UserWarning, stacklevel=2)
    written = []
    for target, description, k, j in planned:
        if k is None:
            values = np.fmax.reduce(np.asarray(simulation.water_depth), axis=0)
            tags = {**common, "frames": len(times_s), "from_min": f"{times_s[0] / 60:g}",
                    "to_min": f"{times_s[-1] / 60:g}"}
        elif j is None:
            values = np.asarray(simulation.water_depth[k])
            tags = {**common, "time_min": f"{times_s[k] / 60:g}"}
        else:
            values = np.asarray(simulation.water_depth[k], dtype=np.float64) - np.asarray(reference.water_depth[j])
            tags = {**common, "time_min": f"{times_s[k] / 60:g}", "reference_file": Path(against).name,
                    "reference": f"{reference.project}/{reference.plan}"}
        written.append(write_geotiff(target, values, where, description=description, tags=tags))
    for stale in set(existing) - set(written):
        stale.unlink(missing_ok=True)
    return written


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m floodlib.data.export",
        description="Write a simulation file's depth maps (a plan, a converted HEC-RAS plan or a surrogate's "
                    "prediction) as GeoTIFFs for a GIS: depth at chosen times, the maximum depth, and with "
                    "--against the error against another file at the same times.")
    p.add_argument("simulation", type=user_path, help="a simulation file (.h5)")
    p.add_argument("--out", type=user_path, required=True, help="the folder for the GeoTIFFs (made if missing)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--times", type=float, nargs="+", metavar="MIN",
                      help="minutes since the plan's start, each one of the file's frames")
    when.add_argument("--every-min", type=float, default=None,
                      help=f"a map every so many minutes from the first frame, and the last (default {DEFAULT_EVERY_MIN:g})")
    p.add_argument("--against", type=user_path, help="a simulation file on the same grid (e.g. the solver's plan a "
                                                "prediction came from): error maps, depth minus its depth")
    p.add_argument("--no-max", action="store_true", help="leave out the maximum-depth map")
    p.add_argument("--force", action="store_true", help="replace maps that exist")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        written = export_maps(args.simulation, args.out, times_min=args.times, every_min=args.every_min,
                              against=args.against, max_depth=not args.no_max, force=args.force)
    except (SimulationFileError, OSError) as error:  # OSError: a write that failed (WriteError), a file vanished
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the maps written so far are whole, the one being written was not kept", file=sys.stderr)
        return 130
    print(f"wrote {len(written)} GeoTIFF(s) to {args.out}: " + ", ".join(p.name for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
