"""A run folder ``outputs/<run>/``: its resolved profile (``params.yaml``), one folder per stage whose
``summary.json`` marks it complete and records the earlier results it was made from, and the run's data.

Everything that reads or writes a run — the pipeline's stages, evaluation, the viewer — goes through here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from floodlib.data.dataset import PatchDataset, SplitSpec, discover_plans, load_splits
from floodlib.data.samples import SampleSpec
from floodlib.data.store import atomic_json, atomic_write
from floodlib.environment import environment
from floodlib.runs.profile import STAGES, Profile, ProfileError, load_profile
from floodlib.runs.summaries import SUMMARIES, StageSummary

PROFILE_FILE = "params.yaml"
SUMMARY_FILE = "summary.json"


@dataclass
class Run:
    """A run folder ``outputs/<run>/``: the resolved profile first, then one folder per stage."""

    run_dir: Path
    profile: Profile

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def terrain_dir(self) -> Path:
        """Where DEMs fetched for the run's simulated projects are kept (``terrain.fetch``)."""
        return self.run_dir / "terrain"

    def sample_spec(self) -> SampleSpec:
        try:
            return self.profile.data.sample_spec()
        except (TypeError, ValueError) as error:
            raise ProfileError(f"{self.run_dir / PROFILE_FILE}: data.samples: {error}") from None

    def split_spec(self) -> SplitSpec:
        try:
            return self.profile.data.split_spec()
        except (TypeError, ValueError) as error:
            raise ProfileError(f"{self.run_dir / PROFILE_FILE}: data.splits: {error}") from None


def write_profile(profile: Profile, run_dir: str | Path) -> Path:
    """Write the resolved profile as ``run_dir/params.yaml`` (the first thing a run writes)."""
    text = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)

    def write(temporary):
        Path(temporary).write_text(text)

    return atomic_write(Path(run_dir) / PROFILE_FILE, write)


def open_run(run_dir: str | Path, profile: str | Path = "") -> Run:
    """The run at ``run_dir``; a new one is started from ``profile`` when the folder has no params.yaml."""
    run_dir = Path(run_dir).expanduser()
    params = run_dir / PROFILE_FILE
    if not params.exists():
        if not profile:
            raise FileNotFoundError(f"{run_dir}: no {PROFILE_FILE}; start the run with `python -m floodlib.pipeline "
                                    "<profile>` first (open_run(run_dir, profile) starts one from a profile)")
        write_profile(load_profile(profile), run_dir)
    return Run(run_dir=run_dir, profile=load_profile(params))


class RunError(ValueError):
    """A run folder lacks what is asked of it: a stage's results are missing, or its summary is unusable."""


def _run_dir(run: Run | str | Path) -> Path:
    return run.run_dir if isinstance(run, Run) else Path(run)


def read_summary(run: Run | str | Path, stage: str) -> StageSummary:
    """Stage ``stage``'s summary, checked against its type (:mod:`floodlib.runs.summaries`).

    FileNotFoundError when the stage has not completed; RunError naming the file and the field when the
    summary is not valid JSON or not what the stage writes.
    """
    path = _run_dir(run) / stage / SUMMARY_FILE
    if stage not in SUMMARIES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {list(SUMMARIES)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: stage {stage} has not completed in this run; run it first")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{path}: not valid JSON ({error}); run stage {stage} again with --force") from None
    try:
        return SUMMARIES[stage].model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc']) or '(top level)'}: {item['msg']}"
                             for item in error.errors()[:5])
        raise RunError(f"{path}: not stage {stage}'s summary ({problems}); run stage {stage} again with --force") \
            from None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_summary(run: Run, summary: StageSummary) -> Path:
    """Write the stage's summary.json last: its presence marks the stage complete.

    It records what the stage ran with (``environment``: :func:`floodlib.environment.environment`) and which
    results of the earlier stages it was made from (``upstream``: a digest of each earlier stage's
    summary.json), so a stage redone later makes this one stale (:func:`stale_upstream`).
    """
    if not isinstance(summary, StageSummary):
        raise TypeError(f"write_summary takes a stage summary of floodlib.runs.summaries, got {type(summary).__name__}")
    stage = summary.stage
    order = list(STAGES)
    upstream = {earlier: _digest(run.stage_dir(earlier) / SUMMARY_FILE) for earlier in order[:order.index(stage)]
                if (run.stage_dir(earlier) / SUMMARY_FILE).exists()}
    record = summary.model_copy(update={"upstream": upstream, "settings": run.profile.settings_digest(stage),
                                        "settings_record": run.profile.settings_record(stage),
                                        "environment": environment()})
    return atomic_json(record.model_dump(mode="json"), run.stage_dir(stage) / SUMMARY_FILE)


