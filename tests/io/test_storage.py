import os

import pytest

from dcnn_flame.io import storage


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "a/b", "/abs", "..", ".", "",
                                  "x" * 500, "a\\b", "c:d", "sp ace", "ünï", "\x00nul"])
def test_safe_key_never_escapes(tmp_path, name):
    key = storage.safe_key(name)
    assert key and "/" not in key and "\\" not in key and not key.startswith(".")
    assert len(key) <= 120
    target = os.path.realpath(os.path.join(tmp_path, key))
    assert target.startswith(str(tmp_path) + os.sep)


def test_safe_key_is_deterministic_and_injective():
    assert storage.safe_key("hero_01") == "hero_01"
    assert storage.safe_key("a/b") == storage.safe_key("a/b")
    assert storage.safe_key("a/b") != storage.safe_key("a_b")
    assert storage.safe_key("a/b") != storage.safe_key("a?b")


def test_atomic_write_local(tmp_path):
    uri = str(tmp_path / "d" / "x.bin")
    storage.atomic_write_bytes(uri, b"abc")
    assert storage.read_bytes(uri) == b"abc"
    storage.atomic_write_bytes(uri, b"defg")
    assert storage.read_bytes(uri) == b"defg"
    # no temp files left behind
    assert os.listdir(tmp_path / "d") == ["x.bin"]
    assert storage.list_files(str(tmp_path), suffixes=(".bin",)) == [uri]


def test_resolve_and_join(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("out") == str(tmp_path / "out")
    assert storage.resolve("file://" + str(tmp_path)) == str(tmp_path)
    assert storage.resolve("s3://b/p/") == "s3://b/p"
    assert storage.join("s3://b/p/", "x", "/y/") == "s3://b/p/x/y"


def test_s3_roundtrip(s3_bucket):
    root, opts = s3_bucket
    uri = storage.join(root, "runs", "a.txt")
    assert not storage.exists(uri, opts)
    storage.atomic_write_bytes(uri, b"hello", opts)
    assert storage.exists(uri, opts)
    assert storage.read_bytes(uri, opts) == b"hello"
    assert storage.list_files(root, opts) == [uri]
