"""Parameter profiles (``params/*.yaml``) and each stage's parameters, typed and validated by pydantic.

A profile holds the run's name, the data to prepare (simulated projects and/or HEC-RAS plans, how samples
are cut and plans split) and one section per stage (``A``, ``B``, ``C``, ``D``) whose keys are exactly that
stage notebook's parameters. Unknown keys and ill-typed values are refused with the key and value named.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from floodlib.data.yamlfile import describe_yaml_error
from floodlib.models import list_downsamplers, list_models, resolve_model_name


class ProfileError(ValueError):
    """A profile or a notebook's parameters hold an unknown key or a bad value."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# YAML and papermill give lists where a pair is expected.
Pair = Annotated[tuple[float, float], Field(strict=False)]
IntPair = Annotated[tuple[int, int], Field(strict=False)]


#: Stage B's model, which stage C can name beside the architectures.
TUNED_MODEL = "Arch_04_tuned"
#: Training settings added after runs were made, with the value that trains exactly as before: at that value
#: a setting is left out of its stage's digest (so those runs stay complete), and a model summary written
#: without it means that value.
SETTINGS_ADDED_LATER: dict[str, Any] = {"ring_blend": 0.0}
#: Settings that change how a stage runs but none of its results: left out of the settings a stage records,
#: so a run made with 2 simulation workers is continued with 4, or without progress bars.
NOT_RESULTS: dict[str, tuple[str, ...]] = {"data": ("workers",), "stage": ("progress",)}


def _spec_values(spec) -> dict[str, Any]:
    """A SampleSpec's or SplitSpec's fields as JSON values, numbers of float fields as floats (a YAML 1200 and
    1200.0 make the same spec, and must make the same record)."""
    hints = typing.get_type_hints(type(spec))
    values = {}
    for item in dataclasses.fields(spec):
        value, hint = getattr(spec, item.name), hints[item.name]
        if hint is float:
            value = float(value)
        elif typing.get_origin(hint) is tuple and typing.get_args(hint)[:1] == (float,):
            value = [float(v) for v in value]
        values[item.name] = value
    return values


def content_sha256(path: str | Path) -> str:
    """:func:`floodlib.data.fetch.file_sha256`, or "missing" for a file that is not there (a run's profile whose
    input has gone)."""
    from floodlib.data.fetch import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return "missing"


def _check_models(names: list[str]) -> list[str]:
    return [resolve_model_name(name) for name in names]


def _check_downsampler(name: str) -> str:
    if name not in list_downsamplers():
        raise ValueError(f"unknown downsampler {name!r}; expected one of {list_downsamplers()}")
    return name


class TerrainFetch(Strict):
    """A DEM fetched from a package registry when the run does not hold it yet: one member of a pinned wheel,
    checked by its SHA-256 (see :mod:`floodlib.data.fetch`)."""

    requirement: str  # a pip requirement pinned with '==', e.g. "lidar==0.8.4"
    member: str  # the file's path inside the wheel, e.g. "lidar/data/dem.tif"
    sha256: str  # the file's SHA-256, 64 lowercase hex digits

    @model_validator(mode="after")
    def _valid_source(self) -> "TerrainFetch":
        self.source()
        return self

    def source(self):
        """The :class:`~floodlib.data.fetch.WheelMember` to fetch."""
        from floodlib.data.fetch import WheelMember

        return WheelMember(requirement=self.requirement, member=self.member, sha256=self.sha256)


class TerrainConfig(Strict):
    """``kind: valley`` with :class:`~floodlib.data.terrain.ValleyParams` fields, or ``kind: dem`` with a GeoTIFF:
    its ``path``, or ``fetch`` to download it from a package registry into the run folder (``<run>/terrain/``)."""

    kind: Literal["valley", "dem"] = "valley"
    path: str | None = None
    fetch: TerrainFetch | None = None
    row_offset: int = 0
    col_offset: int = 0
    valley: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> "TerrainConfig":
        if self.kind == "dem" and (self.path is None) == (self.fetch is None):
            raise ValueError("kind 'dem' needs either path (a GeoTIFF) or fetch ({requirement, member, sha256} of "
                             "a wheel that holds it), not " + ("both" if self.path is not None else "neither"))
        if self.kind == "valley" and (self.path is not None or self.fetch is not None):
            raise ValueError("path and fetch name a DEM: they need kind 'dem' (kind 'valley' is procedural)")
        if self.row_offset or self.col_offset:  # kept as fields (0) so that runs recorded with them stay complete
            from floodlib.data.terrain import project_offset_refusal

            raise ValueError(project_offset_refusal(self.row_offset, self.col_offset))
        if self.kind == "dem" and self.valley:
            raise ValueError("valley parameters shape a procedural terrain: they need kind 'valley', not 'dem'")
        if self.kind == "valley":
            self.valley_params()  # refuses an unknown or ill-typed valley field now, not when stage A simulates
        return self

    def valley_params(self):
        """The :class:`~floodlib.data.terrain.ValleyParams` of ``valley`` (ValueError naming a bad field)."""
        from floodlib.data.terrain import ValleyParams

        try:
            return ValleyParams(**self.valley)
        except TypeError as error:
            fields = ", ".join(ValleyParams.__dataclass_fields__)
            raise ValueError(f"valley: {error}; the fields are {fields}") from None
        except ValueError as error:
            raise ValueError(f"valley: {error}") from None


