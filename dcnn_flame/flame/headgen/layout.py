"""Anatomical numbers of the procedural head (metres, FLAME frame).

Frame: y up, the face looks along +z, x towards the subject's left (so the subject's
left eye has x > 0). The origin sits inside the head, a little below its centre,
like FLAME's. One adult head: ~0.155 m wide, ~0.23 m from the crown to the chin.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """Where the facial features are (the subject's left side; the right mirrors x)."""

    crown_y: float = 0.125
    """Height of the top of the head."""
    axis_z: float = -0.015
    """z of the vertical axis the head's meridian curves turn around."""
    neck_bottom_y: float = -0.175
    """Height of the open neck cut."""

    eye_x: float = 0.0315
    """Eyeball centre, distance from the mid-plane (inter-pupillary distance / 2)."""
    eye_y: float = 0.0150
    """Eyeball centre height."""
    eye_z: float = 0.0600
    """Eyeball centre depth."""
    eye_radius: float = 0.0120
    """Eyeball radius (an adult eye is ~24 mm across)."""
    cornea_bulge: float = 0.0008
    """How far the cornea stands out of the eyeball sphere at the pupil."""
    lid_gap: float = 0.0010
    """Lid margin distance outside the eyeball surface (room for the blink's chord)."""
    eye_inner_x: float = 0.0170
    """Inner eye corner (medial canthus), distance from the mid-plane."""
    eye_outer_x: float = 0.0455
    """Outer eye corner (lateral canthus)."""
    eye_inner_y: float = 0.0130
    eye_outer_y: float = 0.0148
    upper_lid_height: float = 0.0058
    """Upper lid margin's height above the corner line at its peak."""
    lower_lid_depth: float = 0.0035
    """Lower lid margin's depth below the corner line at its lowest."""

    brow_y: float = 0.0335
    """Height of the brows above the eye centres' level."""

    nose_root_y: float = 0.0270
    """Nasion (root of the nose between the eyes)."""
    nose_tip_y: float = -0.0115
    """Pronasale (most forward point of the nose)."""
    nose_base_y: float = -0.0275
    """Subnasale (where the nose meets the upper lip)."""
    nose_tip_height: float = 0.0245
    """How far the nose tip stands in front of the face."""
    ala_x: float = 0.0145
    """Half the nose width at the wings (alae)."""

    mouth_y: float = -0.0500
    """Height of the mouth slit (stomion)."""
    mouth_half_width: float = 0.0245
    """Mouth corner (commissure) distance from the mid-plane."""
    upper_lip_height: float = 0.0075
    """Upper-lip red height at the centre."""
    lower_lip_height: float = 0.0095
    """Lower-lip red height at the centre."""

    chin_y: float = -0.0830
    """Height of the chin's most forward point."""
    menton_y: float = -0.0990
    """Lowest point of the chin."""

    jaw_hinge_y: float = -0.0050
    """Temporomandibular joint height (in front of the ear)."""
    jaw_hinge_z: float = 0.0040
    """Temporomandibular joint depth."""
    jaw_hinge_x: float = 0.0560
    """Distance of the skin points the jaw joint is regressed from (just below the
    cheekbone, in front of the ears)."""
    ear_y: float = 0.0000
    """Ear centre height."""
    ear_z: float = -0.0150
    """Ear centre depth."""

    def eye_centre(self, side: int) -> np.ndarray:
        """[3] eyeball centre; ``side`` +1 = subject's left (x > 0), -1 = right."""
        return np.array([side * self.eye_x, self.eye_y, self.eye_z])

    def eye_opening(self, side: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Lid margin polyline of one eye in frontal (x, y).

        Args:
            side: +1 left eye, -1 right eye.
            n: points per lid, corners included (the loop has ``2 n - 2`` points).

        Returns:
            upper [n, 2] from the inner to the outer corner, lower [n, 2] likewise.
        """
        s = np.linspace(0.0, 1.0, n)
        # An almond: the curve between the corners plus a lid bulge that is 0 at both
        # corners; the bulges peak medially (upper) and laterally (lower) as in adults.
        x = self.eye_inner_x + s * (self.eye_outer_x - self.eye_inner_x)
        base = self.eye_inner_y + s * (self.eye_outer_y - self.eye_inner_y)
        up = self.upper_lid_height * _almond(s, 0.45)
        lo = self.lower_lid_depth * _almond(s, 0.58)
        upper = np.stack([side * x, base + up], axis=1)
        lower = np.stack([side * x, base - lo], axis=1)
        return upper, lower

    def brow_line(self, ax: np.ndarray) -> np.ndarray:
        """Height of the brow's centre line at distance ``ax`` from the mid-plane."""
        return self.brow_y + 0.0035 * (1.0 - ((np.asarray(ax) - 0.031) / 0.025) ** 2)

    def mouth_slit(self, n: int) -> np.ndarray:
        """[n, 2] mouth slit from the subject's right corner (x < 0) to the left one."""
        x = np.linspace(-self.mouth_half_width, self.mouth_half_width, n)
        u = x / self.mouth_half_width
        # The middle of the slit sits a little lower than the corners' line.
        y = self.mouth_y - 0.0008 * (1.0 - u**2)
        return np.stack([x, y], axis=1)


def _almond(s: np.ndarray, peak: float) -> np.ndarray:
    """Lid bulge on [0, 1]: 0 at both ends, 1 at ``peak``, pointed-ish corners."""
    # Warp s so that the maximum of 4 w (1 - w) lands on ``peak``.
    gamma = np.log(0.5) / np.log(peak)
    w = np.clip(s, 0.0, 1.0) ** gamma
    b = 4.0 * w * (1.0 - w)
    return b ** 0.85


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step 0 -> 1 between ``edge0`` and ``edge1`` (either order)."""
    t = np.clip((np.asarray(x, dtype=np.float64) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


DEFAULT_LAYOUT = Layout()
