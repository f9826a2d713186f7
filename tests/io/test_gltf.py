"""GLB writer: loaded back with pygltflib (an independent reader) and decoded with numpy."""
from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image
from pygltflib import GLTF2

from dcnn_flame.io import gltf

_DT = {5126: "<f4", 5123: "<u2", 5125: "<u4"}
_NC = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}


def _cylinder(n: int = 5):
    """An open tube of 2 rings x n vertices whose UV layout has a seam: the first column of
    vertices has UV u=0 on one side and u=1 on the other (n+1 UV columns)."""
    ang = 2 * np.pi * np.arange(n) / n
    v = np.concatenate([np.stack([np.cos(ang), np.sin(ang), np.full(n, z)], 1) for z in (0.0, 1.0)])
    uv = np.array([[i / n, z] for z in (0.0, 1.0) for i in range(n + 1)])
    f, uf = [], []
    for i in range(n):
        j = (i + 1) % n
        a, b, c, d = i, j, n + j, n + i  # vertex indices of one quad
        ua, ub, uc, ud = i, i + 1, (n + 1) + i + 1, (n + 1) + i  # its UV indices (no wrap)
        f += [[a, b, c], [a, c, d]]
        uf += [[ua, ub, uc], [ua, uc, ud]]
    return v, np.array(f), uv, np.array(uf)


def _png(w=5, h=3) -> bytes:
    img = Image.fromarray((np.arange(w * h * 3).reshape(h, w, 3) * 7 % 256).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _targets(v):
    rng = np.random.default_rng(1)
    return {"smile": v + rng.normal(scale=0.05, size=v.shape), "jaw_open": v * np.array([1.0, 1.2, 0.9])}


def _decode(g: GLTF2, index: int) -> np.ndarray:
    blob = g.binary_blob()
    acc = g.accessors[index]
    bv = g.bufferViews[acc.bufferView]
    n = _NC[acc.type]
    arr = np.frombuffer(blob, dtype=_DT[acc.componentType], count=acc.count * n,
                        offset=(bv.byteOffset or 0) + (acc.byteOffset or 0))
    return arr.reshape(acc.count, n) if n > 1 else arr


def _naive_normals(v, f):
    n = np.zeros_like(v)
    for a, b, c in f:
        fn = np.cross(v[b] - v[a], v[c] - v[a])
        for k in (a, b, c):
            n[k] += fn
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def test_split_seams_matches_naive_loop():
    _, f, _, uf = _cylinder(5)
    vidx, uvidx, nf = gltf.split_seams(f, uf)
    pairs = {}
    for tri, utri in zip(f, uf):
        for a, t in zip(tri, utri):
            pairs.setdefault((int(a), int(t)), None)
    assert len(vidx) == len(pairs) == 10 + 2  # 10 vertices, the 2 seam vertices duplicated
    assert set(zip(vidx.tolist(), uvidx.tolist())) == set(pairs)
    np.testing.assert_array_equal(vidx[nf], f)
    np.testing.assert_array_equal(uvidx[nf], uf)


def test_glb_loads_with_pygltflib_and_reproduces_mesh():
    v, f, uv, uf = _cylinder(5)
    targets = _targets(v)
    png = _png()
    data = gltf.glb_bytes(v, f, uv, uf, targets, png, name="hero", extras={"model_version": "0.1.0"})
    g = GLTF2.load_from_bytes(data)
    assert g.asset.version == "2.0" and g.asset.extras == {"model_version": "0.1.0"}
    assert len(g.meshes) == 1 and len(g.meshes[0].primitives) == 1 and g.meshes[0].name == "hero"
    prim = g.meshes[0].primitives[0]
    assert prim.mode == 4

    pos = _decode(g, prim.attributes.POSITION).astype(np.float64)
    idx = _decode(g, prim.indices).astype(np.int64).reshape(-1, 3)
    tex = _decode(g, prim.attributes.TEXCOORD_0).astype(np.float64)
    assert len(pos) == 12  # seam split: 10 + 2
    assert g.accessors[prim.indices].componentType == 5123  # UNSIGNED_SHORT for small meshes
    # Every triangle maps back to the original triangle and its UVs (glTF v = 1 - OBJ v).
    np.testing.assert_allclose(pos[idx], v[f], atol=1e-6)
    np.testing.assert_allclose(tex[idx][..., 0], uv[uf][..., 0], atol=1e-6)
    np.testing.assert_allclose(tex[idx][..., 1], 1.0 - uv[uf][..., 1], atol=1e-6)

    # POSITION min/max (required) equal the stored float32 data exactly.
    acc = g.accessors[prim.attributes.POSITION]
    assert acc.min == pos.min(0).tolist() and acc.max == pos.max(0).tolist()

    # Morph targets: names, default weights 0, neutral + delta = target.
    assert g.meshes[0].extras["targetNames"] == ["smile", "jaw_open"]
    assert g.meshes[0].weights == [0.0, 0.0]
    assert len(prim.targets) == 2
    for tname, t in zip(["smile", "jaw_open"], prim.targets):
        delta = _decode(g, t["POSITION"]).astype(np.float64)
        np.testing.assert_allclose((pos + delta)[idx], targets[tname][f], atol=1e-6)
        tacc = g.accessors[t["POSITION"]]
        assert tacc.min == delta.min(0).tolist() and tacc.max == delta.max(0).tolist()

    # Material -> texture -> image holding the exact PNG bytes.
    mat = g.materials[prim.material]
    tex_index = mat.pbrMetallicRoughness.baseColorTexture.index
    image = g.images[g.textures[tex_index].source]
    assert image.mimeType == "image/png" and g.textures[tex_index].sampler == 0
    bv = g.bufferViews[image.bufferView]
    blob = g.binary_blob()
    assert blob[bv.byteOffset:bv.byteOffset + bv.byteLength] == png

    # Enums and alignment.
    assert g.bufferViews[g.accessors[prim.indices].bufferView].target == 34963
    for a in [prim.attributes.POSITION, prim.attributes.NORMAL, prim.attributes.TEXCOORD_0]:
        assert g.accessors[a].componentType == 5126
        assert g.bufferViews[g.accessors[a].bufferView].target == 34962
    assert all(b.byteOffset % 4 == 0 for b in g.bufferViews)
    assert g.buffers[0].byteLength == len(blob)


def test_normals_are_welded_unit_and_target_normal_deltas():
    v, f, uv, uf = _cylinder(6)
    targets = _targets(v)
    data = gltf.glb_bytes(v, f, uv, uf, targets, target_normals=True)
    g = GLTF2.load_from_bytes(data)
    prim = g.meshes[0].primitives[0]
    vidx, _, _ = gltf.split_seams(f, uf)
    n = _decode(g, prim.attributes.NORMAL).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-6)
    # Seam duplicates carry the normal of the welded vertex, so the seam does not shade.
    np.testing.assert_allclose(n, _naive_normals(v, f)[vidx], atol=1e-6)
    for tname, t in zip(targets, prim.targets):
        dn = _decode(g, t["NORMAL"]).astype(np.float64)
        np.testing.assert_allclose(n + dn, _naive_normals(targets[tname], f)[vidx], atol=1e-6)


