"""Model-grid masks -> a DICOM Segmentation of the source series (for PACS), with highdicom.

    write_segmentation(path, series, source_files, masks, names, pcfg, meta)

Geometry: a model-grid mask [S, N, N] is mapped back to every source pixel of every slice:
the FOV crop and in-plane resampling are undone with the preprocessing's own geometry
(same head centre, scale and translation as `preprocess.resample_to_fov`, nearest model
pixel), and for a tilt-corrected series each slice's shear is undone too, so frame k of a
segment lies on source image k's pixels. One segment per label that has any voxel; a
segmentation without any segment is not written.

Multi-frame sources: for a series read from one enhanced CT object, the SEG's frames follow
that object's frame order (`source_frames`), as a SEG of a multi-frame image requires.

Identifiers: the SEG carries what the standard SEG references take from the source series
(patient and study attributes, the referenced SOP instances) and nothing else.

Frame of reference: a SEG of CT needs the source's Frame of Reference UID (type 1 in CT
images, but some de-identified exports drop it, e.g. CQ500). A series without one gets one
derived from its Series Instance UID (`frame_of_reference_for`: the same series always gets
the same UID), set on the in-memory copies only, and a note says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radnet_tf import atomic
from radnet_tf.errors import UserError

TYPE2_COPIED = (
    "StudyID",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
HEMORRHAGE = ("50960005", "SCT", "Hemorrhage")
CATEGORY = ("49755003", "SCT", "Morphologically Altered Structure")


def to_source_grid(masks, series, pcfg, center):
    """bool [S, N, N] masks on the model grid -> bool [S, H, W] on the source pixels.

    Args:
      masks: bool/0-1 array [S, N, N]. series: the `dicom_io.CTSeries` the model saw.
      pcfg: the export's `PreprocessConfig`. center: (row, col) head centre in source pixels
        (`preprocess.head_center_np(series.hu)`, as the model's preprocessing computed it).
    """
    masks = np.asarray(masks, bool)
    s, h, w = series.hu.shape
    n = pcfg.out_size
    scale = np.asarray(series.pixel_spacing, np.float64) / pcfg.out_spacing
    translation = n / 2.0 - scale * (np.asarray(center, np.float64) + 0.5)
    rows, cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    shifts = series.shear_px if series.tilt_corrected else np.zeros((s, 2))
    out = np.zeros((s, h, w), bool)
    for i in range(s):
        # source pixel (r, c) sits at (r + dr, c + dc) of the sheared slice the model saw
        r = np.rint(scale[0] * (rows + shifts[i, 0] + 0.5) + translation[0] - 0.5).astype(int)
        c = np.rint(scale[1] * (cols + shifts[i, 1] + 0.5) + translation[1] - 0.5).astype(int)
        ok_r, ok_c = (r >= 0) & (r < n), (c >= 0) & (c < n)
        out[i][np.ix_(ok_r, ok_c)] = masks[i][np.ix_(r[ok_r], c[ok_c])]
    return out


def frame_of_reference_for(sources) -> tuple:
    """(Frame of Reference UID for the SEG, whether it was derived): the sources' own when
    any has one, else a UID derived from their Series Instance UID (deterministic)."""
    from pydicom.uid import generate_uid

    own = [str(ds.FrameOfReferenceUID) for ds in sources if getattr(ds, "FrameOfReferenceUID", "")]
    if own:
        return own[0], False
    series_uid = str(getattr(sources[0], "SeriesInstanceUID", "")) if sources else ""
    return generate_uid(entropy_srcs=["radnet-tf frame of reference", series_uid]), True


def unsupported_sources(series):
    """Why no SEG can reference this series' images (None when one can): a SEG references
    single-frame images or one multi-frame image, not a mix or several multi-frame ones."""
    numbers = list(getattr(series, "frame_numbers", None) or [])
    if not any(n is not None for n in numbers):
        return None
    objects = set(series.sop_instance_uids)
    if len(objects) != 1 or any(n is None for n in numbers):
        return (
            f"the series spans {len(objects)} DICOM objects, some of them multi-frame: a "
            "segmentation can "
            "reference single-frame images or one multi-frame image"
        )
    return None


def source_frames(frames, series, source_files):
    """The SEG's frames in the order of its source images, and those images.

    Args:
      frames: bool [S, H, W, L] on the source pixels, in the series' slice order.
      series: the `CTSeries`. source_files: {SOPInstanceUID: file path}.
    Returns:
      (frames, sources): for classic slices, `frames` unchanged and one dataset per slice;
      for a series read from one enhanced (multi-frame) CT object, `frames` rearranged to
      that object's frame order ([NumberOfFrames, H, W, L]; frames the reader skipped, e.g.
      a localizer frame, stay empty) and that one dataset.
    Raises:
      UserError for a series that mixes several objects with classic slices or spans
      several multi-frame objects: a SEG references either single-frame images or one
      multi-frame image.
    """
    import pydicom

    reason = unsupported_sources(series)
    if reason:
        raise UserError(reason)
    numbers = [n for n in (getattr(series, "frame_numbers", None) or []) if n is not None]
    if not numbers:  # classic (single-image) objects
        return frames, [pydicom.dcmread(source_files[uid]) for uid in series.sop_instance_uids]
    source = pydicom.dcmread(source_files[series.sop_instance_uids[0]])
    ordered = np.zeros((int(source.NumberOfFrames), *frames.shape[1:]), frames.dtype)
    ordered[np.asarray(numbers) - 1] = frames
    return ordered, [source]


def _prepared_sources(frames, series, source_files):
    """(frames in the sources' order, the source datasets) with the type-2 attributes the
    SEG copies present (empty when the source lacks them) and one Frame of Reference UID."""
    frames, sources = source_frames(frames, series, source_files)
    for ds in sources:
        for keyword in TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    frame_uid, derived = frame_of_reference_for(sources)
    if derived:
        from radnet_tf.cli import say

        say("note: the source series has no Frame of Reference UID; the segmentation uses one "
            "derived from its Series Instance UID", err=True)
    for ds in sources:
        ds.FrameOfReferenceUID = frame_uid
    return frames, sources


def _segment_descriptions(labels, meta):
    """One highdicom SegmentDescription per segment label, numbered from 1."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    from radnet_tf import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"radnet-tf {meta.get('model', 'radnet')}",
        family=Code("123110", "DCM", "Artificial Intelligence"),
        version=f"{__version__} (export {meta.get('version', '?')})",
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=k + 1,
            segment_label=str(label),
            segmented_property_category=Code(*CATEGORY),
            segmented_property_type=Code(*HEMORRHAGE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k, label in enumerate(labels)
    ]


def write_segmentation(path, series, source_files, masks, names, pcfg, meta):
    """Writes a binary DICOM SEG (atomically) with one segment per non-empty label.

    Args:
      path: output .dcm. series: `CTSeries`. source_files: {SOPInstanceUID: file path} of
        the series. masks: bool [S, N, N, L] model-grid masks. names: L segment labels.
      pcfg: the export's PreprocessConfig. meta: the export's metadata (model, version).
    Returns:
      the segment labels written ([] when no label has a voxel: nothing is written).
    """
    try:
        import highdicom as hd
        from pydicom.uid import generate_uid
    except ImportError:
        raise UserError(
            "DICOM SEG output needs highdicom: pip install 'radnet-tf[dicom-seg]'"
        ) from None
    from radnet_tf import __version__
    from radnet_tf.preprocess import head_center_np

    masks = np.asarray(masks, bool)
    present = [j for j in range(masks.shape[-1]) if masks[..., j].any()]
    if not present:
        return []
    center = head_center_np(series.hu)
    frames = np.stack(
        [to_source_grid(masks[..., j], series, pcfg, center) for j in present], axis=-1
    )
    missing = sorted({uid for uid in series.sop_instance_uids if uid not in source_files})
    if missing:
        raise UserError(
            f"{len(missing)} source image(s) of the series not found for the segmentation"
        )
    frames, sources = _prepared_sources(frames, series, source_files)
    descriptions = _segment_descriptions([names[j] for j in present], meta)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=9901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="radnet-tf",
        manufacturer_model_name=str(meta.get("model", "radnet")),
        software_versions=__version__,
        device_serial_number="radnet-tf",
        omit_empty_frames=False,
    )
    with atomic.atomic_path(Path(path)) as tmp:
        seg.save_as(tmp)
    return [str(names[j]) for j in present]
