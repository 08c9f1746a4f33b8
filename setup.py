"""radnet-tf: RADnet brain-hemorrhage detection in head CT for TensorFlow/Keras 3."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "radnet_tf" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="radnet-tf",
    version=VERSION,
    description="RADnet (Recurrent Attention DenseNet) hemorrhage detection in head CT, "
    "TensorFlow/Keras 3: DICOM ingest, TFRecords, training, evaluation, TF Serving export.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    license="Apache-2.0",
    # One importable top-level package; `pipelines/` and `serving/` in the checkout are thin
    # entry scripts and the TF Serving kit, not installed packages.
    packages=find_packages(include=["radnet_tf", "radnet_tf.*"]),
    package_data={
        "radnet_tf": [
            "configs/*.yaml",
            "phantom/assets/*",
            "serving/builtin/card.json",
            "serving/builtin/model/*.pb",
            "serving/builtin/model/assets/*",
            "serving/builtin/model/variables/*",
            "serving/builtin/brain/card.json",
            "serving/builtin/brain/model/*.pb",
            "serving/builtin/brain/model/assets/*",
            "serving/builtin/brain/model/variables/*",
        ]
    },
    install_requires=[
        "tensorflow==2.21.*",
        "keras==3.15.*",
        "pydicom>=3,<4",
        "pylibjpeg>=2",
        "pylibjpeg-libjpeg>=2",
        "pylibjpeg-openjpeg>=2",
        "numpy>=1.26",
        "scipy>=1.11",
        "scikit-image>=0.22",
        "scikit-learn>=1.4",
        "pandas>=2.1",
        "matplotlib>=3.8",
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.66",
        "tensorboard==2.21.*",
        # The phantom's brain: the ICBM152 templates inside nilearn's wheel (read with nibabel).
        "nilearn>=0.10",
        "nibabel>=5",
    ],
    extras_require={
        "beam": ["apache-beam[tfrecord]>=2.60"],
        "serving": ["tensorflow-serving-api==2.21.*", "requests>=2.31"],
        "dicom-seg": ["highdicom>=0.22"],
        "nifti": ["nibabel>=5"],
        "dev": ["pytest>=8", "pytest-xdist>=3", "pyarrow>=14", "ruff>=0.6"],
    },
    entry_points={
        "console_scripts": [
            "radnet-train=radnet_tf.training.train:main",
            "radnet-predict=radnet_tf.serving.predict:main",
            "radnet-export=radnet_tf.serving.export:main",
            "radnet-evaluate=radnet_tf.evaluation.evaluate:main",
            "radnet-synth=radnet_tf.phantom.cli:main",
            "radnet-inspect=radnet_tf.io.inspect:main",
        ]
    },
)
