import copy

import numpy as np
import pydicom
import pytest

from conftest import write_enhanced_ct, write_tiny_series
from radnet_tf.io.dicom import AIR_HU, _shear_to_normal, pseudonymize, read_series
from radnet_tf.errors import DicomReadError


def _tiny_series(folder, num_slices=4, seed=0):
    return write_tiny_series(folder, num_slices, seed)


def test_reader_returns_phantom_voxels_in_z_order(tmp_path):
    phantom = _tiny_series(tmp_path, num_slices=5)
    # Neither file names nor InstanceNumber follow z, so only sorting by position passes.
    by_name = [pydicom.dcmread(f) for f in sorted(tmp_path.iterdir())]
    by_number = sorted(by_name, key=lambda d: int(d.InstanceNumber))
    for order in (by_name, by_number):
        assert [float(d.ImagePositionPatient[2]) for d in order] != sorted(
            phantom.z_positions.tolist()
        )
    series = read_series(tmp_path)
    assert series.hu.dtype == np.int16
    np.testing.assert_array_equal(series.hu, phantom.hu)  # sorted by position, not file name
    np.testing.assert_allclose(series.slice_positions, phantom.z_positions)
    assert series.pixel_spacing == (3.4, 3.4)
    assert series.tilt_deg == 0.0 and not series.tilt_corrected and series.gaps == []


def test_no_patient_identifiers_leave_the_reader(tmp_path):
    _tiny_series(tmp_path)
    ds = pydicom.dcmread(next(tmp_path.iterdir()))
    series = read_series(tmp_path)
    text = repr(series.summary()) + repr(vars(series).keys()) + series.study_key
    for value in (
        str(ds.PatientName),
        ds.PatientID,
        ds.PatientBirthDate,
        ds.AccessionNumber,
        ds.StudyDate,
    ):
        assert value not in text
    assert series.study_key == pseudonymize(ds.StudyInstanceUID)
    assert series.study_key != pseudonymize(ds.StudyInstanceUID, salt="other-site")


def test_padding_value_becomes_air(tmp_path):
    _tiny_series(tmp_path, num_slices=2)
    for path in tmp_path.iterdir():
        ds = pydicom.dcmread(path)
        ds.add_new(0x00280120, "US", 0)  # PixelPaddingValue: stored 0 = -1024 HU here
        arr = ds.pixel_array.copy()
        arr[:2, :2] = 0
        arr[2, 2] = 5  # stored 5 -> -1019 HU: real tissue, kept
        ds.PixelData = arr.tobytes()
        ds.save_as(path)
    hu = read_series(tmp_path).hu
    assert (hu[:, :2, :2] == AIR_HU).all() and (hu[:, 2, 2] == -1019).all()


def test_shear_removes_known_in_plane_offset():
    hu = np.full((3, 8, 8), AIR_HU, np.int16)
    # Slice origins move 2 mm along the column direction per slice (a tilted gantry), so a
    # rod at constant y = 8 mm (physically straight along the normal) lies at row 4 - i.
    positions = np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 2.0], [0.0, 4.0, 4.0]])
    for i in range(3):
        hu[i, 4 - i, 4] = 100
    orientation = np.array([1.0, 0, 0, 0, 1, 0])
    out = _shear_to_normal(hu, positions, orientation, (2.0, 2.0))
    for i in range(3):
        assert out[i, 4, 4] == 100  # after the shear every slice shows it at row 4
        assert (out[i] == 100).sum() == 1
    in_place = hu.copy()  # as the reader shears: into the decoded volume itself
    assert _shear_to_normal(in_place, positions, orientation, (2.0, 2.0), out=in_place) is in_place
    assert np.array_equal(in_place, out) and not np.array_equal(hu, out)


