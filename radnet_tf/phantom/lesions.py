"""Hemorrhages and hard negatives for the head phantom, placed on the anatomical atlas.

Every shape is a function of atlas (MNI, RAS mm) coordinates and of the atlas channels
sampled there (`radnet_tf.phantom.anatomy`), so a lesion follows the study's warp and sits
where that kind of bleed sits in real heads:

  EDH  epidural: biconvex lens under the inner table of the convexity (thick, short),
       stopped by the cranial sutures (`skull_bone`: the dura is fixed there)
  SDH  subdural: long thin crescent along the convexity, or a layer along the falx
  SAH  subarachnoid: blood filling the CSF of basal cisterns, Sylvian fissures or sulci
  IPH  intraparenchymal: irregular mass in the parenchyma (deep or lobar), oedema rim
  IVH  intraventricular: blood in a ventricle, often layering posteriorly (fluid level)

Blood is 50-90 HU (diluted in CSF for SAH and IVH), with internal texture and, for some,
a mixed-density (hyperacute) part. Large EDH, SDH and IPH push the brain away (mass
effect, `Lesion.push`): the phantom samples the brain channels at displaced points.
Hard negatives (`draw_calcifications`): choroid plexus, pineal, basal ganglia and falx
calcifications, which are bright but not blood.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from radnet_tf.phantom import anatomy as anat
from radnet_tf.contract import SUBTYPES

# Candidate atlas labels per lesion type (the centre is one of these voxels).
_PLACES = {
    "EDH": (anat.LABEL_SURFACE,),
    "SDH": (anat.LABEL_SURFACE, anat.LABEL_SURFACE, anat.LABEL_SURFACE, anat.LABEL_FALX),
    "SAH": (anat.LABEL_CISTERN, anat.LABEL_SULCUS, anat.LABEL_SULCUS),
    "IPH": (anat.LABEL_PARENCHYMA,),
    "IVH": (anat.LABEL_VENTRICLE,),
}
_C = {name: i for i, name in enumerate(anat.CHANNELS)}

# Cranial vault bones, split by the main sutures (approximate planes and arcs in the atlas's
# MNI mm, placed from bregma ~(0, 12, 80), pterion ~(+-45, 18, 5), lambda ~(0, -80, 50),
# asterion ~(+-55, -70, -20)); an epidural bleed strips the dura from one bone and stops
# where the dura is fixed at its sutures.
BONES = (
    "frontal",
    "parietal_left",
    "parietal_right",
    "temporal_left",
    "temporal_right",
    "occipital",
)


def skull_bone(m):
    """The vault bone over atlas points: int64 [N], an index into `BONES`.

    Args:
      m: float32 [3, N] atlas (MNI, RAS) mm.
    """
    x, y, z = m
    coronal = 12.0 + 0.08 * (80.0 - z)  # the suture's y at height z
    lambdoid = -80.0 + 0.15 * (50.0 - z)
    squamosal = 32.0 - 0.005 * (y + 20.0) ** 2  # top of the temporal squama, z at y
    right = (x >= 0).astype(np.int64)
    bone = np.where(z < squamosal, np.where(np.abs(x) > 35.0, 3 + right, 1 + right), 1 + right)
    bone = np.where(y > coronal, 0, bone)
    return np.where(y < lambdoid, 5, bone).astype(np.int64)


@dataclasses.dataclass
class Lesion:
    """One bleed.

    Attributes:
      kind: subtype code (contract.SUBTYPES).
      centre: float32 [3] atlas mm.
      size: characteristic size, mm.
      blood_hu: mean attenuation, HU.
      push: mass effect: displacement of the brain at the centre, mm (0: none).
      reach: mass effect's Gaussian width, mm.
      params: shape parameters (per kind).
    """

    kind: str
    centre: np.ndarray
    size: float
    blood_hu: float
    push: float
    reach: float
    params: dict

    def fraction(self, m, ch, patient_y):
        """Blood fraction in [0, 1] at atlas points.

        Args:
          m: float32 [3, N] atlas mm (the study's warp applied).
          ch: float32 [N, C] atlas channels at m (brain channels at the displaced points).
          patient_y: float32 [N] patient anterior coordinate (RAS y), mm: gravity is
            along -y for a supine patient (fluid levels).
        Returns:
          float32 [N].
        """
        d = m - self.centre[:, None]
        dist = np.sqrt(np.einsum("ij,ij->j", d, d))
        p = self.params
        icv, depth = ch[:, _C["icv"]], ch[:, _C["depth"]]
        inside = icv > 0.5
        if self.kind == "EDH" or (self.kind == "SDH" and p["along"] == "convexity"):
            r = np.minimum(dist / p["radius"], 1.0)
            profile = 1 - r ** p["power"]
            f = inside & (dist < p["radius"]) & (depth < p["thickness"] * profile)
            if self.kind == "EDH":  # does not cross a suture (a subdural does)
                f &= skull_bone(m) == p["bone"]
            return f.astype(np.float32)
        if self.kind == "SDH":  # along the falx: a layer beside the midline
            f = inside & (dist < p["radius"]) & (np.abs(d[0]) < p["thickness"]) & (depth > 1.0)
            return f.astype(np.float32)
        csf = np.clip(icv - ch[:, _C["gm"]] - ch[:, _C["wm"]], 0, 1)
        vent = ch[:, _C["vent"]]
        if self.kind == "SAH":
            near = np.clip(1.5 - 1.5 * dist / p["radius"], 0, 1)
            return np.clip(1.4 * (csf - vent), 0, 1) * near * inside
        if self.kind == "IVH":
            f = np.clip(1.3 * vent, 0, 1) * (dist < p["radius"])
            if p["level"] is not None:
                f = f * (patient_y < p["level"])
            return f.astype(np.float32)
        # IPH: an irregular ellipsoid.
        e = self._iph_radius(d)
        return (inside & (e < 1.0) & (depth > 1.0)).astype(np.float32)

    def _iph_radius(self, d):
        p = self.params
        q = (d[0] / p["radii"][0]) ** 2 + (d[1] / p["radii"][1]) ** 2 + (d[2] / p["radii"][2]) ** 2
        ang = np.arctan2(d[1], d[0])
        return q * (1 + p["wobble"] * np.sin(p["lobes"] * ang + p["phase"]))

    def oedema(self, m, ch):
        """Oedema fraction around an IPH (0 elsewhere), float32 [N]."""
        if self.kind != "IPH" or self.params["rim"] <= 0:
            return None
        e = self._iph_radius(m - self.centre[:, None])
        inside = ch[:, _C["icv"]] > 0.5
        return (inside & (e >= 1.0) & (e < self.params["rim"])).astype(np.float32)

    def hu(self, m):
        """Blood attenuation at atlas points (texture and mixed density), float32 [N]."""
        p = self.params
        val = np.full(m.shape[1], self.blood_hu, np.float32)
        if p["texture"] > 0:
            val += p["texture"] * np.sin(p["wave"] @ m + p["wave_phase"]).astype(np.float32)
        if p["swirl"] is not None:
            c, r, drop = p["swirl"]
            d = m - c[:, None]
            val -= drop * (np.einsum("ij,ij->j", d, d) < r * r)
        return val


def draw_lesion(rng, atlas, to_patient, z_range, kind=None):
    """Draws one bleed whose centre lies within the slab.

    Args:
      rng: NumPy generator.
      atlas: `synth_anatomy.Atlas`.
      to_patient: function float32 [N, 3] atlas mm -> float32 [N, 3] patient RAS mm (the
        study's pose, without its small warp).
      z_range: (first, last) slice position, mm.
      kind: subtype code, or None to draw one.
    Returns:
      A `Lesion`, or None when no place of that kind lies in the slab.
    """
    kind = kind or SUBTYPES[int(rng.integers(len(SUBTYPES)))]
    places = _PLACES[kind]
    label = places[int(rng.integers(len(places)))]
    size = float(np.exp(rng.uniform(np.log(4.0), np.log(32.0))))
    points = atlas.points(label)
    z = to_patient(points)[:, 2]
    ok = np.flatnonzero((z >= z_range[0] - 1.0) & (z <= z_range[1] + 1.0))
    if ok.size == 0:
        return None
    centre = points[int(ok[rng.integers(ok.size)])] + rng.uniform(-0.5, 0.5, 3).astype(np.float32)
    blood = float(rng.uniform(50, 90))
    params = {"texture": float(rng.uniform(0, 8)), "swirl": None}
    unit = rng.normal(size=3)
    params["wave"] = (unit / np.linalg.norm(unit) * 2 * np.pi / rng.uniform(8, 20)).astype(
        np.float32
    )
    params["wave_phase"] = float(rng.uniform(0, 2 * np.pi))
    shape, push, reach, own_blood = _draw_shape(rng, kind, label, size, centre, to_patient)
    params.update(shape)
    blood = blood if own_blood is None else own_blood
    if kind in ("EDH", "SDH", "IPH") and rng.uniform() < 0.2:  # mixed density: a hyperacute part
        offset = rng.normal(size=3) * 0.3 * size
        params["swirl"] = (
            (centre + offset).astype(np.float32),
            0.4 * size + 1.0,
            float(rng.uniform(15, 30)),
        )
    return Lesion(kind, centre.astype(np.float32), size, blood, push, reach, params)


def _draw_shape(rng, kind, label, size, centre, to_patient):
    """The kind's shape parameters, drawn from `rng`: (params dict, push mm, reach mm,
    blood HU drawn for the kind or None to keep the common draw)."""
    if kind == "EDH":
        radius = 1.2 * size + 10
        thickness = min(0.45 * radius, 22.0) * rng.uniform(0.5, 1.0)
        bone = int(skull_bone(centre[:, None].astype(np.float32))[0])
        params = dict(radius=radius, thickness=thickness, power=2.0, along="convexity", bone=bone)
        return params, 0.7 * thickness, 0.9 * radius, None
    if kind == "SDH":
        if label == anat.LABEL_FALX:
            return (
                dict(radius=size + 15, thickness=float(rng.uniform(1.5, 5.0)), along="falx"),
                0.0,
                1.0,
                None,
            )
        radius = 2.0 * size + 20
        thickness = float(rng.uniform(2.0, min(4.0 + 0.4 * size, 16.0)))
        params = dict(radius=radius, thickness=thickness, power=4.0, along="convexity")
        return params, 0.8 * thickness, 0.9 * radius, None
    if kind == "SAH":
        return dict(radius=size + 8), 0.0, 1.0, float(rng.uniform(50, 85))
    if kind == "IVH":
        radius = 0.8 * size + 6
        layering = rng.uniform() < 0.6
        centre_y = float(to_patient(centre[None, :])[0, 1]) if layering else None
        level = None if centre_y is None else centre_y + float(rng.uniform(-3, 4))
        return dict(radius=radius, level=level), 0.0, 1.0, float(rng.uniform(50, 85))
    radii = (0.5 * size + 1.5) * rng.uniform(0.6, 1.0, size=3)  # IPH
    params = dict(
        radii=radii.astype(np.float32),
        wobble=float(rng.uniform(0, 0.3)),
        lobes=int(rng.integers(2, 5)),
        phase=float(rng.uniform(0, 2 * np.pi)),
        rim=float((1 + rng.uniform(0.0, 0.7)) ** 2) if size > 8 else 0.0,
        oedema_hu=float(rng.uniform(4, 12)),
    )
    if size > 12:
        return params, 0.4 * float(radii.mean()), 2.5 * float(radii.mean()), None
    return params, 0.0, 1.0, None


def displacement(lesions, m):
    """Mass effect: where to sample the brain channels, float32 [3, N] (None: no push)."""
    pushing = [les for les in lesions if les.push > 0]
    if not pushing:
        return None
    src = m.copy()
    for les in pushing:
        d = les.centre[:, None] - m
        dist = np.sqrt(np.einsum("ij,ij->j", d, d)) + 1e-3
        g = les.push * np.exp(-0.5 * (dist / les.reach) ** 2) / dist
        src += d * g.astype(np.float32)
    return src


def draw_calcifications(rng):
    """Physiological calcifications (hard negatives): list of (centre mm, radius mm, HU)."""
    calcs = []
    if rng.uniform() < 0.6:  # choroid plexus in the atria of the lateral ventricles
        for side in (-1, 1):
            if rng.uniform() < 0.85:
                c = np.array(
                    [side * rng.uniform(24, 30), rng.uniform(-44, -36), rng.uniform(10, 18)]
                )
                calcs.append((c, rng.uniform(1.5, 3.5), rng.uniform(90, 300)))
    if rng.uniform() < 0.5:  # pineal
        calcs.append(
            (
                np.array([0.0, rng.uniform(-34, -29), rng.uniform(0, 6)]),
                rng.uniform(1.5, 3.0),
                rng.uniform(100, 400),
            )
        )
    if rng.uniform() < 0.1:  # globus pallidus
        for side in (-1, 1):
            calcs.append(
                (
                    np.array([side * rng.uniform(17, 22), rng.uniform(-4, 2), rng.uniform(-3, 3)]),
                    rng.uniform(1.5, 3.5),
                    rng.uniform(70, 200),
                )
            )
    if rng.uniform() < 0.2:  # falx plaque
        calcs.append(
            (
                np.array([0.0, rng.uniform(-40, 40), rng.uniform(25, 60)]),
                rng.uniform(1.5, 4.0),
                rng.uniform(150, 600),
            )
        )
    return [(c.astype(np.float32), float(r), float(v)) for c, r, v in calcs]
