"""evaluate_generator, write_report and the ``evaluate`` CLI on the tiny Ni 20 kV test set.

The true-pattern generator must give the trivial answers; a generator whose patterns are projected 1.5 deg away
from the input orientation, or blurred, must degrade the metrics in the expected direction.
"""

import json
import math

import cv2
import numpy as np
import pytest
from _ni20 import N_TEST  # noqa: E402 - tests/ is on sys.path (tests/conftest.py)

from ebsd_keras.cli import main
from ebsd_keras.errors import EBSDInputError
from ebsd_keras.evaluation.markdown import report_markdown
from ebsd_keras.evaluation.run import (
    FLOOR_WARNING_DEG,
    PAPER_TABLE1,
    evaluate_generator,
    floor_warnings,
    model_generator,
    true_pattern_generator,
    write_report,
)
from ebsd_keras.io.testset import load_test_set
from ebsd_keras.serving.models import load_model

FIGURES = (
    "patterns.png",
    "pixel_fraction_kde.png",
    "pixel_histogram.png",
    "bce_histogram.png",
    "orientation_error_histogram.png",
)


def _no_nan(obj):
    if isinstance(obj, dict):
        return all(_no_nan(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_no_nan(v) for v in obj)
    return not (isinstance(obj, float) and not math.isfinite(obj))


@pytest.fixture(scope="module")
def true_report(test_set, indexer, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "true"
    results = evaluate_generator(
        true_pattern_generator(test_set),
        test_set,
        indexers={20.0: indexer},
        out_dir=out,
        label="truth",
        progress=False,
        throughput_seconds=0.05,
    )
    return results, out


def test_true_patterns_give_the_trivial_answers(true_report):
    results, _ = true_report
    pix = results["pixel"]["truth"]
    np.testing.assert_allclose(results["per_pattern"]["truth_bce"], results["per_pattern"]["optimal_bce"], atol=1e-6)
    assert abs(pix["bce_gap"]["mean"]) < 1e-6
    assert pix["within_15pct"]["min"] == 1.0
    assert pix["ncc"]["min"] > 1 - 1e-9
    assert 0.45 < pix["optimal_bce"]["mean"] < 0.56  # CLAHE'd Ni: ~0.505 (the paper: 0.503)
    idx = results["indexing"]
    for name in ("truth", "true"):
        assert idx[name]["refined_error_deg"]["mean"] < 0.01
        assert idx[name]["refined_error_deg"]["max"] < 0.1
        assert idx[name]["di_error_deg"]["max"] < 3.0
    assert all(t["pass"] for t in results["target_check"].values())
    assert results["model"]["throughput"]["patterns_per_s"] > 0


def test_report_files(true_report):
    results, out = true_report
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(("report.json", "report.md", *FIGURES))
    for fig in FIGURES:
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "report.json").read_text())
    assert _no_nan(doc)
    assert "_figures" not in doc
    assert doc["paper"] == PAPER_TABLE1
    assert doc["versions"]["kikuchipy"] and doc["versions"]["nlopt"] and doc["versions"]["ebsd_keras"]
    assert doc["config"]["dictionary"]["20"]["dictionary_size"] == 30443
    assert doc["indexing"]["true"]["refined_error_deg"]["mean"] == pytest.approx(
        results["indexing"]["true"]["refined_error_deg"]["mean"]
    )
    assert len(doc["per_pattern"]["true_refined_error_deg"]) == N_TEST
    md = (out / "report.md").read_text()
    for text in ("0.541", "0.503", "0.650° ± 0.257°", "0.142° ± 0.061°", "true patterns (floor)"):
        assert text in md
    assert "issue" not in md.lower() and "## Warnings" not in md  # a good floor: no warning
    assert doc["warnings"] == []
    # a report can be rewritten from its own JSON (no pattern grid then), and never over an existing one by default
    with pytest.raises(FileExistsError):
        write_report(doc, out)
    again = write_report(doc, out.parent / "again")
    assert (again / "report.md").read_text() == md


