"""Client for a RADnet model behind TensorFlow Serving (REST or gRPC).

    python serving/client.py DICOM_DIR --rest http://localhost:8501 --model radnet
    radnet-client ...                     # the same, as an installed console script

The code lives in `radnet_tf.serving.client`; `--help` lists every flag.
"""

from radnet_tf.serving.client import main

if __name__ == "__main__":
    main()
