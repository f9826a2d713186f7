"""The studio expression bank: named expressions defined as FACS action-unit profiles.

Retargeting turns an AU vector (intensities in [0, 1] over the 17 AUs of
``constants.AU_IDS``) into FLAME expression/jaw parameters, so every bank entry is just an
AU profile. The default bank holds the AffectNet-8 classes and the expressions of the
paper's Figure 8 (anger, surprise, confusion, sadness, joy, irritation, excitement,
dissatisfaction, worry). Studios extend or override it with a YAML file::

    expressions:
      smirk: {au12: 0.6, au14: 0.4}     # new entry, appended
      happy: {au06: 0.8, au12: 1.0}     # overrides the default profile, keeps its position
    aliases:
      grin: smirk                       # another name for an entry

Intensities. FACS scores intensity with letters A (trace) .. E (maximum); this module uses
A=0.2, B=0.4, C=0.6, D=0.8, E=1.0. AUs not listed are 0.

Default profiles (values are AU intensities; sources and reasons)

=================  ===============================================  ==========================================
name               profile                                          source / rationale
=================  ===============================================  ==========================================
neutral            (all 0)                                          AffectNet class 0; the reconstruction
happy              6:0.6 12:0.8                                     EMFACS happiness 6+12 (Duchenne smile)
sad                1:0.6 4:0.4 15:0.6 17:0.2                        EMFACS sadness 1+4+15; 17 (chin raiser)
                                                                    is the common companion, kept slight
surprise           1:0.8 2:0.8 5:0.4 26:0.8 25:0.2                  EMFACS surprise 1+2+5B+26; 25 slight
                                                                    because the dropped jaw parts the lips
fear               1:0.6 2:0.4 4:0.4 5:0.8 7:0.4 20:0.6 26:0.4      EMFACS fear 1+2+4+5+7+20+26; wide eyes
                   25:0.2                                           (5) and lip stretch (20) lead; 25 as above
disgust            9:0.8 10:0.6 15:0.4 17:0.4                       EMFACS disgust 9+15+16; AU16 (lower lip
                                                                    depressor) is not among our 17 AUs, so
                                                                    10 (the other EMFACS disgust lip: 10+17)
                                                                    and 17 stand in for it
anger              4:0.8 5:0.4 7:0.6 23:0.6                         EMFACS anger 4+5+7+23
contempt           12:0.3 14:0.4                                    EMFACS contempt R12A+R14A is unilateral;
                                                                    our AUs are bilateral intensities, so it
                                                                    is approximated symmetrically, raised
                                                                    above trace so it stays visible, with the
                                                                    dimpler (14) dominant
confusion          4:0.6 7:0.4 14:0.2                               knitted brow and narrowed eyes (4+7), the
                                                                    usual markers of confusion in studies of
                                                                    learning-centred affect; slight 14 for a
                                                                    puzzled mouth (bilateral approximation)
joy                6:0.8 12:1.0 25:0.6                              a stronger happy with parted lips (6+12+25)
irritation         4:0.4 7:0.4 23:0.3                               lighter anger without the eye widening
                                                                    (4+7+23 at B intensity)
excitement         1:0.6 2:0.6 5:0.4 6:0.6 12:0.8 25:0.6 26:0.4     surprise brows/eyes + joy mouth
                                                                    (1+2+5 with 6+12+25+26)
dissatisfaction    4:0.4 14:0.3 15:0.5 17:0.5                       displeased pout: lip corners down (15),
                                                                    chin raised (17), slight frown (4) and
                                                                    dimpler (14, bilateral approximation)
worry              1:0.6 4:0.4 15:0.3 20:0.3                        the oblique "worry" brow 1+4 with the
                                                                    fear-like lip stretch (20) and a slight
                                                                    lip-corner depressor (15)
sadness            alias of ``sad``                                 Figure 8 name of the AffectNet class
=================  ===============================================  ==========================================

Figure 8's anger and surprise are the AffectNet entries of the same name. The profiles are
prototypes: retargeted expressions inherit their symmetry (no unilateral AUs).
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from dcnn_flame.constants import AU_COLUMNS, AU_IDS, EXPRESSION_CLASSES, NUM_AUS

#: The paper's Figure 8 expressions, in the paper's order.
FIGURE8_EXPRESSIONS: tuple[str, ...] = (
    "anger", "surprise", "confusion", "sadness", "joy", "irritation", "excitement",
    "dissatisfaction", "worry",
)

#: Bank name of each AffectNet-8 class index (the class names themselves).
AFFECTNET_BANK_NAMES: tuple[str, ...] = tuple(EXPRESSION_CLASSES)

# name -> {AU id: intensity}; see the table in the module docstring.
_DEFAULT_PROFILES: dict[str, dict[int, float]] = {
    "neutral": {},
    "happy": {6: 0.6, 12: 0.8},
    "sad": {1: 0.6, 4: 0.4, 15: 0.6, 17: 0.2},
    "surprise": {1: 0.8, 2: 0.8, 5: 0.4, 26: 0.8, 25: 0.2},
    "fear": {1: 0.6, 2: 0.4, 4: 0.4, 5: 0.8, 7: 0.4, 20: 0.6, 26: 0.4, 25: 0.2},
    "disgust": {9: 0.8, 10: 0.6, 15: 0.4, 17: 0.4},
    "anger": {4: 0.8, 5: 0.4, 7: 0.6, 23: 0.6},
    "contempt": {12: 0.3, 14: 0.4},
    "confusion": {4: 0.6, 7: 0.4, 14: 0.2},
    "joy": {6: 0.8, 12: 1.0, 25: 0.6},
    "irritation": {4: 0.4, 7: 0.4, 23: 0.3},
    "excitement": {1: 0.6, 2: 0.6, 5: 0.4, 6: 0.6, 12: 0.8, 25: 0.6, 26: 0.4},
    "dissatisfaction": {4: 0.4, 14: 0.3, 15: 0.5, 17: 0.5},
    "worry": {1: 0.6, 4: 0.4, 15: 0.3, 20: 0.3},
}
_DEFAULT_ALIASES: dict[str, str] = {"sadness": "sad"}

#: Expression names become file keys (``<expression>.obj``) and glTF target names.
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_AU_KEY_RE = re.compile(r"^au_?0*(\d+)$", re.IGNORECASE)


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{where}: bad expression name {name!r}: use a letter followed by up to 63 "
                         "letters, digits, '_' or '-' (names become file names)")
    return name


def _check_vector(vec: Any, where: str) -> np.ndarray:
    arr = np.asarray(vec, dtype=np.float64)
    if arr.shape != (NUM_AUS,):
        raise ValueError(f"{where}: AU vector must have shape [{NUM_AUS}] (order {AU_COLUMNS}), got {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"{where}: AU intensities must be finite and in [0, 1], got {arr.tolist()}")
    out = arr.astype(np.float32)
    out.setflags(write=False)
    return out


def au_vector(profile: Mapping[int, float]) -> np.ndarray:
    """[17] float32 AU vector from ``{AU id: intensity}`` (unlisted AUs are 0)."""
    vec = np.zeros(NUM_AUS, dtype=np.float64)
    for au, value in profile.items():
        if au not in AU_IDS:
            raise ValueError(f"AU{au} is not one of the 17 supported AUs {AU_IDS}")
        vec[AU_IDS.index(au)] = value
    return _check_vector(vec, "au_vector")


class ExpressionBank:
    """An ordered, read-only mapping ``expression name -> AU vector [17]`` plus aliases.

    Vectors are float32 in the order of ``constants.AU_IDS``, values in [0, 1]. Aliases
    are extra names for entries (e.g. ``sadness -> sad``): every lookup accepts them, but
    :attr:`names` lists each expression once.
    """

    def __init__(self, profiles: Mapping[str, Any], aliases: Optional[Mapping[str, str]] = None) -> None:
        self._vectors: dict[str, np.ndarray] = {}
        for name, vec in profiles.items():
            _check_name(name, "ExpressionBank")
            self._vectors[name] = _check_vector(vec, f"ExpressionBank[{name!r}]")
        self._aliases: dict[str, str] = {}
        for alias, target in (aliases or {}).items():
            _check_name(alias, "ExpressionBank alias")
            if alias in self._vectors:
                raise ValueError(f"alias {alias!r} is also an expression name; remove one of them")
            if target not in self._vectors:
                raise ValueError(f"alias {alias!r} points to {target!r}, which is not in the bank "
                                 f"({', '.join(self._vectors)})")
            self._aliases[alias] = target

    @property
    def names(self) -> tuple[str, ...]:
        """Expression names in bank order (aliases not included)."""
        return tuple(self._vectors)

    @property
    def aliases(self) -> dict[str, str]:
        """``alias -> expression name``."""
        return dict(self._aliases)

    def __len__(self) -> int:
        return len(self._vectors)

    def __iter__(self) -> Iterator[str]:
        return iter(self._vectors)

    def __contains__(self, name: object) -> bool:
        return name in self._vectors or name in self._aliases

    def __repr__(self) -> str:
        return f"ExpressionBank({', '.join(self._vectors)})"

    def resolve(self, name: str) -> str:
        """The expression name behind ``name`` (itself, or the alias target)."""
        if name in self._vectors:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = ", ".join(list(self._vectors) + list(self._aliases))
        raise KeyError(f"unknown expression {name!r}; the bank has: {known}")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.vector(name)

    def vector(self, name: str, intensity: float = 1.0) -> np.ndarray:
        """AU vector [17] (float32, a copy) of ``name`` scaled by ``intensity`` in [0, 1]."""
        if not (isinstance(intensity, (int, float)) and 0.0 <= float(intensity) <= 1.0):
            raise ValueError(f"intensity must be a number in [0, 1], got {intensity!r}")
        return (self._vectors[self.resolve(name)] * np.float32(intensity)).astype(np.float32)

    def matrix(self, names: Optional[Sequence[str]] = None,
               intensities: Optional[Sequence[float]] = None) -> np.ndarray:
        """[K, 17] float32: one row per name (default: all :attr:`names`), optionally scaled."""
        names = self.names if names is None else list(names)
        if intensities is None:
            intensities = [1.0] * len(names)
        if len(intensities) != len(names):
            raise ValueError(f"{len(intensities)} intensities for {len(names)} names")
        if not names:
            return np.zeros((0, NUM_AUS), dtype=np.float32)
        return np.stack([self.vector(n, i) for n, i in zip(names, intensities)])

    def profile(self, name: str) -> dict[str, float]:
        """Non-zero AUs of ``name`` as ``{au column: intensity}`` (e.g. ``{"au06": 0.6}``)."""
        vec = self._vectors[self.resolve(name)]
        return {c: round(float(x), 6) for c, x in zip(AU_COLUMNS, vec) if x != 0}

    def for_class(self, index: int) -> str:
        """Bank name of AffectNet-8 class ``index`` (``constants.EXPRESSION_CLASSES``)."""
        return bank_name_for_class(index)

    def to_dict(self) -> dict[str, Any]:
        """The bank in the YAML layout accepted by :func:`load_bank`."""
        out: dict[str, Any] = {"expressions": {n: self.profile(n) for n in self._vectors}}
        if self._aliases:
            out["aliases"] = dict(self._aliases)
        return out


def bank_name_for_class(index: int) -> str:
    """Bank name of AffectNet-8 class ``index`` (0 neutral .. 7 contempt)."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(AFFECTNET_BANK_NAMES):
        raise ValueError(f"AffectNet class index must be an int in [0, {len(AFFECTNET_BANK_NAMES) - 1}], got {index!r}")
    return AFFECTNET_BANK_NAMES[int(index)]


