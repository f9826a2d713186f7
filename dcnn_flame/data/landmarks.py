"""68 landmarks and face boxes from face-alignment (FAN + S3FD), offline, with fallbacks.

face-alignment 1.5.0 downloads its weights on first use; this project never does. We look
for the files it would download, under the torch hub cache (``torch.hub.get_dir()/checkpoints``,
i.e. ``$TORCH_HOME/hub/checkpoints``), with the exact names the package uses:

- 2D FAN: ``2DFAN4-11f355bf06.pth.tar``, a ``state_dict`` of ``face_alignment.models.FAN(4)``
  (the package loads it with ``torch.load(weights_only=True)`` + ``load_state_dict``).
- S3FD detector: ``s3fd-619a316812.pth``, a ``state_dict`` of
  ``face_alignment.detection.sfd.net_s3fd.s3fd`` (we hand its path to the package, which then
  loads it with ``weights_only=True`` too).

When FAN is missing the ingest keeps the 5 metadata landmarks (VGGFace2) and leaves the
68-landmark column NaN; when S3FD is missing, images without a box use an OpenCV Haar cascade
if this OpenCV has one, else a centred square (see :func:`resolve_detector`). The choice is
made once on the driver and printed; workers get explicit file paths (their torch hub dir
may differ from the driver's).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

#: File names/URLs used by face-alignment 1.5.0 (face_alignment/api.py models_urls['2DFAN-4']
#: and face_alignment/detection/sfd/sfd_detector.py models_urls['s3fd']).
FAN_2D_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"
S3FD_URL = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"
FAN_2D_FILE = FAN_2D_URL.rsplit("/", 1)[1]
S3FD_FILE = S3FD_URL.rsplit("/", 1)[1]

#: Detector names accepted by :func:`resolve_detector`.
DETECTORS = ("auto", "s3fd", "opencv", "center")


@dataclass(frozen=True)
class FanWeights:
    """Where face-alignment's weight files are (None = not present)."""

    checkpoints_dir: str
    fan: Optional[str]
    s3fd: Optional[str]

    @property
    def has_fan(self) -> bool:
        return self.fan is not None

    @property
    def has_detector(self) -> bool:
        return self.s3fd is not None

    def describe(self) -> str:
        """One line for logs and the manifest: what was found, and how to enable what wasn't."""
        if self.fan:
            return f"68 landmarks from face-alignment 2D FAN ({self.fan}, CPU)"
        return (f"face-alignment FAN weights not found ({os.path.join(self.checkpoints_dir, FAN_2D_FILE)}): "
                f"using the 5 metadata landmarks where the source has them, 68-landmark column NaN. "
                f"To get 68 landmarks, copy {FAN_2D_FILE} (from {FAN_2D_URL}) into {self.checkpoints_dir}.")


def checkpoints_dir(hub_dir: Optional[str] = None) -> str:
    """``<hub_dir>/checkpoints``; ``hub_dir`` None = ``torch.hub.get_dir()`` (honours TORCH_HOME)."""
    if hub_dir is None:
        import torch

        hub_dir = torch.hub.get_dir()
    return os.path.join(os.path.abspath(os.path.expanduser(hub_dir)), "checkpoints")


def find_fan_weights(hub_dir: Optional[str] = None) -> FanWeights:
    """Look for the FAN and S3FD files in the torch hub cache (no import of face_alignment)."""
    ckpt = checkpoints_dir(hub_dir)

    def present(name: str) -> Optional[str]:
        p = os.path.join(ckpt, name)
        return p if os.path.isfile(p) and os.path.getsize(p) > 0 else None

    return FanWeights(checkpoints_dir=ckpt, fan=present(FAN_2D_FILE), s3fd=present(S3FD_FILE))


def opencv_cascade_path(path: Optional[str] = None) -> Optional[str]:
    """A usable Haar cascade XML: ``path`` if given, else OpenCV's bundled frontal-face one.
    None when this OpenCV has no CascadeClassifier (OpenCV 5 moved it out) or no file."""
    try:
        import cv2
    except ImportError:
        return None
    if not hasattr(cv2, "CascadeClassifier"):
        return None
    if path is None:
        base = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if not base:
            return None
        path = os.path.join(base, "haarcascade_frontalface_default.xml")
    return path if os.path.isfile(path) else None


@dataclass(frozen=True)
class DetectorChoice:
    """The detector used for images without a metadata box."""

    name: str
    """"s3fd", "opencv" or "center"."""
    path: Optional[str]
    """Weights/cascade file, None for "center"."""
    message: str
    """What was chosen and why (printed on the driver)."""


def resolve_detector(requested: str, weights: FanWeights, cascade_path: Optional[str] = None) -> DetectorChoice:
    """Pick the face detector: "auto" = S3FD when its weights exist, else an OpenCV cascade
    when available, else a centred square (assumes a centred, frame-filling face, as in
    portraits and avatar renders). Naming one that is unavailable raises with the fix."""
    if requested not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {requested!r}")
    cascade = opencv_cascade_path(cascade_path)
    if requested in ("auto", "s3fd") and weights.s3fd:
        return DetectorChoice("s3fd", weights.s3fd, f"faces detected with face-alignment S3FD ({weights.s3fd})")
    if requested == "s3fd":
        raise FileNotFoundError(f"detector=s3fd but {S3FD_FILE} is not in {weights.checkpoints_dir}: copy it "
                                f"there (from {S3FD_URL}) or use detector=auto.")
    if requested in ("auto", "opencv") and cascade:
        return DetectorChoice("opencv", cascade, f"faces detected with an OpenCV Haar cascade ({cascade})")
    if requested == "opencv":
        raise FileNotFoundError("detector=opencv but this OpenCV has no CascadeClassifier or the cascade file "
                                "is missing: set cascade_path or use detector=auto.")
    why = "" if requested == "center" else (
        f" (no {S3FD_FILE} in {weights.checkpoints_dir} and no OpenCV Haar cascade)")
    return DetectorChoice("center", None, f"no face detector{why}: using a centred square crop")


