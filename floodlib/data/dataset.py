"""Splits by plan and a lazy patch Dataset over the simulation store."""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from floodlib.data.samples import INDEX_DTYPE, SampleSpec, cut_sample, index_plan
from floodlib.data.store import SIMULATION_SUFFIX, read_simulation
#: The split of every plan of the projects held out of training (``SplitSpec.test_projects``).
TEST_PROJECTS_SPLIT = "test_projects"


class Sample(NamedTuple):
    """One training sample (a batch of them after collation: a leading batch axis on each)."""

    terrain: torch.Tensor  # (1, T, T) float32, m
    depths: torch.Tensor  # (2, P, P) float32, m: [boundary ring at n + dt, depth at n]
    depth_change: torch.Tensor  # (1, P, P) float32, m


@dataclass
class SplitSummary:
    """What a split holds: its plans, samples, and the patches dropped as dry or out of area."""

    name: str
    plans: list[str]
    samples: int
    dry_dropped: int
    masked_dropped: int
    samples_per_plan: list[int] = field(default_factory=list)
    drawn: str = ""  # how samples were drawn (SampleSpec.describe)
    subset_of: str = ""  # the split whose samples a subset chose (PatchDataset.subset), else empty

    def to_dict(self) -> dict:
        return asdict(self)

    def empty_reason(self) -> str:
        """Why a split without samples has none, in words (for the errors of whatever needed samples)."""
        if self.subset_of:
            return f"it is a subset of split {self.subset_of!r} in which no sample was chosen"
        if not self.plans:
            return "it holds no plans"
        return (f"every patch of its {len(self.plans)} plan(s) was dropped: {self.dry_dropped} dry (no water at n "
                f"nor n + dt) and {self.masked_dropped} reaching cells outside the model's area (a patch must lie "
                "wholly inside it: a HEC-RAS 2D area needs whole blocks of patch_cells x patch_cells of its own cells, "
                "32x32 by default, inside its outline)")

    def __str__(self) -> str:
        if self.subset_of:  # the patches were dropped from the split it chose from, not from it
            return (f"{self.name}: {self.samples} samples chosen from split {self.subset_of!r} over "
                    f"{len(self.plans)} plans" + (f"; {self.drawn}" if self.drawn else ""))
        return (f"{self.name}: {len(self.plans)} plans, {self.samples} samples "
                f"({self.dry_dropped} dry and {self.masked_dropped} out-of-area patches dropped)"
                + (f"; {self.drawn}" if self.drawn else ""))


