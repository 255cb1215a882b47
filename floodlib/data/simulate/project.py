"""Running a project: every plan of a :class:`~floodlib.data.simulate.spec.ProjectSpec` in worker processes,
each written atomically to ``<out_dir>/<project>/<plan>.h5``; plans already complete are kept."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from floodlib.data.locks import exit_with_parent
from floodlib.data.fetch import file_sha256
from floodlib.data.store import SimulationFileError, plan_file_name, read_simulation, set_aside, write_simulation
from floodlib.data.simulate.solver import environment_variables, simulate_plan
from floodlib.data.simulate.spec import SimulationFailedError, PlanSpec, ProjectSpec, plan_specs
from floodlib.data.terrain import DemSource, dem_terrain


def _comparable(plan_spec: dict) -> dict:
    """A plan's recorded spec as JSON, without the DEM's path: where the file lies is not what it holds
    (a fetched DEM lies in the run folder, which may move); its content is compared by checksum."""
    record = json.loads(json.dumps(plan_spec))
    record.get("terrain", {}).pop("path", None)
    return record


def _plan_state(path: Path, *, project: str, plan: str, spec: PlanSpec, terrain_sha256: str | None) -> str:
    """What ``path`` holds of this plan: "missing"; "damaged" (unreadable or invalid: simulated again over
    it); "other" (a valid plan made from other settings, another DEM, or another plan's names or grid); or
    "complete". Files written before plans recorded their DEM's checksum are compared by the DEM's path or,
    where it moved, by the elevations they hold; files without a recorded spec by names and grid alone."""
    if not path.exists():
        return "missing"
    try:
        simulation = read_simulation(path, memory_map=True)
    except SimulationFileError:
        return "damaged"
    if (simulation.project, simulation.plan) != (project, plan) or \
            simulation.water_depth.shape != (spec.n_frames, spec.rows, spec.cols):
        return "other"
    recorded = simulation.extra.get("plan_spec")
    if not isinstance(recorded, dict):
        return "complete"
    if _comparable(recorded) != _comparable(spec.to_dict()):
        return "other"
    if terrain_sha256 is not None:
        stored = simulation.extra.get("terrain_sha256")
        if stored is not None:
            return "complete" if stored == terrain_sha256 else "other"
        # Written before the checksum was recorded: the same DEM file, or the same elevations cut from it.
        recorded_path = recorded.get("terrain", {}).get("path")
        if recorded_path is None or Path(recorded_path).resolve() != Path(spec.terrain.path).resolve():
            window = dem_terrain(spec.terrain, rows=spec.rows, cols=spec.cols).elevation
            if not np.array_equal(window, np.asarray(simulation.terrain)):
                return "other"
    return "complete"


def _simulate_and_write(spec: PlanSpec, project: str, plan: str, path: str, terrain_sha256: str | None) -> str:
    simulation = simulate_plan(spec, project=project, plan=plan)
    if terrain_sha256 is not None:
        simulation.extra["terrain_sha256"] = terrain_sha256
    write_simulation(path, simulation)
    return path


class PlanFailedError(RuntimeError):
    """One or more plans of a project failed; the other plans' files were written."""


def simulate_project(project: ProjectSpec, out_dir: str | Path, *, workers: int = 2,
                     progress: bool = True) -> list[Path]:
    """Simulate every plan of ``project`` into ``out_dir/<project>/<plan>.h5``.

    Plans whose file already exists, reads back valid and was made from the same plan (the same spec and,
    for a DEM, the same file content) are skipped (not rewritten). A valid file made otherwise is moved out
    of the way, kept in ``<out_dir>.replaced-<time>/<project>/``, and its plan simulated again. The others run in
    ``workers`` spawned processes (in this process when ``workers == 1``); the results do not depend on
    ``workers``. Each file is written atomically by :func:`floodlib.data.store.write_simulation`.

    Returns
    -------
    The plans' paths, in plan order.

    Raises
    ------
    PlanFailedError
        after the other plans have finished, naming every plan that failed and why.
    """
    from tqdm.auto import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: {workers!r} must be a whole number >= 1")
    specs = plan_specs(project)
    names = project.plan_names()
    folder = Path(out_dir) / project.name
    paths = [folder / plan_file_name(name) for name in names]
    terrain_sha256 = file_sha256(project.terrain.path) if isinstance(project.terrain, DemSource) else None
    states = [_plan_state(path, project=project.name, plan=name, spec=spec, terrain_sha256=terrain_sha256)
              for spec, name, path in zip(specs, names, paths)]
    other = [path for path, state in zip(paths, states) if state == "other"]
    kept = set_aside(other, out_dir)
    if kept is not None:
        print(f"project {project.name}: {len(other)} plan file(s) made from other settings (terrain, seed, grid, "
              f"events) moved to {kept / project.name}; simulating them again")
    todo = [i for i, state in enumerate(states) if state != "complete"]
    failures: list[tuple[str, BaseException]] = []
    with tqdm(total=len(paths), initial=len(paths) - len(todo), desc=f"simulating {project.name}", unit="plan",
              disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            for i in todo:
                try:
                    _simulate_and_write(specs[i], project.name, names[i], str(paths[i]), terrain_sha256)
                except (SimulationFailedError, SimulationFileError, ValueError) as error:
                    failures.append((names[i], error))
                bar.update()
        else:
            n_workers = min(workers, len(todo))
            # Workers read OMP_NUM_THREADS when their OpenMP runtimes load: one thread each, or the
            # runtimes' spinning threads oversubscribe the cores (measured: a 6 s plan took over 10 min).
            with environment_variables(OMP_NUM_THREADS="1"), \
                    ProcessPoolExecutor(max_workers=n_workers, mp_context=get_context("spawn"),
                                        initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(_simulate_and_write, specs[i], project.name, names[i], str(paths[i]), terrain_sha256):
                           names[i]
                           for i in todo}
                for future in as_completed(futures):
                    error = future.exception()
                    if error is not None:
                        failures.append((futures[future], error))
                    bar.update()
    broken = [name for name, error in failures if isinstance(error, BrokenProcessPool)]
    if broken:
        others = [name for name, error in failures if not isinstance(error, BrokenProcessPool)]
        raise PlanFailedError(
            f"project {project.name!r}: the simulation's worker processes stopped, {len(broken)} of {len(todo)} plans "
            f"unfinished{f' (and {len(others)} failed: {others})' if others else ''}. Either a worker was killed "
            "(out of memory, or by a signal), or simulate_project was called from a script whose code is not "
            "under `if __name__ == \"__main__\":` — each worker starts a new Python that imports the script, "
            "which must not start the simulation again. workers=1 simulates in this process. Finished plans are "
            f"kept in {folder}.") from next(error for _, error in failures if isinstance(error, BrokenProcessPool))
    if failures:
        failures.sort(key=lambda item: item[0])
        listing = "; ".join(f"{name}: {type(error).__name__}: {error}" for name, error in failures)
        written = (f"the other plans' files are in {folder}" if len(failures) < len(paths)
                   else "no plan was written")
        raise PlanFailedError(f"project {project.name!r}: {len(failures)} of {len(todo)} plans failed "
                              f"({listing}); {written}") from failures[0][1]
    return paths
