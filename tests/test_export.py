"""SavedModel export: TF Serving layout, signatures checked in a separate Python process against the Keras model,
``saved_model_cli``, REST bodies round-tripped through the signatures, in-graph validation, atomic versions."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make the shared helper importable
from _gen_models import PHYSICS_VOLTAGE, build_model, random_quaternions  # noqa: E402

from ebsd_keras.errors import EBSDInputError  # noqa: E402
from ebsd_keras.serving.export import (
    SIGNATURES,
    decode_rest_request,
    export_saved_model,
    next_version,
    rest_request,
    rest_response_patterns,
)
from ebsd_keras.serving.generate import generate  # noqa: E402

N = 5
REPO = Path(__file__).resolve().parent.parent

# The separate process: loads each SavedModel with tf.saved_model.load, calls every signature on the saved inputs and
# answers the REST bodies the way TF Serving does (row format -> "predictions", columnar -> "outputs").
CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    from ebsd_keras.serving.export import decode_rest_request

    work = sys.argv[1]
    jobs = json.load(open(f"{work}/jobs.json"))
    for name, job in jobs.items():
        module = tf.saved_model.load(job["saved_model"])
        inputs = np.load(f"{work}/{name}_inputs.npz")
        out = {"signatures": sorted(module.signatures)}
        arrays = {}
        for sig, keys in (("serving_default", ("quaternion", "voltage_kv")),
                          ("with_latent", ("quaternion", "voltage_kv", "latent")),
                          ("from_euler", ("euler", "voltage_kv"))):
            args = {k: tf.constant(inputs[k]) for k in keys}
            arrays[sig] = module.signatures[sig](**args)["patterns"].numpy()
        replies = []
        for body in job["bodies"]:
            sig, feed = decode_rest_request(json.dumps(body))
            p = module.signatures[sig](**{k: tf.constant(v) for k, v in feed.items()})["patterns"].numpy()
            replies.append({"predictions": p.tolist()} if "instances" in body else {"outputs": p.tolist()})
        out["replies"] = replies
        np.savez(f"{work}/{name}_outputs.npz", **arrays)
        json.dump(out, open(f"{work}/{name}_outputs.json", "w"))
    """
)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    models = {  # in memory: loading .keras files is covered by the generation tests
        "cnn": build_model(use_voltage=True),
        "physics": build_model("physics", **PHYSICS_VOLTAGE),
    }
    out = {}
    for name, model in models.items():
        out[name] = {"model": model, "saved": export_saved_model(model, root / "serving" / name)}
    return out


def _inputs(model):
    q = random_quaternions(N, seed=3)
    return {
        "quaternion": q,
        "voltage_kv": np.array([15, 17.5, 20, 22.5, 25], np.float32),
        "latent": np.random.default_rng(4).standard_normal((N, model.model_config.latent_dim)).astype(np.float32),
        "euler": np.array(
            [[2.0944, 0.7854, 1.0472], [0.1, 0.2, 0.3], [4.0, 1.5, 5.5], [6.2, 3.1, 0.0], [1, 1, 1]], "f4"
        ),
    }


@pytest.fixture(scope="module")
def child_results(exported, tmp_path_factory):
    """Run the separate process once for every exported model."""
    work = tmp_path_factory.mktemp("child")
    jobs = {}
    for name, e in exported.items():
        x = _inputs(e["model"])
        np.savez(work / f"{name}_inputs.npz", **x)
        bodies = [
            rest_request(quaternion=x["quaternion"], voltage_kv=x["voltage_kv"]),
            rest_request(quaternion=x["quaternion"], voltage_kv=x["voltage_kv"], format="inputs"),
            rest_request(euler=x["euler"], voltage_kv=x["voltage_kv"]),
            rest_request(quaternion=x["quaternion"], voltage_kv=x["voltage_kv"], latent=x["latent"], format="inputs"),
        ]
        jobs[name] = {"saved_model": str(e["saved"]), "bodies": json.loads(json.dumps(bodies))}
    (work / "jobs.json").write_text(json.dumps(jobs))
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(work)], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return {
        name: {
            "arrays": dict(np.load(work / f"{name}_outputs.npz")),
            **json.loads((work / f"{name}_outputs.json").read_text()),
        }
        for name in exported
    }


