"""The character library as a plan: character_id -> image URIs, checked ids, safe keys.

Runs on the driver and only lists (never reads image bytes), so memory is the list of URIs.

Where character ids come from
- Listing ``input_uri`` (images with a suffix in :data:`IMAGE_SUFFIXES`, recursive):
  ``<prefix>/<character_id>/<anything>/<image>`` -> the first path component below the prefix
  (a folder per character, any depth below it); ``<prefix>/<image>`` -> the file stem (flat
  layout: one image per character). Both may be mixed; the same id from both is merged.
- A manifest (CSV or Parquet, columns ``character_id`` and ``image_uri``; one row per image).
  Relative ``image_uri`` values are resolved against ``input_uri`` (or the manifest's folder).
  Ids are text: a Parquet column of integer ids (``101``) gives the ids ``"101"``, as the same
  manifest in CSV does; an empty cell is a ``bad_id`` failure ("missing").

Ids and keys. Every path we write uses ``character_key = storage.safe_key(character_id)``,
which keeps ``[A-Za-z0-9._-]`` and replaces anything else (adding a hash), so ids with spaces or
unicode ("Captain Ahab", "José") work. Ids that look like an attempt to leave the output prefix
or that cannot name anything (empty, whitespace only, ``.``/``..`` path components, control
characters, longer than :data:`MAX_ID_LENGTH`) and ids whose key collides with another
id's key become failure rows with reason ``bad_id`` (stage ``plan``); their images are not read.
"""
from __future__ import annotations

import io
import posixpath
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Optional

from dcnn_flame.data.characters import IMAGE_SUFFIXES
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions

MAX_ID_LENGTH = 512


@dataclass
class CharacterTask:
    """One character to reconstruct.

    Attributes:
        character_id: the id as given (folder name, file stem or manifest value).
        key: ``storage.safe_key(character_id)``, the only form used in output paths.
        image_uris: its images (sorted, at most max_images_per_character).
        sizes: byte size of each image from the listing (-1 = unknown, e.g. from a manifest).
    """

    character_id: str
    key: str
    image_uris: list[str]
    sizes: list[int]


@dataclass
class LibraryPlan:
    """What the driver found: the characters to run, plan-stage failures, counts."""

    tasks: list[CharacterTask] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    num_images: int = 0
    ignored_images: int = 0


def bad_id_reason(character_id: Any) -> Optional[str]:
    """Why ``character_id`` cannot be used (a human-readable detail), or None when it is fine."""
    if character_id is None:
        return "character_id is missing (an empty cell in the manifest)"
    if not isinstance(character_id, str):
        return f"character_id must be a string, got {type(character_id).__name__}"
    if not character_id.strip():
        return "character_id is empty"
    if len(character_id) > MAX_ID_LENGTH:
        return f"character_id has {len(character_id)} characters (at most {MAX_ID_LENGTH})"
    if any(unicodedata.category(c) == "Cc" for c in character_id):
        return f"character_id {character_id!r} contains control characters"
    parts = character_id.replace("\\", "/").split("/")
    if any(p in (".", "..") for p in parts):
        return (f"character_id {character_id!r} contains a '.' or '..' path component (it would "
                f"address a folder outside its own); rename it")
    return None


def _id_from_relative(rel: str) -> str:
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else posixpath.splitext(parts[0])[0]


def list_library(input_uri: str, options: Optional[StorageOptions] = None) -> dict[str, list[tuple[str, int]]]:
    """``character_id -> [(image uri, size)]`` from listing ``input_uri`` (module docstring)."""
    root = storage.resolve(input_uri)
    fs, path = storage.get_fs(root, options)
    if not fs.exists(path):
        raise FileNotFoundError(f"input_uri {root!r} does not exist; point input_uri at a folder/prefix of "
                                f"character images (a folder per character) or give manifest_uri")
    proto = storage.protocol_of(root)
    prefix = path.rstrip("/") + "/"
    out: dict[str, list[tuple[str, int]]] = {}
    for p, size in storage.find_files(path, fs).items():  # symbolic links followed (local folders)
        if not p.lower().endswith(IMAGE_SUFFIXES):
            continue
        rel = p[len(prefix):] if p.startswith(prefix) else posixpath.basename(p)
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and our own temp files
        uri = p if proto == "file" else f"{proto}://{p}"
        out.setdefault(_id_from_relative(rel), []).append((uri, size))
    return out