def test_rotated_generator_degrades(test_set, indexer, perturb, true_report):
    """Patterns of orientations 1.5 deg off: worse BCE and pixels, refined error ~1.5 deg vs ~0 for the floor."""
    by_key = {}
    q_rot = perturb(test_set.quaternion, 1.5, seed=1)
    rotated = indexer.project(q_rot, dtype="float64") / 255.0
    for i, q in enumerate(test_set.quaternion.astype(np.float32)):
        by_key[q.tobytes()] = rotated[i]

    def generate(q, v):
        return np.stack([by_key[x.tobytes()] for x in np.asarray(q, np.float32)])

    res = evaluate_generator(
        generate, test_set, indexers={20.0: indexer}, label="rotated", progress=False, throughput_seconds=0.05
    )
    floor = true_report[0]
    pix = res["pixel"]["rotated"]
    assert pix["bce_gap"]["min"] > 1e-3
    assert pix["within_15pct"]["mean"] < 0.99
    assert pix["ncc"]["max"] < 0.99
    ref = res["indexing"]["rotated"]["refined_error_deg"]
    assert ref["mean"] == pytest.approx(1.5, abs=0.05)
    assert ref["mean"] > 50 * floor["indexing"]["true"]["refined_error_deg"]["mean"]
    assert not res["target_check"]["refined_error_deg_mean"]["pass"]


def test_blurred_generator_degrades(test_set, indexer, true_report):
    blurred = {
        q.tobytes(): cv2.GaussianBlur(p, (0, 0), 2.0) / 255.0
        for q, p in zip(test_set.quaternion.astype(np.float32), test_set.patterns, strict=True)
    }

    def generate(q, v):
        return np.stack([blurred[x.tobytes()] for x in np.asarray(q, np.float32)])

    res = evaluate_generator(
        generate,
        test_set,
        indexers={20.0: indexer},
        refine=False,
        label="blurred",
        progress=False,
        throughput_seconds=0.05,
    )
    floor = true_report[0]
    pix = res["pixel"]["blurred"]
    assert pix["bce_gap"]["mean"] > 0.01
    assert pix["within_15pct"]["mean"] < floor["pixel"]["true"]["within_15pct"]["mean"]
    assert res["indexing"]["blurred"]["di_score"]["mean"] < res["indexing"]["true"]["di_score"]["mean"]
    assert "refined_error_deg" not in res["indexing"]["blurred"]


def test_generator_output_is_validated(test_set, indexer):
    for bad, match in (
        (lambda q, v: np.zeros((len(q), 30, 30)), "shape"),
        (lambda q, v: np.full((len(q), 60, 60), np.nan), "NaN"),
        (lambda q, v: np.full((len(q), 60, 60), 255.0), r"\[0, 1\]"),
    ):
        with pytest.raises(EBSDInputError, match=match):
            evaluate_generator(
                bad, test_set, indexers={20.0: indexer}, refine=False, progress=False, throughput_seconds=0.05
            )


def test_tfrecord_source_matches_h5(dataset_dir, test_set, tmp_path):
    from ebsd_keras.io.tfrecord import write_tfrecords

    tfr = tmp_path / "tfr"
    write_tfrecords([(s, dataset_dir / f"{s}.h5") for s in ("train", "test")], tfr, progress=False)
    ts = load_test_set(tfr, n=N_TEST, seed=0)
    np.testing.assert_array_equal(ts.patterns, test_set.patterns)
    np.testing.assert_array_equal(ts.index, test_set.index)
    np.testing.assert_allclose(ts.quaternion, test_set.quaternion, atol=1e-6)
    assert ts.training_semi_edge_steps == test_set.training_semi_edge_steps == 6
    assert ts.metadata["detector"] == test_set.metadata["detector"]
    with pytest.raises(EBSDInputError, match="val"):
        load_test_set(tfr, split="val")


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.models.presets import get_preset

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    CVAEGAN(config=get_preset("tiny"), seed=0).save(path)
    return path


