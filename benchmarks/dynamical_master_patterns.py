"""Simulate the dynamical master patterns shipped in ``ebsd_keras/data/master_patterns`` (and time them).

Each voltage is simulated once with ebsdsim (Bloch waves + Monte Carlo; MIT; on a CPU-only machine it runs through the
Vulkan software driver, Debian ``mesa-vulkan-drivers``) and written as a small compressed asset together with the
settings and the measured cost, so that tests and benchmarks never re-simulate. Existing assets are skipped, so the
script can be stopped and re-run (one voltage is the unit of work).

    nice -n 15 python benchmarks/dynamical_master_patterns.py --material ni --kv 20 10 30 15 25

Assets: ``<material>-ebsdsim-<kv>kv-h<half>.npz`` with ``hemispheres`` (2, S, S) float32 (north, south; square
Lambert), and ``settings`` (JSON: simulator, version, options, wall and CPU seconds, machine, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "ebsd_keras" / "data" / "master_patterns"


def asset_name(material: str, kv: float, half_size: int) -> str:
    return f"{material}-ebsdsim-{kv:g}kv-h{half_size}.npz"


def simulate(material: str, kv: float, half_size: int) -> Path:
    import ebsdsim

    from ebsd_keras.data.simulate import ebsdsim_master_pattern, master_pattern_source

    out = ASSETS / asset_name(material, kv, half_size)
    if out.exists():
        print(f"{out.name}: exists, skipped", flush=True)
        return out
    if material != "ni":
        raise SystemExit(f"material {material!r}: only 'ni' is wired here so far")
    load = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    mp = ebsdsim_master_pattern(kv, half_size=half_size)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    source = master_pattern_source(mp)
    settings = {
        "material": material,
        "voltage_kv": float(kv),
        "half_size": int(half_size),
        "simulator": "ebsdsim",
        "simulator_version": getattr(ebsdsim, "__version__", "?"),
        "options": source.get("options", {}),
        "space_group": source.get("space_group"),
        "lattice_parameters_nm": source.get("lattice_parameters_nm"),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU (Vulkan software driver)",
        "load_average_at_start": [round(x, 2) for x in load],
        "command": "python benchmarks/dynamical_master_patterns.py " + " ".join(sys.argv[1:]),
    }
    data = np.asarray(mp.data, dtype=np.float32)
    tmp = out.with_name("." + out.name + ".tmp.npz")
    np.savez_compressed(tmp, hemispheres=data, settings=json.dumps(settings))
    os.replace(tmp, out)
    print(f"{out.name}: {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU, load {load[0]:.1f}", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--material", default="ni")
    parser.add_argument("--kv", type=float, nargs="+", default=[20, 10, 30, 15, 25, 17.5, 22.5, 12.5, 27.5, 5, 40])
    parser.add_argument("--half-size", type=int, default=60)
    args = parser.parse_args(argv)
    ASSETS.mkdir(parents=True, exist_ok=True)
    for kv in args.kv:
        simulate(args.material, kv, args.half_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
