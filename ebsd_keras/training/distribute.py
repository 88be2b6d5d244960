"""Multi-worker data-parallel training: ``tf.distribute.MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``.

Every worker runs the same ``ebsd-keras train --distributed`` command with its own ``TF_CONFIG`` (the cluster's
addresses and this worker's role; README "Running on a cluster"). What this module settles:

* **The strategy** (:func:`make_strategy`): ``MultiWorkerMirroredStrategy`` reads ``TF_CONFIG``. It must exist
  before TensorFlow runs its first op in the process, so :func:`ebsd_keras.training.phases.train` creates it first.
  A malformed ``TF_CONFIG`` is refused with a message naming the field (:func:`read_tf_config`).
* **The batch** (``TrainConfig.batch_size``) is the *global* batch: each of the N replicas gets batch / N patterns
  per step, gradients are summed over replicas of losses divided by N (see :mod:`ebsd_keras.models.cvaegan`), so
  one step is the same update as a single-process step on the whole batch.
* **The input** is sharded by file (``tf.data.experimental.AutoShardPolicy.FILE``, set by
  :func:`ebsd_keras.data.pipeline.make_dataset`): each worker reads whole TFRecord shards, none twice.
  :func:`check_shards` refuses a training split with fewer shard files than workers (some workers would get no
  data; re-run ``ebsd-keras convert`` with a smaller ``--shard-size``).
* **Outputs** (:func:`worker_output_dir`): only the chief (task ``chief``, or ``worker`` 0 when the cluster has no
  ``chief``) writes the run's directory. The other workers must still execute the same saves (a save reads
  distributed variables, and every worker has to take part in the same collective steps), so they write to a
  scratch directory ``OUT/.worker-<type>-<index>`` that keeps their resume backup while the run is unfinished and
  is deleted when it ends.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ebsd_keras.errors import EBSDInputError

__all__ = [
    "WorkerRole",
    "read_tf_config",
    "make_strategy",
    "worker_role",
    "worker_output_dir",
    "check_shards",
    "SINGLE_PROCESS",
]

TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in the cluster.

    Attributes
    ----------
    task_type, task_id
        ``TF_CONFIG``'s task ("worker" or "chief", index); ("worker", 0) for a single process.
    num_workers
        Processes taking part (chief included); 1 for a single process.
    is_chief
        Whether this process writes the run's outputs.
    """

    task_type: str = "worker"
    task_id: int = 0
    num_workers: int = 1
    is_chief: bool = True


SINGLE_PROCESS = WorkerRole()


def read_tf_config(environ=None) -> dict:
    """The parsed and checked ``TF_CONFIG`` environment variable.

    Parameters
    ----------
    environ
        Mapping to read from (default ``os.environ``).

    Returns
    -------
    dict
        ``{"cluster": {"worker": [...], ...}, "task": {"type": ..., "index": ...}}``.

    Raises
    ------
    EBSDInputError
        Unset, not JSON, no ``worker``/``chief`` address list, a task type not in the cluster or an index out of
        range (path "TF_CONFIG", field naming the entry).
    """
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG)
    if not text:
        raise EBSDInputError(
            "not set: --distributed needs TF_CONFIG on every worker, e.g. "
            '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}',
            TF_CONFIG,
        )
    try:
        conf = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EBSDInputError(f"not valid JSON ({exc})", TF_CONFIG) from None
    if not isinstance(conf, dict):
        raise EBSDInputError("must be a JSON object with 'cluster' and 'task'", TF_CONFIG)
    cluster, task = conf.get("cluster"), conf.get("task")
    if not isinstance(cluster, dict) or not any(isinstance(cluster.get(k), list) for k in ("worker", "chief")):
        raise EBSDInputError("needs a list of 'worker' (and optionally 'chief') addresses", TF_CONFIG, "cluster")
    for kind, addresses in cluster.items():
        if kind in ("worker", "chief") and not (
            isinstance(addresses, list) and addresses and all(isinstance(a, str) and ":" in a for a in addresses)
        ):
            raise EBSDInputError(f"must be a non-empty list of 'host:port' strings, got {addresses!r}", TF_CONFIG,
                                 f"cluster.{kind}")  # fmt: skip
    if len(cluster.get("chief", [])) > 1:
        raise EBSDInputError("at most one chief", TF_CONFIG, "cluster.chief")
    if not isinstance(task, dict) or task.get("type") not in ("worker", "chief"):
        raise EBSDInputError("needs 'type' ('worker' or 'chief') and 'index'", TF_CONFIG, "task")
    index = task.get("index", 0)
    n = len(cluster.get(task["type"], []))
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
        raise EBSDInputError(f"index {index!r} is not one of the {n} {task['type']} address(es)", TF_CONFIG,
                             "task.index")  # fmt: skip
    return conf


def _role_from_tf_config(conf: dict) -> WorkerRole:
    cluster, task = conf["cluster"], conf["task"]
    kind, index = task["type"], int(task.get("index", 0))
    n = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    chief = kind == "chief" or (kind == "worker" and index == 0 and not cluster.get("chief"))
    return WorkerRole(task_type=kind, task_id=index, num_workers=n, is_chief=chief)


def make_strategy(environ=None):
    """A ``tf.distribute.MultiWorkerMirroredStrategy`` for the cluster in ``TF_CONFIG``, and this process's role.

    Call it before any other TensorFlow op of the process (the strategy sets up the collective-ops runtime); it
    blocks until every worker has started.

    Returns
    -------
    (strategy, WorkerRole)

    Raises
    ------
    EBSDInputError
        A missing or malformed ``TF_CONFIG`` (see :func:`read_tf_config`).
    """
    conf = read_tf_config(environ)
    import tensorflow as tf

    # The resolver re-reads TF_CONFIG; checked above so that a typo fails with a clear message, not a hang.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return strategy, _role_from_tf_config(conf)


def worker_role(strategy) -> WorkerRole:
    """The role of this process under ``strategy`` (:data:`SINGLE_PROCESS` for None or a one-process strategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if strategy is None or resolver is None or not resolver.cluster_spec().as_dict():
        return SINGLE_PROCESS
    spec = resolver.cluster_spec().as_dict()
    conf = {"cluster": spec, "task": {"type": resolver.task_type, "index": int(resolver.task_id or 0)}}
    return _role_from_tf_config(conf)


def worker_output_dir(output_dir: str, role: WorkerRole) -> str:
    """Where this process writes: ``output_dir`` on the chief, ``output_dir/.worker-<type>-<index>`` elsewhere."""
    if role.is_chief:
        return str(output_dir)
    return str(output_dir).rstrip("/") + f"/.worker-{role.task_type}-{role.task_id}"


def check_shards(n_files: int, role: WorkerRole, data_dir, split: str = "train") -> None:
    """Refuse file-sharded input that leaves a worker without data.

    Raises
    ------
    EBSDInputError
        ``n_files < role.num_workers`` (field ``shards``).
    """
    if role.num_workers > 1 and n_files < role.num_workers:
        raise EBSDInputError(
            f"the {split!r} split has {n_files} TFRecord shard file(s) but the cluster has {role.num_workers} "
            "workers; input is sharded by file, so every worker needs at least one (re-run `ebsd-keras convert` "
            "with a smaller --shard-size)",
            data_dir,
            "shards",
        )