def test_model_evaluation_with_critic_and_prior_samples(tiny_model_path, test_set, indexer):
    model = load_model(tiny_model_path)
    res = evaluate_generator(
        model_generator(model),
        test_set,
        indexers={20.0: indexer},
        refine=False,
        model=model,
        label="tiny",
        variants={"tiny (prior)": model_generator(model, sample=True, seed=1)},
        progress=False,
        throughput_seconds=0.05,
    )
    assert res["model"]["params"] == model.count_params() > 0
    assert res["model"]["decoder_params"] > 0 and res["model"]["throughput"]["patterns_per_s"] > 0
    assert set(res["critic"]) == {"real", "generated"}
    assert 0 <= res["critic"]["real"]["orientation_error_deg"]["mean"] <= 62.8
    assert res["pixel"]["tiny"]["bce_gap"]["mean"] > 0.01  # untrained
    assert res["pixel"]["tiny (prior)"]["bce"]["n"] == N_TEST
    a, b = model_generator(model, sample=True, seed=1), model_generator(model, sample=True, seed=1)
    q, v = test_set.quaternion[:4].astype(np.float32), test_set.voltage_kv[:4]
    np.testing.assert_array_equal(a(q, v), b(q, v))  # seeded prior samples are reproducible
    assert a(q, v).shape == (4, 60, 60)


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------

FAST = ["--n", "6", "--dictionary-resolution", "8", "--no-refine", "--quiet"]


def test_cli_true_only(dataset_dir, tmp_path, capsys):
    out = tmp_path / "floor"
    assert main(["evaluate", "--true-only", "--test", str(dataset_dir / "test.h5"), "-o", str(out), *FAST]) == 0
    assert (out / "report.json").exists() and (out / "report.md").exists()
    doc = json.loads((out / "report.json").read_text())
    assert doc["true_only"] and doc["test_set"]["n"] == 6 and list(doc["indexing"]) == ["true"]
    assert "true:" in capsys.readouterr().out
    # refuses to overwrite, and leaves the old report alone
    assert main(["evaluate", "--true-only", "--test", str(dataset_dir), "-o", str(out), *FAST]) == 2
    assert "already exists" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text()) == doc


