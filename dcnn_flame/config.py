"""Structured configs (typed dataclasses) registered in Hydra's ConfigStore.

Only job assembly (``jobs/*.py`` -> ``run(cfg)``) sees a whole config; library code takes
the small dataclass it needs (``FlameConfig``, ``StorageConfig``, ...) or plain arguments.
YAML files under ``configs/`` only select and override these schemas.

Each field has a docstring underneath it (read by ``python jobs/<job>.py --help`` users and
by the tests that check every field is documented).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from dcnn_flame.losses.combine import LossWeights
from dcnn_flame.model.config import ModelConfig, SupervisionConfig


@dataclass
class FlameConfig:
    """Which head model to use and how many of its components."""

    model_path: Optional[str] = None
    """FLAME model file (generic_model.pkl, flame2023*.pkl, or our .npz). None = the
    project's procedural FLAME-format head (no download needed)."""
    landmark_path: Optional[str] = None
    """68-landmark embedding: DECA ``landmark_embedding.npy`` or RingNet
    ``flame_static_embedding.pkl``. None = the embedding inside the model file, if any."""
    dynamic_landmark_path: Optional[str] = None
    """RingNet ``flame_dynamic_embedding.npy`` (contour by yaw); only with a RingNet static file."""
    eyelids_path: Optional[str] = None
    """Optional FLAME 2023 eyelid blendshapes (.npy/.npz with left and right arrays)."""
    uv_path: Optional[str] = None
    """UV layout for a model file without one (the official ``generic_model.pkl`` has none):
    ``FLAME_texture.npz`` (its ``vt``, ``ft``), any .npz with ``vt`` [Vt, 2] and ``ft`` [F, 3],
    or the FLAME template .obj (``vt`` lines and ``f v/vt`` faces). None = the model file's own.
    Every file path here may be a URI (s3://...): it is downloaded once per machine into the
    cache (``$DCNN_FLAME_CACHE``, default ``~/.cache/dcnn_flame``)."""
    n_shape: int = 100
    """Identity shape components used (<= 300 in FLAME files)."""
    n_expr: int = 50
    """Expression components used (<= 100 in FLAME files)."""
    use_eyelids: bool = False
    """Use eyelid blendshapes (needs a model that has them)."""
    dynamic_contour: bool = True
    """Pick the 17 contour landmarks by head yaw (needs a dynamic embedding)."""
    procedural_seed: int = 0
    """Seed of the procedural head (ignored when model_path is set)."""


@dataclass
class StorageConfig:
    """Where outputs go and how to reach the object store (fsspec URIs)."""

    uri: str = "outputs"
    """Root URI for outputs: a local path (default), file://, s3://bucket/prefix, gs://..."""
    endpoint_url: Optional[str] = None
    """S3-compatible endpoint (MinIO, Ceph, a test server). None = AWS default. The env var
    ``AWS_ENDPOINT_URL`` is used when this is None."""
    region: Optional[str] = None
    """S3 region; None = from the environment."""
    anon: bool = False
    """Anonymous access (public buckets). Credentials otherwise come from the standard
    AWS environment/config chain and are never written to configs or logs."""
    kind: str = "local"
    """Which storage group chose these settings ("local", "s3"; set by configs/storage/*.yaml):
    with "s3", a local ``uri`` is refused where a job would write under it (:meth:`root`)."""

    def root(self) -> str:
        """``uri``, where a job writes what it is not given an explicit URI for.

        Raises:
            ValueError: ``kind`` is "s3" but ``uri`` is a local path (``storage=s3`` without
                ``storage.uri=s3://...``: the outputs would silently land on the local disk, e.g.
                an ephemeral pod's).
        """
        if self.kind != "local" and "://" not in str(self.uri):
            raise ValueError(f"storage={self.kind} but storage.uri is {self.uri!r}, a local path: outputs "
                             f"would land on this machine's disk. Give storage.uri={self.kind}://<bucket>/<prefix> "
                             f"(or this job's own output URI)")
        return self.uri


@dataclass
class RayConfig:
    """How the driver reaches Ray."""

    address: Optional[str] = None
    """None = attach to ``RAY_ADDRESS`` when set (e.g. under ``ray job submit``), otherwise
    start a local Ray. "auto" = attach to a running cluster; "local" = always start one."""
    num_cpus: Optional[int] = None
    """Logical CPUs of a locally started Ray (None = all cores)."""
    object_store_memory: Optional[int] = None
    """Object store bytes of a locally started Ray (None = Ray's default)."""


@dataclass
class HeadDemoConfig:
    """The head-posing demo: build the head, pose it, write meshes."""

    flame: FlameConfig = field(default_factory=FlameConfig)
    """Head model."""
    out_dir: str = "demo_out"
    """Output directory or URI prefix for the OBJ/PLY files."""
    au_map_path: Optional[str] = None
    """AU -> FLAME expression/jaw map (.npz with au_to_expr [17, E] and au_to_jaw [17, 3]; path or
    URI) for the smile pose. None = the head model's own (the procedural head carries one; a real
    FLAME file does not: then the smile is a jaw opening alone, and the demo says so)."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Object-store settings used when out_dir is a remote URI."""


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule. Defaults follow the paper (Sec. 4: Adam, initial
    learning rate 0.01 with decay; ~2.5 epochs of ~75k iterations)."""

    optimizer: str = "adam"
    """"adam" (the paper) or "adamw" (decoupled weight decay)."""
    lr: float = 0.01
    """Initial (peak) learning rate."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.0
    """L2 penalty (adam) or decoupled decay (adamw)."""
    schedule: str = "step"
    """Decay after warm-up: "constant", "step" (x decay_rate every decay_steps), "exponential"
    (x decay_rate per decay_steps, smoothly) or "cosine" (to min_lr at max_steps)."""
    decay_steps: int = 75000
    """Steps per decay period of "step"/"exponential" (default: one paper epoch)."""
    decay_rate: float = 0.1
    """Multiplier per decay period of "step"/"exponential"."""
    min_lr: float = 0.0
    """Floor of the learning rate (every schedule)."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to lr over this many steps (0 = none)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = no clipping)."""


