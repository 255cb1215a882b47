"""Samples: patches cut from a plan at snapshot times, exactly as the reference defines them.

For a plan and a snapshot time n, patches of ``patch_cells`` cells are cut on the standard grid (origins
0, P, 2P, ...) for the 1st, 3rd, ... snapshot and on the dual grid (origins P/2, 3P/2, ...) for the 2nd,
4th, ...; each snapshot applies the reference's transform of the patch, alike to terrain and depths:

=========  ========  ===================================================================
snapshot   grid      transform (rows, cols)
=========  ========  ===================================================================
1st        standard  none
2nd        dual      reverse rows, then ``rot90(k=1)`` — reflection about the anti-diagonal
3rd        standard  reverse rows
4th        dual      reverse columns
=========  ========  ===================================================================

(and so on cyclically for more snapshots). A sample is

- ``terrain`` (1, T, T): the terrain points under the patch, T = P * r + 1, m;
- ``depths`` (2, P, P): [boundary ring of the depth at n + dt (``ring_cells`` thick, interior zero),
  depth at n], m;
- ``depth_change`` (1, P, P): depth(n + dt) - depth(n), m.

A patch is dropped as dry when the sum of its depths at n and n + dt is below ``dry_threshold_m``, and
excluded when it touches a cell outside the model's area (NaN).

Beyond the reference's definition, more samples come from the same simulations at no extra simulation cost: a snapshot
every ``snapshot_every_s`` seconds (the stores hold a frame per output interval), and overlapping patches
with origins every ``patch_stride_cells`` cells. Samples stay lazily sliced; splits stay by plan, so
overlapping patches of one plan never fall on both sides of a split. Those choices may differ by project
(``projects``): a terrain tile that holds one patch yields a useful number of samples only from more
snapshots or denser patch origins, which would multiply a large domain's samples many times over.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from floodlib.data.store import Simulation

#: Fields of a sample index entry: which plan, which frames, where, and which transform.
INDEX_DTYPE = np.dtype([
    ("plan", np.int32),
    ("frame", np.int32),
    ("next_frame", np.int32),
    ("row", np.int32),
    ("col", np.int32),
    ("transform", np.int8),
])

TRANSFORMS = ("none", "anti-diagonal reflection", "reverse rows", "reverse columns")
#: The reference's snapshot times n, s: 0, 70, 140 and 210 min.
REFERENCE_SNAPSHOT_TIMES_S = (0.0, 4200.0, 8400.0, 12600.0)
#: What ``SampleSpec.projects`` may set for one project: how many samples are drawn and where, never the
#: sample's shape or lead time (every sample of a data set feeds the same networks).
PROJECT_OPTIONS = ("snapshot_times_s", "snapshot_every_s", "patch_stride_cells", "dry_threshold_m")


@dataclass(frozen=True)
class SampleSpec:
    """How samples are cut. Defaults are the reference's.

    Attributes
    ----------
    patch_cells : cells per patch side (P).
    terrain_ratio : terrain points per cell edge (r = cell size / terrain spacing); T = P * r + 1.
    snapshot_times_s : snapshot times n, s since the start of the plan.
    delta_t_s : prediction interval, s.
    ring_cells : thickness of the boundary ring of the next depth, cells.
    dry_threshold_m : a patch whose depths at n and n + dt sum (over its cells) to less is dropped, m.
    edge_trim_cells : cells trimmed from every edge before cutting (the reference trims 100 from grids
        larger than ``trim_above_cells``); 0 disables it.
    trim_above_cells : trim only grids with more rows or columns than this.
    snapshot_every_s : more samples from the same simulations: when > 0, a snapshot every this many
        seconds from the start of each plan, for as long as n + dt lies within it, instead of
        ``snapshot_times_s`` (the grids and transforms still take turns by snapshot); 0 (default): off.
    patch_stride_cells : when > 0, patch origins every this many cells along each grid (overlapping
        patches when below ``patch_cells``); 0 (default): ``patch_cells``, the reference's whole patches.
    projects : per project name, other values of ``PROJECT_OPTIONS`` for that project's plans, e.g.
        ``{"minnesota": {"snapshot_every_s": 600}}`` for a terrain tile that holds one patch; setting one of
        the alternatives ``snapshot_every_s`` / ``snapshot_times_s`` there sets the other back to its
        default. :meth:`for_project` gives a project's own spec.
    """

    patch_cells: int = 32
    terrain_ratio: int = 10
    snapshot_times_s: tuple[float, ...] = REFERENCE_SNAPSHOT_TIMES_S
    delta_t_s: float = 3600.0
    ring_cells: int = 2
    dry_threshold_m: float = 2.0
    edge_trim_cells: int = 0
    trim_above_cells: int = 240
    snapshot_every_s: float = 0.0
    patch_stride_cells: int = 0
    projects: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)

    def __post_init__(self):
        def positive_int(name, minimum=1):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"SampleSpec.{name}={value!r} must be an integer >= {minimum}")

        positive_int("patch_cells", 2)
        positive_int("terrain_ratio")
        positive_int("ring_cells")
        positive_int("edge_trim_cells", 0)
        positive_int("trim_above_cells", 0)
        positive_int("patch_stride_cells", 0)
        if not (isinstance(self.snapshot_every_s, (int, float)) and not isinstance(self.snapshot_every_s, bool)
                and math.isfinite(self.snapshot_every_s)
                and self.snapshot_every_s >= 0):
            raise ValueError(f"SampleSpec.snapshot_every_s={self.snapshot_every_s!r} must be a number of seconds "
                             ">= 0 (0: off)")
        if self.snapshot_every_s > 0 and tuple(float(t) for t in self.snapshot_times_s) != REFERENCE_SNAPSHOT_TIMES_S:
            raise ValueError(f"SampleSpec: snapshot_every_s={self.snapshot_every_s:g} and snapshot_times_s="
                             f"{tuple(self.snapshot_times_s)} are alternatives; set one of them")
        if self.patch_cells % 2:
            raise ValueError(f"SampleSpec.patch_cells={self.patch_cells} must be even (the dual grid is offset by half a patch)")
        if 2 * self.ring_cells > self.patch_cells:
            raise ValueError(f"SampleSpec.ring_cells={self.ring_cells} is more than half of patch_cells={self.patch_cells}")
        times = tuple(float(t) for t in self.snapshot_times_s)
        if not times or any(not math.isfinite(t) or t < 0 for t in times):
            raise ValueError(f"SampleSpec.snapshot_times_s={self.snapshot_times_s!r} must be non-negative seconds, at least one")
        object.__setattr__(self, "snapshot_times_s", times)
        if not (math.isfinite(self.delta_t_s) and self.delta_t_s > 0):
            raise ValueError(f"SampleSpec.delta_t_s={self.delta_t_s!r} must be a positive number of seconds")
        if not (math.isfinite(self.dry_threshold_m) and self.dry_threshold_m >= 0):
            raise ValueError(f"SampleSpec.dry_threshold_m={self.dry_threshold_m!r} must be >= 0 m")
        if not isinstance(self.projects, Mapping):
            raise ValueError(f"SampleSpec.projects={self.projects!r} must map project names to options "
                             f"(some of {', '.join(PROJECT_OPTIONS)})")
        projects = {}
        for project, options in self.projects.items():
            if not isinstance(options, Mapping):
                raise ValueError(f"SampleSpec.projects[{project!r}]={options!r} must map options to values "
                                 f"(some of {', '.join(PROJECT_OPTIONS)})")
            for name in sorted(set(options) - set(PROJECT_OPTIONS), key=str):
                where = f"SampleSpec.projects[{project!r}].{name}"
                if name in {f.name for f in dataclasses.fields(self)}:
                    raise ValueError(f"{where}: {name} cannot differ by project (it is one setting of the samples "
                                     f"for every project); options by project: {', '.join(PROJECT_OPTIONS)}")
                close = difflib.get_close_matches(str(name), PROJECT_OPTIONS, n=1, cutoff=0.6)
                raise ValueError(f"{where}: no such option" + (f"; did you mean {close[0]!r}?" if close else "")
                                 + f" Options by project: {', '.join(PROJECT_OPTIONS)}")
            options = dict(options)
            if isinstance(options.get("snapshot_times_s"), (list, tuple)):  # as the spec's own: a tuple
                options["snapshot_times_s"] = tuple(options["snapshot_times_s"])
            projects[str(project)] = options
        object.__setattr__(self, "projects", projects)
        for project in projects:
            try:
                self.for_project(project)
            except (TypeError, ValueError) as error:
                raise ValueError(f"SampleSpec.projects[{project!r}]: {error}") from None

    def for_project(self, project: str) -> "SampleSpec":
        """The spec that draws ``project``'s samples: this one with that project's ``projects`` options."""
        options = dict(self.projects.get(project, {}))
        if not options and not self.projects:
            return self
        if "snapshot_every_s" in options and "snapshot_times_s" not in options:
            options["snapshot_times_s"] = REFERENCE_SNAPSHOT_TIMES_S
        if "snapshot_times_s" in options:
            options["snapshot_times_s"] = tuple(options["snapshot_times_s"])
            options.setdefault("snapshot_every_s", 0.0)
        return replace(self, projects={}, **options)

    @property
    def terrain_points(self) -> int:
        """Terrain points per patch side, T = P * r + 1."""
        return self.patch_cells * self.terrain_ratio + 1

    @property
    def stride(self) -> int:
        """Cells between neighbouring patch origins of a grid."""
        return self.patch_stride_cells or self.patch_cells

    def snapshot_times(self, duration_s: float) -> tuple[float, ...]:
        """Snapshot times n (s) for a plan whose last output is at ``duration_s``."""
        if self.snapshot_every_s <= 0:
            return self.snapshot_times_s
        last = duration_s - self.delta_t_s
        count = int(math.floor(last / self.snapshot_every_s + 1e-9)) + 1 if last >= 0 else 0
        return tuple(k * float(self.snapshot_every_s) for k in range(count))

    def _snapshots_text(self) -> str:
        if self.snapshot_every_s > 0:
            return f"a snapshot every {self.snapshot_every_s / 60:g} min"
        return "snapshots at " + "/".join(f"{t / 60:g}" for t in self.snapshot_times_s) + " min"

    def describe(self) -> str:
        """How samples are drawn, in words (for dataset summaries)."""
        stride = (f"origins every {self.stride} cells (overlapping)" if self.stride < self.patch_cells
                  else f"origins every {self.stride} cells")
        text = f"{self._snapshots_text()}, {self.delta_t_s / 60:g} min ahead; {self.patch_cells}-cell patches, {stride}"
        for project in self.projects:
            own = self.for_project(project)
            text += f"; project {project}: {own._snapshots_text()}, origins every {own.stride} cells"
        return text


def patch_origins(cells: int, patch: int, dual: bool, trim: int = 0, stride: int | None = None) -> np.ndarray:
    """First cell of every whole patch along an axis of ``cells`` cells: 0, S, 2S, ... on the standard
    grid, P/2, P/2 + S, ... on the dual grid, inside ``[trim, cells - trim)``; the stride S is P unless given."""
    start = trim + (patch // 2 if dual else 0)
    stop = cells - trim - patch
    return np.arange(start, stop + 1, stride or patch) if stop >= start else np.zeros(0, dtype=np.int64)


def apply_transform(array: np.ndarray, transform: int) -> np.ndarray:
    """The snapshot's transform over the last two axes (rows, cols), exact (a view, no interpolation)."""
    if transform == 0:
        return array
    if transform == 1:  # reverse rows, then rot90(k=1): reflection about the anti-diagonal
        return np.rot90(array[..., ::-1, :], k=1, axes=(-2, -1))
    if transform == 2:
        return array[..., ::-1, :]
    if transform == 3:
        return array[..., :, ::-1]
    raise ValueError(f"transform={transform!r} must be 0..3 ({', '.join(TRANSFORMS)})")