def _manifest_columns(uri: str, data: bytes) -> tuple[list[Any], list[Any], list[str]]:
    """(character ids, image URIs, column names) of a manifest's bytes; ids and URIs as text
    (integer ids such as ``101`` become ``"101"``), None for an empty Parquet cell."""
    if uri.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{uri}: not a readable Parquet file ({e}); give a Parquet or CSV manifest with "
                             f"columns character_id and image_uri") from None
        names = [str(c).strip() for c in table.column_names]
        cols = dict(zip(names, table.columns))

        def text(name: str) -> list[Any]:
            col = cols[name]
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                try:
                    col = pc.cast(col, pa.string())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise ValueError(f"{uri}: manifest column {name} has type {col.type}; it must hold "
                                     f"text (or integer ids)") from None
            return col.to_pylist()
    else:
        import pandas as pd

        try:
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise ValueError(f"{uri}: the manifest is empty; it needs a header line 'character_id,image_uri' "
                             f"and one row per image") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise ValueError(f"{uri}: not a readable CSV manifest ({e}); give a CSV (UTF-8, header line "
                             f"'character_id,image_uri') or a .parquet file") from None
        df.columns = [str(c).strip() for c in df.columns]
        names = list(df.columns)

        def text(name: str) -> list[Any]:
            return list(df[name])
    missing = {"character_id", "image_uri"} - set(names)
    if missing:
        raise ValueError(f"{uri}: the manifest needs columns character_id and image_uri (one row per image); "
                         f"missing {sorted(missing)}, found {names}")
    return text("character_id"), text("image_uri"), names


def read_manifest(manifest_uri: str, options: Optional[StorageOptions] = None,
                  base_uri: Optional[str] = None) -> list[tuple[Any, str]]:
    """``[(character_id, image uri)]`` from a CSV or Parquet manifest (module docstring).

    Raises:
        FileNotFoundError: no such manifest.
        ValueError: unreadable, empty, or without the two columns (the message names the file).
    """
    uri = storage.resolve(manifest_uri)
    try:
        data = storage.read_bytes(uri, options)
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest_uri {uri!r} does not exist") from None
    ids, images, _ = _manifest_columns(uri, data)
    base = storage.resolve(base_uri) if base_uri else uri.rsplit("/", 1)[0]
    rows = []
    for cid, img in zip(ids, images):
        img = "" if img is None else str(img).strip()
        if img and "://" not in img and not img.startswith("/"):
            img = storage.join(base, img)
        elif img:
            img = storage.resolve(img)
        rows.append((cid, img))
    return rows


def plan_library(input_uri: Optional[str], manifest_uri: Optional[str], options: Optional[StorageOptions] = None,
                 max_images: int = 8, run_name: str = "") -> LibraryPlan:
    """Group images per character, check ids, compute keys (module docstring)."""
    groups: dict[Any, list[tuple[str, int]]] = {}
    if manifest_uri:
        for cid, uri in read_manifest(manifest_uri, options, input_uri):
            groups.setdefault(cid, [])
            if uri:
                groups[cid].append((uri, -1))
    elif input_uri:
        groups = dict(list_library(input_uri, options))
    else:
        raise ValueError("give input_uri (a folder/prefix of character images) or manifest_uri")

    plan = LibraryPlan()
    by_key: dict[str, list[Any]] = {}
    for cid in groups:
        if bad_id_reason(cid) is None:
            by_key.setdefault(storage.safe_key(cid), []).append(cid)

    def fail(cid: Any, uri: str, reason: str, detail: str, key: Optional[str] = None) -> None:
        plan.failures.append({"character_id": None if cid is None else str(cid), "character_key": key,
                              "input_uri": uri, "stage": "plan", "reason": reason, "detail": detail})

    for cid in sorted(groups, key=lambda c: str(c)):
        images = sorted(set(groups[cid]))
        plan.num_images += len(images)
        why = bad_id_reason(cid)
        if why is None and len(by_key[storage.safe_key(cid)]) > 1:
            others = [c for c in by_key[storage.safe_key(cid)] if c != cid]
            why = f"character_id {cid!r} maps to the same output key as {others[0]!r}; rename one of them"
        if why is not None:
            for uri, _ in images or [("", -1)]:
                fail(cid, uri, "bad_id", why)
            continue
        key = storage.safe_key(cid)
        if not images:
            fail(cid, "", "no_images", f"character {cid!r} has no image", key)
            continue
        plan.ignored_images += max(0, len(images) - max_images)
        images = images[:max_images]
        plan.tasks.append(CharacterTask(character_id=cid, key=key, image_uris=[u for u, _ in images],
                                        sizes=[s for _, s in images]))
    return plan


def completed_keys(run_uri: str, options: Optional[StorageOptions] = None) -> set[str]:
    """Keys of the characters whose ``characters/<key>/_SUCCESS`` marker exists (one listing)."""
    root = storage.join(storage.resolve(run_uri), "characters")
    fs, path = storage.get_fs(root, options)
    if not fs.exists(path):
        return set()
    prefix = path.rstrip("/") + "/"
    done = set()
    for p in fs.find(path):
        rel = p[len(prefix):] if p.startswith(prefix) else p
        parts = rel.split("/")
        if len(parts) == 2 and parts[1] == "_SUCCESS":
            done.add(parts[0])
    return done
