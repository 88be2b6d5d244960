"""Train one configuration exactly as a search trial, with another training seed, and keep the model.

Answers "is the search's best configuration better than the default beyond seed-to-seed noise?" (every trial of a
search uses the same seed), and saves ``model.keras`` for ``ebsd-keras evaluate``.

    PYTHONPATH=. python tuning/rescore.py tuning/small.toml --data DIR --values OUT/best/hyperparameters.json \
        --seed 1 -o runs/rescore/best-s1
    PYTHONPATH=. python tuning/rescore.py tuning/small.toml --data DIR --values default --seed 1 \
        -o runs/rescore/default-s1
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("space", help="the search's TOML space (its [trial] budget and [objective])")
    p.add_argument("--data", required=True, help="TFRecord dataset")
    p.add_argument("--values", required=True, help="best/hyperparameters.json of a search, or 'default'")
    p.add_argument("--seed", type=int, required=True, help="training seed")
    p.add_argument("-o", "--output", type=Path, required=True)
    a = p.parse_args()

    import keras_tuner

    from ebsd_keras.tuning.hypermodel import CVAEGANHyperModel
    from ebsd_keras.tuning.space import SearchSpace, default_values, load_search_space

    space = load_search_space(a.space)
    values = default_values(space.preset, space.trial)
    if a.values != "default":
        chosen = json.loads(Path(a.values).read_text())["hyperparameters"]
        values.update({k: v for k, v in chosen.items() if not k.startswith("tuner/")})
    fixed = {k: {"type": "fixed", "value": v} for k, v in values.items()}
    space = SearchSpace(**{**space.__dict__, "seed": a.seed, "hyperparameters": fixed})
    hypermodel = CVAEGANHyperModel(space, a.data, verbose=2)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    history = hypermodel.fit(hp, model).history
    scores = history["val_fidelity"]
    best = min(range(len(scores)), key=lambda i: scores[i] if math.isfinite(scores[i]) else math.inf)
    metrics = {k: float(v[best]) for k, v in history.items() if k.startswith("val_")}
    a.output.mkdir(parents=True, exist_ok=True)
    model.save(a.output / "model.keras")
    result = {"values": values, "seed": a.seed, "metrics": metrics}
    (a.output / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result["metrics"], sort_keys=True))


if __name__ == "__main__":
    main()
