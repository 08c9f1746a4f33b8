"""Names and sentinel values shared across the package: one owner for each.

Model outputs (Keras model, dict keys):
  OUTPUT_SLICE   "slice_probability"   float32 [B, S]
  MASK_OUTPUTS   "mask_1".."mask_3"    float32 [B, S, N, N, 1] (auxiliary heads)

Serving outputs (SavedModel signatures, one study per request):
  SERVING_OUTPUTS  slice_probabilities float32 [S], masks float32 [S, N, N],
                   lesion_mask bool [S, N, N] (masks >= the mask threshold on slices at or
                   above the slice threshold, opened 3 x 3 with mask_opening:
                   radnet_tf.decision.lesion_mask),
                   ct_positive bool [], ct_score float32 [], longest_positive_run int32 [],
                   min_run_applied int32 [] (the rule's K after shortening to S)

Hemorrhage subtypes, in this order wherever a per-subtype array appears (records,
label tables): SUBTYPES = EDH (epidural), IPH (intraparenchymal), IVH (intraventricular),
SAH (subarachnoid), SDH (subdural).

Sentinels:
  PAD_VALUE     -1.0   fills padding slices of the model input (real slices are in [0, 1])
  IGNORE_LABEL  -1     a slice label or mask value that losses and metrics ignore
  AIR_HU        -1024  Hounsfield units of air: padding and the area outside the scan
"""

OUTPUT_SLICE = "slice_probability"
OUTPUT_SUBTYPES = "subtype_probability"  # float32 [B, S, 5], models with targets: subtypes
MASK_OUTPUTS = ("mask_1", "mask_2", "mask_3")

SLICE_PROBABILITIES = "slice_probabilities"
MASKS = "masks"
LESION_MASK = "lesion_mask"  # bool [S, N, N]
CT_POSITIVE = "ct_positive"
CT_SCORE = "ct_score"
LONGEST_POSITIVE_RUN = "longest_positive_run"
MIN_RUN_APPLIED = "min_run_applied"
SUBTYPE_PROBABILITIES = "subtype_probabilities"  # [S, 5]   (subtype models only)
CT_SUBTYPES = "ct_subtypes"  # bool [5]
CT_SUBTYPE_SCORES = "ct_subtype_scores"  # float32 [5]
SUBTYPE_MASKS = "subtype_masks"  # float32 [S, N, N, 5], mean of the aux heads' class channels
SUBTYPE_LESION_MASKS = (
    "subtype_lesion_masks"  # bool [S, N, N, 5], each gated by its subtype's slice verdict
)
SERVING_OUTPUTS = (
    SLICE_PROBABILITIES,
    MASKS,
    LESION_MASK,
    CT_POSITIVE,
    CT_SCORE,
    LONGEST_POSITIVE_RUN,
    MIN_RUN_APPLIED,
)
# The default mask threshold (Config.mask_threshold; exports from before it was exported):
# a mask pixel on a positive slice counts as hemorrhage at or above it. Trained models
# usually carry a calibrated one (Config.calibrate_mask_threshold).
MASK_THRESHOLD = 0.5

SUBTYPES = ("EDH", "IPH", "IVH", "SAH", "SDH")

PAD_VALUE = -1.0
IGNORE_LABEL = -1
AIR_HU = -1024
