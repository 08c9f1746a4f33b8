"""The synthetic cohort written in the public data sets' layouts, for tests and demos.

    write_layout(out, "rsna", studies, seed, cfg)

`cq500`: `out/CQ500-CT-0.zip` (study 0, zipped as CQ500 ships) and
`out/CQ500CT<i> CQ500CT<i>/Unknown Study/CT <description>/CT<nnnnnn>.dcm` for the others,
three series per study: "CT Plain" (the phantom, STANDARD kernel: the one to choose),
"CT BONE" (the same slices, BONE kernel) and "CT 10mm" (every second slice, 10 mm thick);
`out/reads.csv` in CQ500's columns, readers R1 and R2 giving the truth and R3 disagreeing
on ICH for study 1 (so `majority` and `any-reader` differ there).

`nifti`: `out/ct_scans/<nnn>.nii.gz` (uint16 with scl_inter -1024, as stored volumes often
are; RAS-ordered, except study 1, stored in DICOM's LPS order with a flipping affine),
`out/masks/<nnn>.nii.gz` (class labels 1..5, except study 2: binary), and
`out/hemorrhage_diagnosis_raw_ct.csv` in PhysioNet CT-ICH's columns (SliceNumber counts
along the stored third axis).

`rsna`: `out/stage_2_train/ID_<9 hex>.dcm` (one flat folder, the name derived from the
SOPInstanceUID) and `out/stage_2_train.csv` (`ID,Label`, six rows per image, RSNA's label
names), with the data set's known defects planted (`PLANTED`): one unparsable file, one
12-bit-unsigned image with intercept 0 (stored values wrapped as in RSNA; the
`dicom_io.fix_12bit_intercept` correction recovers them), label rows for an image that has
no file, the label rows of one image twice, and one image without label rows.

The studies are `synth.make_phantom(default_rng([seed, i]))`, the same as
`synth.generate_cohort`'s "folders" layout with the same seed, so a test can convert both
and compare (same study keys, labels and voxels).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import shutil
from pathlib import Path

import numpy as np

from radnet_tf import atomic
from radnet_tf.contract import SUBTYPES
from radnet_tf.errors import UserError

LAYOUTS = ("folders", "rsna", "cq500", "nifti")
RSNA_NAMES = {
    "EDH": "epidural",
    "IPH": "intraparenchymal",
    "IVH": "intraventricular",
    "SAH": "subarachnoid",
    "SDH": "subdural",
}
PLANTED = {
    "unparsable_file": "ID_badheader.dcm",
    "label_rows_without_file": "ID_nofile000",
    "twelve_bit_study_slice": (0, 0),  # (study index, slice index in z order)
    "duplicated_label_rows_study_slice": (0, 1),
    "unlabelled_study_slice": (1, 0),
}


def rsna_image_id(sop_uid: str) -> str:
    """RSNA-style image id ID_<9 hex> for a SOPInstanceUID."""
    return "ID_" + hashlib.sha1(sop_uid.encode()).hexdigest()[:9]


def _store_12bit_wrapped(path: Path):
    """Rewrites a slice as RSNA's mis-stored images: 12 bits unsigned, intercept 0, the
    values that `fix_12bit_intercept` maps back (HU below -1000 become -1000)."""
    import pydicom

    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    stored = np.mod(np.clip(hu, -1000, 3095), 4096).astype(np.uint16)  # inverse of the fix
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 12, 11, 0, 0
    ds.PixelData = stored.tobytes()
    ds.save_as(path)


def write_rsna(out, num_studies, seed, cfg):
    """Writes the RSNA layout (module docstring). Returns the label rows written."""
    import pydicom

    from radnet_tf.phantom import generate as synth

    out = Path(out)
    images = out / "stage_2_train"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    rows, twelve = [], PLANTED["twelve_bit_study_slice"]
    for i in range(num_studies):
        rng = np.random.default_rng([seed, i])
        phantom = synth.make_phantom(rng, cfg)
        study_dir = out / f".study-{i}"
        uids = synth.write_dicom_series(phantom, study_dir, rng)
        by_uid = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
            for p in study_dir.iterdir()
        }
        for k, uid in enumerate(uids):
            image_id = rsna_image_id(uid)
            target = images / f"{image_id}.dcm"
            by_uid[uid].rename(target)
            if (i, k) == twelve:
                _store_12bit_wrapped(target)
            if (i, k) == PLANTED["unlabelled_study_slice"]:
                continue
            labels = dict(zip(SUBTYPES, phantom.slice_subtypes[k]))
            copies = 2 if (i, k) == PLANTED["duplicated_label_rows_study_slice"] else 1
            for _ in range(copies):
                rows += [(f"{image_id}_{RSNA_NAMES[t]}", int(labels[t])) for t in SUBTYPES]
                rows.append((f"{image_id}_any", int(phantom.slice_labels[k])))
        study_dir.rmdir()
    (images / PLANTED["unparsable_file"]).write_bytes(b"not a DICOM file: a truncated download")
    rows += [
        (f"{PLANTED['label_rows_without_file']}_{name}", 0)
        for name in (*RSNA_NAMES.values(), "any")
    ]
    with atomic.atomic_path(out / "stage_2_train.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ID", "Label"])
        writer.writerows(rows)
    return rows


CQ500_SERIES = (  # description, kernel, every step-th slice, SliceThickness (None: the phantom's)
    ("CT Plain", "STANDARD", 1, None),
    ("CT BONE", "BONE", 1, None),
    ("CT 10mm", "STANDARD", 2, 10.0),
)
CQ500_EXTRA_FINDINGS = (
    "BleedLocation-Left",
    "BleedLocation-Right",
    "ChronicBleed",
    "Fracture",
    "CalvarialFracture",
    "OtherFracture",
    "MassEffect",
    "MidlineShift",
)


def _cq500_series(phantom, study_dir, rng_state, description, kernel, step, thickness):
    """Writes one series of a CQ500-style study (every `step`-th slice of the phantom).

    `rng_state` is the study's generator state after `make_phantom`: every series starts
    from it, so all get the StudyInstanceUID the folders layout gives the study."""
    import pydicom
    from pydicom.uid import generate_uid

    from radnet_tf.phantom import generate as synth

    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    folder = study_dir / "Unknown Study" / f"{description}"
    synth.write_dicom_series(phantom, folder, rng)
    series_uid = generate_uid(entropy_srcs=[str(rng_state["state"]["state"]), description])
    for k, path in enumerate(
        sorted(
            folder.iterdir(),
            key=lambda p: float(
                pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]
            ),
        )
    ):
        if k % step:
            path.unlink()
            continue
        ds = pydicom.dcmread(path)
        ds.SeriesDescription, ds.ConvolutionKernel, ds.SeriesInstanceUID = (
            description,
            kernel,
            series_uid,
        )
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
            entropy_srcs=[series_uid, str(k)]
        )
        ds.SliceThickness = float(thickness or phantom.slice_thickness)
        ds.save_as(path)
        path.rename(folder / f"CT{k:06d}.dcm")


def write_cq500(out, num_studies, seed, cfg):
    """Writes the CQ500 layout (module docstring). Returns the reads table rows."""
    import zipfile

    from radnet_tf.phantom import generate as synth

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = ["name", "Category"] + [
        f"{r}:{f}"
        for r in ("R1", "R2", "R3")
        for f in ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", *CQ500_EXTRA_FINDINGS)
    ]
    rows = []
    for i in range(num_studies):
        rng = np.random.default_rng([seed, i])
        phantom = synth.make_phantom(rng, cfg)
        rng_state = rng.bit_generator.state
        study_dir = out / f"CQ500CT{i} CQ500CT{i}"
        if study_dir.exists():
            shutil.rmtree(study_dir)
        for description, kernel, step, thickness in CQ500_SERIES:
            _cq500_series(phantom, study_dir, rng_state, description, kernel, step, thickness)
        truth = {
            "ICH": int(phantom.slice_labels.any()),
            **{t: int(t in phantom.types) for t in SUBTYPES},
        }
        row = {"name": f"CQ500-CT-{i}", "Category": "B1"}
        for reader in ("R1", "R2", "R3"):
            for finding in ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH"):
                value = truth[finding]
                if reader == "R3" and i == 1 and finding == "ICH":
                    value = 1 - value
                row[f"{reader}:{finding}"] = value
            for finding in CQ500_EXTRA_FINDINGS:
                row[f"{reader}:{finding}"] = 0
        rows.append(row)
        if i == 0:  # as CQ500 ships: one zip per study
            with (
                atomic.atomic_path(out / "CQ500-CT-0.zip") as tmp,
                zipfile.ZipFile(tmp, "w") as archive,
            ):
                for path in sorted(study_dir.rglob("*.dcm")):
                    archive.write(path, path.relative_to(out))
            shutil.rmtree(study_dir)
    with atomic.atomic_path(out / "reads.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _nifti_affine(phantom, lps_order):
    """Affine of a phantom stored RAS-ordered (i to the right... as nibabel's canonical) or
    in DICOM's LPS order; both put each voxel where the DICOM writer's geometry does."""
    s, h, w = phantom.hu.shape
    sp, z0, dz = phantom.pixel_spacing, float(phantom.z_positions[0]), phantom.slice_thickness
    if lps_order:  # index (c, r, k): RAS X = -(x0 + c sp), Y = -(y0 + r sp)
        return np.array(
            [
                [-sp, 0, 0, (w - 1) / 2 * sp],
                [0, -sp, 0, (h - 1) / 2 * sp],
                [0, 0, dz, z0],
                [0, 0, 0, 1],
            ]
        )
    return np.array(
        [[sp, 0, 0, -(w - 1) / 2 * sp], [0, sp, 0, -(h - 1) / 2 * sp], [0, 0, dz, z0], [0, 0, 0, 1]]
    )


def write_nifti(out, num_studies, seed, cfg):
    """Writes the NIfTI layout (module docstring). Returns the slice CSV rows.

    Its studies are drawn without gantry tilt (`SynthConfig.tilt_fraction` 0): NIfTI data
    sets ship tilt-corrected volumes with orthogonal affines (dcm2niix corrects the tilt
    when converting), which an untilted draw stands for."""
    import nibabel as nib

    from radnet_tf.phantom import generate as synth

    out = Path(out)
    (out / "ct_scans").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    names = {
        "EDH": "Epidural",
        "IPH": "Intraparenchymal",
        "IVH": "Intraventricular",
        "SAH": "Subarachnoid",
        "SDH": "Subdural",
    }
    rows = []
    for i in range(num_studies):
        phantom = synth.make_phantom(
            np.random.default_rng([seed, i]), dataclasses.replace(cfg, tilt_fraction=0.0)
        )
        lps = i == 1

        # reader order [k, r, c] (S, P, L) -> stored [x, y, k]
        def stored(a):
            return a.transpose(2, 1, 0) if lps else a[:, ::-1, ::-1].transpose(2, 1, 0)

        volume = nib.Nifti1Image(
            stored((phantom.hu.astype(np.int32) + 1024).astype(np.uint16)),
            _nifti_affine(phantom, lps),
        )
        volume.header.set_slope_inter(1.0, -1024.0)
        classes = phantom.mask if i == 2 else phantom.class_mask
        mask = nib.Nifti1Image(stored(classes.astype(np.uint8)), _nifti_affine(phantom, lps))
        for image, folder in ((volume, "ct_scans"), (mask, "masks")):
            with atomic.atomic_path(out / folder / f"{i:03d}.nii.gz") as tmp:
                nib.save(image, str(tmp))
        for k in range(phantom.hu.shape[0]):
            types = dict(zip(SUBTYPES, phantom.slice_subtypes[k]))
            rows.append(
                {
                    "PatientNumber": i,
                    "SliceNumber": k + 1,
                    **{names[t]: int(types[t]) for t in SUBTYPES},
                    "No_Hemorrhage": int(1 - phantom.slice_labels[k]),
                    "Fracture_Yes_No": 0,
                }
            )
    header = [
        "PatientNumber",
        "SliceNumber",
        "Intraventricular",
        "Intraparenchymal",
        "Subarachnoid",
        "Epidural",
        "Subdural",
        "No_Hemorrhage",
        "Fracture_Yes_No",
    ]
    with (
        atomic.atomic_path(out / "hemorrhage_diagnosis_raw_ct.csv") as tmp,
        open(tmp, "w", newline="") as fh,
    ):
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def write_layout(out, layout, num_studies, seed, cfg, workers=1, progress=False):
    """Writes the synthetic cohort in `layout` (one of LAYOUTS) under `out`."""
    from radnet_tf.phantom import generate as synth

    if layout == "folders":
        return synth.generate_cohort(
            out, num_studies, seed, cfg, progress=progress, workers=workers
        )
    if layout == "rsna":
        return write_rsna(out, num_studies, seed, cfg)
    if layout == "cq500":
        return write_cq500(out, num_studies, seed, cfg)
    if layout == "nifti":
        return write_nifti(out, num_studies, seed, cfg)
    raise UserError(f"layout must be one of {LAYOUTS}. Received: {layout!r}")
