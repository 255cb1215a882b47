"""The prediction viewer driven from code: what it shows, stepping, saving, and bad run folders."""

from __future__ import annotations

import json
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pytest

from floodlib.evaluation import figure_png, format_rae, sample_figure, view_sample
from floodlib.pipeline import stages
from floodlib.training import load_model
from floodlib.viewer import PredictionViewer, ViewerError, show


def _c_models(run_dir):
    return [f"C/{row['name']}" for row in json.loads((run_dir / "C" / "summary.json").read_text())["ranking"]]


def test_the_viewer_shows_the_selected_sample_with_its_rae(tiny_run):
    viewer = PredictionViewer(tiny_run, device="cpu")
    c_models = _c_models(tiny_run)
    assert list(viewer.model_choice.options)[:len(c_models)] == c_models
    assert "A/Arch_05" in viewer.model_choice.options and viewer.split_choice.value == "big_test"
    test = stages.splits(stages.open_run(tiny_run), ["big_test"])["big_test"]
    first_picture = viewer.picture.value
    assert first_picture[:8] == b"\x89PNG\r\n\x1a\n" and viewer.error.value == ""

    viewer.step(1)
    assert viewer.item == 1 and viewer.picture.value != first_picture
    model = load_model(tiny_run / "C" / "models" / c_models[0].split("/")[1] / "model.pth")
    expected = view_sample(model, test, 1)
    assert viewer.current_view.rae == pytest.approx(expected.rae, rel=1e-6)
    assert format_rae(expected.rae, expected.small_denominator) in viewer.rae_label.value
    np.testing.assert_allclose(viewer.current_view.prediction, expected.prediction, rtol=1e-5, atol=1e-7)

    viewer.step(-2)  # wraps around to the split's last sample
    assert viewer.item == len(test) - 1
    last_plan = test.summary.plans[-1]
    assert viewer.plan_choice.value == len(test.summary.plans) - 1 and last_plan in viewer.details.value


def test_selecting_model_split_plan_and_sample(tiny_run, tmp_path):
    viewer = PredictionViewer(tiny_run, device="cpu")
    data = stages.splits(stages.open_run(tiny_run), ["small_val"])["small_val"]
    plan = data.summary.plans[-1]
    view = viewer.select(model="A/Arch_03", split="small_val", plan=plan, sample=0)
    assert view.model == "A/Arch_03" and view.info["plan"] == plan
    assert viewer.item == len(data) - data.summary.samples_per_plan[-1]
    assert view.rae == pytest.approx(view_sample(viewer.model("A/Arch_03"), data, viewer.item).rae, rel=1e-6)
    saved = viewer.save_png(tmp_path / "view.png")
    assert saved.read_bytes() == figure_png(sample_figure(view))  # the same static figure headless runs save
    with pytest.raises(ValueError, match="unknown split 'nowhere'"):
        viewer.select(split="nowhere")
    with pytest.raises(IndexError, match="outside split 'small_val'"):
        viewer.select(item=len(data))


def test_a_broken_checkpoint_is_shown_in_the_viewer_and_the_others_still_work(run_copy):
    c_models = _c_models(run_copy)
    broken = run_copy / "C" / "models" / c_models[1].split("/")[1] / "model.pth"
    broken.write_bytes(broken.read_bytes()[:1000])
    viewer = PredictionViewer(run_copy, device="cpu")
    assert viewer.error.value == ""
    viewer.select(model=c_models[1])
    assert "not a readable model checkpoint" in viewer.error.value and str(broken) in viewer.error.value
    assert viewer.picture.value == b"" and "RAE —" in viewer.rae_label.value
    viewer.select(model=c_models[0])
    assert viewer.error.value == "" and viewer.picture.value[:4] == b"\x89PNG"


