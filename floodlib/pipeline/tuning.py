"""Stage B's search: Optuna over Arch_04's layers, channels, attention blocks, learning rate and downsampler,
pruning hopeless trials, with worker processes on this machine or others sharing one study; then the model
of the best configuration and the stage's summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from floodlib.pipeline.stages import train_one
from floodlib.runs import PROFILE_FILE, RankedModel, Run, StageBSummary, TunedConfiguration, open_run, splits
from floodlib.runs.profile import StageB


class _OptunaPruning:
    """Lightning callback reporting each epoch's validation loss to an Optuna trial and pruning it."""

    def __new__(cls, trial):
        from lightning.pytorch.callbacks import Callback

        class Pruning(Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                import optuna

                history = pl_module.history["val_loss"]
                if history:
                    trial.report(history[-1], step=len(history))
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at epoch {len(history)} (val {history[-1]:.5f})")

        return Pruning()


STUDY_NAME = "Arch_04"
# A trial's worker records a heartbeat in the study every _HEARTBEAT_S seconds; a RUNNING trial silent for
# _GRACE_S is taken as left by a dead worker and failed by Optuna (optuna.storages.fail_stale_trials), so
# that it neither counts as in flight nor blocks the search. A trial of 30 epochs is never silent: the
# heartbeat comes from its own thread.
_HEARTBEAT_S = 60
_GRACE_S = 180
# SQLite lets one writer in at a time; the others wait for its lock up to this timeout (the driver's default
# is 5 s, which several workers reporting epochs and finishing trials at once can exceed).
_SQLITE_LOCK_TIMEOUT_S = 60
_POLL_S = 10  # how often the stage looks whether other machines' trials in flight have finished


def study_storage_url(run: Run, config: StageB) -> str:
    """The URL of stage B's study: ``config.study_storage``, or the run's own SQLite file ``B/study.db``."""
    return config.study_storage or f"sqlite:///{(run.stage_dir('B') / 'study.db').resolve()}"


def _quietly(make):
    """``make()`` without Optuna's ExperimentalWarning (heartbeats, constant liar: experimental in some versions)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return make()


def open_study(run: Run, config: StageB, *, seed: int | None = None):
    """Stage B's study, created on first use: the same call in every worker process and on every machine.

    Parameters
    ----------
    run, config : the run and stage B's parameters (``study_storage`` names the database).
    seed : seeds this process's sampler; workers of one search need different seeds (the same seed proposes
        the same configurations while the sampler is still sampling at random). None: a random seed.

    Returns
    -------
    optuna.Study
    """
    import optuna
    from sqlalchemy.engine import make_url

    url = study_storage_url(run, config)
    engine_kwargs = {"connect_args": {"timeout": _SQLITE_LOCK_TIMEOUT_S}} \
        if make_url(url).get_backend_name() == "sqlite" else {}
    storage = _quietly(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                          heartbeat_interval=_HEARTBEAT_S, grace_period=_GRACE_S))
    # The constant liar makes the sampler treat other workers' running trials as bad ones, so that workers
    # running at once do not all try the same region. With one worker no other trial runs: no effect.
    sampler = _quietly(lambda: optuna.samplers.TPESampler(seed=seed, constant_liar=True))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="minimize", load_if_exists=True,
                               sampler=sampler, pruner=pruner)


def _fail_stale_trials(study) -> None:
    """Fail the RUNNING trials whose worker stopped beating (Optuna's heartbeat): killed processes, lost machines."""
    import optuna

    _quietly(lambda: optuna.storages.fail_stale_trials(study))


def _trial_counts(study) -> tuple[int, int]:
    """(finished: COMPLETE or PRUNED, running) trials of the study."""
    import optuna

    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    finished = sum(state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for state in states)
    return finished, states.count(optuna.trial.TrialState.RUNNING)


class _StopAtTotal:
    """Optuna callback: stop this worker when the study's finished trials and those still running reach ``total``.

    ``n_trials`` of :meth:`optuna.Study.optimize` counts one process's trials; this counts the study's, across
    workers and machines. Trials running elsewhere count because they will finish: a worker must not start a
    trial they already make one too many. A dead worker's trial is failed first (heartbeat), so it stops counting.
    """

    def __init__(self, total: int):
        import optuna

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
        self._max_trials = optuna.study.MaxTrialsCallback(total, states=states)

    def __call__(self, study, trial) -> None:
        _fail_stale_trials(study)
        self._max_trials(study, trial)


def _search_worker(run: Run, config: StageB, train, val, n_trials: int, seed: int | None, one_thread: bool) -> int:
    """Run up to ``n_trials`` trials of the study in this process (a spawned worker, or the stage's own process).

    Each trial trains in this process with :func:`train_one` into ``B/models/trials/<trial number>``: trial
    numbers are unique in a study, so no two workers write one folder. Returns the number of trials run.
    """
    import os
    import shutil
    import socket

    import optuna
    import torch

    if one_thread and not torch.cuda.is_available():
        # Several workers share this machine's cores: one thread each instead of each taking them all.
        torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(run, config, seed=seed)
    # A trial trains on one device (its pruning callback lives in this process); trials run side by side
    # through `workers` instead. The tuned model trains with the stage's devices.
    trial_settings = config.model_copy(update={"epochs": config.trial_epochs, "devices": 1, "num_nodes": 1,
                                                 "strategy": "auto"})
    worker = f"{socket.gethostname()}:{os.getpid()}"
    numbers = []

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)  # which process ran it (host:pid), for the record and the tests
        numbers.append(trial.number)
        layers = trial.suggest_int("layers", *config.layers)
        channels = trial.suggest_categorical("channels", config.channels)
        attentions = trial.suggest_int("attentions", config.attentions[0], min(config.attentions[1], layers - 2))
        lr = trial.suggest_float("lr", *config.lr_range, log=True)
        downsampler = trial.suggest_categorical("downsampler", config.downsamplers)
        ds_kwargs = {}
        if downsampler != "cubic":
            ds_kwargs = {"c1": trial.suggest_int("c1", 8, 32, step=4), "c2": trial.suggest_int("c2", 16, 64, step=8)}
        try:
            summary = train_one(run, "B", trial_settings, train, val, name=f"trials/{trial.number:03d}",
                                arch="Arch_04", arch_kwargs={"layers": layers, "channels": channels,
                                                             "attentions": attentions},
                                downsampler=downsampler, downsampler_kwargs=ds_kwargs, lr=lr,
                                callbacks=[_OptunaPruning(trial)])
        except BaseException:
            # A pruned, failed or interrupted trial is never resumed (the search runs a new one instead): its
            # resume checkpoint, and weights without a summary, would only be left behind. The study keeps
            # its parameters and losses.
            number = f"{trial.number:03d}"
            for folder in (trials_dir / number, run.stage_dir("B") / "models" / "trials" / number,
                           run.stage_dir("B") / "losses" / "trials" / number):
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return summary["analysis"]["best_val_loss"]

    # fit removes a finished trial's checkpoint folder and then its parents once they are empty; a marker of
    # this worker keeps B/checkpoints/trials from being removed while another worker creates its folder there.
    trials_dir = run.stage_dir("B") / "checkpoints" / "trials"
    trials_dir.mkdir(parents=True, exist_ok=True)
    marker = trials_dir / f".worker-{worker.replace(':', '-')}"
    marker.touch()
    try:
        study.optimize(objective, n_trials=n_trials, callbacks=[_StopAtTotal(config.trials)], catch=())
    finally:
        marker.unlink(missing_ok=True)
        for folder in (trials_dir, trials_dir.parent):
            try:
                folder.rmdir()
            except OSError:  # another worker's trial or marker is still there
                break
    return len(numbers)


