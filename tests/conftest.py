"""Shared fixtures: tiny shapes, fixed seeds; real DICOM from ../shared when present."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

TINY_MODEL = dict(
    input_size=32,
    out_spacing=8.0,
    fov_mm=250.0,
    depth=7,
    growth_rate=2,
    initial_filters=4,
    lstm_units=3,
    head_filters=2,
    crop_slices=4,
    batch_size=2,
    epochs=2,
    steps_per_epoch=2,
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: trains, exports or builds a cohort or the atlas (over ~8 s on 2 cores)"
    )


@pytest.fixture
def shared():
    """Path of ../shared/data; skips when absent (e.g. on a user's machine)."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED


def tiny_config(**overrides):
    from radnet_tf.config import Config

    values = {**TINY_MODEL, **overrides}
    return Config(**values).validate()


def write_tiny_series(folder, num_slices=4, seed=0):
    """A negative, untilted 64 x 64 phantom series (3.4 mm pixels) as DICOM in `folder`;
    returns the phantom."""
    import numpy as np

    from radnet_tf.phantom import generate as synth

    phantom = synth.make_phantom(
        np.random.default_rng(seed),
        synth.SynthConfig(
            matrix=64, num_slices=num_slices, pixel_spacing_range=(3.4, 3.4), tilt_fraction=0.0
        ),
        positive=False,
    )
    synth.write_dicom_series(phantom, folder, np.random.default_rng(seed))
    return phantom


def one_slice_png_records(folder, studies):
    """`studies` one-slice PNG studies (random pixels, labels alternating 0/1) converted to
    records on the tiny grid in `folder / "records"`; returns that path."""
    import numpy as np
    from PIL import Image

    from radnet_tf.records.convert import image_tasks, run_local

    rows = ["image,label"]
    for i in range(studies):
        Image.fromarray(
            (np.random.default_rng(i).uniform(size=(64, 64)) * 255).astype(np.uint8)
        ).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{i % 2}")
    (folder / "images.csv").write_text("\n".join(rows) + "\n")
    tasks = image_tasks(folder / "images.csv", folder, (40, 80))
    run_local(
        tasks, [], folder / "records", 1, 1, tiny_config().preprocess_config(), progress=False
    )
    return folder / "records"


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """10 synthetic studies of 6 slices, 64x64 at ~3.4 mm (whole head in view)."""
    from radnet_tf.phantom import generate as synth

    out = tmp_path_factory.mktemp("cohort")
    cfg = synth.SynthConfig(
        matrix=64, num_slices=6, pixel_spacing_range=(3.3, 3.5), slice_thickness_range=(4.0, 5.0)
    )
    synth.generate_cohort(out, 10, seed=3, cfg=cfg)
    return out


@pytest.fixture(scope="session")
def tiny_records(tiny_cohort, tmp_path_factory):
    """The tiny cohort as records on the tiny model grid (32 px, 8 mm)."""
    from radnet_tf.records.convert import folder_tasks, run_local

    out = tmp_path_factory.mktemp("records")
    tasks, skipped = folder_tasks(
        tiny_cohort / "dicom",
        tiny_cohort / "labels.csv",
        tiny_cohort / "slice_labels.csv",
        tiny_cohort / "masks",
    )
    run_local(
        tasks,
        skipped,
        out,
        shards=2,
        workers=1,
        pcfg=tiny_config().preprocess_config(),
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def trained_tiny(tiny_records, tmp_path_factory):
    """A tiny radnet trained for 2 steps x 2 epochs (in-process)."""
    from radnet_tf.training.train import train

    model_dir = tmp_path_factory.mktemp("model")
    cfg = tiny_config(data=str(tiny_records), model_dir=str(model_dir), val_fraction=0.4)
    summary, model = train(cfg, progress=False)
    return cfg, summary, model, model_dir


def write_enhanced_ct(
    classic_folder, path, frame_order=None, localizer_frame=False, per_frame_rescale=False
):
    """The classic CT slices of `classic_folder` as one Enhanced CT Image Storage object.

    Built by hand, as a scanner would store it: orientation and pixel measures in the shared
    functional group; position, frame type (and, with `per_frame_rescale`, a rescale
    intercept that differs per frame, stored values shifted to keep the HU) in each frame's
    group; nothing of them at the top level.

    Args:
      frame_order: slice indices (in the folder's sorted file order) for frames 1..N.
      localizer_frame: append a frame typed LOCALIZER (a reader must skip it).
    Returns:
      list of source file paths in frame order (None for the localizer frame).
    """
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    files = sorted(Path(classic_folder).iterdir())
    order = list(range(len(files))) if frame_order is None else list(frame_order)
    slices = [pydicom.dcmread(files[i]) for i in order]
    first = slices[0]
    ds = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "Modality",
        "SeriesDescription",
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    ):
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    shared.PixelMeasuresSequence = [measures]
    plane = Dataset()
    plane.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PlaneOrientationSequence = [plane]
    if not per_frame_rescale:
        rescale = Dataset()
        rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = (
            first.RescaleIntercept,
            1,
            "HU",
        )
        shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    groups, pixels = [], []
    for k, sl in enumerate(slices + ([slices[0]] if localizer_frame else [])):
        group = Dataset()
        position = Dataset()
        position.ImagePositionPatient = sl.ImagePositionPatient
        group.PlanePositionSequence = [position]
        frame_type = Dataset()
        is_localizer = localizer_frame and k == len(slices)
        frame_type.FrameType = [
            "ORIGINAL",
            "PRIMARY",
            "LOCALIZER" if is_localizer else "AXIAL",
            "NONE",
        ]
        group.CTImageFrameTypeSequence = [frame_type]
        pixels_in = sl.pixel_array
        stored = pixels_in.astype(np.int32)
        if per_frame_rescale:  # intercept moves by 10 * k, stored values the other way: same HU
            rescale = Dataset()
            rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = (
                float(sl.RescaleIntercept) - 10 * k,
                1,
                "HU",
            )
            group.PixelValueTransformationSequence = [rescale]
            stored = stored + 10 * k
        groups.append(group)
        pixels.append(stored.astype(pixels_in.dtype))
    if localizer_frame:  # a second localizer at the first slice's position would collide: move it
        groups[-1].PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, -500.0]
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.NumberOfFrames = len(pixels)
    ds.PixelData = np.stack(pixels).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return [files[i] for i in order] + ([None] if localizer_frame else [])
