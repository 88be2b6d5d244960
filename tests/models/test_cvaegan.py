"""CVAEGAN training phases, loss terms, Lipschitz constraint, n_critic, saving, seeding, XLA and MirroredStrategy.

Everything runs on the "tiny" preset with the voltage attribute, on synthetic dict batches shaped like the data
pipeline's. The MirroredStrategy check runs in a subprocess (logical devices must be configured before TensorFlow
initialises); it is started when this module's first test starts, so it overlaps the other tests.

To keep the module fast on 2 CPU cores, TensorFlow's graph optimiser (grappler) is switched off while these tests run
(it only rewrites graphs for speed and roughly doubles the cost of each first ``fit`` step of a tiny model); the
subprocess keeps the default, so a grappler-optimised training graph still runs. Several runs use an even smaller
variant of the "tiny" preset (fewer layers: shorter tracing and compilation).
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from ebsd_keras.losses import KLSchedule, LossWeights, kl_divergence
from ebsd_keras.models.cvaegan import CVAEGAN
from ebsd_keras.models.presets import get_preset

TINY = get_preset("tiny", use_voltage=True)
# "tiny" with fewer layers (quicker to trace and compile): for the single-term, seeding, XLA and MirroredStrategy
# runs. The phase, n_critic, saving and generation tests use "tiny" itself.
MICRO_OVERRIDES = dict(
    use_voltage=True,
    encoder_stem=(4,),
    encoder_blocks=((8, 2), (8, 2)),
    encoder_dense=(),
    decoder_dense=(16,),
    decoder_start=(15, 15, 4),
    decoder_blocks=((8, 2), (4, 2)),
    critic_stem=(4,),
    critic_blocks=((8, 2), (8, 2)),
    critic_dense=(16,),
    critic_score_dense=(),
    critic_quaternion_dense=(),
    critic_voltage_dense=(),
)
MICRO = get_preset("tiny", **MICRO_OVERRIDES)
BATCH = 8
SEED = int(os.environ.get("EBSD_KERAS_TEST_SEED", "0"))  # initial weights of the loss-term tests


def make_batch(n=BATCH, seed=0):
    """A pipeline-like batch: patterns in [0, 1], unit quaternions, voltages in kV, and extra keys to ignore."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:60, 0:60] / 60.0
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    bands = 0.5 + 0.4 * np.sin(8 * (xx + 0.3 * yy)[None] + phase)
    pattern = np.clip(bands + 0.05 * rng.normal(size=(n, 60, 60)), 0, 1)[..., None].astype("float32")
    q = rng.normal(size=(n, 4))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True) * np.sign(q[:, :1])).astype("float32")
    return {
        "pattern": pattern,
        "quaternion": q,
        "euler": rng.uniform(0, 1, size=(n, 3)).astype("float32"),
        "voltage_kv": rng.choice([10.0, 15.0, 20.0, 25.0, 30.0], size=n).astype("float32"),
        "source": np.array(["synthetic"] * n),
        "index": np.arange(n, dtype="int64"),
    }


def fixed_batch_dataset(seed=0):
    return tf.data.Dataset.from_tensors(make_batch(seed=seed)).repeat()


def dataset(n=2 * BATCH, seed=0):
    return tf.data.Dataset.from_tensor_slices(make_batch(n, seed)).batch(BATCH)


def adam(lr):
    return keras.optimizers.Adam(learning_rate=lr, beta_1=0.5)


def assert_finite_history(history, names):
    for name in names:
        assert name in history.history, f"{name} not logged; got {sorted(history.history)}"
    for name, values in history.history.items():
        assert np.isfinite(values).all(), f"{name} not finite: {values}"


# ------------------------------------------------------------------------------------------------------------------
# MirroredStrategy subprocess (started first, checked last)
# ------------------------------------------------------------------------------------------------------------------

MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from ebsd_keras.losses import LossWeights, orientation_loss
    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.models.presets import get_preset

    cfg = get_preset("tiny", **MICRO_OVERRIDES)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(16, 4)).astype("float32")
    data = {
        "pattern": rng.random((16, 60, 60, 1)).astype("float32"),
        "quaternion": q / np.linalg.norm(q, axis=1, keepdims=True),
        "voltage_kv": rng.choice([10.0, 20.0, 30.0], 16).astype("float32"),
    }
    ds = tf.data.Dataset.from_tensors(data).repeat()  # global batch 16: 8 per replica
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    out = {"replicas": strategy.num_replicas_in_sync}

    # 1. Loss scaling: one SGD step on a deterministic term (alpha3,o * orientation loss of the critic on real
    #    patterns) with 2 replicas x 8 samples must equal plain gradient descent on the mean over all 16 samples.
    lr, alpha = 0.05, 1.0
    keras.utils.set_random_seed(0)
    with strategy.scope():
        dist = CVAEGAN(config=cfg)
    before = [w.copy() for w in dist.critic.get_weights()]
    reference = CVAEGAN(config=cfg)
    reference.set_weights(dist.get_weights())
    with tf.GradientTape() as tape:
        pred = reference.critic(data["pattern"])["quaternion"]
        loss = alpha * tf.reduce_mean(orientation_loss(data["quaternion"], pred))
    variables = reference.critic.trainable_variables
    for v, g in zip(variables, tape.gradient(loss, variables), strict=True):
        if g is not None:  # the score and voltage heads do not enter this loss
            v.assign_sub(lr * g)
    with strategy.scope():
        dist.compile(
            phase="critic",
            critic_optimizer=keras.optimizers.SGD(lr),
            loss_weights=LossWeights.only("orientation", alpha),
            clip_value=1e3,
        )
    dist.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
    expected = reference.critic.get_weights()
    out["max_weight_change"] = max(float(np.abs(a - b).max()) for a, b in zip(expected, before, strict=True))
    after = dist.critic.get_weights()
    out["max_weight_difference"] = max(float(np.abs(a - b).max()) for a, b in zip(after, expected, strict=True))

    # 2. The full GAN phase (paper defaults: clipping) runs distributed.
    with strategy.scope():
        dist.compile(phase="gan", n_critic=1)  # (under a strategy the n_critic loop is unrolled: keep it short)
    hist = dist.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    out["gan_logs"] = {k: float(v[-1]) for k, v in hist.history.items()}
    out["critic_iterations"] = int(dist.critic_optimizer.iterations.numpy())
    out["generator_iterations"] = int(dist.encoder_decoder_optimizer.iterations.numpy())
    # clipping applies to D(x): the trunk and the score head (Critic.lipschitz_variables)
    out["max_abs_critic_weight"] = max(float(np.abs(v.numpy()).max()) for v in dist.critic.lipschitz_variables)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module", autouse=True)
def mirrored_process(tmp_path_factory):
    """Start the MirroredStrategy run in the background; kill it (by pid) if the module ends early."""
    log = tmp_path_factory.mktemp("mirrored") / "out.txt"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "w") as fh:
        script = f"MICRO_OVERRIDES = {MICRO_OVERRIDES!r}\n{MIRRORED_SCRIPT}"
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=fh, stderr=subprocess.STDOUT, env=env)
    yield proc, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def shared_model():
    """An untrained model for the tests that neither train nor compile successfully."""
    return CVAEGAN(config=TINY)


@pytest.fixture(scope="module", autouse=True)
def without_grappler():
    """Switch grappler off for this module's in-process fits, then restore the previous setting."""
    before = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})


# ------------------------------------------------------------------------------------------------------------------
# phases
# ------------------------------------------------------------------------------------------------------------------


