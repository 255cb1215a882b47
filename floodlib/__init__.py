"""floodlib — deep-learning emulation of 2D flood simulations.

Subpackages: :mod:`floodlib.models` (the reference's architectures, terrain downsamplers and registry).
"""

__version__ = "0.1.0"
