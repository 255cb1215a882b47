"""The stage contract: what each stage's ``summary.json`` holds, typed, and what later stages read from it.

A stage writes one of these objects as its last act (:func:`floodlib.runs.write_summary`): its presence
marks the stage complete. Later stages, evaluation and the viewer read it back through
:func:`floodlib.runs.read_summary`, which checks it against the same type — a summary that is not valid
JSON, or lacks a field, is an error naming the file and the field, never a KeyError deep in a notebook.
The JSON is the objects' own (``model_dump``), so files written before these types existed read back alike.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Contract(BaseModel):
    """A part of a stage summary: known fields only; JSON's numbers, strings and lists as they come."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RankedModel(Contract):
    """One trained model of a stage's ranking (A and C): how it trained, where its weights are."""

    name: str
    arch: str
    best_val_loss: float  # L1, m
    baseline_val_loss: float  # the no-change prediction's, m
    skill: float  # 1 - best / baseline
    beats_baseline: bool
    best_epoch: int
    epochs_run: int
    parameters: int
    seconds_per_epoch: float  # median time of an epoch (training and validation), s
    model_path: str  # relative to the stage folder

    @classmethod
    def from_training(cls, summary: dict[str, Any]) -> "RankedModel":
        """The row of a model from the summary ``fit`` wrote beside it (``models/<name>/summary.json``)."""
        analysis = summary["analysis"]
        return cls(name=summary["name"], arch=summary["arch"], best_val_loss=analysis["best_val_loss"],
                   baseline_val_loss=analysis["baseline_val_loss"], skill=analysis["skill"],
                   beats_baseline=analysis["beats_baseline"], best_epoch=analysis["best_epoch"],
                   epochs_run=analysis["epochs_run"], parameters=summary["parameters"],
                   seconds_per_epoch=summary["seconds_per_epoch"], model_path=summary["model_path"])


class StageSummary(Contract):
    """What every stage summary records besides its own results: the stage, the digests of the earlier
    stages' summaries it was made from (``upstream``) and of the profile settings it was made with
    (``settings``: the data section and the stage's own; empty in summaries written before it was recorded),
    both filled in by ``write_summary``, as are those settings themselves (``settings_record``, so a profile
    that differs is told which keys; empty in summaries written before it was recorded) and ``environment``:
    what the stage ran with (floodlib's version and commit, Python, the libraries, CPU and GPU:
    :func:`floodlib.environment.environment`; empty in summaries written before it was recorded)."""

    stage: str
    upstream: dict[str, str] = Field(default_factory=dict)
    settings: str = ""
    settings_record: dict[str, Any] = Field(default_factory=dict)
    environment: dict[str, Any] = Field(default_factory=dict)


class StageASummary(StageSummary):
    """Stage A: every architecture trained on the small split, best first."""

    stage: Literal["A"] = "A"
    ranking: list[RankedModel] = Field(min_length=1)
    splits: dict[str, dict[str, Any]]  # the splits' summaries (SplitSummary.to_dict)


class TunedConfiguration(Contract):
    """Stage B's best Arch_04: the configuration the search found and the model trained with it."""

    arch: Literal["Arch_04"] = "Arch_04"
    arch_kwargs: dict[str, int]  # layers, channels, attentions
    downsampler: str
    downsampler_kwargs: dict[str, int]
    lr: float
    trial: int  # the search's trial number
    trial_val_loss: float
    best_val_loss: float  # of the model trained with the configuration
    model_path: str  # relative to B/


class StageBSummary(StageSummary):
    """Stage B: the Optuna search over Arch_04 and the tuned model."""

    stage: Literal["B"] = "B"
    tuned: TunedConfiguration
    default_arch04_val_loss: float  # stage A's Arch_04, for comparison
    beats_default: bool
    trials: dict[str, int]  # trials by state (COMPLETE, PRUNED, ...)


class BigModel(Contract):
    """A model stage C trains: an architecture by name, or Arch_04 with B's tuned configuration."""

    name: str
    arch: str
    arch_kwargs: dict[str, int] = Field(default_factory=dict)
    downsampler: str | None = None  # None: the stage's downsampler
    downsampler_kwargs: dict[str, int] = Field(default_factory=dict)
    lr: float | None = None  # None: the stage's (or per_model's) learning rate


class StageCSummary(StageSummary):
    """Stage C: the chosen models trained on the big split, best first."""

    stage: Literal["C"] = "C"
    ranking: list[RankedModel] = Field(min_length=1)
    models: list[BigModel]
    splits: dict[str, dict[str, Any]]


class Headline(Contract):
    """The best stage model on one held-out split, and whether every one beats predicting no change."""

    stage: str
    split: str
    tests: str  # what the split tests, in words
    best_model: str  # <stage>/<name>: the lowest median per-sample RAE (the reference's measure)
    best_median_rae: float
    best_pooled_rae: float  # best_model's pooled RAE, which another model's may undercut (see pooled_rae)
    pooled_rae: dict[str, float]  # every model of the stage
    all_beat_baseline: bool
    reference_median_rae: float
    reference_note: str


class RolloutHeadline(Contract):
    """A stage C model rolled out over every held-out plan's whole domain with ring closure."""

    model: str
    plans: int
    steps: int  # closed steps over all plans
    pooled_rae_by_step: dict[int, float | None]  # full-domain RAE k steps after the start, every plan pooled
    plans_by_step: dict[int, int] | None = None  # plans reaching step k (shorter ones end sooner); None: not recorded
    pooled_rae: float | None = None  # over every plan and step: how stage D orders the models it rolls out
    one_step_rae: float | None  # one step from the solver's depth, full domain, pooled
    one_step_rae_by_split: dict[str, float | None]
    closed_rae_interiors: float | None  # the same, over the standard grid's patch interiors
    patch_rae_true_rings: float | None  # the same model given the true rings, same cells
    closed_over_true_rings: float | None
    converged_fraction: float
    converged_within_20_fraction: float
    median_passes: float
    max_passes: int
    max_iterations: int
    # (surrogate - solver) / solver water volume after each plan's last step, the plans' volumes added up
    # (one plan's excess offsets another's shortfall) ...
    volume_error_last_step: float | None
    # ... per plan: the median |error| and the range; per project (its plans added up). None in summaries
    # written before these were recorded.
    volume_error_median_abs: float | None = None
    volume_error_range: list[float] | None = None
    volume_error_by_project: dict[str, float | None] | None = None


class StageDSummary(StageSummary):
    """Stage D: the headline of the test split, one per reported held-out split, the figures per model and
    split, the runtime / size / accuracy comparison, and full-domain rollouts: ``rollouts`` of every C model,
    closest to the solver first, and ``rollout``, the first of them (the one whose maps stage D draws)."""

    stage: Literal["D"] = "D"
    headline: Headline
    headlines: dict[str, Headline]
    table: list[dict[str, Any]]
    comparison: list[dict[str, Any]] | None = None
    rollout: RolloutHeadline | None = None
    rollouts: list[RolloutHeadline] | None = None


SUMMARIES: dict[str, type[StageSummary]] = {"A": StageASummary, "B": StageBSummary, "C": StageCSummary,
                                            "D": StageDSummary}
