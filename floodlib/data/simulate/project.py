"""Running a project: every plan of a :class:`~floodlib.data.simulate.spec.ProjectSpec` in worker processes,
each written atomically to ``<out_dir>/<project>/<plan>.h5``; plans already complete are kept."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from floodlib.data.locks import exit_with_parent
from floodlib.data.store import SimulationFileError, plan_file_name, read_simulation, write_simulation
from floodlib.data.simulate.solver import environment_variables, simulate_plan
from floodlib.data.simulate.spec import SimulationFailedError, PlanSpec, ProjectSpec, plan_specs


def _is_complete(path: Path, *, project: str, plan: str, spec: PlanSpec) -> bool:
    """True when ``path`` already holds this plan: readable, valid, same names and shape."""
    if not path.exists():
        return False
    try:
        simulation = read_simulation(path, memory_map=True)
    except SimulationFileError:
        return False
    return (simulation.project == project and simulation.plan == plan
            and simulation.water_depth.shape == (spec.n_frames, spec.rows, spec.cols))


def _simulate_and_write(spec: PlanSpec, project: str, plan: str, path: str) -> str:
    write_simulation(path, simulate_plan(spec, project=project, plan=plan))
    return path


class PlanFailedError(RuntimeError):
    """One or more plans of a project failed; the other plans' files were written."""


def simulate_project(project: ProjectSpec, out_dir: str | Path, *, workers: int = 2,
                     progress: bool = True) -> list[Path]:
    """Simulate every plan of ``project`` into ``out_dir/<project>/<plan>.h5``.

    Plans whose file already exists and reads back valid are skipped (not rewritten). The others run in
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
    todo = [i for i, (spec, name, path) in enumerate(zip(specs, names, paths))
            if not _is_complete(path, project=project.name, plan=name, spec=spec)]
    failures: list[tuple[str, BaseException]] = []
    with tqdm(total=len(paths), initial=len(paths) - len(todo), desc=f"simulating {project.name}", unit="plan",
              disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            for i in todo:
                try:
                    _simulate_and_write(specs[i], project.name, names[i], str(paths[i]))
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
                futures = {pool.submit(_simulate_and_write, specs[i], project.name, names[i], str(paths[i])): names[i]
                           for i in todo}
                for future in as_completed(futures):
                    error = future.exception()
                    if error is not None:
                        failures.append((futures[future], error))
                    bar.update()
    if failures:
        failures.sort(key=lambda item: item[0])
        listing = "; ".join(f"{name}: {type(error).__name__}: {error}" for name, error in failures)
        raise PlanFailedError(f"project {project.name!r}: {len(failures)} of {len(todo)} plans failed "
                              f"({listing}); the other plans' files are in {folder}") from failures[0][1]
    return paths
