"""Tiny saved models for the generation / export tests (built once per test module, in a few seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: A physics decoder with a small master pattern (npx 20) and voltage knots 15-25 kV; in-graph CLAHE.
PHYSICS_VOLTAGE = {"physics_npx": 20, "use_voltage": True, "physics_voltage_knots_kv": (15.0, 20.0, 25.0)}
#: The same, single-voltage (like the shipped ni20-physics model).
PHYSICS_SINGLE = {"physics_npx": 20}


def build_model(preset: str = "tiny", seed: int = 0, **overrides):
    """An untrained CVAEGAN (``preset`` with ``overrides``)."""
    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.models.presets import get_preset

    model = CVAEGAN(config=get_preset(preset, **overrides), seed=seed)
    if preset == "physics":
        # a texture with structure (the random init is nearly flat), different at each voltage knot
        layer = model.decoder.master_pattern
        side = 2 * layer.npx + 1
        yy, xx = np.mgrid[0:side, 0:side] / side
        layer.set_master_pattern(
            np.stack([0.5 + 0.4 * np.sin((9 + 3 * c) * xx + 5 * yy) * np.cos(7 * yy) for c in range(layer.channels)])
        )
    return model


def save_model(path, preset: str = "tiny", seed: int = 0, **overrides) -> Path:
    """:func:`build_model`, saved as ``.keras``."""
    model = build_model(preset, seed, **overrides)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


def random_quaternions(n: int, seed: int = 0) -> np.ndarray:
    """(n, 4) float32 unit quaternions, q0 >= 0."""
    q = np.random.default_rng(seed).normal(size=(n, 4))
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, :1] < 0, -q, q).astype(np.float32)
