"""The synthetic cohort written in the public data sets' layouts, for tests and demos.

    write_layout(out, "rsna", studies, seed, cfg)

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
import hashlib
import shutil
from pathlib import Path

import numpy as np

from radnet_tf import atomic
from radnet_tf.contract import SUBTYPES
from radnet_tf.errors import UserError

LAYOUTS = ("folders", "rsna")
RSNA_NAMES = {"EDH": "epidural", "IPH": "intraparenchymal", "IVH": "intraventricular", "SAH": "subarachnoid",
              "SDH": "subdural"}
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

    from radnet_tf import synth

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
        by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in study_dir.iterdir()}
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
    rows += [(f"{PLANTED['label_rows_without_file']}_{name}", 0) for name in (*RSNA_NAMES.values(), "any")]
    with atomic.atomic_path(out / "stage_2_train.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ID", "Label"])
        writer.writerows(rows)
    return rows


def write_layout(out, layout, num_studies, seed, cfg, workers=1, progress=False):
    """Writes the synthetic cohort in `layout` (one of LAYOUTS) under `out`."""
    from radnet_tf import synth

    if layout == "folders":
        return synth.generate_cohort(out, num_studies, seed, cfg, progress=progress, workers=workers)
    if layout == "rsna":
        return write_rsna(out, num_studies, seed, cfg)
    raise UserError(f"layout must be one of {LAYOUTS}. Received: {layout!r}")
