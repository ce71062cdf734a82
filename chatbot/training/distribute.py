"""``training.distribute``: one process (``none``), every local device (``mirrored``), or several
processes and machines named by ``TF_CONFIG`` (``multi-worker``), through ``tf.distribute``.

Under ``multi-worker`` every worker runs the same command; the chief (task ``chief``, else worker
0) owns the work directory and the bundle, the others keep their checkpoints and logs in a private
temporary directory (the TF multi-worker recipe: only the chief's copy counts, and several writers
of one file would clobber it). All of them restore the chief's checkpoint (``backup``), so they
resume the same step with the same weights; the work directory must therefore be on storage
every worker can read (docs/distributed-training.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from chatbot.errors import TrainingError

DOCS = "docs/distributed-training.md"


@dataclass
class Cluster:
    """This process' place in the training: its strategy (None: plain Keras) and its role."""

    kind: str = "none"
    strategy: object = None  # a tf.distribute.Strategy
    task: str = "worker"
    index: int = 0
    workers: int = 1
    chief: bool = True
    private: Path | None = field(default=None, repr=False)  # a non-chief's work directory

    @property
    def multi_worker(self) -> bool:
        return self.kind == "multi-worker"

    def scope(self):
        """Where the model and its optimizer must be built, so that their variables are mirrored."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def barrier(self) -> None:
        """Wait until every worker gets here: a one-number all-reduce, the collective the
        training itself uses (so a worker that never comes fails it the same way)."""
        if self.multi_worker:
            import tensorflow as tf

            try:
                self.strategy.reduce("SUM", self.strategy.run(lambda: tf.constant(1.0)), axis=None)
            except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError):
                raise TrainingError(f"{self.task} {self.index}: another worker of the cluster stopped "
                                    "(see its own output)") from None

    def close(self) -> None:
        if self.private is not None:
            shutil.rmtree(self.private, ignore_errors=True)


def start(kind: str) -> Cluster:
    """The strategy for ``training.distribute``. Must run before TensorFlow runs anything:
    ``MultiWorkerMirroredStrategy`` configures the runtime, and waits for every worker of
    ``TF_CONFIG`` to come up."""
    if kind == "none":
        return Cluster()
    if kind not in ("mirrored", "multi-worker"):
        raise TrainingError(f"unknown training.distribute {kind!r}: none, mirrored or multi-worker")
    if kind == "multi-worker":
        task, index, workers, chief = read_tf_config(os.environ.get("TF_CONFIG"))  # before the slow import
    import tensorflow as tf

    if kind == "mirrored":
        return Cluster(kind, tf.distribute.MirroredStrategy())  # every local GPU, else the CPU
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:  # "Collective ops must be configured at program startup"
        raise TrainingError(f"cannot start multi-worker training: {exc}") from None
    private = None if chief else Path(tempfile.mkdtemp(prefix=f"chatbot-{task}{index}-"))
    return Cluster(kind, strategy, task, index, workers, chief, private)


def read_tf_config(raw: str | None) -> tuple[str, int, int, bool]:
    """(task type, index, number of training tasks, whether it is the chief) from ``TF_CONFIG``;
    ``TrainingError`` in one line for anything missing or inconsistent."""
    if not raw:
        raise TrainingError("--distribute multi-worker needs TF_CONFIG (the cluster and this task), "
                            f"see {DOCS}")
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], task["index"]
        members = cluster[kind]
    except (ValueError, TypeError, KeyError) as exc:
        raise TrainingError(f"TF_CONFIG is not a cluster and a task ({type(exc).__name__}: {exc}); "
                            f'expected {{"cluster": {{"worker": ["host:port", ...]}}, '
                            f'"task": {{"type": "worker", "index": 0}}}}') from None
    if kind not in ("chief", "worker"):
        raise TrainingError(f"TF_CONFIG task type {kind!r}: multi-worker training has chief and worker tasks only")
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise TrainingError(f"TF_CONFIG task {kind} {index!r} is not in the cluster's {kind} list")
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    chief = kind == "chief" or (kind == "worker" and index == 0 and not cluster.get("chief"))
    return kind, index, workers, chief


def shard_by_data(dataset):
    """Split each global batch between the workers. The default policy (FILE) looks for the
    files a dataset reads; ours are built in memory, so it would fall back to DATA with a warning
    on every run."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def adapt(model, cluster: Cluster) -> None:
    """Work around Keras 3 under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585,
    tensorflow/tensorflow#72388), on this model only:

    - at ``fit`` Keras builds the optimizer and metrics from a batch averaged over every replica,
      which fails across workers and for padded batches of different lengths: ``build`` made
      them from the data's shapes, so that step is skipped;
    - it averages each step's metrics over replicas along axis 0, which scalars lack: give them
      that axis (the mean over workers is then the usual scalar). With one replica (a cluster of
      one worker) it takes the one value as it is, and the axis stayed: TensorBoard refused the
      step's loss of shape (1,) and the run failed at its first step.
    """
    if cluster.strategy is None:
        return
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    if cluster.multi_worker and cluster.strategy.num_replicas_in_sync > 1:
        import tensorflow as tf

        def with_axis(step):
            return lambda data: tf.nest.map_structure(lambda value: tf.reshape(value, [1]), step(data))

        model.train_step, model.test_step = with_axis(model.train_step), with_axis(model.test_step)


def share_backup(cluster: Cluster, shared_work: Path) -> None:
    """A non-chief worker starts from the chief's checkpoint (``backup``, copied into its
    private directory, where it then writes its own), so that a restarted cluster resumes one
    epoch with one set of weights. Call after ``barrier``: the chief has then set up its work
    directory (restored it, or cleared it for a fresh run)."""
    if cluster.private is None:
        return
    backup = shared_work / "backup"
    if backup.is_dir():
        shutil.copytree(backup, cluster.private / "backup", dirs_exist_ok=True)