def _memory_budget_bytes() -> int:
    """A quarter of physical memory: splits larger than this are memory-mapped instead of loaded."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2 * 2**30


class PatchDataset(Dataset):
    """Samples of a set of plans, sliced on the fly from the per-plan arrays (no per-sample copies on disk).

    Parameters
    ----------
    files : simulation store files (one plan each), in a fixed order.
    spec : how samples are cut (:class:`SampleSpec`).
    name : the split's name, for summaries and messages.
    memory_map : True to memory-map the plans' arrays, False to load them, ``"auto"`` to memory-map only
        when the files together exceed a quarter of physical memory.

    Items are :class:`Sample` tuples of float32 tensors; the order is deterministic (plan, snapshot,
    row, column). The dataset holds file paths, not arrays, when sent to DataLoader worker processes.
    """

    def __init__(self, files: Sequence[str | Path], *, spec: SampleSpec = SampleSpec(), name: str = "split",
                 memory_map: bool | str = "auto"):
        self.files = [Path(f) for f in files]
        self.spec = spec
        self.name = name
        if memory_map == "auto":
            memory_map = sum(f.stat().st_size for f in self.files if f.exists()) > _memory_budget_bytes()
        self.memory_map = bool(memory_map)
        entries, per_plan, dry, masked, plans = [], [], 0, 0, []
        self.output_intervals_s: list[float] = []
        self.cell_sizes_m: list[float] = []
        for plan_id, path in enumerate(self.files):
            simulation = read_simulation(path, memory_map=True)
            plan_index = index_plan(simulation, spec, plan_id)
            entries.append(plan_index.entries)
            per_plan.append(len(plan_index.entries))
            dry += plan_index.dry_dropped
            masked += plan_index.masked_dropped
            plans.append(f"{simulation.project}/{simulation.plan}")
            self.output_intervals_s.append(float(simulation.output_interval_s))
            self.cell_sizes_m.append(float(simulation.cell_size_m))
        self.index = np.concatenate(entries) if entries else np.zeros(0, dtype=INDEX_DTYPE)
        self.summary = SplitSummary(name=name, plans=plans, samples=len(self.index), dry_dropped=dry,
                                    masked_dropped=masked, samples_per_plan=per_plan, drawn=spec.describe())
        self._arrays: list[tuple[np.ndarray, np.ndarray]] | None = None

    def _plan_arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._arrays is None:
            arrays = []
            for path in self.files:
                # Validated when indexed; a worker process only opens the arrays.
                simulation = read_simulation(path, memory_map=True, validate=False)
                terrain, depth = simulation.terrain, simulation.water_depth
                if not self.memory_map:
                    terrain, depth = np.array(terrain), np.array(depth)
                arrays.append((terrain, depth))
            self._arrays = arrays
        return self._arrays

    def __len__(self) -> int:
        return len(self.index)

    def trained_on(self) -> dict:
        """What a model trained on these samples has learnt to predict: the lead time (``delta_t_s``) and the
        cell sizes of the plans its samples come from (``cell_size_m``; a plan that gives none teaches nothing),
        which a checkpoint records (:attr:`FloodModel.trained_on`)."""
        sampled = np.unique(self.index["plan"]) if len(self.index) else []
        return {"delta_t_s": float(self.spec.delta_t_s),
                "cell_size_m": sorted({self.cell_sizes_m[int(plan)] for plan in sampled})}

    def __getitem__(self, item: int) -> Sample:
        entry = self.index[item]
        terrain, depth = self._plan_arrays()[int(entry["plan"])]
        return Sample(*(torch.from_numpy(a) for a in cut_sample(terrain, depth, entry, self.spec)))

    def subset(self, indices, name: str | None = None) -> "PatchDataset":
        """A PatchDataset of the samples ``indices`` (in that order), over the same plans and arrays — e.g. a
        training set of fewer samples. Its summary counts its own samples per plan."""
        index = self.index[np.asarray(indices, dtype=np.int64)]
        return self.with_index(index, name or f"{self.name} ({len(index)} samples)")

    def with_index(self, index: np.ndarray, name: str) -> "PatchDataset":
        """This dataset's plans and arrays with another sample index (``INDEX_DTYPE`` entries of its plans)."""
        chosen = copy.copy(self)
        chosen.index = np.asarray(index, dtype=INDEX_DTYPE)
        chosen.name = name
        per_plan = np.bincount(chosen.index["plan"], minlength=len(self.files)).tolist()
        chosen.summary = dataclasses.replace(self.summary, name=name, samples=len(chosen.index),
                                             samples_per_plan=per_plan, subset_of=self.summary.subset_of or self.name)
        return chosen

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None  # worker processes reopen the files instead of receiving copies
        return state

    def sample_info(self, item: int) -> dict:
        """Where sample ``item`` comes from: plan file, snapshot frames and their times (s), patch origin
        (cells), transform."""
        entry = self.index[item]
        plan, interval = int(entry["plan"]), self.output_intervals_s[int(entry["plan"])]
        return {"file": str(self.files[plan]), "plan": self.summary.plans[plan],
                "frame": int(entry["frame"]), "next_frame": int(entry["next_frame"]),
                "time_s": int(entry["frame"]) * interval, "next_time_s": int(entry["next_frame"]) * interval,
                "row": int(entry["row"]), "col": int(entry["col"]), "transform": int(entry["transform"])}


