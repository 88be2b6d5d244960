"""ebsd_keras.tuning: search-space validation, the trial's TrainConfigs, a resumable seeded search and its exports."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ebsd_keras.errors import EBSDInputError
from ebsd_keras.tuning.space import HYPERPARAMETERS, default_values, load_search_space

REPO = Path(__file__).resolve().parents[1]

#: Trials of a few eager steps of the tiny preset: seconds each.
TINY_BUDGET = """\
[search]
preset = "tiny"
max_trials = 2
seed = 3

[trial]
batch_size = 8
steps_per_epoch = 1
validation_steps = 1
cvae_epochs = 1
critic_epochs = 1
gan_epochs = 1
n_critic = 1
run_eagerly = true
"""

TINY_SPACE = (
    TINY_BUDGET
    + """
[hyperparameters]
latent_dim = { type = "int", min = 8, max = 512, sampling = "log" }
kl = { type = "float", min = 0.1, max = 10.0, sampling = "log" }
kl_threshold_low = { type = "float", min = 1.0, max = 10.0 }
kl_threshold_high = { type = "float", min = 10.0, max = 50.0 }
learning_rate = { type = "float", min = 1e-5, max = 1e-3, sampling = "log" }
"""
)


def write(tmp_path, text, name="space.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def make_tiny_tfrecords(tmp, n_train=32, n_val=8, seed=0):
    """60x60 smooth-blob patterns (train + val) through the real writers; returns the TFRecord directory."""
    from ebsd_keras.io.emsoft import write_emebsd
    from ebsd_keras.io.tfrecord import write_tfrecords

    rng = np.random.default_rng(seed)
    n = n_train + n_val
    yy, xx = np.mgrid[0:60, 0:60] / 60
    c = rng.uniform(0.2, 0.8, size=(n, 2))
    blobs = np.exp(-((yy[None] - c[:, :1, None]) ** 2 + (xx[None] - c[:, 1:, None]) ** 2) / 0.05)
    patterns = np.clip(255 * blobs / blobs.max(), 0, 255).astype(np.uint8)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(n, 3))
    write_emebsd(tmp / "train.h5", patterns[:n_train], euler[:n_train], voltage_kv=20.0)
    write_emebsd(tmp / "val.h5", patterns[n_train:], euler[n_train:], voltage_kv=20.0)
    write_tfrecords([("train", tmp / "train.h5"), ("val", tmp / "val.h5")], tmp / "rec", progress=False)
    return tmp / "rec"


# ---------------------------------------------------------------------------------------------------------------------
# search-space files
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["default.toml", "small.toml"])
def test_shipped_spaces_are_valid(name):
    space = load_search_space(REPO / "tuning" / name)
    hps = space.hyperparameters
    assert {"latent_dim", "kl", "reconstruction", "orientation", "learning_rate"} <= set(hps)
    assert hps["latent_dim"] == {"type": "int", "min": 8, "max": 512, "sampling": "log"}
    assert set(hps) <= set(HYPERPARAMETERS)


@pytest.mark.parametrize(
    "entry, field, needle",
    [
        ('latnt_dim = { type = "int", min = 8, max = 64 }', "hyperparameters.latnt_dim", "unknown hyper-parameter"),
        ('kl = { type = "float", min = 5.0, max = 1.0 }', "hyperparameters.kl.min", "must be below max"),
        ('kl = { type = "float", min = 1.0, max = 1.0 }', "hyperparameters.kl.min", "must be below max"),
        ('kl = { type = "float", min = 0.0, max = 1.0, sampling = "log" }', "hyperparameters.kl.min", "needs min > 0"),
        ('kl = { type = "float", min = -1.0, max = 1.0 }', "hyperparameters.kl.min", "out of range"),
        ('learning_rate = { type = "float", min = 0.0, max = 0.1 }', "hyperparameters.learning_rate.min", "> 0"),
        ('beta_1 = { type = "fixed", value = 1.0 }', "hyperparameters.beta_1.value", "out of range"),
        ('latent_dim = { type = "int", min = 8.5, max = 64 }', "hyperparameters.latent_dim.min", "integer"),
        ('latent_dim = { type = "float", min = 8, max = 64 }', "hyperparameters.latent_dim.type", "integer"),
        ('kl = { type = "float", min = 0.1, max = 1.0, sampling = "cubic" }', "hyperparameters.kl.sampling", "one of"),
        ('kl = { type = "float", min = 0.1, max = 1.0, stepp = 0.1 }', "hyperparameters.kl.stepp", "unknown key"),
        ('kl = { type = "uniform", min = 0.1, max = 1.0 }', "hyperparameters.kl.type", "must be one of"),
        ('kl = { type = "float", max = 1.0 }', "hyperparameters.kl.min", "required"),
        ('n_critic = { type = "choice", values = [] }', "hyperparameters.n_critic.values", "non-empty"),
        ('n_critic = { type = "choice", values = [1, 0] }', "hyperparameters.n_critic.values[1]", "out of range"),
        (
            'kl_threshold_low = { type = "float", min = 20.0, max = 30.0 }\n'
            'kl_threshold_high = { type = "float", min = 10.0, max = 15.0 }',
            "hyperparameters.kl_threshold_low",
            "can never be below",
        ),
    ],
)
def test_bad_hyperparameter_is_refused_naming_file_and_field(tmp_path, entry, field, needle):
    path = write(tmp_path, TINY_BUDGET + "\n[hyperparameters]\n" + entry + "\n")
    with pytest.raises(EBSDInputError) as info:
        load_search_space(path)
    assert info.value.field == field
    assert str(path) in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize(
    "text, field",
    [
        ("[serch]\nmax_trials = 2\n", "serch"),
        ("[search]\nmax_trials = 0\n", "search.max_trials"),
        ('[search]\npreset = "huge"\n', "search.preset"),
        ("[trial]\nsteps = 3\n", "trial.steps"),
        ('[trial]\nlipschitz = "spectral"\n', "trial.lipschitz"),
        ("[objective]\nbce_gap_scale = 0\n", "objective.bce_gap_scale"),
        ("[model]\nlatent_dim = 4\n", "model.latent_dim"),
        ("[model]\nno_such_field = 1\n", "model"),
        ("[search]\nseed = 1\n", "hyperparameters"),  # no hyper-parameters at all
    ],
)
def test_bad_tables_are_refused(tmp_path, text, field):
    hps = "" if field == "hyperparameters" else '\n[hyperparameters]\nkl = { type = "fixed", value = 1.0 }\n'
    path = write(tmp_path, text + hps)
    with pytest.raises(EBSDInputError) as info:
        load_search_space(path)
    assert info.value.field == field


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "[search\nmax_trials = 2\n")
    with pytest.raises(EBSDInputError, match="not valid TOML"):
        load_search_space(path)


# ---------------------------------------------------------------------------------------------------------------------
# the trial's training configurations
# ---------------------------------------------------------------------------------------------------------------------
def test_trial_configs_carry_the_values_and_train_accepts_them(tmp_path):
    from ebsd_keras.cli import build_parser
    from ebsd_keras.cli.train import config_from_args
    from ebsd_keras.tuning.hypermodel import trial_train_configs

    space = load_search_space(write(tmp_path, TINY_SPACE))
    values = {"latent_dim": 37, "kl": 2.5, "kl_threshold_low": 30.0, "kl_threshold_high": 12.0,
              "learning_rate": 4e-4, "orientation": 123.0, "tuner/epochs": 9}  # fmt: skip
    cfgs = trial_train_configs(space, values, "data/x", tmp_path / "run")
    cvae, critic, gan = cfgs["cvae"], cfgs["critic"], cfgs["gan"]
    assert cvae.model == {"latent_dim": 37} and cvae.preset == "tiny" and cvae.epochs == 1
    assert cvae.loss_weights == {"kl": 2.5, "reconstruction": 1.0}
    assert cvae.kl_schedule == {"thresholds": [12.0, 30.0]}  # sorted
    assert critic.init_from == str(tmp_path / "run" / "cvae" / "model.keras") and critic.model == {}
    assert critic.loss_weights["orientation"] == 123.0
    assert gan.init_from == str(tmp_path / "run" / "critic" / "model.keras")
    assert gan.learning_rate == pytest.approx(2e-4) and gan.loss_weights["kl"] == 2.5
    assert gan.loss_weights["adversarial_generator"] == default_values("tiny")["adversarial_generator"]
    # written as files, `ebsd-keras train --config FILE` takes them as they are
    for phase, cfg in cfgs.items():
        cfg.save(tmp_path / f"{phase}.json")
        args = build_parser().parse_args(["train", "--config", str(tmp_path / f"{phase}.json")])
        assert config_from_args(args).to_dict() == cfg.to_dict()


def test_default_values_are_the_package_defaults():
    from ebsd_keras.losses import KLSchedule
    from ebsd_keras.training.config import PHASE_DEFAULTS

    v = default_values("tiny")
    assert v["latent_dim"] == 8 and v["learning_rate"] == PHASE_DEFAULTS["cvae"]["learning_rate"]
    assert [v["kl_threshold_low"], v["kl_threshold_high"]] == list(KLSchedule().thresholds)
    assert v["orientation"] == PHASE_DEFAULTS["gan"]["loss_weights"]["orientation"]
    assert set(v) == set(HYPERPARAMETERS)


# ---------------------------------------------------------------------------------------------------------------------
# a real (tiny) search: seeded, resumable, TensorBoard HParams, table, export
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_tfrecords(tmp_path_factory.mktemp("tune_data"))


def test_search_resumes_exports_and_logs_hparams(tiny_data, tmp_path):
    from ebsd_keras.cli import build_parser
    from ebsd_keras.cli.train import config_from_args
    from ebsd_keras.tuning import search

    space = load_search_space(write(tmp_path, TINY_SPACE))
    out = tmp_path / "out"
    tuner = search.run_search(space, tiny_data, out, "random", "p", max_trials=1)
    (first,) = search.trial_rows(tuner)
    assert first["status"] == "COMPLETED" and np.isfinite(first["val_fidelity"])

    # rerun with a larger budget: the same project continues with one more trial; again: nothing left to do
    more = search.run_search(space, tiny_data, out, "random", "p", max_trials=2)
    search.run_search(space, tiny_data, out, "random", "p", max_trials=2)
    rows = search.trial_rows(more)
    assert len(rows) == 2 and all(r["status"] == "COMPLETED" for r in rows)
    again = search.make_tuner(space, more.hypermodel, "random", out, "p", max_trials=2)
    assert len(again.oracle.trials) == 2
    assert {r["trial_id"]: r["latent_dim"] for r in search.trial_rows(again)} == {
        r["trial_id"]: r["latent_dim"] for r in rows
    }
    assert first in rows
    for r in rows:  # the objective is its two normalised parts
        assert r["val_gen_disorientation_deg"] >= 0
        expect = r["val_gen_bce_gap"] / space.bce_gap_scale + r["val_gen_disorientation_deg"] / 10.0
        assert r["val_fidelity"] == pytest.approx(expect, rel=1e-6)

    # TensorBoard: one directory per trial, with the HParams plugin's summary
    for trial_id in ("0", "1"):
        events = list((out / "tensorboard" / trial_id / "execution0").glob("events.out.tfevents.*"))
        assert events and any(b"hparams" in e.read_bytes() for e in events)

    paths = search.write_summary(rows, out)
    assert paths["csv"].read_text().splitlines()[0].startswith("trial_id,status,val_fidelity")
    assert paths["md"].read_text().count("COMPLETED") == 2
    best = search.export_best(more, space, tiny_data, out)
    assert best["score"] == min(r["val_fidelity"] for r in rows) == rows[0]["val_fidelity"]
    saved = json.loads((out / "best" / "hyperparameters.json").read_text())
    assert saved["hyperparameters"]["latent_dim"] == rows[0]["latent_dim"]
    args = build_parser().parse_args(["train", "--config", best["configs"]["cvae"]])
    assert config_from_args(args).model == {"latent_dim": rows[0]["latent_dim"]}

    # the recorded space protects the project from a changed file
    changed = load_search_space(write(tmp_path, TINY_SPACE.replace("max = 512", "max = 256"), "other.toml"))
    with pytest.raises(EBSDInputError, match="different space"):
        search.run_search(changed, tiny_data, out, "random", "p")


def test_same_seed_same_trials(tmp_path):
    """The oracle is seeded: two fresh searches propose the same values (no training needed to see it)."""
    import keras_tuner

    from ebsd_keras.tuning import search
    from ebsd_keras.tuning.hypermodel import CVAEGANHyperModel

    space = load_search_space(write(tmp_path, TINY_SPACE))
    proposals = []
    for run in ("a", "b"):
        tuner = search.make_tuner(space, CVAEGANHyperModel(space, "unused"), "random", tmp_path / run, "p")
        trial = tuner.oracle.create_trial("tuner0")
        proposals.append(dict(trial.hyperparameters.values))
    assert proposals[0] == proposals[1]
    assert isinstance(tuner, keras_tuner.RandomSearch)


def test_baseline_is_reused_only_for_the_same_space_and_exports_its_configs(tmp_path, monkeypatch):
    from ebsd_keras.tuning import search

    space = load_search_space(write(tmp_path, TINY_SPACE))
    saved = {"values": {}, "metrics": {"val_fidelity": 1.5}, "epoch": 0, "space": space.to_dict()}
    (tmp_path / "out" / "baseline").mkdir(parents=True)
    (tmp_path / "out" / "baseline" / "metrics.json").write_text(json.dumps(saved))
    assert search.run_baseline(space, "data/x", tmp_path / "out") == saved  # no training: nothing to compare
    cfg = json.loads((tmp_path / "out" / "baseline" / "cvae.json").read_text())
    assert cfg["model"] == {"latent_dim": 8} and cfg["loss_weights"] == {"kl": 1.0, "reconstruction": 1.0}

    # another budget: the stored baseline does not count, it is trained again
    other = load_search_space(
        write(tmp_path, TINY_SPACE.replace("steps_per_epoch = 1", "steps_per_epoch = 2"), "b.toml")
    )
    trained = []
    monkeypatch.setattr("ebsd_keras.tuning.hypermodel.CVAEGANHyperModel.build", lambda self, hp: trained.append(1))
    monkeypatch.setattr(
        "ebsd_keras.tuning.hypermodel.CVAEGANHyperModel.fit", lambda self, hp, model: {"val_fidelity": 7.0}
    )
    assert search.run_baseline(other, "data/x", tmp_path / "out")["metrics"] == {"val_fidelity": 7.0}
    assert trained == [1]