def default_bank() -> ExpressionBank:
    """AffectNet-8 + the paper's Figure 8 set (module docstring lists every profile)."""
    return ExpressionBank({n: au_vector(p) for n, p in _DEFAULT_PROFILES.items()}, _DEFAULT_ALIASES)


def _yaml_loader():
    import yaml

    class _UniqueKeyLoader(yaml.SafeLoader):
        """SafeLoader that rejects duplicate keys (plain YAML silently keeps the last)."""

    def construct_mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise ValueError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    _UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return _UniqueKeyLoader


def _parse_au_key(key: Any, where: str) -> int:
    m = _AU_KEY_RE.match(key) if isinstance(key, str) else None
    au = int(m.group(1)) if m else None
    if au not in AU_IDS:
        raise ValueError(f"{where}: unknown AU {key!r}; use one of {', '.join(AU_COLUMNS)}")
    return au


def _parse_profile(entry: Any, where: str) -> np.ndarray:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping of AU -> intensity (e.g. {{au12: 0.6}}), "
                         f"got {type(entry).__name__} {entry!r}")
    vec = np.zeros(NUM_AUS, dtype=np.float64)
    for key, value in entry.items():
        au = _parse_au_key(key, where)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0.0 <= value <= 1.0:
            raise ValueError(f"{where}.{key}: intensity must be a number in [0, 1], got {value!r}")
        vec[AU_IDS.index(au)] = float(value)
    return vec


