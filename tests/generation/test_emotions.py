"""The studio expression bank: prototypes, lookups, YAML extension and its errors."""
from __future__ import annotations

import numpy as np
import pytest

from dcnn_flame.constants import AU_COLUMNS, AU_IDS, EXPRESSION_CLASSES
from dcnn_flame.generation import emotions
from dcnn_flame.generation.emotions import ExpressionBank, default_bank, load_bank

# Defining AUs of each prototype, written from the FACS/EMFACS literature independently of
# the module's table: these must be the strongest AUs of the profile.
DEFINING = {
    "happy": {6, 12},
    "sad": {1, 4, 15},
    "surprise": {1, 2, 5, 26},
    "fear": {1, 2, 4, 5, 7, 20, 26},
    "disgust": {9, 10, 15, 17},
    "anger": {4, 5, 7, 23},
    "contempt": {12, 14},
    "confusion": {4, 7},
    "joy": {6, 12, 25},
    "irritation": {4, 7, 23},
    "excitement": {1, 2, 5, 6, 12, 25, 26},
    "dissatisfaction": {4, 15, 17},
    "worry": {1, 4},
}
FIGURE8 = ["anger", "surprise", "confusion", "sadness", "joy", "irritation", "excitement",
           "dissatisfaction", "worry"]


def _au(vec, au_id):
    return float(vec[AU_IDS.index(au_id)])


def test_every_affectnet_class_and_figure8_expression_is_present():
    bank = default_bank()
    for name in list(EXPRESSION_CLASSES) + FIGURE8:
        assert name in bank, name
        v = bank.vector(name)
        assert v.shape == (17,) and v.dtype == np.float32
        assert 0.0 <= v.min() and v.max() <= 1.0
    assert tuple(emotions.FIGURE8_EXPRESSIONS) == tuple(FIGURE8)
    # Names are unique expressions; sadness is the same profile as the AffectNet class.
    assert "sadness" not in bank.names and bank.resolve("sadness") == "sad"
    np.testing.assert_array_equal(bank.vector("sadness"), bank.vector("sad"))
    assert np.all(bank.vector("neutral") == 0)
    # Every non-neutral expression is distinct from every other.
    m = bank.matrix()
    for i in range(len(m)):
        for j in range(i + 1, len(m)):
            assert not np.allclose(m[i], m[j]), (bank.names[i], bank.names[j])


@pytest.mark.parametrize("name", sorted(DEFINING))
def test_prototypes_have_their_defining_aus_strongest(name):
    v = default_bank().vector(name)
    defining = [_au(v, a) for a in DEFINING[name]]
    others = [_au(v, a) for a in AU_IDS if a not in DEFINING[name]]
    assert min(defining) > 0, f"{name}: a defining AU is missing"
    assert min(defining) > max(others), f"{name}: a non-defining AU is as strong as a defining one"


def test_happy_top2_and_relations_between_profiles():
    bank = default_bank()
    happy = bank.vector("happy")
    top2 = {AU_IDS[i] for i in np.argsort(-happy)[:2]}
    assert top2 == {12, 6}
    joy = bank.vector("joy")
    assert _au(joy, 12) > _au(happy, 12) and _au(joy, 6) > _au(happy, 6)  # joy is stronger
    anger, irritation = bank.vector("anger"), bank.vector("irritation")
    assert all(_au(irritation, a) <= _au(anger, a) for a in (4, 7, 23))  # lighter anger
    assert _au(irritation, 5) == 0
    contempt = bank.vector("contempt")
    assert _au(contempt, 14) > _au(contempt, 12)


def test_affectnet_index_mapping():
    bank = default_bank()
    for i, cls in enumerate(EXPRESSION_CLASSES):
        assert bank.for_class(i) == emotions.bank_name_for_class(i) == cls
        assert cls in bank.names
    for bad in (-1, 8, 1.0, True):
        with pytest.raises(ValueError, match="AffectNet class index"):
            emotions.bank_name_for_class(bad)


def test_vector_matrix_and_profile():
    bank = default_bank()
    np.testing.assert_allclose(bank.vector("joy", 0.5), 0.5 * bank.vector("joy"), rtol=1e-6)
    m = bank.matrix(["happy", "sadness", "anger"], [1.0, 0.5, 0.25])
    assert m.shape == (3, 17) and m.dtype == np.float32
    np.testing.assert_allclose(m[1], 0.5 * bank.vector("sad"), rtol=1e-6)
    np.testing.assert_allclose(m[2], 0.25 * bank.vector("anger"), rtol=1e-6)
    assert bank.matrix().shape == (len(bank), 17)
    assert bank.matrix([]).shape == (0, 17)
    assert bank.profile("happy") == {"au06": 0.6, "au12": 0.8}
    v = bank.vector("happy")
    v[:] = 1.0  # a copy: the bank is not changed
    assert bank.profile("happy") == {"au06": 0.6, "au12": 0.8}
    with pytest.raises(KeyError, match="unknown expression 'smug'.*happy"):
        bank.vector("smug")
    with pytest.raises(ValueError, match="intensity"):
        bank.vector("happy", 1.5)
    with pytest.raises(ValueError, match="intensity"):
        bank.vector("happy", -0.1)
    with pytest.raises(ValueError, match="2 intensities for 1 names"):
        bank.matrix(["happy"], [1.0, 1.0])
    assert emotions.names_in(bank, ["sadness", "sad", "joy"]) == ["sad", "joy"]
    assert emotions.names_in(bank, None) == list(bank.names)


