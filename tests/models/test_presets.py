"""Model presets: config validation and round trips, parameter counts (analytic == built, paper ~ 1.24 B)."""

import time

import pytest

import ebsd_keras.models.cvaegan  # noqa: F401  (registers the physics and field decoder kinds)
from ebsd_keras.models.critic import Critic
from ebsd_keras.models.decoders import DECODERS, CNNDecoder, build_decoder
from ebsd_keras.models.encoder import Encoder
from ebsd_keras.models.presets import PRESETS, ModelConfig, PhysicsConfig, count_parameters, get_preset
from ebsd_keras.simulations.geometry import DetectorGeometry

# The authors' model, rebuilt layer by layer (docs/reference-implementation.md).
PAPER_ENCODER, PAPER_DECODER, PAPER_CRITIC = 246.9e6, 512.9e6, 484.0e6

# The paper's layer plan at a small width: same code paths (add-conditioning, transposed convs, exit convs, ReLU
# critic, no conv biases), quick to build.
PAPER_REDUCED = dict(
    latent_dim=10,
    encoder_stem=(8, 8),
    encoder_blocks=((8, 1), (16, 1), (24, 2), (16, 2)),
    encoder_dense=(32, 32, 16),
    decoder_dense=(16, 32, 64),
    decoder_start=(15, 15, 8),
    decoder_stem=(8, 8),
    decoder_blocks=((16, 1), (24, 2), (16, 2)),
    critic_stem=(8, 8),
    critic_blocks=((8, 1), (16, 1), (24, 1), (8, 2)),
    critic_exit=(8, 8),
    critic_dense=(32,),
    critic_score_dense=(16, 8),
    critic_quaternion_dense=(32, 16, 8),
    critic_voltage_dense=(16, 8),
)


def built_counts(cfg):
    return {
        "encoder": Encoder(cfg).count_params(),
        "decoder": build_decoder(cfg).count_params(),
        "critic": Critic(cfg).count_params(),
    }


@pytest.mark.parametrize(
    "cfg",
    [
        get_preset("tiny"),
        get_preset("tiny", use_voltage=True, conditioning="concat", decoder_upsampling="transpose"),
        get_preset("tiny", conditioning="add", encoder_pooling="global_avg", critic_pooling="global_avg"),
        get_preset("paper", **PAPER_REDUCED),
        get_preset("paper", use_voltage=True, **PAPER_REDUCED),
        get_preset("physics", physics_npx=20, use_voltage=True, physics_voltage_model="bands", physics_band_blur=2),
        get_preset(
            "physics", physics_npx=20, use_voltage=True, physics_voltage_model="bands", physics_band_render="detector"
        ),
    ],
    ids=[
        "tiny",
        "tiny-voltage-concat-transpose",
        "tiny-add-gap",
        "paper-reduced",
        "paper-reduced-voltage",
        "physics-bands-lambert",
        "physics-bands-detector",
    ],
)
def test_analytic_count_equals_built_model(cfg):
    analytic = count_parameters(cfg)
    built = built_counts(cfg)
    assert {k: analytic[k] for k in built} == built
    assert analytic["total"] == sum(built.values())


def test_compact_count_equals_built_and_fits_budget():
    cfg = get_preset("compact", use_voltage=True)  # the larger of the two compact variants
    analytic = count_parameters(cfg)
    assert {k: analytic[k] for k in ("encoder", "decoder", "critic")} == built_counts(cfg)
    assert analytic["total"] <= 10_000_000
    assert count_parameters("compact")["total"] <= 10_000_000


def test_tiny_is_tiny():
    assert count_parameters(get_preset("tiny", use_voltage=True))["total"] < 200_000


def test_paper_parameter_counts_match_the_authors_model():
    n = count_parameters("paper")
    assert n["encoder"] == pytest.approx(PAPER_ENCODER, abs=0.05e6)
    assert n["decoder"] == pytest.approx(PAPER_DECODER, abs=0.05e6)
    assert n["critic"] == pytest.approx(PAPER_CRITIC, abs=0.05e6)
    assert n["total"] == pytest.approx(1.24e9, rel=0.02)


