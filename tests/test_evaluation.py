"""Evaluation: metrics against known answers, a run folder's evaluation (stage D) and its bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from floodlib.evaluation import (EvaluationError, MetricSpec, context_splits_of, evaluate_dataset, evaluate_models, headline,
                                 headline_text, reported_splits, run_models, sample_metrics, summarise,
                                 view_sample)
from floodlib.models import create_model
from floodlib.pipeline import stages
from floodlib.pipeline.runner import StageFailed, run_pipeline
from floodlib.training import CheckpointError, save_model


def _metrics_frame(prediction, truth, depth_now, spec=MetricSpec()):
    return pd.DataFrame(sample_metrics(prediction, truth, depth_now, spec=spec))


def test_rae_of_known_predictions():
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 0.2, size=(3, 32, 32))
    depth = np.abs(rng.normal(0.5, 0.3, size=(3, 32, 32)))
    assert np.allclose(sample_metrics(np.zeros_like(truth), truth, depth)["rae"], 1.0)  # the no-change baseline
    assert np.allclose(sample_metrics(truth, truth, depth)["rae"], 0.0)
    assert np.allclose(sample_metrics(2 * truth, truth, depth)["rae"], 1.0)
    half = sample_metrics(0.5 * truth, truth, depth)
    np.testing.assert_allclose(half["rae"], 0.5)
    np.testing.assert_allclose(half["abs_error_sum_m"], 0.5 * np.abs(truth).sum(axis=(1, 2)))
    np.testing.assert_allclose(half["squared_error_sum_m2"], 0.25 * (truth ** 2).sum(axis=(1, 2)))
    assert list(half["cells"]) == [1024] * 3


def test_a_barely_changing_sample_is_flagged_not_dropped():
    truth = np.zeros((3, 4, 4))
    truth[0] = 0.5
    truth[1, 0, 0] = 0.01  # mean |change| 0.625 mm, below the 1 mm default
    prediction = np.full((3, 4, 4), 0.01)
    metrics = sample_metrics(prediction, truth, np.ones((3, 4, 4)))
    assert list(metrics["small_denominator"]) == [False, True, True]
    assert metrics["rae"][2] == np.inf  # a change predicted where there is none: no finite RAE
    np.testing.assert_allclose(metrics["rae"][1], 0.15 / 0.01)
    summary = summarise(pd.DataFrame(metrics))
    assert summary["samples"] == 3 and summary["small_denominator"] == 2
    # Pooled over every sample, the flagged ones included; the distribution over the meaningful one only.
    np.testing.assert_allclose(summary["pooled_rae"], (0.49 * 16 + 0.15 + 0.16) / (0.5 * 16 + 0.01))
    np.testing.assert_allclose(summary["median_rae"], 0.49 / 0.5)
    np.testing.assert_allclose(summary["mae_m"], (0.49 * 16 + 0.15 + 0.16) / 48)
    np.testing.assert_allclose(summary["baseline_mae_m"], (0.5 * 16 + 0.01) / 48)
    assert sample_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))["rae"][0] == 0.0


def test_wet_dry_agreement_counts_cells():
    depth = np.zeros((1, 2, 3))
    truth = np.array([[[0.4, 0.4, 0.0], [0.1, 0.0, 0.0]]])
    prediction = np.array([[[0.4, 0.2, 0.35], [0.0, 0.0, 0.06]]])
    metrics = sample_metrics(prediction, truth, depth, spec=MetricSpec(wet_thresholds_m=(0.05, 0.3)))
    # 0.05 m: wet truly at (0,0) (0,1) (1,0); predicted wet at (0,0) (0,1) (0,2) (1,2).
    assert (metrics["hits_0.05m"][0], metrics["misses_0.05m"][0], metrics["false_alarms_0.05m"][0]) == (2, 1, 2)
    # 0.3 m: wet truly at (0,0) (0,1); predicted at (0,0) (0,2).
    assert (metrics["hits_0.3m"][0], metrics["misses_0.3m"][0], metrics["false_alarms_0.3m"][0]) == (1, 1, 1)
    summary = summarise(pd.DataFrame(metrics), MetricSpec(wet_thresholds_m=(0.05, 0.3)))
    assert summary["csi_0.05m"] == pytest.approx(2 / 5) and summary["csi_0.3m"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("bad, message", [
    ({"min_mean_change_m": -1.0}, "min_mean_change_m=-1.0"),
    ({"wet_thresholds_m": (0.0,)}, "wet_thresholds_m=(0.0,)"),
    ({"wet_thresholds_m": ()}, "must be positive depths"),
])
def test_metric_spec_refuses_bad_values(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MetricSpec(**bad)


def test_batched_evaluation_matches_one_sample_at_a_time(tiny_run):
    run = stages.open_run(tiny_run)
    test = stages.splits(run, ["big_test"])["big_test"]
    torch.manual_seed(0)
    model = create_model("Arch_02").eval()
    rows = evaluate_dataset(model, test, batch_size=3, device="cpu")
    assert len(rows) == len(test) > 0
    for item in range(len(test)):
        view = view_sample(model, test, item)
        assert rows.loc[item, "rae"] == pytest.approx(view.rae, rel=1e-5)
        info = test.sample_info(item)
        assert (rows.loc[item, "plan"], rows.loc[item, "frame"], rows.loc[item, "row"]) == \
            (info["plan"], info["frame"], info["row"])
        # the label says when the sample is drawn flipped (the reference's snapshot rule), as the maps show it
        flipped = {1: "anti-diagonal reflection", 2: "reverse rows", 3: "reverse columns"}.get(info["transform"])
        assert (f"shown with {flipped}" in view.label()) if flipped else ("shown with" not in view.label())
    assert {test.sample_info(item)["transform"] for item in range(len(test))} - {0}  # some are flipped
    # a scale bar on the depth panel: 32 cells of 10 m, 50 m
    import matplotlib

    matplotlib.use("Agg")
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    from floodlib.evaluation.figures import sample_figure

    assert view.cell_size_m == 10.0
    bars = [a for a in sample_figure(view).axes[1].artists if isinstance(a, AnchoredSizeBar)]
    assert [bar.txt_label.get_text() for bar in bars] == ["50 m"]


def test_splits_taken_from_one_pass_over_all_plans_equal_each_split_evaluated_alone(tiny_run):
    run = stages.open_run(tiny_run)
    datasets = stages.splits(run, ["small_train", "big_test", "big_val"])
    models = run_models(tiny_run, ["C"], context=[])
    samples = evaluate_models(models[:1], datasets, device="cpu", log=None)
    for name, dataset in datasets.items():
        alone = evaluate_dataset(models[0].model, dataset, device="cpu")
        mine = samples[samples["split"] == name].reset_index(drop=True)
        assert list(mine["sample"]) == list(range(len(dataset)))
        assert list(mine["plan"]) == list(alone["plan"]) and list(mine["col"]) == list(alone["col"])
        np.testing.assert_allclose(mine["rae"], alone["rae"], rtol=1e-6)
    # A model limited to some splits gets exactly those splits' rows, the same as from the pass over all.
    limited = evaluate_models(models[:1], datasets, device="cpu", log=None, splits_of={models[0].key: ["big_test"]})
    assert set(limited["split"]) == {"big_test"}
    pd.testing.assert_frame_equal(limited.reset_index(drop=True),
                                  samples[samples["split"] == "big_test"].reset_index(drop=True))
    with pytest.raises(ValueError, match=r"splits_of\['C/.*'\] = \['test'\]: expected some of the evaluated splits"):
        evaluate_models(models[:1], datasets, device="cpu", log=None, splits_of={models[0].key: ["test"]})


def test_context_models_are_limited_to_the_held_out_splits_unless_all_are_asked_for(tiny_run):
    models = run_models(tiny_run, ["C"], context=["A", "B"], load=False)
    context = sorted(entry.key for entry in models if entry.stage != "C")
    assert "A/Arch_07" in context and "B/Arch_04_tuned" in context
    limited = context_splits_of(models, ["big_test", "test_projects"])
    assert sorted(limited) == context and all(splits == ["big_test", "test_projects"] for splits in limited.values())
    assert context_splits_of(models, ["big_test"], "all") == {}
    with pytest.raises(ValueError, match=r"context_splits='test': expected one of \('held_out', 'all'\)"):
        context_splits_of(models, ["big_test"], "test")


def test_stage_d_reports_every_model_on_every_split(tiny_run):
    stage_dir = tiny_run / "D"
    summary = json.loads((stage_dir / "summary.json").read_text())
    c_models = [f"C/{row['name']}" for row in json.loads((tiny_run / "C" / "summary.json").read_text())["ranking"]]
    run = stages.open_run(tiny_run)
    datasets = stages.splits(run)
    table = pd.read_csv(stage_dir / "metrics" / "summary.csv")
    assert set(c_models) <= set(table["model"]) and {"A/Arch_07", "B/Arch_04_tuned"} <= set(table["model"])
    assert set(table["split"]) == set(datasets)
    # Stage C's models on every split; the context models (A's and B's) on the held-out tests only.
    splits_of = table.groupby("model")["split"].agg(set)
    assert all(splits_of[model] == set(datasets) for model in c_models)
    assert all(splits_of[model] == {"big_test", "test_projects"} for model in splits_of.index if model[0] in "AB")
    headline = summary["headline"]
    test_rows = table[(table["split"] == "big_test") & (table["stage"] == "C")].set_index("model")
    assert headline["best_model"] == test_rows["median_rae"].idxmin()
    assert headline["best_median_rae"] == pytest.approx(test_rows["median_rae"].min())
    assert headline["reference_median_rae"] == 0.108
    assert headline["all_beat_baseline"] == bool((test_rows["pooled_rae"] < 1).all())
    # The saved per-sample RAE is what the model predicts for those samples now.
    best = next(entry for entry in run_models(tiny_run, ["C"], context=[]) if entry.key == headline["best_model"])
    saved = pd.read_csv(stage_dir / "metrics" / best.key / "big_test.csv")
    recomputed = evaluate_dataset(best.model, datasets["big_test"], device="cpu")
    np.testing.assert_allclose(saved["rae"], recomputed["rae"], rtol=1e-5)
    assert test_rows.loc[best.key, "pooled_rae"] == pytest.approx(
        saved["abs_error_sum_m"].sum() / saved["abs_change_sum_m"].sum())
    comparison = pd.read_csv(stage_dir / "comparison.csv")
    assert set(c_models) <= set(comparison["model"])
    assert (comparison["latency_cpu_ms"] > 0).all() and (comparison["size_mb"] > 0).all()
    assert (comparison["parameters"] > 0).all() and (comparison["seconds_per_epoch"] > 0).all()
    pages = sorted(p.name for p in (stage_dir / "figures").glob("predictions_*.png"))
    assert pages == sorted(f"predictions_{name.split('/')[1]}_1.png" for name in c_models)
    assert (stage_dir / "figures" / "comparison.png").stat().st_size > 10_000


def test_stage_d_reports_the_projects_held_out_beside_the_plans_held_out(tiny_run):
    """The tiny profile holds project valley_steep out of training: stage D gives it a headline and boxplot."""
    stage_dir = tiny_run / "D"
    summary = json.loads((stage_dir / "summary.json").read_text())
    assert list(summary["headlines"]) == ["big_test", "test_projects"]
    assert summary["headlines"]["big_test"] == summary["headline"]
    held = summary["headlines"]["test_projects"]
    assert held["tests"] == "whole projects held out of training: terrain never seen"
    table = pd.read_csv(stage_dir / "metrics" / "summary.csv")
    rows = table[(table["split"] == "test_projects") & (table["stage"] == "C")].set_index("model")
    assert held["pooled_rae"] == pytest.approx(rows["pooled_rae"].to_dict())
    assert held["all_beat_baseline"] == bool((rows["pooled_rae"] < 1).all())
    ranked = rows["median_rae"] if rows["median_rae"].notna().any() else rows["pooled_rae"]
    assert held["best_model"] == ranked.idxmin()
    assert (stage_dir / "figures" / "rae_boxplots_test_projects_all.png").stat().st_size > 5_000
    executed = (stage_dir / "D_evaluate.ipynb").read_text()
    assert "test_projects (whole projects held out of training: terrain never seen): best by median per-sample RAE" in executed
    # Its samples are those of the held-out project's plans, and no stage trained or validated on them.
    run = stages.open_run(tiny_run)
    held_out = stages.splits(run, ["test_projects"])["test_projects"]
    assert held_out.summary.plans == ["valley_steep/plan_000", "valley_steep/plan_001"] and len(held_out) > 0
    for model in rows.index:
        assert len(pd.read_csv(stage_dir / "metrics" / model / "test_projects.csv")) == len(held_out)
    for stage in ("A", "C"):
        trained = json.loads((tiny_run / stage / "summary.json").read_text())["splits"]
        assert not [plan for split in trained.values() for plan in split["plans"] if plan.startswith("valley_steep/")]
    big_test = stages.splits(run, ["big_test"])["big_test"].summary.plans
    assert big_test and all(plan.startswith("valley/") for plan in big_test)


def test_headlines_of_the_held_out_splits():
    table = pd.DataFrame([
        {"model": "C/a", "split": "big_test", "stage": "C", "median_rae": 0.4, "pooled_rae": 0.5},
        {"model": "C/b", "split": "big_test", "stage": "C", "median_rae": 0.3, "pooled_rae": 0.6},
        {"model": "C/a", "split": "test_projects", "stage": "C", "median_rae": 0.9, "pooled_rae": 1.2},
        {"model": "C/b", "split": "test_projects", "stage": "C", "median_rae": 1.1, "pooled_rae": 0.8},
    ]).set_index(["model", "split"])
    assert reported_splits(["small_train", "big_test", "test_projects"]) == ["big_test", "test_projects"]
    assert reported_splits(["big_test", "valley_test"]) == ["big_test"]
    with pytest.raises(EvaluationError, match=r"test split 'big_test' is not among the evaluated splits \['small_val'\]"):
        reported_splits(["small_val"])
    held = headline(table, split="test_projects")
    assert held["best_model"] == "C/a" and held["pooled_rae"] == {"C/a": 1.2, "C/b": 0.8}
    assert not held["all_beat_baseline"]
    text = headline_text(held)
    assert text.startswith("test_projects (whole projects held out of training: terrain never seen): best by median "
                           "per-sample RAE C/a, 0.900 (its pooled RAE 1.200).")
    assert "Pooled RAE, lowest first: C/b 0.800, C/a 1.200; NOT every stage C model beats the no-change" in text
    assert "Context: the reference's median per-sample RAE 0.108" in text
    assert headline_text(headline(table)).startswith("big_test (plans held out of the training projects: terrain like "
                                                      "the training terrain): best by median per-sample RAE C/b")


def _break_run(run_dir, damage):
    c = json.loads((run_dir / "C" / "summary.json").read_text())
    row = c["ranking"][0]
    path = run_dir / "C" / row["model_path"]
    if damage == "no stage C":
        shutil.rmtree(run_dir / "C")
        return "has no models of stage C", str(run_dir / "C" / "summary.json")
    if damage == "corrupted weights":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return "not a readable model checkpoint", str(path)
    other = "Arch_09" if row["arch"] != "Arch_09" else "Arch_02"
    save_model(create_model(other), path)
    return f"holds architecture '{other}', expected '{row['arch']}'", str(path)


@pytest.mark.parametrize("damage", ["no stage C", "corrupted weights", "another architecture"])
def test_bad_run_folders_are_clear_errors_in_the_library(run_copy, damage):
    message, where = _break_run(run_copy, damage)
    error = EvaluationError if damage == "no stage C" else CheckpointError
    with pytest.raises(error) as info:
        run_models(run_copy)
    assert message in str(info.value) and where in str(info.value)


@pytest.mark.parametrize("damage", ["no stage C", "corrupted weights", "another architecture"])
def test_bad_run_folders_are_clear_errors_in_the_notebook(run_copy, damage, monkeypatch):
    message, where = _break_run(run_copy, damage)
    # the run folder and profile named relative to here, as on a command line (papermill runs the notebook
    # from the notebooks' folder)
    monkeypatch.chdir(run_copy.parent)
    with pytest.raises(StageFailed) as info:
        run_pipeline(Path(run_copy.name) / "params.yaml", run_dir=Path(run_copy.name), stages=["D"])
    assert message in str(info.value) and where in str(info.value)
    assert str(run_copy / "D" / "D_evaluate.ipynb") in str(info.value)
    assert not (run_copy / "D" / "summary.json").exists() and not (run_copy / "D" / "metrics").exists()


def test_stage_d_rolls_every_c_model_out_over_every_held_out_plan(tiny_run):
    """The tiny profile's plans last 40 min at a 20-min lead time: from the default start (60 min) not one step
    fits, so each plan is rolled out from 0 for the 2 steps it holds; every C model is rolled out, the one
    closest to the solver (pooled over every plan and step) first, and the figures add up from the CSV."""
    from floodlib.data import read_simulation
    from floodlib.evaluation.rollout import pooled, roll_out_plans
    from floodlib.models import load_model

    stage_dir = tiny_run / "D"
    summary = json.loads((stage_dir / "summary.json").read_text())
    c_models = {f"C/{row['name']}" for row in json.loads((tiny_run / "C" / "summary.json").read_text())["ranking"]}
    rollouts = summary["rollouts"]
    assert len(c_models) > 1 and {item["model"] for item in rollouts} == c_models and len(rollouts) == len(c_models)
    assert summary["rollout"] == rollouts[0]
    frame = pd.read_csv(stage_dir / "rollout.csv")
    run = stages.open_run(tiny_run)
    held_out = stages.splits(run, ["big_test", "test_projects"])
    plans = [f"{p.parent.name}/{p.stem}" for split in held_out.values() for p in split.files]
    overall = []
    for rollout in rollouts:
        rows = frame[frame["model"] == rollout["model"]]
        assert sorted(rows["project"] + "/" + rows["plan"]) == sorted(plans * 2) and rollout["plans"] == len(plans)
        assert set(rows["start_min"]) == {0.0} and sorted(set(rows["step"])) == [1, 2]
        for step, value in rollout["pooled_rae_by_step"].items():
            assert value == pytest.approx(pooled(rows[rows["step"] == int(step)], "abs_error_m", "baseline_m"))
        assert rollout["pooled_rae"] == pytest.approx(rows["abs_error_m"].sum() / rows["baseline_m"].sum())
        overall.append(rollout["pooled_rae"])
        assert rollout["converged_fraction"] == pytest.approx(rows["converged"].mean())
        assert rollout["max_passes"] == rows["passes"].max() <= 20
        # the first step starts from the solver's depth: the rollout's first step is the one-step prediction
        first = rows[rows["step"] == 1]
        np.testing.assert_allclose(first["rae"], first["one_step_rae"])
        # water: each plan after its last step (here step 2), the median |error| and the range, and per project
        last = rows[rows["step"] == 2]
        errors = (last["volume_surrogate_m3"] - last["volume_solver_m3"]) / last["volume_solver_m3"]
        assert rollout["volume_error_median_abs"] == pytest.approx(errors.abs().median())
        assert rollout["volume_error_range"] == pytest.approx([errors.min(), errors.max()])
        assert set(rollout["volume_error_by_project"]) == set(last["project"])
    assert overall == sorted(overall)
    # Rolled out together (each plan read once for every model), a model scores as it does alone.
    name, path = rollouts[-1]["model"], held_out["big_test"].files[0]
    alone, _ = roll_out_plans(load_model(tiny_run / name.replace("C/", "C/models/") / "model.pth"), [("big_test", path)],
                              start_s=0, steps=2, delta_t_s=run.sample_spec().delta_t_s, device="cpu")
    together = frame[(frame["model"] == name) & (frame["plan"] == path.stem) & (frame["project"] == path.parent.name)]
    for column in ("abs_error_m", "one_step_error_m", "closed_error_interiors_m", "patch_error_true_rings_m", "passes"):
        np.testing.assert_allclose(together[column].to_numpy(float), alone[column].to_numpy(float), rtol=1e-5, err_msg=column)
    # the solver's volume is the stored depth times the cell area
    row = frame.iloc[-1]
    plan = read_simulation(tiny_run / "data" / row["project"] / f"{row['plan']}.h5")
    frame_index = int(round(row["time_min"] * 60 / plan.output_interval_s))
    expected = float(np.nansum(plan.water_depth[frame_index]) * plan.cell_size_m ** 2)
    assert row["volume_solver_m3"] == pytest.approx(expected, rel=1e-5)
    for name in ("rollout_models", "rollout_rae", "rollout_convergence", "rollout_volume",
                 f"rollout_maps_{row['project']}_{row['plan']}"):
        assert (stage_dir / "figures" / f"{name}.png").stat().st_size > 5_000


def test_fitting_steps_keeps_the_start_or_falls_back_to_the_plans_start():
    from floodlib.data.store import Simulation
    from floodlib.evaluation.rollout import fitting_steps
    from floodlib.predict import PredictError

    plan = Simulation(project="p", plan="q", terrain=np.zeros((321, 321), np.float32),
                      water_depth=np.zeros((5, 32, 32), np.float32), cell_size_m=10.0, terrain_spacing_m=1.0,
                      output_interval_s=1800.0, source="test")  # outputs every 30 min up to 120 min
    assert fitting_steps(plan, start_s=1800, steps=3, delta_t_s=3600) == (1800, 1)
    assert fitting_steps(plan, start_s=3600, steps=3, delta_t_s=3600) == (3600, 1)
    assert fitting_steps(plan, start_s=5400, steps=3, delta_t_s=3600) == (0.0, 2)
    with pytest.raises(PredictError, match="start 10 min is not a multiple of its output interval"):
        fitting_steps(plan, start_s=600, steps=1, delta_t_s=3600)
    with pytest.raises(PredictError, match="120 min long, shorter than one 180-min step"):
        fitting_steps(plan, start_s=0, steps=1, delta_t_s=3 * 3600)


def test_volume_errors_are_per_plan_after_its_own_last_step_and_do_not_cancel():
    """Two plans of one project, one holding 3 steps and one 2: each is judged after its own last step. One
    keeps twice the solver's water, the other half of it; added up the volumes nearly cancel (+25 %), per plan
    both are far off (median |error| 75 %)."""
    from floodlib.evaluation.rollout import rollout_text, volume_error, volume_errors_by_plan, volume_summary

    def row(plan, step, solver, surrogate, project="valley"):
        return {"project": project, "plan": plan, "step": step, "volume_solver_m3": solver,
                "volume_surrogate_m3": surrogate}

    frame = pd.DataFrame([row("a", 1, 100.0, 100.0), row("a", 2, 100.0, 150.0), row("a", 3, 100.0, 200.0),
                          row("b", 1, 300.0, 300.0), row("b", 2, 300.0, 150.0),
                          row("c", 1, 50.0, 60.0, project="lidar")])
    by_plan = volume_errors_by_plan(frame)
    assert by_plan.to_dict() == {"valley/a": pytest.approx(1.0), "valley/b": pytest.approx(-0.5),
                                 "lidar/c": pytest.approx(0.2)}
    assert volume_error(frame) == pytest.approx((200 + 150 + 60 - 450) / 450)  # the volumes added up
    summary = volume_summary(frame)
    assert summary["volume_error_median_abs"] == pytest.approx(0.5)
    assert summary["volume_error_range"] == pytest.approx([-0.5, 1.0])
    assert summary["volume_error_by_project"] == {"valley": pytest.approx((350 - 400) / 400), "lidar": pytest.approx(0.2)}
    # a domain the solver left dry has no relative error: it is left out, not counted as 0 or infinity
    dry = pd.concat([frame, pd.DataFrame([row("d", 1, 0.0, 5.0)])])
    assert np.isnan(volume_errors_by_plan(dry)["valley/d"]) and volume_summary(dry)["volume_error_median_abs"] == pytest.approx(0.5)
    text = rollout_text({"model": "m", "plans": 3, "steps": 6, "pooled_rae_by_step": {1: 0.5}, "pooled_rae": 0.5,
                         "one_step_rae": 0.5, "one_step_rae_by_split": {}, "closed_rae_interiors": 0.5,
                         "patch_rae_true_rings": 0.5, "closed_over_true_rings": 1.0, "converged_fraction": 1.0,
                         "median_passes": 2, "max_passes": 3, "max_iterations": 20,
                         "volume_error_last_step": volume_error(frame), **summary})
    assert "50% off in the median plan (from -50% to +100%); by project lidar +20%, valley -12%" in text


def test_a_model_has_its_architectures_colour_in_every_figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_hex

    from floodlib.evaluation.figures import ARCHITECTURE_COLOURS, model_colour, plot_comparison
    from floodlib.models import list_models

    assert {model_colour(f"C/{arch}") for arch in list_models()} | {model_colour("Arch_04_tuned")} \
        == set(ARCHITECTURE_COLOURS.values())  # one each, eight in all
    assert model_colour("A/Arch_03") == model_colour("C/Arch_03") != model_colour("C/Arch_02")
    comparison = pd.DataFrame({"model": ["C/Arch_03", "A/Arch_03", "B/Arch_04_tuned"], "size_mb": [16.7, 16.7, 0.1],
                               "latency_cpu_ms": [5.0, 5.1, 4.0], "median_test_rae": [0.9, 1.0, 0.8],
                               "seconds_per_epoch": [1.3, 0.9, 1.7], "train_samples": [171, 117, 117]})
    figure = plot_comparison(comparison)
    left, right = figure.axes[:2]
    assert [bar.get_facecolor() for bar in right.patches] == [matplotlib.colors.to_rgba(model_colour(m))
                                                             for m in comparison["model"]]
    assert [label.get_text() for label in right.get_yticklabels()] == [
        "C/Arch_03 (171 samples)", "A/Arch_03 (117 samples)", "B/Arch_04_tuned (117 samples)"]
    points = {to_hex(collection.get_facecolors()[0], keep_alpha=False) for collection in left.collections}
    assert points == {model_colour("C/Arch_03"), model_colour("B/Arch_04_tuned")}
    # told apart by a legend of stages (markers) and one of architectures (colours), not by labels that overlap
    stage_legend, arch_legend = [artist for artist in left.get_children() if isinstance(artist, matplotlib.legend.Legend)]
    assert [text.get_text() for text in stage_legend.get_texts()] == ["stage A", "stage B", "stage C"]
    assert [text.get_text() for text in arch_legend.get_texts()] == ["Arch_03", "Arch_04_tuned"]
    assert [to_hex(handle.get_markerfacecolor()) for handle in arch_legend.legend_handles] == [
        model_colour("Arch_03"), model_colour("Arch_04_tuned")]
    assert not left.texts  # no point labels


def test_a_maps_scale_bar_is_a_round_length_of_at_most_a_quarter_of_its_width():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    from floodlib.evaluation.figures import scale_bar, scale_length_m

    assert [scale_length_m(width) for width in (320, 960, 3240, 4000, 100, 1.0)] == [50, 200, 500, 1000, 20, 0.2]
    with pytest.raises(ValueError, match="width_m=0: expected a map width > 0 m"):
        scale_length_m(0)
    for cells, cell_size, label, drawn_cells in ((96, 10.0, "200 m", 20), (512, 10.0, "1 km", 100), (71, 40.0, "500 m", 12.5)):
        figure, ax = plt.subplots()
        ax.imshow(np.zeros((cells, cells)))
        scale_bar(ax, cell_size_m=cell_size, cells_across=cells)
        bar, = [artist for artist in ax.artists if isinstance(artist, AnchoredSizeBar)]
        assert bar.txt_label.get_text() == label
        assert bar.size_bar.get_children()[0].get_width() == drawn_cells  # in cells: the map's data units
        plt.close(figure)


def test_splits_without_samples_are_a_clear_error_not_an_empty_table(tmp_path):
    from floodlib.data import PatchDataset, SampleSpec, Simulation, write_simulation
    from floodlib.evaluation import evaluate_models, summary_table

    dry = Simulation(project="p", plan="dry", terrain=np.zeros((321, 321), dtype=np.float32),
                     water_depth=np.zeros((121, 32, 32), dtype=np.float32), cell_size_m=10.0, terrain_spacing_m=1.0,
                     output_interval_s=60.0, source="test")
    plan = write_simulation(tmp_path / "p" / "dry.h5", dry)
    spec = SampleSpec(snapshot_times_s=(0.0,), delta_t_s=3600.0)
    datasets = {"dry_test": PatchDataset([plan], name="dry_test", spec=spec), "none": PatchDataset([], name="none")}
    with pytest.raises(ValueError, match=r"no samples to evaluate in any split: dry_test: every patch of its 1 plan\(s\) "
                                         r"was dropped: 1 dry .*; none: it holds no plans"):
        evaluate_models([], datasets)
    with pytest.raises(ValueError, match="no per-sample metrics to summarise"):
        summary_table(pd.DataFrame())


def test_boxplots_of_many_splits_are_drawn_in_rows_of_a_pages_proportions():
    import matplotlib

    matplotlib.use("Agg")
    from floodlib.evaluation.figures import plot_rae_boxplots

    rng = np.random.default_rng(0)
    splits = [f"split_{k}" for k in range(11)]
    samples = pd.DataFrame([{"model": model, "split": split, "rae": float(rng.uniform(0.3, 2.0)),
                             "small_denominator": k == 0}
                            for model in ("C/Arch_02", "C/Arch_03") for split in splits for k in range(6)])
    figure = plot_rae_boxplots(samples, title="every split")
    axes = figure.axes
    assert [[label.get_text() for label in ax.get_xticklabels()] for ax in axes] == [splits[:4], splits[4:8], splits[8:]]
    width, height = figure.get_size_inches()
    assert height > width / 2 and len({ax.get_ylim() for ax in axes}) == 1  # one RAE axis for all
    assert [text.get_text() for text in axes[0].get_legend().get_texts()] == ["C/Arch_02", "C/Arch_03",
                                                                             "no-change baseline"]
    assert all(ax.get_legend() is None for ax in axes[1:])
    assert "(22 sample-model pairs with a too-small denominator are not drawn" in axes[-1].get_xlabel()
    assert len(plot_rae_boxplots(samples, splits=splits[:5]).axes) == 1  # five side by side still fit one row
    with pytest.raises(ValueError, match=r"split\(s\) \['nope'\]: the samples hold no such split; they hold \['split_0'"):
        plot_rae_boxplots(samples, splits=["split_1", "nope"])


def test_each_split_is_scored_on_its_own_samples_a_subset_on_its_few_a_denser_cut_on_its_many(tiny_run):
    import dataclasses

    from floodlib.data import PatchDataset

    run = stages.open_run(tiny_run)
    test = stages.splits(run, ["big_test"])["big_test"]
    model = run_models(tiny_run, ["C"], context=())[0]
    assert len(test) >= 4
    few = test.subset(list(range(len(test) - 1, 0, -1))[:3], name="few")  # three, in an order of their own
    dense = PatchDataset(test.files, spec=dataclasses.replace(test.spec, patch_stride_cells=16), name="dense")
    assert len(dense) > len(test)
    rows = evaluate_models([model], {"big_test": test, "few": few, "dense": dense}, device="cpu", log=None)
    assert rows.groupby("split", sort=False).size().to_dict() == {"big_test": len(test), "few": 3, "dense": len(dense)}
    for name, dataset in (("few", few), ("dense", dense), ("big_test", test)):
        direct = evaluate_dataset(model.model, dataset, device="cpu")
        mine = rows[rows["split"] == name]
        np.testing.assert_array_equal(mine["row"].to_numpy(), direct["row"].to_numpy())
        np.testing.assert_allclose(mine["rae"].to_numpy(), direct["rae"].to_numpy(), rtol=1e-6)
        assert mine["sample"].tolist() == list(range(len(dataset)))