@dataclass
class PlanIndex:
    """The samples of one plan and what was dropped."""

    entries: np.ndarray  # INDEX_DTYPE
    dry_dropped: int = 0
    masked_dropped: int = 0
    per_snapshot: list[int] = field(default_factory=list)


def _frame(simulation: Simulation, time_s: float, what: str) -> int:
    position = time_s / simulation.output_interval_s
    frame = int(round(position))
    if abs(position - frame) > 1e-6:
        raise ValueError(
            f"plan {simulation.project}/{simulation.plan}: {what} {time_s:g} s is not a multiple of the output "
            f"interval {simulation.output_interval_s:g} s")
    frames = simulation.water_depth.shape[0]
    if frame >= frames:
        raise ValueError(
            f"plan {simulation.project}/{simulation.plan}: {what} {time_s:g} s is beyond its last output "
            f"({(frames - 1) * simulation.output_interval_s:g} s); the samples need plans of at least {time_s:g} s")
    return frame


def _patch_sums(field_2d: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``field_2d`` over every size x size patch with origins rows x cols, via an integral image."""
    integral = np.zeros((field_2d.shape[0] + 1, field_2d.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(field_2d, axis=0, dtype=np.float64), axis=1, out=integral[1:, 1:])
    r0, c0 = np.meshgrid(rows, cols, indexing="ij")
    return integral[r0 + size, c0 + size] - integral[r0, c0 + size] - integral[r0 + size, c0] + integral[r0, c0]


def index_plan(simulation: Simulation, spec: SampleSpec, plan_id: int = 0) -> PlanIndex:
    """Every sample of ``simulation`` under ``spec`` (with its project's own options, if any), after the dry
    and out-of-area rules."""
    spec = spec.for_project(simulation.project)
    if simulation.terrain_ratio != spec.terrain_ratio:
        raise ValueError(
            f"plan {simulation.project}/{simulation.plan}: terrain ratio {simulation.terrain_ratio} "
            f"(cell {simulation.cell_size_m:g} m / terrain {simulation.terrain_spacing_m:g} m) differs from "
            f"SampleSpec.terrain_ratio={spec.terrain_ratio}")
    last = (simulation.water_depth.shape[0] - 1) * simulation.output_interval_s
    times = spec.snapshot_times(last)
    if not times:
        raise ValueError(f"delta_t {spec.delta_t_s:g} s is longer than plan {simulation.project}/{simulation.plan} "
                         f"({last:g} s): no snapshot n has an output at n + delta_t")
    required = max(times) + spec.delta_t_s
    if required > last + 1e-6:
        raise ValueError(f"snapshots up to {max(times):g} s plus delta_t {spec.delta_t_s:g} s need plans "
                         f"of at least {required:g} s; plan {simulation.project}/{simulation.plan} ends at {last:g} s")
    rows_total, cols_total = simulation.grid_shape
    trim = spec.edge_trim_cells if max(rows_total, cols_total) > spec.trim_above_cells else 0
    size = spec.patch_cells
    chunks, dry, masked, per_snapshot = [], 0, 0, []
    for k, time_s in enumerate(times):
        frame = _frame(simulation, time_s, "snapshot time")
        next_frame = _frame(simulation, time_s + spec.delta_t_s, "snapshot time + delta_t")
        dual = k % 2 == 1
        rows = patch_origins(rows_total, size, dual, trim, spec.stride)
        cols = patch_origins(cols_total, size, dual, trim, spec.stride)
        if rows.size == 0 or cols.size == 0:
            per_snapshot.append(0)
            continue
        now = np.asarray(simulation.water_depth[frame], dtype=np.float64)
        later = np.asarray(simulation.water_depth[next_frame], dtype=np.float64)
        outside = np.isnan(now) | np.isnan(later)
        touching = _patch_sums(outside.astype(np.float64), rows, cols, size) > 0
        total = _patch_sums(np.where(outside, 0.0, now + later), rows, cols, size)
        wet = total >= spec.dry_threshold_m
        keep = wet & ~touching
        masked += int(touching.sum())
        dry += int((~wet & ~touching).sum())
        r_idx, c_idx = np.nonzero(keep)
        entries = np.zeros(r_idx.size, dtype=INDEX_DTYPE)
        entries["plan"] = plan_id
        entries["frame"] = frame
        entries["next_frame"] = next_frame
        entries["row"] = rows[r_idx]
        entries["col"] = cols[c_idx]
        entries["transform"] = k % 4
        chunks.append(entries)
        per_snapshot.append(int(r_idx.size))
    entries = np.concatenate(chunks) if chunks else np.zeros(0, dtype=INDEX_DTYPE)
    return PlanIndex(entries=entries, dry_dropped=dry, masked_dropped=masked, per_snapshot=per_snapshot)


def cut_sample(terrain: np.ndarray, water_depth: np.ndarray, entry, spec: SampleSpec, out=None):
    """One sample from a plan's arrays (loaded or memory-mapped) and an index entry.

    ``out``, when given, is a (terrain, depths, depth_change) triple of float32 arrays of the shapes below
    that the sample is written into (a slot of a batch being assembled), and is returned.

    Returns
    -------
    terrain : (1, T, T) float32, m
    depths : (2, P, P) float32, m — [boundary ring of depth at n + dt, depth at n]
    depth_change : (1, P, P) float32, m
    """
    size, ratio, ring = spec.patch_cells, spec.terrain_ratio, spec.ring_cells
    row, col = int(entry["row"]), int(entry["col"])
    transform = int(entry["transform"])
    terrain_patch = terrain[row * ratio:(row + size) * ratio + 1, col * ratio:(col + size) * ratio + 1]
    now = water_depth[int(entry["frame"]), row:row + size, col:col + size]
    later = water_depth[int(entry["next_frame"]), row:row + size, col:col + size]
    if out is None:
        out = (np.empty((1, size * ratio + 1, size * ratio + 1), dtype=np.float32),
               np.empty((2, size, size), dtype=np.float32), np.empty((1, size, size), dtype=np.float32))
    terrain_out, depths, change = out
    terrain_out[0] = apply_transform(terrain_patch, transform)
    depths[1] = apply_transform(now, transform)
    depths[0] = apply_transform(later, transform)
    np.subtract(depths[0], depths[1], out=change[0])
    depths[0, ring:-ring, ring:-ring] = 0.0
    return out
