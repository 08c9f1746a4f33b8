"""DICOM SEG output: geometry back to the source pixels, and a round trip through highdicom."""

import numpy as np
import pydicom
import pytest

from conftest import tiny_config, write_enhanced_ct, write_tiny_series
from radnet_tf import preprocess
from radnet_tf.io.dicom import read_series, shear_like

hd = pytest.importorskip("highdicom")


def _disc(shape, center, radius):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius**2


@pytest.mark.parametrize("tilted", [False, True])
def test_model_grid_mask_maps_back_onto_the_source_pixels(tmp_path, tilted):
    from radnet_tf.io.seg import to_source_grid

    write_tiny_series(tmp_path, num_slices=4)
    if tilted:  # the slice origins drift along the column direction: a gantry tilt
        for f in tmp_path.iterdir():
            ds = pydicom.dcmread(f)
            z = float(ds.ImagePositionPatient[2])
            ds.ImagePositionPatient = [
                float(ds.ImagePositionPatient[0]),
                float(ds.ImagePositionPatient[1]) + 2.0 * z,
                z,
            ]
            ds.save_as(f)
    series = read_series(tmp_path)
    assert series.tilt_corrected == tilted
    pcfg = tiny_config(input_size=64, out_spacing=4.0).preprocess_config()
    center = preprocess.head_center_np(series.hu)
    source = np.stack([_disc(series.hu.shape[1:], (30 + i, 28), 7) for i in range(4)])
    # what the model sees: the source mask moved like the HU (shear), then resampled
    seen = shear_like(series, source)
    model_grid = (
        preprocess.resample_mask(seen >= 0.5, series.pixel_spacing, center, pcfg)
        .numpy()
        .astype(bool)
    )
    back = to_source_grid(model_grid, series, pcfg, center)
    for i in range(4):
        iou = (back[i] & source[i]).sum() / (back[i] | source[i]).sum()
        assert iou > 0.8, (i, iou)


def test_segmentation_round_trip(tmp_path):
    from radnet_tf.io.seg import to_source_grid, write_segmentation

    folder = tmp_path / "study"
    write_tiny_series(folder, num_slices=3)
    series = read_series(folder)
    files = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in folder.iterdir()}
    pcfg = tiny_config().preprocess_config()
    masks = np.zeros((3, 32, 32, 5), bool)
    masks[1, 10:20, 12:22, 1] = True  # IPH on slice 1
    masks[0:2, 14:18, 14:18, 4] = True  # SDH on slices 0-1; no EDH, IVH, SAH: no segment
    names = ["EDH", "IPH", "IVH", "SAH", "SDH"]
    written = write_segmentation(
        tmp_path / "seg.dcm", series, files, masks, names, pcfg, {"model": "radnet", "version": 1}
    )
    assert written == ["IPH", "SDH"]
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [d.segment_label for d in seg.SegmentSequence] == ["IPH", "SDH"]
    assert int(seg.NumberOfFrames) == 3 * 2
    referenced = {
        s.ReferencedSOPInstanceUID
        for s in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == set(series.sop_instance_uids)
    center = preprocess.head_center_np(series.hu)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=series.sop_instance_uids, segment_numbers=[1, 2]
    )
    for k, j in enumerate((1, 4)):
        np.testing.assert_array_equal(
            pixels[..., k].astype(bool), to_source_grid(masks[..., j], series, pcfg, center)
        )
    raw = pydicom.dcmread(tmp_path / "seg.dcm")
    source = pydicom.dcmread(next(iter(files.values())))
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and raw.Modality == "SEG"
    assert (
        raw.PatientID == source.PatientID and raw.StudyInstanceUID == source.StudyInstanceUID
    )  # the standard references
    assert raw.Manufacturer == "radnet-tf"
    assert (
        write_segmentation(
            tmp_path / "none.dcm", series, files, np.zeros_like(masks), names, pcfg, {}
        )
        == []
    )
    assert not (tmp_path / "none.dcm").exists()


