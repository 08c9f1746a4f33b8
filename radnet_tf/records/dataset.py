"""tf.data input: records -> training windows (augmented, class-balanced) or whole studies.

Element contract (both pipelines):
  x: float32 [B, S, N, N, C], windowed slices in [0, 1] (C = 1 + len(extra_windows): the
     brain window, then the extra windows); padding slices = PAD_VALUE
  y: dict with "slice_probability" float32 [B, S] (1/0, -1 = ignore) and, for models with
     aux heads, "mask_1".."mask_3" float32 [B, S, N, N, 1] (1/0, -1 = ignore: padded
     slices, studies without masks)

The split is by study (never one study on two sides), deterministic from the study key and
the seed: `is_validation(key)` holds out `val_fraction` of the studies; of the rest,
`cfg.calibration_fraction` calibrate the decision thresholds and are not trained on
(`split_of`).
"""

from __future__ import annotations

import math

import tensorflow as tf

from radnet_tf import preprocess
from radnet_tf.records import schema as records
from radnet_tf.errors import UserError
from radnet_tf.contract import (
    IGNORE_LABEL,
    MASK_OUTPUTS,
    OUTPUT_SLICE,
    OUTPUT_SUBTYPES,
    PAD_VALUE,
    SUBTYPES,
)

AUTOTUNE = tf.data.AUTOTUNE


def list_shards(pattern) -> list:
    """Expands a directory (all shards in it) or glob into sorted shard paths."""
    pattern = str(pattern)
    if tf.io.gfile.isdir(pattern):
        pattern = pattern.rstrip("/") + "/*" + records.SHARD_SUFFIX
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise UserError(f"no TFRecord shards match {pattern}")
    return files


def is_validation(study_key, val_fraction, seed):
    """bool tensor: whether a study (string tensor key) is in the validation split."""
    bucket = tf.strings.to_hash_bucket_fast(tf.strings.join([study_key, f":{seed}"]), 10000)
    return bucket < int(round(val_fraction * 10000))


SPLITS = ("train", "calibration", "validation")


def split_of(study_key, cfg):
    """int32 tensor: the index in SPLITS of a study's split (string tensor key).

    Validation: `is_validation(key, cfg.val_fraction, cfg.seed)`, as before calibration
    studies existed (adding them moves no study out of validation). Of the other studies,
    `cfg.calibration_fraction` (an independent hash of the key) are calibration studies.
    """
    calibration = is_validation(study_key, cfg.calibration_fraction, f"{cfg.seed}:calibration")
    return tf.where(
        is_validation(study_key, cfg.val_fraction, cfg.seed), 2, tf.where(calibration, 1, 0)
    )


