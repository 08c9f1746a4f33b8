"""Public data-set layouts in: the same synthetic cohort written as study folders and as
RSNA-2019 ships, converted, must give the same records; every planted defect is counted."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from radnet_tf.records import schema as records
from radnet_tf.phantom import generate as synth
from radnet_tf.phantom.layouts import PLANTED, write_layout

# every DICOM study gantry-tilted: the layouts must agree on sheared geometry too
CFG = synth.SynthConfig(
    matrix=64,
    num_slices=5,
    pixel_spacing_range=(3.3, 3.5),
    positive_fraction=0.75,
    tilt_fraction=1.0,
)
STUDIES, SEED = 4, 7


def _records(folder):
    out = {}
    for raw in tf.data.TFRecordDataset(
        sorted(map(str, folder.glob("*.tfrecord.gz"))), compression_type=records.COMPRESSION
    ):
        study = {k: v.numpy() for k, v in records.decode_study(raw).items()}
        out[study["study_key"].decode()] = study
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The cohort as folders and as RSNA, each converted on the tiny grid."""
    from radnet_tf.datasets.build import main

    root = tmp_path_factory.mktemp("layouts")
    write_layout(root / "folders", "folders", STUDIES, SEED, CFG)
    write_layout(root / "rsna", "rsna", STUDIES, SEED, CFG)
    (root / "tiny.yaml").write_text("input_size: 32\nout_spacing: 8.0\n")
    common = [
        "--config",
        str(root / "tiny.yaml"),
        "--workers",
        "1",
        "--shards",
        "2",
        "--no-progress",
    ]
    main(
        [
            "--dicom-root",
            str(root / "folders" / "dicom"),
            "--labels",
            str(root / "folders" / "labels.csv"),
            "--slice-labels",
            str(root / "folders" / "slice_labels.csv"),
            "--masks",
            str(root / "folders" / "masks"),
            "--out",
            str(root / "rec-folders"),
            *common,
        ]
    )
    main(
        [
            "--rsna-root",
            str(root / "rsna" / "stage_2_train"),
            "--rsna-labels",
            str(root / "rsna" / "stage_2_train.csv"),
            "--out",
            str(root / "rec-rsna"),
            *common,
        ]
    )
    return root


def test_rsna_layout_gives_the_same_studies_labels_and_voxels(converted):
    folders, rsna = _records(converted / "rec-folders"), _records(converted / "rec-rsna")
    assert (
        pd.read_csv(converted / "rec-folders" / "manifest.csv").tilt_deg > 4
    ).all()  # all tilted (CFG)
    assert sorted(folders) == sorted(rsna) and len(folders) == STUDIES  # same pseudonymous keys
    differing = []
    for key, a in folders.items():
        b = rsna[key]
        assert a["label"] == b["label"]
        np.testing.assert_array_equal(a["slice_positions"], b["slice_positions"])
        known = b["slice_labels"] >= 0  # the planted image without label rows is -1 here
        np.testing.assert_array_equal(a["slice_labels"][known], b["slice_labels"][known])
        np.testing.assert_array_equal(a["slice_subtypes"][known], b["slice_subtypes"][known])
        assert (b["slice_subtypes"][~known] == -1).all()
        diff = np.abs(a["image"].astype(int) - b["image"].astype(int)).max(axis=(1, 2))
        differing += [int(d) for d in diff if d]
    # Only the planted 12-bit slice may differ: its HU below -1000 could not be stored.
    assert len(differing) <= 1 and all(d <= 30 for d in differing)
    assert sum(int((s["slice_labels"] == -1).sum()) for s in rsna.values()) == 1
    assert any(s["slice_subtypes"].max() == 1 for s in rsna.values())  # subtypes carried


def test_rsna_defects_are_counted_not_fatal(converted):
    manifest = json.loads((converted / "rec-rsna" / "manifest.json").read_text())
    assert manifest["rsna"] == {
        "files": STUDIES * CFG.num_slices + 1,
        "unparsable_files": 1,
        "files_12bit_corrected": 1,
        "non_512_matrix_files": STUDIES * CFG.num_slices,
        "label_rows_without_file": 1,
        "files_without_label_rows": 1,
        "duplicate_label_rows": 6,
        "unlabelled_series": 0,
        "series": STUDIES,
        "non_conformant_uid_values": 0,  # the layout keeps DICOM UIDs (file names are ID_)
    }
    assert manifest["corrected_files"] == 1 and manifest["studies_written"] == STUDIES
    table = pd.read_csv(converted / "rec-rsna" / "manifest.csv")
    bad = table[table.status == "skipped"]
    assert list(bad.study_id) == [f"file {PLANTED['unparsable_file']}"]
    assert bad.reason.iloc[0].startswith("unparsable DICOM header (InvalidDicomError")
    index = pd.read_parquet(converted / "rec-rsna" / "rsna_index.parquet")
    assert index.fix_12bit.sum() == 1 and (index.status == "unparsable").sum() == 1