def test_cvae_phase_objective_is_summed_bce_and_validation_is_deterministic():
    keras.utils.set_random_seed(SEED)
    model = CVAEGAN(config=TINY)
    model.compile(phase="cvae", loss_weights=LossWeights(kl=2.0))
    history = model.fit(dataset(), validation_data=dataset(seed=1), epochs=2, verbose=0)
    assert_finite_history(
        history,
        ["loss", "kl", "kl_coefficient", "kl_weighted", "bce", "bce_weighted", "bce_gap", "val_loss", "val_bce_gap"],
    )
    h = history.history
    # eq 7 on the authors' scale: the loss term is the BCE summed over the 3,600 pixels; the reported bce per pixel
    np.testing.assert_allclose(h["bce_weighted"], 3600.0 * np.asarray(h["bce"]), rtol=1e-4)
    np.testing.assert_allclose(h["loss"], np.add(h["kl_weighted"], h["bce_weighted"]), rtol=1e-4)
    assert "critic_loss" not in h  # only the phase's terms are logged
    # validation decodes z = mu: two evaluations agree exactly and equal the BCE of the deterministic call()
    batch = make_batch(seed=1)
    first = model.evaluate(dataset(n=BATCH, seed=1), verbose=0, return_dict=True)
    second = model.evaluate(dataset(n=BATCH, seed=1), verbose=0, return_dict=True)
    assert first["bce"] == second["bce"] and first["bce_gap"] == second["bce_gap"]
    assert first["bce_sampled"] != second["bce_sampled"]  # the sampled path is reported apart, with its noise
    p = np.clip(ops.convert_to_numpy(model(batch)).astype("float64"), 1e-12, 1 - 1e-12)
    x = batch["pattern"].astype("float64")
    bce = np.mean(-(x * np.log(p) + (1 - x) * np.log(1 - p)))
    assert first["bce"] == pytest.approx(bce, rel=2e-3)