def read_studies(files, deterministic=True):
    """Dataset of decoded studies (dicts from `records.decode_study`) from shard files.

    Shards are interleaved; a corrupt or truncated shard raises DataLossError naming the
    file (TFRecordDataset's own check), never a silently short epoch.
    """
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=records.COMPRESSION),
        cycle_length=min(8, len(files)),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    return ds.map(records.decode_study, num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def class_mask_targets(study):
    """float32 [S, N, N, 5] class-mask targets: one-hot of the record's mask_classes where
    it has them; 0 on background and -1 (unknown) on blood of unknown class otherwise."""
    classes = tf.cast(study["mask_classes"], tf.int32)
    onehot = tf.one_hot(classes - 1, len(SUBTYPES), dtype=tf.float32)  # class 0 -> all zeros
    blood_unknown = tf.logical_and(study["mask"] > 0, classes == 0)[..., None]
    return tf.where(blood_unknown, -tf.ones_like(onehot), onehot)


def _targets(study, with_masks, with_subtypes=False):
    labels = tf.cast(study["slice_labels"], tf.float32)
    y = {OUTPUT_SLICE: labels}
    if with_subtypes:
        y[OUTPUT_SUBTYPES] = tf.cast(study["slice_subtypes"], tf.float32)  # [S, 5], -1 unknown
    if with_masks:
        mask = tf.cast(study["mask"], tf.float32)[..., None]
        if with_subtypes:  # channel 0 blood, channels 1..5 the classes
            mask = tf.concat([mask, class_mask_targets(study)], axis=-1)
        mask = tf.where(study["has_mask"], mask, -tf.ones_like(mask))
        for name in MASK_OUTPUTS:
            y[name] = mask
    return y


def study_subtype_labels(study):
    """int64 [5]: the study's label per subtype — its whole-study reads where the record
    has them (e.g. CQ500), else 1 if any slice is positive for it, 0 if every slice is
    known negative, -1 otherwise."""
    per_slice = study["slice_subtypes"]  # [S, 5], -1 unknown
    any_pos = tf.reduce_any(per_slice > 0, axis=0)
    all_known = tf.logical_and(tf.reduce_all(per_slice >= 0, axis=0), tf.shape(per_slice)[0] > 0)
    from_slices = tf.where(
        any_pos,
        tf.constant(1, tf.int64),
        tf.where(all_known, tf.constant(0, tf.int64), tf.constant(-1, tf.int64)),
    )
    return tf.where(study["study_subtypes"] >= 0, study["study_subtypes"], from_slices)


def _uniform(seed, index, minval, maxval, dtype=tf.float32):
    """Scalar uniform draw in [minval, maxval). With `seed` (int [2] tensor) it is stateless:
    draw `index` of that seed, the same whatever thread or order runs it (a stateful op in
    a parallel `map` hands out its stream in thread order, so runs differed)."""
    if seed is None:
        return tf.random.uniform([], minval, maxval, dtype)
    sub = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), index)
    return tf.random.stateless_uniform([], sub, minval, maxval, dtype)


def negative_starts(labels, length):
    """bool [max(S - length, 0) + 1]: which window starts give `length` (or S, when
    shorter) consecutive slices none of which is labelled positive."""
    s = tf.shape(labels)[0]
    length = tf.minimum(length, s)
    positive = tf.cast(labels > 0, tf.int32)
    before = tf.concat([[0], tf.cumsum(positive)], axis=0)  # positives before slice i
    starts = tf.range(tf.maximum(s - length, 0) + 1)
    return tf.gather(before, starts + length) - tf.gather(before, starts) == 0


def crop_window(study, window, seed=None):
    """Random contiguous window of `window` slices; for positive studies it contains a
    positive slice, unless the study carries `negative_window` True (slice-label balancing:
    then no slice of the window is positive). Shorter studies are returned whole (padded
    later).

    seed: optional int [2] tensor for stateless (order-independent) draws."""
    s = tf.shape(study["image"])[0]
    labels = study["slice_labels"]
    positives = tf.cast(tf.where(labels > 0)[:, 0], tf.int32)
    max_start = tf.maximum(s - window, 0)

    def around_positive():
        i = tf.gather(positives, _uniform(seed, 0, 0, tf.size(positives), tf.int32))
        lo = tf.maximum(0, i - window + 1)
        hi = tf.minimum(i, max_start)
        return _uniform(seed, 1, lo, hi + 1, tf.int32)

    def negative():
        starts = tf.cast(tf.where(negative_starts(labels, window))[:, 0], tf.int32)
        return tf.gather(starts, _uniform(seed, 1, 0, tf.size(starts), tf.int32))

    start = tf.cond(
        tf.size(positives) > 0,
        around_positive,
        lambda: _uniform(seed, 1, 0, max_start + 1, tf.int32),
    )
    if "negative_window" in study:
        start = tf.cond(study["negative_window"], negative, lambda: start)
    length = tf.minimum(window, s)
    out = dict(study)
    for key in (
        "image",
        "mask",
        "slice_labels",
        "slice_positions",
        "slice_subtypes",
        "mask_classes",
        "teacher_probs",
    ):
        if key in study:
            out[key] = study[key][start : start + length]
    return out


def _rotation_transform(angle, size):
    """Projective transform (ImageProjectiveTransformV3) rotating about the image centre."""
    c = (tf.cast(size, tf.float32) - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # output (x, y) -> input: rotate by -angle about the centre
    a0, a1 = cos, -sin
    a2 = c - cos * c + sin * c
    b0, b1 = sin, cos
    b2 = c - sin * c - cos * c
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])[None]


