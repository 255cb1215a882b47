"""The prediction viewer as a page in the browser, served locally by Voilà.

    python -m floodlib.viewer outputs/smoke              # http://127.0.0.1:8866/
    python -m floodlib.viewer outputs/smoke --port 9000 --browser
    python -m floodlib.viewer outputs/smoke --model C/Arch_05      # opens on that model
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from floodlib.runs.folder import PROFILE_FILE

NOTEBOOK_NAME = "floodlib_viewer.ipynb"


def viewer_notebook(run_dir: str = "../outputs/last", model: str | None = None):
    """A notebook that shows the viewer of ``run_dir``, opened on ``model`` (its parameters, papermill-style)."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    parameters = new_code_cell(f"run_dir: str = {str(run_dir)!r}  # the run folder whose predictions are shown\n"
                               f"model = {model!r}  # the model shown first, e.g. 'C/Arch_03' (None: stage C's first)")
    parameters.metadata["tags"] = ["parameters"]
    return new_notebook(cells=[
        new_markdown_cell("# Prediction viewer\n\n**Patches**: choose a model, split, plan and sample, or step "
                          "through the split: terrain, depth at n, true and predicted depth change, their error and "
                          "the sample's RAE against the no-change baseline.\n\n**Whole domain**: choose a plan and "
                          "a start; the model predicts the plan's whole domain step by step on its own (its patches' "
                          "rings closed by iteration), and a time slider shows the solver's depth, the surrogate's "
                          "and their difference, with the full-domain RAE of each step."),
        parameters,
        new_code_cell("from floodlib.viewer import show\n\nshow(run_dir, model=model)"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                 "language_info": {"name": "python"}})


def voila_command(notebook: Path, *, port: int, ip: str = "127.0.0.1", browser: bool = False) -> list[str]:
    # port_retries=0: Voila would otherwise move to the next free port, away from the one announced.
    return [sys.executable, "-m", "voila", str(notebook), f"--port={port}", f"--Voila.ip={ip}",
            "--Voila.port_retries=0", "--show_tracebacks=True", *([] if browser else ["--no-browser"])]


def free_port(port: int, ip: str) -> int:
    """``port`` when nothing listens on it at ``ip`` (0: any free port); OSError naming it otherwise."""
    with socket.socket() as probe:
        try:
            probe.bind((ip, port))
        except OSError as error:
            raise OSError(f"port {port} on {ip} is not free ({error.strerror}): another viewer or server uses it; "
                          "pass --port with another number, or --port 0 for any free one") from None
        return probe.getsockname()[1]


class _Stopped(Exception):
    """SIGTERM: stop serving and clean up, as for Ctrl-C."""


def _stop(signum, frame):
    raise _Stopped()


def serve(run_dir: str | Path, *, port: int = 8866, ip: str = "127.0.0.1", browser: bool = False,
          model: str | None = None) -> int:
    """Serve the viewer of ``run_dir`` (opened on ``model``) until interrupted (Ctrl-C or SIGTERM); returns
    Voila's exit status.

    The announced address is the one served: a busy ``port`` is an error, not a move to the next one.
    """
    import nbformat

    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / PROFILE_FILE).exists():
        print(f"floodlib viewer: {run_dir} is not a floodlib run folder (no params.yaml)", file=sys.stderr)
        return 1
    if model is not None:  # checked here, before a server starts, as well as on the page
        import warnings

        from floodlib.runs import RunError, run_models

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a context stage without models: the page says so
                known = [entry.key for entry in run_models(run_dir, load=False)]
        except (RunError, FileNotFoundError, ValueError) as error:
            print(f"floodlib viewer: {error}", file=sys.stderr)
            return 1
        if model not in known:
            print(f"floodlib viewer: --model {model}: not a model of {run_dir}; expected one of {', '.join(known)}",
                  file=sys.stderr)
            return 1
    try:
        port = free_port(port, ip)
    except OSError as error:
        print(f"floodlib viewer: {error}", file=sys.stderr)
        return 1
    folder = Path(tempfile.mkdtemp(prefix="floodlib-viewer-"))
    previous = signal.signal(signal.SIGTERM, _stop)
    process = None
    try:
        notebook = folder / NOTEBOOK_NAME
        nbformat.write(viewer_notebook(str(run_dir), model), notebook)
        print(f"floodlib viewer of {run_dir} at http://{ip}:{port}/ (Ctrl-C stops it)", flush=True)
        process = subprocess.Popen(voila_command(notebook, port=port, ip=ip, browser=browser))
        return process.wait()
    except (KeyboardInterrupt, _Stopped):
        return 0
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m floodlib.viewer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the run folder, e.g. outputs/smoke")
    parser.add_argument("--port", type=int, default=8866, help="port to serve on (default 8866; 0: any free one)")
    parser.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--browser", action="store_true", help="open the page in the default browser")
    parser.add_argument("--model", default=None, help="the model shown first, e.g. C/Arch_03 (default: stage C's "
                                                        "first)")
    args = parser.parse_args(argv)
    return serve(args.run_dir, port=args.port, ip=args.ip, browser=args.browser, model=args.model)