def test_adaptive_kl_coefficient_switches_when_kl_crosses_a_threshold_in_training():
    """KL-only training drives the KL down through the thresholds: the coefficient must follow the step function
    of the *current* KL, from the top level to a lower one, within one fit."""
    keras.utils.set_random_seed(SEED)
    model = CVAEGAN(config=MICRO)
    model.compile(phase="cvae", loss_weights=LossWeights.only("kl"))
    b = make_batch()
    kl0 = float(ops.mean(kl_divergence(*model.encode(b))))
    assert kl0 > 0.1
    schedule = KLSchedule(thresholds=(0.3 * kl0, 0.7 * kl0))  # start above the upper threshold
    model.compile(phase="cvae", encoder_decoder_optimizer=adam(1e-2), loss_weights=LossWeights.only("kl"),
                  kl_schedule=schedule)  # fmt: skip
    h = model.fit(fixed_batch_dataset(), epochs=25, steps_per_epoch=1, verbose=0).history
    coefficients = np.asarray(h["kl_coefficient"])
    assert coefficients[0] == pytest.approx(0.8 * 1.5)
    assert coefficients[-1] < 0.8 * 0.1 + 1e-6, (h["kl"], coefficients)  # the switch fired (KL fell below 0.7 kl0)
    # at every step the coefficient is the schedule's value at that step's KL
    np.testing.assert_allclose(coefficients, ops.convert_to_numpy(schedule(np.asarray(h["kl"], "float32"))),
                               rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize("term, metric", [("kl", "kl"), ("reconstruction", "bce_gap")])
def test_cvae_term_decreases_alone(term, metric):
    keras.utils.set_random_seed(SEED)
    model = CVAEGAN(config=MICRO)
    model.compile(phase="cvae", encoder_decoder_optimizer=adam(3e-3), loss_weights=LossWeights.only(term))
    values = model.fit(fixed_batch_dataset(), epochs=12, steps_per_epoch=1, verbose=0).history[metric]
    assert np.mean(values[-2:]) < 0.8 * np.mean(values[:2]), values


@pytest.mark.parametrize(
    "term, metric, lipschitz",
    [
        ("orientation", "critic_orientation", "clip"),
        ("voltage", "critic_voltage", "clip"),
        ("adversarial_critic", "critic_adversarial", "gp"),  # also runs the GP path (penalty weight 0)
    ],
)
def test_critic_term_decreases_alone(term, metric, lipschitz):
    keras.utils.set_random_seed(SEED)
    model = CVAEGAN(config=MICRO)
    model.compile(
        phase="critic",
        critic_optimizer=adam(3e-3),
        loss_weights=LossWeights.only(term),
        lipschitz=lipschitz,
        clip_value=100.0,  # effectively unconstrained: this test isolates the loss term
    )
    history = model.fit(fixed_batch_dataset(), epochs=12, steps_per_epoch=1, verbose=0)
    if lipschitz == "gp":
        assert_finite_history(history, ["gradient_penalty", "gradient_penalty_weighted"])
        assert min(history.history["gradient_penalty"]) > 0
    values = history.history[metric]
    first, last = np.mean(values[:2]), np.mean(values[-2:])
    assert last < first - 0.2 * abs(first), values


def test_critic_phase_with_jit_clips_the_score_path_and_freezes_the_decoder():
    model = CVAEGAN(config=MICRO)
    c = 0.01
    decoder_before = [w.copy() for w in model.decoder.get_weights()]
    model.compile(phase="critic", critic_optimizer=adam(0.1), lipschitz="clip", clip_value=c, jit_compile=True)
    assert model.jit_compile is True
    history = model.fit(dataset(), epochs=1, verbose=0)  # also drops the pipeline's string entries (XLA)
    assert_finite_history(
        history,
        ["loss", "critic_loss", "wasserstein", "critic_orientation", "critic_voltage", "disorientation_real_deg"],
    )
    weights = [v.numpy() for v in model.critic.lipschitz_variables]
    assert all(np.abs(w).max() <= c + 1e-7 for w in weights)
    assert max(np.abs(w).max() for w in weights) == pytest.approx(c)  # the constraint was active
    # the classifier heads are not part of D(x): they stay free, so the classifier can still learn
    clipped = {id(v) for v in model.critic.lipschitz_variables}
    free = [v.numpy() for v in model.critic.trainable_variables if id(v) not in clipped]
    assert free and max(np.abs(w).max() for w in free) > c
    assert {v.path for v in model.critic.trainable_variables if id(v) not in clipped} <= {
        v.path
        for name in ("quaternion", "voltage_kv")
        if name in model.critic.heads
        for layer in (*model.critic.heads[name]["dense"], model.critic.heads[name]["out"])
        for v in layer.trainable_variables
    }
    for before, after in zip(decoder_before, model.decoder.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert int(model.critic_optimizer.iterations.numpy()) == 2
    assert int(model.encoder_decoder_optimizer.iterations.numpy()) == 0


def test_gan_phase_honours_n_critic_and_adversarial_term_decreases():
    """n_critic critic updates per generator update; with the critic frozen (lr 0), L4,dec falls."""
    keras.utils.set_random_seed(SEED)
    model = CVAEGAN(config=TINY)
    model.compile(
        phase="gan",
        n_critic=2,
        encoder_decoder_optimizer=adam(1e-3),
        critic_optimizer=keras.optimizers.Adam(learning_rate=0.0),
        loss_weights=LossWeights.only("adversarial_generator"),
        clip_value=100.0,
    )
    history = model.fit(fixed_batch_dataset(), epochs=10, steps_per_epoch=1, verbose=0)
    assert_finite_history(
        history,
        [
            "loss",
            "kl",
            "bce",
            "adversarial",
            "generator_orientation",
            "generator_voltage",
            "disorientation_generated_deg",
            "critic_loss",
            "wasserstein",
            "disorientation_real_deg",
        ],
    )
    assert int(model.encoder_decoder_optimizer.iterations.numpy()) == 10
    assert int(model.critic_optimizer.iterations.numpy()) == 2 * 10
    values = history.history["adversarial"]  # -E[D(G(z))], bounded below: sigmoid outputs saturate
    assert np.mean(values[-2:]) < np.mean(values[:2]) - 0.05 * abs(np.mean(values[:2])), values


def _snapshot(variables):
    return [np.array(v.numpy()) for v in variables]


def _changed(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables, strict=True)]


@pytest.mark.parametrize("phase", ["cvae", "critic", "gan"])
def test_each_phase_updates_exactly_its_variables(phase):
    """Both optimizers have a non-zero learning rate and every loss weight is on: the variables a phase must not
    train stay bit-identical, and those it trains change (the encoder in the critic phase, the critic in the cvae
    phase, and the critic through a generator step of the gan phase would be caught)."""
    keras.utils.set_random_seed(SEED)
    model = CVAEGAN(config=MICRO)
    weights = LossWeights(adversarial_generator=1.0, adversarial_critic=1.0, gradient_penalty=1.0)
    # the gan check runs with a critic that cannot move (lr 0) so that any critic change would come from the
    # generator step, and once more with a frozen encoder/decoder for the other direction
    runs = {"cvae": [(1e-3, 1e-3)], "critic": [(1e-3, 1e-3)], "gan": [(1e-3, 0.0), (0.0, 1e-3)]}[phase]
    for lr_g, lr_c in runs:
        gen, crit = model.generator_variables, model.critic.trainable_variables
        gen_before, crit_before = _snapshot(gen), _snapshot(crit)
        model.compile(phase=phase, encoder_decoder_optimizer=adam(lr_g), critic_optimizer=adam(lr_c),
                      loss_weights=weights, lipschitz="gp", n_critic=1)  # fmt: skip
        model.fit(fixed_batch_dataset(), epochs=1, steps_per_epoch=2, verbose=0)
        gen_changed, crit_changed = _changed(gen_before, gen), _changed(crit_before, crit)
        trains_generator = phase in ("cvae", "gan") and lr_g > 0
        trains_critic = phase in ("critic", "gan") and lr_c > 0
        assert any(gen_changed) == trains_generator, (phase, lr_g, lr_c)
        assert any(crit_changed) == trains_critic, (phase, lr_g, lr_c)
        if trains_generator:  # encoder and decoder both learn
            enc = [v.path for v, c in zip(gen, gen_changed, strict=True) if c and v.path.startswith("encoder")]
            dec = [v.path for v, c in zip(gen, gen_changed, strict=True) if c and v.path.startswith("decoder")]
            assert enc and dec


def test_generator_side_attribute_losses_reach_the_decoder():
    """Eq 13's alpha3 terms are the classifier's errors on *generated* patterns: their gradient must reach the
    decoder's weights (through the critic's input), not stop at the critic."""
    keras.utils.set_random_seed(SEED)
    model = CVAEGAN(config=MICRO)
    model.compile(phase="gan", loss_weights=LossWeights.only("orientation").replace(voltage=1.0))
    x, attrs = model.split_batch(make_batch())
    for term in ("generator_orientation_weighted", "generator_voltage_weighted"):
        with tf.GradientTape() as tape:
            value = model._generator_terms(x, attrs, training=True)[term]
        grads = tape.gradient(value, model.decoder.trainable_variables)
        norms = [float(tf.norm(g)) for g in grads if g is not None]
        assert norms and max(norms) > 0, term
    # and one gan step with only these terms moves the decoder
    before = _snapshot(model.decoder.trainable_variables)
    model.compile(phase="gan", encoder_decoder_optimizer=adam(1e-3), critic_optimizer=adam(0.0),
                  loss_weights=LossWeights.only("orientation").replace(voltage=100.0), n_critic=1)  # fmt: skip
    model.fit(fixed_batch_dataset(), epochs=1, steps_per_epoch=1, verbose=0)
    assert any(_changed(before, model.decoder.trainable_variables))


def _critic_input_gradient_norm(model, x, fake, eps):
    x_hat = tf.constant(eps[:, None, None, None] * x + (1 - eps[:, None, None, None]) * fake)
    with tf.GradientTape() as tape:
        tape.watch(x_hat)
        score = model.critic(x_hat, training=False)["score"]
    g = tape.gradient(score, x_hat)
    return np.sqrt(np.sum(np.square(g.numpy()), axis=(1, 2, 3)))


def test_gradient_penalty_constrains_the_critic_gradient_norm():
    """WGAN-GP: training the critic on the penalty pulls ||grad_x D|| at interpolates towards 1."""
    keras.utils.set_random_seed(SEED)
    model = CVAEGAN(config=MICRO)
    head = model.critic.heads["score"]["out"]
    head.kernel.assign(head.kernel * 30.0)  # a steep critic: gradient norm far from 1
    b = make_batch()
    x, attrs = model.split_batch(b)
    fake = ops.convert_to_numpy(model._prior_samples(attrs, training=False))
    eps = np.random.default_rng(0).uniform(size=BATCH).astype("float32")
    before = _critic_input_gradient_norm(model, b["pattern"], fake, eps)
    model.compile(phase="critic", critic_optimizer=adam(3e-3), lipschitz="gp",
                  loss_weights=LossWeights.only("gradient_penalty", 10.0))  # fmt: skip
    h = model.fit(fixed_batch_dataset(), epochs=15, steps_per_epoch=1, verbose=0).history
    after = _critic_input_gradient_norm(model, b["pattern"], fake, eps)
    assert np.mean(np.abs(before - 1)) > 1.0, before  # the start really was off
    assert np.mean(np.abs(after - 1)) < 0.3 * np.mean(np.abs(before - 1)), (before, after)
    assert h["gradient_penalty"][-1] < 0.1 * h["gradient_penalty"][0]


def test_compile_rejects_bad_arguments(shared_model):
    model = shared_model
    with pytest.raises(ValueError, match="phase"):
        model.compile(phase="pretrain")
    with pytest.raises(ValueError, match="lipschitz"):
        model.compile(lipschitz="spectral")
    with pytest.raises(ValueError, match="n_critic"):
        model.compile(n_critic=0)
    opt = adam(1e-3)
    with pytest.raises(ValueError, match="two different optimizer"):
        model.compile(encoder_decoder_optimizer=opt, critic_optimizer=opt)


def test_batches_without_voltage_are_refused_by_a_voltage_model(shared_model):
    model = shared_model
    batch = make_batch()
    del batch["voltage_kv"]
    with pytest.raises(ValueError, match="voltage_kv"):
        model(batch)


# ------------------------------------------------------------------------------------------------------------------
# call, generation, saving, seeding
# ------------------------------------------------------------------------------------------------------------------


def test_call_reconstructs_from_the_posterior_mean(shared_model):
    model = shared_model
    batch = make_batch()
    out = ops.convert_to_numpy(model(batch))
    mu, _ = model.encode(batch)
    attrs = {"quaternion": batch["quaternion"], "voltage_kv": batch["voltage_kv"]}
    expected = ops.convert_to_numpy(model.generate(attrs, z=mu))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # and not from the prior mean z = 0 (mu of an untrained encoder is not 0)
    assert np.abs(out - ops.convert_to_numpy(model.generate(attrs))).max() > 1e-6


def test_generation_paths(shared_model):
    model = shared_model
    b = make_batch()
    attrs = {"quaternion": b["quaternion"], "voltage_kv": b["voltage_kv"]}
    mean1 = ops.convert_to_numpy(model.generate(attrs))
    mean2 = ops.convert_to_numpy(model.generate(attrs))
    np.testing.assert_array_equal(mean1, mean2)  # z = 0: deterministic
    zero = ops.convert_to_numpy(model.generate(attrs, z=np.zeros((BATCH, TINY.latent_dim), "float32")))
    np.testing.assert_array_equal(mean1, zero)
    s1 = ops.convert_to_numpy(model.generate(attrs, sample=True, seed=1))
    s1_again = ops.convert_to_numpy(model.generate(attrs, sample=True, seed=1))
    s2 = ops.convert_to_numpy(model.generate(attrs, sample=True, seed=2))
    np.testing.assert_array_equal(s1, s1_again)
    assert np.abs(s1 - s2).max() > 1e-6
    assert np.abs(s1 - mean1).max() > 1e-6
    unseeded = [ops.convert_to_numpy(model.generate(attrs, sample=True)) for _ in range(2)]
    assert np.abs(unseeded[0] - unseeded[1]).max() > 1e-6  # the seed generator advances


def test_keras_file_round_trip_gives_identical_outputs(tmp_path):
    model = CVAEGAN(config=TINY)
    model.compile(
        phase="gan",
        n_critic=3,
        lipschitz="gp",
        loss_weights=LossWeights(orientation=5.0),
        kl_schedule=KLSchedule(mode="smooth"),
    )
    path = tmp_path / "cvaegan.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode=True by default
    assert isinstance(loaded, CVAEGAN)
    assert loaded.model_config == TINY
    assert (loaded.phase, loaded.n_critic, loaded.lipschitz) == ("gan", 3, "gp")
    assert loaded.loss_weights == LossWeights(orientation=5.0)
    assert loaded.kl_schedule == KLSchedule(mode="smooth")
    b = make_batch()
    attrs = {"quaternion": b["quaternion"], "voltage_kv": b["voltage_kv"]}
    np.testing.assert_array_equal(ops.convert_to_numpy(model(b)), ops.convert_to_numpy(loaded(b)))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model.generate(attrs)), ops.convert_to_numpy(loaded.generate(attrs))
    )
    for key, value in model.critic(b["pattern"]).items():
        np.testing.assert_array_equal(
            ops.convert_to_numpy(value), ops.convert_to_numpy(loaded.critic(b["pattern"])[key])
        )


