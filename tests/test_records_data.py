import dataclasses
import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from conftest import REPO, tiny_config
from radnet_tf import preprocess
from radnet_tf.records import dataset as data
from radnet_tf.records import schema as records
from radnet_tf.records.convert import (
    StudyTask,
    convert_study,
    discover_tasks,
    folder_tasks,
    load_label_tables,
    run_local,
)
from radnet_tf.io.dicom import read_series


def _all_records(folder):
    files = data.list_shards(folder)
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_encode_decode_exact():
    rng = np.random.default_rng(0)
    image = rng.integers(-1024, 3000, size=(3, 8, 8)).astype(np.int16)
    mask = (rng.uniform(size=(3, 8, 8)) > 0.7).astype(np.uint8)
    rec = records.encode_study(
        study_key="abc",
        image=image,
        mask=mask,
        slice_labels=[0, 1, -1],
        label=1,
        spacing=(1, 1, 2.5),
        slice_positions=[0.0, 2.5, 5.0],
    )
    out = records.decode_study(tf.constant(rec))
    np.testing.assert_array_equal(out["image"], image)
    np.testing.assert_array_equal(out["mask"], mask)
    np.testing.assert_array_equal(out["slice_labels"], [0, 1, -1])
    assert out["study_key"].numpy() == b"abc" and bool(out["has_mask"]) and int(out["label"]) == 1
    no_mask = records.decode_study(
        tf.constant(
            records.encode_study(
                study_key="k",
                image=image,
                slice_labels=[0, 0, 0],
                label=0,
                spacing=(1, 1, 1),
                slice_positions=[0, 1, 2],
            )
        )
    )
    assert (
        not bool(no_mask["has_mask"])
        and int(tf.reduce_sum(tf.cast(no_mask["mask"], tf.int32))) == 0
    )
    # records without per-slice subtypes (older ones) decode to -1 = unknown
    np.testing.assert_array_equal(no_mask["slice_subtypes"], -np.ones((3, 5), np.int64))
    subtypes = np.array([[0, 0, 0, 0, 0], [1, 0, 0, 1, 0], [-1, -1, -1, -1, -1]])
    with_types = records.decode_study(
        tf.constant(
            records.encode_study(
                study_key="k",
                image=image,
                slice_labels=[0, 1, -1],
                label=1,
                spacing=(1, 1, 1),
                slice_positions=[0, 1, 2],
                slice_subtypes=subtypes,
            )
        )
    )
    np.testing.assert_array_equal(with_types["slice_subtypes"], subtypes)
    with pytest.raises(ValueError, match=r"slice_subtypes must have shape \[3, 5\]"):
        records.encode_study(
            study_key="k",
            image=image,
            slice_labels=[0, 1, -1],
            label=1,
            spacing=(1, 1, 1),
            slice_positions=[0, 1, 2],
            slice_subtypes=subtypes[:, :4],
        )


def test_round_trip_dicom_to_parsed_tensors(tiny_cohort, tiny_records):
    cfg = tiny_config()
    manifest = pd.read_csv(tiny_records / "manifest.csv")
    parsed = {
        s["study_key"].numpy().decode(): s
        for s in data.read_studies(data.list_shards(tiny_records))
    }
    assert set(parsed) == set(manifest.study_key)
    row = manifest.iloc[0]
    series = read_series(tiny_cohort / "dicom" / row.study_id)
    expected, center = preprocess.resample_hu(
        series.hu, series.pixel_spacing, cfg.preprocess_config()
    )
    study = parsed[row.study_key]
    np.testing.assert_array_equal(study["image"].numpy(), expected.numpy())
    slices = pd.read_csv(tiny_cohort / "slice_labels.csv")
    truth = slices[slices.study_id == row.study_id].set_index("sop_instance_uid").label
    np.testing.assert_array_equal(
        study["slice_labels"].numpy(), [truth[u] for u in series.sop_instance_uids]
    )


def test_records_and_manifest_carry_no_identifiers(tiny_cohort, tiny_records):
    import pydicom

    ds = pydicom.dcmread(next((tiny_cohort / "dicom" / "synth-0000").iterdir()))
    secrets = [
        str(ds.PatientName),
        ds.PatientID,
        ds.PatientBirthDate,
        ds.AccessionNumber,
        ds.StudyInstanceUID,
    ]
    blobs = [gzip.decompress(p.read_bytes()) for p in tiny_records.glob("*.tfrecord.gz")]
    blobs += [p.read_bytes() for p in tiny_records.glob("manifest.*")]
    for secret in secrets:
        assert all(secret.encode() not in blob for blob in blobs)


