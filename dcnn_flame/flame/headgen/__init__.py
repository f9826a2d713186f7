"""Pieces of the procedural FLAME-format head (:mod:`dcnn_flame.flame.procedural`).

One job per module: ``layout`` (anatomical numbers), ``surface`` (skin shape),
``mesh`` (triangulation, eyeballs, mouth cavity, UVs), ``rig`` (joints, skinning
weights, pose correctives), ``blendshapes`` (identity, AU expressions, eyelids),
``landmarks`` (68 iBUG points), ``albedo`` (UV texture), ``raster`` (a small
vectorised triangle rasteriser used to paint the texture).
"""