@dataclass
class TrainDataConfig:
    """Which shards a training run reads and how batches are formed."""

    train_uri: str = "outputs/prepared/synthetic"
    """Source-domain shards (VGGFace2-format or synthetic): a directory/prefix of Parquet files
    (searched recursively; rows are selected by their ``split`` column). The default is where
    ``jobs/prepare.py source=synthetic`` writes, generated on first use (synthetic_if_missing)."""
    train_split: Optional[str] = "train"
    """Keep rows whose ``split`` column equals this (None = all rows)."""
    val_uri: Optional[str] = None
    """Validation shards (None = train_uri, with val_split)."""
    val_split: Optional[str] = "val"
    """Split of the validation rows (None = all rows of val_uri)."""
    target_uri: Optional[str] = None
    """Target-domain (animated character) shards; required by stage "finetune"."""
    target_split: Optional[str] = None
    """Split of the target rows used for training (None = all rows)."""
    target_val_uri: Optional[str] = None
    """Optional target-domain validation shards (metrics logged as ``val_target/...``)."""
    target_fraction: float = 0.5
    """Fine-tuning: fraction of each batch's samples drawn from the target shards."""
    num_views: int = 4
    """Views per sample given to the model (paper: 4). Rows with fewer views repeat them."""
    batch_size: int = 8
    """Samples per step per worker (paper: 8 samples x 4 views = 32 images)."""
    val_batch_size: int = 8
    """Samples per validation batch per worker."""
    shuffle_buffer: int = 64
    """Rows in each worker's local shuffle buffer (0 = read order)."""
    decode_batch_size: int = 16
    """Rows per CPU decode task (Ray Data map_batches)."""
    synthetic_if_missing: bool = True
    """When train_uri is the default synthetic location and holds no shards, generate a small
    synthetic set there first (the embedded default; dcnn_flame.data.synthetic)."""
    synthetic_samples: int = 80
    """Identities (samples) of that generated set; a fifth of them become the "val" split."""
    materialize_val: bool = True
    """Decode the validation sets once into Ray's object store (each validation then reads
    memory instead of re-running the read/decode plan). Set False for large validation sets:
    they take ~600 KB per 4-view 224 px sample there."""
    progress_bars: bool = False
    """Ray Data progress bars in the logs (off: they flood job logs that are not a terminal)."""


@dataclass
class CheckpointingConfig:
    """What Ray keeps in ``<storage>/runs/<name>/checkpoint_<step>``."""

    keep: int = 3
    """Checkpoints kept (Ray ``num_to_keep``): the last ones, or the best ones when best_metric
    is set. The latest checkpoint is always kept too (it is what a restart resumes from)."""
    best_metric: Optional[str] = None
    """Reported metric that ranks checkpoints (e.g. "val/vertex_error_mm"; each validation set's
    metrics are reported as ``<set>/<name>``); None = keep the last. A name that the run does not
    report stops it at its first checkpoint, naming the reported ones."""
    best_mode: str = "min"
    """"min" or "max" for best_metric."""
    every: Optional[int] = None
    """Checkpoint every this many steps (None = at every validation). With best_metric it must be
    a multiple of trainer.val_every, so every checkpoint carries the metric."""


@dataclass
class TrainerConfig:
    """Ray Train scaling, fault tolerance and the loop's cadence and safety limits."""

    num_workers: int = 1
    """Training workers (DDP ranks). 0 = Ray Train's in-process local mode (debugging: no
    fault tolerance; checkpoints are written to the run directory by the loop itself)."""
    use_gpu: bool = False
    """One GPU per worker, NCCL backend (gloo on CPU)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (data decoding runs in separate Ray Data tasks)."""
    resources_per_worker: Dict[str, float] = field(default_factory=dict)
    """Extra custom resources per worker, e.g. {"A100": 1} (CPU/GPU come from the fields above)."""
    max_failures: int = 3
    """Worker-group failures retried from the last checkpoint before the run fails."""
    ddp_find_unused_parameters: bool = False
    """DDP find_unused_parameters: set True when some trainable parameters get no gradient in
    some steps (costs a graph traversal per step)."""
    bf16: bool = True
    """bf16 autocast for forward/loss on CUDA (ignored on CPU)."""
    max_steps: int = 187500
    """Optimizer steps of the stage (paper: ~2.5 epochs x 75k iterations)."""
    val_every: int = 5000
    """Validate every this many steps (paper: 5000) and at the last step."""
    log_every: int = 50
    """Progress line, TensorBoard flush and Ray report every this many steps."""
    seed: int = 42
    """Base random seed (each rank adds its rank)."""
    max_bad_rows: int = 1000
    """Stop the run when more rows than this failed to decode (summed over workers)."""
    max_skipped_steps: int = 100
    """Stop the run when more steps than this were skipped for a NaN/inf loss or gradient."""
    fault_injection_step: Optional[int] = None
    """Testing only: the last worker SIGKILLs itself when it reaches this step, once per run
    (a marker file in the run directory), to exercise FailureConfig recovery."""