def test_manifest_reports_unmatched_rows(tiny_cohort, tmp_path):
    labels, _ = load_label_tables(tiny_cohort / "labels.csv")
    labels = dict(labels)
    labels["ghost-study"] = 1
    del labels["synth-0001"]
    tasks, skipped = discover_tasks(tiny_cohort / "dicom", labels)
    assert ("ghost-study", "label row has no DICOM folder") in skipped
    assert ("synth-0001", "DICOM folder has no label row") in skipped
    assert len(tasks) == 9


def test_split_is_by_study_and_deterministic():
    keys = tf.constant([f"key{i}" for i in range(2000)])
    a = data.is_validation(keys, 0.3, seed=0).numpy()
    assert a.mean() == pytest.approx(0.3, abs=0.04)
    np.testing.assert_array_equal(a, data.is_validation(keys, 0.3, seed=0).numpy())
    assert not np.array_equal(a, data.is_validation(keys, 0.3, seed=1).numpy())


def test_train_and_validation_never_share_a_study(tiny_records):
    cfg = tiny_config(val_fraction=0.4)
    files = data.list_shards(tiny_records)
    val = {m["study_key"].numpy()[0] for _, _, m in data.eval_dataset(files, cfg, with_keys=True)}
    train = {
        m["study_key"].numpy()[0]
        for _, _, m in data.eval_dataset(files, cfg, split="train", with_keys=True)
    }
    assert val and train and not (val & train)
    assert len(val | train) == 10


def test_calibration_studies_come_out_of_the_training_studies_only():
    keys = tf.constant([f"key{i}" for i in range(4000)])
    before = data.split_of(keys, tiny_config(val_fraction=0.3)).numpy()
    np.testing.assert_array_equal(before == 2, data.is_validation(keys, 0.3, seed=0).numpy())
    assert set(before) == {0, 2}  # calibration_fraction 0: no calibration study
    split = data.split_of(keys, tiny_config(val_fraction=0.3, calibration_fraction=0.25)).numpy()
    np.testing.assert_array_equal(split == 2, before == 2)  # no held-out study moves
    assert (split[before == 0] == 1).mean() == pytest.approx(0.25, abs=0.03)


def test_training_windows_never_come_from_calibration_or_held_out_studies(tiny_records):
    cfg = tiny_config(
        val_fraction=0.3, calibration_fraction=0.4, crop_slices=6, rotation_deg=0.0, flip=False
    )
    files = data.list_shards(tiny_records)
    parts = {
        split: {
            m["study_key"].numpy()[0]: x.numpy()[0]
            for x, _, m in data.eval_dataset(
                files, cfg, split=split, with_masks=False, with_keys=True
            )
        }
        for split in data.SPLITS
    }
    assert [len(parts[s]) for s in data.SPLITS] == [4, 3, 3]  # 10 studies, no study in two splits
    assert data.count_studies(files, cfg) == {
        "train": 4,
        "calibration": 3,
        "validation": 3,
        "train_positive": 3,
        "calibration_positive": 1,
        "train_negative_windows": 0,  # a 6-slice window is the whole study
        "rendered_windows": [],
    }
    seen = set()
    for x, _ in data.train_dataset(files, cfg, batch_size=2, with_masks=False, seed=0).take(12):
        for window in x.numpy():  # whole 6-slice studies, not rotated or flipped
            match = [
                k
                for split in data.SPLITS
                for k, image in parts[split].items()
                if np.allclose(window, image)
            ]
            assert len(match) == 1
            seen.add(match[0])
    assert seen == set(parts["train"])


def test_balancing_gives_requested_ratio(tiny_records):
    cfg = tiny_config(val_fraction=0.01, positive_fraction=0.75, rotation_deg=0.0)
    ds = data.train_dataset(
        data.list_shards(tiny_records), cfg, batch_size=1, with_masks=False, seed=1
    )
    labels = [float(np.max(y["slice_probability"].numpy())) > 0 for _, y in ds.take(400)]
    assert np.mean(labels) == pytest.approx(0.75, abs=0.07)