def parse_bank(data: Any, source: str = "<bank>", base: Optional[ExpressionBank] = None,
               replace: bool = False) -> ExpressionBank:
    """Build a bank from already-parsed YAML ``data`` (see :func:`load_bank`)."""
    if not isinstance(data, Mapping) or "expressions" not in data:
        raise ValueError(f"{source}: expected a mapping with an 'expressions' key, e.g. "
                         "'expressions: {smirk: {au12: 0.6, au14: 0.4}}'")
    unknown = set(data) - {"expressions", "aliases"}
    if unknown:
        raise ValueError(f"{source}: unknown top-level keys {sorted(map(str, unknown))}; "
                         "allowed: expressions, aliases")
    entries = data["expressions"] or {}
    aliases = data.get("aliases") or {}
    if not isinstance(entries, Mapping):
        raise ValueError(f"{source}: 'expressions' must be a mapping of name -> AU profile")
    if not isinstance(aliases, Mapping):
        raise ValueError(f"{source}: 'aliases' must be a mapping of alias -> expression name")
    base = default_bank() if base is None else base
    vectors: dict[str, Any] = {} if replace else {n: base.vector(n) for n in base.names}
    merged_aliases: dict[str, str] = {} if replace else base.aliases
    for name, entry in entries.items():
        _check_name(name, f"{source}: expressions")
        vectors[name] = _parse_profile(entry, f"{source}: expressions.{name}")
        merged_aliases.pop(name, None)  # a new profile wins over an old alias of that name
    for alias, target in aliases.items():
        _check_name(alias, f"{source}: aliases")
        if alias in vectors:
            raise ValueError(f"{source}: aliases.{alias}: {alias!r} is also an expression name")
        if not isinstance(target, str) or target not in vectors:
            raise ValueError(f"{source}: aliases.{alias}: target {target!r} is not an expression of the bank "
                             f"({', '.join(vectors)})")
        merged_aliases[alias] = target
    # Aliases of the base whose target disappeared (replace=True) are dropped with it.
    merged_aliases = {a: t for a, t in merged_aliases.items() if t in vectors}
    return ExpressionBank(vectors, merged_aliases)


