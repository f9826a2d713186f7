"""Parquet schemas of the batch job's outputs (versioned; documented in docs/generation.md).

Layout under one output prefix ``<out>``::

    <out>/<run>/characters/<character_key>/character.glb      neutral mesh + one morph target per expression
    <out>/<run>/characters/<character_key>/<expression>.obj   (when OBJ output is on)
    <out>/<run>/characters/<character_key>/preview.png        contact sheet of the rendered expressions
    <out>/<run>/characters/<character_key>/albedo.png
    <out>/<run>/results/<character_key>.parquet               RESULTS_SCHEMA rows, one per expression
    <out>/<run>/failures/<character_key>.parquet              FAILURES_SCHEMA rows
    <out>/<run>/failures/@plan.parquet                        FAILURES_SCHEMA rows of the plan stage (bad ids)
    <out>/<run>/_RUN.json                                     checkpoint + settings the run is bound to
    <out>/<run>/characters/<character_key>/_SUCCESS           written last: the character is complete

``character_key`` = ``storage.safe_key(character_id)``. One results file per character keeps
writes idempotent: a retried or rerun character overwrites its own files, never duplicates.
"""
from __future__ import annotations

import pyarrow as pa

from dcnn_flame.constants import AU_COLUMNS

RESULTS_SCHEMA_VERSION = 1

_f32 = pa.float32()

RESULTS_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("run_name", pa.string(), nullable=False),
        pa.field("character_id", pa.string(), nullable=False),  # as given by the user
        pa.field("character_key", pa.string(), nullable=False),  # safe key used in paths
        pa.field("expression", pa.string(), nullable=False),  # bank name, "neutral" = reconstruction
        pa.field("intensity", _f32, nullable=False),
        pa.field("source", pa.string()),  # "bank" | "performance:<source id>" | "reconstruction"
        pa.field("model_version", pa.string()),  # package version
        pa.field("checkpoint", pa.string()),  # checkpoint URI (or "untrained"/"procedural")
        pa.field("checkpoint_step", pa.int64()),
        pa.field("num_images", pa.int16()),  # images of the character used
        *[pa.field(c, _f32) for c in AU_COLUMNS],  # AU activations of this expression
        pa.field("shape", pa.list_(_f32)),  # FLAME identity (same for every expression)
        pa.field("expression_params", pa.list_(_f32)),
        pa.field("pose", pa.list_(_f32, 15)),
        pa.field("detail_code", pa.list_(_f32)),
        pa.field("glb_uri", pa.string()),
        pa.field("obj_uri", pa.string()),
        pa.field("preview_uri", pa.string()),
        pa.field("reconstruct_ms", _f32),
        pa.field("retarget_ms", _f32),
        pa.field("write_ms", _f32),
        pa.field("created_at", pa.timestamp("ms", tz="UTC")),
    ],
    metadata={b"dcnn_flame.results_schema_version": str(RESULTS_SCHEMA_VERSION).encode()},
)

FAILURES_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("run_name", pa.string(), nullable=False),
        pa.field("character_id", pa.string()),
        pa.field("character_key", pa.string()),
        pa.field("input_uri", pa.string()),
        pa.field("stage", pa.string()),  # read | decode | detect | reconstruct | retarget | write
        pa.field("reason", pa.string()),  # short code: empty, not_an_image, truncated, too_large, no_face, bad_id, ...
        pa.field("detail", pa.string()),  # human-readable message
        pa.field("created_at", pa.timestamp("ms", tz="UTC")),
    ],
    metadata={b"dcnn_flame.results_schema_version": str(RESULTS_SCHEMA_VERSION).encode()},
)

#: One row per character that ran: what the last stage (the actor, or the write tasks with
#: ``write_stage=tasks``) returns to the driver, which counts them (not stored).
STATUS_SCHEMA = pa.schema([
    pa.field("character_id", pa.string()),
    pa.field("character_key", pa.string()),
    pa.field("status", pa.string()),  # ok | failed
    pa.field("num_images", pa.int32()),
    pa.field("num_failures", pa.int32()),
    pa.field("num_expressions", pa.int32()),
    pa.field("reason", pa.string()),
    pa.field("reconstruct_ms", pa.float32()),
    pa.field("write_ms", pa.float32()),
])
