"""The prediction viewer as a page in the browser, served locally by Voilà.

    python -m floodlib.viewer outputs/smoke              # http://127.0.0.1:8866/
    python -m floodlib.viewer outputs/smoke --port 9000 --browser
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from floodlib.runs.folder import PROFILE_FILE

NOTEBOOK_NAME = "floodlib_viewer.ipynb"


def viewer_notebook(run_dir: str = "../outputs/last"):
    """A notebook that shows the viewer of ``run_dir`` (its one parameter, papermill-style)."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    parameters = new_code_cell(f"run_dir: str = {str(run_dir)!r}  # the run folder whose predictions are shown")
    parameters.metadata["tags"] = ["parameters"]
    return new_notebook(cells=[
        new_markdown_cell("# Prediction viewer\n\n**Patches**: choose a model, split, plan and sample, or step "
                          "through the split: terrain, depth at n, true and predicted depth change, their error and "
                          "the sample's RAE against the no-change baseline.\n\n**Whole domain**: choose a plan and "
                          "a start; the model predicts the plan's whole domain step by step on its own (its patches' "
                          "rings closed by iteration), and a time slider shows the solver's depth, the surrogate's "
                          "and their difference, with the full-domain RAE of each step."),
        parameters,
        new_code_cell("from floodlib.viewer import show\n\nshow(run_dir)"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                 "language_info": {"name": "python"}})


def voila_command(notebook: Path, *, port: int, ip: str = "127.0.0.1", browser: bool = False) -> list[str]:
    return [sys.executable, "-m", "voila", str(notebook), f"--port={port}", f"--Voila.ip={ip}",
            "--show_tracebacks=True", *([] if browser else ["--no-browser"])]


def serve(run_dir: str | Path, *, port: int = 8866, ip: str = "127.0.0.1", browser: bool = False) -> int:
    """Serve the viewer of ``run_dir`` until interrupted; returns Voilà's exit status."""
    import nbformat

    run_dir = Path(run_dir).resolve()
    if not (run_dir / PROFILE_FILE).exists():
        print(f"floodlib viewer: {run_dir} is not a floodlib run folder (no params.yaml)", file=sys.stderr)
        return 1
    folder = Path(tempfile.mkdtemp(prefix="floodlib-viewer-"))
    try:
        notebook = folder / NOTEBOOK_NAME
        nbformat.write(viewer_notebook(str(run_dir)), notebook)
        print(f"floodlib viewer of {run_dir} at http://{ip}:{port}/ (Ctrl-C stops it)", flush=True)
        try:
            return subprocess.call(voila_command(notebook, port=port, ip=ip, browser=browser))
        except KeyboardInterrupt:
            return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m floodlib.viewer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the run folder, e.g. outputs/smoke")
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--browser", action="store_true", help="open the page in the default browser")
    args = parser.parse_args(argv)
    return serve(args.run_dir, port=args.port, ip=args.ip, browser=args.browser)
