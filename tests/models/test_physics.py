"""The physics-informed decoder: symmetry folding, projection of a known master pattern against kikuchipy, the
dataset's CLAHE reproduced in the graph, serialization, training, export of the learned master pattern, CVAEGAN."""


import h5py
import keras
import kikuchipy as kp
import numpy as np
import pytest
import tensorflow as tf
from orix.quaternion import Rotation

from ebsd_keras.data.preprocess import clahe
from ebsd_keras.data.simulate import embedded_master_pattern_path, rescale_per_pattern
from ebsd_keras.io.emsoft import read_master_pattern
from ebsd_keras.losses import bce_from_logits
from ebsd_keras.models.cvaegan import CVAEGAN  # also registers every decoder kind, "physics" included
from ebsd_keras.models.decoders import DECODERS, build_decoder
from ebsd_keras.models.physics import MasterPatternTexture, PhysicsDecoder, sector_side, voltage_weights
from ebsd_keras.models.presets import ModelConfig, count_parameters, get_preset
from ebsd_keras.models.tools import export_master_pattern, master_pattern_hemispheres, texture_ncc, with_contrast

N = 24
PC = (0.5, 0.5, 0.6)
OTHER_PC = (0.45, 0.55, 0.65)


def _ncc(a, b):
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def _physics(**overrides):
    return get_preset("physics", **overrides)


@pytest.fixture(scope="module")
def emsoft():
    return read_master_pattern(embedded_master_pattern_path())


@pytest.fixture(scope="module")
def reference():
    """Random orientations and kikuchipy projections of the EMsoft Ni master pattern (float32, raw)."""
    np.random.seed(11)  # orix draws from numpy's global generator
    rot = Rotation.random(N)
    mp = kp.load(embedded_master_pattern_path(), projection="lambert", hemisphere="both")

    def project(pc):
        det = kp.detectors.EBSDDetector((60, 60), pc=pc, tilt=10.0, sample_tilt=70.0)
        sim = mp.get_patterns(rot, det, energy=20, compute=True, dtype_out=np.float32, show_progressbar=False)
        return np.asarray(sim.data, dtype=np.float32).reshape(N, 60, 60)

    return {"quaternion": rot.data.astype(np.float32), "raw": project(PC), "raw_other_pc": project(OTHER_PC)}


def _decoder_with_truth(emsoft, **overrides):
    cfg = _physics(**{"physics_npx": 200, "physics_symmetry": "4/mmm", **overrides})
    decoder = PhysicsDecoder(cfg)
    decoder.master_pattern.set_master_pattern(emsoft.north[0], emsoft.south[0])
    return decoder


# ------------------------------------------------------------------------------------------------- symmetry


def test_emsoft_nickel_master_pattern_has_the_symmetry_built_in(emsoft):
    north, south = emsoft.north[0], emsoft.south[0]
    np.testing.assert_array_equal(north, south)  # centrosymmetric m-3m: one hemisphere is enough
    for flipped in (north[::-1], north[:, ::-1], north.T, north[::-1, ::-1].T):
        np.testing.assert_array_equal(north, flipped)  # 4mm about [001] on the Lambert square, exactly


@pytest.mark.parametrize("npx", [10, 57, 100, 200])
def test_sector_variable_holds_every_folded_direction(npx):
    layer = MasterPatternTexture(npx=npx, symmetry="m-3m")
    row, col = layer._fold_table()
    m = sector_side(npx, "m-3m")
    assert layer.variable_shape == (m, m, 1)
    assert row.min() >= -1e-9 and col.min() >= -1e-9
    upper = int(np.floor(max(row.max(), col.max()))) + 1  # the bilinear neighbour of the farthest pixel
    assert m - 2 <= upper <= m - 1  # fits, and the variable is not larger than needed