def folder_name(value: str) -> str:
    """``value`` when it can name a folder of the run (a run, or a project under ``data/``); else ValueError."""
    if not value or not all(ch.isalnum() or ch in "-_." for ch in value) or value.startswith("."):
        raise ValueError(f"{value!r} must be a folder name of letters, digits, '-', '_', '.'")
    return value


class ProjectConfig(Strict):
    """One simulated project (see :class:`~floodlib.data.simulate.ProjectSpec`)."""

    name: str
    n_plans: int = Field(ge=1)
    seed: int = 0
    rows: int = Field(default=128, ge=8)
    cols: int = Field(default=128, ge=8)
    terrain: TerrainConfig = Field(default_factory=TerrainConfig)
    duration_s: float = Field(default=16800.0, gt=0)
    peak_discharge_m3s: Pair | None = None
    manning_n: Pair | None = None

    @field_validator("name")
    @classmethod
    def _project_folder(cls, value: str) -> str:
        return folder_name(value)


class HecRasPlanConfig(Strict):
    """One HEC-RAS plan results file (with its terrain GeoTIFF) read into the run's data folder."""

    file: str
    terrain: str | None = None
    area: str | None = None
    project: str | None = None
    plan: str | None = None
    # The plan's units where its file does not state them (no 'Units System' attribute); else left out.
    units: Literal["SI", "US"] | None = None

    @field_validator("units", mode="before")
    @classmethod
    def _units_any_case(cls, value):
        return value.upper() if isinstance(value, str) else value  # as read_hecras takes them

    @field_validator("project")
    @classmethod
    def _project_folder(cls, value: str | None) -> str | None:
        return None if value is None else folder_name(value)


class DataConfig(Strict):
    workers: int = Field(default=2, ge=1)
    simulate: list[ProjectConfig] = Field(default_factory=list)
    hecras: list[HecRasPlanConfig] = Field(default_factory=list)
    samples: dict[str, Any] = Field(default_factory=dict)  # SampleSpec fields
    splits: dict[str, Any] = Field(default_factory=dict)  # SplitSpec fields

    def project_names(self) -> list[str]:
        """The projects the data section prepares: simulated ones, then those of the HEC-RAS plans."""
        from floodlib.data.hecras import project_name_from_file

        names = [project.name for project in self.simulate]
        names += [plan.project or project_name_from_file(plan.file) for plan in self.hecras]
        return list(dict.fromkeys(names))

    def sample_spec(self):
        """The :class:`~floodlib.data.samples.SampleSpec` of ``samples`` (ValueError or TypeError when invalid)."""
        from floodlib.data.samples import SampleSpec

        values = dict(self.samples)
        if "snapshot_times_s" in values:
            values["snapshot_times_s"] = tuple(values["snapshot_times_s"])
        return SampleSpec(**_known_fields(SampleSpec, values))

    def split_spec(self):
        """The :class:`~floodlib.data.dataset.SplitSpec` of ``splits`` (ValueError or TypeError when invalid)."""
        from floodlib.data.dataset import SplitSpec

        return SplitSpec(**_known_fields(SplitSpec, self.splits))