def augment(image, mask, rotation_deg, flip, seed=None):
    """Same random rotation and horizontal flip for every slice of a window and its mask.

    Args:
      image: float32 [S, N, N, C]; mask: float32 [S, N, N, 1] (0/1, or -1 = no mask).
      seed: optional int [2] tensor for stateless (order-independent) draws.
    Returns:
      (image, mask) transformed identically; image bilinear, mask nearest-neighbour.
    """
    size = tf.shape(image)[1]
    if flip:
        do_flip = _uniform(seed, 2, 0.0, 1.0) < 0.5
        image = tf.cond(do_flip, lambda: tf.reverse(image, [2]), lambda: image)
        mask = tf.cond(do_flip, lambda: tf.reverse(mask, [2]), lambda: mask)
    if rotation_deg:
        angle = _uniform(seed, 3, -float(rotation_deg), float(rotation_deg)) * (math.pi / 180.0)
        transform = tf.tile(_rotation_transform(angle, size), [tf.shape(image)[0], 1])
        out_shape = tf.stack([size, size])

        def rotate(x, interpolation, fill):
            return tf.raw_ops.ImageProjectiveTransformV3(
                images=x,
                transforms=transform,
                output_shape=out_shape,
                fill_value=fill,
                interpolation=interpolation,
                fill_mode="CONSTANT",
            )

        image = rotate(image, "BILINEAR", 0.0)
        mask = rotate(mask, "NEAREST", 0.0)
    return image, mask


def _pad_to(x, length, value):
    pad = length - tf.shape(x)[0]
    paddings = [[0, pad]] + [[0, 0]] * (x.shape.rank - 1)
    out = tf.pad(x, paddings, constant_values=value)
    return tf.ensure_shape(out, [length] + x.shape.as_list()[1:])


def _balanced_choices(batch_size, positive_fraction, seed):
    """Infinite int64 dataset of 0 (positive) / 1 (negative) choices, batch by batch: each
    block of `batch_size` holds round(positive_fraction * batch_size) zeros, shuffled.
    A fractional remainder is spread over blocks so the long-run ratio is exact."""
    block = tf.range(batch_size, dtype=tf.int64)

    def make_block(i):
        expected = positive_fraction * tf.cast(i + 1, tf.float64) * batch_size
        before = positive_fraction * tf.cast(i, tf.float64) * batch_size
        k = tf.cast(tf.round(expected) - tf.round(before), tf.int64)
        return tf.random.shuffle(tf.cast(block >= k, tf.int64), seed=seed)

    return tf.data.Dataset.range(2**62).map(make_block).unbatch()


def distilled_targets(labels, teacher_probs, weight):
    """float32 [S]: (1 - weight) * label + weight * teacher probability where the label is
    known (>= 0); unknown labels (-1) stay -1."""
    labels = tf.cast(labels, tf.float32)
    mixed = (1.0 - weight) * labels + weight * tf.cast(teacher_probs, tf.float32)
    return tf.where(labels >= 0, mixed, labels)


def _teacher_lookup(teacher):
    """A map function adding "teacher_probs" float32 [S] (from `teacher`, a dict study_key
    -> probabilities) to a decoded study; a study the teacher lacks gets its own labels
    (no distillation)."""
    keys = sorted(teacher)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.range(len(keys), dtype=tf.int64)),
        default_value=-1,
    )
    probs = tf.ragged.constant([list(map(float, teacher[k])) for k in keys], dtype=tf.float32)

    def add(study):
        index = table.lookup(study["study_key"])
        found = probs[tf.maximum(index, 0)]
        fallback = tf.cast(study["slice_labels"], tf.float32)
        study = dict(study)
        study["teacher_probs"] = tf.cond(index >= 0, lambda: found, lambda: fallback)
        return study

    return add


