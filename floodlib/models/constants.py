"""Geometry shared by every reference model.

A sample is a patch of ``PATCH_CELLS`` x ``PATCH_CELLS`` depth cells (10 m each) with the 1 m terrain
under it, ``TERRAIN_POINTS`` points per side (terrain points sit on cell edges, hence the +1).
"""

PATCH_CELLS = 32
TERRAIN_POINTS = 321
DEPTH_CHANNELS = 2  # [boundary ring of depth at n+1, depth at n]