def test_a_checkpoint_of_another_architecture_is_named(run_copy):
    from floodlib.models import create_model
    from floodlib.training import save_model

    c_models = _c_models(run_copy)
    summary = json.loads((run_copy / "C" / "summary.json").read_text())
    row = summary["ranking"][0]
    save_model(create_model("Arch_09" if row["arch"] != "Arch_09" else "Arch_02"), run_copy / "C" / row["model_path"])
    viewer = PredictionViewer(run_copy, device="cpu")
    assert viewer.model_choice.value == c_models[0]
    assert f"expected '{row['arch']}'" in viewer.error.value and "holds architecture" in viewer.error.value


def test_the_viewer_opens_on_the_model_it_is_given(tiny_run):
    first = PredictionViewer(tiny_run, device="cpu")
    other = next(key for key in first.entries if key != first.model_choice.value)
    viewer = PredictionViewer(tiny_run, device="cpu", model=other)
    assert viewer.model_choice.value == other and viewer.current_view.model == other
    viewer.select_domain(steps=1)
    assert viewer.current_rollout is not None and viewer.model_choice.value == other
    with pytest.raises(ViewerError, match=r"model='C/Arch_99' is not a model of run folder .*expected one of C/"):
        PredictionViewer(tiny_run, model="C/Arch_99")


def test_a_run_without_stage_c_is_refused_with_what_to_do(run_copy, tmp_path):
    import shutil

    shutil.rmtree(run_copy / "C")
    with pytest.raises(ViewerError, match=r"has no models of stage C .* --only C"):
        PredictionViewer(run_copy)
    panel = show(run_copy)
    assert isinstance(panel, widgets.HTML) and "has no models of stage C" in panel.value
    assert "floodlib-error" in panel._dom_classes
    with pytest.raises(ViewerError, match="no params.yaml"):
        PredictionViewer(tmp_path / "empty")


def test_the_committed_viewer_notebook_is_the_one_the_page_serves():
    import nbformat

    from floodlib.viewer import viewer_notebook

    committed = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / "viewer.ipynb", as_version=4)
    generated = viewer_notebook("../outputs/last")
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in generated.cells]
    assert committed.cells[1].metadata["tags"] == ["parameters"]
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")


def test_the_viewer_notebook_opens_on_the_model_it_is_given_and_explains_an_unknown_one(tiny_run, tmp_path):
    import papermill

    outputs, chosen = {}, {}
    for model in ("A/Arch_03", "C/Arch_99"):
        output = tmp_path / f"{model.replace('/', '_')}.ipynb"
        executed = papermill.execute_notebook(str(Path(__file__).resolve().parents[1] / "notebooks" / "viewer.ipynb"),
                                              str(output), parameters={"run_dir": str(tiny_run), "model": model},
                                              kernel_name="python3", progress_bar=False)
        outputs[model] = [data for cell in executed.cells if cell.cell_type == "code"
                          for out in cell.get("outputs", []) for data in [out.get("data", {})] if data]
        # The widgets' state the kernel saved with the notebook: the model dropdown as the page shows it.
        widgets_state = executed.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
        chosen[model] = [state["_options_labels"][state["index"]] for item in widgets_state.get("state", {}).values()
                         for state in [item["state"]] if state.get("description") == "model"]
    assert chosen == {"A/Arch_03": ["A/Arch_03"], "C/Arch_99": []}  # opened on it; no app for an unknown one
    shown, refused = outputs["A/Arch_03"][-1], outputs["C/Arch_99"][-1]
    assert "application/vnd.jupyter.widget-view+json" in shown and "application/vnd.jupyter.widget-view+json" in refused
    # The kernel's text form of each widget: the app, and the error panel (its message cut short there).
    assert "".join(shown["text/plain"]).startswith("VBox(") and "a40000" not in "".join(shown["text/plain"])
    assert "".join(refused["text/plain"]).startswith("HTML(")
    assert "model='C/Arch_99' is not a m" in "".join(refused["text/plain"])


def test_the_viewer_command_refuses_an_unknown_model_before_it_serves(tiny_run, capsys):
    from floodlib.viewer.serve import main

    assert main([str(tiny_run), "--model", "C/Arch_99", "--port", "0"]) == 1
    message = capsys.readouterr()
    assert "floodlib viewer: --model C/Arch_99: not a model of" in message.err and "A/Arch_03" in message.err
    assert "http://" not in message.out  # no server was announced


