"""Boundary conditions of a full-domain prediction: the depth on the domain's outer ring at each time.

A patch model is given the depth at n + dt on its ring; on the domain's own outer ring (``ring`` cells
thick) nothing inside the domain can supply it, so it comes from outside:

- :class:`StoredBoundary` — a stored plan's own edge depths at each time, which is what its solver was
  given (inflow strip, open and closed edges); linear in time between stored frames;
- :class:`EdgeBoundary` — a user's depth or inflow time series per edge segment (:func:`read_boundary`
  reads them from a JSON or YAML file). Ring cells on no segment follow the depth just inside them
  (zero gradient across the edge, as at a wall or a free outfall).

``at(time_s)`` returns a (rows, cols) float32 array: the prescribed depth on the outer ring's cells and
NaN wherever nothing is prescribed (the interior, and ring cells left to the zero-gradient rule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from floodlib.data.store import Simulation
from floodlib.data.yamlfile import describe_yaml_error
from floodlib.predict.tiling import PredictError

EDGES = ("north", "east", "south", "west")


class Boundary(Protocol):
    """Anything that gives the outer ring's depth (m, NaN where free) at a time (s)."""

    def at(self, time_s: float) -> np.ndarray: ...


def outer_ring(rows: int, cols: int, ring: int) -> np.ndarray:
    """(rows, cols) bool: the domain's outer ``ring``-cell border."""
    mask = np.ones((rows, cols), dtype=bool)
    mask[ring:rows - ring, ring:cols - ring] = False
    return mask


class StoredBoundary:
    """A stored plan's own depths on the outer ring, linear in time between its frames."""

    def __init__(self, simulation: Simulation, *, ring: int = 2, name: str | None = None):
        self.simulation = simulation
        self.name = name or f"plan {simulation.project}/{simulation.plan}"
        rows, cols = simulation.grid_shape
        self.ring_mask = outer_ring(rows, cols, ring)
        self.last_s = float((simulation.water_depth.shape[0] - 1) * simulation.output_interval_s)

    def at(self, time_s: float) -> np.ndarray:
        if not -1e-6 <= time_s <= self.last_s + 1e-6:
            raise PredictError(f"{self.name}: time {time_s / 60:g} min is outside the plan, whose outputs run from "
                               f"0 to {self.last_s / 60:g} min")
        position = min(max(time_s / self.simulation.output_interval_s, 0.0), self.simulation.water_depth.shape[0] - 1)
        before = int(np.floor(position + 1e-9))
        weight = position - before
        depth = np.asarray(self.simulation.water_depth[before], dtype=np.float32)
        if weight > 1e-9:
            after = np.asarray(self.simulation.water_depth[before + 1], dtype=np.float32)
            depth = (1 - weight) * depth + weight * after
        return np.where(self.ring_mask, depth, np.nan).astype(np.float32)


class EdgeSegment(BaseModel):
    """A stretch of one edge with a depth or an inflow series.

    ``from_cell`` / ``to_cell``: cells along the edge, counted from its north or west end, ``to_cell``
    excluded (default: the whole edge). ``times_min``: the series' times, minutes since the plan's start,
    increasing; ``depth_m`` or ``discharge_m3s`` one value per time (linear between them, held beyond the
    ends). A discharge becomes the normal depth of a wide channel of the segment's width (Manning):
    h = (Q n / (W sqrt(S)))^(3/5), with ``slope`` S (default: the terrain's fall over the first
    ``slope_cells`` cells inward, at least 1e-4) and ``manning_n`` n (default 0.035, as the built-in solver).
    """

    model_config = ConfigDict(extra="forbid")

    edge: Literal["north", "east", "south", "west"]
    from_cell: int = Field(0, ge=0)
    to_cell: int | None = Field(None, ge=1)
    times_min: list[float] = Field(min_length=1)
    depth_m: list[float] | None = None
    discharge_m3s: list[float] | None = None
    manning_n: float = Field(0.035, gt=0)
    slope: float | None = Field(None, gt=0)
    slope_cells: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _one_series(self) -> "EdgeSegment":
        series = [name for name in ("depth_m", "discharge_m3s") if getattr(self, name) is not None]
        if len(series) != 1:
            raise ValueError("give exactly one of depth_m and discharge_m3s")
        values = getattr(self, series[0])
        if len(values) != len(self.times_min):
            raise ValueError(f"{series[0]} has {len(values)} values but times_min {len(self.times_min)}")
        if any(not np.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"{series[0]}={values}: values must be finite and >= 0")
        if any(b <= a for a, b in zip(self.times_min, self.times_min[1:])) or not np.isfinite(self.times_min).all():
            raise ValueError(f"times_min={self.times_min} must be finite and increasing")
        if self.to_cell is not None and self.to_cell <= self.from_cell:
            raise ValueError(f"to_cell={self.to_cell} must be greater than from_cell={self.from_cell}")
        return self


class BoundaryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segments: list[EdgeSegment] = Field(min_length=1)


