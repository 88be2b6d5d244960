"""``ebsd-keras demo`` end to end on a very small dataset with the shipped model (refinement skipped)."""

import json

import numpy as np

from ebsd_keras.cli import main


def test_demo_generates_with_the_shipped_model_and_reports_fidelity(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "-o", str(out), "--density", "8", "--max-train", "32", "--max-test", "8", "--refine-n", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[5/5]" in printed and "NCC" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated_patterns"] == summary["dataset"]["test"]
    # fidelity is measured with the model made for the EMsoft 20 kV data; other voltages come from the voltage model
    assert summary["model"]["name"] == "ni20-physics" and summary["model"]["data"] == "dynamical"
    assert summary["voltage_model"]["name"] == "ni-voltage-physics"
    assert summary["voltage_model"]["data"] == "kinematical" and len(summary["model"]["sha256"]) == 64
    assert "model ni20-physics v1 serves 20 kV, trained on dynamical patterns" in printed
    assert "/" not in json.dumps(summary["model"])  # no machine path in the summary
    assert len(summary["extra_voltages_kv"]) == 4
    fidelity = summary["fidelity"]
    assert fidelity["ncc_mean"] > 0.99 and fidelity["pixels_within_15pct"] > 0.99  # the shipped model is good
    assert (out / "real_vs_generated.png").stat().st_size > 10_000 and (out / "generated_test.h5").is_file()
    assert main(argv) == 2  # an existing output directory is kept without --overwrite


def test_demo_shows_other_voltages_from_a_voltage_aware_model(monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the shared helper
    from _gen_models import PHYSICS_SINGLE, PHYSICS_VOLTAGE, build_model, save_model

    from ebsd_keras.cli.demo import _voltage_model
    from ebsd_keras.serving.models import trained_voltage_range

    voltage_model = build_model("physics", **PHYSICS_VOLTAGE)
    lo, hi = trained_voltage_range(voltage_model.model_config)
    model, kv, path = _voltage_model(voltage_model, lo)  # voltage-aware itself: its own range, data kV left out
    assert model is voltage_model and path is None and kv == list(np.linspace(lo, hi, 5)[1:])

    single = build_model("physics", **PHYSICS_SINGLE)
    monkeypatch.setenv("EBSD_KERAS_MODELS", str(tmp_path))  # no shipped models: no other voltages
    assert _voltage_model(single, 20.0) == (single, [], None)
    (tmp_path / "ni-voltage").mkdir()
    save_model(tmp_path / "ni-voltage" / "model.keras", "physics", **PHYSICS_VOLTAGE)
    model, kv, path = _voltage_model(single, 20.0)  # single-voltage: the shipped voltage-aware model's voltages
    assert model is not single and model.model_config.use_voltage
    assert path == str(tmp_path / "ni-voltage" / "model.keras") and len(kv) in (4, 5) and min(kv) == lo


def test_step_headers_flush_progress_bars_first(monkeypatch, capsys):
    """Bars go to stderr, headers to stdout: stderr is flushed before each header and the header at once."""
    import sys

    from ebsd_keras.cli.demo import step

    calls = []
    monkeypatch.setattr(sys.stderr, "flush", lambda: calls.append("stderr"))
    real_print = print

    def recording_print(*a, **kw):
        calls.append(("print", kw.get("flush")))
        real_print(*a, **kw)

    monkeypatch.setattr("builtins.print", recording_print)
    step(3, "generating")
    assert calls == ["stderr", ("print", True)]
    assert capsys.readouterr().out == "[3/5] generating\n"


def test_a_demo_that_fails_half_way_leaves_no_partial_output(monkeypatch, tmp_path, capsys):
    """The dataset and TFRecords are made, then generation fails (a full disk): one line, exit 2, and neither OUT
    nor a temporary folder is left beside it."""
    import errno
    import os

    import ebsd_keras.cli.demo as demo

    def full_disk(args, out):
        assert (out / "tfrecords").is_dir()  # the earlier steps did run
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "generated_test.h5"))

    monkeypatch.setattr(demo, "_generate_and_measure", full_disk)
    out = tmp_path / "demo"
    argv = ["demo", "-o", str(out), "--density", "4", "--max-train", "8", "--max-test", "4", "--refine-n", "0"]
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert list(tmp_path.iterdir()) == []