# -- the whole-domain mode ----------------------------------------------------------------------------------------

FAST_MODEL = "B/Arch_04_tuned"  # the quickest of the tiny run's models over a whole domain (about 1 s a step)

def _plan_file(run_dir, split, name):
    from floodlib.data.dataset import discover_plans, split_plans

    run = stages.open_run(run_dir)
    files = split_plans(discover_plans(run.data_dir), run.split_spec())[split]
    return next(path for path in files if f"{path.parent.name}/{path.stem}" == name), files


def _rae(prediction, truth, start):
    """Full-domain RAE against no change since the start, written out here rather than taken from the viewer."""
    inside = ~np.isnan(truth)
    return (np.abs(prediction[inside].astype(np.float64) - truth[inside]).sum()
            / np.abs(truth[inside].astype(np.float64) - start[inside]).sum())


def test_the_domain_mode_shows_solver_surrogate_and_error_with_the_domain_rae(tiny_run, tmp_path, monkeypatch):
    from floodlib.data.store import read_simulation
    from floodlib.viewer import app
    from floodlib.viewer.domain import domain_figure

    viewer = PredictionViewer(tiny_run, device="cpu")
    viewer.model_choice.value = FAST_MODEL
    viewer.mode_choice.value = "domain"  # as a click on "whole domain" does
    assert viewer.error.value == "" and viewer.picture.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert viewer.current_view is None and viewer.split_choice.value == "big_test"
    assert viewer.delta_t_s == 1200.0  # the tiny profile's lead time: one step
    plan = viewer.domain_plan_choice.label
    path, test_plans = _plan_file(tiny_run, "big_test", plan)
    assert [label for label, _ in viewer.domain_plan_choice.options] == [f"{p.parent.name}/{p.stem}" for p in test_plans]
    simulation = read_simulation(path)
    assert simulation.output_interval_s == 60 and simulation.water_depth.shape[0] == 41  # 40 min, every minute
    assert [value for _, value in viewer.start_choice.options] == [60.0 * i for i in range(21)]  # a step fits
    assert viewer.start_choice.value == 0.0 and viewer.steps_choice.max == 2 and viewer.steps_choice.value == 2

    rollout = viewer.current_rollout
    assert rollout.steps == 2 and rollout.rollout.depths.shape == (3, 64, 64)
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    bars = [artist for artist in domain_figure(rollout, 1).axes[0].artists if isinstance(artist, AnchoredSizeBar)]
    assert rollout.cell_size_m == 10.0 and [bar.txt_label.get_text() for bar in bars] == ["100 m"]  # 640 m across
    assert (viewer.time_choice.min, viewer.time_choice.max) == (0, 2) and viewer.time_choice.value == 1
    np.testing.assert_allclose(rollout.rollout.times_s, [0, 1200, 2400])

    def no_new_rollouts(*args, **kwargs):
        raise AssertionError("moving the time slider recomputed the rollout")

    monkeypatch.setattr(app, "predict_domain", no_new_rollouts)
    for step in (1, 2, 0):
        viewer.time_choice.value = step  # as the slider does
        assert viewer.current_rollout is rollout and viewer.error.value == ""
        frame = viewer.current_frame
        assert frame.step == step and frame.time_s == 1200 * step
        truth = simulation.water_depth[20 * step]
        np.testing.assert_array_equal(frame.solver, truth)
        np.testing.assert_array_equal(frame.surrogate, rollout.rollout.depths[step])
        assert f"t = {20 * step} min" in viewer.time_label.value
        if step:
            expected = _rae(rollout.rollout.depths[step], truth, simulation.water_depth[0])
            assert np.isfinite(expected) and frame.rae == pytest.approx(expected, rel=1e-9)
            assert f"RAE {expected:.4g} over the whole domain" in viewer.rae_label.value
            closure = rollout.rollout.steps[step - 1]
            assert f"closure: {closure.iterations + 1} pass(es)," in viewer.details.value
            assert f"last ring change {closure.residuals[-1] * 1000:.3g} mm" in viewer.details.value
        else:  # the start: the surrogate's depth is the solver's, and there is nothing to score
            np.testing.assert_array_equal(frame.surrogate, simulation.water_depth[0])
            assert "RAE —" in viewer.rae_label.value and "closure: none at the start" in viewer.details.value

    viewer.time_choice.value = 2
    saved = viewer.save_png(tmp_path / "domain.png")
    assert saved.read_bytes() == viewer.picture.value == figure_png(domain_figure(rollout, 2))
    viewer.select_domain(steps=1)  # fewer steps from the same start: the kept rollout's first step
    assert viewer.current_rollout.steps == 1 and viewer.time_choice.max == 1 and viewer.current_frame.step == 1
    np.testing.assert_array_equal(viewer.current_rollout.rollout.depths, rollout.rollout.depths[:2])

    monkeypatch.undo()
    view = viewer.select(item=0)  # back to patches
    assert viewer.mode == "patches" and view.item == 0 and viewer.current_rollout is None
    assert viewer.picture.value[:4] == b"\x89PNG" and "big_test[0]" in viewer.details.value


