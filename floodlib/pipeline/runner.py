"""Run the stage notebooks A -> B -> C -> D headless with papermill into ``outputs/<run>/``.

    python -m floodlib.pipeline params/smoke.yaml            # every stage not yet complete
    python -m floodlib.pipeline params/smoke.yaml --only B   # one stage
    python -m floodlib.pipeline params/smoke.yaml --force    # redo stages even if complete
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from floodlib.pipeline.config import NOTEBOOKS, STAGES, ProfileError, check_stages, load_profile
from floodlib.data.locks import FolderBusyError, hold_folder
from floodlib.data.store import atomic_write
from floodlib.environment import describe, environment
from floodlib.runs import SUMMARY_FILE, changed_settings, stage_state, write_profile

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_NOTEBOOKS = REPOSITORY / "notebooks"
DEFAULT_OUTPUTS = REPOSITORY / "outputs"


class Interrupted(RuntimeError):
    """The user stopped the run (Ctrl-C, or SIGTERM); the message says what was kept and how to continue."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's time limit) while the command-line pipeline runs: it stops the
    run as Ctrl-C does, so the log says where it stopped and the same command continues from there."""


def _terminate(signum, frame):
    raise Terminated()


def _stop(error: BaseException) -> tuple[str, str, int]:
    """What stopped the run: (what happened, by what, the exit status a shell gives for that signal)."""
    if isinstance(error, Terminated):
        return "terminated", "SIGTERM", 128 + signal.SIGTERM
    return "interrupted", "Ctrl-C", 128 + signal.SIGINT


class StageFailed(RuntimeError):
    """A stage notebook failed; the message names the executed notebook holding the traceback."""


def _log(log_file: Path, message: str) -> None:
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
    print(line, flush=True)
    with open(log_file, "a") as handle:
        handle.write(line + "\n")


def export_html(notebook: Path) -> Path:
    """An HTML copy of an executed notebook beside it."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    return atomic_write(notebook.with_suffix(".html"), lambda temporary: Path(temporary).write_text(body, encoding="utf-8"))


KERNEL_LOG = "kernel.log"


def _kernel_manager(log_path: Path):
    """A kernel manager whose kernels write their own stderr (start-up warnings, a traceback of their end when
    the pipeline is interrupted, a crash's last words) to ``log_path`` instead of the pipeline's terminal."""
    from jupyter_client import AsyncKernelManager

    class StageKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            with open(log_path, "ab") as log:  # the kernel keeps its own copy of the descriptor
                kw["stderr"] = log
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return StageKernelManager


def run_stage(stage: str, parameters: dict, *, run_dir: Path, notebooks: Path, timeout_s: int | None,
              log_file: Path) -> Path:
    """Execute one stage notebook; raise StageFailed naming what went wrong and where to look."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    source = notebooks / NOTEBOOKS[stage]
    if not source.exists():
        raise StageFailed(f"stage {stage}: notebook {source} does not exist")
    stage_dir = run_dir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    output = stage_dir / NOTEBOOKS[stage]
    try:
        papermill.execute_notebook(str(source), str(output), parameters=parameters, cwd=str(notebooks),
                                   kernel_name="python3", progress_bar=False, execution_timeout=timeout_s,
                                   log_output=False, kernel_manager_class=_kernel_manager(stage_dir / KERNEL_LOG))
    except papermill.PapermillExecutionError as error:
        raise StageFailed(f"stage {stage} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                          f"the executed notebook with the traceback: {output}") from None
    except (DeadKernelError, CellTimeoutError, RuntimeError) as error:
        kind = "timed out" if isinstance(error, CellTimeoutError) or "Timeout" in type(error).__name__ else \
            "lost its kernel (often: out of memory)" if isinstance(error, DeadKernelError) or "Kernel died" in str(error) \
            else "failed"
        raise StageFailed(f"stage {stage} {kind}: {type(error).__name__}: {str(error)[:500]}\n"
                          f"the partly executed notebook: {output}; the kernel's own messages: "
                          f"{stage_dir / KERNEL_LOG}") from None
    finally:
        if output.exists():
            try:
                export_html(output)
            except Exception as error:  # an HTML copy is a convenience; never hide the stage's own result
                _log(log_file, f"stage {stage}: HTML export failed ({error})")
    if not (stage_dir / SUMMARY_FILE).exists():
        raise StageFailed(f"stage {stage}: the notebook ran but wrote no {SUMMARY_FILE}; see {output}")
    return output


def set_aside_files(run_dir: Path) -> set[Path]:
    """The data files set aside beside the run's data folder (``data.replaced-<time>/<project>/<file>``)."""
    return {path for path in run_dir.glob("data.replaced-*/**/*") if path.is_file()}


