import numpy as np
import pytest

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


def _naive_obj(v, f, uv=None, uf=None, normals=None, material_file=None, comment=""):
    """OBJ text written row by row with np.savetxt (how obj_bytes wrote it before the 14th session)."""
    import io

    buf = io.StringIO()
    if comment:
        buf.write(f"# {comment}\n")
    if material_file:
        buf.write(f"mtllib {material_file}\n")
    np.savetxt(buf, np.asarray(v, np.float64), fmt="v %.6f %.6f %.6f")
    if uv is not None:
        np.savetxt(buf, np.asarray(uv, np.float64), fmt="vt %.6f %.6f")
    if normals is not None:
        np.savetxt(buf, np.asarray(normals, np.float64), fmt="vn %.6f %.6f %.6f")
    if material_file:
        buf.write("usemtl material0\n")
    fi = f + 1
    if uv is not None:
        ti = uf + 1
        if normals is not None:
            cols = np.stack([fi[:, 0], ti[:, 0], fi[:, 0], fi[:, 1], ti[:, 1], fi[:, 1], fi[:, 2], ti[:, 2], fi[:, 2]], 1)
            np.savetxt(buf, cols, fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
        else:
            np.savetxt(buf, np.stack([fi[:, 0], ti[:, 0], fi[:, 1], ti[:, 1], fi[:, 2], ti[:, 2]], 1),
                       fmt="f %d/%d %d/%d %d/%d")
    elif normals is not None:
        np.savetxt(buf, np.stack([fi[:, 0], fi[:, 0], fi[:, 1], fi[:, 1], fi[:, 2], fi[:, 2]], 1),
                   fmt="f %d//%d %d//%d %d//%d")
    else:
        np.savetxt(buf, fi, fmt="f %d %d %d")
    return buf.getvalue().encode("ascii")



@pytest.mark.parametrize("with_uv", [True, False])
@pytest.mark.parametrize("with_normals", [True, False])
@pytest.mark.parametrize("chunk", [65536, 2])
def test_obj_text_equals_the_row_by_row_reference(monkeypatch, with_uv, with_normals, chunk):
    monkeypatch.setattr(meshes, "_CHUNK_ROWS", chunk)  # 2: every block of lines is formatted in pieces
    v, f, uv, uf = _mesh()
    v = v * 123.456  # wide numbers, negative ones
    n = v / np.linalg.norm(v, axis=1, keepdims=True) if with_normals else None
    kw = dict(normals=n, material_file="m.mtl", comment="hero 1")
    uvs = (uv, uf) if with_uv else (None, None)
    want = _naive_obj(v, f, *uvs, **kw)
    assert meshes.obj_bytes(v, f, *uvs, **kw) == want
    topo = meshes.obj_topology(f, *uvs, normals=with_normals, num_vertices=len(v))
    for k in range(3):  # one topology for several meshes of it
        assert meshes.obj_bytes(v + k, f, *uvs, **kw, topology=topo) == _naive_obj(v + k, f, *uvs, **kw)


def test_obj_topology_must_fit_the_mesh():
    v, f, uv, uf = _mesh()
    topo = meshes.obj_topology(f, uv, uf, num_vertices=len(v))
    with pytest.raises(ValueError, match="topology was made for 7 vertices"):
        meshes.obj_bytes(np.zeros((8, 3)), f, uv, uf, topology=topo)
    with pytest.raises(ValueError, match="normals"):
        meshes.obj_bytes(v, f, uv, uf, normals=v, topology=topo)
    with pytest.raises(ValueError, match="uv_faces indices out of range"):
        meshes.obj_topology(f, uv, uf + 20)
    with pytest.raises(ValueError, match="uv_coords given without uv_faces"):
        meshes.obj_bytes(v, f, uv)
