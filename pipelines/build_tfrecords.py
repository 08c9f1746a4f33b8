"""DICOM / RSNA / CQ500 / NIfTI / image collections -> TFRecords, locally or on Apache Beam.

    python -m pipelines.build_tfrecords --dicom-root DIR --labels labels.csv --out OUT
    radnet-build-records ...              # the same, as an installed console script

The pipeline's code lives in `radnet_tf.datasets.build`; this script is its entry point in a
checkout (`--help` lists every flag).
"""

from radnet_tf.datasets.build import main

if __name__ == "__main__":
    main()