def _keras(model, x, which):
    if which == "serving_default":
        return generate(model, quaternion=x["quaternion"], voltage_kv=x["voltage_kv"]).patterns
    if which == "with_latent":
        return generate(model, quaternion=x["quaternion"], voltage_kv=x["voltage_kv"], latent=x["latent"]).patterns
    return generate(model, euler=x["euler"], voltage_kv=x["voltage_kv"]).patterns


@pytest.mark.parametrize("name", ["cnn", "physics"])
def test_separate_process_signatures_equal_the_keras_model(exported, child_results, name):
    e, got = exported[name], child_results[name]
    assert got["signatures"] == sorted(SIGNATURES)
    x = _inputs(e["model"])
    for sig in SIGNATURES:
        p = got["arrays"][sig]
        assert p.shape == (N, 60, 60, 1) and p.dtype == np.float32
        assert 0.0 <= p.min() and p.max() <= 1.0
        np.testing.assert_allclose(p[..., 0], _keras(e["model"], x, sig), atol=1e-5, err_msg=sig)


@pytest.mark.parametrize("name", ["cnn", "physics"])
def test_rest_bodies_round_trip_through_the_signatures(exported, child_results, name):
    e, got = exported[name], child_results[name]
    x = _inputs(e["model"])
    expected = [_keras(e["model"], x, s) for s in ("serving_default", "serving_default", "from_euler", "with_latent")]
    for reply, want in zip(got["replies"], expected, strict=True):
        np.testing.assert_allclose(rest_response_patterns(json.dumps(reply)), want, atol=1e-5)


def test_rest_request_formats():
    q = random_quaternions(2)
    rows = rest_request(quaternion=q, voltage_kv=20)
    assert "signature_name" not in rows and rows["instances"][1]["voltage_kv"] == 20.0
    assert rows["instances"][0]["quaternion"] == q[0].astype(float).tolist()  # float32 values exactly
    cols = rest_request(euler=[[0.1, 0.2, 0.3]], voltage_kv=[15.0], format="inputs")
    assert cols["signature_name"] == "from_euler" and cols["inputs"]["voltage_kv"] == [15.0]
    assert cols["inputs"]["euler"] == np.float32([[0.1, 0.2, 0.3]]).astype(float).tolist()
    name, feed = decode_rest_request(json.dumps(rows))
    assert name == "serving_default" and feed["quaternion"].dtype == np.float32
    np.testing.assert_array_equal(feed["quaternion"], q)
    with pytest.raises(EBSDInputError):
        rest_request(quaternion=q, voltage_kv=[20, 20, 20])
    with pytest.raises(EBSDInputError):
        rest_request(quaternion=q, euler=[[0, 0, 0]])


def test_saved_model_cli_lists_the_signatures(exported):
    out = subprocess.run(
        # through this interpreter: the console script is not on PATH when pytest runs from a venv's python
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all", "--dir",
         str(exported["cnn"]["saved"])],  # fmt: skip
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for text in ("signature_def['serving_default']", "signature_def['with_latent']", "signature_def['from_euler']"):
        assert text in out.stdout
    for name in ("quaternion", "voltage_kv", "latent", "euler", "patterns"):
        assert f"['{name}']" in out.stdout