def test_yaml_extends_and_overrides(tmp_path):
    p = tmp_path / "bank.yaml"
    p.write_text("expressions:\n"
                 "  smirk: {au12: 0.6, AU14: 0.4}\n"
                 "  happy: {au06: 0.9, au_12: 1}\n"
                 "  blank: {}\n"
                 "aliases:\n"
                 "  grin: smirk\n")
    base = default_bank()
    bank = load_bank(str(p))
    assert bank.names[:len(base)] == base.names  # override keeps the position
    assert bank.names[len(base):] == ("smirk", "blank")  # new entries appended in file order
    assert bank.profile("smirk") == {"au12": 0.6, "au14": 0.4}
    assert bank.profile("happy") == {"au06": 0.9, "au12": 1.0}
    np.testing.assert_array_equal(bank.vector("grin"), bank.vector("smirk"))
    assert bank.resolve("sadness") == "sad"  # base aliases kept
    np.testing.assert_array_equal(bank.vector("anger"), base.vector("anger"))
    assert np.all(bank.vector("blank") == 0)
    # The default bank itself is untouched.
    assert default_bank().profile("happy") == {"au06": 0.6, "au12": 0.8}


def test_yaml_replace_and_custom_base(tmp_path):
    p = tmp_path / "bank.yaml"
    p.write_text("expressions:\n  smirk: {au12: 0.6}\n  sad: {au15: 1.0}\n")
    only = load_bank(str(p), replace=True)
    assert only.names == ("smirk", "sad") and "sadness" not in only and "happy" not in only
    base = ExpressionBank({"a": np.full(17, 0.1)})
    ext = load_bank(str(p), base=base)
    assert ext.names == ("a", "smirk", "sad")


def test_roundtrip_through_to_dict(tmp_path):
    import yaml

    bank = default_bank()
    p = tmp_path / "dump.yaml"
    p.write_text(yaml.safe_dump(bank.to_dict(), sort_keys=False))
    back = load_bank(str(p), replace=True)
    assert back.names == bank.names and back.aliases == bank.aliases
    np.testing.assert_array_equal(back.matrix(), bank.matrix())


def test_yaml_from_s3(s3_bucket):
    from dcnn_flame.io import storage

    bucket, opts = s3_bucket
    uri = f"{bucket}/banks/studio.yaml"
    storage.atomic_write_bytes(uri, b"expressions:\n  smirk: {au12: 0.6}\n", opts)
    assert load_bank(uri, storage_options=opts).profile("smirk") == {"au12": 0.6}


@pytest.mark.parametrize("text,match", [
    ("expressions:\n  smirk: {au03: 0.5}\n", r"expressions\.smirk: unknown AU 'au03'.*au01"),
    ("expressions:\n  smirk: {lip: 0.5}\n", r"expressions\.smirk: unknown AU 'lip'"),
    ("expressions:\n  smirk: {au12: 1.5}\n", r"expressions\.smirk\.au12: intensity must be .* \[0, 1\], got 1.5"),
    ("expressions:\n  smirk: {au12: -0.1}\n", r"expressions\.smirk\.au12: intensity"),
    ("expressions:\n  smirk: {au12: yes}\n", r"expressions\.smirk\.au12: intensity"),
    ("expressions:\n  smirk: {au12: .nan}\n", r"expressions\.smirk\.au12: intensity"),
    ("expressions:\n  smirk: 0.5\n", r"expressions\.smirk: expected a mapping"),
    ("expressions:\n  ../evil: {au12: 0.5}\n", r"bad expression name '\.\./evil'"),
    ("expressions:\n  'smirk face': {au12: 0.5}\n", r"bad expression name 'smirk face'"),
    ("expressions:\n  smirk: {au12: 0.5}\n  smirk: {au14: 0.5}\n", r"duplicate key 'smirk'"),
    ("smirk: {au12: 0.5}\n", r"'expressions' key"),
    ("expressions: {}\nextra: 1\n", r"unknown top-level keys \['extra'\]"),
    ("expressions: [smirk]\n", r"'expressions' must be a mapping"),
    ("expressions: {}\naliases: {grin: nothing}\n", r"aliases\.grin: target 'nothing'"),
    ("expressions: {}\naliases: {happy: sad}\n", r"aliases\.happy: 'happy' is also an expression"),
    ("expressions: {a: {au12: 0.5}\n", r"not a valid expression bank YAML"),
])
def test_yaml_errors_name_file_and_entry(tmp_path, text, match):
    p = tmp_path / "bad_bank.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_bank(str(p))
    assert "bad_bank.yaml" in str(info.value)


def test_missing_file_and_bad_bank_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_bank(str(tmp_path / "nope.yaml"))
    with pytest.raises(ValueError, match=r"shape \[17\]"):
        ExpressionBank({"a": np.zeros(5)})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ExpressionBank({"a": np.full(17, 2.0)})
    with pytest.raises(ValueError, match="alias 'b' points to 'c'"):
        ExpressionBank({"a": np.zeros(17)}, {"b": "c"})
    assert set(AU_COLUMNS) >= set(default_bank().profile("excitement"))
