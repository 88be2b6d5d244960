"""Profile training steps with the TensorFlow profiler (the TensorBoard "Profile" tab) and list what dominates.

A CVAEGAN of ``--preset`` (default compact) is compiled for ``--phase``, warmed up, then ``--steps`` steps run under
``tf.profiler.experimental.start/stop`` (the same trace ``keras.callbacks.TensorBoard(profile_batch=...)`` writes).
The trace lands in ``--logdir`` (open it with ``tensorboard --logdir DIR``, Profile tab, with the
tensorboard-plugin-profile package) and is also summarised here straight from its ``*.xplane.pb``: the host time per
TensorFlow op type (Conv2D, Conv2DBackpropFilter, DepthwiseConv2dNative..., summed over the executor threads) and
the heaviest individual ops.

    python benchmarks/profile_step.py --preset compact --phase cvae --steps 3 --logdir runs/profile
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def summarise_xplane(path: str, top: int = 15) -> dict:
    """Host time per TensorFlow op type and per op name from an ``.xplane.pb`` trace.

    Returns
    -------
    dict
        ``by_type``: [(op type, ms, share)], ``by_op``: [(op name, ms)], ``total_ms`` (sum over op events; with
        several executor threads it exceeds the wall time).
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    by_type, by_op = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if line.name in ("TraceMe", "Python", "python"):  # Python-level spans overlap the ops they call
                continue
            for ev in line.events:
                name = names.get(ev.metadata_id, "")
                # TF op events are "op_name:OpType"; executor spans ("ExecutorState::Process") enclose them.
                if ":" not in name or "::" in name:
                    continue
                op, kind = name.rsplit(":", 1)
                ms = ev.duration_ps / 1e9
                by_type[kind] += ms
                by_op[op] += ms
    total = sum(by_type.values()) or 1.0
    return {
        "total_ms": total,
        "by_type": [(k, v, v / total) for k, v in by_type.most_common(top)],
        "by_op": list(by_op.most_common(top)),
    }


def profile(preset="compact", phase="cvae", steps=3, warmup=3, batch_size=64, jit=False, policy="float32",
            logdir=None) -> dict:  # fmt: skip
    """Trace ``steps`` training steps and summarise them (see the module docstring)."""
    import tempfile

    import tensorflow as tf

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from training_throughput import _compiled_model, _synthetic_batch, time_steps

    from ebsd_keras.models.presets import get_preset

    shape = get_preset(preset).image_shape
    ds = tf.data.Dataset.from_tensors(_synthetic_batch(batch_size, shape)).repeat()
    model = _compiled_model(preset, phase, jit, policy, 5, 0)
    times, _ = time_steps(model, ds, 3, warmup)  # warm: traced, optimised
    logdir = logdir or tempfile.mkdtemp(prefix="ebsd_profile_")
    it = iter(ds)
    tf.profiler.experimental.start(logdir)
    t0 = time.perf_counter()
    for _ in range(steps):
        logs = model.train_function(it)
    float(logs["loss"])
    wall = (time.perf_counter() - t0) / steps
    tf.profiler.experimental.stop()
    traces = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    summary = summarise_xplane(traces[-1]) if traces else {}
    return {"preset": preset, "phase": phase, "batch_size": batch_size, "jit_compile": jit, "policy": policy,
            "step_ms_unprofiled": 1000 * min(times), "step_ms_profiled": 1000 * wall, "steps": steps,
            "summary": summary, "logdir": logdir}  # fmt: skip


def run(preset="compact", phase="cvae", steps=3, batch_size=64) -> dict:
    """For benchmarks/run.py: :func:`profile` into a temporary directory (the summary is kept, the trace is not)."""
    import shutil

    result = profile(preset, phase, steps, batch_size=batch_size)
    shutil.rmtree(result.pop("logdir"), ignore_errors=True)
    return result


def format_table(result: dict) -> str:
    return format_summary(result)


def format_summary(result: dict) -> str:
    s, n = result["summary"], result["steps"]
    lines = [
        f"{result['preset']} {result['phase']}, batch {result['batch_size']}, jit {result['jit_compile']}, "
        f"{result['policy']}: step {result['step_ms_unprofiled']:.0f} ms unprofiled; op time per step "
        f"{s['total_ms'] / n:.0f} ms (summed over threads)",
        "op type                     ms/step  share",
    ]
    lines += [f"{k:<26}{v / result['steps']:>8.1f}  {share:5.1%}" for k, v, share in s["by_type"]]
    lines.append("heaviest ops (ms/step)")
    lines += [f"  {v / result['steps']:>7.1f}  {k}" for k, v in s["by_op"][:10]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="compact")
    p.add_argument("--phase", default="cvae", choices=("cvae", "critic", "gan"))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--jit", action="store_true")
    p.add_argument("--policy", default="float32")
    p.add_argument("--logdir", default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    r = profile(a.preset, a.phase, a.steps, batch_size=a.batch_size, jit=a.jit, policy=a.policy, logdir=a.logdir)
    print(format_summary(r))
    print(f"trace: {r['logdir']} (tensorboard --logdir {r['logdir']})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
