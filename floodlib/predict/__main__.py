"""``python -m floodlib.predict MODEL PLAN.h5 --start 60 --hours 3 --out out.h5``: roll a surrogate out over
a plan's whole domain, hour by hour, closing the patches' boundary rings by iteration, and write the
prediction as a simulation file (frame 0 the start, then one frame per hour)."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import yaml

from floodlib.data.export import check_folder, export_maps, map_crs, refuse_existing
from floodlib.data.fetch import file_sha256
from floodlib.data.store import SimulationFileError, read_simulation, user_path
from floodlib.models.checkpoints import CheckpointError, load_model
from floodlib.predict.boundary import read_boundary
from floodlib.predict.plan import OWN_EDGES, STEP_S, predict_plan, write_rollout
from floodlib.predict.tiling import PredictError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m floodlib.predict", description=__doc__.split("\n\n")[0],
        epilog="Without --boundary the plan's own edge depths (what its solver was given) are the boundary "
               "condition, so the prediction must end within the plan. With --boundary FILE (JSON or YAML: "
               "{segments: [{edge: west, from_cell: 40, to_cell: 56, times_min: [...], depth_m or "
               "discharge_m3s: [...]}]}) the plan supplies only terrain and the start's depth, and edge cells on "
               "no segment follow the depth just inside them.")
    p.add_argument("model", type=user_path, help="a model checkpoint (model.pth) written by floodlib")
    p.add_argument("plan", type=user_path, help="a simulation file (.h5): terrain, and the depth at the start")
    p.add_argument("--start", type=float, default=0.0, help="start time, minutes since the plan's start (default 0)")
    p.add_argument("--hours", type=int, default=1,
                   help="steps to predict, one closed step of the model's lead time each (default 1; an hour each "
                        "for models of the 60-min samples)")
    p.add_argument("--step-min", type=float, default=None,
                   help="the model's lead time, minutes (default: the samples' delta_t its checkpoint records, else "
                        "60); another is refused, as the model knows only its own")
    p.add_argument("--out", type=user_path, required=True, help="the prediction's simulation file (.h5)")
    p.add_argument("--boundary", type=user_path, help="edge depth or inflow series (JSON/YAML) instead of the plan's edges")
    p.add_argument("--dry-start", action="store_true", help="start from a dry domain instead of the plan's depth")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--precision", choices=("32", "bf16"), default="32",
                   help="the network body's precision (bf16 pays on a GPU; on most CPUs it is slower)")
    p.add_argument("--tolerance-mm", type=float, default=1.0, help="closure stops below this ring change (default 1 mm)")
    p.add_argument("--max-iterations", type=int, default=20, help="closure passes per step at most (default 20)")
    p.add_argument("--geotiff", type=user_path, metavar="DIR",
                   help="also write the prediction's depth maps as GeoTIFFs into DIR (each step, the maximum, and "
                        "without --boundary the error against the plan's solver; see python -m floodlib.data.export)")
    p.add_argument("--force", action="store_true", help="replace --out (and the GeoTIFFs) if they exist")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.out.is_dir():
        return fail(f"--out {args.out} is a folder; name the prediction's file, e.g. {args.out / 'prediction.h5'}")
    # Never over an input, --force or not: the prediction would replace what it was made from.
    for what, given in (("the plan it predicts from", args.plan), ("the model it predicts with", args.model),
                        ("the boundary file it reads", args.boundary)):
        if given is not None and args.out.exists() and given.exists() and args.out.resolve() == given.resolve():
            return fail(f"--out {args.out} is {what}; write the prediction to another file")
    if args.out.exists() and not args.force:
        return fail(f"{args.out} exists; pass --force to replace it")
    try:
        check_folder(args.out.parent, "--out's folder")
        if args.geotiff is not None:
            if args.geotiff.exists() and not args.geotiff.is_dir():
                return fail(f"--geotiff {args.geotiff} is a file; name a folder for the maps")
            check_folder(args.geotiff, "--geotiff")
            if not args.force:  # before the prediction is made
                refuse_existing(args.geotiff, args.out.stem)
    except SimulationFileError as error:
        return fail(str(error))
    if args.hours < 1:
        return fail(f"--hours {args.hours}: predict at least one step")
    if args.step_min is not None and not args.step_min > 0:
        return fail(f"--step-min {args.step_min}: the lead time must be > 0 minutes")
    if not args.tolerance_mm > 0:
        return fail(f"--tolerance-mm {args.tolerance_mm}: the closure's tolerance must be > 0 mm")
    if args.max_iterations < 1:
        return fail(f"--max-iterations {args.max_iterations}: the closure needs at least one pass per step")
    wrote = False
    if args.model.is_dir():
        return fail(f"{args.model} is a folder; expected a model checkpoint, e.g. {args.model / 'model.pth'}")
    try:
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise PredictError(f"--device {args.device}: not a device torch knows; expected cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise PredictError(f"--device {args.device}: this torch build sees no CUDA device; use --device cpu")
        model = load_model(args.model, device=args.device)
        learnt = (model.trained_on or {}).get("delta_t_s")
        step_s = args.step_min * 60.0 if args.step_min is not None else float(learnt or STEP_S)
        if not model.trained_on:
            print(f"note: {args.model} does not record the lead time and cell size it learnt (written before floodlib "
                  f"recorded them): stepping {step_s / 60:g} min; neither the step nor the plan's cell size can be "
                  "checked against what it learnt",
                  file=sys.stderr)
        simulation = read_simulation(args.plan, memory_map=True)
        if args.geotiff is not None:
            map_crs(args.plan, simulation.crs)  # a grid a GeoTIFF can place, before the prediction is made
        boundary, boundary_name = None, OWN_EDGES
        if args.boundary is not None:
            rows, cols = simulation.grid_shape
            r = simulation.terrain_ratio
            cells = np.asarray(simulation.terrain[:-1, :-1]).reshape(rows, r, cols, r).mean(axis=(1, 3))
            boundary = read_boundary(args.boundary, rows=rows, cols=cols, cell_elevation=cells,
                                     cell_size_m=simulation.cell_size_m)
            boundary.check_area(np.isfinite(simulation.water_depth[0]))
            boundary_name = str(args.boundary)
        depth_start = None
        if args.dry_start:
            if boundary is None:
                raise PredictError("--dry-start needs --boundary: the plan's own edge depths belong to its own flood")
            depth_start = np.where(np.isnan(simulation.water_depth[0]), np.nan, 0.0).astype(np.float32)

        def progress(k, step):
            state = "converged" if step.converged else "NOT converged"
            print(f"step {k + 1}/{args.hours} (+{(k + 1) * step_s / 60:g} min): {state} after {step.iterations + 1} pass(es), last ring change "
                  f"{step.residuals[-1] * 1000:.3g} mm, {step.patches_predicted} patch predictions, {step.seconds:.2f} s",
                  file=sys.stderr)

        started = time.perf_counter()
        rollout = predict_plan(model, simulation, start_s=args.start * 60.0, steps=args.hours, boundary=boundary,
                               depth_start=depth_start, delta_t_s=step_s,
                               name=str(args.plan), progress=progress, device=args.device, precision=args.precision,
                               tolerance_m=args.tolerance_mm / 1000.0, max_iterations=args.max_iterations)
        settings = {"dry_start": bool(args.dry_start), "precision": args.precision, "device": args.device,
                    "tolerance_m": args.tolerance_mm / 1000.0, "max_iterations": args.max_iterations,
                    # what was used, not only where it lay: the files may be edited or moved later
                    "model_sha256": file_sha256(args.model)}
        if args.boundary is not None:
            settings["boundary_file"] = yaml.safe_load(args.boundary.read_text())  # JSON is YAML too
        write_rollout(args.out, simulation, rollout, model_name=f"{model.arch} ({args.model})",
                      boundary_name=boundary_name, settings=settings)
        wrote = True
        if args.geotiff is not None:
            # the plan's later frames are the solver's answer only when its own edges drove the prediction
            maps = export_maps(args.out, args.geotiff, every_min=step_s / 60.0, force=args.force,
                               against=args.plan if boundary is None else None)
    except (PredictError, SimulationFileError, CheckpointError, OSError) as error:  # OSError: a failed write
        return fail(str(error))
    except KeyboardInterrupt:
        print(f"\ninterrupted; {args.out} was written, the maps in {args.geotiff} not all" if wrote else
              f"\ninterrupted; nothing was written to {args.out}", file=sys.stderr)
        return 130
    print(f"wrote {args.out}: {args.hours} step(s) of {step_s / 60:g} min from {args.start:g} min over "
          f"{simulation.grid_shape[0]} x {simulation.grid_shape[1]} cells in {time.perf_counter() - started:.2f} s")
    if args.geotiff is not None:
        print(f"wrote {len(maps)} GeoTIFF(s) to {args.geotiff}: " + ", ".join(p.name for p in maps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