def test_glb_without_uvs_or_texture():
    v, f, _, _ = _cylinder(4)
    data = gltf.glb_bytes(v, f, normals=False, morph_targets={"a": v + 0.5})
    g = GLTF2.load_from_bytes(data)
    prim = g.meshes[0].primitives[0]
    assert prim.attributes.TEXCOORD_0 is None and prim.attributes.NORMAL is None
    assert not g.images and not g.textures
    assert g.materials[0].pbrMetallicRoughness.baseColorTexture is None
    pos = _decode(g, prim.attributes.POSITION)
    np.testing.assert_allclose(pos, v, atol=1e-6)  # no split: same vertices, same order
    np.testing.assert_array_equal(_decode(g, prim.indices).reshape(-1, 3), f)
    np.testing.assert_allclose(_decode(g, prim.targets[0]["POSITION"]), 0.5, atol=1e-6)


def test_glb_no_morph_targets_has_no_weights():
    v, f, _, _ = _cylinder(4)
    g = GLTF2.load_from_bytes(gltf.glb_bytes(v, f))
    assert g.meshes[0].weights is None or g.meshes[0].weights == []
    assert not g.meshes[0].primitives[0].targets


def test_chunks_are_padded_to_four_bytes():
    v, f, uv, uf = _cylinder(5)  # 10 triangles -> 60 bytes of uint16 indices
    f, uf = f[:-1], uf[:-1]  # 9 triangles -> 54 bytes: the next view needs padding
    png = _png(7, 3)
    for name in ("a", "ab", "abc", "abcd"):  # JSON length varies with the name
        data = gltf.glb_bytes(v, f, uv, uf, {"x": v}, png, name=name)
        magic, version, total = struct.unpack_from("<III", data, 0)
        assert (magic, version, total) == (0x46546C67, 2, len(data))
        js_len, js_type = struct.unpack_from("<II", data, 12)
        assert js_type == 0x4E4F534A and js_len % 4 == 0
        js = data[20:20 + js_len]
        assert json.loads(js)["meshes"][0]["name"] == name
        body = js.rstrip(b" ")  # padded with spaces only, fewer than 4
        assert body.endswith(b"}") and len(js) - len(body) < 4 and b"\x00" not in js
        bin_len, bin_type = struct.unpack_from("<II", data, 20 + js_len)
        assert bin_type == 0x004E4942 and bin_len % 4 == 0
        assert 20 + js_len + 8 + bin_len == len(data)
        doc = json.loads(js)
        assert all(bv["byteOffset"] % 4 == 0 for bv in doc["bufferViews"])
        assert doc["bufferViews"][0]["byteLength"] == 54  # unaligned view, so padding was needed
        assert doc["buffers"][0]["byteLength"] == bin_len