# ------------------------------------------------------------------------------------------------- building


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"physics_symmetry": "m-3m", "physics_npx": 60},
        {"physics_symmetry": "none", "physics_npx": 30, "physics_contrast": "rescale", "physics_residual": (0, 0)},
        {"physics_contrast": "learned", "physics_head_channels": (8, 8), "physics_npx": 50},
        {"use_voltage": True, "physics_head_channels": (4,), "physics_npx": 40},
        {"use_voltage": True, "physics_voltage_model": "bands", "physics_npx": 40},
        {"use_voltage": True, "physics_voltage_model": "bands", "physics_band_texture": False, "physics_npx": 20},
    ],
)
def test_builds_outputs_logits_and_counts_parameters(overrides):
    cfg = _physics(**overrides)
    decoder = build_decoder(cfg)
    assert isinstance(decoder, PhysicsDecoder)
    n = sum(int(np.prod(v.shape)) for v in decoder.trainable_variables)
    assert n == count_parameters(cfg)["decoder"] <= 1_000_000
    quaternion = np.array([[1, 0, 0, 0], [0.9, 0.1, -0.3, 0.2], [0.5, 0.5, 0.5, 0.5]], np.float32)
    batch = {
        "z": np.random.default_rng(0).normal(size=(3, cfg.latent_dim)).astype(np.float32),
        "quaternion": quaternion,
    }
    if cfg.use_voltage:
        batch["voltage_kv"] = np.array([10.0, 17.5, 30.0], np.float32)
    logits = np.asarray(decoder(batch))
    assert logits.shape == (3, 60, 60, 1) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    p = np.asarray(decoder.generate({k: v for k, v in batch.items() if k != "z"}))
    assert p.shape == (3, 60, 60, 1) and p.min() >= 0.0 and p.max() <= 1.0


def test_preset_is_registered_small_and_round_trips():
    assert DECODERS["physics"] is PhysicsDecoder
    cfg = get_preset("physics")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    counts = count_parameters(cfg)
    assert counts["decoder"] <= 1_000_000
    assert counts["total"] == counts["encoder"] + counts["decoder"] + counts["critic"]
    for bad, match in (
        ({"physics_symmetry": "cubic"}, "physics.symmetry"),
        ({"physics_contrast": "gamma"}, "physics.contrast"),
        ({"physics_voltage_knots_kv": (20.0, 10.0)}, "knots"),
        ({"physics_npx": 1}, "physics.npx"),
        ({"physics_detector_pc": (0.5, 0.5, 0.0)}, "PCz"),
        ({"physics_clahe_gradient": "exact"}, "physics.clahe.gradient"),
    ):
        with pytest.raises(ValueError, match=match):
            get_preset("physics", **bad)


# ------------------------------------------------------------------------------------------------- physics


@pytest.mark.parametrize("symmetry", ["4/mmm", "none"])
def test_true_master_pattern_reproduces_kikuchipy_projections(emsoft, reference, symmetry):
    decoder = _decoder_with_truth(emsoft, physics_symmetry=symmetry, physics_contrast="rescale")
    generated = np.asarray(decoder.generate({"quaternion": reference["quaternion"]}))[..., 0]
    assert _ncc(generated, reference["raw"]).min() > 0.999
    # per-pattern pattern centre input ("pc", Bruker), used when given
    pc = np.tile(np.array(OTHER_PC, np.float32), (N, 1))
    moved = np.asarray(decoder.generate({"quaternion": reference["quaternion"], "pc": pc}))[..., 0]
    assert _ncc(moved, reference["raw_other_pc"]).min() > 0.999
    assert _ncc(moved, reference["raw"]).mean() < 0.99


def test_m3m_fold_reproduces_kikuchipy_up_to_interpolation(emsoft, reference):
    # The fold samples the EMsoft grid at other (symmetry-equivalent) points, so bilinear interpolation of its
    # near-Nyquist detail differs slightly from kikuchipy's: close, not identical.
    decoder = _decoder_with_truth(emsoft, physics_symmetry="m-3m", physics_contrast="rescale")
    generated = np.asarray(decoder.generate({"quaternion": reference["quaternion"]}))[..., 0]
    assert _ncc(generated, reference["raw"]).mean() > 0.995


def test_in_graph_clahe_reproduces_the_dataset_patterns(emsoft, reference):
    decoder = _decoder_with_truth(emsoft)  # the preset's default contrast: CLAHE in the graph
    assert decoder.model_config.physics_contrast == "clahe"
    generated = np.asarray(decoder.generate({"quaternion": reference["quaternion"]}))[..., 0]
    target = clahe(rescale_per_pattern(reference["raw"]))  # what the dataset builder stores
    diff = np.abs(generated * 255.0 - target)
    assert (diff <= 1.0).mean() >= 0.99
    assert np.median(_ncc(generated, target)) > 0.999