def test_the_surrogate_starts_from_the_solver_and_steps_as_predict_plan_does(tiny_run):
    from floodlib.data.store import read_simulation
    from floodlib.predict import predict_plan

    viewer = PredictionViewer(tiny_run, device="cpu")
    path = viewer.split_files["big_test"][-1]  # another test plan than the one shown first
    name = f"{path.parent.name}/{path.stem}"
    frame = viewer.select_domain(model=FAST_MODEL, plan=name, start_s=600, step=0)
    assert viewer.mode == "domain" and viewer.error.value == "" and viewer.domain_plan_choice.label == name
    assert viewer.start_choice.value == 600.0 and viewer.steps_choice.max == 1 and viewer.steps_choice.value == 1
    assert (viewer.time_choice.min, viewer.time_choice.max) == (0, 1)
    simulation = read_simulation(path)
    start = simulation.water_depth[10]
    assert start.max() > 0.1  # a wet start, so the check below means something
    np.testing.assert_array_equal(frame.surrogate, start)
    np.testing.assert_array_equal(frame.solver, start)
    assert not np.abs(frame.difference).any()

    frame = viewer.select_domain(step=1)
    tuned = json.loads((tiny_run / "B" / "summary.json").read_text())["tuned"]
    expected = predict_plan(load_model(tiny_run / "B" / tuned["model_path"]), simulation, start_s=600, steps=1,
                            delta_t_s=1200)
    np.testing.assert_allclose(frame.surrogate, expected.depths[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(frame.solver, simulation.water_depth[30])
    assert frame.rae == pytest.approx(_rae(expected.depths[1], simulation.water_depth[30], start), rel=1e-4)
    assert f"{name} · start 10 min · step 1 of 1 (20 min each) → t = 30 min" in viewer.details.value


def test_bad_domain_choices_are_shown_and_the_viewer_stays_usable(run_copy, tmp_path):
    c_models = _c_models(run_copy)
    broken = run_copy / "C" / "models" / c_models[1].split("/")[1] / "model.pth"
    broken.write_bytes(broken.read_bytes()[:1000])
    viewer = PredictionViewer(run_copy, device="cpu")
    assert viewer.select_domain(model=c_models[1], start_s=1200) is None
    assert "not a readable model checkpoint" in viewer.error.value and str(broken) in viewer.error.value
    assert viewer.picture.value == b"" and "RAE —" in viewer.rae_label.value
    with pytest.raises(ViewerError, match="nothing is shown"):
        viewer.save_png(tmp_path / "nothing.png")
    frame = viewer.select_domain(model=FAST_MODEL)
    assert viewer.error.value == "" and viewer.picture.value[:4] == b"\x89PNG"
    assert (frame.step, frame.time_s, viewer.steps_choice.value) == (1, 2400.0, 1)
    shown = viewer.picture.value

    for choice, message in (
            (dict(start_s=2400), "a start at 40 min leaves no room for one step of 20 min (the models' lead time) "
                                 "before its last output at 40 min; the latest start is 20 min"),
            (dict(start_s=0, steps=3), "3 steps of 20 min from 0 min end at 60 min, past its last output at 40 min; "
                                       "at most 2 step(s) from 0 min"),
            (dict(start_s=90), "start 1.5 min is not one of its output times (every 1 min)"),
            (dict(start_s=-60), "start -1 min is outside the plan"),
            (dict(step=2), "step 2 is outside the rollout: 0 (the start) to 1"),
    ):
        assert viewer.select_domain(**choice) is None, choice
        assert message in viewer.error.value, (choice, viewer.error.value)
        assert viewer.picture.value == b"" and viewer.current_frame is None
        assert viewer.start_choice.value == 1200.0 and viewer.steps_choice.value == 1  # the last good choice
    viewer.time_choice.value = 0
    viewer.time_choice.value = 1  # the slider draws again, from the kept rollout
    assert viewer.error.value == "" and viewer.picture.value == shown
    with pytest.raises(ValueError, match="unknown plan 'valley/nowhere' in split 'big_test'"):
        viewer.select_domain(plan="valley/nowhere", model=c_models[2])
    assert viewer.model_choice.value == FAST_MODEL and viewer.picture.value == shown  # refused before any change


def test_the_domain_helpers_on_a_plan_made_here():
    from floodlib.data.store import Simulation
    from floodlib.predict import PredictError
    from floodlib.viewer.domain import check_choice, domain_rae, max_steps, solver_depths, start_times

    depth = np.stack([np.full((4, 4), 0.5 * k, dtype=np.float32) for k in range(7)])  # every 10 min, 0 to 60 min
    depth[:, 0, 0] = np.nan  # outside the model's area
    plan = Simulation(project="p", plan="q", terrain=np.zeros((41, 41), np.float32), water_depth=depth,
                      cell_size_m=10.0, terrain_spacing_m=1.0, output_interval_s=600.0, source="test")
    np.testing.assert_allclose(start_times(plan, 1800.0), [0, 600, 1200, 1800])
    assert [max_steps(plan, s, 1800.0) for s in (0, 600, 1800, 2400)] == [2, 1, 1, 0]
    assert not len(start_times(plan, 4200.0))
    with pytest.raises(PredictError, match="too short for a single step; choose another plan"):
        check_choice(plan, start_s=0, steps=1, delta_t_s=4200.0, name="p/q")
    check_choice(plan, start_s=0, steps=2, delta_t_s=1800.0, name="p/q")

    solver, interpolated = solver_depths(plan, np.array([0.0, 1800.0]))
    assert not interpolated and np.array_equal(solver, depth[[0, 3]], equal_nan=True)
    solver, interpolated = solver_depths(plan, np.array([900.0]))  # halfway between 10 and 20 min
    assert interpolated and solver[0, 1, 1] == pytest.approx(0.75)

    truth, start = depth[2], depth[0]  # 1 m deeper on the 15 cells inside the area
    prediction = truth + np.float32(0.25)
    assert domain_rae(prediction, truth, start) == (pytest.approx(0.25), False)
    rae, small = domain_rae(start + np.float32(1e-4), start + np.float32(1e-4), start)  # barely changes
    assert small and rae == 0.0
    rae, small = domain_rae(start, start, start)  # 0 / 0 at the start
    assert small and np.isnan(rae)


def test_the_closure_is_told_in_passes_as_the_command_line_tells_it():
    from floodlib.predict import StepResult
    from floodlib.viewer.domain import closure_text

    step = StepResult(depth=np.zeros((1, 1), np.float32), residuals=[0.01, 0.0004], converged=True,
                      patches_predicted=12, seconds=0.5)
    assert closure_text(step, tolerance_m=0.001) == ("closure: 2 pass(es), last ring change 0.4 mm (converged, "
                                                     "tolerance 1 mm), 12 patch predictions, 0.50 s")
