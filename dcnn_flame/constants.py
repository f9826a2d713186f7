"""Constants shared by every part of the project (fixed orders; never reorder).

AUs are the 17 OpenFace-2 intensity AUs; expression classes are AffectNet-8.
"""
from __future__ import annotations

#: The 17 OpenFace-2 intensity action units, in the one fixed order used everywhere
#: (AU vectors, procedural expression components 0..16, Parquet columns au01..au45).
AU_IDS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
NUM_AUS: int = len(AU_IDS)
AU_NAMES: dict[int, str] = {
    1: "inner brow raiser",
    2: "outer brow raiser",
    4: "brow lowerer",
    5: "upper lid raiser",
    6: "cheek raiser",
    7: "lid tightener",
    9: "nose wrinkler",
    10: "upper lip raiser",
    12: "lip corner puller",
    14: "dimpler",
    15: "lip corner depressor",
    17: "chin raiser",
    20: "lip stretcher",
    23: "lip tightener",
    25: "lips part",
    26: "jaw drop",
    45: "blink",
}
#: Column names for AU vectors in tables: au01, au02, ..., au45.
AU_COLUMNS: tuple[str, ...] = tuple(f"au{a:02d}" for a in AU_IDS)


def au_index(au_id: int) -> int:
    """Position of FACS action unit ``au_id`` in AU vectors (raises for unknown ids)."""
    try:
        return AU_IDS.index(au_id)
    except ValueError:
        raise ValueError(f"AU{au_id} is not one of the 17 supported AUs {AU_IDS}") from None


#: AffectNet-8 expression classes, index = class label.
EXPRESSION_CLASSES: tuple[str, ...] = (
    "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt",
)
NUM_EXPRESSION_CLASSES: int = len(EXPRESSION_CLASSES)

#: FLAME kinematic tree: joint order of the 15-d pose vector (3 axis-angle values each).
FLAME_JOINTS: tuple[str, ...] = ("global", "neck", "jaw", "left_eye", "right_eye")
NUM_FLAME_JOINTS: int = 5
POSE_DIM: int = 3 * NUM_FLAME_JOINTS

#: 68 iBUG landmarks: 0-16 contour (jaw line), 17-67 the 51 static inner points.
NUM_LANDMARKS: int = 68
NUM_CONTOUR_LANDMARKS: int = 17
NUM_STATIC_LANDMARKS: int = 51

#: Image size of the model input (square, pixels).
IMAGE_SIZE: int = 224

#: Number of spherical-harmonics lighting coefficients (9 bands x RGB).
SH_COEFFS: int = 27

#: Views per identity in the paper's four-view training mode.
VIEWS_PER_SAMPLE: int = 4