def load_bank(source: str, base: Optional[ExpressionBank] = None, replace: bool = False,
              storage_options=None) -> ExpressionBank:
    """Extend or override ``base`` (default: :func:`default_bank`) from a YAML file or URI.

    Args:
        source: local path or fsspec URI (``s3://...``) of a YAML file
            ``{expressions: {name: {auNN: intensity, ...}}, aliases: {alias: name}}``.
        base: the bank to extend; None = the default bank.
        replace: True = the file alone defines the bank (``base`` ignored).
        storage_options: ``io.storage.StorageOptions`` for object stores.

    Entries of the file override entries of ``base`` with the same name (keeping their
    position); new entries are appended in file order. Errors name the file and entry.
    """
    from dcnn_flame.io import storage

    try:
        raw = storage.read_bytes(source, storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(f"expression bank file not found: {source}") from None
    import yaml

    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_yaml_loader())
    except (yaml.YAMLError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{source}: not a valid expression bank YAML file: {e}") from None
    return parse_bank(data, source=source, base=base, replace=replace)


def names_in(bank: ExpressionBank, requested: Optional[Iterable[str]]) -> list[str]:
    """Resolve a user's list of expression names (None = all) to bank names, in order, once each."""
    if requested is None:
        return list(bank.names)
    out: list[str] = []
    for n in requested:
        r = bank.resolve(n)
        if r not in out:
            out.append(r)
    return out
