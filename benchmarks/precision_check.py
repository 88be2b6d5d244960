"""Mixed-precision check: each phase's gradients under mixed_bfloat16 / mixed_float16 against float32's.

For a preset, every phase's training loss is differentiated once in float32 and once under each mixed policy, with
the same weights, batch and noise seed, exactly as ``CVAEGAN.train_step`` does it (replica scaling, then the
loss-scale optimizer's ``scale_loss``; the gradients are unscaled here). Printed per phase and policy: the loss,
whether all gradients are finite (a float16 overflow makes the loss-scale optimizer skip the update), the cosine
with the float32 gradient, the norm ratio, the share of gradient entries flushed to zero, and the loss scale.

    python benchmarks/precision_check.py tiny        # also: compact, physics

Findings (2026-11-25, CPU): with Keras's default initial loss scale (2**15) every float16 phase overflowed at
initialisation (compact cvae loss ~32, critic/gan ~700); with ``ebsd_keras.training.phases.initial_loss_scale``
(2**10 / largest loss weight) all are finite with cosine >= 0.997 (tiny, compact). mixed_bfloat16: cosine 0.89-0.997
on tiny/compact (8-bit mantissa). The physics decoder gives cosine -0.06 (cvae, bfloat16) and 0.35-0.42 (gan), so
``TrainConfig`` refuses mixed precision for it.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
for p in (os.path.dirname(HERE), HERE):
    if p not in sys.path:
        sys.path.insert(0, p)


def gradient(preset: str, policy: str, phase: str, batch: dict, weights=None):
    """(model, flat unscaled gradient, loss, loss scale) of one phase's training loss under ``policy``."""
    import tensorflow as tf
    from training_throughput import _compiled_model

    m = _compiled_model(preset, phase, False, policy, 1, 0)
    if weights is not None:
        m.set_weights(weights)
    x, attrs = m.split_batch(batch)
    opt = m.critic_optimizer if phase == "critic" else m.encoder_decoder_optimizer
    with tf.GradientTape() as tape:
        if phase == "cvae":
            t = m._cvae_terms(x, attrs, True)
            loss, var = t["kl_weighted"] + t["bce_weighted"], m.generator_variables
        elif phase == "critic":
            t = m._critic_terms(x, attrs, m._prior_samples(attrs, False), True)
            loss, var = t["critic_loss"], m.critic.trainable_variables
        else:
            t = m._generator_terms(x, attrs, True)
            loss, var = t["loss"], m.generator_variables
        scaled = m._gradient_loss(loss, opt)
    grads = tape.gradient(scaled, var)
    scale = float(opt.dynamic_scale.numpy()) if hasattr(opt, "dynamic_scale") else 1.0
    flat = np.concatenate([np.ravel(np.asarray(tf.cast(g, tf.float32))) for g in grads]) / scale
    return m, flat, float(loss), scale


def main(argv=None) -> int:
    from training_throughput import _synthetic_batch

    from ebsd_keras.models.presets import get_preset

    argv = sys.argv[1:] if argv is None else argv
    preset = argv[0] if argv else "tiny"
    batch = _synthetic_batch(16, get_preset(preset).image_shape, 0)
    for phase in ("cvae", "critic", "gan"):
        m32, g32, l32, _ = gradient(preset, "float32", phase, batch)
        weights = m32.get_weights()
        for policy in ("mixed_bfloat16", "mixed_float16"):
            _, g, loss, scale = gradient(preset, policy, phase, batch, weights)
            finite = bool(np.isfinite(g).all())
            cos = float(g @ g32 / (np.linalg.norm(g) * np.linalg.norm(g32))) if finite else float("nan")
            flushed = float(np.mean((g == 0) & (g32 != 0)))
            print(f"{preset} {phase:6} {policy:15} loss {loss:.5g} (float32 {l32:.5g})  finite {finite}  "
                  f"cosine {cos:.4f}  norm ratio {np.linalg.norm(g) / np.linalg.norm(g32):.3f}  "
                  f"flushed to 0 {flushed:.3%}  loss scale {scale:g}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