@pytest.mark.parametrize(
    "case", ["empty", "not_dicom", "truncated", "no_pixels", "mr", "single", "matrix", "sagittal"]
)
def test_bad_input_gives_clear_error(tmp_path, case):
    folder = tmp_path / "study"
    folder.mkdir()
    if case == "not_dicom":
        (folder / "notes.txt").write_text("hello")
    elif case != "empty":
        _tiny_series(folder, num_slices=3)
        files = sorted(folder.iterdir())
        ds = pydicom.dcmread(files[0])
        if case == "truncated":
            data = files[0].read_bytes()
            files[0].write_bytes(data[: len(data) // 2])
        elif case == "no_pixels":
            for f in files:
                d = pydicom.dcmread(f)
                del d.PixelData
                d.save_as(f)
        elif case == "mr":
            for f in files:
                d = pydicom.dcmread(f)
                d.Modality = "MR"
                d.save_as(f)
        elif case == "single":
            for f in files[1:]:
                f.unlink()
        elif case == "matrix":
            small = copy.deepcopy(ds)
            small.Rows = small.Columns = 32
            small.PixelData = np.zeros((32, 32), np.uint16).tobytes()
            small.save_as(files[0])
        elif case == "sagittal":
            for f in files:
                d = pydicom.dcmread(f)
                d.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
                d.save_as(f)
    expected = {
        "empty": "folder is empty",
        "not_dicom": "no DICOM files",
        "truncated": r"IM\d+\.dcm: cannot decode pixel data \(The number of bytes of pixel data "
        "is less than expected",
        "no_pixels": "no pixel data",
        "mr": "modality MR is not CT",
        "single": "at least 2 needed",
        "matrix": "differs from the series",
        "sagittal": "not an axial slice",
    }[case]
    with pytest.raises(DicomReadError, match=expected) as info:
        read_series(folder)
    assert str(folder.name) in str(info.value)


def test_localizer_and_other_files_are_skipped_and_listed(tmp_path):
    _tiny_series(tmp_path, num_slices=3)
    first = sorted(tmp_path.iterdir())[0]
    scout = pydicom.dcmread(first)
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    scout.save_as(tmp_path / "scout.dcm")
    (tmp_path / "README").write_text("not dicom")
    series = read_series(tmp_path)
    assert series.num_slices == 3
    assert ("scout.dcm", "localizer/scout image") in series.skipped
    assert ("README", "not a DICOM file") in series.skipped


@pytest.mark.parametrize("per_frame_rescale", [False, True])
def test_enhanced_ct_frames_read_like_the_classic_slices(tmp_path, per_frame_rescale):
    """An Enhanced CT object keeps position, orientation, spacing and rescale in functional
    groups: its frames (stored out of z order, one of them a localizer) read as the same
    volume as the classic slices they were made from."""
    phantom = _tiny_series(tmp_path / "classic", num_slices=5)
    made_from = write_enhanced_ct(
        tmp_path / "classic",
        tmp_path / "enhanced" / "mf.dcm",
        frame_order=[3, 0, 4, 1, 2],
        localizer_frame=True,
        per_frame_rescale=per_frame_rescale,
    )
    classic, enhanced = read_series(tmp_path / "classic"), read_series(tmp_path / "enhanced")
    np.testing.assert_array_equal(enhanced.hu, phantom.hu)
    np.testing.assert_array_equal(enhanced.hu, classic.hu)
    np.testing.assert_allclose(enhanced.slice_positions, classic.slice_positions)
    assert enhanced.pixel_spacing == classic.pixel_spacing == (3.4, 3.4)
    assert (
        enhanced.slice_thickness == classic.slice_thickness
        and enhanced.study_key == classic.study_key
    )
    # slice i came from frame frame_numbers[i]: the classic file of that slice
    by_file = {str(f): i for i, f in enumerate(sorted((tmp_path / "classic").iterdir()))}
    classic_uids = [
        str(pydicom.dcmread(f).SOPInstanceUID) for f in sorted((tmp_path / "classic").iterdir())
    ]
    for i, n in enumerate(enhanced.frame_numbers):
        assert classic_uids[by_file[str(made_from[n - 1])]] == classic.sop_instance_uids[i]
    assert sorted(enhanced.frame_numbers) == [1, 2, 3, 4, 5] and classic.frame_numbers == [None] * 5
    assert set(enhanced.sop_instance_uids) == {
        str(pydicom.dcmread(tmp_path / "enhanced" / "mf.dcm").SOPInstanceUID)
    }
    assert enhanced.skipped == [("mf.dcm frame 6", "localizer/scout image")]


def test_single_frame_enhanced_ct_objects_read_as_slices(tmp_path):
    """One Enhanced CT object per slice (NumberOfFrames 1, geometry only in the functional
    groups): read like the classic slices; each object's UID names its image."""
    phantom = _tiny_series(tmp_path / "classic", num_slices=3)
    for k in range(3):
        write_enhanced_ct(tmp_path / "classic", tmp_path / "enhanced" / f"{k}.dcm", frame_order=[k])
    series = read_series(tmp_path / "enhanced")
    np.testing.assert_array_equal(series.hu, phantom.hu)
    assert series.frame_numbers == [None] * 3 and len(set(series.sop_instance_uids)) == 3


def test_legacy_converted_enhanced_ct_reads_like_its_sources(tmp_path):
    """highdicom's Legacy Converted Enhanced CT (another writer than ours) of the same slices."""
    hd = pytest.importorskip("highdicom")
    from pydicom.uid import generate_uid

    phantom = _tiny_series(tmp_path / "classic", num_slices=4, seed=3)
    sources = [pydicom.dcmread(f) for f in sorted((tmp_path / "classic").iterdir())]
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        sources,
        series_instance_uid=sources[0].SeriesInstanceUID,
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    (tmp_path / "legacy").mkdir()
    converted.save_as(tmp_path / "legacy" / "mf.dcm")
    series = read_series(tmp_path / "legacy")
    np.testing.assert_array_equal(series.hu, phantom.hu)
    np.testing.assert_allclose(series.slice_positions, phantom.z_positions)
    assert sorted(series.frame_numbers) == [1, 2, 3, 4] and series.skipped == []


def test_multi_frame_object_that_is_not_enhanced_ct_is_skipped(tmp_path):
    _tiny_series(tmp_path, num_slices=3)
    ds = pydicom.dcmread(sorted(tmp_path.iterdir())[0])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.6"
    ds.save_as(tmp_path / "cine.dcm")
    series = read_series(tmp_path)
    assert series.num_slices == 3
    assert ("cine.dcm", "multi-frame object that is not an enhanced CT image") in series.skipped


def test_undecodable_slice_refused_or_skipped_as_a_gap(tmp_path):
    _tiny_series(tmp_path, num_slices=5)
    by_z = sorted(
        tmp_path.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2])
    )
    middle = by_z[2]
    ds = pydicom.dcmread(middle)
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data
    ds.save_as(middle)
    with pytest.raises(DicomReadError, match=f"{middle.name}: cannot decode pixel data"):
        read_series(tmp_path)
    series = read_series(tmp_path, skip_undecodable=True)
    assert series.num_slices == 4 and series.gaps == [(1, 1)]
    assert (middle.name, "pixel data cannot be decoded") in series.skipped