def test_cli_model(dataset_dir, tiny_model_path, tmp_path):
    out = tmp_path / "model"
    args = ["evaluate", "--model", str(tiny_model_path), "--test", str(dataset_dir), "-o", str(out), *FAST]
    assert main(args) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["label"] == "tiny" and "tiny (prior samples)" in doc["pixel"] and doc["critic"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--true-only", "--test", "{missing}"], "no such file"),
        (["--true-only", "--model", "{model}", "--test", "{data}"], "--true-only"),
        (["--model", "{folder}", "--test", "{data}"], "model folder needs one .keras model file"),
        (["--model", "{garbage}", "--test", "{data}"], "not a Keras"),
        (["--true-only", "--test", "{data}", "--n", "0"], "--n"),
        (["--true-only", "--test", "{data}", "--dictionary-resolution", "0.01"], "resolution"),
        (["--true-only", "--test", "{garbage}"], "HDF5"),
    ],
)
def test_cli_bad_input_exits_2(extra, message, dataset_dir, tiny_model_path, tmp_path, capsys):
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model")
    (tmp_path / "folder").mkdir()
    fill = dict(missing=tmp_path / "nope.h5", model=tiny_model_path, data=dataset_dir, garbage=garbage)
    fill["folder"] = tmp_path / "folder"
    out = tmp_path / "out"
    args = ["evaluate", *[a.format(**fill) for a in extra], "-o", str(out), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ebsd-keras evaluate: error:" in err and message in err, err
    assert not out.exists()


def test_a_coarse_dictionary_floor_is_warned_about_in_the_report(true_report):
    """A true-pattern floor of 7.3 deg +- 18.3 deg (a dictionary far too coarse) warns; a good floor does not."""
    good = {"di_error_deg": {"mean": 0.9, "std": 0.3}, "refined_error_deg": {"mean": 0.01, "std": 0.01}}
    assert floor_warnings(good, "2 deg") == []
    coarse = {"di_error_deg": {"mean": 9.0, "std": 20.0}, "refined_error_deg": {"mean": 7.3, "std": 18.3}}
    (warning,) = floor_warnings(coarse, "training density (cubochoric N = 8)")
    assert "7.30 deg" in warning and "too coarse" in warning and "--dictionary-resolution" in warning
    assert floor_warnings({"di_error_deg": {"mean": FLOOR_WARNING_DEG + 0.5, "std": 1.0}})  # DI only: still checked
    doc = json.loads((true_report[1] / "report.json").read_text())
    md = report_markdown({**doc, "warnings": [warning]})
    assert md.index("## Warnings") < md.index("too coarse") < md.index("| metric")


def test_a_users_emsoft_file_gets_the_shipped_model_and_the_embedded_master_pattern(tmp_path):
    """No provenance, Ni crystal, 20 kV: the shipped 20 kV model, the embedded EMsoft master pattern and CLAHE are
    assumed, and said in one line; another crystal keeps its own (missing) master pattern."""
    import h5py

    from ebsd_keras.data.simulate import embedded_master_pattern_path
    from ebsd_keras.evaluation.run import assume_defaults
    from ebsd_keras.io.testset import TestSet

    def user_file(name, space_group, a):
        path = tmp_path / name
        with h5py.File(path, "w") as f:
            f["CrystalData/SpaceGroupNumber"] = np.array([space_group], np.int32)
            f["CrystalData/LatticeParameters"] = np.array([a, a, a, 90, 90, 90], np.float64)
        ts = TestSet(np.zeros((2, 60, 60), np.uint8), np.tile([1.0, 0, 0, 0], (2, 1)), np.full(2, 20.0),
                     np.arange(2), {}, {"path": str(path), "format": "emsoft-h5"})  # fmt: skip
        return ts

    chosen = assume_defaults(user_file("ni.h5", 225, 0.35236))
    assert chosen["model"].parent.name == "ni20-physics"
    assert chosen["master_pattern"] == embedded_master_pattern_path() and chosen["preprocessing"] == "clahe"
    line = chosen["assumed"]
    assert "\n" not in line and "ni20-physics" in line and "embedded EMsoft Ni 20 kV" in line and "CLAHE" in line
    other = assume_defaults(user_file("al.h5", 225, 0.405), model="given.keras", preprocessing="none")
    assert other == {"model": "given.keras", "master_pattern": None, "preprocessing": "none", "assumed": None}


def test_kikuchipy_cross_check_rows_appear_only_when_measured(true_report):
    doc = json.loads((true_report[1] / "report.json").read_text())
    assert "kikuchipy-refined" not in report_markdown(doc)
    stats = {**doc["indexing"]["true"]["refined_error_deg"], "n": 7}
    true = {**doc["indexing"]["true"], "kikuchipy_refined_error_deg": stats, "bobyqa_vs_kikuchipy_deg": stats}
    md = report_markdown({**doc, "indexing": {**doc["indexing"], "true": true}})
    assert "| kikuchipy-refined error (7 patterns) |" in md and "| BOBYQA vs kikuchipy refinement |" in md


def test_a_floor_on_the_dictionary_grid_is_warned_about():
    """Test orientations that are dictionary points index exactly (DI error 0): a degenerate floor, said once."""
    from ebsd_keras.evaluation.run import DEGENERATE_FLOOR_DEG

    on_grid = {"di_error_deg": {"mean": 0.0, "std": 0.0}, "refined_error_deg": {"mean": 0.002, "std": 0.001}}
    (warning,) = floor_warnings(on_grid, "training density (cubochoric N = 20)")
    assert "on the dictionary's grid" in warning and "N = 20" in warning
    off_grid = {
        "di_error_deg": {"mean": 10 * DEGENERATE_FLOOR_DEG, "std": 0.1},
        "refined_error_deg": on_grid["refined_error_deg"],
    }
    assert floor_warnings(off_grid) == []
