"""``ebsd-keras index``: kikuchipy's experimental Ni map indexed through the shipped model (coarse and quick)."""

import json
from pathlib import Path

import h5py
import kikuchipy as kp
import numpy as np

from ebsd_keras.cli import main

NI = Path(kp.data.__file__).parent / "kikuchipy_h5ebsd" / "patterns.h5"


def test_index_writes_a_crystal_map_and_an_ang_file(tmp_path, capsys):
    from orix import io

    out = tmp_path / "xmap.h5"
    argv = [
        "index",
        str(NI),
        "-o",
        str(out),
        "--resolution",
        "5",
        "--iterations",
        "6",
        "--average",
        "3",
        "--quiet",
        "--refine-pc",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "model ni20-physics at 20 kV" in printed and "refined in" in printed
    xmap = io.load(str(out))
    assert xmap.size == 9 and xmap.shape == (3, 3) and xmap.phases[0].point_group.name == "m-3m"
    scores, di = xmap.prop["scores"], xmap.prop["di_scores"]
    assert np.all(scores >= di - 1e-4) and scores.mean() > di.mean() + 0.1  # refinement raised the NCC
    pc = np.stack([xmap.prop[f"pc_{a}"] for a in "xyz"], axis=1)  # refined per pattern, near the file's
    assert np.abs(pc - (0.4251, 0.2134, 0.5007)).max() < 0.03 and np.ptp(pc[:, 0]) > 0
    ang = io.load(str(tmp_path / "xmap.ang"))
    np.testing.assert_allclose(ang.rotations.angle_with(xmap.rotations, degrees=True), 0, atol=0.05)
    with h5py.File(out, "r") as f:
        record = json.loads(f["ebsd_keras"].attrs["metadata"])
    steps = [s["step"] for s in record["experimental"]["preprocessing"]]
    assert steps == ["static background removal", "dynamic background removal", "neighbour averaging", "rescale"]
    assert record["detector"]["tilt_deg"] == 0.0 and record["model"]["name"] == "ni20-physics"
    assert record["patterns"] == "patterns.h5"
    # a second run refuses to overwrite, leaving the first
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
