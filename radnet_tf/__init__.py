"""radnet-tf: RADnet (Recurrent Attention DenseNet) for hemorrhage detection in head CT.

The package reads a dependency chain you can see in the file tree:

    dicom_io -> preprocess -> records -> convert -> data -> model -> scoring
      -> train / evaluate / export / predict

with small shared pieces every layer may use: `contract` (names and sentinel values),
`config` (every default), `errors`, `atomic` (atomic writes) and `cli` (entry-point
conventions). `distribute` and `synth_cache` serve `train` only.

`build_model` is imported lazily so `import radnet_tf` stays cheap for DICOM-only users.
"""

__version__ = "0.3.0"


def build_model(config):
    """Builds a RADnet-family Keras model. See `radnet_tf.modeling.model.build_model`."""
    from radnet_tf.modeling.model import build_model as _build

    return _build(config)


def load_model(path, compile=True):
    """Loads a `.keras` file written by radnet-tf (registers its custom layers, losses and
    metrics first). Returns a keras.Model."""
    import keras

    import radnet_tf.modeling.losses  # noqa: F401
    import radnet_tf.modeling.model  # noqa: F401

    return keras.saving.load_model(path, compile=compile)
