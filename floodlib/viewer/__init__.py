"""The prediction viewer: an ipywidgets app over a run folder, in JupyterLab or as a page (Voilà).

>>> from floodlib.viewer import show
>>> show("../outputs/smoke")          # in a notebook

``python -m floodlib.viewer outputs/smoke`` serves it at http://127.0.0.1:8866/.
"""

from floodlib.viewer.app import PredictionViewer, ViewerError, show
from floodlib.viewer.serve import serve, viewer_notebook

__all__ = ["PredictionViewer", "ViewerError", "serve", "show", "viewer_notebook"]
