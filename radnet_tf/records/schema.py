"""The TFRecord schema: one owner for key names, dtypes and shapes; writer beside parser.

One `tf.train.Example` per study (schema version 1):

  key               type     shape      meaning
  schema_version    int64    []         SCHEMA_VERSION
  study_key         bytes    []         pseudonymous study key (never patient identifiers)
  image             bytes    -          int16 little-endian HU [S, N, N] on the model grid
                                        (1 mm, 250 mm FOV by default); the window is a
                                        training-time choice
  mask              bytes    -          uint8 [S, N, N] (1 = blood); b"" when has_mask = 0
  mask_classes      bytes    -          optional: uint8 [S, N, N], 0 or the subtype class
                                        1..5 (contract.SUBTYPES order + 1); zeros when absent
  has_mask          int64    []         1 when the study has reference masks
  slice_labels      int64    [S]        1/0 per slice, -1 = unknown ("any" hemorrhage)
  slice_subtypes    int64    [S * 5]    optional: 1/0/-1 per slice and subtype
                                        (contract.SUBTYPES order); decoded as [S, 5], all
                                        -1 when absent (records written before it)
  label             int64    []         study label 1/0
  study_subtypes    int64    [5]        optional: 1/0/-1 per subtype for the whole study
                                        (e.g. CQ500 reads); -1 when absent
  num_slices        int64    []         S
  size              int64    []         N
  spacing           float    [3]        (row, col, slice) mm of the stored grid
  slice_positions   float    [S]        mm along the slice normal
  rendered_window   float    [2]        optional: (centre, width) HU of the display window the
                                        source images were rendered with (8-bit PNG/JPEG):
                                        only HU inside it are real; (0, 0) = HU as scanned

Shards are GZIP-compressed (`COMPRESSION`): air and empty masks compress well.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from radnet_tf.contract import SUBTYPES

SCHEMA_VERSION = 1  # optional features added later (slice_subtypes) keep version 1 readable
NUM_SUBTYPES = len(SUBTYPES)
COMPRESSION = "GZIP"
SHARD_SUFFIX = ".tfrecord.gz"

FEATURES = {
    "schema_version": tf.io.FixedLenFeature([], tf.int64),
    "study_key": tf.io.FixedLenFeature([], tf.string),
    "image": tf.io.FixedLenFeature([], tf.string),
    "mask": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "mask_classes": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "has_mask": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "slice_labels": tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True),
    "slice_subtypes": tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True),
    "study_subtypes": tf.io.FixedLenFeature(
        [NUM_SUBTYPES], tf.int64, default_value=[-1] * NUM_SUBTYPES
    ),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "num_slices": tf.io.FixedLenFeature([], tf.int64),
    "size": tf.io.FixedLenFeature([], tf.int64),
    "spacing": tf.io.FixedLenFeature([3], tf.float32),
    "slice_positions": tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
    "rendered_window": tf.io.FixedLenFeature([2], tf.float32, default_value=[0.0, 0.0]),
}


def _bytes(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _ints(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in np.ravel(v)]))


def _floats(v):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(x) for x in np.ravel(v)]))


def encode_study(
    *,
    study_key,
    image,
    slice_labels,
    label,
    spacing,
    slice_positions,
    mask=None,
    slice_subtypes=None,
    study_subtypes=None,
    mask_classes=None,
    rendered_window=None,
) -> bytes:
    """Serialises one study.

    Args:
      study_key: str, pseudonymous key.
      image: int16 array [S, N, N], HU.
      slice_labels: int array [S] (1/0, -1 unknown).
      label: int, study label.
      spacing: 3 floats (row, col, slice) mm.
      slice_positions: float array [S], mm.
      mask: optional uint8/bool array [S, N, N].
      slice_subtypes: optional int array [S, 5] (1/0, -1 unknown; contract.SUBTYPES order).
      study_subtypes: optional 5 ints (1/0, -1 unknown) for the whole study.
      mask_classes: optional uint8 array [S, N, N] of subtype classes (0, 1..5).
      rendered_window: optional (centre, width) HU the source images were rendered with.
    Returns:
      bytes of a serialised tf.train.Example.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[1] != image.shape[2]:
        raise ValueError(f"image must be [S, N, N]. Received: shape={image.shape}")
    s, n = image.shape[0], image.shape[1]
    slice_labels = np.asarray(slice_labels)
    if slice_labels.shape != (s,):
        raise ValueError(f"slice_labels must have shape [{s}]. Received: {slice_labels.shape}")
    if mask is not None and np.asarray(mask).shape != image.shape:
        raise ValueError(f"mask must have shape {image.shape}. Received: {np.asarray(mask).shape}")
    if slice_subtypes is not None and np.asarray(slice_subtypes).shape != (s, NUM_SUBTYPES):
        raise ValueError(
            f"slice_subtypes must have shape [{s}, {NUM_SUBTYPES}]. Received: "
            f"{np.asarray(slice_subtypes).shape}"
        )
    feature = {
        "schema_version": _ints(SCHEMA_VERSION),
        "study_key": _bytes(str(study_key).encode()),
        "image": _bytes(image.astype("<i2").tobytes()),
        "mask": _bytes(b"" if mask is None else np.asarray(mask).astype(np.uint8).tobytes()),
        "has_mask": _ints(0 if mask is None else 1),
        "slice_labels": _ints(slice_labels),
        "label": _ints(label),
        "num_slices": _ints(s),
        "size": _ints(n),
        "spacing": _floats(spacing),
        "slice_positions": _floats(slice_positions),
    }
    if slice_subtypes is not None:
        feature["slice_subtypes"] = _ints(slice_subtypes)
    if mask_classes is not None:
        if np.asarray(mask_classes).shape != image.shape:
            raise ValueError(
                f"mask_classes must have shape {image.shape}. Received: "
                f"{np.asarray(mask_classes).shape}"
            )
        feature["mask_classes"] = _bytes(np.asarray(mask_classes).astype(np.uint8).tobytes())
    if rendered_window is not None:
        feature["rendered_window"] = _floats(rendered_window)
    if study_subtypes is not None:
        if np.asarray(study_subtypes).shape != (NUM_SUBTYPES,):
            raise ValueError(
                f"study_subtypes must have shape [{NUM_SUBTYPES}]. Received: "
                f"{np.asarray(study_subtypes).shape}"
            )
        feature["study_subtypes"] = _ints(study_subtypes)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def decode_study(serialized):
    """Parses one serialised study (graph-compatible; use in `Dataset.map`).

    Returns:
      dict: study_key string []; image int16 [S, N, N]; mask uint8 [S, N, N] (zeros when
      absent); mask_classes uint8 [S, N, N] (zeros when absent); has_mask bool []; slice_labels
      int64 [S]; slice_subtypes int64 [S, 5] (-1
      when absent); study_subtypes int64 [5] (-1 when absent); label int64 []; spacing float32 [3];
      slice_positions float32 [S]; rendered_window float32 [2] ((0, 0) for HU as scanned);
      num_slices int64 [].
    """
    ex = tf.io.parse_single_example(serialized, FEATURES)
    tf.debugging.assert_equal(
        ex["schema_version"],
        tf.constant(SCHEMA_VERSION, tf.int64),
        message="unsupported record schema version",
    )
    s, n = ex["num_slices"], ex["size"]
    shape = tf.stack([s, n, n])
    image = tf.reshape(tf.io.decode_raw(ex["image"], tf.int16, little_endian=True), shape)
    has_mask = ex["has_mask"] > 0
    mask = tf.cond(
        has_mask,
        lambda: tf.reshape(tf.io.decode_raw(ex["mask"], tf.uint8), shape),
        lambda: tf.zeros(shape, tf.uint8),
    )
    mask_classes = tf.cond(
        tf.strings.length(ex["mask_classes"]) > 0,
        lambda: tf.reshape(tf.io.decode_raw(ex["mask_classes"], tf.uint8), shape),
        lambda: tf.zeros(shape, tf.uint8),
    )
    subtypes = ex["slice_subtypes"]
    subtypes = tf.cond(
        tf.equal(tf.size(subtypes, out_type=tf.int64), s * NUM_SUBTYPES),
        lambda: tf.reshape(subtypes, tf.stack([s, NUM_SUBTYPES])),
        lambda: tf.fill(
            tf.stack([s, tf.constant(NUM_SUBTYPES, tf.int64)]), tf.constant(-1, tf.int64)
        ),
    )
    return {
        "study_key": ex["study_key"],
        "image": image,
        "mask": mask,
        "has_mask": has_mask,
        "mask_classes": mask_classes,
        "slice_labels": ex["slice_labels"],
        "slice_subtypes": subtypes,
        "study_subtypes": ex["study_subtypes"],
        "label": ex["label"],
        "spacing": ex["spacing"],
        "slice_positions": ex["slice_positions"],
        "rendered_window": ex["rendered_window"],
        "num_slices": s,
    }


def shard_name(index: int, count: int) -> str:
    return f"studies-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def write_shard(path, serialized_records):
    """Writes records to `path` atomically (temporary name, then rename).

    A crash leaves at most a temporary file (`radnet_tf.atomic`), never a half-written
    shard under the final name. The temporary name is unique per writer, so two processes
    writing the same shard (a retried task, a misconfigured launcher) each rename a
    complete file; last one wins.
    """
    from radnet_tf import atomic

    with atomic.atomic_path(path) as tmp:
        with tf.io.TFRecordWriter(
            str(tmp), options=tf.io.TFRecordOptions(compression_type=COMPRESSION)
        ) as writer:
            for rec in serialized_records:
                writer.write(rec)
