"""tf.distribute from the environment: which strategy, which task this process is.

`TF_CONFIG` is parsed once (`cluster_from_env`); the trainer asks the resulting
`ClusterInfo` for the strategy, whether this process is the chief (it writes the model dir
and exports) and where the other workers keep their files.

Strategy: MultiWorkerMirroredStrategy when TF_CONFIG names several workers,
MirroredStrategy on several local GPUs, else the default (one device).
"""

from __future__ import annotations

import dataclasses
import json
import os

from radnet_tf.errors import UserError


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """This process's place in a (possibly one-process) cluster.

    Attributes:
      workers: number of "worker" tasks in TF_CONFIG (0 without TF_CONFIG).
      has_chief: whether TF_CONFIG names a "chief" task.
      task_type: "worker" or "chief" ("worker" without TF_CONFIG).
      task_index: index of this task (0 without TF_CONFIG).
    """

    workers: int = 0
    has_chief: bool = False
    task_type: str = "worker"
    task_index: int = 0

    @property
    def multi_worker(self) -> bool:
        return self.workers + int(self.has_chief) > 1

    @property
    def is_chief(self) -> bool:
        """The chief writes the model dir and exports: the "chief" task, else worker 0."""
        if self.has_chief:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def task_name(self) -> str:
        return f"{self.task_type}-{self.task_index}"


def cluster_from_env(environ=None) -> ClusterInfo:
    """Parses TF_CONFIG (JSON) from `environ` (default os.environ).

    Raises:
      UserError: TF_CONFIG is not valid JSON or its task is malformed.
    """
    raw = (environ if environ is not None else os.environ).get("TF_CONFIG", "") or "{}"
    try:
        tf_config = json.loads(raw)
        cluster = tf_config.get("cluster", {})
        task = tf_config.get("task", {})
        return ClusterInfo(
            workers=len(cluster.get("worker", [])),
            has_chief=bool(cluster.get("chief")),
            task_type=str(task.get("type", "worker")),
            task_index=int(task.get("index", 0)),
        )
    except (ValueError, AttributeError, TypeError) as err:
        raise UserError(f"TF_CONFIG is not a valid cluster description ({err})") from None


def select_strategy(cluster: ClusterInfo):
    """tf.distribute strategy for this cluster and the visible GPUs."""
    import tensorflow as tf

    if cluster.multi_worker:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def patch_multi_worker_build(model, strategy):
    """Lets `model.fit` run under MultiWorkerMirroredStrategy in Keras 3.15.

    Before training, Keras' TF trainer builds losses and metrics symbolically from the
    first batch, which it gets by `strategy.reduce("MEAN", batch, axis=None)`. Under
    MultiWorkerMirroredStrategy that reduce raises "Attempt to convert a value (PerReplica)
    ... to a Tensor" (keras-team/keras#20585, open). Only the batch's shapes and dtypes are
    needed, so this builds from this worker's local replica value instead; every worker
    does the same, so no collective is left unmatched. No-op for other strategies.

    Logged metrics: after each step Keras reduces the step's scalar logs across workers
    with `strategy.reduce("MEAN", value, axis=0)`, which fails on a scalar ("Invalid
    reduction dimension 0"). The train and test steps here return each log as shape [1],
    so that reduce is the mean over workers and yields a scalar again.

    Private Keras members used: `Model._maybe_symbolic_build` and `Model._symbolic_build`
    (keras/src/backend/tensorflow/trainer.py, Keras 3.15); setup.py pins keras==3.15.*
    and tests/test_train.py checks they exist.
    """
    import tensorflow as tf
    from keras import tree

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model

    def local_value(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(local_value, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def with_leading_axis(step):
        def wrapped(data):
            return tree.map_structure(
                lambda v: tf.reshape(v, [1]) if v.shape.rank == 0 else v, step(data)
            )

        return wrapped

    model._maybe_symbolic_build = maybe_symbolic_build
    model.train_step = with_leading_axis(model.train_step)
    model.test_step = with_leading_axis(model.test_step)
    return model