class FanLandmarker:
    """face-alignment's 2D FAN (68 points) and optionally its S3FD detector, built without
    downloads or compilation.

    Args:
        fan_path: path of ``2DFAN4-11f355bf06.pth.tar`` (must exist).
        s3fd_path: path of ``s3fd-619a316812.pth`` or None (then only boxes we pass are used).
        device: torch device string ("cpu" by default).
    """

    def __init__(self, fan_path: str, s3fd_path: Optional[str] = None, device: str = "cpu"):
        import torch

        if not os.path.isfile(fan_path) or os.path.basename(fan_path) != FAN_2D_FILE:
            raise FileNotFoundError(f"FAN weights must be a file named {FAN_2D_FILE}, got {fan_path!r}")
        import face_alignment

        # Denormal floats make the FAN hourglasses ~10x slower on CPU; flushing them does
        # not change the landmarks (heatmap argmax).
        torch.set_flush_denormal(True)
        # face-alignment finds FAN under torch.hub.get_dir()/checkpoints: point it at the
        # directory of the file we were given, for the duration of the constructor only.
        hub_dir = os.path.dirname(os.path.dirname(os.path.abspath(fan_path)))
        previous = torch.hub.get_dir()
        torch.hub.set_dir(hub_dir)
        try:
            if s3fd_path:
                detector, kwargs = "sfd", {"path_to_detector": s3fd_path}
            else:
                # Needs no weights; we always pass boxes ourselves.
                detector, kwargs = "folder", {}
            self._fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=device, flip_input=False,
                face_detector=detector, face_detector_kwargs=kwargs, compile=False)
        finally:
            torch.hub.set_dir(previous)
        self.has_detector = bool(s3fd_path)

    def landmarks(self, image: np.ndarray, box_xyxy: np.ndarray) -> np.ndarray:
        """[68, 2] float64 landmarks (source pixels, centres at +0.5) of the face in ``box_xyxy``.

        Args:
            image: [H, W, 3] uint8 RGB.
            box_xyxy: [4] face box x0, y0, x1, y1.
        """
        box = np.asarray(box_xyxy, dtype=np.float64)[:4]
        out = self._fa.get_landmarks_from_image(image, detected_faces=[box])
        if not out:
            return np.full((68, 2), np.nan)
        # FAN returns integer pixel indices; our convention puts pixel centres at +0.5.
        return np.asarray(out[0], dtype=np.float64)[:, :2] + 0.5

    def detect(self, image: np.ndarray, max_side: int = 640) -> Optional[np.ndarray]:
        """[5] x0, y0, x1, y1, score of the most confident face, or None (S3FD on a copy
        shrunk to ``max_side`` for speed)."""
        if not self.has_detector:
            raise RuntimeError("FanLandmarker was built without S3FD weights")
        return _detect_scaled(lambda im: self._fa.face_detector.detect_from_image(im), image, max_side)


class CascadeDetector:
    """OpenCV Haar cascade face detector (largest face)."""

    def __init__(self, path: str):
        import cv2

        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise ValueError(f"cannot load the OpenCV cascade {path!r}")

    def detect(self, image: np.ndarray, max_side: int = 640) -> Optional[np.ndarray]:
        """[5] x0, y0, x1, y1, score(=1) of the largest face, or None."""
        import cv2

        def run(im):
            grey = cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY)
            found = self._cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=4)
            return [np.array([x, y, x + w, y + h, float(w * h)], dtype=np.float64) for (x, y, w, h) in found]

        box = _detect_scaled(run, image, max_side)
        if box is not None:
            box[4] = 1.0
        return box


def _detect_scaled(fn, image: np.ndarray, max_side: int) -> Optional[np.ndarray]:
    import cv2

    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    small = image if s >= 1.0 else cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                                              interpolation=cv2.INTER_AREA)
    boxes = [np.asarray(b, dtype=np.float64) for b in (fn(np.ascontiguousarray(small)) or [])]
    boxes = [b for b in boxes if b.shape[0] >= 5 and np.all(np.isfinite(b[:5])) and b[2] > b[0] and b[3] > b[1]]
    if not boxes:
        return None
    best = max(boxes, key=lambda b: b[4]).copy()
    best[:4] /= s
    return best


class S3fdDetector:
    """face-alignment's S3FD detector alone (when FAN is not used), from an explicit file."""

    def __init__(self, path: str, device: str = "cpu"):
        import torch
        from face_alignment.detection.sfd.sfd_detector import SFDDetector

        torch.set_flush_denormal(True)  # see FanLandmarker
        self._det = SFDDetector(device=device, path_to_detector=path)

    def detect(self, image: np.ndarray, max_side: int = 640) -> Optional[np.ndarray]:
        """[5] x0, y0, x1, y1, score of the most confident face, or None."""
        return _detect_scaled(self._det.detect_from_image, image, max_side)