class EdgeBoundary:
    """A user's depth or inflow series per edge segment over a ``rows`` x ``cols`` domain.

    ``cell_elevation`` (rows, cols, m) gives the slope of a discharge segment that states none.
    """

    def __init__(self, segments: list[EdgeSegment], *, rows: int, cols: int, cell_elevation: np.ndarray | None = None,
                 cell_size_m: float = 10.0, ring: int = 2, name: str = "boundary"):
        self.name = name
        self.shape = (rows, cols)
        self.segments = []
        spans: dict[str, list[tuple[int, int, int]]] = {}
        for number, segment in enumerate(segments):
            length = cols if segment.edge in ("north", "south") else rows
            stop = length if segment.to_cell is None else segment.to_cell
            if stop > length:
                raise PredictError(f"{name}: segments[{number}].to_cell={stop}: the {segment.edge} edge has {length} cells")
            if segment.from_cell >= length:
                raise PredictError(f"{name}: segments[{number}].from_cell={segment.from_cell}: the {segment.edge} edge "
                                   f"has {length} cells (0 to {length - 1}); the segment would set none")
            for other, start, end in spans.get(segment.edge, []):
                if segment.from_cell < end and start < stop:
                    raise PredictError(
                        f"{name}: segments[{other}] and segments[{number}] both set {segment.edge} edge cells "
                        f"{max(start, segment.from_cell)} to {min(end, stop) - 1}; a cell takes one series (to_cell is "
                        "the first cell after a segment)")
            spans.setdefault(segment.edge, []).append((number, segment.from_cell, stop))
            cells = np.zeros((rows, cols), dtype=bool)
            if segment.edge == "north":
                cells[:ring, segment.from_cell:stop] = True
            elif segment.edge == "south":
                cells[rows - ring:, segment.from_cell:stop] = True
            elif segment.edge == "west":
                cells[segment.from_cell:stop, :ring] = True
            else:
                cells[segment.from_cell:stop, cols - ring:] = True
            series = np.asarray(segment.depth_m if segment.depth_m is not None else segment.discharge_m3s, dtype=np.float64)
            to_depth = None
            if segment.discharge_m3s is not None:
                slope = segment.slope
                if slope is None:
                    if cell_elevation is None:
                        raise PredictError(f"{name}: segments[{number}] gives a discharge but no slope, and no terrain "
                                           "was given to measure one")
                    slope = self._terrain_slope(cell_elevation, segment, stop, cell_size_m)
                factor = segment.manning_n / ((stop - segment.from_cell) * cell_size_m * np.sqrt(slope))
                to_depth = lambda discharge, factor=factor: (discharge * factor) ** 0.6  # noqa: E731
            self.segments.append((cells, np.asarray(segment.times_min, dtype=np.float64) * 60.0, series, to_depth))

    @staticmethod
    def _terrain_slope(z: np.ndarray, segment: EdgeSegment, stop: int, cell_size_m: float) -> float:
        k = min(segment.slope_cells, (z.shape[0] if segment.edge in ("north", "south") else z.shape[1]) - 1)
        span = slice(segment.from_cell, stop)
        if segment.edge == "north":
            drop = z[0, span].mean() - z[k, span].mean()
        elif segment.edge == "south":
            drop = z[-1, span].mean() - z[-1 - k, span].mean()
        elif segment.edge == "west":
            drop = z[span, 0].mean() - z[span, k].mean()
        else:
            drop = z[span, -1].mean() - z[span, -1 - k].mean()
        return max(abs(float(drop)) / (k * cell_size_m), 1e-4)

    def check_area(self, inside: np.ndarray) -> None:
        """PredictError naming the first segment none of whose cells lie inside the model's area (``inside``,
        rows x cols): its series would drive nothing."""
        for number, (cells, *_rest) in enumerate(self.segments):
            if not (cells & inside).any():
                raise PredictError(f"{self.name}: segments[{number}]: every cell it sets lies outside the model's area; "
                                   "expected edge cells where the plan has depths")

    def at(self, time_s: float) -> np.ndarray:
        out = np.full(self.shape, np.nan, dtype=np.float32)
        for cells, times_s, series, to_depth in self.segments:
            value = float(np.interp(time_s, times_s, series))  # a discharge is interpolated, then made a depth
            out[cells] = value if to_depth is None else to_depth(value)
        return out


def read_boundary(path: str | Path, *, rows: int, cols: int, cell_elevation: np.ndarray | None = None,
                  cell_size_m: float = 10.0, ring: int = 2) -> EdgeBoundary:
    """An :class:`EdgeBoundary` from a JSON or YAML file ``{"segments": [{"edge": "west", ...}, ...]}``."""
    path = Path(path)
    if path.is_dir():
        raise PredictError(f"{path}: is a folder; expected a boundary file (JSON or YAML)")
    if not path.is_file():
        raise PredictError(f"{path}: boundary file does not exist")
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        reason = (describe_yaml_error(error) if isinstance(error, yaml.YAMLError)
                  else " ".join(str(error).split()))
        raise PredictError(f"{path}: not a readable JSON/YAML boundary file ({reason})") from None
    if not isinstance(raw, dict):
        raise PredictError(f"{path}: holds {'nothing' if raw is None else type(raw).__name__ + ' ' + repr(raw)[:60]}; "
                           "expected a mapping {segments: [{edge: west, ...}, ...]}")
    try:
        parsed = BoundaryFile.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']} (got {e.get('input')!r})"
                             for e in error.errors())
        raise PredictError(f"{path}: {problems}") from None
    return EdgeBoundary(parsed.segments, rows=rows, cols=cols, cell_elevation=cell_elevation,
                        cell_size_m=cell_size_m, ring=ring, name=str(path))