@pytest.mark.slow
def test_paper_model_builds_with_the_counted_parameters():
    """Builds the 1.24 B model part by part (~1.5 min and ~12 GB peak RAM on 2 CPU cores)."""
    expected = count_parameters("paper")
    for name, make in (("encoder", Encoder), ("decoder", build_decoder), ("critic", Critic)):
        start = time.perf_counter()
        model = make("paper")
        assert model.count_params() == expected[name], name
        print(f"{name}: {model.count_params():,} parameters built in {time.perf_counter() - start:.1f} s")
        del model


def test_default_preset_is_compact():
    assert get_preset() is PRESETS["compact"]
    assert get_preset().conditioning in ("film", "concat")
    assert get_preset().decoder_upsampling == "resize"


def test_get_preset_overrides_and_unknown_name():
    cfg = get_preset("compact", use_voltage=True, latent_dim=64)
    assert cfg.use_voltage and cfg.latent_dim == 64 and cfg.attribute_dim == 5
    assert PRESETS["compact"].latent_dim != 64  # presets are not mutated
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("huge")


def test_config_dict_round_trip():
    for cfg in PRESETS.values():
        again = ModelConfig.from_dict(cfg.to_dict())
        assert again == cfg
        assert isinstance(again.encoder_blocks[0], tuple)
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**PRESETS["tiny"].to_dict(), "latent_dims": 3})


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"conditioning": "multiply"}, "conditioning"),
        ({"decoder_start": (4, 4, 16)}, "image shape"),
        ({"logvar_bounds": (4.0, -10.0)}, "logvar_bounds"),
        ({"encoder_blocks": ((8, 3),)}, "encoder_blocks"),
        ({"decoder_upsampling": "pixelshuffle"}, "decoder_upsampling"),
    ],
)
def test_invalid_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        get_preset("tiny", **overrides)


def test_decoder_registry():
    assert DECODERS["cnn"] is CNNDecoder
    assert isinstance(build_decoder(get_preset("tiny")), CNNDecoder)
    with pytest.raises(ValueError, match="unknown decoder kind"):
        build_decoder(get_preset("tiny", decoder="physics-not-yet"))


# ------------------------------------------------------------------------------------------------------------------
# Nested detector and physics settings (one DetectorGeometry in the config; flat physics_* names of older files)
# ------------------------------------------------------------------------------------------------------------------


def test_config_holds_one_detector_geometry_whose_shape_is_the_pattern_shape():
    cfg = get_preset("physics", image_shape=(40, 40), decoder_start=(5, 5, 16), decoder_blocks=((16, 2), (8, 4)))
    assert isinstance(cfg.detector, DetectorGeometry)
    assert cfg.detector.shape == (40, 40)
    moved = cfg.replace(detector=DetectorGeometry(pc=(0.4, 0.3, 0.7), tilt_deg=0.0))
    assert moved.detector.pc == (0.4, 0.3, 0.7) and moved.detector.shape == (40, 40)


def test_flat_physics_names_of_older_configs_map_into_the_nested_settings():
    flat = {
        "name": "old",
        "decoder": "physics",
        "physics_npx": 50,
        "physics_detector_pc": [0.45, 0.55, 0.65],
        "physics_sample_tilt_deg": 68.0,
        "physics_clahe_tiles": [2, 3],
        "physics_band_render": "detector",
    }
    cfg = ModelConfig.from_dict(flat)
    assert cfg.physics.npx == 50 and cfg.physics.clahe.tiles == (2, 3) and cfg.physics.band.render == "detector"
    assert cfg.detector.pc == (0.45, 0.55, 0.65) and cfg.detector.sample_tilt_deg == 68.0
    # the old names stay readable, and the nested dict form round-trips to an equal config
    assert cfg.physics_npx == 50 and cfg.physics_detector_pc == (0.45, 0.55, 0.65)
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg and isinstance(cfg.to_dict()["physics"]["clahe"], dict)
    assert get_preset("physics", physics_symmetry="none").physics == PhysicsConfig(symmetry="none")


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"physics_npx": 1}, "physics.npx"),
        ({"physics_clahe_tiles": (0, 4)}, "physics.clahe.tiles"),
        ({"physics": {"band": {"render": "stereographic"}}}, "physics.band.render"),
        ({"physics": {"no_such": 1}}, "no_such"),
    ],
)
def test_invalid_nested_settings_name_their_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        get_preset("physics").replace(**overrides) if "physics" in overrides else get_preset("physics", **overrides)
