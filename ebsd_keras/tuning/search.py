"""Running a search: tuner construction, resumable and distributed search, summary table, best-config export.

Files a search writes in its output directory ``OUT``
-----------------------------------------------------
``OUT/<project>/``          KerasTuner's project (oracle state, one ``trial_<id>/`` per trial with its checkpoint);
                            rerunning the same command reloads it and continues (``overwrite=False``)
``OUT/space.json``          the search space the project was started with (a rerun with a different space is refused)
``OUT/tensorboard/<id>/``   TensorBoard scalars of each trial's gan phase, with its HParams
``OUT/trials.csv``, ``OUT/trials.md``
                            one row per trial: id, status, objective and its parts, hyper-parameter values
``OUT/best/``               ``hyperparameters.json`` and ``cvae.json``, ``critic.json``, ``gan.json``: TrainConfig files
                            of the best trial for ``ebsd-keras train --config`` (run in that order)
``OUT/baseline/``           ``metrics.json``: the package defaults trained on the same budget and measured the same
                            way (--baseline), and their ``cvae.json``, ``critic.json``, ``gan.json``
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.tuning.space import SearchSpace, default_values

__all__ = ["TUNERS", "make_tuner", "run_search", "trial_rows", "write_summary", "export_best", "run_baseline",
           "is_worker", "is_chief", "check_same_space", "check_distributed_env"]  # fmt: skip

logger = logging.getLogger(__name__)

TUNERS = ("random", "bayesian", "hyperband")
METRIC_COLUMNS = ("val_fidelity", "val_gen_bce_gap", "val_gen_disorientation_deg", "val_real_disorientation_deg")


def is_chief() -> bool:
    """This process is the chief (oracle server) of a distributed search."""
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" in os.environ.get("KERASTUNER_TUNER_ID", "")


def is_worker() -> bool:
    """This process is a worker of a distributed search (asks the chief for trials)."""
    return "KERASTUNER_ORACLE_IP" in os.environ and not is_chief()


def check_distributed_env() -> None:
    """The three KERASTUNER_* variables must be set together (KerasTuner would fail later, less clearly)."""
    names = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
    present = [n for n in names if os.environ.get(n)]
    if present and len(present) != len(names):
        missing = [n for n in names if n not in present]
        raise EBSDInputError(f"distributed tuning needs all of {', '.join(names)}; missing {', '.join(missing)}",
                             None, missing[0])  # fmt: skip
    port = os.environ.get("KERASTUNER_ORACLE_PORT")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise EBSDInputError(f"must be a TCP port number, got {port!r}", None, "KERASTUNER_ORACLE_PORT")


def make_tuner(space: SearchSpace, hypermodel, kind: str, directory, project_name: str, overwrite: bool = False,
               max_trials: int | None = None):  # fmt: skip
    """A KerasTuner tuner (``kind`` in :data:`TUNERS`) minimising ``val_fidelity``, seeded with ``space.seed``."""
    import keras_tuner

    from ebsd_keras.tuning.hypermodel import OBJECTIVE

    if kind not in TUNERS:
        raise ValueError(f"tuner must be one of {TUNERS}, got {kind!r}")
    common = dict(
        hypermodel=hypermodel,
        objective=OBJECTIVE,
        seed=space.seed + 1,  # KerasTuner's oracle takes seed 0 as "no seed" (`seed or random.randint(...)`)
        executions_per_trial=space.executions_per_trial,
        directory=str(directory),
        project_name=project_name,
        overwrite=overwrite,
        max_consecutive_failed_trials=3,
    )
    trials = int(max_trials or space.max_trials)
    if kind == "random":
        return keras_tuner.RandomSearch(max_trials=trials, **common)
    if kind == "bayesian":
        b = space.bayesian
        return keras_tuner.BayesianOptimization(
            max_trials=trials, num_initial_points=b.get("num_initial_points"), alpha=b.get("alpha", 1e-4),
            beta=b.get("beta", 2.6), **common,
        )  # fmt: skip
    h = space.hyperband
    return keras_tuner.Hyperband(
        max_epochs=h.get("max_epochs", max(2, int(space.trial["gan_epochs"]))), factor=h.get("factor", 3),
        hyperband_iterations=h.get("hyperband_iterations", 1), **common,
    )  # fmt: skip


def check_same_space(space: SearchSpace, out: Path, overwrite: bool) -> None:
    """Record the space on the first run; a rerun (resume) must use the same one."""
    from ebsd_keras._atomic import atomic_path

    path = out / "space.json"
    current = space.to_dict()
    if path.is_file() and not overwrite:
        saved = json.loads(path.read_text())
        if saved != current:
            changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise EBSDInputError(
                f"this search was started with a different space ({', '.join(changed)} differ); rerun with the "
                "same file to continue it, or use --overwrite / another output directory",
                space.path,
                changed[0],
            )
        return
    if is_worker():
        return  # the chief records it
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


def run_search(space: SearchSpace, data_dir, output_dir, kind: str = "random", project_name: str | None = None,
               overwrite: bool = False, max_trials: int | None = None, verbose=0):  # fmt: skip
    """Run (or continue) a search; returns the tuner.

    In a distributed search (KERASTUNER_* set) the chief serves trials until all are done and workers train them.
    """
    import keras

    check_distributed_env()
    out = Path(output_dir)
    check_same_space(space, out, overwrite)
    from ebsd_keras.tuning.hypermodel import CVAEGANHyperModel

    hypermodel = CVAEGANHyperModel(space, data_dir, verbose=verbose)
    tuner = make_tuner(space, hypermodel, kind, out, project_name or f"{space.name}-{kind}", overwrite, max_trials)
    tensorboard = keras.callbacks.TensorBoard(log_dir=str(out / "tensorboard"), write_graph=False, profile_batch=0)
    tuner.search(callbacks=[tensorboard], verbose=verbose)
    return tuner


# ----------------------------------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------------------------------
def _metric(trial, name):
    m = trial.metrics
    if not m.exists(name):
        return None
    v = m.get_best_value(name) if name == "val_fidelity" else m.get_last_value(name)
    return None if v is None else float(v)


def trial_rows(tuner) -> list[dict]:
    """One dict per trial (completed ones first, by objective): trial_id, status, metrics, hyper-parameter values.

    The part metrics are those of the trial's last gan epoch; val_fidelity is its best epoch (what the tuner ranks).
    """
    rows = []
    for trial in tuner.oracle.trials.values():
        row = {"trial_id": trial.trial_id, "status": str(trial.status).split(".")[-1]}
        row["score"] = None if trial.score is None else float(trial.score)
        for name in METRIC_COLUMNS:
            row[name] = _metric(trial, name)
        row.update(trial.hyperparameters.values)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["score"] is None, r["score"] if r["score"] is not None else 0.0,
                                       r["trial_id"]))  # fmt: skip


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v == 0 or (1e-3 <= abs(v) < 1e5):
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def _columns(rows) -> list[str]:
    cols = ["trial_id", "status", *METRIC_COLUMNS]
    for r in rows:
        cols += [k for k in r if k not in cols and k != "score"]
    return cols


def markdown_table(rows) -> str:
    """The rows as a GitHub markdown table."""
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_summary(rows, output_dir) -> dict:
    """Write ``trials.csv`` and ``trials.md`` (atomically); return their paths."""
    from ebsd_keras._atomic import atomic_path

    out = Path(output_dir)
    cols = _columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    paths = {"csv": out / "trials.csv", "md": out / "trials.md"}
    with atomic_path(paths["csv"]) as tmp:
        Path(tmp).write_text(buf.getvalue())
    with atomic_path(paths["md"]) as tmp:
        Path(tmp).write_text(markdown_table(rows))
    return paths


def export_best(tuner, space: SearchSpace, data_dir, output_dir) -> dict | None:
    """Write the best trial's hyper-parameters and its three TrainConfig files to ``output_dir/best``.

    The configs reproduce the trial (same budget, seed, data); their run directories are ``output_dir/best/train/
    {cvae,critic,gan}`` (override with ``-o`` and ``--init-from``; raise ``--epochs`` for a real training).

    Returns
    -------
    dict or None
        ``{"trial_id", "score", "hyperparameters", "configs": {phase: path}}``; None when no trial completed.
    """
    from ebsd_keras._atomic import atomic_path

    best = [t for t in tuner.oracle.get_best_trials(1) if t.score is not None]
    if not best:
        return None
    trial = best[0]
    values = dict(trial.hyperparameters.values)
    best_dir = Path(output_dir) / "best"
    best_dir.mkdir(parents=True, exist_ok=True)
    paths = _export_configs(space, values, data_dir, best_dir)
    info = {"trial_id": trial.trial_id, "score": float(trial.score), "hyperparameters": values, "configs": paths}
    with atomic_path(best_dir / "hyperparameters.json") as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def _export_configs(space: SearchSpace, values: dict, data_dir, directory: Path) -> dict:
    """``directory/{cvae,critic,gan}.json``: the TrainConfigs of ``values`` (runs in ``directory/train/<phase>``)."""
    from ebsd_keras.tuning.hypermodel import trial_train_configs

    configs = trial_train_configs(space, values, data_dir, directory / "train", gan_epochs=values.get("tuner/epochs"))
    paths = {}
    for phase, cfg in configs.items():
        paths[phase] = str(directory / f"{phase}.json")
        cfg.save(paths[phase])
    return paths


def run_baseline(space: SearchSpace, data_dir, output_dir, verbose=0) -> dict:
    """Train the package defaults (:func:`default_values`) on the search's budget and measure the objective.

    Resumable in the coarse sense: a finished baseline (``baseline/metrics.json``) of the same space (budget,
    objective) is read back, not retrained.

    Returns
    -------
    dict
        ``{"values": ..., "metrics": {val_fidelity, val_gen_bce_gap, ...}}`` (the best gan epoch, as for trials).
    """
    import keras_tuner

    from ebsd_keras._atomic import atomic_path
    from ebsd_keras.tuning.hypermodel import CVAEGANHyperModel

    path = Path(output_dir) / "baseline" / "metrics.json"
    values = default_values(space.preset, space.trial)
    path.parent.mkdir(parents=True, exist_ok=True)
    _export_configs(space, values, data_dir, path.parent)  # baseline/{cvae,critic,gan}.json: train it in full
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("space") == space.to_dict():  # measured on this very budget and objective
            return saved
    fixed = SearchSpace(**{**space.__dict__, "hyperparameters": {k: {"type": "fixed", "value": v}
                                                                 for k, v in values.items()}})  # fmt: skip
    hypermodel = CVAEGANHyperModel(fixed, data_dir, verbose=verbose)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    result = hypermodel.fit(hp, model)
    hist = result.history if hasattr(result, "history") else {k: [v] for k, v in result.items()}
    scores = hist["val_fidelity"]
    best = min(range(len(scores)), key=lambda i: scores[i] if math.isfinite(scores[i]) else math.inf)
    metrics = {k: float(hist[k][best]) for k in METRIC_COLUMNS if k in hist}
    info = {"values": values, "metrics": metrics, "epoch": best, "space": space.to_dict()}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info
