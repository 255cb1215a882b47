"""Evaluation: RAE against the no-change baseline and other metrics, figures, and a run folder's report.

- :mod:`floodlib.evaluation.metrics` — per-sample RAE, MAE, RMSE, wet/dry CSI, split summaries;
- :mod:`floodlib.evaluation.figures` — static figures (one sample, prediction pages, boxplots, comparison),
  shared with the prediction viewer;
- :mod:`floodlib.evaluation.run` — a run folder's models on every split, pages of their predictions;
- :mod:`floodlib.evaluation.report` — figures per model and split (CSV), headlines, stage D's summary;
- :mod:`floodlib.evaluation.compare` — runtime, size and accuracy side by side;
- :mod:`floodlib.evaluation.rollout` — a model rolled out over whole held-out plans (ring closure), against
  the solver hour by hour.

A run folder's models themselves are :func:`floodlib.runs.run_models`' (re-exported here).

>>> models = run_models("outputs/smoke")                  # stage C's models, A's and B's for context
>>> samples = evaluate_models(models, stages.splits(run))  # one row per model, split and sample
>>> summary_table(samples).xs("big_test", level="split")
"""

from floodlib.evaluation.figures import (SampleView, figure_png, format_rae, plot_comparison, plot_rae_boxplots,
                                         prediction_page, sample_figure, view_sample)
from floodlib.evaluation.metrics import (MetricSpec, evaluate_dataset, predict_dataset, resolve_device,
                                         sample_metrics, summarise)
from floodlib.evaluation.compare import compare_models, inference_latency, measured_on
from floodlib.evaluation.report import (REFERENCE_MEDIAN_RAE, SPLIT_DESCRIPTIONS, EvaluationError, headline,
                                        headline_text, read_sample_metrics, report_summary, reported_splits,
                                        save_metrics, save_table, summary_table)
from floodlib.evaluation.rollout import (PlanRollout, plot_convergence, plot_rollout_maps, plot_rollout_models,
                                         plot_rollout_rae, plot_volume, roll_out_models, roll_out_plans,
                                         rollout_comparison, rollout_summary, rollout_table, rollout_text)
from floodlib.evaluation.run import choose_samples, context_splits_of, evaluate_models, prediction_pages
from floodlib.runs import RunModel, run_models

__all__ = [
    "EvaluationError", "MetricSpec", "PlanRollout", "plot_convergence", "plot_rollout_maps", "plot_rollout_models",
    "plot_rollout_rae", "plot_volume", "roll_out_models", "roll_out_plans", "rollout_comparison", "rollout_summary",
    "rollout_table", "rollout_text", "REFERENCE_MEDIAN_RAE", "RunModel", "SPLIT_DESCRIPTIONS", "SampleView",
    "choose_samples", "compare_models", "context_splits_of", "measured_on", "evaluate_dataset", "evaluate_models", "figure_png", "format_rae", "headline",
    "headline_text", "inference_latency", "plot_comparison", "plot_rae_boxplots", "predict_dataset",
    "prediction_page", "prediction_pages", "read_sample_metrics", "report_summary", "reported_splits",
    "resolve_device", "run_models", "sample_figure", "sample_metrics", "save_metrics", "save_table", "summarise",
    "summary_table", "view_sample",
]