def _worker_process(connection, *args) -> None:
    """A spawned worker's entry point: :func:`_search_worker`, its outcome sent back through ``connection``."""
    import traceback

    import multiprocessing

    from floodlib.data.locks import exit_with_parent

    exit_with_parent(multiprocessing.parent_process().pid)  # a killed notebook kernel takes its trials with it

    try:
        connection.send(("done", _search_worker(*args)))
    except BaseException:
        connection.send(("failed", traceback.format_exc()))
    finally:
        connection.close()


def _run_workers(run: Run, config: StageB, train, val, *, total: int, seeds: list[int | None]) -> int:
    """Run ``total`` trials with ``len(seeds)`` workers, each its share; returns the number of trials run.

    One worker runs in this process, as the stage always did. Several are spawned processes (a fresh interpreter
    each: forking a Jupyter kernel or a process whose torch threads run is unsafe); the first to fail stops the
    others, whose trials are then left RUNNING for the next start to fail and redo, and its traceback is raised here.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    workers = len(seeds)
    shares = [total // workers + (index < total % workers) for index in range(workers)]
    if workers == 1:
        return _search_worker(run, config, train, val, total, seeds[0], False)
    context = multiprocessing.get_context("spawn")
    started: list[tuple[Any, Any]] = []
    ran = 0
    try:
        for share, seed in zip(shares, seeds):
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(target=_worker_process, name=f"floodlib-tune-{len(started)}",
                                      args=(writer, run, config, train, val, share, seed, True))
            process.start()
            writer.close()  # the worker holds its own copy: ours closed, a worker that dies reads as end of file
            started.append((process, reader))
        pending = dict(enumerate(started))
        while pending:
            ready = wait([reader for _, reader in pending.values()])
            for index, (process, reader) in list(pending.items()):
                if reader not in ready:
                    continue
                try:
                    outcome = reader.recv()
                except EOFError:
                    outcome = None
                process.join()
                del pending[index]
                if outcome is None:
                    raise RuntimeError(f"stage B: tuning worker {index} (pid {process.pid}) died with exit code "
                                       f"{process.exitcode} (a negative code is the signal that killed it; "
                                       f"-9 is often the out-of-memory killer)")
                if outcome[0] == "failed":
                    raise RuntimeError(f"stage B: tuning worker {index} (pid {process.pid}) failed:\n{outcome[1]}")
                ran += outcome[1]
    finally:
        for process, _ in started:
            if process.is_alive():
                process.terminate()
        for process, reader in started:
            process.join()
            reader.close()
    return ran


def tune_arch04(run: Run, config: StageB, train, val):
    """Optuna search over Arch_04's layers, channels, attention blocks, learning rate and downsampler.

    The study lives in ``B/study.db`` (SQLite), or in the database ``config.study_storage`` names: started
    again, the search continues with the trials still to run. ``config.workers`` processes run trials at once
    (one: this process), sharing the study with any extra workers started by :func:`run_tuning_worker`, here
    or on other machines. The search ends when ``config.trials`` trials are complete or pruned; hopeless
    trials are pruned by the median rule.

    Parameters
    ----------
    run : the run.
    config : stage B's parameters.
    train, val : the datasets trials train and validate on (sent to worker processes: picklable).

    Returns
    -------
    optuna.Study
    """
    import time

    import optuna

    run.stage_dir("B").mkdir(parents=True, exist_ok=True)
    study = open_study(run, config, seed=config.seed)
    if not config.study_storage:
        # A trial RUNNING now was left by an interrupted search (killed: no chance to record its end), and is
        # marked failed so that the count below runs another in its place. Safe only here: B/study.db belongs to
        # this run, whose stage B starts its search here, and this stage's workers are not started yet. In a
        # shared database (study_storage) a RUNNING trial may be a live worker's on another machine: there only
        # those whose heartbeat stopped are failed, by Optuna.
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        for marker in (run.stage_dir("B") / "checkpoints" / "trials").glob(".worker-*"):
            marker.unlink(missing_ok=True)  # left by the same interrupted search's workers
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rounds = 0
    while True:
        _fail_stale_trials(study)
        finished, running = _trial_counts(study)
        remaining = config.trials - finished - running
        if remaining > 0:
            workers = min(config.workers, remaining)
            # Seeds differ between workers and rounds (the same seed samples the same configurations); one worker's
            # first round keeps the stage's seed, as before workers existed.
            seeds = [config.seed + rounds * config.workers + index for index in range(workers)]
            _run_workers(run, config, train, val, total=remaining, seeds=seeds)
            rounds += 1
        elif running:
            # Trials of other workers (other machines) are in flight: the search is not finished until they are,
            # or until their heartbeat stops and they are failed (then the next round reruns them).
            time.sleep(_POLL_S)
        else:
            return study


def run_tuning_worker(run_dir: str | Path, *, workers: int = 1) -> int:
    """Extra workers for a run's stage B search: ``python -m floodlib.pipeline.tune <run_dir> --workers N``.

    Joins the study named by the run's ``params.yaml`` (section B, ``study_storage``) and runs trials until the
    study holds ``trials`` finished ones, counting those of every other worker. For a cluster: stage B with
    ``study_storage`` set to a database all machines reach, then this command on each machine that sees the
    run folder (its ``params.yaml`` and ``data/``). Start it once stage B runs: on the run's own SQLite file,
    the stage fails the trials it finds RUNNING when it starts.

    Parameters
    ----------
    run_dir : the run folder.
    workers : worker processes on this machine.

    Returns
    -------
    int : the number of trials these workers ran (0 when the search needs no more).
    """
    from floodlib.pipeline.config import validate_stage

    if workers < 1:
        raise ValueError(f"workers = {workers!r} must be at least 1")
    run = open_run(run_dir)
    config = validate_stage("B", {**run.profile.B, "run_dir": str(run.run_dir)},
                            where=f"{run.run_dir / PROFILE_FILE}, section B")
    data = splits(run, ["small_train", "small_val"])
    run.stage_dir("B").mkdir(parents=True, exist_ok=True)
    study = open_study(run, config)
    # No RUNNING trial is failed by hand here: each may be a live worker's. Optuna fails those whose heartbeat stopped.
    _fail_stale_trials(study)
    finished, running = _trial_counts(study)
    remaining = config.trials - finished - running
    if remaining <= 0:
        return 0
    # Random seeds: a fixed one would repeat the configurations the stage's own workers propose.
    return _run_workers(run, config, data["small_train"], data["small_val"], total=remaining,
                        seeds=[None] * min(workers, remaining))


def best_configuration(study) -> dict[str, Any]:
    """The best trial's model configuration: arch kwargs, downsampler with its kwargs, learning rate."""
    params = study.best_trial.params
    downsampler = params["downsampler"]
    return {
        "arch": "Arch_04",
        "arch_kwargs": {"layers": params["layers"], "channels": params["channels"], "attentions": params["attentions"]},
        "downsampler": downsampler,
        "downsampler_kwargs": {"c1": params["c1"], "c2": params["c2"]} if downsampler != "cubic" else {},
        "lr": params["lr"],
        "trial": study.best_trial.number,
        "trial_val_loss": study.best_value,
    }


