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