def _class_streams(train_studies, crop_slices, balance, seed):
    """(positive, negative) infinite, shuffled streams of training studies, each flagged
    with `negative_window` for `crop_window`. `train_studies(label_test)` gives the
    training studies whose label passes; `balance` as in `train_dataset`."""

    def flagged(ds, negative_window):
        return ds.map(lambda st: {**st, "negative_window": tf.constant(negative_window)})

    pos = flagged(train_studies(lambda label: label > 0), False)
    if balance == "slices":  # negatives: windows of positive studies without a positive slice
        neg = flagged(
            train_studies(lambda label: label > 0).filter(
                lambda st: tf.reduce_any(negative_starts(st["slice_labels"], crop_slices))
            ),
            True,
        )
    else:
        neg = flagged(train_studies(lambda label: label <= 0), False)
    return pos.repeat().shuffle(256, seed=seed), neg.repeat().shuffle(256, seed=seed + 1)


def _training_example_fn(cfg, with_masks, with_teacher):
    """The map function (study, element seed [2]) -> (image [crop, N, N, C], targets) of
    `train_dataset`: crop, window, augment, pad; slice targets distilled `with_teacher`."""
    windows = cfg.preprocess_config().windows
    with_subtypes = getattr(cfg, "targets", "any") == "subtypes"

    def to_example(study, element_seed):
        study = crop_window(study, cfg.crop_slices, element_seed)
        hu = tf.cast(study["image"], tf.float32)
        image = preprocess.window_channels(hu, windows)
        y = _targets(study, with_masks, with_subtypes)
        mask = y.get(MASK_OUTPUTS[0], tf.zeros_like(image[..., :1]))
        image, mask = augment(image, mask, cfg.rotation_deg, cfg.flip, element_seed)
        image = _pad_to(image, cfg.crop_slices, PAD_VALUE)
        if with_teacher:
            y[OUTPUT_SLICE] = distilled_targets(
                y[OUTPUT_SLICE], study["teacher_probs"], cfg.distill_weight
            )
        y[OUTPUT_SLICE] = _pad_to(y[OUTPUT_SLICE], cfg.crop_slices, float(IGNORE_LABEL))
        if with_subtypes:
            y[OUTPUT_SUBTYPES] = _pad_to(y[OUTPUT_SUBTYPES], cfg.crop_slices, float(IGNORE_LABEL))
        if with_masks:
            # augmentation preserves the -1 "no mask" value only inside the image; rebuild it
            mask = tf.where(study["has_mask"], mask, -tf.ones_like(mask))
            mask = _pad_to(mask, cfg.crop_slices, float(IGNORE_LABEL))
            for name in MASK_OUTPUTS:
                y[name] = mask
        return image, y

    return to_example