def _known_fields(spec_class, values: dict) -> dict:
    """``values`` when every key is a field of the dataclass ``spec_class``; else a ValueError listing them."""
    import dataclasses

    known = [item.name for item in dataclasses.fields(spec_class)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; {spec_class.__name__} has {known}")
    return values


class ModelOverrides(Strict):
    """What ``per_model`` may set for one architecture instead of its stage's value (null: the stage's)."""

    lr: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    patience: int | None = Field(default=None, ge=1)
    ring_blend: float | None = Field(default=None, ge=0, le=1)


class TrainSettings(Strict):
    epochs: int = Field(default=300, ge=1)  # per model
    lr: float = Field(default=1e-4, gt=0)
    batch_size: int = Field(default=300, ge=1)
    patience: int = Field(default=30, ge=1)
    plateau: bool = False  # the reference's ReduceLROnPlateau
    # fraction of training samples whose ring is blended toward the depth at n (fit's ring_blend): models whose
    # full-domain rollouts close their rings; 0: the reference's training on true rings only
    ring_blend: float = Field(default=0.0, ge=0, le=1)
    downsampler: str = "alternating"
    seed: int = 0
    progress: Literal["auto", "bar", "epoch", "none"] = "auto"
    per_model: dict[str, dict[str, Any]] = Field(default_factory=dict)  # e.g. {"Arch_08": {"lr": 3e-4}}
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"  # auto: bf16 autocast on CUDA
    devices: int | Literal["auto"] = 1  # GPUs (or CPU processes) per node
    num_nodes: int = Field(default=1, ge=1)
    strategy: Literal["auto", "ddp"] = "auto"  # ddp: one process per device (started by floodlib, torchrun or SLURM)

    @field_validator("per_model")
    @classmethod
    def _known_overrides(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        checked = {}
        for name, overrides in value.items():
            if name != TUNED_MODEL:
                _check_models([name])
            if not isinstance(overrides, dict):
                raise ValueError(f"per_model[{name!r}] = {overrides!r} must map settings to values")
            try:
                checked[name] = ModelOverrides.model_validate(overrides).model_dump(exclude_none=True)
            except ValidationError as error:
                problems = []
                for item in error.errors():
                    key = ".".join(str(part) for part in item["loc"])
                    problems.append(f"per_model[{name!r}]: unknown setting {key!r}; expected some of "
                                    f"{sorted(ModelOverrides.model_fields)}" if item["type"] == "extra_forbidden"
                                    else f"per_model[{name!r}].{key} = {item['input']!r}: {item['msg']}")
                raise ValueError("; ".join(problems)) from None
        return checked

    @field_validator("downsampler")
    @classmethod
    def _known_downsampler(cls, value: str) -> str:
        return _check_downsampler(value)

    @field_validator("devices")
    @classmethod
    def _device_count(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError(f"devices={value!r} must be a positive number of devices or 'auto'")
        return value

    @model_validator(mode="after")
    def _machines_need_ddp(self):
        if self.num_nodes > 1 and self.strategy != "ddp":
            raise ValueError(f"num_nodes={self.num_nodes} with strategy={self.strategy!r}: training on several "
                             "machines needs strategy: ddp (each other machine runs `python -m "
                             "floodlib.training.launch --serve RUN_DIR --node-rank K`; see the README)")
        return self


class StageA(TrainSettings):
    """Notebook A: train every architecture on the small split."""

    run_dir: str
    profile: str = "../params/smoke.yaml"  # starts a new run when run_dir has no params.yaml (from notebooks/)
    models: list[str] = Field(default_factory=list_models)
    preview_count: int = Field(default=4, ge=1)  # samples per split in A's preview figures

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: list[str]) -> list[str]:
        return _check_models(value)


class StageB(TrainSettings):
    """Notebook B: tune Arch_04 on the small split with Optuna, then train the best configuration."""

    run_dir: str
    trials: int = Field(default=30, ge=1)
    trial_epochs: int = Field(default=30, ge=1)
    layers: IntPair = (6, 16)
    channels: list[int] = Field(default_factory=lambda: [16, 24, 32, 48])
    attentions: IntPair = (0, 3)
    lr_range: Pair = (1e-4, 3e-3)
    downsamplers: list[str] = Field(default_factory=list_downsamplers)
    # Empty: the run's own SQLite file <run>/B/study.db. Else a database URL (SQLAlchemy's form, as Optuna's
    # RDBStorage takes it) that every worker of the search shares, e.g. postgresql://user@host/optuna for a cluster.
    study_storage: str = ""
    workers: int = Field(default=1, ge=1)  # trial worker processes this stage starts on this machine

    @field_validator("downsamplers")
    @classmethod
    def _known_downsamplers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("the search needs at least one downsampler to choose from; expected some of "
                             f"{list_downsamplers()}")
        return [_check_downsampler(name) for name in value]

    @field_validator("channels")
    @classmethod
    def _channel_choices(cls, value: list[int]) -> list[int]:
        if not value or any(isinstance(c, bool) or c < 1 for c in value):
            raise ValueError(f"{value!r}: expected a list of one or more positive channel counts, e.g. [16, 32]")
        return value

    @model_validator(mode="after")
    def _search_ranges(self) -> "StageB":
        """Refuse, before anything runs, a search range Optuna or Arch_04 would reject only at the first trial."""
        (low_layers, high_layers), (low_att, high_att), (low_lr, high_lr) = self.layers, self.attentions, self.lr_range
        if not 2 <= low_layers <= high_layers:
            raise ValueError(f"layers = {list(self.layers)}: expected [low, high] with 2 <= low <= high (Arch_04 has a "
                             "first and a last convolution at least)")
        if not 0 <= low_att <= high_att:
            raise ValueError(f"attentions = {list(self.attentions)}: expected [low, high] with 0 <= low <= high")
        if low_att > low_layers - 2:
            raise ValueError(f"attentions = {list(self.attentions)} with layers = {list(self.layers)}: Arch_04 fits at "
                             f"most layers - 2 = {low_layers - 2} attention blocks into its fewest layers; lower "
                             f"attentions[0] or raise layers[0]")
        if not 0 < low_lr <= high_lr:
            raise ValueError(f"lr_range = {list(self.lr_range)}: expected [low, high] with 0 < low <= high (the "
                             "learning rate is searched on a log scale)")
        return self

    @field_validator("study_storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        """Refuse, before anything runs, a storage URL the search could not open or workers could not share."""
        if not value:
            return value
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        example = "e.g. 'postgresql://user@host/optuna', 'mysql://user@host/optuna' or 'sqlite:////abs/path/study.db'"
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"not a database URL; expected {example}, or empty for <run>/B/study.db") from None
        try:
            # Loads SQLAlchemy's dialect for the scheme, not the database driver: a driver installed only where
            # the search runs still passes here.
            url.get_dialect()
        except NoSuchModuleError:
            hint = " (SQLAlchemy spells it 'postgresql://')" if url.drivername.split("+")[0] == "postgres" else ""
            raise ValueError(f"unknown database scheme {url.drivername!r}{hint}; expected {example}") from None
        if url.get_backend_name() == "sqlite":
            if not url.database or url.database == ":memory:" or url.database.startswith("file::memory:"):
                raise ValueError("an in-memory SQLite database cannot be shared by worker processes; "
                                 "name a file, e.g. 'sqlite:////abs/path/study.db'")
            if not Path(url.database).is_absolute():
                # The notebook, its workers and a cluster command each run from their own folder.
                raise ValueError("a SQLite file must be given by its absolute path ('sqlite:////abs/path/study.db': "
                                 "four slashes), as each worker resolves a relative one from its own folder")
        return value


class StageC(TrainSettings):
    """Notebook C: train the best four on the big split."""

    run_dir: str
    models: list[str] = Field(default_factory=list)  # empty: the top four of A, Arch_04 replaced by B's tuned one
    count: int = Field(default=4, ge=1)
    # Start each model from the weights stage A trained for it (Arch_04_tuned: stage B's), not from a fresh
    # initialisation: C then continues A's training on the big split instead of repeating its first epochs.
    warm_start: bool = False

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: list[str]) -> list[str]:
        return [name if name == TUNED_MODEL else resolve_model_name(name) for name in value]


class StageD(Strict):
    """Notebook D: evaluate stage C's models on every split (and A's and B's for context, on the held-out tests)."""

    run_dir: str
    context_stages: list[Literal["A", "B"]] = Field(default_factory=lambda: ["A", "B"])
    # The splits the context models are evaluated on: "held_out", the reported tests (test_split, and
    # test_projects when projects are held out), the only ones whose figures show them; "all": every split.
    context_splits: Literal["held_out", "all"] = "held_out"
    splits: list[str] = Field(default_factory=list)  # empty: every split of the run
    test_split: str = "big_test"
    batch_size: int = Field(default=64, ge=1)
    device: str = "auto"
    min_mean_change_m: float = Field(default=1e-3, ge=0)
    wet_thresholds_m: list[Annotated[float, Field(strict=False, gt=0)]] = Field(default_factory=lambda: [0.05, 0.3],
                                                                                min_length=1)
    pages: int = Field(default=2, ge=0)
    samples_per_page: int = Field(default=4, ge=1)
    latency_repeats: int = Field(default=10, ge=1)
    seed: int = 0
    show_viewer: bool = True
    rollout_steps: int = Field(default=3, ge=0)  # 0: no full-domain rollout
    rollout_start_min: float = Field(default=60.0, ge=0)
    rollout_tolerance_mm: float = Field(default=1.0, gt=0)
    rollout_max_iterations: int = Field(default=20, ge=1)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda"):
            raise ValueError(f"unknown device {value!r}; expected 'auto', 'cpu' or 'cuda[:<index>]'")
        return value


STAGES = {"A": StageA, "B": StageB, "C": StageC, "D": StageD}


class Profile(Strict):
    name: str
    data: DataConfig
    A: dict[str, Any] = Field(default_factory=dict)
    B: dict[str, Any] = Field(default_factory=dict)
    C: dict[str, Any] = Field(default_factory=dict)
    D: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        return folder_name(value)

    def settings_record(self, stage: str, *, with_non_results: bool = False) -> dict[str, Any]:
        """What ``stage``'s results depend on in this profile, as JSON values: the data section and the stage's
        own settings with their defaults filled in — not where the run folder lives, nor the settings of
        :data:`NOT_RESULTS` (``with_non_results``: those too, as digests written before they were left out)."""
        settings = validate_stage(stage, {**getattr(self, stage), "run_dir": ""},
                                  where=f"profile {self.name!r}, section {stage}").model_dump(mode="json")
        settings.pop("run_dir", None)
        settings.pop("profile", None)  # stage A's: which profile starts a run from JupyterLab
        for key, before in SETTINGS_ADDED_LATER.items():
            if key in settings and settings[key] == before:
                settings.pop(key)
        data = self.data.model_dump(mode="json")
        if not with_non_results:
            for key in NOT_RESULTS["data"]:
                data.pop(key, None)
            for key in NOT_RESULTS["stage"]:
                settings.pop(key, None)
            # What the input files hold, not only where they lie: a DEM or HEC-RAS file edited in place changes
            # the results as much as another path would.
            # What the input files hold, not where they lie (a copy elsewhere gives the same results; a HEC-RAS
            # file's name stays, as it names the project).
            for project in data["simulate"]:
                if project["terrain"].get("path"):
                    project["terrain"]["sha256"] = content_sha256(project["terrain"].pop("path"))
            for plan in data["hecras"]:
                for key in ("file", "terrain"):
                    if plan.get(key):
                        plan[f"{key}_sha256"] = content_sha256(plan[key])
                        plan[key] = Path(plan[key]).name if key == "file" else None
            # The samples and splits as the specs they make: 1200 and 1200.0, or a default written out, are
            # the same settings.
            data["samples"] = _spec_values(self.data.sample_spec())
            data["splits"] = _spec_values(self.data.split_spec())
        return json.loads(json.dumps({"data": data, stage: settings}, default=str))

    def settings_digest(self, stage: str, *, with_non_results: bool = False) -> str:
        """A digest of :meth:`settings_record`."""
        text = json.dumps(self.settings_record(stage, with_non_results=with_non_results), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def stage_parameters(self, stage: str, run_dir: str | Path) -> dict[str, Any]:
        """The parameters papermill injects into ``stage``'s notebook (validated)."""
        parameters = {**getattr(self, stage), "run_dir": str(run_dir)}
        if stage == "A":
            # The run's own copy, which is what stage A reads (the pipeline writes it first), not the default.
            parameters.setdefault("profile", str(Path(run_dir) / "params.yaml"))
        validate_stage(stage, parameters, where=f"profile {self.name!r}, section {stage}")
        return parameters


def _fields_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The field names of the model that ``loc`` (a pydantic error location, without its last part) reaches
    from ``model``: through nested models, lists and optionals; [] where it reaches no model."""
    kind: Any = model
    for part in loc:
        while typing.get_origin(kind) in (typing.Union, types.UnionType, typing.Annotated):
            kind = next((arg for arg in typing.get_args(kind) if arg is not type(None)), None)
        if isinstance(part, int) and typing.get_origin(kind) in (list, tuple):
            kind = typing.get_args(kind)[0]
        elif isinstance(kind, type) and issubclass(kind, BaseModel) and part in kind.model_fields:
            kind = kind.model_fields[part].annotation
        else:
            return []
    while typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next((arg for arg in typing.get_args(kind) if arg is not type(None)), None)
    return list(kind.model_fields) if isinstance(kind, type) and issubclass(kind, BaseModel) else []


def _format(error: ValidationError, where: str, model: type[BaseModel] | None = None) -> str:
    items = error.errors()
    # A misspelt key is two errors: the key it should be is missing, the one given is unknown. Say it once,
    # as the unknown key with the one it resembles, and first.
    missing = {tuple(item["loc"]): item for item in items if item["type"] == "missing"}
    paired: dict[tuple, tuple] = {}
    for item in items:
        if item["type"] == "extra_forbidden":
            parent, name = tuple(item["loc"][:-1]), str(item["loc"][-1])
            candidates = {str(loc[-1]): loc for loc in missing if loc[:-1] == parent and loc not in paired.values()}
            close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
            if close:
                paired[tuple(item["loc"])] = candidates[close[0]]
                continue
            # else a key with a default, misspelt: the model's own fields say which it resembles
            known = [field for field in _fields_at(model, parent) if field != name]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            if close:
                paired[tuple(item["loc"])] = (*parent, close[0])
    items = sorted(items, key=lambda item: item["type"] != "extra_forbidden")
    lines = []
    for item in items:
        key = ".".join(str(part) for part in item["loc"])
        if tuple(item["loc"]) in paired.values() and item["type"] == "missing":
            continue  # said with the misspelt key
        if not key:  # a check across fields: its message names them and their values
            lines.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
        elif item["type"] == "extra_forbidden":
            meant = paired.get(tuple(item["loc"]))
            lines.append(f"{where}: unknown key {key!r} (value {item['input']!r})"
                         + (f"; did you mean {str(meant[-1])!r}?" if meant else ""))
        elif item["type"] in ("missing", "too_short", "too_long", "tuple_type") and \
                isinstance(item.get("input"), (list, tuple, str)) and (item["type"] != "missing" or
                                                                       isinstance(item["loc"][-1], int)):
            # a pair given with one value, three, or as text: say what a pair is, not which item is missing
            whole = ".".join(str(part) for part in item["loc"] if item["type"] != "missing" or part != item["loc"][-1])
            lines.append(f"{where}: {whole} = {item['input']!r}: expected a pair [low, high]")
        elif item["type"] == "missing":  # its input is the whole mapping that lacks it: not worth repeating
            lines.append(f"{where}: {key}: required, and not given")
        else:
            lines.append(f"{where}: {key} = {item.get('input')!r}: {item['msg']}")
    return "\n".join(lines)


def validate_stage(stage: str, parameters: dict[str, Any], *, where: str) -> BaseModel:
    """The stage's typed config from ``parameters``; ProfileError naming every bad key and value."""
    if stage not in STAGES:
        raise ProfileError(f"{where}: unknown stage {stage!r}; expected one of {list(STAGES)}")
    try:
        return STAGES[stage](**parameters)
    except ValidationError as error:
        raise ProfileError(_format(error, where, STAGES[stage])) from None
    except ValueError as error:  # e.g. an unknown model name
        raise ProfileError(f"{where}: {error}") from None


def _resolve_paths(raw: dict, base: Path) -> None:
    """Make the profile's file paths absolute: "~" is the user's home, a relative path is read from the
    profile's own folder."""
    def resolve(value):
        if not isinstance(value, str) or not value:
            return value
        path = Path(value).expanduser()
        return str((path if path.is_absolute() else base / path).resolve())

    data = raw.get("data")
    if not isinstance(data, dict):
        return
    for project in data.get("simulate") or []:
        if isinstance(project, dict) and isinstance(project.get("terrain"), dict) and "path" in project["terrain"]:
            project["terrain"]["path"] = resolve(project["terrain"]["path"])
    for plan in data.get("hecras") or []:
        if isinstance(plan, dict):
            for key in ("file", "terrain"):
                if key in plan:
                    plan[key] = resolve(plan[key])


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}); the first would be silently dropped", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile; every stage section is checked against its notebook's parameters."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ProfileError(f"{path}: profile does not exist")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ProfileError(f"{path}: not valid YAML: {describe_yaml_error(error)}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping of keys (name, data, A, B, C, D), got {type(raw).__name__}")
    _resolve_paths(raw, path.parent)
    try:
        profile = Profile(**raw)
    except ValidationError as error:
        raise ProfileError(_format(error, str(path), Profile)) from None
    check_data(profile.data, where=str(path))
    for stage in STAGES:
        try:
            profile.stage_parameters(stage, run_dir="<run>")
        except ProfileError as error:
            raise ProfileError(f"{path}: {error}") from None
    check_stages(profile, where=str(path))
    return profile


def check_stages(profile: Profile, *, where: str, stages: tuple[str, ...] | list[str] = ()) -> None:
    """Refuse, before anything runs, stage settings that only a later stage would find wrong: when ``stages``
    (those about to run) are given, plans too few for the splits or too short for the samples; stage D naming a
    split the data section does not make; when ``stages`` (those about to run) include B, stage A without
    Arch_04 (B compares its tuned Arch_04 with A's); when they include C with ``warm_start``, a C model that
    stage A does not train or a downsampler other than A's."""
    if stages:  # every stage reads the splits' samples; stage A would find these only after simulating
        _check_plans_suffice(profile.data, where=where)
    a = validate_stage("A", {**profile.A, "run_dir": ""}, where=where)
    if "B" in stages and "Arch_04" not in a.models:
        raise ProfileError(f"{where}: A.models = {a.models}: stage B tunes Arch_04 and compares it with stage A's "
                           "Arch_04, so A must train it; add Arch_04 to A.models")
    if "C" in stages:
        c = validate_stage("C", {**profile.C, "run_dir": ""}, where=where)
        untrained = [name for name in c.models if name != TUNED_MODEL and name not in a.models]
        if c.warm_start and untrained:
            raise ProfileError(f"{where}: C.warm_start = true and C.models = {c.models}: {untrained} not in A.models "
                               f"{a.models}, so stage A leaves no weights to start them from; add them to A.models "
                               "or set C.warm_start: false")
        if c.warm_start and c.downsampler != a.downsampler:
            raise ProfileError(f"{where}: C.warm_start = true with C.downsampler = {c.downsampler!r} but A.downsampler = "
                               f"{a.downsampler!r}: a model starts from A's weights only with A's downsampler; make them "
                               "the same or set C.warm_start: false")
    d = validate_stage("D", {**profile.D, "run_dir": ""}, where=where)
    projects = profile.data.project_names()
    if not projects:
        return
    known = profile.data.split_spec().split_names(projects)
    for field, names in (("test_split", [d.test_split]), ("splits", d.splits)):
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ProfileError(f"{where}: D.{field}: unknown split(s) {unknown}; this profile's data makes {known}")


def _check_hecras_names(data: DataConfig, *, where: str) -> None:
    """Refuse HEC-RAS plans whose project takes a file name that is no folder name, whose project is also a
    simulated one, or that would be stored as the same plan of the same project (one would replace the
    other): several events of one model, each ``Model.p01.hdf`` in its own folder, are named by their ShortID."""
    from floodlib.data.hecras import hecras_names, project_name_from_file
    from floodlib.data.store import SimulationFileError, plan_file_name

    simulated = {project.name for project in data.simulate}
    seen: dict[tuple[str, str], int] = {}
    for index, plan in enumerate(data.hecras):
        field = f"{where}: data.hecras.{index}"
        if plan.project is None:
            derived = project_name_from_file(plan.file)
            try:
                folder_name(derived)
            except ValueError:
                raise ProfileError(
                    f"{field}.file = {plan.file}: the project name {derived!r} taken from the file's name must be a "
                    "folder name of letters, digits, '-', '_', '.'; give the plan a `project:`") from None
        try:
            project, name = hecras_names(plan.file, area=plan.area, project=plan.project, plan=plan.plan)
        except SimulationFileError:
            continue  # preparing the data names what is wrong with the file, under the same field
        if project in simulated:
            raise ProfileError(f"{field}: project {project!r} is also a simulated project (data.simulate), whose "
                               "folder the simulator keeps; give the HEC-RAS plan a `project:` of its own")
        key = (project, plan_file_name(name))
        if key in seen:
            first = data.hecras[seen[key]]
            raise ProfileError(
                f"{field} ({plan.file}) and data.hecras.{seen[key]} ({first.file}) are both plan {name!r} of project "
                f"{project!r}, so one would replace the other in data/{project}/; give one of them a `plan:` (or "
                "`project:`) of its own")
        seen[key] = index


def check_data(data: DataConfig, *, where: str) -> None:
    """Refuse, before anything runs, sample and split settings that cannot work with the profile's projects:
    an unknown or ill-typed SampleSpec or SplitSpec field, and ``splits.test_projects``,
    ``splits.small_project`` or ``samples.projects`` naming a project the profile does not prepare."""
    for key, build in (("samples", data.sample_spec), ("splits", data.split_spec)):
        try:
            build()
        except (TypeError, ValueError) as error:
            raise ProfileError(f"{where}: data.{key}: {error}") from None
    patch = data.sample_spec().patch_cells
    for index, project in enumerate(data.simulate):
        small = [(key, getattr(project, key)) for key in ("rows", "cols") if getattr(project, key) < patch]
        if small:
            key, value = small[0]
            raise ProfileError(f"{where}: data.simulate.{index}.{key} = {value}: a grid narrower than one patch "
                               f"(data.samples.patch_cells = {patch}) gives no samples; expected rows and cols >= {patch}")
        source = project.terrain.path
        if source is not None and not Path(source).is_file():
            raise ProfileError(f"{where}: data.simulate.{index}.terrain.path = {source}: "
                               + ("a folder" if Path(source).is_dir() else "no such file") + "; expected a "
                               "GeoTIFF DEM (a relative path is read from the profile's folder)")
    for index, plan in enumerate(data.hecras):
        for key in ("file", "terrain"):
            source = getattr(plan, key)
            if source is not None and not Path(source).is_file():
                raise ProfileError(f"{where}: data.hecras.{index}.{key} = {source}: no such file; expected "
                                   + ("a HEC-RAS plan results file (.p01.hdf ...)" if key == "file" else "a GeoTIFF")
                                   + " (a relative path is read from the profile's folder)")
    simulated = [project.name for project in data.simulate]
    twice = sorted({name for name in simulated if simulated.count(name) > 1})
    if twice:
        raise ProfileError(f"{where}: data.simulate: project name(s) {twice} given more than once; each simulated "
                           "project needs its own name (its own folder of plans)")
    _check_hecras_names(data, where=where)
    names = data.project_names()
    if not names:
        return
    try:
        data.split_spec().check_projects(names, where=f"{where}: data.splits")
    except ValueError as error:
        raise ProfileError(str(error)) from None
    unknown = [name for name in data.sample_spec().projects if name not in names]
    if unknown:
        raise ProfileError(f"{where}: data.samples.projects: unknown project(s) {unknown}; the projects are {names}")


def _check_plans_suffice(data: DataConfig, *, where: str) -> None:
    """Refuse, before any plan is simulated, simulated plans too short for the samples' snapshots and projects
    with too few plans for the splits (both would otherwise be found after the simulation)."""
    from floodlib.data.dataset import split_plans
    from floodlib.data.hecras import project_name_from_file

    from floodlib.data.simulate.spec import DEFAULT_OUTPUT_INTERVAL_S as interval

    def off_grid(value: float) -> bool:
        return abs(value / interval - round(value / interval)) > 1e-9

    samples = data.sample_spec()
    for index, project in enumerate(data.simulate):
        own = samples.for_project(project.name)
        field = f"{where}: data.simulate.{index}.duration_s = {project.duration_s:g}"
        if off_grid(project.duration_s):
            raise ProfileError(f"{field}: not a whole number of the simulator's output interval ({interval:g} s); "
                               f"expected a multiple of {interval:g} s")
        section = f"data.samples.projects.{project.name}" if project.name in samples.projects else "data.samples"
        times = {"delta_t_s": [own.delta_t_s]}
        times.update({"snapshot_every_s": [own.snapshot_every_s]} if own.snapshot_every_s > 0
                     else {"snapshot_times_s": list(own.snapshot_times_s)})
        for key, values in times.items():
            bad = [value for value in values if off_grid(value)]
            if bad:
                key_section = "data.samples" if key == "delta_t_s" else section
                raise ProfileError(f"{where}: {key_section}.{key}: {bad[0]:g} s is not a multiple of the output interval "
                                   f"({interval:g} s) of simulated project {project.name!r}, whose frames are the only "
                                   "times a sample can take")
        if own.snapshot_every_s > 0:
            if project.duration_s < own.delta_t_s:
                raise ProfileError(f"{field}: the plans of project {project.name!r} end before the first sample's "
                                   f"target (delta_t_s = {own.delta_t_s:g} s after the start); expected at least "
                                   f"{own.delta_t_s:g} s")
            continue
        latest = max(own.snapshot_times_s)
        if latest + own.delta_t_s > project.duration_s + 1e-6:
            raise ProfileError(f"{field}: the samples of project {project.name!r} need plans of at least "
                               f"{latest + own.delta_t_s:g} s (the last snapshot, {latest:g} s, plus delta_t_s = "
                               f"{own.delta_t_s:g} s, data.samples); lengthen the plans or take earlier snapshots")
    counts: dict[str, int] = {}
    for project in data.simulate:
        counts[project.name] = project.n_plans
    for plan in data.hecras:
        name = plan.project or project_name_from_file(plan.file)
        counts[name] = counts.get(name, 0) + 1
    try:
        split_plans({name: [Path(name) / f"plan_{i:03d}" for i in range(n)] for name, n in counts.items()},
                    data.split_spec())
    except ValueError as error:
        raise ProfileError(f"{where}: data.splits: {error} (the profile's projects: "
                           + ", ".join(f"{name} {n} plan(s)" for name, n in counts.items()) + ")") from None
