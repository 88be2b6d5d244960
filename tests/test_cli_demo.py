"""``ebsd-keras demo`` end to end on a very small dataset with the shipped model (refinement skipped)."""

import json

from ebsd_keras.cli import main


def test_demo_generates_with_the_shipped_model_and_reports_fidelity(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "-o", str(out), "--density", "8", "--max-train", "32", "--max-test", "8", "--refine-n", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[5/5]" in printed and "NCC" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"].endswith("model.keras") and summary["generated_patterns"] == summary["dataset"]["test"]
    fidelity = summary["fidelity"]
    assert fidelity["ncc_mean"] > 0.99 and fidelity["pixels_within_15pct"] > 0.99  # the shipped model is good
    assert (out / "real_vs_generated.png").stat().st_size > 10_000 and (out / "generated_test.h5").is_file()
    assert main(argv) == 2  # an existing output directory is kept without --overwrite


def test_demo_shows_other_voltages_for_a_voltage_aware_model():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the shared helper
    from _gen_models import PHYSICS_SINGLE, PHYSICS_VOLTAGE, build_model

    from ebsd_keras.cli.demo import _extra_voltages

    assert _extra_voltages(build_model("physics", **PHYSICS_VOLTAGE), (15.0, 25.0), 20.0) == [15.0, 25.0]
    assert _extra_voltages(build_model("physics", **PHYSICS_SINGLE), (20.0, 20.0), 20.0) == []
    assert _extra_voltages(build_model(use_voltage=True), (10.0, 30.0), 20.0) == [10.0, 15.0, 25.0, 30.0]