def train_dataset(
    files,
    cfg,
    batch_size,
    with_masks=True,
    seed=None,
    replica_batch=None,
    balance="studies",
    teacher=None,
):
    """Infinite dataset of augmented, class-balanced training windows.

    Args:
      files: shard paths. cfg: `Config` (window, augmentation, balance, split, window
        level). batch_size: global batch (windows). with_masks: emit mask targets.
      replica_batch: windows per replica (default `batch_size`). Balance is enforced in
        consecutive blocks of this size, so each replica's slice of a global batch (and so
        its BatchNorm statistics) is balanced too.
      balance: "studies" (negative windows from negative studies) or "slices" (from
        windows of positive studies that hold no positive slice: for sets where every
        study is positive but slices are labelled; `balance_of`).
      teacher: optional {study_key (str): float [S] slice probabilities of a teacher model}
        for every training study (distillation): a known slice label y becomes
        (1 - cfg.distill_weight) * y + cfg.distill_weight * the teacher's probability.
    """
    seed = cfg.seed if seed is None else seed
    with_teacher = teacher is not None
    add_teacher = _teacher_lookup(teacher) if with_teacher else (lambda st: st)
    replica_batch = replica_batch or batch_size
    if batch_size % replica_batch:
        raise ValueError(
            f"batch_size {batch_size} is not a multiple of replica_batch {replica_batch}"
        )

    def train_studies(label_test):
        return (
            read_studies(files)
            .filter(lambda st: split_of(st["study_key"], cfg) == 0)
            .filter(lambda st: label_test(st["label"]))
            .map(add_teacher)
            .cache()  # decoded HU windows are small at training geometry; reread otherwise
        )

    to_example = _training_example_fn(cfg, with_masks, with_teacher)
    pos, neg = _class_streams(train_studies, cfg.crop_slices, balance, seed)
    # Every batch holds round(positive_fraction * batch_size) positive windows: else the
    # BatchNorm batch statistics carry the batch's label mix, which fails at inference.
    mixed = tf.data.Dataset.choose_from_datasets(
        [pos, neg], _balanced_choices(replica_batch, cfg.positive_fraction, seed)
    )
    n = cfg.input_size
    # One stateless seed per window, from a seeded stream: augmentation does not depend on
    # which thread of the parallel map draws first.
    element_seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = (
        tf.data.Dataset.zip((mixed, element_seeds))
        .map(to_example, num_parallel_calls=AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .map(
            lambda x, y: (
                tf.ensure_shape(x, [batch_size, cfg.crop_slices, n, n, cfg.input_channels]),
                y,
            )
        )
        .prefetch(AUTOTUNE)
    )
    # Every worker builds the same stream; tf.distribute splits each global batch between
    # them (DATA sharding). FILE sharding would hand a worker whole shards, which with few
    # shards can leave one without a positive study (and the balanced sampler waiting).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def eval_dataset(
    files,
    cfg,
    batch_size=1,
    with_masks=True,
    split="validation",
    with_keys=False,
    fill_batches=False,
):
    """Whole studies, variable length, padded batches (PAD_VALUE slices, -1 targets).

    Args:
      split: "validation", "train", "calibration" (SPLITS), a tuple of them, or "all".
      with_keys: also yield the study key, label, subtype labels and split (int32 index in
        SPLITS): (x, y, {"study_key", "label", "subtype_labels", "split"}).
      fill_batches: fill the last batch up to `batch_size` with all-padding studies (every
        target -1, so losses' valid elements and masked metrics are unchanged) and turn off
        auto-sharding: under MultiWorkerMirroredStrategy every worker then sees every batch
        and takes an equal, non-empty part of it. (Losses averaged over a batch count the
        filler studies as 0.)
    """
    ds = read_studies(files)
    if split != "all":
        wanted = (split,) if isinstance(split, str) else tuple(split)
        if not wanted or not set(wanted) <= set(SPLITS):
            raise ValueError(f"split must be one of {SPLITS} or 'all'. Received: {split!r}")
        index = tf.constant([SPLITS.index(name) for name in wanted], tf.int32)
        ds = ds.filter(lambda st: tf.reduce_any(split_of(st["study_key"], cfg) == index))

    windows = cfg.preprocess_config().windows

    with_subtypes = getattr(cfg, "targets", "any") == "subtypes"

    def to_example(study):
        image = preprocess.window_channels(study["image"], windows)
        y = _targets(study, with_masks, with_subtypes)
        if with_keys:
            return (
                image,
                y,
                {
                    "study_key": study["study_key"],
                    "label": study["label"],
                    "subtype_labels": study_subtype_labels(study),
                    "split": split_of(study["study_key"], cfg),
                },
            )
        return image, y

    ds = ds.map(to_example, num_parallel_calls=AUTOTUNE)
    shapes, pads = _padding(cfg, with_masks, with_subtypes, with_keys)
    ds = ds.padded_batch(batch_size, padded_shapes=shapes, padding_values=pads)
    if fill_batches:
        ds = _filled(ds, batch_size, pads)
    return ds.prefetch(AUTOTUNE)


def _padding(cfg, with_masks, with_subtypes, with_keys):
    """(padded shapes, padding values) of eval_dataset's elements."""
    n = cfg.input_size
    y_shapes = {OUTPUT_SLICE: [None]}
    y_pad = {OUTPUT_SLICE: float(IGNORE_LABEL)}
    if with_subtypes:
        y_shapes[OUTPUT_SUBTYPES] = [None, len(SUBTYPES)]
        y_pad[OUTPUT_SUBTYPES] = float(IGNORE_LABEL)
    if with_masks:
        for name in MASK_OUTPUTS:
            y_shapes[name] = [None, n, n, 1 + len(SUBTYPES) if with_subtypes else 1]
            y_pad[name] = float(IGNORE_LABEL)
    shapes = ([None, n, n, cfg.input_channels], y_shapes)
    pads = (PAD_VALUE, y_pad)
    if with_keys:
        shapes += ({"study_key": [], "label": [], "subtype_labels": [len(SUBTYPES)], "split": []},)
        pads += (
            {
                "study_key": "",
                "label": tf.constant(-1, tf.int64),
                "subtype_labels": tf.constant(-1, tf.int64),
                "split": -1,
            },
        )
    return shapes, pads