def test_in_graph_validation_gives_clear_errors(exported):
    import tensorflow as tf

    module = tf.saved_model.load(str(exported["cnn"]["saved"]))
    sig = module.signatures
    q = tf.constant(random_quaternions(2))
    v = tf.constant([20.0, 20.0])
    cases = [
        (
            sig["serving_default"],
            {"quaternion": q[0], "voltage_kv": v},
            r"quaternion must have shape \[N, 4\] \(rank 2",
        ),
        (sig["serving_default"], {"quaternion": q[:, :3], "voltage_kv": v}, "last dimension 4"),
        (sig["serving_default"], {"quaternion": q, "voltage_kv": v[:1]}, "must have the same N"),
        (sig["serving_default"], {"quaternion": q, "voltage_kv": v * 1000}, "within 1-60"),
        (sig["serving_default"], {"quaternion": q * np.nan, "voltage_kv": v}, "NaN or Inf"),
        (sig["serving_default"], {"quaternion": q * 0, "voltage_kv": v}, "zero-length"),
        (sig["from_euler"], {"euler": tf.constant([[120.0, 45.0, 60.0]] * 2), "voltage_kv": v}, "look like degrees"),
        (sig["with_latent"], {"quaternion": q, "voltage_kv": v, "latent": tf.zeros((2, 3))}, "latent must have"),
    ]
    for fn, kwargs, match in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            fn(**kwargs)
    # non-unit quaternions are normalised: 2q gives q's patterns
    a = sig["serving_default"](quaternion=q, voltage_kv=v)["patterns"].numpy()
    b = sig["serving_default"](quaternion=2 * q, voltage_kv=v)["patterns"].numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_versions_layout_and_atomicity(exported, tmp_path):
    serving = exported["cnn"]["saved"].parent
    assert exported["cnn"]["saved"].name == "1" and next_version(serving) == 2
    saved = exported["cnn"]["saved"]
    assert (saved / "saved_model.pb").is_file() and (saved / "variables").is_dir()
    meta = json.loads((saved / "assets.extra" / "ebsd_keras.json").read_text())
    assert meta["trained_voltage_kv"] == [10.0, 30.0] and meta["latent_dim"] == 8
    with pytest.raises(FileExistsError):
        export_saved_model(exported["cnn"]["model"], serving, version=1)
    with pytest.raises(EBSDInputError):
        export_saved_model(exported["cnn"]["model"], serving, version=0)
    bad = tmp_path / "bad.keras"
    bad.write_text("not a model")
    with pytest.raises(EBSDInputError):
        export_saved_model(bad, tmp_path / "serving")
    assert sorted(p.name for p in serving.iterdir()) == ["1"]  # nothing half-written
    assert not (tmp_path / "serving").exists()


def test_shipped_savedmodel_matches_the_shipped_keras_model():
    import tensorflow as tf

    folder = REPO / "saved_models" / "ni20-physics"
    versions = sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert versions, "saved_models/ni20-physics/<VERSION>/ is missing: run ebsd-keras export"
    size = sum(f.stat().st_size for f in versions[-1].rglob("*") if f.is_file())
    assert size < 20e6
    module = tf.saved_model.load(str(versions[-1]))
    euler = np.array([[2.0944, 0.7854, 1.0472], [0.5, 0.4, 0.3]], np.float32)
    v = np.full(2, 20.0, np.float32)
    got = module.signatures["from_euler"](euler=tf.constant(euler), voltage_kv=tf.constant(v))["patterns"].numpy()
    want = generate(folder / "model.keras", euler=euler, voltage_kv=v).patterns
    np.testing.assert_allclose(got[..., 0], want, atol=1e-5)


def test_graph_has_only_standard_ops(exported):
    """TF Serving runs plain TensorFlow ops: no Python callbacks (PyFunc) and no XLA-only ops in the SavedModel."""
    from tensorflow.core.protobuf import saved_model_pb2

    for e in exported.values():
        sm = saved_model_pb2.SavedModel()
        sm.ParseFromString((e["saved"] / "saved_model.pb").read_bytes())
        graph = sm.meta_graphs[0].graph_def
        ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
        assert not [op for op in ops if "PyFunc" in op or op.startswith("Xla")], sorted(ops)
        assert "UnsortedSegmentSum" in ops or "MatMul" in ops  # the model is really in the graph