@dataclass(frozen=True)
class SplitSpec:
    """How plans are divided. Defaults are the reference's.

    Attributes
    ----------
    small_plans : the ``small`` split uses the first this many plans of ``small_project``.
    test_plans : the last this many plans of each training project are held out as test plans.
    val_fraction : share of a split's plans used for validation (the last ones).
    test_projects : projects held out of training whole (terrain never seen): their plans are in no
        training, validation or plan-held-out split, only in the ``test_projects`` split (and their own
        ``<project>_test``). Empty (default): every project trains.
    small_project : the project of the ``small`` split; empty (default): the first training project by name.
    """

    small_plans: int = 7
    test_plans: int = 7
    val_fraction: float = 0.3
    test_projects: tuple[str, ...] = ()
    small_project: str = ""

    def __post_init__(self):
        for name in ("small_plans", "test_plans"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SplitSpec.{name}={value!r} must be a positive integer")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"SplitSpec.val_fraction={self.val_fraction!r} must be between 0 and 1")
        names = self.test_projects
        if isinstance(names, str) or not isinstance(names, (list, tuple)) \
                or not all(isinstance(name, str) and name for name in names):
            raise ValueError(f"SplitSpec.test_projects={names!r} must be a list of project names")
        if len(set(names)) != len(names):
            raise ValueError(f"SplitSpec.test_projects={list(names)!r} names a project more than once")
        object.__setattr__(self, "test_projects", tuple(names))
        if not isinstance(self.small_project, str):
            raise ValueError(f"SplitSpec.small_project={self.small_project!r} must be a project name (or empty)")
        if self.small_project in self.test_projects:
            raise ValueError(f"SplitSpec.small_project={self.small_project!r} is held out by test_projects; the "
                             "small split trains on it")

    def check_projects(self, projects: Sequence[str], *, where: str = "SplitSpec") -> None:
        """Refuse ``test_projects`` or a ``small_project`` that are not among ``projects``, and holding out
        every project.

        Raises
        ------
        ValueError
            starting with ``where`` and the field, naming the unknown projects and listing the known ones.
        """
        known = list(projects)
        unknown = [name for name in self.test_projects if name not in known]
        if unknown:
            raise ValueError(f"{where}.test_projects: unknown project(s) {unknown}; the projects are {known}")
        if known and len(set(self.test_projects)) >= len(set(known)):
            raise ValueError(f"{where}.test_projects: {list(self.test_projects)} holds out every project; at least "
                             "one must remain to train on")
        if self.small_project and self.small_project not in known:
            raise ValueError(f"{where}.small_project: unknown project {self.small_project!r}; the projects are {known}")

    def split_names(self, projects: Sequence[str]) -> list[str]:
        """The names of the splits :func:`split_plans` makes of ``projects`` (sorted by name, as discovered),
        without reading a plan: for checking a stage's settings before any data exists."""
        projects = sorted(dict.fromkeys(projects))
        training = [project for project in projects if project not in self.test_projects]
        names = ["small_train", "small_val", "big_train", "big_val", "big_test"]
        names += [TEST_PROJECTS_SPLIT] if self.test_projects else []
        for project in training:
            names += [f"{project}_train_val", f"{project}_test"]
        return names + [f"{project}_test" for project in self.test_projects]


def discover_plans(data_dir: str | Path) -> dict[str, list[Path]]:
    """Plans of a data folder laid out as ``<data_dir>/<project>/<plan>.h5``, projects and plans sorted by name."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: data folder does not exist")
    projects = {}
    for project in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        plans = sorted(project.glob(f"*{SIMULATION_SUFFIX}"))
        if plans:
            projects[project.name] = plans
    if not projects:
        raise FileNotFoundError(f"{data_dir}: no plans found (expected <project>/<plan>{SIMULATION_SUFFIX} files)")
    return projects


def _train_val(plans: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    # two plans or more: at least one each for training and validation, whatever the fraction
    n_val = min(max(1, int(round(len(plans) * fraction))), len(plans) - 1) if len(plans) > 1 else 0
    return plans[:len(plans) - n_val], plans[len(plans) - n_val:]


def split_plans(projects: dict[str, list[Path]], spec: SplitSpec = SplitSpec()) -> dict[str, list[Path]]:
    """Assign plans to splits — never a patch: no test plan leaks into training.

    Returns ``small_train``, ``small_val`` (first ``small_plans`` of ``small_project``, by default the first
    training project), ``big_train``, ``big_val`` (all but the last ``test_plans`` of each training project,
    each project divided train/val), ``big_test`` (the last ``test_plans`` of each training project: plans
    held out, terrain seen) and per training project ``<project>_train_val`` and ``<project>_test``. When
    ``spec.test_projects`` holds projects out, ``test_projects`` has every plan of them (terrain never seen in
    training), and each of them its own ``<project>_test``.

    Raises
    ------
    ValueError
        naming the SplitSpec field: an unknown project in ``test_projects`` (listing the projects), every
        project held out, a training project with too few plans, or ``small_plans`` reaching test plans.
    """
    if not projects:
        raise ValueError("no projects to split")
    spec.check_projects(projects)
    splits: dict[str, list[Path]] = {"big_train": [], "big_val": [], "big_test": []}
    if spec.test_projects:
        splits[TEST_PROJECTS_SPLIT] = [plan for project in spec.test_projects for plan in projects[project]]
    for project in projects:
        clash = {f"{project}_train_val", f"{project}_test"} & {"small_train", "small_val", *splits}
        if clash:
            raise ValueError(f"project {project!r}: its own split {sorted(clash)[0]!r} would replace the split of "
                             "that name; rename the project")
    training = {project: plans for project, plans in projects.items() if project not in spec.test_projects}
    first = spec.small_project or next(iter(training))
    for project, plans in training.items():
        if len(plans) < spec.test_plans + 2:
            raise ValueError(
                f"project {project!r} has {len(plans)} plan(s); SplitSpec.test_plans={spec.test_plans} held out for "
                f"testing needs at least {spec.test_plans + 2} (two more for training and validation)")
        train_val, test = plans[:-spec.test_plans], plans[-spec.test_plans:]
        train, val = _train_val(train_val, spec.val_fraction)
        splits["big_train"] += train
        splits["big_val"] += val
        splits["big_test"] += test
        splits[f"{project}_train_val"] = train_val
        splits[f"{project}_test"] = test
    for project in spec.test_projects:
        splits[f"{project}_test"] = list(projects[project])
    first_plans = training[first]
    if spec.small_plans > len(first_plans) - spec.test_plans:
        raise ValueError(
            f"SplitSpec.small_plans={spec.small_plans} would take test plans of project {first!r} "
            f"({len(first_plans)} plans, the last {spec.test_plans} held out): use at most "
            f"{len(first_plans) - spec.test_plans}")
    if spec.small_plans < 2:
        raise ValueError(f"SplitSpec.small_plans={spec.small_plans} must be at least 2 (training and validation)")
    small_train, small_val = _train_val(first_plans[:spec.small_plans], spec.val_fraction)
    return {"small_train": small_train, "small_val": small_val, **splits}


def load_splits(data_dir: str | Path, *, sample_spec: SampleSpec = SampleSpec(), split_spec: SplitSpec = SplitSpec(),
                names: Sequence[str] | None = None, memory_map: bool | str = "auto") -> dict[str, PatchDataset]:
    """Datasets of the splits ``names`` (all of :func:`split_plans` by default) of a data folder."""
    projects = discover_plans(data_dir)
    unknown = [name for name in sample_spec.projects if name not in projects]
    if unknown:
        raise ValueError(f"SampleSpec.projects: unknown project(s) {unknown}; {data_dir} holds {sorted(projects)}")
    plans = split_plans(projects, split_spec)
    if names is not None:
        unknown = [n for n in names if n not in plans]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; this data folder has {list(plans)}")
        plans = {n: plans[n] for n in names}
    return {name: PatchDataset(files, spec=sample_spec, name=name, memory_map=memory_map) for name, files in plans.items()}
