"""Mixed precision in training: loss scaling that fits the phases' loss weights (no skipped float16 updates)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ebsd_keras.models.cvaegan import CVAEGAN
from ebsd_keras.training import PHASE_DEFAULTS, TrainConfig
from ebsd_keras.training.phases import compile_model, initial_loss_scale


def test_initial_loss_scale_follows_the_largest_weight():
    assert initial_loss_scale(PHASE_DEFAULTS["cvae"]["loss_weights"]) == 2.0**10  # Keras's 2**15 overflows
    assert initial_loss_scale(PHASE_DEFAULTS["critic"]["loss_weights"]) == 1.0  # orientation weight 1e4
    assert initial_loss_scale({"reconstruction": 4.0}) == 2.0**8
    assert initial_loss_scale({"orientation": 1e9}) == 1.0  # never below 1
    # the summed BCE (3,600 pixels) is the largest cvae term: 2**10 would overflow float16 (max 65504) at ~2,500 nats
    assert initial_loss_scale(PHASE_DEFAULTS["cvae"]["loss_weights"], bce_scale=3600.0) == 1.0
    assert initial_loss_scale({"reconstruction": 1.0}, bce_scale=4.0) == 2.0**8


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[:, 0] = np.abs(q[:, 0])
    return {"pattern": rng.random((n, 60, 60, 1), dtype=np.float32), "quaternion": q}


@pytest.mark.parametrize("policy", ["mixed_float16"])
def test_every_phase_under_mixed_precision_updates_its_networks(policy):
    """Every step updates (a float16 overflow makes the loss-scale optimizer skip the update); losses finite.

    With Keras's default initial scale the first updates of every phase were skipped (cvae 1-5, critic/gan ~13)."""
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = CVAEGAN(config="tiny", seed=0)
        data = tf.data.Dataset.from_tensors(_batch()).repeat()
        for phase in ("cvae", "gan"):  # gan = critic updates + generator updates
            cfg = TrainConfig(data_dir="-", output_dir="-", phase=phase, preset="tiny", n_critic=1,
                              mixed_precision=policy)  # fmt: skip
            compile_model(model, cfg.resolved())
            g0, c0 = int(model.encoder_decoder_optimizer.iterations), int(model.critic_optimizer.iterations)
            history = model.fit(data, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
            assert int(model.encoder_decoder_optimizer.iterations) - g0 == 2, phase
            assert int(model.critic_optimizer.iterations) - c0 == (2 if phase == "gan" else 0), phase
            assert all(np.isfinite(v[-1]) for v in history.history.values()), phase
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_is_refused_for_the_physics_decoder():
    """Its projection in 16-bit floats gives gradients unrelated to float32's (measured cosine 0.35 in gan)."""
    with pytest.raises(ValueError, match="mixed_precision.*physics"):
        TrainConfig(data_dir="-", output_dir="-", preset="physics", mixed_precision="mixed_bfloat16").validate()
    TrainConfig(data_dir="-", output_dir="-", preset="physics").validate()