def stale_upstream(run_dir: str | Path, stage: str) -> list[str]:
    """The earlier stages whose results changed (or vanished) since ``stage`` was completed from them.

    [] when ``stage`` has not completed; RunError naming the file when its summary is unreadable."""
    run_dir = Path(run_dir)
    if not (run_dir / stage / SUMMARY_FILE).exists():
        return []
    recorded = read_summary(run_dir, stage).upstream
    return [earlier for earlier, digest in recorded.items()
            if not (run_dir / earlier / SUMMARY_FILE).exists() or _digest(run_dir / earlier / SUMMARY_FILE) != digest]


def settings_differences(recorded: dict[str, Any], current: dict[str, Any], *, most: int = 4) -> list[str]:
    """``key: recorded value -> current value`` for each setting that differs, keys dotted (``data.splits.
    test_plans``); at most ``most`` of them, then how many more. [] when nothing was recorded."""
    if not recorded:
        return []
    differing: list[str] = []

    def shown(value: Any) -> str:
        text = json.dumps(value, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    def walk(before: Any, after: Any, key: str) -> None:
        if isinstance(before, dict) and isinstance(after, dict):
            for name in sorted(set(before) | set(after)):
                walk(before.get(name, "(unset)"), after.get(name, "(unset)"), f"{key}.{name}" if key else name)
        elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
            for index, (one, other) in enumerate(zip(before, after)):
                walk(one, other, f"{key}[{index}]")
        elif isinstance(before, list) and isinstance(after, list):
            differing.append(f"{key}: {shown(before)} -> {shown(after)}")
        elif before != after:
            differing.append(f"{key}: {shown(before)} -> {shown(after)}")

    walk(recorded, current, "")
    return differing[:most] + ([f"and {len(differing) - most} more"] if len(differing) > most else [])


def changed_settings(run_dir: str | Path, stages: list[str], profile: Profile, *, most: int = 6) -> list[str]:
    """The settings ``profile`` gives otherwise than the completed ``stages`` were made with, each once with
    the stages it concerns (``data.splits.test_plans: 4 -> 1 (stages A, B, C)``): at most ``most``, then how
    many more. Stages made before settings were recorded contribute nothing."""
    concerned: dict[str, list[str]] = {}
    for stage in stages:
        if not (Path(run_dir) / stage / SUMMARY_FILE).exists():
            continue
        summary = read_summary(run_dir, stage)
        for item in settings_differences(summary.settings_record, profile.settings_record(stage), most=10**6):
            concerned.setdefault(item, []).append(stage)
    items = [f"{item} (stage{'s' if len(which) > 1 else ''} {', '.join(which)})" for item, which in concerned.items()]
    return items[:most] + ([f"and {len(items) - most} more"] if len(items) > most else [])


#: What :func:`stage_state` finds a stage to be.
STAGE_STATES = ("missing", "complete", "invalid", "stale", "changed")


def stage_state(run_dir: str | Path, stage: str, profile: Profile | None = None) -> tuple[str, str]:
    """Whether ``stage`` of the run is complete, and if not why: ("missing", ""), ("complete", ""),
    ("invalid", what is wrong with its summary), ("changed", ...) when ``profile``'s settings for it differ
    from those it was made with, else ("stale", which earlier results changed since)."""
    run_dir = Path(run_dir)
    path = run_dir / stage / SUMMARY_FILE
    if not path.exists():
        return "missing", ""
    try:
        summary = read_summary(run_dir, stage)
        stale = stale_upstream(run_dir, stage)
    except RunError as error:
        return "invalid", str(error)
    # Other settings first: a stage both made with other settings and from earlier results since redone (a
    # changed split, A redone alone) must not pass for merely stale, which a run redoes without --force.
    if profile is not None and summary.settings and summary.settings not in (
            profile.settings_digest(stage), profile.settings_digest(stage, with_non_results=True)):
        differing = settings_differences(summary.settings_record, profile.settings_record(stage))
        return "changed", ("made with other settings: " + "; ".join(differing) if differing
                           else f"made with other settings (data or {stage} section of the profile; the stage was "
                                "made before stages recorded their settings, so which cannot be said, and "
                                "data.workers and progress count too)")
    if stale:
        return "stale", f"made from earlier results of stage {', '.join(stale)}"
    return "complete", ""


def splits(run: Run, names: list[str] | None = None) -> dict[str, PatchDataset]:
    """The run's datasets by split name (see :func:`floodlib.data.dataset.split_plans`); ``test_projects`` and
    ``small_project`` naming a project the data folder lacks are a ProfileError naming the field."""
    spec = run.split_spec()
    try:
        spec.check_projects(discover_plans(run.data_dir), where=f"{run.run_dir / PROFILE_FILE}: data.splits")
    except ValueError as error:
        raise ProfileError(str(error)) from None
    return load_splits(run.data_dir, sample_spec=run.sample_spec(), split_spec=spec, names=names)