def test_every_replica_slice_of_a_global_batch_is_balanced(tiny_records):
    cfg = tiny_config(val_fraction=0.01, rotation_deg=0.0)
    ds = data.train_dataset(
        data.list_shards(tiny_records), cfg, batch_size=8, with_masks=False, seed=2, replica_batch=2
    )
    for _, y in ds.take(20):
        positive = (np.max(y["slice_probability"].numpy(), axis=1) > 0).reshape(4, 2)
        assert (positive.sum(axis=1) == 1).all()  # each replica's 2 windows: one of each


def test_training_stream_is_identical_for_the_same_seed(tiny_records):
    """Augmentation draws are stateless per window, so the parallel map's thread order
    cannot change them (two `make run`s with one seed had differed)."""
    cfg = tiny_config(val_fraction=0.01, rotation_deg=20.0)
    files = data.list_shards(tiny_records)
    runs = []
    for _ in range(2):
        ds = data.train_dataset(files, cfg, batch_size=4, with_masks=True, seed=5)
        runs.append([(x.numpy(), y["mask_1"].numpy()) for x, y in ds.take(12)])
    for (xa, ma), (xb, mb) in zip(*runs):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ma, mb)
    other = data.train_dataset(files, cfg, batch_size=4, with_masks=True, seed=6)
    assert not all(np.array_equal(a[0], x.numpy()) for a, (x, _) in zip(runs[0], other.take(12)))


def test_extra_windows_add_channels_after_the_brain_window(tiny_records):
    files = data.list_shards(tiny_records)
    one = tiny_config(val_fraction=0.5)
    two = tiny_config(val_fraction=0.5, extra_windows=[[80, 200]])
    x1, _ = next(iter(data.eval_dataset(files, one, batch_size=2, split="all")))
    x2, _ = next(iter(data.eval_dataset(files, two, batch_size=2, split="all")))
    assert x2.shape[-1] == 2
    np.testing.assert_array_equal(x2.numpy()[..., :1], x1.numpy())
    assert not np.array_equal(x2.numpy()[..., 1], x1.numpy()[..., 0])
    train_two = tiny_config(val_fraction=0.01, extra_windows=[[80, 200]])
    xt, _ = next(iter(data.train_dataset(files, train_two, batch_size=2, with_masks=True, seed=1)))
    assert xt.shape == (2, 4, 32, 32, 2)


def test_mask_stays_aligned_under_augmentation():
    image = np.zeros((2, 32, 32, 1), np.float32)
    image[:, 4:12, 20:30] = 1.0  # asymmetric box
    image[:, 4:20, 26:30] = 1.0
    mask = image.copy()
    moved = []
    for seed in range(5):
        tf.random.set_seed(seed)
        aug_img, aug_mask = data.augment(
            tf.constant(image), tf.constant(mask), rotation_deg=30, flip=True
        )
        img_bin = aug_img.numpy() > 0.5
        m = aug_mask.numpy() > 0.5
        iou = (img_bin & m).sum() / (img_bin | m).sum()
        assert iou > 0.85  # image and mask moved together
        assert (m[0] == m[1]).all()  # the same transform for every slice of the window
        moved.append(not np.array_equal(m, mask > 0.5))
    assert any(moved)  # the augmentation did transform something


def test_eval_batches_pad_with_ignore_targets(tiny_records):
    cfg = tiny_config(val_fraction=0.5)
    x, y = next(
        iter(data.eval_dataset(data.list_shards(tiny_records), cfg, batch_size=3, split="all"))
    )
    assert x.shape[0] == 3 and x.shape[2:] == (32, 32, 1)
    lengths = (np.max(x.numpy(), axis=(2, 3, 4)) > -0.5).sum(1)
    for i, n in enumerate(lengths):
        assert (y["slice_probability"].numpy()[i, n:] == -1).all()
        assert (y["mask_1"].numpy()[i, n:] == -1).all()


def test_corrupt_shard_raises_naming_the_file(tiny_records, tmp_path):
    src = data.list_shards(tiny_records)[0]
    bad = tmp_path / os.path.basename(src)
    raw = gzip.decompress(open(src, "rb").read())
    bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    from radnet_tf.errors import UserError

    with pytest.raises(UserError, match=f"{bad}: corrupt or truncated"):
        data.count_studies([str(bad)], tiny_config())


def test_convert_rejects_mismatched_masks(tiny_cohort, tmp_path):
    npz = np.load(tiny_cohort / "masks" / "synth-0000.npz")
    np.savez(
        tmp_path / "bad.npz", mask=npz["mask"], sop_instance_uids=np.array(["x"] * len(npz["mask"]))
    )
    task = StudyTask(
        "synth-0000", str(tiny_cohort / "dicom" / "synth-0000"), 0, None, str(tmp_path / "bad.npz")
    )
    with pytest.raises(Exception, match="do not match"):
        convert_study(task, tiny_config().preprocess_config())