def set_aside_report(run_dir: Path, before: set[Path], *, stage: str) -> list[str]:
    """A line for the log per folder into which ``stage`` set data files aside (those not in ``before``)."""
    new: dict[Path, list[str]] = {}
    for path in sorted(set_aside_files(run_dir) - before):
        folder = next(parent for parent in path.parents if parent.parent == run_dir)
        new.setdefault(folder, []).append(path.relative_to(folder).as_posix())
    return [f"stage {stage} set aside {len(files)} data file(s) made otherwise than the profile says (other settings, "
            f"or a project or plan it no longer lists) in {folder}: " + ", ".join(files[:6])
            + (f" and {len(files) - 6} more" if len(files) > 6 else "") for folder, files in new.items()]


def check_dems(profile, *, where: str) -> None:
    """Open every DEM the profile names by path and draw its projects' plans, as stage A will: a DEM that
    cannot serve (pixel size, CRS, too small, no window free of nodata) is refused now, naming the profile
    the user wrote, rather than in stage A's kernel. A DEM the profile fetches is checked when fetched."""
    from floodlib.data.simulate import plan_specs
    from floodlib.data.store import SimulationFileError
    from floodlib.pipeline.stages import project_spec

    for index, project in enumerate(profile.data.simulate):
        if project.terrain.kind != "dem" or project.terrain.path is None:
            continue
        try:
            plan_specs(project_spec(project, where=f"{where}: data"))
        except (SimulationFileError, ValueError) as error:
            raise ProfileError(f"{where}: data.simulate.{index}.terrain: {error}") from None


