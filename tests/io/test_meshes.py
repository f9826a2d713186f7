import numpy as np

from dcnn_flame.io import meshes


def _mesh():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(7, 3))
    f = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 0, 3]])
    uv = rng.uniform(size=(9, 2))
    uf = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [8, 0, 1]])
    return v, f, uv, uf


def test_obj_roundtrip_with_uvs():
    v, f, uv, uf = _mesh()
    data = meshes.obj_bytes(v, f, uv, uf, material_file="m.mtl", comment="model v1")
    back = meshes.parse_obj(data)
    np.testing.assert_allclose(back["vertices"], v, atol=1e-6)
    np.testing.assert_array_equal(back["faces"], f)
    np.testing.assert_allclose(back["uv_coords"], uv, atol=1e-6)
    np.testing.assert_array_equal(back["uv_faces"], uf)
    text = data.decode()
    assert text.startswith("# model v1\nmtllib m.mtl\n") and "usemtl material0" in text


def test_obj_rejects_bad_indices():
    v, f, _, _ = _mesh()
    import pytest
    with pytest.raises(ValueError, match="out of range"):
        meshes.obj_bytes(v, f + 10)


def test_ply_binary_layout():
    v, f, _, _ = _mesh()
    colors = np.linspace(0, 1, 21).reshape(7, 3)
    data = meshes.ply_bytes(v, f, colors)
    header, body = data.split(b"end_header\n", 1)
    assert b"element vertex 7" in header and b"element face 4" in header
    # parse back with a naive reader
    rec = np.frombuffer(body[: 7 * 15], dtype=[("xyz", "<f4", (3,)), ("rgb", "u1", (3,))])
    np.testing.assert_allclose(rec["xyz"], v.astype(np.float32))
    np.testing.assert_array_equal(rec["rgb"], np.rint(colors * 255).astype(np.uint8))
    faces = np.frombuffer(body[7 * 15:], dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    assert (faces["n"] == 3).all()
    np.testing.assert_array_equal(faces["idx"], f)
