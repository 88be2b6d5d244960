"""Gradient refinement through a generator: recovers perturbed orientations of true Ni patterns (the same objective
as BOBYQA), refines a pattern centre, runs through a physics-decoder model, and refuses bad input."""

import numpy as np
import pytest

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.indexing.generator import master_pattern_generator, model_refinement_generator
from ebsd_keras.indexing.refinement import check_pattern_centres, refine_bobyqa_generator, refine_gradient
from ebsd_keras.orientation import disorientation, quaternion_multiply
from ebsd_keras.simulations.geometry import DetectorGeometry

N = 6


def _perturb(q, angle_deg, seed=0):
    from ebsd_keras.indexing.dictionary import rotvec_to_quaternion

    rng = np.random.default_rng(seed)
    axis = rng.normal(size=(len(q), 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return quaternion_multiply(rotvec_to_quaternion(axis * np.radians(angle_deg)), q)


@pytest.fixture(scope="module")
def master_pattern():
    from ebsd_keras.data.simulate import load_master_pattern

    return load_master_pattern(None, 20.0)  # the test set's (embedded EMsoft Ni 20 kV); no dictionary needed


@pytest.fixture(scope="module")
def generator(master_pattern, test_set):
    geometry = DetectorGeometry(shape=test_set.shape, pc=tuple(test_set.metadata["detector"]["pc"]))
    return master_pattern_generator(master_pattern, geometry)


@pytest.fixture(scope="module")
def patterns(test_set):
    return test_set.patterns[:N], test_set.quaternion[:N]


def test_generator_reproduces_the_dataset_preprocessing(generator, patterns):
    import tensorflow as tf

    pats, q = patterns
    out = np.asarray(generator(tf.constant(q, tf.float32), None)) * 255.0
    # in-graph rescale + CLAHE of a float32 projection = the stored uint8 pattern to within rounding
    # (CLAHE amplifies a float32 rounding across an 8-bit level into a few grey levels on a few pixels)
    assert np.abs(out - pats).max() <= 8
    assert np.mean(np.abs(out - pats) > 0.5) < 0.02


def test_gauss_newton_recovers_perturbed_orientations(generator, patterns):
    pats, q = patterns
    start = _perturb(q, 1.2, seed=1)
    # 6 patterns: two batches, the second padded; no XLA (compiling costs more than it saves on 6 patterns)
    res = refine_gradient(generator, pats, start, method="gauss-newton", batch_size=4, jit=False)
    err = disorientation(q, res.quaternion)
    assert disorientation(q, start).min() > 1.1
    assert np.median(err) < 0.005 and (err < 0.01).sum() >= 5 and err.max() < 0.1, err
    assert res.score.min() > 0.99 and res.quaternion.shape == (N, 4) and (res.quaternion[:, 0] >= 0).all()
    assert (res.iterations >= 1).all() and res.settings["method"] == "gauss-newton"


def test_difference_gauss_newton_converges_in_fewer_iterations(generator, patterns):
    pats, q = patterns
    start = _perturb(q, 1.0, seed=3)
    # 6 patterns through 4 slots: two are refilled as the first ones converge
    res = refine_gradient(generator, pats, start, batch_size=4, jit=False)
    err = disorientation(q, res.quaternion)
    assert res.settings["method"] == "gauss-newton-fd" and "fixed-LUT" in res.settings["objective"]
    assert err.max() < 0.01, err  # from 1 deg (DI-like) to BOBYQA's accuracy
    assert res.iterations.max() <= 8 and res.score.min() > 0.99 and (res.quaternion[:, 0] >= 0).all()
    # differences in the first 2 iterations (4 passes each), then Broyden updates (1 pass each; a call's spare
    # difference slots go to the patterns moving most)
    assert res.n_evaluations.sum() < 4 * res.iterations.sum() and (res.n_evaluations >= 8).all()
    # differences at every iteration: as accurate, (p + 1) passes per iteration
    full = refine_gradient(generator, pats, start, batch_size=4, fd_iterations=99, jit=False)
    assert disorientation(q, full.quaternion).max() < 0.01 and (full.n_evaluations == 4 * full.iterations).all()
    # the chord method (one Jacobian, then gradients) on the same start needs more iterations
    old = refine_gradient(generator, pats, start, method="gauss-newton", jit=False)
    assert res.iterations.mean() < old.iterations.mean() - 2, (res.iterations, old.iterations)
    assert full.iterations.mean() < old.iterations.mean() - 2, (full.iterations, old.iterations)


def test_difference_jacobian_of_the_smooth_map_matches_the_surrogate(generator, patterns):
    import math

    import tensorflow as tf

    from ebsd_keras.indexing.dictionary import normalized_rows
    from ebsd_keras.indexing.refinement import _steps_for

    pats, q = patterns
    start = _perturb(q, 0.3, seed=4)
    x = tf.zeros((N, 3))
    args = (tf.constant(start, tf.float32), tf.zeros((N, 3)), tf.constant(normalized_rows(pats)))
    steps = _steps_for(generator, 3, False, False)
    f_jvp, g_jvp, h_jvp = steps.jacobian_terms(x, *args)
    f_fd, g_fd, h_fd = steps.difference_terms(x, *args, tf.constant([math.radians(0.02)] * 3))
    # the same exact NCC; J^T J and J^T r of the fixed-LUT map by differences and of the "lut" surrogate by JVP
    np.testing.assert_allclose(np.asarray(f_fd), np.asarray(f_jvp), atol=1e-5)
    # (not equal: the fixed-LUT map is piecewise linear in the grey level, and a difference over 0.02 deg averages
    # slopes that the derivative takes at one level)
    h_fd, h_jvp = np.asarray(h_fd), np.asarray(h_jvp)
    rel = np.linalg.norm(h_fd - h_jvp, axis=(1, 2)) / np.linalg.norm(h_jvp, axis=(1, 2))
    cos = np.sum(np.asarray(g_fd) * np.asarray(g_jvp), 1) / np.linalg.norm(g_fd, axis=1) / np.linalg.norm(g_jvp, axis=1)
    assert rel.max() < 0.25 and cos.min() > 0.99, (rel, cos)  # measured 0.11..0.16 and > 0.998


def test_generator_stages_reproduce_the_generator(generator, patterns):
    import tensorflow as tf

    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.models.presets import get_preset

    _, q = patterns
    qt = tf.constant(q, tf.float32)
    model = CVAEGAN(config=get_preset("physics", physics_npx=16), seed=0)
    for gen in (generator, model_refinement_generator(model)):
        st = gen.stages
        exact, lut = st.exact(tf.clip_by_value(st.pre(qt, None), 0.0, 255.0))
        np.testing.assert_allclose(np.asarray(st.post(exact)), np.asarray(gen(qt, None)), atol=1e-5)
    assert model_refinement_generator(CVAEGAN(config=get_preset("tiny"), seed=0)).stages is None


def test_adam_also_converges_and_bobyqa_agrees(generator, patterns):
    pats, q = patterns
    start = _perturb(q[:4], 0.8, seed=2)
    adam = refine_gradient(generator, pats[:4], start, method="adam", max_iterations=120, jit=False)
    assert disorientation(q[:4], adam.quaternion).max() < 0.1
    bob = refine_bobyqa_generator(generator, pats[:4], start, workers=4, jit=False)
    assert disorientation(q[:4], bob.quaternion).max() < 0.05


def test_pattern_centre_refinement_recovers_the_pc(master_pattern, test_set):
    from ebsd_keras.data.preprocess import CLAHEConfig
    from ebsd_keras.evaluation.pattern_centre import true_patterns_at

    det = dict(test_set.metadata["detector"])
    true_pc = (0.49, 0.51, 0.61)  # 0.6 px and 1.7 % of PCz from the start: a calibration, not a search
    q = test_set.quaternion[:4]
    pats = true_patterns_at(master_pattern, q, {**det, "pc": list(true_pc)}, 20.0, CLAHEConfig())
    gen = master_pattern_generator(master_pattern, DetectorGeometry(shape=test_set.shape))
    # PC calibration on patterns of known orientation
    res = refine_gradient(
        gen, pats, q, pc_start=(0.5, 0.5, 0.6), refine_pc=True, refine_orientation=False, hessian_every=1, jit=False
    )
    assert np.abs(res.pc - np.array(true_pc)).max() < 0.002, res.pc
    np.testing.assert_allclose(res.quaternion, q, atol=1e-9)
    # jointly with the orientation the PC is poorly determined per pattern, but the NCC still rises to ~1
    joint = refine_gradient(gen, pats[:2], q[:2], pc_start=(0.5, 0.5, 0.6), refine_pc=True, jit=False)
    assert joint.score.min() > 0.98


def test_physics_model_generator_takes_pc_and_cnn_refuses(tmp_path):
    import tensorflow as tf

    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.models.presets import get_preset

    model = CVAEGAN(config=get_preset("physics", physics_npx=16, physics_residual=(0, 0)), seed=0)
    gen = model_refinement_generator(model)
    q = tf.constant(_perturb(np.tile([[1.0, 0, 0, 0]], (2, 1)), 5.0), tf.float32)
    pc = tf.Variable(np.tile([[0.5, 0.5, 0.6]], (2, 1)).astype(np.float32))
    with tf.GradientTape() as tape:
        out = gen(q, pc)
        loss = tf.reduce_sum(out * out)
    assert tuple(out.shape) == (2, 60, 60)
    assert np.abs(np.asarray(tape.gradient(loss, pc))).max() > 0  # the CLAHE surrogate carries a gradient
    cnn = model_refinement_generator(CVAEGAN(config=get_preset("tiny"), seed=0))
    with pytest.raises(EBSDInputError, match="fixed detector"):
        cnn(q, pc)
    pats = np.zeros((2, 60, 60), np.uint8)
    with pytest.raises(EBSDInputError, match="fixed detector"):
        refine_gradient(cnn, pats, np.asarray(q), refine_pc=True)


def test_bad_input_is_refused(generator, patterns):
    pats, q = patterns
    with pytest.raises(EBSDInputError, match="start orientations"):
        refine_gradient(generator, pats, q[:3])
    with pytest.raises(EBSDInputError, match="method"):
        refine_gradient(generator, pats, q, method="newton")
    with pytest.raises(EBSDInputError, match="fd_fraction"):
        refine_gradient(generator, pats, q, fd_fraction=0.0)
    with pytest.raises(EBSDInputError, match="patterns"):
        refine_gradient(generator, pats[:, :30], q)
    with pytest.raises(EBSDInputError, match="not Bruker"):
        check_pattern_centres([30.0, 20.0, 15000.0], 2)
    with pytest.raises(EBSDInputError, match="shape"):
        check_pattern_centres(np.zeros((3, 3)) + 0.5, 2)
    assert check_pattern_centres([0.5, 0.5, 0.6], 4).shape == (4, 3)


def test_pattern_centre_evaluation_rows_and_refusal(master_pattern):
    from ebsd_keras.evaluation.pattern_centre import evaluate_pattern_centres
    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.models.presets import get_preset

    model = CVAEGAN(config=get_preset("physics", physics_npx=16, physics_residual=(0, 0)), seed=0)
    pcs = [(0.5, 0.5, 0.6), (0.45, 0.55, 0.65)]
    res = evaluate_pattern_centres(model, pcs, n=3, master_pattern=master_pattern, refine=False)
    assert [r["pc"] for r in res["rows"]] == [list(p) for p in pcs]
    for row in res["rows"]:
        assert row["ncc"]["n"] == 3 and -1 <= row["ncc"]["mean"] <= 1
        assert 0 <= row["within_15pct"]["mean"] <= 1 and row["bce_gap"]["mean"] > -1e-9  # BCE >= its optimum
    with pytest.raises(EBSDInputError, match="fixed detector"):
        evaluate_pattern_centres(CVAEGAN(config=get_preset("tiny"), seed=0), pcs, n=2, refine=False)
    assert res["settings"]["detector"]["shape"] == [60, 60] and res["settings"]["clahe"] is not None


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"pattern_centres": [(0.5, 0.5, 0.0)]}, "pattern_centres"),
        ({"n": 0}, "n"),
        ({"preprocessing": "gamma"}, "preprocessing"),
        ({"refine_pc_offset": (0.01, 0.0)}, "refine_pc_offset"),
    ],
)
def test_pattern_centre_study_refuses_bad_settings_naming_the_field(bad, field):
    from ebsd_keras.evaluation.pattern_centre import PatternCentreStudy

    with pytest.raises(EBSDInputError) as err:
        PatternCentreStudy(**bad)
    assert err.value.field == field
