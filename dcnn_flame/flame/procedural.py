"""A procedural, face-like head in the exact FLAME array layout (no download needed).

:func:`build_procedural_flame` returns a :class:`~dcnn_flame.flame.data.FlameModelData`
that the whole project can use in place of a real FLAME file: tests, the demo and the
synthetic training world stand on it. It is a pure function of its arguments.

What it holds (V ~ 5k vertices at the default resolution, metres, FLAME's frame:
y up, the face looking along +z, x towards the subject's left, origin inside the
head a little below its centre):

* Geometry: skull, brows, eye sockets with separate eyeballs (closed spheres turned
  by the eye joints) under lids, a nose, lips split by a mouth slit (upper and lower
  lip vertices are distinct, so the mouth can open) over a mouth cavity, ears, jaw,
  neck. Triangles are counter-clockwise seen from outside; UVs are a cylindrical
  unwrap of the skin (seam at the back) plus islands for eyes, lid rims and mouth.
* Skeleton: global (neck cut), neck, jaw (hinges in front of the ears), left eye,
  right eye (eyeball centres); FLAME's kinematic tree; smooth skinning weights.
* ``shapedirs``: identity. Components 0..9 are semantic
  (:data:`~dcnn_flame.flame.headgen.blendshapes.SHAPE_COMPONENT_NAMES`: head width,
  head height/length, jaw width, nose size, eye spacing, lip fullness, chin, cheeks,
  forehead slope, face depth), the rest random smooth fields; all orthogonalised in
  order with a decaying PCA-like spectrum (per-vertex RMS 3 mm * (k+1)^-0.6).
  Coefficients ~N(0, 1) give plausible heads; the first ``k`` components do not
  depend on ``n_shape``.
* ``exprdirs``: components 0..16 are the facial action units of
  :data:`~dcnn_flame.constants.AU_IDS` (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20,
  23, 25, 26, 45) in that order, coefficient 1.0 = a strong activation, each shaped
  after its FACS description with a local shading cue (AU17 bulges the chin boss and
  deepens the furrow under the lower lip; AU23 narrows the red lips, without AU14's
  corner pull); 17.. are smaller random localised mixtures (seeded).
* ``posedirs``: throat/neck folds for neck rotations, a bulge under the chin and
  drawn-in cheeks for jaw opening, upper lids that follow the eyes' vertical gaze.
* ``eyelid_dirs`` [2, V, 3]: left/right lid closing (FLAME 2023 style).
* ``landmarks``: 68 iBUG points, with 79 yaw bins for the contour (bin = round(yaw
  in degrees) + 39, yaw about +y, positive turns the face towards +x, as
  :mod:`dcnn_flame.flame.layer` looks them up).
* ``extras``: ``albedo_mean`` [H, W, 3] and ``albedo_basis`` [H, W, 3, 10] UV albedo
  (float32; see :data:`~dcnn_flame.flame.headgen.albedo.ALBEDO_COMPONENT_NAMES`),
  ``au_to_expr`` [17, E] (identity on the first 17 components) and ``au_to_jaw``
  [17, 3] (jaw axis-angle per unit AU: AU26 opens the jaw by 0.25 rad about +x, AU25
  by 0.02 rad), ``vertex_part`` [V] int8 (0 skin, 1 left eyeball, 2 right eyeball,
  3 mouth cavity, 4 left lid rim, 5 right lid rim).

The seed changes the random identity, expression and albedo components; the mean
head and its topology are the same for every seed.

CLI: ``python -m dcnn_flame.flame.procedural --out head.pkl [--seed 0] [--npz]``.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from dcnn_flame.constants import AU_IDS, NUM_AUS, au_index
from dcnn_flame.flame.data import FlameModelData

__all__ = ["AU_JAW_OPEN_RAD", "RESOLUTIONS", "build_procedural_flame", "main"]

#: Jaw opening (rad, about +x) per unit AU26 / AU25.
AU_JAW_OPEN_RAD = {26: 0.25, 25: 0.02}
#: Mesh resolutions accepted by :func:`build_procedural_flame` (~2.6k, ~5k, ~12.5k vertices).
RESOLUTIONS = ("low", "default", "high")


def build_procedural_flame(seed: int = 0, n_shape: int = 300, n_expr: int = 100,
                           resolution: str = "default", texture_size: int = 256) -> FlameModelData:
    """Build the procedural FLAME-format head.

    Args:
        seed: seeds the random identity/expression/albedo components (same seed,
            same arrays).
        n_shape: identity components S (>= 1).
        n_expr: expression components E (>= 17: the first 17 are the AUs).
        resolution: 'low' (~2.6k vertices), 'default' (~5k) or 'high' (~12.5k).
        texture_size: side of the square UV albedo maps.

    Returns:
        FlameModelData with v_template [V, 3], faces [F, 3], shapedirs [V, 3, S],
        exprdirs [V, 3, E], posedirs [V, 3, 36], j_regressor [5, V], lbs_weights
        [V, 5], kintree_table [2, 5], uv_coords [Vt, 2], uv_faces [F, 3], landmarks,
        eyelid_dirs [2, V, 3] and the extras listed in the module docstring.
    """
    from dcnn_flame.flame.headgen import albedo, blendshapes, landmarks, mesh as mesh_mod, rig
    from dcnn_flame.flame.headgen.layout import DEFAULT_LAYOUT

    if n_shape < 1:
        raise ValueError(f"n_shape={n_shape}: the procedural head needs at least 1 shape component")
    if n_expr < NUM_AUS:
        raise ValueError(f"n_expr={n_expr}: the procedural head needs n_expr >= {NUM_AUS} "
                         f"(its first {NUM_AUS} expression components are the AUs {AU_IDS})")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution={resolution!r}; use one of {RESOLUTIONS}")
    if texture_size < 16:
        raise ValueError(f"texture_size={texture_size}; use at least 16 texels")
    lay = DEFAULT_LAYOUT
    rng_shape, rng_expr, rng_albedo = (np.random.default_rng(s)
                                       for s in np.random.SeedSequence(int(seed)).spawn(3))

    head = mesh_mod.build_head_mesh(lay, resolution)
    frame = blendshapes.FaceFrame(head, lay)
    lids = blendshapes.LidModel(frame)

    shapedirs = blendshapes.identity_basis(frame, rng_shape, n_shape)
    aus = blendshapes.au_fields(frame, lids)
    exprdirs = np.zeros((frame.n, 3, n_expr))
    for k, au in enumerate(AU_IDS):
        exprdirs[:, :, k] = aus[au]
    if n_expr > NUM_AUS:
        exprdirs[:, :, NUM_AUS:] = blendshapes.random_expression_fields(frame, rng_expr, n_expr - NUM_AUS)
    eyelids = blendshapes.eyelid_fields(frame, lids)

    normals = rig.vertex_normals(head.vertices, head.faces)
    posedirs = rig.pose_correctives(head, lay, normals, {+1: eyelids[0], -1: eyelids[1]})
    j_regressor = rig.joint_regressor(head, lay)
    weights = rig.skinning_weights(head, lay)
    lmk = landmarks.landmark_embedding(head, lay)
    albedo_mean, albedo_basis = albedo.albedo_maps(head, lay, rng_albedo, size=texture_size)

    au_to_expr = np.zeros((NUM_AUS, n_expr))
    au_to_expr[:, :NUM_AUS] = np.eye(NUM_AUS)
    au_to_jaw = np.zeros((NUM_AUS, 3))
    for au, rad in AU_JAW_OPEN_RAD.items():
        au_to_jaw[au_index(au), 0] = rad

    return FlameModelData(
        v_template=head.vertices.astype(np.float64),
        faces=head.faces.astype(np.int64),
        shapedirs=shapedirs.astype(np.float32),
        exprdirs=exprdirs.astype(np.float32),
        posedirs=posedirs.astype(np.float32),
        j_regressor=j_regressor.astype(np.float64),
        lbs_weights=weights.astype(np.float64),
        kintree_table=rig.kintree_table(),
        uv_coords=head.uv_coords.astype(np.float64),
        uv_faces=head.uv_faces.astype(np.int64),
        landmarks=lmk,
        eyelid_dirs=eyelids.astype(np.float32),
        edition="procedural",
        source=f"procedural(seed={int(seed)}, resolution={resolution})",
        extras={
            "albedo_mean": albedo_mean,
            "albedo_basis": albedo_basis,
            "au_to_expr": au_to_expr,
            "au_to_jaw": au_to_jaw,
            "vertex_part": head.part.astype(np.int8),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Write the procedural head as a FLAME-2023-layout pickle (or our .npz)."""
    parser = argparse.ArgumentParser(prog="python -m dcnn_flame.flame.procedural",
                                     description="Write the procedural FLAME-format head.")
    parser.add_argument("--out", required=True, help="output file (.pkl, or .npz with --npz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-shape", type=int, default=300)
    parser.add_argument("--n-expr", type=int, default=100)
    parser.add_argument("--resolution", default="default", choices=RESOLUTIONS)
    parser.add_argument("--npz", action="store_true", help="write our .npz instead of a pickle")
    args = parser.parse_args(argv)
    from dcnn_flame.flame.assets import save_flame_model, save_flame_pickle

    data = build_procedural_flame(seed=args.seed, n_shape=args.n_shape, n_expr=args.n_expr,
                                  resolution=args.resolution)
    path = save_flame_model(data, args.out) if args.npz else save_flame_pickle(data, args.out)
    print(f"wrote {path} ({data.num_vertices} vertices, {len(data.faces)} faces, "
          f"{data.num_shape} shape / {data.num_expression} expression components)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