@dataclass
class TrainConfig:
    """A training stage (jobs/train.py): data, model, losses, optimiser and Ray Train setup."""

    name: str = "dcnn_flame"
    """Run name: checkpoints and TensorBoard under ``<storage.uri>/runs/<name>``. Stable on
    purpose: rerunning with the same name resumes from its last checkpoint; use a new name
    for a new run."""
    stage: str = "pretrain"
    """"pretrain" (VGGFace2-format source shards) or "finetune" (source + character shards
    with the MMD and style-consistency losses, starting from init_checkpoint)."""
    init_checkpoint: Optional[str] = None
    """Checkpoint (directory/URI with model.pt, or a run directory: its latest checkpoint)
    whose model weights initialise a new run (stage 2 starts from stage 1). Ignored when the
    run resumes from its own checkpoint."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Where runs are written (local path or s3://...)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """How the driver reaches Ray."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Workers, fault tolerance, cadence, limits."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    """Shards and batching."""
    checkpoint: CheckpointingConfig = field(default_factory=CheckpointingConfig)
    """Checkpoint retention."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """DCNN-FLAME architecture."""
    loss: LossWeights = field(default_factory=LossWeights)
    """Loss weights (stage "finetune" turns on mmd and style_consistency)."""
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    """Frozen teachers (VGG-19, AU detector, expression classifier) of the losses and metrics."""
    flame: FlameConfig = field(default_factory=FlameConfig)
    """Head model."""


@dataclass
class SyntheticConfig:
    """The synthetic face world (dcnn_flame.data.synthetic): what every identity and view samples.

    Each identity (one row of ``num_views`` views) is a deterministic function of
    (seed, identity index) and these settings."""

    num_identities: int = 1000
    """Identities generated (one sample row each); the last val_fraction of them are split "val"."""
    image_size: int = 224
    """Rendered image height = width in pixels (the model input is 224)."""
    procedural_seed: int = 0
    """Seed of the procedural head the world is rendered with."""
    n_shape: int = 100
    """Identity components sampled (the length of gt_shape; the head's remaining ones are 0)."""
    n_expr: int = 50
    """Expression components used (the length of gt_expression; at least the 17 AU components)."""
    shape_scale: float = 1.0
    """Standard deviation of each identity shape coefficient."""
    albedo_scale: float = 1.0
    """Standard deviation of each albedo coefficient."""
    max_yaw_deg: float = 60.0
    """Head yaw (global then neck rotation) is uniform in [-max_yaw_deg, max_yaw_deg]."""
    max_pitch_deg: float = 30.0
    """Head pitch is uniform in [-max_pitch_deg, max_pitch_deg]."""
    max_roll_deg: float = 10.0
    """Head roll is uniform in [-max_roll_deg, max_roll_deg]."""
    max_neck_deg: float = 5.0
    """The neck's share of the head rotation, uniform per axis; the global rotation compensates,
    so the head's total yaw/pitch/roll stay as sampled."""
    max_gaze_deg: float = 10.0
    """Both eyes turn together by a yaw and a pitch uniform in [-max_gaze_deg, max_gaze_deg]."""
    jaw_noise_deg: float = 1.0
    """Standard deviation of the noise added to the AU map's jaw rotation (per axis, degrees)."""
    class_weights: Optional[list[float]] = None
    """Relative probability of each AffectNet-8 class (constants.EXPRESSION_CLASSES order);
    None = uniform."""
    au_intensity: list[float] = field(default_factory=lambda: [0.5, 1.0])
    """A view's class AU prototype is scaled by a factor uniform in this [low, high] range."""
    au_noise: float = 0.1
    """Standard deviation of the Gaussian noise added to every AU (then clipped to [0, 1])."""
    neutral_au_noise: float = 0.05
    """The same for class neutral (its prototype is all zeros)."""
    free_au_fraction: float = 0.0
    """Fraction of views whose 17 AUs are drawn independently of any class (each AU active with
    probability free_au_rate, at an intensity uniform in au_intensity); their expression_class is
    -1 (missing). Class prototypes tie AUs together (AU6 comes with AU12, AU25 with AU26); free
    views decorrelate them, which an AU detector needs to tell them apart. 0 = every view has a class."""
    free_au_rate: float = 0.3
    """Probability that an AU is active in a free-AU view."""
    expr_noise: float = 0.3
    """Standard deviation of the expression components beyond the 17 AU components."""
    face_fill: list[float] = field(default_factory=lambda: [0.65, 0.8])
    """Larger side of the 68-landmark box as a fraction of the image, uniform in [low, high]
    (the camera scale follows from it, as in aligned face crops)."""
    center_jitter: float = 0.04
    """Landmark-box centre offset from the image centre, uniform per axis, fraction of the image."""
    ambient: list[float] = field(default_factory=lambda: [0.35, 0.75])
    """Ambient irradiance, uniform in [low, high]."""
    directional: list[float] = field(default_factory=lambda: [0.2, 0.8])
    """Strength of one distant light (SH-projected), uniform in [low, high]."""
    light_tint: float = 0.08
    """Per-channel colour variation of the ambient and directional light (+- fraction)."""
    background_noise: float = 0.03
    """Largest standard deviation of the per-pixel noise added to the background."""
    antialias: bool = True
    """Antialiased silhouettes (soft edges blended over the background, like real photos)."""
    store_vertices: bool = True
    """Write gt_vertices (float32 [V, 3] bytes per view; ~60 KB each for FLAME-size meshes)."""


@dataclass
class PrepareConfig:
    """The data-ingest job (jobs/prepare.py): images -> aligned 224x224 Parquet shards."""

    source: str = "vggface2"
    """Input kind: "vggface2" (train/test identity folders + bb_landmark CSVs), "characters"
    (a folder/prefix of character images, optional labels CSV) or "synthetic" (the
    procedural generator, dcnn_flame.data.synthetic)."""
    input_uri: str = "???"
    """Root of the input: a local path or an fsspec URI (s3://bucket/vggface2)."""
    output_uri: Optional[str] = None
    """Where shards, manifest.json, failures.parquet and the contact sheet go. None =
    ``<storage.uri>/prepared/<source>``. Point training at ``<output_uri>/shards``."""
    labels_uri: Optional[str] = None
    """characters: CSV with file, identity, expression and au01..au45 columns. None =
    ``<input_uri>/labels.csv`` when it exists."""
    folders: list[str] = field(default_factory=lambda: ["train", "test"])
    """vggface2: sub-folders to read; "test" rows get split "test", "train" is split into
    train/val by identity."""
    index: str = "files"
    """vggface2: "files" lists the images; "metadata" takes names from loose_bb_*.csv
    (no listing of 3.3M objects; missing files become failure rows)."""
    max_identities: Optional[int] = None
    """Keep only the first N identities (sorted) of each folder; None = all (for quick runs)."""
    num_views: int = 4
    """Views of one identity per sample (4 = the paper's four-view mode; 1 = single images)."""
    short_identity_policy: str = "pad"
    """Identities whose image count is not a multiple of num_views: "pad" completes the last
    group with other images of the identity (repeating when it has fewer than num_views),
    "drop" drops the incomplete group and lists its images as failures."""
    val_fraction: float = 0.02
    """Fraction of (train-folder) identities held out as split "val"."""
    seed: int = 0
    """Seed of the grouping, the train/val split and the shard order."""
    rows_per_shard: int = 256
    """Samples per Parquet shard (bounds shard size: rows x num_views x one encoded 224 crop)."""
    margin: float = 0.1
    """Crop margin: extra fraction of the face box size on each side of the square crop."""
    align: str = "box"
    """"box": square crop around the face box (no rotation); "landmarks5": similarity that
    puts the 5 landmarks on a fixed template (removes roll), box crop when they are missing."""
    image_format: str = "jpeg"
    """Encoding of the aligned crops in the shards: "jpeg" or "png"."""
    jpeg_quality: int = 95
    """JPEG quality of the aligned crops."""
    min_image_size: int = 32
    """Inputs with width or height below this many pixels fail with reason "too_small"."""
    max_image_pixels: int = 50_000_000
    """Inputs with more pixels fail with reason "too_large" (checked from the header)."""
    max_image_bytes: int = 67_108_864
    """Input files larger than this many bytes fail with reason "too_large" (not read)."""
    landmarks: str = "auto"
    """68 landmarks: "auto" = face-alignment FAN when its weights are in the torch hub cache,
    else the 5 metadata landmarks; "fan" = require FAN; "metadata" = never run FAN."""
    detector: str = "auto"
    """Face boxes for images without a metadata box: "auto" (S3FD weights, else an OpenCV
    cascade, else centre crop), "s3fd", "opencv" or "center"."""
    cascade_path: Optional[str] = None
    """OpenCV Haar cascade XML for detector=opencv (None = OpenCV's bundled frontal face)."""
    center_crop_fraction: float = 0.8
    """detector=center: the face box is a centred square of this fraction of the short side."""
    au_scale: float = 1.0
    """characters: AU label columns are divided by this (5.0 for OpenFace 0-5 intensities)."""
    torch_hub_dir: Optional[str] = None
    """Where to look for face-alignment weights (<dir>/checkpoints/...); None =
    torch.hub.get_dir() (``$TORCH_HOME/hub``)."""
    device: str = "cpu"
    """Torch device of FAN/S3FD in the workers ("cpu", or "cuda" with num_gpus_per_worker)."""
    num_workers: Optional[int] = None
    """Parallel shard writers (Ray actors); None = the cluster's CPUs / num_cpus_per_worker."""
    num_cpus_per_worker: float = 1.0
    """CPUs reserved per shard writer."""
    num_gpus_per_worker: float = 0.0
    """GPUs per shard writer (only useful with device=cuda)."""
    stall_timeout_s: float = 1800.0
    """Fail the job when no shard finishes for this long (a shard with FAN on CPU can take
    minutes; Ray Data's own no-progress timeout is raised to this for the job)."""
    progress: bool = True
    """Show progress bars (driver tqdm over shards, and Ray Data's)."""
    contact_sheet_samples: int = 8
    """Samples (rows of the sheet, num_views columns) in contact_sheet.png; 0 = none."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """source=synthetic: the synthetic world's settings (identities, image size, sampling)."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Object-store settings for input_uri and output_uri."""
    ray: RayConfig = field(default_factory=RayConfig)
    """How to reach Ray."""


@dataclass
class QueryConfig:
    """The query job (jobs/query.py): SQL over the batch job's results/failures tables."""

    uri: Optional[str] = None
    """The batch job's output prefix ``<out>`` (holding ``<out>/<run>/results/*.parquet`` and
    ``<out>/<run>/failures/*.parquet``): local path or URI. None = ``<storage.uri>/generated``,
    where the batch job writes by default. A path that does not exist is refused."""
    runs: Optional[list[str]] = None
    """Only these run folders form the ``results``/``failures`` views; None = every run."""
    named: Optional[str] = None
    """Named query: runs, au_above, failures_by_reason, by_checkpoint, au_means
    (dcnn_flame.query.NAMED_QUERIES). None with no sql = "runs"."""
    sql: Optional[str] = None
    """Arbitrary SQL over the views ``results`` and ``failures`` (quote it for Hydra:
    ``'sql="SELECT expression, count(*) FROM results GROUP BY expression"'``)."""
    sql_file: Optional[str] = None
    """Read the SQL from this file or URI instead of ``sql``."""
    au: Optional[str] = None
    """au_above: the AU column (au01..au45; "AU12" and "12" work too). None = au12."""
    threshold: Optional[float] = None
    """au_above: rows with the AU strictly above this value. None = 0.5."""
    expression: Optional[str] = None
    """au_above, au_means: only this expression (bank name, e.g. "happy")."""
    run: Optional[str] = None
    """au_above, by_checkpoint, au_means: only this run_name; failures_by_reason: this run
    instead of the last one."""
    checkpoint: Optional[str] = None
    """by_checkpoint: the checkpoint as stored in ``results.checkpoint`` (URI or "untrained")."""
    step: Optional[int] = None
    """by_checkpoint: only this checkpoint_step."""
    out: Optional[str] = None
    """Write the result to this path or URI (.csv or .parquet) instead of printing it."""
    format: Optional[str] = None
    """Output format "csv" or "parquet"; None = from the suffix of ``out``."""
    max_rows: int = 50
    """Rows printed on the terminal (0 = all); files always get every row."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Object-store settings (endpoint, region) for uri, sql_file and out."""


@dataclass
class ExportConfig:
    """The ONNX export job (jobs/export_onnx.py): a checkpoint's inference graph (image ->
    FLAME parameters, AU vector, optionally vertices) -> ``.onnx`` + metadata JSON, checked
    with onnx.checker and compared with PyTorch under onnxruntime."""

    checkpoint: Optional[str] = None
    """Trained model: a checkpoint directory (model.pt, config.json, meta.json) or a training
    run directory (its latest checkpoint), local or URI. None needs ``random_init=true``."""
    random_init: bool = False
    """Export a freshly built, randomly initialised model (architecture from ``model`` and
    ``flame``) instead of a checkpoint: for tests and for checking a deployment pipeline
    before training. Its outputs mean nothing."""
    output_uri: str = "exported/dcnn_flame.onnx"
    """Where the ``.onnx`` file goes (local path or URI); the metadata goes next to it as
    ``<stem>.json``. Existing files are replaced."""
    with_vertices: bool = False
    """Also output the posed FLAME vertices [N, V, 3] (metres, head model space)."""
    with_au: bool = True
    """Include the AU detector (17 sigmoid activations). Its weights come from
    ``teachers_path``, else the checkpoint's ``supervision.teachers_path``, else (random_init
    only) a random detector; with none, the ``au`` output is NaN."""
    teachers_path: Optional[str] = None
    """Teachers file of jobs/train_supervision.py holding the AU detector (overrides the
    checkpoint's)."""
    image_size: Optional[int] = None
    """Input side in pixels (square). None = the model's ``image_size`` (224)."""
    opset: int = 17
    """ONNX opset version."""
    check_batch_sizes: list[int] = field(default_factory=lambda: [1, 3])
    """Batch sizes of the onnxruntime-vs-PyTorch comparison (the graph has a dynamic batch axis)."""
    atol: float = 1e-4
    """Comparison passes when |onnx - torch| <= atol + rtol * |torch| for every output value."""
    rtol: float = 1e-4
    """Relative part of the comparison tolerance (see atol)."""
    fail_on_mismatch: bool = True
    """Raise (non-zero exit) when the comparison fails; False only reports it."""
    seed: int = 0
    """Seed of the sample inputs (and of the weights with random_init)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture for random_init (a checkpoint brings its own)."""
    flame: FlameConfig = field(default_factory=FlameConfig)
    """Head model for random_init. With a checkpoint: model_path set = use this FLAME file
    (and its landmark/eyelid paths) instead of the checkpoint's; n_shape, n_expr and the
    other switches always come from the checkpoint."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Object-store settings for checkpoint, teachers_path and output_uri."""


@dataclass
class GenerateConfig:
    """The batch expression-generation job (jobs/generate.py): a character library ->
    reconstruction -> retargeted expression bank -> GLB/OBJ/preview/results under one prefix.

    Embedded default (``make demo``): every URI left at None uses the demo under ``demo_dir``
    (a sample library made by the project, a small checkpoint trained on the synthetic world)."""

    input_uri: Optional[str] = None
    """Character library: images under this prefix (local path or URI). A folder per character
    (``<prefix>/<character_id>/*.png``) or flat files (character_id = file stem). None with no
    manifest_uri = the demo sample library ``<demo_dir>/library`` (made when absent)."""
    manifest_uri: Optional[str] = None
    """Optional CSV or Parquet with columns character_id, image_uri (one row per image; several
    rows per character). Relative image URIs are resolved against input_uri (or the manifest's
    folder when input_uri is None). Used instead of listing when given."""
    output_uri: Optional[str] = None
    """Output prefix ``<out>``; outputs go to ``<out>/<name>/...``. None = ``<storage.uri>/generated``."""
    name: str = "default"
    """Run name (folder under output_uri). A rerun with the same name skips complete characters;
    the run is bound to its checkpoint and settings (another checkpoint needs a new name or
    overwrite=true). Nightly runs use e.g. ``nightly-2026-01-31``."""
    checkpoint: Optional[str] = None
    """Trained model: a checkpoint directory (model.pt, config.json, meta.json) or a training run
    directory (its latest checkpoint), local or URI. None = the demo checkpoint at
    ``<demo_dir>/checkpoint`` (trained on the synthetic world when absent)."""
    demo_dir: str = "demo_out"
    """Where the embedded demo keeps its sample library and checkpoint (see input_uri, checkpoint)."""
    demo_characters: int = 12
    """Characters of the demo sample library when it is generated."""
    teachers_path: Optional[str] = None
    """AU detector (teachers file of jobs/train_supervision.py) for the 17 AU activations. None =
    the checkpoint's ``supervision.teachers_path`` when it has one; without any, AU columns of
    reconstruction rows are NaN."""
    au_map_path: Optional[str] = None
    """AU -> FLAME expression/jaw map (.npz with au_to_expr, au_to_jaw; a path or a URI) for real
    FLAME models. None = the checkpoint's ``supervision.au_map_path`` when it has one, else the
    head model's own map (the procedural head has one). Checked on the driver before any work."""
    bank_path: Optional[str] = None
    """YAML file extending (or with bank_replace, replacing) the default expression bank."""
    bank_replace: bool = False
    """The bank file alone defines the bank."""
    expressions: Optional[list[str]] = None
    """Bank expressions to generate (names or aliases); None = the whole bank."""
    intensity: float = 1.0
    """Scale of every bank AU profile, in [0, 1]."""
    performance_uri: Optional[str] = None
    """Folder/prefix of an actor's images: their reconstructed expressions (and jaw) are applied
    onto every character (identity swap), as extra morph targets named ``perf_<image stem>``."""
    write_obj: bool = False
    """Also write one OBJ per expression (``<expression>.obj`` + ``character.mtl`` + albedo.png)."""
    preview: bool = True
    """Write ``preview.png``, a contact sheet of rendered expressions."""
    preview_size: int = 160
    """Side of each preview tile in pixels."""
    preview_max: int = 16
    """Most tiles on the preview sheet: the character's neutral mesh (the GLB's base mesh: its
    identity with zero expression and pose), then the first ``preview_max - 1`` expressions (the
    bank's order, then performance frames)."""
    bake_detail: bool = True
    """Move mesh vertices along their normals by the reconstructed detail displacement (the
    detail branch's UV map, per expression) so the meshes carry the character's detail."""
    overwrite: bool = False
    """Redo every character even when complete, and allow reusing a run name with another
    checkpoint or settings."""
    max_images_per_character: int = 8
    """Use at most this many images per character (sorted by URI); the rest are ignored."""
    batch_size: int = 4
    """Characters per batch of the reconstruction actor (images of a batch run as one forward
    pass when characters have the same number of images)."""
    decode_batch_size: int = 4
    """Characters per CPU decode/align task."""
    read_threads: int = 8
    """Images each decode task reads concurrently (an object store answers each read after tens
    of milliseconds; decoding takes a few). 1 = one after the other."""
    num_actors: int = 1
    """Reconstruction actors (Ray Data ActorPoolStrategy size); each loads the checkpoint once."""
    num_gpus: float = 0.0
    """GPUs per reconstruction actor (0 = CPU actors)."""
    num_cpus_per_actor: float = 1.0
    """CPUs reserved per reconstruction actor (match write_threads on GPU actors)."""
    write_threads: int = 1
    """Characters of a batch that one reconstruction actor writes in parallel (threads; the batch
    is retargeted and its previews rendered in one pass before). Writing (GLB, PNG, Parquet,
    uploads) is CPU work that would leave a GPU actor's GPU idle: 2-3 on GPU actors (on the
    16-core H200 machine 12 actors x 1 CPU x 2 threads was the fastest layout measured; see
    docs/generation.md). 1 = one after the other. With write_stage=tasks: threads per write task."""
    actor_calls: int = 1
    """Batches one reconstruction actor works on at once (Ray Data runs that many calls of the
    actor in threads). With 2, one batch's writing (CPU) overlaps the next batch's model pass:
    the device part (forward, retargeting, preview tiles) stays one batch at a time (a lock), so
    device memory does not grow; host memory holds one more batch per actor. 1 = one batch after
    the other (each actor's device idles while it writes). See docs/generation.md."""
    write_stage: str = "actor"
    """Who writes the characters' files: "actor" (the reconstruction actor, after its batch) or
    "tasks" (the actor only runs the model, retargeting and preview tiles and hands each
    character over, ~1.5 MB through the object store, to Ray Data CPU tasks that encode and write
    it on every core; for GPU actors, whose own CPU time otherwise bounds the job). Same files
    either way; see docs/generation.md."""
    write_batch_size: int = 8
    """write_stage=tasks: characters per write task (the actors' batches are split into blocks of
    this size, so one batch is written by several tasks at once)."""
    write_task_cpus: float = 1.0
    """write_stage=tasks: CPUs reserved per write task (below 1 runs more tasks than cores, for
    writes that wait on a slow object store)."""
    device: str = "auto"
    """Torch device of the actors: "auto" (cuda when the actor has a GPU, else cpu), "cpu", "cuda"."""
    bf16: bool = False
    """bf16 autocast for the network forward on CUDA (ignored on CPU); FLAME stays float32."""
    cuda_wait: str = "blocking"
    """How a GPU actor's thread waits for its GPU: "blocking" (sleeps until the GPU is done),
    "spin" (busy-polls a core), "yield", or "auto" (the driver's default, which spins while a
    process has fewer CUDA contexts than the machine has cores). Actors sharing a GPU that spin
    take cores from the decode tasks and the writers (dcnn_flame/generation/cuda_wait.py)."""
    margin: float = 0.1
    """Crop margin around the face box (as jobs/prepare.py)."""
    align: str = "box"
    """"box" or "landmarks5" (as jobs/prepare.py)."""
    detector: str = "auto"
    """Face boxes: "auto" (S3FD weights, else an OpenCV cascade, else centre crop), "s3fd",
    "opencv" or "center" (as jobs/prepare.py)."""
    landmarks: str = "auto"
    """68 landmarks for alignment: "auto", "fan" or "metadata" (= none for loose images)."""
    cascade_path: Optional[str] = None
    """OpenCV Haar cascade XML for detector=opencv."""
    center_crop_fraction: float = 0.8
    """detector=center: side of the centred square as a fraction of the short image side."""
    torch_hub_dir: Optional[str] = None
    """Where face-alignment weights are looked up (None = torch.hub.get_dir())."""
    min_crop_std: float = 4.0
    """An aligned crop whose pixel standard deviation (0-255) is below this has nothing in it
    (blank or flat image): it fails with reason "no_face". The only face check when no detector
    is available (detector=center)."""
    min_image_size: int = 32
    """Inputs smaller than this (pixels, either side) fail with reason "too_small"."""
    max_image_pixels: int = 50_000_000
    """Inputs with more pixels fail with reason "too_large" (checked from the header)."""
    max_image_bytes: int = 67_108_864
    """Input files larger than this fail with reason "too_large" (not read)."""
    fail_on_errors: bool = False
    """Exit non-zero when any character or image failed. Default: failures are data (rows in
    the failures table, listed in the summary); only a broken job exits non-zero."""
    progress: bool = True
    """Ray Data progress bars."""
    ray_stats: bool = False
    """Print Ray Data's per-operator statistics (``Dataset.stats()``: wall, CPU, blocked time and
    rows of the decode tasks and the actors) after the run, to find where a slow job waits."""
    stall_timeout_s: float = 1800.0
    """Fail when the pipeline makes no progress for this long (Ray Data no-progress timeout)."""
    fault_injection: Optional[str] = None
    """Testing only: a directory; the first reconstruction actor to process a batch writes its PID
    there (``actor_pid``) and waits for ``release`` to appear, so a test can kill it mid-run."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Object-store settings for every URI of the job."""
    ray: RayConfig = field(default_factory=RayConfig)
    """How to reach Ray."""
    flame: FlameConfig = field(default_factory=FlameConfig)
    """Head model. With model_path None the checkpoint's own head model is used; n_shape and
    n_expr always come from the checkpoint."""


@dataclass
class SupervisionTrainConfig:
    """Training the supervision teachers (jobs/train_supervision.py): the AU detector and the
    expression classifier of paper Sec. 3.4, on labelled Parquet shards. Defaults follow the
    paper (Adam, lr 1e-4, batch 16, 60 epochs, seed 42, 80/10/10 split)."""

    data_uri: Optional[str] = None
    """Shards with AU and/or expression labels: a directory/prefix of ``.parquet`` files (searched
    recursively) or one file, local or s3://... None = ``<storage.uri>/prepared/synthetic/shards``
    (where ``jobs/prepare.py source=synthetic`` writes)."""
    output_uri: Optional[str] = None
    """The teachers file to write (a metrics JSON ``<stem>.metrics.json`` goes next to it). None =
    ``<storage.uri>/teachers/teachers.pt``. Point the training job's ``supervision.teachers_path`` at it."""
    epochs: int = 60
    """Passes over the training images (paper: 60)."""
    batch_size: int = 16
    """Training images per step (paper: 16)."""
    eval_batch_size: int = 64
    """Images per forward pass when evaluating val/test."""
    lr: float = 1e-4
    """Adam learning rate of both networks (paper: 1e-4)."""
    lr_schedule: str = "constant"
    """"constant" (paper) or "cosine": epoch e of E trains at lr * (1 + cos(pi (e - 1) / E)) / 2,
    which lets a short run settle (useful with a larger lr on a small machine)."""
    weight_decay: float = 0.0
    """Adam L2 penalty (the paper gives none)."""
    seed: int = 42
    """Seed of the identity split, the initialisation, the batch order and the augmentation (paper: 42)."""
    val_fraction: float = 0.1
    """Fraction of identities held out for validation (best-epoch selection); train gets the rest
    of 1 - val_fraction - test_fraction. The paper says 80/10/10; we split by identity so no
    person is in two splits. At least one identity each when the fraction is > 0."""
    test_fraction: float = 0.1
    """Fraction of identities held out for the final test metrics."""
    input_size: int = 112
    """Side of the square image both networks see (their ``input_size``; 224 as the paper, 112 for
    speed). Images are resized to it once, when decoded."""
    init_from: Optional[str] = None
    """A teachers file (path or URI) whose weights both networks start from instead of a random
    initialisation: continue a run, or fine-tune synthetic-trained teachers on real labels. It
    may come from another input_size (progressive resizing: 112 px, then 224); the rest of the
    architecture must match. None = random initialisation (seed)."""
    max_images: Optional[int] = None
    """Use only the first N images (shards in sorted order, then row and view order); None = all.
    For quick runs."""
    num_threads: Optional[int] = None
    """torch intra-op threads (``torch.set_num_threads``); None = torch's default."""
    decode_threads: int = 4
    """Threads decoding PNG/JPEG images."""
    cache_max_bytes: int = 4 * 1024**3
    """Decode all images once and keep them in memory as uint8 (3 x input_size^2 bytes each) when
    they fit in this many bytes; otherwise stream them from the shards every epoch."""
    device: str = "auto"
    """"auto" (cuda when available, else cpu), "cpu" or "cuda[:i]"."""
    augment: bool = True
    """Light training augmentation: horizontal flip, random crop/scale, colour jitter (our AUs are
    bilateral, so a flip keeps the labels)."""
    flip_prob: float = 0.5
    """Probability of a horizontal flip."""
    crop_scale_min: float = 0.9
    """Random crop side as a fraction of the image, uniform in [crop_scale_min, 1], at a random
    position, resized back to input_size (1 = no crop)."""
    color_jitter: float = 0.1
    """Brightness, contrast and saturation factors uniform in [1 - j, 1 + j] (0 = none)."""
    au_pos_weight_max: float = 10.0
    """Clamp of the per-AU positive weights n_neg / n_pos of the weighted BCE (from training labels)."""
    au_threshold: float = 0.5
    """AU intensity at which an AU counts as active for the per-AU F1."""
    aumr_eps: float = 0.1
    """Matching threshold of AUMR (Eq. 18) on [0, 1] intensities."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Object-store settings for data_uri and output_uri."""


@dataclass
class SearchConfig:
    """One search of jobs/tune.py: a grid over config keys and/or named variants, times seeds.

    Trials are the cartesian product ``grid x variants x seeds``; every key is a dotted path
    into :class:`TrainConfig` (e.g. ``loss.content``, ``model.multiscale_fusion``)."""

    name: str = "alpha_beta"
    """Name of the search (the default experiment name)."""
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    """Dotted TrainConfig key -> values to try (grid search; e.g. loss.content = alpha)."""
    labels: Dict[str, str] = field(default_factory=dict)
    """Short display names of grid keys in tables and plots (e.g. loss.content -> alpha)."""
    variants: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """Variant name -> dotted-key overrides (an ablation); empty = no variant axis."""
    seeds: List[int] = field(default_factory=lambda: [0])
    """Repeats: each grid point / variant runs once per seed (trainer.seed); mean +- std over them."""


@dataclass
class TuneJobConfig:
    """A Ray Tune search over training runs (jobs/tune.py): one TorchTrainer per trial."""

    name: Optional[str] = None
    """Experiment name (None = search.name); rerunning the same name resumes the search."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """What to search (configs/search/*.yaml: alpha_beta, ablation)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The base training run of every trial (trial values override it; its name, storage and
    ray fields are set per trial by the driver)."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Where the experiment goes: <storage.uri>/tune/<name>/ (trials' runs, results, plots)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """How the driver reaches Ray."""
    score: Dict[str, float] = field(default_factory=lambda: {"val/macro_f1": -0.5, "val/nonmetric": 0.5})
    """Trial score = score_offset + sum(weight * metric), lower is better. The default is the
    paper's criterion (Section 3.1): the average of (1 - weighted F1) and the non-metric error."""
    score_offset: float = 0.5
    """Constant added to the score (0.5 makes the default exactly 0.5 (1 - F1) + 0.5 nonmetric)."""
    table_metrics: List[str] = field(default_factory=lambda: [
        "val/accuracy", "val/macro_f1", "val/vertex_error_mm", "val/ssim", "val/aumr", "val/l_eval",
        "val/nonmetric", "val/mean_face_error_mm", "val/vertex_error_aligned_mm", "val/mean_face_error_aligned_mm"])
    """Metrics in the results table and plots (those a trial did not report are left out)."""
    plot_metric: Optional[str] = None
    """Metric of the heat map / bar chart (None = the score)."""
    max_concurrent_trials: Optional[int] = None
    """Trials at once (None = as many as the cluster's resources allow; on GPUs set it to
    #GPUs // GPUs per trial)."""
    asha: bool = False
    """Stop bad trials early with ASHA (on the score, by training step)."""
    asha_grace_period: int = 1
    """ASHA: steps before a trial may be stopped."""
    asha_reduction_factor: int = 2
    """ASHA: keep 1/reduction_factor of the trials at each rung."""
    resume: bool = True
    """Restore the experiment when <storage.uri>/tune/<name> holds one (finished trials are
    kept, unfinished ones resume from their last checkpoint); False = refuse to reuse the name."""


def register_configs() -> None:
    """Register every schema in Hydra's ConfigStore (idempotent; called by jobs)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="head_demo_schema", node=HeadDemoConfig)
    cs.store(name="prepare_schema", node=PrepareConfig)
    cs.store(group="flame", name="flame_schema", node=FlameConfig)
    cs.store(group="storage", name="storage_schema", node=StorageConfig)
    cs.store(group="ray", name="ray_schema", node=RayConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="query_schema", node=QueryConfig)
    cs.store(name="export_onnx_schema", node=ExportConfig)
    cs.store(name="generate_schema", node=GenerateConfig)
    cs.store(name="train_supervision_schema", node=SupervisionTrainConfig)
    cs.store(name="tune_schema", node=TuneJobConfig)
    cs.store(group="search", name="search_schema", node=SearchConfig)