def test_voltage_channels_interpolate_linearly_between_knots(emsoft, reference):
    knots = (10.0, 15.0, 20.0, 25.0, 30.0)
    w = np.asarray(voltage_weights(np.array([5.0, 10.0, 12.5, 20.0, 27.5, 30.0, 40.0], np.float32), knots))
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(w[[0, 1]], [[1, 0, 0, 0, 0]] * 2)  # clamped below the first knot
    np.testing.assert_allclose(w[2], [0.5, 0.5, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(w[3], [0, 0, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(w[[5, 6]], [[0, 0, 0, 0, 1]] * 2)
    decoder = PhysicsDecoder(_physics(use_voltage=True, physics_npx=200, physics_symmetry="4/mmm"))
    channels = np.stack([emsoft.north[0] ** (0.5 + 0.25 * i) for i in range(len(knots))])
    decoder.master_pattern.set_master_pattern(channels)
    q = reference["quaternion"][:4]
    raw = {kv: np.asarray(decoder.project({"quaternion": q, "voltage_kv": np.full(4, kv, np.float32)}))
           for kv in (15.0, 17.5, 20.0)}  # fmt: skip
    np.testing.assert_allclose(raw[17.5], 0.5 * (raw[15.0] + raw[20.0]), rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="voltage_kv"):
        decoder.project({"quaternion": q})


# ------------------------------------------------------------------------------------------------- training


def _targets(emsoft, n=16):
    rng = np.random.default_rng(5)
    q = rng.normal(size=(n, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = _decoder_with_truth(emsoft)
    return q, np.asarray(truth.generate({"quaternion": q}))


@pytest.mark.parametrize(
    "overrides",
    [
        {"physics_npx": 40, "physics_symmetry": "4/mmm"},
        {"physics_npx": 40, "physics_symmetry": "m-3m", "physics_clahe_gradient": "lut"},
        {"physics_npx": 40, "physics_contrast": "learned", "physics_head_channels": (8,)},
    ],
)
def test_a_few_steps_reduce_bce_with_finite_gradients(emsoft, overrides):
    q, x = _targets(emsoft)
    keras.utils.set_random_seed(0)
    decoder = PhysicsDecoder(_physics(**overrides))
    z = np.zeros((len(q), decoder.latent_dim), np.float32)
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(bce_from_logits(x, decoder({"z": z, "quaternion": q}, training=True)))
        grads = tape.gradient(loss, decoder.trainable_variables)
        optimizer.apply_gradients(zip(grads, decoder.trainable_variables, strict=True))
        return loss, grads

    first, grads = step()
    for g, v in zip(grads, decoder.trainable_variables, strict=True):
        assert g is not None and np.isfinite(np.asarray(g)).all(), v.path
    texture_grad = grads[
        [v.path for v in decoder.trainable_variables].index(decoder.master_pattern.texture_variable.path)
    ]
    assert np.abs(np.asarray(texture_grad)).max() > 0
    for _ in range(12):
        last, _ = step()
    assert float(last) < float(first) - 0.002


def test_gradients_reach_quaternion_and_pattern_centre_for_refinement(emsoft, reference):
    decoder = _decoder_with_truth(emsoft)
    q = tf.Variable(reference["quaternion"][:4])
    pc = tf.Variable(np.tile(np.array(PC, np.float32), (4, 1)))
    target = np.asarray(decoder.generate({"quaternion": reference["quaternion"][4:8]}))
    with tf.GradientTape() as tape:
        logits = decoder({"z": tf.zeros((4, decoder.latent_dim)), "quaternion": q, "pc": pc}, differentiable=True)
        loss = tf.reduce_mean(bce_from_logits(target, logits))
    gq, gpc = tape.gradient(loss, [q, pc])
    assert np.isfinite(np.asarray(gq)).all() and np.abs(np.asarray(gq)).max() > 0
    assert np.isfinite(np.asarray(gpc)).all() and np.abs(np.asarray(gpc)).max() > 0


def test_cvaegan_with_the_physics_decoder_fits_in_phase_cvae():
    cfg = _physics(physics_npx=40)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(8, 4)).astype(np.float32)
    data = {
        "pattern": rng.random((8, 60, 60, 1)).astype(np.float32),
        "quaternion": q / np.linalg.norm(q, axis=1)[:, None],
    }
    keras.utils.set_random_seed(0)
    model = CVAEGAN(config=cfg, seed=0)
    assert isinstance(model.decoder, PhysicsDecoder)
    model.compile(phase="cvae", encoder_decoder_optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(tf.data.Dataset.from_tensors(data).repeat(), steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and np.isfinite(history.history["bce"]).all()
    assert model.encoder_decoder_optimizer.iterations.numpy() == 2


# ------------------------------------------------------------------------------------------------- saving, export


@pytest.mark.parametrize(
    "overrides",
    [{"physics_npx": 40}, {"physics_npx": 30, "use_voltage": True, "physics_contrast": "learned",
                           "physics_head_channels": (4,), "physics_symmetry": "none"},
     {"physics_npx": 30, "use_voltage": True, "physics_voltage_model": "bands"}],
)  # fmt: skip
def test_keras_round_trip_gives_identical_outputs(tmp_path, overrides):
    cfg = _physics(**overrides)
    keras.utils.set_random_seed(1)
    decoder = PhysicsDecoder(cfg)
    for v in decoder.trainable_variables:  # make every weight matter (the residual map starts at zero)
        v.assign(v + np.random.default_rng(2).normal(size=v.shape).astype(np.float32) * 0.01)
    rng = np.random.default_rng(3)
    q = rng.normal(size=(4, 4)).astype(np.float32)
    batch = {"z": rng.normal(size=(4, cfg.latent_dim)).astype(np.float32), "quaternion": q}
    if cfg.use_voltage:
        batch["voltage_kv"] = np.array([10.0, 12.0, 20.0, 29.0], np.float32)
    path = tmp_path / "decoder.keras"
    decoder.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, PhysicsDecoder) and loaded.model_config == cfg
    np.testing.assert_array_equal(np.asarray(loaded(batch)), np.asarray(decoder(batch)))


def test_export_master_pattern_is_an_emsoft_file_and_compares_with_the_truth(tmp_path, emsoft):
    decoder = _decoder_with_truth(emsoft)
    path = tmp_path / "learned_mp.h5"
    export_master_pattern(decoder, path, energy_kv=20.0)
    mp = read_master_pattern(path)
    assert mp.north.shape == mp.south.shape == (1, 401, 401) and mp.north.dtype == np.float32
    assert mp.npx == 200 and mp.program_name == "EMEBSDmaster.f90" and mp.space_group == 225
    np.testing.assert_allclose(mp.energies_kev, [20.0])
    north, _, _ = master_pattern_hemispheres(decoder)
    np.testing.assert_array_equal(mp.north, north)
    np.testing.assert_allclose(mp.north[0], emsoft.north[0], atol=1e-4)  # 4/mmm unfolds the quadrant exactly
    with h5py.File(path, "r") as f:
        assert f["EMData/EBSDmaster/mLPNH"].shape == (1, 1, 401, 401)
    # kikuchipy reads it as an EMsoft master pattern too
    signal = kp.load(path, projection="lambert", hemisphere="both")
    assert signal.data.shape[-2:] == (401, 401)
    assert texture_ncc(decoder, embedded_master_pattern_path(), energy_kv=20.0) > 0.9999
    fresh = PhysicsDecoder(_physics(physics_npx=100))
    assert texture_ncc(fresh, embedded_master_pattern_path()) < 0.5
    with pytest.raises(FileExistsError):
        export_master_pattern(decoder, path, overwrite=False)


# ------------------------------------------------------------------------------------------ voltage: band profiles


def _band_decoder(texture=False, npx=20):
    cfg = _physics(
        use_voltage=True,
        physics_voltage_model="bands",
        physics_band_texture=texture,
        physics_contrast="rescale",
        physics_residual=(0, 0),
        physics_npx=npx,
        physics_band_profile=(61, 3.0),
    )
    return PhysicsDecoder(cfg)


def test_kinematical_band_profiles_reproduce_kikuchipy_at_unseen_voltages():
    """With the kinematical box profile (|F| inside the Bragg angle) the band model matches kikuchipy's kinematical
    master pattern at any voltage: no voltage knots, so 12.5 kV is as good as 10 kV."""
    from diffsims.crystallography import ReciprocalLatticeVector

    from ebsd_keras.data.simulate import (
        NICKEL_REFLECTORS,
        _nickel_phase,
        kinematical_master_pattern,
        make_detector,
        project_patterns,
    )

    decoder = _band_decoder(npx=150)  # bands evaluated on a Lambert grid as fine as the truth's
    ref = ReciprocalLatticeVector(_nickel_phase(), hkl=np.array(NICKEL_REFLECTORS))
    ref.calculate_structure_factor()
    u = np.linspace(0, 3, 61)
    decoder.bands.set_profiles(np.abs(ref.structure_factor)[:, None] * (u[None] <= 1.0))
    q = Rotation.random(24).data.astype(np.float32)
    q[q[:, 0] < 0] *= -1
    det = make_detector()
    nccs = {}
    for kv in (10.0, 17.5):
        mp = kinematical_master_pattern(kv, half_size=150)
        truth = np.concatenate([p for _, p in project_patterns(mp, q, det, kv, progress=False)]).astype(float)
        gen = np.asarray(decoder.generate({"quaternion": q, "voltage_kv": np.full(len(q), kv, np.float32)}))[..., 0]
        nccs[kv] = _ncc(gen, truth)
    # measured 0.990 and 0.985 (no fitting: the box profile alone; the truth is on a Lambert grid of its own)
    assert nccs[10.0].mean() > 0.98 and nccs[17.5].mean() > 0.98
    # and the bands do change with the voltage: the 10 kV pattern is not the 17.5 kV one
    g10 = np.asarray(decoder.generate({"quaternion": q, "voltage_kv": np.full(len(q), 10.0, np.float32)}))
    g17 = np.asarray(decoder.generate({"quaternion": q, "voltage_kv": np.full(len(q), 17.5, np.float32)}))
    assert _ncc(g10[..., 0], g17[..., 0]).mean() < 0.97


def test_band_model_trains_with_gradients_on_profiles_and_texture():
    decoder = _band_decoder(texture=True)
    rng = np.random.default_rng(0)
    q = Rotation.random(4).data.astype(np.float32)
    v = np.array([10.0, 15.0, 25.0, 30.0], np.float32)
    target = rng.random((4, 60, 60, 1)).astype(np.float32)
    with tf.GradientTape() as tape:
        logits = decoder({"z": np.zeros((4, decoder.latent_dim), np.float32), "quaternion": q, "voltage_kv": v})
        loss = tf.reduce_mean(bce_from_logits(target, logits))
    grads = tape.gradient(loss, decoder.trainable_variables)
    paths = [x.path for x in decoder.trainable_variables]
    for name in ("profiles", "amplitude_slope", "texture"):
        g = grads[[i for i, p in enumerate(paths) if p.endswith(name)][0]]
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0, name


def test_band_model_exports_hemispheres_per_voltage(tmp_path):
    decoder = _band_decoder()
    north, south, energies = master_pattern_hemispheres(decoder)
    assert north.shape == (5, 41, 41) and energies.tolist() == [10.0, 15.0, 20.0, 25.0, 30.0]
    # bands narrow as the voltage rises: less of the sphere lies inside a band at 30 kV than at 10 kV
    assert (north[4] > 0.05).mean() < (north[0] > 0.05).mean()
    one_n, _, one_e = master_pattern_hemispheres(decoder, energy_kv=12.5)
    assert one_n.shape == (1, 41, 41) and one_e.tolist() == [12.5]
    export_master_pattern(decoder, tmp_path / "mp.h5")
    assert read_master_pattern(tmp_path / "mp.h5").energies_kev.tolist() == [10.0, 15.0, 20.0, 25.0, 30.0]


def test_detector_rendered_bands_match_the_lambert_rendered_ones_and_take_any_voltage_per_pattern():
    """``physics_band_render="detector"`` evaluates the same profiles at each pixel's direction: with smooth profiles
    it agrees with the Lambert-grid texture, needs no texture per voltage and keeps its settings in the config."""
    lam = _band_decoder(npx=150)
    det = PhysicsDecoder(lam.model_config.replace(physics_band_render="detector"))
    u = np.linspace(0, 3, 61)
    smooth = np.exp(-0.5 * (u[None] / np.array([0.6, 0.8, 1.0, 0.5, 0.7])[:, None]) ** 2)  # no hard edge to snap
    lam.bands.set_profiles(smooth)
    det.bands.set_profiles(smooth)
    q = Rotation.random(6).data.astype(np.float32)
    v = np.array([10.0, 12.5, 17.5, 20.0, 27.5, 30.0], np.float32)  # six voltages in one batch
    a = np.asarray(lam.project({"quaternion": q, "voltage_kv": v}))
    b = np.asarray(det.project({"quaternion": q, "voltage_kv": v}))
    assert _ncc(a, b).min() > 0.995
    # each row is that voltage's pattern, not another's
    one = np.asarray(det.project({"quaternion": q[:1], "voltage_kv": v[:1]}))
    np.testing.assert_allclose(one[0], b[0], rtol=1e-5, atol=1e-5)
    assert _ncc(b[:1], np.asarray(det.project({"quaternion": q[:1], "voltage_kv": v[-1:]}))).item() < 0.999
    assert det.bands.get_config()["render"] == "detector" and not hasattr(det.bands, "_sector_cos")
    with pytest.raises(ValueError, match="physics.band.render"):
        lam.model_config.replace(physics_band_render="stereographic")


def test_with_contrast_switches_raw_training_to_clahe_output_with_the_same_weights(emsoft):
    """A texture learned from raw patterns ("rescale") generates CLAHE'd patterns after with_contrast("clahe"):
    with EMsoft's texture in place, the switched model reproduces the dataset's CLAHE'd projection."""
    from ebsd_keras.data.preprocess import clahe
    from ebsd_keras.data.simulate import rescale_per_pattern

    cfg = _physics(physics_npx=100, physics_contrast="rescale", physics_residual=(0, 0))
    raw_model = CVAEGAN(config=cfg, seed=0)
    raw_model.decoder.master_pattern.set_master_pattern(emsoft.north[0])
    switched = with_contrast(raw_model, "clahe")
    assert switched.model_config.physics_contrast == "clahe" and raw_model.model_config.physics_contrast == "rescale"
    assert len(raw_model.get_weights()) == len(switched.get_weights())
    for a, b in zip(raw_model.get_weights(), switched.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    q = Rotation.random(4).data.astype(np.float32)
    raw = np.asarray(raw_model.generate({"quaternion": q}))[..., 0]
    eq = np.asarray(switched.generate({"quaternion": q}))[..., 0]
    want = clahe(rescale_per_pattern(raw)) / 255.0
    assert np.abs(eq - want).max() <= 1.5 / 255  # OpenCV's CLAHE of the raw model's pattern, to a grey level
    assert _ncc(raw, eq).mean() < 0.98  # and the contrast did change
    with pytest.raises(ValueError, match="learned"):
        with_contrast(raw_model, "learned")


def test_sparse_band_lookup_equals_the_dense_one_with_its_gradients():
    """The detector render looks profiles up only where they can be non-zero; values and gradients (profiles,
    strength slopes, directions) are those of the dense lookup over every (pixel, plane) pair."""
    layer = PhysicsDecoder(
        _band_decoder().model_config.replace(physics_band_render="detector", physics_band_profile=(61, 3.0))
    ).bands
    rng = np.random.default_rng(4)
    layer.set_profiles(rng.random((5, 61)))
    layer.amplitude_slope.assign(rng.normal(size=5).astype(np.float32))
    dirs = rng.normal(size=(3, 3600, 3)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    abs_cos = tf.Variable(np.abs(dirs @ layer._normals.T))  # (B, N, P)
    v = tf.constant([10.0, 17.5, 30.0])
    results = []

    def dense(a, kv):  # one row at a time: each row has its own directions and voltage
        return tf.concat([layer.intensity(a[i], kv[i : i + 1]) for i in range(a.shape[0])], 0)

    for fn in (dense, layer._sparse_intensity):
        with tf.GradientTape() as tape:
            out = fn(abs_cos, v)
            loss = tf.reduce_sum(out**2)
        grads = tape.gradient(loss, [layer.profile_variable, layer.amplitude_slope, abs_cos])
        results.append((np.asarray(out), [np.asarray(tf.convert_to_tensor(g)) for g in grads]))
    (dense, g_dense), (sparse, g_sparse) = results
    assert dense.shape == sparse.shape == (3, 3600) and np.abs(dense).max() > 0.1
    np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_sparse, g_dense, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