def test_same_seed_gives_identical_weights_after_training():
    def run(seed):
        keras.utils.set_random_seed(seed)
        model = CVAEGAN(config=MICRO)
        model.compile(phase="cvae")
        model.fit(fixed_batch_dataset(), epochs=1, steps_per_epoch=2, verbose=0)
        return model.get_weights()

    first, second = run(7), run(7)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    keras.utils.set_random_seed(8)
    other = CVAEGAN(config=MICRO).get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


# ------------------------------------------------------------------------------------------------------------------
# distribution (subprocess started at module start)
# ------------------------------------------------------------------------------------------------------------------


def test_mirrored_strategy_two_logical_cpus(mirrored_process):
    proc, log = mirrored_process
    proc.wait(timeout=400)
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, text[-4000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["replicas"] == 2
    # Gradients are averaged over the global batch: the same step as one device on the whole batch (a missing or
    # doubled 1/replicas factor would be off by half the step).
    assert out["max_weight_change"] > 1e-4
    assert out["max_weight_difference"] < 1e-3 * out["max_weight_change"]
    assert all(np.isfinite(v) for v in out["gan_logs"].values())
    assert out["critic_iterations"] == 2 and out["generator_iterations"] == 2  # fresh optimizers at compile
    assert out["max_abs_critic_weight"] <= 0.01 + 1e-7


# ------------------------------------------------------------------------------------------------------------------
# pattern centre as an optional attribute
# ------------------------------------------------------------------------------------------------------------------


def test_pattern_centre_reaches_the_physics_decoder_and_a_cnn_model_refuses_it(shared_model):
    b = make_batch(4)
    other_pc = np.tile(np.array([[0.45, 0.55, 0.65]], "float32"), (4, 1))
    assert not shared_model.takes_pattern_centre
    with pytest.raises(ValueError, match="pattern centre"):
        shared_model.generate({"quaternion": b["quaternion"], "voltage_kv": b["voltage_kv"], "pc": other_pc})
    _, cnn_attrs = shared_model.split_batch({**b, "pc": other_pc})
    assert "pc" not in cnn_attrs  # fixed-detector decoders never see it
    physics = CVAEGAN(config=get_preset("physics", physics_npx=16, physics_residual=(0, 0)), seed=0)
    assert physics.takes_pattern_centre
    q = {"quaternion": b["quaternion"]}
    default = ops.convert_to_numpy(physics.generate(q))
    same = ops.convert_to_numpy(physics.generate({**q, "pc": np.tile([[0.5, 0.5, 0.6]], (4, 1)).astype("float32")}))
    moved = ops.convert_to_numpy(physics.generate({**q, "pc": other_pc}))
    # the training PC given explicitly = the default detector, up to float32 rounding of the pixel directions
    # (which moves a few pixels across an 8-bit level before CLAHE)
    assert np.abs(same - default).mean() < 1e-3 and np.abs(same - default).max() < 0.05
    assert np.abs(moved - default).mean() > 0.05
    # batches: "pc" goes to the decoder (reconstructions move), not to the encoder; tf.data keeps it
    recon_default = ops.convert_to_numpy(physics(b))
    recon_moved = ops.convert_to_numpy(physics({**b, "pc": other_pc}))
    assert np.abs(recon_moved - recon_default).mean() > 0.05
    ds = tf.data.Dataset.from_tensor_slices({**b, "pc": other_pc}).batch(4)
    assert "pc" in physics._model_inputs(ds).element_spec
    assert "pc" not in shared_model._model_inputs(ds).element_spec