def test_without_the_12bit_correction_the_slice_is_far_off(converted):
    from radnet_tf.io.dicom import read_series

    index = pd.read_parquet(converted / "rec-rsna" / "rsna_index.parquet")
    flagged = index[index.fix_12bit.astype(bool)].iloc[0]
    series = index[(index.series_uid == flagged.series_uid) & (index.status == "ok")]
    files = [str(converted / "rsna" / "stage_2_train" / f) for f in series.file]
    fixed, raw = read_series(files, fix_12bit=True), read_series(files)
    assert fixed.corrected_files == [flagged.file] and raw.corrected_files == []
    k = list(fixed.sop_instance_uids).index(flagged.sop_uid)
    assert np.median(raw.hu[k]) - np.median(fixed.hu[k]) > 900  # air read as ~3096 HU without it


def test_fix_12bit_intercept_exact_values():
    from radnet_tf.io.dicom import fix_12bit_intercept

    stored = np.array([[0, 24, 3095, 3096, 4095]], np.uint16)
    values, intercept = fix_12bit_intercept(stored)
    np.testing.assert_array_equal(values + intercept, [[0, 24, 3095, -1000, -1]])


def test_index_is_resumed_and_reused(converted, tmp_path):
    from radnet_tf.datasets.rsna import index_headers

    root = converted / "rsna" / "stage_2_train"
    first = index_headers(root, tmp_path)
    parts = sorted((tmp_path / "index").glob("part-*.csv"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    again = index_headers(root, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in parts} == stamps  # reused, nothing re-read
    pd.testing.assert_frame_equal(first, again)
    parts[0].unlink()  # as if killed before the first part was written
    pd.testing.assert_frame_equal(index_headers(root, tmp_path), first)


def test_labels_are_mapped_by_name_and_contradictions_refused(tmp_path):
    from radnet_tf.errors import UserError
    from radnet_tf.datasets.rsna import load_labels

    names = ["any", "subdural", "epidural", "subarachnoid", "intraventricular", "intraparenchymal"]
    rows = [f"ID_a_{n},{int(n in ('any', 'subdural'))}" for n in names]
    (tmp_path / "l.csv").write_text("ID,Label\n" + "\n".join(rows + rows[:2]) + "\n")
    wide, duplicates = load_labels(tmp_path / "l.csv")
    assert duplicates == 2
    assert wide.loc["ID_a"].to_dict() == {
        "EDH": 0,
        "IPH": 0,
        "IVH": 0,
        "SAH": 0,
        "SDH": 1,
        "any": 1,
    }
    (tmp_path / "bad.csv").write_text("ID,Label\nID_a_any,1\nID_a_any,0\n")
    with pytest.raises(UserError, match="contradicting label rows for ID_a"):
        load_labels(tmp_path / "bad.csv")


@pytest.fixture(scope="module")
def cq500_converted(converted):
    from radnet_tf.datasets.build import main

    root = converted
    write_layout(root / "cq500", "cq500", STUDIES, SEED, CFG)
    common = [
        "--config",
        str(root / "tiny.yaml"),
        "--workers",
        "1",
        "--shards",
        "2",
        "--no-progress",
    ]
    for rule in ("majority", "any-reader"):
        main(
            [
                "--cq500-root",
                str(root / "cq500"),
                "--cq500-reads",
                str(root / "cq500" / "reads.csv"),
                "--reads-label",
                rule,
                "--out",
                str(root / f"rec-cq500-{rule}"),
                *common,
            ]
        )
    return root


def test_cq500_layout_gives_the_same_studies_and_voxels(cq500_converted):
    folders, cq = (
        _records(cq500_converted / "rec-folders"),
        _records(cq500_converted / "rec-cq500-majority"),
    )
    assert sorted(folders) == sorted(cq) and (cq500_converted / "cq500" / "CQ500-CT-0.zip").exists()
    for key, a in folders.items():
        np.testing.assert_array_equal(
            a["image"], cq[key]["image"]
        )  # the plain series, not bone or 10 mm
        assert a["label"] == cq[key]["label"]
        positive = bool(a["label"])
        assert (
            cq[key]["slice_labels"] == (-1 if positive else 0)
        ).all()  # CQ500 has study reads only
        assert (cq[key]["slice_subtypes"] == -1).all() and set(cq[key]["study_subtypes"]) <= {0, 1}


def test_cq500_series_choice_and_reads_in_the_manifest(cq500_converted):
    table = pd.read_csv(cq500_converted / "rec-cq500-majority" / "manifest.csv").set_index(
        "study_id"
    )
    assert list(table.index) == [f"CQ500-CT-{i}" for i in range(STUDIES)]
    for _, row in table.iterrows():
        assert row.series.startswith("CT Plain [STANDARD, ")
        rejected = row.series_rejected.split("; ")
        assert rejected[0].startswith("CT BONE [BONE") and rejected[0].endswith(
            ": kernel 'BONE' is not a soft-tissue reconstruction"
        )
        assert rejected[1].startswith("CT 10mm [STANDARD, 10.0 mm") and rejected[1].endswith(
            ": slice thickness 10 mm outside 0.5-5.5 mm"
        )
    reads = pd.read_csv(cq500_converted / "cq500" / "reads.csv").set_index("name")
    for column in ("R1:ICH", "R2:ICH", "R3:ICH", "R3:SAH"):
        assert (table[column] == reads.loc[table.index, column]).all()


def test_cq500_reads_label_rules(cq500_converted):
    majority = pd.read_csv(cq500_converted / "rec-cq500-majority" / "manifest.csv").set_index(
        "study_id"
    )
    anyone = pd.read_csv(cq500_converted / "rec-cq500-any-reader" / "manifest.csv").set_index(
        "study_id"
    )
    reads = pd.read_csv(cq500_converted / "cq500" / "reads.csv").set_index("name")
    votes = reads[["R1:ICH", "R2:ICH", "R3:ICH"]]
    assert (majority.label == (votes.sum(axis=1) >= 2).astype(int)).all()
    assert (anyone.label == votes.max(axis=1)).all()
    assert (majority.label != anyone.label).sum() == int(reads.loc["CQ500-CT-1", "R1:ICH"] == 0)


def test_real_cq500_reads_and_study_names(shared):
    from radnet_tf.datasets.cq500 import load_reads, study_name, study_tasks

    reads = load_reads(shared / "cq500" / "reads.csv", "majority")
    assert (
        reads.loc["CQ500-CT-0", "ICH"] == 0 and reads.loc["CQ500-CT-0", "R1:ICH"] == 1
    )  # R1 alone
    assert load_reads(shared / "cq500" / "reads.csv", "R1").loc["CQ500-CT-0", "ICH"] == 1
    assert study_name("CQ500CT12 CQ500CT12") == study_name("CQ500-CT-12.zip") == "CQ500-CT-12"
    tasks, skipped = study_tasks(shared / "cq500", reads)
    assert [t.study_id for t in tasks] == sorted(
        set(reads.index) & {"CQ500-CT-0", "CQ500-CT-1", "CQ500-CT-310"}, key=lambda n: (len(n), n)
    )


@pytest.fixture(scope="module")
def nifti_converted(converted):
    pytest.importorskip("nibabel")
    from radnet_tf.datasets.build import main

    root = converted
    write_layout(root / "nifti", "nifti", STUDIES, SEED, CFG)
    common = [
        "--config",
        str(root / "tiny.yaml"),
        "--workers",
        "1",
        "--shards",
        "2",
        "--no-progress",
    ]
    # NIfTI sets ship tilt-corrected volumes, so the NIfTI layout draws untilted studies:
    # compared with the same cohort as untilted DICOM folders
    untilted = root / "folders-untilted"
    write_layout(untilted, "folders", STUDIES, SEED, dataclasses.replace(CFG, tilt_fraction=0.0))
    main(
        [
            "--dicom-root",
            str(untilted / "dicom"),
            "--labels",
            str(untilted / "labels.csv"),
            "--slice-labels",
            str(untilted / "slice_labels.csv"),
            "--masks",
            str(untilted / "masks"),
            "--out",
            str(root / "rec-folders-untilted"),
            *common,
        ]
    )
    main(
        [
            "--nifti-volumes",
            str(root / "nifti" / "ct_scans"),
            "--nifti-masks",
            str(root / "nifti" / "masks"),
            "--nifti-slice-labels",
            str(root / "nifti" / "hemorrhage_diagnosis_raw_ct.csv"),
            "--out",
            str(root / "rec-nifti"),
            *common,
        ]
    )
    main(
        [
            "--nifti-volumes",
            str(root / "nifti" / "ct_scans"),
            "--nifti-masks",
            str(root / "nifti" / "masks"),
            "--out",
            str(root / "rec-nifti-masks-only"),
            *common,
        ]
    )
    return root


def _nifti_max(path):
    import nibabel as nib

    return int(np.asarray(nib.load(str(path)).dataobj).max())


def _by_study_id(folder):
    keys = (
        pd.read_csv(folder / "manifest.csv", dtype={"study_id": str})
        .set_index("study_id")
        .study_key
    )
    studies = _records(folder)
    return {sid: studies[key] for sid, key in keys.items() if key in studies}


@pytest.mark.parametrize("variant", ["rec-nifti", "rec-nifti-masks-only"])
def test_nifti_layout_gives_the_same_voxels_masks_and_labels(nifti_converted, variant):
    folders = _by_study_id(nifti_converted / "rec-folders-untilted")
    nifti = _by_study_id(nifti_converted / variant)
    assert sorted(nifti) == [f"{i:03d}" for i in range(STUDIES)]
    for i in range(STUDIES):
        a, b = folders[f"synth-{i:04d}"], nifti[f"{i:03d}"]
        # study 1 is stored in LPS order with a flipping affine: the reorientation must undo it
        np.testing.assert_allclose(a["image"], b["image"], atol=1)
        np.testing.assert_allclose(a["slice_positions"], b["slice_positions"], atol=1e-4)
        # NIfTI keeps the spacing as float32 (DICOM: 6 decimals): a few boundary pixels flip
        assert (a["mask"] != b["mask"]).mean() < 0.005
        assert a["mask"].any() == bool(a["label"])  # masks compared, not two empty arrays
        assert a["label"] == b["label"]
        np.testing.assert_array_equal(a["slice_labels"], b["slice_labels"])
        if variant == "rec-nifti":  # the slice CSV: exact subtypes
            np.testing.assert_array_equal(a["slice_subtypes"], b["slice_subtypes"])
        elif i == 2 or _nifti_max(nifti_converted / "nifti" / "masks" / f"{i:03d}.nii.gz") == 1:
            # a binary mask says nothing of subtypes; nor, under --nifti-mask-kind auto, does
            # a class mask holding only class 1 (EDH): it reads as binary
            assert (b["slice_subtypes"] == -1).all()
        else:  # from class masks: a type overdrawn by a later lesion can vanish, none appears
            assert (b["slice_subtypes"] <= a["slice_subtypes"]).all() and (
                b["slice_subtypes"] >= 0
            ).all()
        if i != 2:
            assert (a["mask_classes"] != b["mask_classes"]).mean() < 0.005
        else:
            assert not b["mask_classes"].any()


def test_nifti_orientation_from_the_affine():
    nib = pytest.importorskip("nibabel")
    from radnet_tf.io.nifti import to_reader_order

    reader = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # [S, rows (P), cols (L)]

    def image(array, diagonal):
        return nib.Nifti1Image(np.ascontiguousarray(array), np.diag(diagonal))

    ras = image(reader[:, ::-1, ::-1].transpose(2, 1, 0), [0.5, 0.7, 2.0, 1.0])
    lps = image(reader.transpose(2, 1, 0), [-0.5, -0.7, 2.0, 1.0])
    flipped_k = image(reader[::-1, ::-1, ::-1].transpose(2, 1, 0), [0.5, 0.7, -2.0, 1.0])
    for image in (ras, lps, flipped_k):
        values, spacing, positions, stored = to_reader_order(image)
        np.testing.assert_array_equal(values, reader)
        assert spacing == pytest.approx((0.7, 0.5))
    assert list(to_reader_order(flipped_k)[3]) == [1, 0] and list(to_reader_order(ras)[3]) == [0, 1]


@pytest.mark.slow
def test_rsna_on_beam_gives_the_local_runners_records_and_counts(converted, tmp_path):
    pytest.importorskip("apache_beam")
    from radnet_tf.datasets.build import main

    main(
        [
            "--rsna-root",
            str(converted / "rsna" / "stage_2_train"),
            "--rsna-labels",
            str(converted / "rsna" / "stage_2_train.csv"),
            "--config",
            str(converted / "tiny.yaml"),
            "--shards",
            "2",
            "--no-progress",
            "--runner",
            "DirectRunner",
            "--out",
            str(tmp_path / "beam"),
        ]
    )
    local, beam = _records(converted / "rec-rsna"), _records(tmp_path / "beam")
    assert sorted(local) == sorted(beam)
    for key in local:
        for field in ("image", "slice_labels", "slice_subtypes", "label", "slice_positions"):
            np.testing.assert_array_equal(local[key][field], beam[key][field])
    local_json = json.loads((converted / "rec-rsna" / "manifest.json").read_text())
    beam_json = json.loads((tmp_path / "beam" / "manifest.json").read_text())
    assert beam_json["rsna"] == local_json["rsna"]
    drop = ["shard", "bytes"]
    pd.testing.assert_frame_equal(
        pd.read_csv(converted / "rec-rsna" / "manifest.csv").drop(columns=drop),
        pd.read_csv(tmp_path / "beam" / "manifest.csv").drop(columns=drop),
    )