def run_pipeline(profile_path: str | Path, *, stages: list[str] | None = None, force: bool = False,
                 outputs: str | Path = DEFAULT_OUTPUTS, notebooks: str | Path = DEFAULT_NOTEBOOKS,
                 run_dir: str | Path | None = None, timeout_s: int | None = None) -> Path:
    """Run the profile's stages in order into ``outputs/<name>/`` (or ``run_dir``); returns the run folder.

    A stage is skipped when complete (:func:`floodlib.runs.stage_state`: its summary reads back valid, was
    made from the current results of the earlier stages and with the profile's current settings), unless
    ``force``; one whose summary is unreadable or stale is redone, its previous folder kept beside it. A
    profile whose settings differ from those a completed stage was made with is refused before anything
    is written (the folder would no longer describe how its results were made), unless ``force``, which
    redoes the stages asked for. Stages run by default: A, B, C and D where its notebook exists.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ProfileError(f"the pipeline runs as one process, but this is one of {os.environ['WORLD_SIZE']} "
                           "(torchrun or SLURM): start it with plain python; `devices` and `strategy: ddp` in the "
                           "profile's stage sections start a training process per device on this machine")
    profile = load_profile(Path(profile_path).expanduser())
    # Absolute from here on: papermill runs each notebook from the notebooks' folder, where a relative run
    # folder would name another place. A "~" the shell left (--outputs=~/runs) is the user's home.
    outputs = Path(outputs).expanduser().absolute()
    run_dir = Path(run_dir).expanduser().absolute() if run_dir else outputs / profile.name
    notebooks = Path(notebooks).expanduser().absolute()
    if not notebooks.is_dir():
        raise ProfileError(f"--notebooks {notebooks}: not a folder of stage notebooks "
                           f"({', '.join(NOTEBOOKS.values())})")
    wanted = stages or [s for s in STAGES if (notebooks / NOTEBOOKS[s]).exists()]
    if not wanted:
        raise ProfileError(f"--notebooks {notebooks}: holds none of the stage notebooks ({', '.join(NOTEBOOKS.values())})")
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ProfileError(f"unknown stage(s) {unknown}; expected some of {list(STAGES)}")
    check_stages(profile, where=str(profile_path), stages=wanted)
    if "A" in wanted:
        check_dems(profile, where=str(profile_path))
    with hold_folder(run_dir, what="run folder"):
        changed = {stage: why for stage in STAGES for state, why in [stage_state(run_dir, stage, profile)]
                   if state == "changed"}
        order = list(STAGES)
        unsound = {stage: [earlier for earlier in order[:order.index(stage)] if earlier in changed and earlier not in wanted]
                   for stage in wanted}
        unsound = {stage: earlier for stage, earlier in unsound.items() if earlier}
        if force and unsound:
            stage, earlier = next(iter(unsound.items()))
            raise ProfileError(
                f"{profile_path}: --force redoes stage {stage}, but stage(s) {', '.join(earlier)} of run folder "
                f"{run_dir}, whose results it uses, were made with other settings than this profile's (e.g. other "
                f"splits: stage {stage} would score or build on models trained on what it now tests). Redo them "
                f"too (--only {' --only '.join([*earlier, stage])} --force), or start a new run folder; nothing was "
                "run or changed.")
        if changed and not force:
            differing = changed_settings(run_dir, list(changed), profile)
            raise ProfileError(
                f"{profile_path}: run folder {run_dir} holds stage(s) {', '.join(changed)} made with other settings "
                f"(the data section or their own) than this profile's ("
                + ("; ".join(differing) if differing else f"stage {next(iter(changed))} {next(iter(changed.values()))}")
                + "); its results would no longer describe how they "
                f"were made, so nothing was run or changed. Start a new run folder (--run-dir, or another `name:`), "
                f"or pass --force to redo the stages (their previous results are kept beside them).")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_profile(profile, run_dir)
        log_file = run_dir / "pipeline.log"
        _log(log_file, f"run {profile.name} -> {run_dir} (profile {profile_path}); stages {', '.join(wanted)}")
        _log(log_file, f"on {describe(environment())}")
        last = outputs / "last"
        if run_dir.parent == outputs:
            try:
                if last.is_symlink() or last.exists():
                    last.unlink()
                last.symlink_to(run_dir.name)
            except OSError:
                pass
        total = time.perf_counter()
        for index, stage in enumerate(wanted, 1):
            state, reason = stage_state(run_dir, stage, profile)
            if state == "complete" and not force:
                _log(log_file, f"[{index}/{len(wanted)}] stage {stage}: complete already, skipped (--force redoes it)")
                executed = run_dir / stage / NOTEBOOKS[stage]
                if executed.exists() and not executed.with_suffix(".html").exists():
                    # Stopped after the stage wrote its summary but before its HTML copy was made: make it now.
                    try:
                        _log(log_file, f"stage {stage}: its HTML copy was missing, made now: {export_html(executed)}")
                    except Exception as error:  # as after a stage: a convenience, never in the way of the run
                        _log(log_file, f"stage {stage}: HTML export failed ({error})")
                continue
            continued = (run_dir / stage).exists() and state == "missing" and not force
            if continued:
                # Interrupted (no summary yet): go on in its folder, where its trainings resume from their last
                # epoch and its search from its study; --force starts it afresh instead.
                _log(log_file, f"[{index}/{len(wanted)}] stage {stage}: not complete, continued in its folder "
                               "(--force starts it afresh)")
            elif (run_dir / stage).exists():
                # Redo from scratch, but keep what was there: the old stage folder is renamed, not deleted.
                kept = run_dir / f"{stage}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
                (run_dir / stage).rename(kept)
                why = "--force" if state in ("complete", "missing") else reason
                _log(log_file, f"[{index}/{len(wanted)}] stage {stage}: {why}, previous results kept in {kept}")
            start = time.perf_counter()
            _log(log_file, f"[{index}/{len(wanted)}] stage {stage}: running {NOTEBOOKS[stage]}")
            parameters = profile.stage_parameters(stage, run_dir.resolve())
            set_aside_before = set_aside_files(run_dir)
            try:
                output = run_stage(stage, parameters, run_dir=run_dir, notebooks=notebooks, timeout_s=timeout_s,
                                   log_file=log_file)
            except StageFailed as error:
                _log(log_file, f"[{index}/{len(wanted)}] stage {stage}: FAILED after {time.perf_counter() - start:.0f} s")
                _log(log_file, str(error))
                if continued:
                    _log(log_file, f"stage {stage} was continued in its folder from an interrupted run; if that run had "
                                   "other settings, --force starts it afresh")
                raise
            except KeyboardInterrupt as error:
                happened, by, _ = _stop(error)
                _log(log_file, f"[{index}/{len(wanted)}] stage {stage}: {happened} ({by}) after "
                               f"{time.perf_counter() - start:.0f} s; the stages completed before it are kept, and "
                               f"the same command continues stage {stage} in its folder (--force starts it afresh)")
                raise Interrupted(f"{happened} during stage {stage}; completed stages are kept in {run_dir}, "
                                  f"and the same command continues from stage {stage} (log: {log_file})") from error
            finally:  # done, failed or stopped: the data files it moved aside are said
                for line in set_aside_report(run_dir, set_aside_before, stage=stage):
                    _log(log_file, line)
            _log(log_file, f"[{index}/{len(wanted)}] stage {stage}: done in {time.perf_counter() - start:.0f} s -> {output}")
        _log(log_file, f"run {profile.name} finished in {time.perf_counter() - total:.0f} s")
        for stage in STAGES:
            state, reason = stage_state(run_dir, stage, profile) if stage not in wanted else ("", "")
            if state in ("invalid", "stale", "changed"):
                _log(log_file, f"stage {stage} is {state} ({reason}): the next run without --only redoes it")
        if (run_dir / "D" / SUMMARY_FILE).exists():
            _log(log_file, f"report: {run_dir / 'D' / 'D_evaluate.html'}; predictions in the browser: "
                           f"python -m floodlib.viewer {run_dir}")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="floodlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help="parameter profile, e.g. params/smoke.yaml")
    parser.add_argument("--only", action="append", choices=list(STAGES), help="run only this stage (repeatable)")
    parser.add_argument("--force", action="store_true", help="redo stages that are complete")
    parser.add_argument("--outputs", default=str(DEFAULT_OUTPUTS), help="folder of run folders (default outputs/)")
    parser.add_argument("--run-dir", default=None, help="the run folder (default <outputs>/<profile name>)")
    parser.add_argument("--notebooks", default=str(DEFAULT_NOTEBOOKS), help="folder of the stage notebooks")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default none)")
    args = parser.parse_args(argv)
    logging.getLogger("papermill").setLevel(logging.WARNING)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        run_pipeline(args.profile, stages=args.only, force=args.force, outputs=args.outputs,
                     notebooks=args.notebooks, run_dir=args.run_dir, timeout_s=args.timeout)
    except (ProfileError, StageFailed, FileNotFoundError, FolderBusyError) as error:
        print(f"floodlib pipeline: {error}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt) as error:  # the latter: stopped before any stage started
        # The interrupted notebook client leaves asyncio tasks behind that would each print "Task exception was
        # never retrieved" and a traceback as the process ends: the one line below says all there is.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
        happened, _, status = _stop(error.__cause__ if isinstance(error, Interrupted) else error)
        what = error if isinstance(error, Interrupted) else f"{happened} before any stage started; nothing was run"
        print(f"floodlib pipeline: {what}", file=sys.stderr)
        return status
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