def test_convert_multi_frame_study_level_label_only(tmp_path):
    """Enhanced CT (one object, many frames) converts with a study label; per-slice labels
    keyed by SOPInstanceUID cannot address its frames and are refused with a clear error."""
    import pydicom

    from conftest import write_enhanced_ct, write_tiny_series
    from radnet_tf.errors import UserError

    write_tiny_series(tmp_path / "classic", num_slices=4)
    write_enhanced_ct(tmp_path / "classic", tmp_path / "study" / "mf.dcm", frame_order=[1, 3, 0, 2])
    pcfg = tiny_config().preprocess_config()
    enhanced, _ = convert_study(StudyTask("mf", str(tmp_path / "study"), 0), pcfg)
    classic, _ = convert_study(StudyTask("classic", str(tmp_path / "classic"), 0), pcfg)
    a, b = records.decode_study(tf.constant(enhanced)), records.decode_study(tf.constant(classic))
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    uid = str(pydicom.dcmread(tmp_path / "study" / "mf.dcm").SOPInstanceUID)
    with pytest.raises(
        UserError, match="mf: per-slice labels and masks are keyed by SOPInstanceUID"
    ):
        convert_study(StudyTask("mf", str(tmp_path / "study"), 1, {uid: 1}), pcfg)


def test_convert_shears_masks_of_tilted_series_like_their_pixels(tmp_path):
    """A gantry-tilted series is sheared onto an orthogonal grid when read; a mask given on
    its source pixels (the study-folder layout's masks/<study>.npz) must move with it. Each
    slice carries a 3000 HU disc, the mask marks exactly that disc, and the slice origins
    drift 7 mm (2 pixels) along the columns per slice (a steep tilt, so an unsheared mask
    would miss by up to the disc's radius): the converted mask must cover the converted disc."""
    import pydicom

    from conftest import write_tiny_series

    folder = tmp_path / "study"
    write_tiny_series(folder, num_slices=4)
    files = sorted(
        folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2])
    )
    rr, cc = np.mgrid[:64, :64]
    disc = ((rr - 30) ** 2 + (cc - 28) ** 2) <= 6**2
    uids = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        pixels = ds.pixel_array.copy()
        pixels[disc] = round((3000 - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
        ds.PixelData = pixels.tobytes()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 7.0 * i, z]
        ds.save_as(f)
        uids.append(str(ds.SOPInstanceUID))
    classes = np.where(disc, 2, 0).astype(np.uint8)[None].repeat(4, 0)  # class 2: IPH
    np.savez(
        tmp_path / "masks.npz",
        mask=(classes > 0).astype(np.uint8),
        mask_classes=classes,
        sop_instance_uids=np.array(uids),
    )
    assert read_series(folder).tilt_corrected
    pcfg = tiny_config(input_size=64, out_spacing=4.0).preprocess_config()
    record, _ = convert_study(
        StudyTask("tilted", str(folder), 1, None, str(tmp_path / "masks.npz")), pcfg
    )
    study = records.decode_study(tf.constant(record))
    seen = study["image"].numpy() > 1500  # the disc where the converted pixels show it
    for name in ("mask", "mask_classes"):
        mask = study[name].numpy() > 0
        for i in range(4):
            assert seen[i].sum() > 50
            iou = (mask[i] & seen[i]).sum() / (mask[i] | seen[i]).sum()
            assert iou > 0.8, (name, i, iou)
    assert set(np.unique(study["mask_classes"].numpy())) == {0, 2}


def _cli(out, cohort, extra=()):
    return [
        sys.executable,
        "-m",
        "pipelines.build_tfrecords",
        "--dicom-root",
        str(cohort / "dicom"),
        "--labels",
        str(cohort / "labels.csv"),
        "--slice-labels",
        str(cohort / "slice_labels.csv"),
        "--masks",
        str(cohort / "masks"),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
def test_resume_after_kill_leaves_no_duplicates(tiny_cohort, tmp_path):
    """A run killed mid-way leaves complete shards (shard + its manifest part), at most a
    half-written temporary file, and no manifest. Built deterministically: a full run, then
    the state a kill during shard 3 of 5 leaves (a timed SIGKILL raced the tiny run)."""
    from radnet_tf import atomic

    out = tmp_path / "rec"
    config = tmp_path / "tiny.yaml"
    config.write_text("input_size: 32\nout_spacing: 8.0\n")
    cmd = _cli(out, tiny_cohort, ["--shards", "5", "--workers", "1", "--config", str(config)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    shards = sorted(out.glob("studies-*.tfrecord.gz"))
    assert len(shards) == 5
    for shard in shards[2:]:  # shards 3-5 never finished
        shard.unlink()
        Path(f"{shard}.manifest.csv").unlink()
    half = atomic.temp_name(shards[2])
    half.write_bytes(shards[0].read_bytes()[:100])  # the half-written shard 3
    (out / "manifest.csv").unlink()
    (out / "manifest.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in shards[:2]}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    assert {
        p: p.stat().st_mtime_ns for p in shards[:2]
    } == kept  # complete shards kept as they were
    keys = [records.decode_study(tf.constant(r))["study_key"].numpy() for r in _all_records(out)]
    assert len(keys) == len(set(keys)) == 10
    assert not list(out.glob(f"{atomic.TMP_PREFIX}*"))
    assert len(pd.read_csv(out / "manifest.csv")) == 10


@pytest.mark.slow
def test_beam_direct_runner_matches_local_runner(tiny_cohort, tiny_records, tmp_path):
    pytest.importorskip("apache_beam")
    from radnet_tf.datasets.build import run_beam

    tasks, skipped = folder_tasks(
        tiny_cohort / "dicom",
        tiny_cohort / "labels.csv",
        tiny_cohort / "slice_labels.csv",
        tiny_cohort / "masks",
    )
    table, summary = run_beam(
        tasks, skipped, tmp_path, 2, tiny_config().preprocess_config(), ["--runner", "DirectRunner"]
    )
    assert summary["studies_written"] == 10
    assert sorted(_all_records(tmp_path)) == sorted(_all_records(tiny_records))
    local = pd.read_csv(tiny_records / "manifest.csv").drop(columns="shard")
    beam = pd.read_csv(tmp_path / "manifest.csv").drop(columns="shard")
    pd.testing.assert_frame_equal(local, beam)


def test_local_runner_skips_unreadable_study_with_reason(tiny_cohort, tmp_path):
    import shutil

    root = tmp_path / "dicom"
    shutil.copytree(tiny_cohort / "dicom" / "synth-0000", root / "good")
    (root / "broken").mkdir()
    (root / "broken" / "x.dcm").write_text("not dicom")
    tasks, skipped = discover_tasks(root, {"good": 0, "broken": 1})
    table, summary = run_local(
        tasks, skipped, tmp_path / "out", 2, 1, tiny_config().preprocess_config(), progress=False
    )
    assert summary["studies_written"] == 1 and summary["studies_skipped"] == 1
    reason = table.set_index("study_id").loc["broken", "reason"]
    assert "no DICOM files" in reason


def test_prewindowed_png_studies_become_records(tmp_path):
    from PIL import Image

    from radnet_tf.records.convert import image_tasks

    # A 40/80-windowed rendering: pixel 255 = 80 HU, 0 = 0 HU; an asymmetric bright box.
    img = np.full((50, 50), 96, np.uint8)  # 96 -> 30.1 HU
    img[10:20, 30:45] = 255
    rows = []
    for i in range(3):
        Image.fromarray(img).save(tmp_path / f"s{i}.png")
        Image.fromarray(((img == 255) * 255).astype(np.uint8)).save(tmp_path / f"m{i}.png")
        rows.append(
            {
                "image": f"s{i}.png",
                "mask": f"m{i}.png",
                "label": int(i > 0),
                "study_id": "A",
                "slice_index": 2 - i,
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "images.csv", index=False)
    tasks = image_tasks(tmp_path / "images.csv", tmp_path, (40, 80), pixel_spacing=5.0)
    assert len(tasks) == 1 and tasks[0].slice_labels == (1, 1, 0)  # ordered by slice_index
    pcfg = tiny_config().preprocess_config()
    record, row = convert_study(tasks[0], pcfg)
    study = records.decode_study(tf.constant(record))
    assert row["num_slices"] == 3 and row["label"] == 1 and bool(study["has_mask"])
    hu = study["image"].numpy()[0]
    assert hu.max() == 80 and int(np.median(hu[hu > -1000])) == 30
    bright = hu >= 79
    assert (study["mask"].numpy()[0].astype(bool) == bright).mean() > 0.97


def test_concurrent_writers_of_one_shard_leave_a_complete_shard(tmp_path):
    """Two writers of the same shard (a retried task) must not interleave into one file."""
    from concurrent.futures import ThreadPoolExecutor

    path = str(tmp_path / "studies-00000-of-00001.tfrecord.gz")
    sets = {
        name: [f"{name}-{i}".encode() * 50 for i in range(n)] for name, n in (("a", 300), ("b", 40))
    }

    def slow(items):
        for item in items:
            time.sleep(0.0005)
            yield item

    # A writer must not fail because another one finished first: map() re-raises any
    # writer's exception here.
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda items: records.write_shard(path, slow(items)), sets.values()))
    got = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type=records.COMPRESSION)]
    assert got in list(sets.values())
    assert os.listdir(tmp_path) == [os.path.basename(path)]


def test_subtype_targets_come_from_the_records(tiny_records):
    """targets: subtypes -> y["subtype_probability"] [B, S, 5] = the records' per-slice
    subtypes, padded with -1 like the slice labels."""
    cfg = tiny_config(targets="subtypes")
    files = data.list_shards(tiny_records)
    truth = {s["study_key"].numpy(): s["slice_subtypes"].numpy() for s in data.read_studies(files)}
    assert any(t.max() == 1 for t in truth.values())  # the tiny cohort has bleeds of some type
    for x, y, meta in data.eval_dataset(
        files, cfg, 2, with_masks=False, split="all", with_keys=True
    ):
        for i, key in enumerate(meta["study_key"].numpy()):
            if not key:
                continue
            s = truth[key].shape[0]
            np.testing.assert_array_equal(y["subtype_probability"].numpy()[i, :s], truth[key])
            assert (y["subtype_probability"].numpy()[i, s:] == -1).all()
    x, y = next(iter(data.train_dataset(files, cfg, 2)))
    assert y["subtype_probability"].shape == (2, cfg.crop_slices, 5)


def test_class_mask_targets_one_hot_or_unknown_blood():
    """Aux-head class targets: one-hot where the record has classes; blood without a class
    is -1 (unknown), background 0."""
    mask = tf.constant([[[1, 1], [0, 1]]], tf.uint8)  # [S=1, 2, 2]
    classes = tf.constant([[[2, 5], [0, 0]]], tf.uint8)  # the last blood pixel has no class
    got = data.class_mask_targets({"mask": mask, "mask_classes": classes}).numpy()[0]
    np.testing.assert_array_equal(got[0, 0], [0, 1, 0, 0, 0])  # IPH
    np.testing.assert_array_equal(got[0, 1], [0, 0, 0, 0, 1])  # SDH
    np.testing.assert_array_equal(got[1, 0], [0, 0, 0, 0, 0])  # background
    np.testing.assert_array_equal(got[1, 1], [-1, -1, -1, -1, -1])  # blood, class unknown


def test_a_one_slice_dicom_series_becomes_a_one_slice_record(tmp_path):
    """Single-slice studies (RSNA-style positives) convert, as predict already reads them."""
    from conftest import write_tiny_series

    from radnet_tf.records.convert import StudyTask, convert_study

    write_tiny_series(tmp_path / "one", num_slices=1)
    record, row = convert_study(
        StudyTask("one", str(tmp_path / "one"), 1, None), tiny_config().preprocess_config()
    )
    study = records.decode_study(tf.constant(record))
    assert row["num_slices"] == 1 and study["image"].shape[0] == 1
    assert study["slice_labels"].numpy().tolist() == [-1]  # a positive study: slice unknown


def test_masks_are_resampled_only_on_their_slices_and_equal_a_full_resample():
    from radnet_tf import preprocess
    from radnet_tf.config import Config
    from radnet_tf.records.convert import _on_marked_slices

    pcfg = dataclasses.replace(Config().preprocess_config(), out_size=16, fov_mm=32.0)
    mask = np.zeros((3, 20, 20), bool)
    mask[1, 4:12, 6:9] = True
    seen = []

    def resample(m):
        seen.append(len(m))
        return preprocess.resample_mask(m, (1.5, 1.5), (9.5, 9.5), pcfg).numpy()

    full = preprocess.resample_mask(mask, (1.5, 1.5), (9.5, 9.5), pcfg).numpy()
    np.testing.assert_array_equal(_on_marked_slices(resample, mask, 16), full)
    assert seen == [1] and full[1].sum() > 0  # only the marked slice went through