def test_a_series_without_frame_of_reference_gets_a_derived_one(tmp_path, capsys):
    """De-identified exports (CQ500) drop the Frame of Reference UID a CT SEG needs: the SEG
    is still written, with a UID derived from the series (the same on every write), and a
    note says so; the source files are not touched."""
    from radnet_tf.io.seg import write_segmentation

    folder = tmp_path / "study"
    write_tiny_series(folder, num_slices=3)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    series = read_series(folder)
    files = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in folder.iterdir()}
    masks = np.zeros((3, 32, 32, 1), bool)
    masks[1, 10:20, 12:22, 0] = True
    pcfg = tiny_config().preprocess_config()
    uids = []
    for name in ("a.dcm", "b.dcm"):
        assert write_segmentation(
            tmp_path / name, series, files, masks, ["Hemorrhage"], pcfg, {}
        ) == ["Hemorrhage"]
        uids.append(str(pydicom.dcmread(tmp_path / name).FrameOfReferenceUID))
    assert uids[0] == uids[1] and uids[0].startswith(
        "1.2.826.0.1.3680043.8.498."
    )  # pydicom's derived-UID root
    assert "no Frame of Reference UID" in capsys.readouterr().err
    assert all("FrameOfReferenceUID" not in pydicom.dcmread(f) for f in folder.iterdir())
    other = tmp_path / "other"  # a series with its own UID keeps it
    write_tiny_series(other, num_slices=3)
    own = str(pydicom.dcmread(next(other.iterdir())).FrameOfReferenceUID)
    files = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in other.iterdir()}
    write_segmentation(
        tmp_path / "c.dcm", read_series(other), files, masks, ["Hemorrhage"], pcfg, {}
    )
    assert str(pydicom.dcmread(tmp_path / "c.dcm").FrameOfReferenceUID) == own


def test_segmentation_of_an_enhanced_ct_object_follows_its_frames(tmp_path):
    """A series read from one multi-frame object (frames out of z order, a localizer frame
    the reader skipped): the SEG references that object, frame by frame."""
    from radnet_tf.io.seg import to_source_grid, write_segmentation

    write_tiny_series(tmp_path / "classic", num_slices=3)
    write_enhanced_ct(
        tmp_path / "classic",
        tmp_path / "study" / "mf.dcm",
        frame_order=[2, 0, 1],
        localizer_frame=True,
    )
    series = read_series(tmp_path / "study")
    uid = str(pydicom.dcmread(tmp_path / "study" / "mf.dcm").SOPInstanceUID)
    pcfg = tiny_config().preprocess_config()
    masks = np.zeros((3, 32, 32, 1), bool)
    masks[0, 10:20, 12:22, 0] = True  # lowest slice
    masks[2, 14:18, 14:18, 0] = True  # highest slice
    written = write_segmentation(
        tmp_path / "seg.dcm",
        series,
        {uid: tmp_path / "study" / "mf.dcm"},
        masks,
        ["Hemorrhage"],
        pcfg,
        {},
    )
    assert written == ["Hemorrhage"]
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert int(seg.NumberOfFrames) == 4  # every source frame, the localizer's empty
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [r.ReferencedSOPInstanceUID for r in referenced] == [uid]
    center = preprocess.head_center_np(series.hu)
    expected = to_source_grid(masks[..., 0], series, pcfg, center)
    for i, n in enumerate(series.frame_numbers):
        pixels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=uid, source_frame_numbers=[n], segment_numbers=[1]
        )
        np.testing.assert_array_equal(pixels[0, ..., 0].astype(bool), expected[i])
    assert expected[0].any() and expected[2].any() and not expected[1].any()
    localizer = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=uid, source_frame_numbers=[4], segment_numbers=[1]
    )
    assert not localizer.any()


def test_a_series_split_over_two_multi_frame_objects_gets_no_segmentation(tmp_path):
    from radnet_tf.io.seg import unsupported_sources, write_segmentation
    from radnet_tf.errors import UserError

    write_tiny_series(tmp_path / "classic", num_slices=4)
    write_enhanced_ct(tmp_path / "classic", tmp_path / "study" / "a.dcm", frame_order=[0, 1])
    write_enhanced_ct(tmp_path / "classic", tmp_path / "study" / "b.dcm", frame_order=[2, 3])
    series = read_series(tmp_path / "study")
    assert series.num_slices == 4 and len(set(series.sop_instance_uids)) == 2
    assert unsupported_sources(series) == (
        "the series spans 2 DICOM objects, some of them multi-frame: a "
        "segmentation can reference single-frame images or one multi-frame image"
    )
    files = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in (tmp_path / "study").iterdir()}
    masks = np.ones((4, 32, 32, 1), bool)
    with pytest.raises(UserError, match="spans 2 DICOM objects"):
        write_segmentation(
            tmp_path / "seg.dcm",
            series,
            files,
            masks,
            ["Hemorrhage"],
            tiny_config().preprocess_config(),
            {},
        )
    assert not (tmp_path / "seg.dcm").exists()
    assert unsupported_sources(read_series(tmp_path / "classic")) is None