def test_cli_error_is_one_line(tmp_path, capsys):
    from radnet_tf.io.inspect import main

    with pytest.raises(SystemExit) as info:
        main([str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("[radnet] error:") and "\n" not in err and "Traceback" not in err


# ---------------------------------------------------------------- real data (../shared)


def test_cq500_sorted_by_position_with_gap(shared):
    folder = shared / "cq500" / "CQ500-CT-0"
    series = read_series(folder)
    assert series.num_slices == 238
    # Independent order: IPP projected on the normal, computed here from the headers.
    files = sorted(folder.iterdir())
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.array(headers[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([np.dot(np.array(h.ImagePositionPatient, float), normal) for h in headers])
    order = np.argsort(pos)
    assert [str(headers[i].SOPInstanceUID) for i in order] == series.sop_instance_uids
    assert list(order) != list(range(len(files)))  # file names are not in slice order
    assert series.gaps == [(235, 1)]
    assert not series.irregular_spacing
    assert series.slice_spacing == pytest.approx(0.618, abs=1e-3)
    assert series.tilt_deg == pytest.approx(8.5, abs=0.05) and series.tilt_corrected


def test_cq500_jpeg_lossless_decodes_to_hu(shared):
    folder = shared / "cq500" / "CQ500-CT-0"
    f = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(f)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    stored = ds.pixel_array.astype(np.int32)
    expected = stored * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    expected[stored == ds.PixelPaddingValue] = AIR_HU
    expected = np.clip(expected, AIR_HU, None)
    got = read_series(f, min_slices=1).hu[0]
    np.testing.assert_array_equal(got, expected)


def test_jpeg2000_equals_uncompressed(shared):
    folder = shared / "cq500" / "CQ500-CT-310"
    j2k = read_series(folder / "693_J2KR.dcm", min_slices=1)
    raw = read_series(folder / "693_UNCR.dcm", min_slices=1)
    np.testing.assert_array_equal(j2k.hu, raw.hu)
    assert raw.hu.min() == AIR_HU and raw.hu.max() > 1000


def test_ge_tilt_detected_corrected_or_refused(shared):
    folder = shared / "ge-head-tilt"
    series = read_series(folder)
    assert series.tilt_deg == pytest.approx(18.5, abs=0.05)
    assert series.tilt_corrected and series.irregular_spacing and series.gaps == []
    assert ("LICENSE", "not a DICOM file") in series.skipped
    assert series.hu.min() == AIR_HU  # -1500 padding outside the FOV became air
    with pytest.raises(DicomReadError, match="gantry tilt of 18.5 degrees"):
        read_series(folder, tilt="reject")


@pytest.mark.parametrize("name", ["ge-head-tilt", "vhp-male-head"])
def test_real_series_as_legacy_converted_enhanced_ct(shared, tmp_path, name):
    """Real series (a tilted one with irregular spacing; an RLE-compressed one) converted by
    highdicom into one Legacy Converted Enhanced CT object read back voxel for voxel."""
    hd = pytest.importorskip("highdicom")
    from pydicom.uid import generate_uid

    sources = [pydicom.dcmread(f) for f in sorted((shared / name).glob("*.dcm"))]
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        sources,
        series_instance_uid=sources[0].SeriesInstanceUID,
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    converted.save_as(tmp_path / "mf.dcm")
    classic, enhanced = read_series(shared / name), read_series(tmp_path / "mf.dcm")
    np.testing.assert_array_equal(enhanced.hu, classic.hu)
    np.testing.assert_allclose(enhanced.slice_positions, classic.slice_positions)
    assert (
        enhanced.tilt_deg == pytest.approx(classic.tilt_deg)
        and enhanced.tilt_corrected == classic.tilt_corrected
    )
    assert enhanced.irregular_spacing == classic.irregular_spacing and enhanced.gaps == classic.gaps


def test_same_image_stored_twice_is_read_once(tmp_path):
    import shutil

    _tiny_series(tmp_path, num_slices=3)
    first = sorted(tmp_path.iterdir())[0]
    shutil.copy(first, tmp_path / "copy.dcm")
    series = read_series(tmp_path)
    assert series.num_slices == 3
    assert any(reason.startswith("duplicate SOPInstanceUID") for _, reason in series.skipped)


@pytest.mark.parametrize(
    "shift",
    [
        (3.3, -1.7),
        (0.0, 2.0),
        (-5.5, 0.25),
        (10.9, -7.1),
        (600.0, 0.0),
        (-39.5, 47.0),  # half a row left; one column left
    ],
)
def test_fast_shear_matches_scipy_shift(shift):
    from scipy import ndimage

    from radnet_tf.io.dicom import _shift_axis

    stored = np.random.default_rng(0).integers(-1024, 2000, (40, 48)).astype(np.int16)
    image = stored.astype(np.float32)
    expected = ndimage.shift(image, shift, order=1, cval=AIR_HU)
    got = _shift_axis(_shift_axis(image, shift[0], 0, AIR_HU), shift[1], 1, AIR_HU)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    from_int = _shift_axis(_shift_axis(stored, shift[0], 0, AIR_HU), shift[1], 1, AIR_HU)
    assert from_int.dtype == np.float32 and np.array_equal(from_int, got)  # int16 read as is


def _gathered_shift(image, shift, axis, fill):
    """Reference for `_shift_axis`: every output line gathered by index."""
    n = image.shape[axis]
    k = int(np.floor(-shift))
    frac = np.float32(-shift - k)
    source = np.arange(n) + k
    out = np.take(image, np.clip(source, 0, n - 1), axis=axis).astype(np.float32)
    if frac:
        out *= 1 - frac
        out += frac * np.take(image, np.clip(source + 1, 0, n - 1), axis=axis)
    outside = (source + frac < -1e-6) | (source + frac > n - 1 + 1e-6)
    out[(slice(None),) * axis + (outside,)] = fill
    return out


def test_shift_axis_equals_a_gather_at_every_edge_case():
    """Views of runs of lines give the same float32 values as gathering each line, also at
    shifts within the 1e-6 edge tolerance (edge lines repeat) and beyond the image."""
    from radnet_tf.io.dicom import _shift_axis

    image = np.random.default_rng(1).integers(-1024, 2000, (9, 7)).astype(np.float32)
    shifts = [0, 1, -1, 2.5, 1e-7, -1e-7, 0.9999999, -0.9999999, 3 - 1e-7, 6.5, -8.5, 9, -9]
    for shift in shifts + list(np.random.default_rng(2).uniform(-12, 12, 40)):
        for axis in (0, 1):
            want = _gathered_shift(image, shift, axis, AIR_HU)
            assert np.array_equal(_shift_axis(image, shift, axis, AIR_HU), want), (shift, axis)


def test_shear_like_moves_a_stack_by_the_series_shear_exactly():
    from radnet_tf.io.dicom import CTSeries, shear_like

    stack = np.zeros((2, 3, 4), np.uint8)
    stack[:, 1, 1] = 1
    series = CTSeries(
        hu=np.zeros((2, 3, 4), np.int16),
        pixel_spacing=(1.0, 1.0),
        slice_positions=np.array([0.0, 5.0]),
        slice_spacing=5.0,
        orientation=np.array([1.0, 0, 0, 0, 1, 0]),
        study_key="k",
        series_key="s",
        sop_instance_uids=["a", "b"],
        shear_px=np.array([[0.0, 0.0], [1.0, 0.5]]),
    )
    assert np.array_equal(shear_like(series, stack), stack)  # not tilt-corrected: unchanged
    series.tilt_corrected = True
    moved = shear_like(series, stack)
    assert np.array_equal(moved[0], stack[0])
    expected = np.zeros((3, 4), np.float32)
    expected[2, 1] = expected[2, 2] = 0.5  # one row down, half a column right
    assert np.array_equal(moved[1], expected)


def test_non_conformant_uids_are_counted_in_one_line_not_warned_per_value(tmp_path):
    import warnings

    import pydicom

    from conftest import write_tiny_series
    from radnet_tf.datasets.rsna import header_row
    from radnet_tf.io.dicom import read_series

    write_tiny_series(tmp_path, num_slices=3)
    files = sorted(tmp_path.glob("*.dcm"))
    for i, path in enumerate(files):  # RSNA-2019 style: ID_<hex> where a UID belongs
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = f"ID_{i:09x}"
        ds.SeriesInstanceUID = "ID_series"
        ds.save_as(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = read_series(tmp_path)
        row = header_row(files[0], tmp_path)
    assert not [w for w in caught if "VR UI" in str(w.message)]
    assert series.invalid_uids >= 6 and row["invalid_uids"] >= 2
    assert series.warnings[-1].startswith(f"{series.invalid_uids:,} non-conformant UID values")
    assert "ID_" not in series.warnings[-1]  # the line quotes no UID


def test_other_warnings_pass_through_the_uid_counter():
    import warnings

    from radnet_tf.io.uid_warnings import counted_uid_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with counted_uid_warnings() as uids:
            warnings.warn("Invalid value for VR UI: 'ID_1'")
            warnings.warn("something else")
    assert uids == {"invalid_uids": 1}
    assert [str(w.message) for w in caught] == ["something else"]