def _filled(ds, batch_size, pads):
    """The last batch filled up to `batch_size` with all-padding studies; auto-sharding off
    (eval_dataset's `fill_batches`)."""

    def fill(*parts):
        def grow(t, value):
            missing = batch_size - tf.shape(t)[0]
            paddings = tf.concat([[[0, missing]], tf.zeros([tf.rank(t) - 1, 2], tf.int32)], axis=0)
            grown = tf.pad(t, paddings, constant_values=tf.cast(value, t.dtype))
            return tf.ensure_shape(grown, [batch_size] + t.shape.as_list()[1:])

        return tf.nest.map_structure(grow, parts, pads)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.map(fill).with_options(options)


def count_studies(files, cfg):
    """Studies per split, reading each shard once: {"train", "calibration", "validation":
    int, "train_positive": positives among the training studies, "calibration_positive",
    "train_negative_windows": positive training studies with `cfg.crop_slices` consecutive
    slices none of which is positive, "rendered_windows": sorted list of the (centre, width)
    display windows the records' images were rendered with ([] for HU as scanned)}.

    Raises:
      UserError naming the shard when one is corrupt or truncated (TF's own DataLossError
      does not say which file), so a bad shard stops training before it starts instead of
      silently shortening an epoch.
    """
    counts = dict.fromkeys((*SPLITS, "train_positive", "calibration_positive"), 0)
    counts["train_negative_windows"], windows = 0, set()

    def summary(st):
        negative = tf.reduce_any(negative_starts(st["slice_labels"], cfg.crop_slices))
        return split_of(st["study_key"], cfg), st["label"], negative, st["rendered_window"]

    for path in files:
        ds = read_studies([path]).map(summary)
        try:
            for split, label, negative, window in ds.as_numpy_iterator():
                name = SPLITS[split]
                counts[name] += 1
                if name != "validation":
                    counts[f"{name}_positive"] += int(label > 0)
                if name == "train" and label > 0:
                    counts["train_negative_windows"] += int(negative)
                if window[1] > 0:
                    windows.add((float(window[0]), float(window[1])))
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
            reason = str(err).split("[Op:")[0].split("}}")[-1].strip()
            raise UserError(f"{path}: corrupt or truncated TFRecord shard ({reason})") from None
    counts["rendered_windows"] = sorted(windows)
    return counts


def balance_of(counts) -> str:
    """How training balances its batches: "studies" when the training split has positive
    and negative studies, "slices" when every training study is positive but some hold
    a window of negative slices (`count_studies`). Raises UserError otherwise."""
    n_train, n_pos = counts["train"], counts["train_positive"]
    if n_train and 0 < n_pos < n_train:
        return "studies"
    if n_train and n_pos == n_train and counts["train_negative_windows"]:
        return "slices"
    raise UserError(
        f"training needs positive and negative examples: studies of both labels, or positive "
        f"studies whose slice labels leave windows of negative slices (train={n_train}, "
        f"positives={n_pos}, positives with a negative window="
        f"{counts['train_negative_windows']})"
    )


def rendered_windows(files) -> list:
    """Sorted distinct (centre, width) display windows the records' images were rendered
    with ([] when every record holds HU as scanned). Reads only that feature."""
    spec = {"rendered_window": records.FEATURES["rendered_window"]}
    ds = tf.data.TFRecordDataset(list(files), compression_type=records.COMPRESSION).map(
        lambda x: tf.io.parse_single_example(x, spec)["rendered_window"]
    )
    return sorted({(float(c), float(w)) for c, w in ds.as_numpy_iterator() if w > 0})