def test_large_mesh_uses_uint32_indices():
    n = 70_000
    v = np.zeros((n, 3))
    v[:, 0] = np.arange(n)
    v[1::2, 1] = 1.0
    f = np.stack([np.arange(0, n - 2), np.arange(1, n - 1), np.arange(2, n)], 1)
    g = GLTF2.load_from_bytes(gltf.glb_bytes(v, f, normals=False))
    prim = g.meshes[0].primitives[0]
    assert g.accessors[prim.indices].componentType == 5125
    np.testing.assert_array_equal(_decode(g, prim.indices).reshape(-1, 3), f)


def test_parse_glb_roundtrip():
    v, f, uv, uf = _cylinder(5)
    targets = _targets(v)
    png = _png()
    back = gltf.parse_glb(gltf.glb_bytes(v, f, uv, uf, targets, png, name="n", extras={"k": [1, 2]}))
    vidx, uvidx, nf = gltf.split_seams(f, uf)
    np.testing.assert_array_equal(back["faces"], nf)
    np.testing.assert_allclose(back["vertices"], v[vidx], atol=1e-6)
    np.testing.assert_allclose(back["uv_coords"], uv[uvidx], atol=1e-6)
    assert list(back["morph_targets"]) == ["smile", "jaw_open"]
    for k, t in targets.items():
        np.testing.assert_allclose(back["morph_targets"][k], t[vidx], atol=1e-6)
    assert back["texture_png"] == png and back["extras"] == {"k": [1, 2]} and back["name"] == "n"


def test_torch_inputs_are_accepted():
    torch = pytest.importorskip("torch")
    v, f, uv, uf = _cylinder(4)
    a = gltf.parse_glb(gltf.glb_bytes(torch.tensor(v), torch.tensor(f), torch.tensor(uv), torch.tensor(uf),
                                      {"t": torch.tensor(v + 1)}))
    b = gltf.parse_glb(gltf.glb_bytes(v, f, uv, uf, {"t": v + 1}))
    np.testing.assert_array_equal(a["vertices"], b["vertices"])
    np.testing.assert_array_equal(a["morph_targets"]["t"], b["morph_targets"]["t"])


@pytest.mark.parametrize("kwargs,match", [
    ({"texture_png": _png()}, "needs uv_coords"),
    ({"uv": True, "texture_png": b"GIF89a....."}, "not a PNG"),
    ({"morph_targets": {"bad": np.zeros((3, 3))}}, r"morph target 'bad' must be \[V,3\]"),
    ({"morph_targets": {"nan": np.full((10, 3), np.nan)}}, "NaN"),
    ({"extras": {"x": object()}}, "JSON-serialisable"),
    ({"target_normals": True, "normals": False}, "needs normals=True"),
])
def test_errors_are_actionable(kwargs, match):
    v, f, uv, uf = _cylinder(5)
    if kwargs.pop("uv", False):
        kwargs.update(uv_coords=uv, uv_faces=uf)
    with pytest.raises(ValueError, match=match):
        gltf.glb_bytes(v, f, **kwargs)


def test_bad_faces_and_uv_faces():
    v, f, uv, uf = _cylinder(5)
    with pytest.raises(ValueError, match="out of range"):
        gltf.glb_bytes(v, f + 100)
    with pytest.raises(ValueError, match="uv_faces"):
        gltf.glb_bytes(v, f, uv, uf[:-1])
    with pytest.raises(ValueError, match="together"):
        gltf.glb_bytes(v, f, uv_coords=uv)


def test_precomputed_seams_give_the_same_file_and_are_checked():
    v, f, uv, uf = _cylinder(5)
    seams = gltf.split_seams(f, uf)
    targets = {"t": v + 0.25}
    assert gltf.glb_bytes(v, f, uv, uf, targets, seams=seams) == gltf.glb_bytes(v, f, uv, uf, targets)
    _, f2, _, uf2 = _cylinder(4)
    with pytest.raises(ValueError, match="seams do not belong"):
        gltf.glb_bytes(v, f, uv, uf, seams=gltf.split_seams(f2, uf2))
