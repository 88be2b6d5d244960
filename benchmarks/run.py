"""Run every benchmark, each in its own subprocess, print each figure and ratio, write ``benchmarks/results.json``.

Each benchmark module exposes ``run(...) -> dict`` and measures its ratios inside one run (the machine may be shared
and noisy: only ratios measured side by side mean anything). Every benchmark runs in a fresh Python process so that
its peak memory (``resource.getrusage`` maximum resident set size of the process and of any processes it started)
is its own, and one benchmark's TensorFlow state (threads, XLA caches, mixed-precision policy) cannot slow or speed
up the next.

    python benchmarks/run.py                  # everything (about 30-40 min on 2 busy CPU cores)
    python benchmarks/run.py --quick          # small sizes: a smoke run (minutes), not figures for the README
    python benchmarks/run.py --only tfrecord_io training_throughput

``generation`` (decoder generation throughput vs kikuchipy projection, SavedModel single-pattern latency) lives in
``benchmarks/generation.py``, maintained with the export code; it is skipped with a note when that file is absent.
Paths in the results are written relative to the repository (``<repo>/...``), never as this machine's absolute
paths.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: name -> (full-size kwargs, quick kwargs). Order: cheap data-path figures first, training, generation, evaluation.
BENCHMARKS = {
    "dataset_build": ({"n": 20000}, {"n": 2000}),
    "tfrecord_io": ({"n": 50000}, {"n": 5000}),
    "projection_speed": ({"n": 2048, "batch": 256}, {"n": 512, "batch": 256}),
    "training_throughput": (
        {"steps": 5, "warmup": 1, "matrix_preset": "tiny", "fidelity_steps": 100},
        {"presets": ("tiny",), "steps": 3, "warmup": 1, "matrix_preset": "tiny", "read_records": 4000},
    ),
    "profile_step": (
        {"preset": "compact", "phase": "cvae", "steps": 3},
        {"preset": "tiny", "phase": "cvae", "steps": 2},
    ),
    "generation": ({}, {"quick": True}),
    "evaluation_speed": ({"n": 100, "resolution": 2.0, "compare_n": 10}, {"n": 50, "resolution": 4.0, "compare_n": 10}),
}
#: Benchmarks maintained elsewhere whose ``run`` takes ``quick`` (see the module docstring).
EXTERNAL = {"generation"}

GPU_NOT_DONE = (
    "not done: no GPU was lent to this session (the device tool's status reported `not_drawn`), so the paper "
    "preset (1.24 B parameters, mixed precision, a few hundred steps) and the compact preset at full GPU speed were "
    "not run; every figure here is from the CPU"
)


# ----------------------------------------------------------------------------------------------------------------
# machine description and path sanitising
# ----------------------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "numpy", "kikuchipy", "orix", "h5py", "cv2"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # optional packages: record what is there
            out[name] = None
    return out


def machine(note: str = "") -> dict:
    """Description of this machine and run: CPU, cores, memory, GPUs, versions, date, load."""
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = None
    import tensorflow as tf

    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": None if mem_gb is None else round(mem_gb, 1),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "platform": platform.platform(),
        "versions": _versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": note,
    }


def sanitise(obj, repo: Path = REPO):
    """Replace machine-specific absolute paths in strings: the repository by ``<repo>``, home by ``~``, temporary
    directories by ``<tmp>``."""
    if isinstance(obj, dict):
        return {k: sanitise(v, repo) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitise(v, repo) for v in obj]
    if isinstance(obj, str):
        s = obj.replace(str(repo), "<repo>")
        s = s.replace(str(Path.home()), "~")
        s = re.sub(re.escape(tempfile.gettempdir()) + r"/[^\s'\"]*", "<tmp>", s)
        return s
    return obj


# ----------------------------------------------------------------------------------------------------------------
# one benchmark in a child process
# ----------------------------------------------------------------------------------------------------------------
def _peak_rss_mb() -> dict:
    # Linux: ru_maxrss in KiB.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(own, 1), "peak_rss_children_mb": round(children, 1)}


def child(name: str, quick: bool, out_path: str) -> int:
    """Run one benchmark in this process and write ``{"result", "wall_s", "peak_rss_mb", ...}`` to ``out_path``."""
    sys.path.insert(0, str(HERE))
    full, small = BENCHMARKS[name]
    t0 = time.perf_counter()
    module = importlib.import_module(name)
    result = module.run(**(small if quick else full))
    record = {"result": result, "wall_s": round(time.perf_counter() - t0, 1), **_peak_rss_mb()}
    if hasattr(module, "format_table"):
        try:
            record["table"] = module.format_table(result)
        except Exception:  # the table is a convenience; the numbers are in result
            pass
    Path(out_path).write_text(json.dumps(record, default=_json_default))
    return 0


def _json_default(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def run_one(name: str, quick: bool, timeout: float | None) -> dict:
    """Run benchmark ``name`` in a subprocess; its record, or ``{"skipped"/"error": ...}``."""
    if name in EXTERNAL and not (HERE / f"{name}.py").is_file():
        return {"skipped": f"benchmarks/{name}.py is not in this checkout (maintained with the export code)"}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "record.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-out", str(out)]
        argv += ["--quick"] if quick else []
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, env=env, timeout=timeout, cwd=str(REPO))
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s", "wall_s": round(time.perf_counter() - t0, 1)}
        if proc.returncode != 0 or not out.is_file():
            return {"error": f"exit status {proc.returncode}", "wall_s": round(time.perf_counter() - t0, 1)}
        return json.loads(out.read_text())


# ----------------------------------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------------------------------
_FIGURE = re.compile(r"(per_s|pps|ratio|latency|_ms|speedup|_x$)")


def _flatten(d, prefix=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        yield prefix, d


def figures(record: dict) -> list[str]:
    """Lines with the benchmark's throughputs, latencies and ratios (its own table when it has one)."""
    if "table" in record:
        return record["table"].splitlines()
    return [f"{k} = {v:,.4g}" for k, v in _flatten(record.get("result", {})) if _FIGURE.search(k.split(".")[-1])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not for the README)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="results file (default benchmarks/results.json; --quick: not written unless given)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark (default 3600)")
    parser.add_argument("--note", default="", help="free text stored with the machine description")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other benchmarks' records of the existing results file (each has its date)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.quick, args.child_out)

    output = args.output or (None if args.quick else HERE / "results.json")
    results = {"machine": machine(args.note), "quick": args.quick, "gpu_runs": GPU_NOT_DONE, "complete": False,
               "benchmarks": {}}  # fmt: skip
    if args.merge and output is not None and output.is_file():
        results["benchmarks"] = json.loads(output.read_text()).get("benchmarks", {})
    for name in args.only or BENCHMARKS:
        print(f"=== {name}", flush=True)
        date = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record = {"date": date, **run_one(name, args.quick, args.timeout)}
        results["benchmarks"][name] = record
        _write(results, output)  # after each benchmark: a long suite that is stopped keeps what it measured
        if "skipped" in record or "error" in record:
            print(f"    {record.get('skipped') or record.get('error')}", flush=True)
            continue
        for line in figures(record):
            print(f"    {line}")
        print(f"    peak RSS {record['peak_rss_mb']:.0f} MB (children {record['peak_rss_children_mb']:.0f} MB), "
              f"{record['wall_s']:.0f} s", flush=True)  # fmt: skip
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["complete"] = True
    print(f"=== GPU: {GPU_NOT_DONE}")
    if output is not None:
        _write(results, output)
        print(f"wrote {output.relative_to(REPO) if output.is_relative_to(REPO) else output}")
    return 0


def _write(results: dict, output: Path | None) -> None:
    if output is None:
        return
    from ebsd_keras._atomic import atomic_path

    with atomic_path(output) as tmp:
        Path(tmp).write_text(json.dumps(sanitise(results), indent=2, default=_json_default) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # a checkout without `pip install -e .`
    sys.exit(main())