def stage_b_summary(study, best: dict[str, Any], tuned: dict[str, Any], default: RankedModel) -> StageBSummary:
    """Stage B's summary: the best configuration (``best``), the model trained with it (``tuned``: its
    training summary), stage A's Arch_04 (``default``) beside it, and the search's trials by state."""
    best_val_loss = tuned["analysis"]["best_val_loss"]
    return StageBSummary(
        tuned=TunedConfiguration(**best, best_val_loss=best_val_loss, model_path=tuned["model_path"]),
        default_arch04_val_loss=default.best_val_loss, beats_default=best_val_loss < default.best_val_loss,
        trials={str(state): int(count) for state, count in study.trials_dataframe()["state"].value_counts().items()})


def plot_search(study):
    """Optimisation history of the study (objective per trial, best so far). Returns the Figure."""
    import matplotlib.pyplot as plt
    import optuna

    trials = study.get_trials(deepcopy=False)
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    for state, marker in ((optuna.trial.TrialState.COMPLETE, "o"), (optuna.trial.TrialState.PRUNED, "x")):
        points = [(t.number, t.value if t.value is not None else t.intermediate_values.get(max(t.intermediate_values, default=0)))
                  for t in trials if t.state == state]
        points = [p for p in points if p[1] is not None]
        if points:
            ax.scatter(*zip(*points), marker=marker, label=state.name.lower())
    complete = sorted((t.number, t.value) for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    if complete:
        best, xs, ys = float("inf"), [], []
        for number, value in complete:
            best = min(best, value)
            xs.append(number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="black", label="best so far")
    ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation L1 loss (m)")
    ax.set_title("Arch_04 search")
    ax.legend()
    return fig


def train_tuned(run: Run, config: StageB, train, val, best: dict[str, Any]) -> dict[str, Any]:
    """Train the best configuration with the stage's full settings as ``Arch_04_tuned``."""
    return train_one(run, "B", config, train, val, name="Arch_04_tuned", arch="Arch_04",
                     arch_kwargs=best["arch_kwargs"], downsampler=best["downsampler"],
                     downsampler_kwargs=best["downsampler_kwargs"], lr=best["lr"])
