"""The hostile-user table: bad inputs, unwritable outputs and damaged datasets for every subcommand.

Each :class:`Case` is one row: the command line, the exit status it must give, a pattern its one-line error must
match, and (always) nothing left behind -- the case's work directory and the shared inputs are exactly as before.
``test_table.py`` runs every row in-process through ``ebsd_keras.cli.main``; running this file measures a whole
checkout (tracebacks, wrong exit codes, partial or orphaned files, silent data loss) and prints the table::

    python tests/reliability/cases.py            # counts over the table, current checkout
    python tests/reliability/cases.py --markdown # the table as markdown

Placeholders in ``argv``: ``{R}`` the shared resources (:func:`build_resources`, read-only for the cases), ``{W}``
the case's own empty work directory. ``setup`` entries are created in ``{W}`` before the run: ``"name/"`` a
directory, ``"name"`` a file with content.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    argv: tuple
    message: str  #: regex (case-insensitive) the error line must match
    code: int = 2
    setup: tuple = ()

    def resolve(self, resources, work) -> list[str]:
        return [a.format(R=resources, W=work) for a in self.argv]


# ---------------------------------------------------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------------------------------------------------
PARENT_FILE = r"blocker.*(not a directory|is a file)"
IS_DIR = r"is a directory"
EXISTS = r"already exists"
MISSING = r"(no such|not found|missing)"
NOT_KERAS = r"not a keras model file"
NOT_CVAEGAN = r"(not an ebsd_keras cvaegan|config\.json|not a keras)"
NOT_HDF5 = r"(hdf5|not a .*file|empty)"
NO_META = r"metadata\.json"
SHARD = r"train-0000[0-9]\.tfrecord"
BAD_JSON = r"(json|schema)"

# Fast settings, so that a case which (wrongly) gets past its checks costs seconds, not hours.
TRAIN_FAST = ("--preset", "tiny", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "8", "-q")
EVAL_FAST = ("--n", "4", "--no-refine", "--no-prior-samples", "--quiet")
DEMO_FAST = ("--density", "2", "--max-train", "16", "--max-test", "8", "--refine-n", "0")
DATASET_FAST = ("--density", "2", "--max-train", "4", "--max-val", "2", "--max-test", "2", "--no-clahe", "-q")
REFINE_FAST = ("-n", "2", "--quiet")

BAD_MODELS = {  # --model / --init-from values and the message each must give
    "model_missing": ("{R}/nothere.keras", MISSING),
    "model_notzip": ("{R}/notzip.keras", NOT_KERAS),
    "model_empty": ("{R}/empty.keras", NOT_KERAS),
    "model_dir": ("{R}/adir.keras", r"(is a directory|model folder needs one \.keras)"),
    "model_foreign_zip": ("{R}/foreign.keras", NOT_CVAEGAN),
}
BAD_H5 = {  # pattern-file inputs
    "h5_missing": ("{R}/nothere.h5", MISSING),
    "h5_dir": ("{R}/adir", IS_DIR),
    "h5_empty": ("{R}/empty.h5", NOT_HDF5),
    "h5_text": ("{R}/text.h5", NOT_HDF5),
    "h5_truncated": ("{R}/trunc.h5", NOT_HDF5),
}
BAD_TFR = {  # TFRecord dataset directories
    "tfr_missing_dir": ("{R}/nothere", MISSING),
    "tfr_no_metadata": ("{R}/adir", NO_META),
    "tfr_bad_json": ("{R}/tfr_badjson", BAD_JSON),
    "tfr_flipped_byte": ("{R}/tfr_flip", SHARD + r".*(checksum|sha256|damaged)"),
    "tfr_missing_shard": ("{R}/tfr_missing", SHARD + r".*missing"),
    "tfr_truncated_shard": ("{R}/tfr_trunc", SHARD + r".*(checksum|sha256|damaged|truncated)"),
    "tfr_emptied_shard": ("{R}/tfr_empty", SHARD + r".*(checksum|sha256|damaged|truncated)"),
    "tfr_val_flipped": ("{R}/tfr_valflip", r"val-00000\.tfrecord.*(checksum|sha256|damaged)"),
    "tfr_is_file": ("{R}/blocker", r"(not a directory|metadata\.json|is a file)"),
}
BAD_ANGLES = {
    "angles_missing": ("{R}/nothere.txt", MISSING),
    "angles_dir": ("{R}/adir", IS_DIR),
    "angles_empty": ("{R}/empty.txt", r"empty"),
    "angles_nan": ("{R}/angles_nan.txt", r"(nan|non-finite)"),
    "angles_count": ("{R}/angles_count.txt", r"line 2"),
}


def _output_cases(cmd: str, make_argv, ext: str, kind: str) -> list[Case]:
    """Output faults of one writing command. ``make_argv(out)`` gives the argv with output ``out``; ``kind`` is
    "file" or "dir" (what the command writes at ``out``)."""
    out = []
    name = f"out{ext}"
    out.append(Case(f"{cmd}-out{ext}-parent-is-file", make_argv(f"{{R}}/blocker/{name}"), PARENT_FILE))
    out.append(Case(f"{cmd}-out{ext}-deep-parent-is-file", make_argv(f"{{R}}/blocker/a/b/{name}"), PARENT_FILE))
    if kind == "rundir":  # a directory that may exist (resume), but not a file
        out.append(Case(f"{cmd}-out{ext}-is-file", make_argv(f"{{W}}/{name}"), r"is a file", setup=(name,)))
        return out
    out.append(Case(f"{cmd}-out{ext}-exists", make_argv(f"{{W}}/{name}"), EXISTS, setup=(name,)))
    if kind == "file":
        out.append(Case(f"{cmd}-out{ext}-is-dir", make_argv(f"{{W}}/{name}"), IS_DIR + "|" + EXISTS,
                        setup=(name + "/",)))  # fmt: skip
    else:
        out.append(Case(f"{cmd}-out{ext}-exists-dir", make_argv(f"{{W}}/{name}"), EXISTS, setup=(name + "/",)))
    return out


def cases() -> list[Case]:
    c: list[Case] = []
    T = ("train", "--data")

    # ----------------------------------------------------------------------------------------------- train
    for key, (path, msg) in BAD_TFR.items():
        c.append(Case(f"train-{key}", (*T, path, "-o", "{W}/run", *TRAIN_FAST), msg))
    for key, (path, msg) in BAD_MODELS.items():
        c.append(Case(f"train-init-{key}", (*T, "{R}/tfr", "-o", "{W}/run", "--init-from", path, *TRAIN_FAST), msg))
    c += _output_cases("train", lambda o: (*T, "{R}/tfr", "-o", o, *TRAIN_FAST), "", "rundir")
    c += [
        Case("train-config-missing", ("train", "--config", "{R}/nothere.json", "-o", "{W}/run"), MISSING),
        Case("train-config-not-json", ("train", "--config", "{R}/text.h5", "-o", "{W}/run"), r"(json|config)"),
        Case("train-config-dir", ("train", "--config", "{R}/adir", "-o", "{W}/run"), IS_DIR),
        Case("train-kv-not-in-data", (*T, "{R}/tfr", "-o", "{W}/run", "--kv", "30", *TRAIN_FAST), r"(30|voltage|kv)"),
        Case("train-shape-mismatch", (*T, "{R}/tfr30", "-o", "{W}/run", *TRAIN_FAST), r"30x30"),
        Case(
            "train-batch-too-big",
            (*T, "{R}/tfr", "-o", "{W}/run", "--preset", "tiny", "--epochs", "1", "--batch-size", "4096", "-q"),
            r"batch",
        ),  # fmt: skip
        Case("train-no-data", ("train", "-o", "{W}/run"), r"--data"),
        Case("train-bad-weight", (*T, "{R}/tfr", "-o", "{W}/run", "--loss-weight", "kl", *TRAIN_FAST), "loss-weight"),
        Case(
            "train-corrupt-state",
            (*T, "{R}/tfr", "-o", "{W}/run", *TRAIN_FAST),
            r"state\.json.*(--no-resume)",
            setup=("run/config.json=CONFIG", "run/backup/state.json={not json", "run/backup/ckpt-0.weights.h5"),
        ),
    ]

    # ----------------------------------------------------------------------------------------------- tune
    TU = ("tune", "{R}/space.toml", "--data")
    for key, (path, msg) in BAD_TFR.items():
        c.append(Case(f"tune-{key}", (*TU, path, "-o", "{W}/search", "-q"), msg))
    c += _output_cases("tune", lambda o: (*TU, "{R}/tfr", "-o", o, "-q"), "", "rundir")
    c += [
        Case("tune-space-missing", ("tune", "{R}/nothere.toml", "--data", "{R}/tfr", "-o", "{W}/s"), MISSING),
        Case("tune-space-dir", ("tune", "{R}/adir", "--data", "{R}/tfr", "-o", "{W}/s"), IS_DIR),
        Case("tune-space-garbage", ("tune", "{R}/text.h5", "--data", "{R}/tfr", "-o", "{W}/s"), r"(toml|space)"),
        Case(
            "tune-space-empty",
            ("tune", "{R}/empty.txt", "--data", "{R}/tfr", "-o", "{W}/s"),
            r"(toml|space|search|hyper)",
        ),
    ]

    # ----------------------------------------------------------------------------------------------- convert
    CV = ("convert",)
    for key, (path, msg) in BAD_H5.items():
        c.append(Case(f"convert-{key}", (*CV, f"train={path}", "-o", "{W}/rec", "-q"), msg))
        c.append(Case(f"convert-second-{key}", (*CV, "train={R}/train.h5", f"val={path}", "-o", "{W}/rec", "-q"),
                      msg))  # fmt: skip
    c += _output_cases("convert", lambda o: (*CV, "train={R}/train.h5", "-o", o, "-q"), "", "dir")
    c += [
        Case("convert-all-constant", (*CV, "train={R}/zeros.h5", "-o", "{W}/rec", "-q"), r"constant"),
        Case("convert-shard-size-0", (*CV, "train={R}/train.h5", "-o", "{W}/rec", "--shard-size", "0"), "shard-size"),
        Case("convert-clip-without-clahe", (*CV, "{R}/train.h5", "-o", "{W}/rec", "--clip-limit", "2"), "clahe"),
        Case("convert-bad-voltage", (*CV, "{R}/train.h5", "-o", "{W}/rec", "--voltage-kv", "20000", "-q"), r"voltage"),
        Case("convert-no-split-dir", (*CV, "{R}/adir", "-o", "{W}/rec", "-q"), r"(no .*h5|split|adir)"),
        Case("convert-output-is-input", (*CV, "train={R}/train.h5", "-o", "{R}/train.h5", "-q"), EXISTS),
    ]

    # ----------------------------------------------------------------------------------------------- inspect
    for key, (path, msg) in {**BAD_H5, **{k: v for k, v in BAD_TFR.items() if k in (
            "tfr_missing_dir", "tfr_bad_json")}}.items():  # fmt: skip
        msg = r"(metadata\.json|is a directory)" if key == "h5_dir" else msg
        c.append(Case(f"inspect-{key}", ("inspect", path), msg))
    for key in ("tfr_flipped_byte", "tfr_missing_shard", "tfr_truncated_shard", "tfr_emptied_shard",
                "tfr_val_flipped"):  # fmt: skip
        path, msg = BAD_TFR[key]
        c.append(Case(f"inspect-verify-{key}", ("inspect", path, "--verify"), msg))
    c.append(Case("inspect-dir-without-metadata", ("inspect", "{R}/adir"), r"(metadata\.json|directory)"))

    # ----------------------------------------------------------------------------------------------- generate
    G = ("generate", "--euler", "0.1", "0.2", "0.3", "--kv", "20")
    for key, (path, msg) in BAD_MODELS.items():
        c.append(Case(f"generate-{key}", (*G, "-m", path, "-o", "{W}/g.npy", "--no-progress"), msg))
    for key, (path, msg) in BAD_ANGLES.items():
        c.append(Case(f"generate-{key}", ("generate", "--angles", path, "-m", "{R}/model.keras", "-o", "{W}/g.npy",
                                          "--no-progress"), msg))  # fmt: skip
    for ext in (".npy", ".h5", ".npz", ".png"):
        c += _output_cases("generate", lambda o: (*G, "-m", "{R}/model.keras", "-o", o, "--no-progress"), ext, "file")
    c += [
        Case(
            "generate-euler-count",
            ("generate", "--euler", "0.1", "0.2", "-m", "{R}/model.keras", "-o", "{W}/g.npy"),
            r"--euler",
        ),
        Case("generate-bad-suffix", (*G, "-m", "{R}/model.keras", "-o", "{W}/g.txt"), r"(suffix|\.txt|output)"),
        Case(
            "generate-bad-kv",
            ("generate", "--euler", "0.1", "0.2", "0.3", "--kv", "20000", "-m", "{R}/model.keras", "-o", "{W}/g.npy"),
            r"(voltage|kv)",
        ),  # fmt: skip
        Case(
            "generate-angles-h5-text",
            ("generate", "--angles", "{R}/text.h5", "-m", "{R}/model.keras", "-o", "{W}/g.npy"),
            NOT_HDF5,
        ),  # fmt: skip
    ]

    # ----------------------------------------------------------------------------------------------- export
    for key, (path, msg) in BAD_MODELS.items():
        c.append(Case(f"export-{key}", ("export", path, "-o", "{W}/served"), msg))
    c += _output_cases("export", lambda o: ("export", "{R}/model.keras", "-o", o), "", "rundir")
    c += [
        Case(
            "export-keras-parent-is-file",
            (
                "export",
                "{R}/model.keras",
                "-o",
                "{W}/served",
                "--contrast",
                "rescale",
                "--keras",
                "{R}/blocker/m.keras",
            ),
            PARENT_FILE,
        ),  # fmt: skip
        Case(
            "export-keras-bad-suffix",
            ("export", "{R}/model.keras", "-o", "{W}/served", "--contrast", "rescale", "--keras", "{W}/m.h5"),
            r"\.keras",
        ),  # fmt: skip
        Case(
            "export-keras-is-dir",
            ("export", "{R}/model.keras", "-o", "{W}/served", "--contrast", "rescale", "--keras", "{W}/m.keras"),
            IS_DIR,
            setup=("m.keras/",),
        ),  # fmt: skip
        Case(
            "export-clip-without-contrast",
            ("export", "{R}/model.keras", "-o", "{W}/served", "--clip-limit", "3"),
            r"contrast",
        ),
    ]

    # ----------------------------------------------------------------------------------------------- refine
    RF = ("refine",)
    for key, (path, msg) in BAD_H5.items():
        msg = r"(is a directory|neither a tfrecord)" if key == "h5_dir" else msg
        c.append(Case(f"refine-{key}", (*RF, path, "--model", "{R}/model.keras", "-o", "{W}/r.h5", *REFINE_FAST), msg))
    for key, (path, msg) in BAD_MODELS.items():
        c.append(Case(f"refine-{key}", (*RF, "{R}/train.h5", "--model", path, "-o", "{W}/r.h5", *REFINE_FAST), msg))
    for key, (path, msg) in BAD_ANGLES.items():
        if key in ("angles_missing", "angles_dir"):
            c.append(Case(f"refine-start-{key}", (*RF, "{R}/train.h5", "--model", "{R}/model.keras", "--start", path,
                                                  "-o", "{W}/r.h5", *REFINE_FAST), msg))  # fmt: skip
    for ext in (".h5", ".txt"):
        c += _output_cases("refine", lambda o: (*RF, "{R}/train.h5", "--model", "{R}/model.keras", "-o", o,
                                                *REFINE_FAST), ext, "file")  # fmt: skip

    # ----------------------------------------------------------------------------------------------- index
    IX = ("index",)
    for key in ("h5_missing", "h5_dir", "h5_empty", "h5_text"):
        path = BAD_H5[key][0]
        c.append(Case(f"index-{key}", (*IX, path, "-o", "{W}/x.h5", "--quiet"),
                      r"(no such|is a directory|kikuchipy cannot read)"))  # fmt: skip
    for key, (path, msg) in BAD_MODELS.items():
        c.append(Case(f"index-{key}", (*IX, "{R}/train.h5", "--model", path, "-o", "{W}/x.h5", "--quiet"), msg))
    c.append(Case("index-out-not-h5", (*IX, "{R}/train.h5", "-o", "{W}/x.txt", "--quiet"), r"\.h5"))
    c += _output_cases("index", lambda o: (*IX, "{R}/train.h5", "-o", o, "--quiet"), ".h5", "file")

    # ----------------------------------------------------------------------------------------------- evaluate
    EV = ("evaluate",)
    for key, (path, msg) in BAD_MODELS.items():
        c.append(Case(f"evaluate-{key}", (*EV, "--model", path, "--test", "{R}/train.h5", "-o", "{W}/rep", *EVAL_FAST),
                      msg))  # fmt: skip
    tfr_keys = ("tfr_no_metadata", "tfr_bad_json", "tfr_flipped_byte", "tfr_missing_shard", "tfr_truncated_shard")
    for key, (path, msg) in {**BAD_H5, **{k: v for k, v in BAD_TFR.items() if k in tfr_keys}}.items():
        msg = r"(metadata\.json|test\.h5|neither)" if key in ("tfr_no_metadata", "h5_dir") else msg
        c.append(Case(f"evaluate-test-{key}", (*EV, "--true-only", "--test", path, "-o", "{W}/rep", "--split", "train",
                                               *EVAL_FAST), msg))  # fmt: skip
    c += _output_cases("evaluate", lambda o: (*EV, "--true-only", "--test", "{R}/train.h5", "-o", o, *EVAL_FAST), "",
                       "dir")  # fmt: skip

    # ----------------------------------------------------------------------------------------------- demo
    for key, (path, msg) in BAD_MODELS.items():
        c.append(Case(f"demo-{key}", ("demo", "--model", path, "-o", "{W}/demo", *DEMO_FAST), msg))
    c += _output_cases("demo", lambda o: ("demo", "--model", "{R}/model.keras", "-o", o, *DEMO_FAST), "", "dir")

    # ----------------------------------------------------------------------------------------------- dataset
    DS = ("dataset", *DATASET_FAST)
    for key, (path, msg) in BAD_ANGLES.items():  # --angles replaces --density
        c.append(Case(f"dataset-{key}", ("dataset", *DATASET_FAST[2:], "--angles", path, "-o", "{W}/ds"), msg))
    for key, (path, msg) in {k: v for k, v in BAD_H5.items() if k != "h5_truncated"}.items():
        c.append(Case(f"dataset-master-{key}", (*DS, "--master-pattern", path, "-o", "{W}/ds"), msg))
    c += _output_cases("dataset", lambda o: (*DS, "-o", o), "", "dir")
    c += [
        Case("dataset-bad-kv", (*DS, "--kv", "20000", "-o", "{W}/ds"), r"(voltage|kv)"),
        Case("dataset-density-0", ("dataset", "--density", "0", "-o", "{W}/ds"), r"density"),
        Case("dataset-clip-0", (*DS[:-2], "--clip-limit", "0", "-o", "{W}/ds"), r"clip"),
    ]
    return c


# ---------------------------------------------------------------------------------------------------------------------
# shared inputs
# ---------------------------------------------------------------------------------------------------------------------
def _blobs(n, shape, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    c = rng.uniform(0.2, 0.8, size=(n, 2))
    b = np.exp(-((yy[None] - c[:, :1, None]) ** 2 + (xx[None] - c[:, 1:, None]) ** 2) / 0.05)
    euler = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(n, 3))
    return np.clip(255 * b / b.max(), 0, 255).astype(np.uint8), euler


def _flip_byte(path: Path, offset: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def build_resources(root) -> Path:
    """Every input the cases read, under ``root`` (a few seconds: tiny files, one tiny model)."""
    import shutil
    import zipfile

    from ebsd_keras.io.emsoft import write_emebsd
    from ebsd_keras.io.tfrecord import write_tfrecords

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    p, e = _blobs(40, (60, 60), 0)
    write_emebsd(root / "train.h5", p[:32], e[:32], voltage_kv=20.0)
    write_emebsd(root / "val.h5", p[32:], e[32:], voltage_kv=20.0)
    write_emebsd(root / "zeros.h5", np.zeros((4, 60, 60), np.uint8), e[:4], voltage_kv=20.0)
    p30, e30 = _blobs(24, (30, 30), 1)
    write_emebsd(root / "train30.h5", p30[:16], e30[:16], voltage_kv=20.0)
    write_emebsd(root / "val30.h5", p30[16:], e30[16:], voltage_kv=20.0)
    pairs = [("train", root / "train.h5"), ("val", root / "val.h5")]
    write_tfrecords(pairs, root / "tfr", shard_size=16, progress=False)
    write_tfrecords([("train", root / "train30.h5"), ("val", root / "val30.h5")], root / "tfr30", progress=False)
    for name in ("flip", "missing", "trunc", "empty", "badjson", "valflip"):
        shutil.copytree(root / "tfr", root / f"tfr_{name}")
    shard = "train-00001.tfrecord"
    _flip_byte(root / "tfr_flip" / shard, 200)
    (root / "tfr_missing" / shard).unlink()
    data = (root / "tfr_trunc" / shard).read_bytes()
    (root / "tfr_trunc" / shard).write_bytes(data[: len(data) // 2])
    (root / "tfr_empty" / shard).write_bytes(b"")
    (root / "tfr_badjson" / "metadata.json").write_text("{ not json")
    _flip_byte(root / "tfr_valflip" / "val-00000.tfrecord", 200)

    (root / "adir").mkdir(exist_ok=True)
    (root / "adir.keras").mkdir(exist_ok=True)
    (root / "blocker").write_text("a regular file where a directory is expected\n")
    (root / "empty.h5").write_bytes(b"")
    (root / "empty.txt").write_bytes(b"")
    (root / "empty.keras").write_bytes(b"")
    (root / "text.h5").write_text("this is not HDF5\n" * 10)
    (root / "notzip.keras").write_text("this is not a zip archive\n")
    with zipfile.ZipFile(root / "foreign.keras", "w") as z:
        z.writestr("readme.txt", "a zip, but not a Keras model")
    h5 = (root / "train.h5").read_bytes()
    (root / "trunc.h5").write_bytes(h5[: len(h5) // 3])
    (root / "angles_nan.txt").write_text("eu\n2\n10 20 30\nnan 1 2\n")
    (root / "angles_count.txt").write_text("eu\n5\n10 20 30\n")
    (root / "space.toml").write_text(_SPACE)

    import keras

    from ebsd_keras.models.cvaegan import CVAEGAN
    from ebsd_keras.models.presets import get_preset

    keras.utils.set_random_seed(0)
    CVAEGAN(config=get_preset("tiny"), seed=0).save(str(root / "model.keras"))
    return root


_SPACE = """\
[search]
preset = "tiny"
max_trials = 1
seed = 3

[trial]
batch_size = 8
steps_per_epoch = 1
validation_steps = 1
cvae_epochs = 1
critic_epochs = 0
gan_epochs = 1
n_critic = 1
run_eagerly = true

[hyperparameters]
latent_dim = { type = "int", min = 8, max = 64, sampling = "log" }
"""


def make_setup(work: Path, setup) -> None:
    """Create a case's ``setup`` entries in its work directory (see the module docstring)."""
    for entry in setup:
        name, _, content = entry.partition("=")
        path = work / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_CONTENTS.get(content, content or "user data that must survive\n"))


_CONTENTS = {"CONFIG": '{"phase": "cvae"}\n'}


def snapshot(*roots) -> dict:
    """{path: (size, mtime_ns)} of everything under ``roots`` (directories too): compares before/after a case."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                out[p] = (st.st_size if not os.path.isdir(p) else -1, st.st_mtime_ns if not os.path.isdir(p) else 0)
    return out


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are ours or TensorFlow's (logging INFO lines of our own loggers excluded)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("INFO ", "WARNING "))]


# ---------------------------------------------------------------------------------------------------------------------
# the hostile-user run
# ---------------------------------------------------------------------------------------------------------------------
def run_case(case: Case, resources: Path, work: Path):
    """Run one case in-process; returns a dict of what happened (exit code, stderr, traceback, leftovers)."""
    import contextlib
    import io
    import traceback

    from ebsd_keras.cli import main

    work.mkdir(parents=True, exist_ok=True)
    make_setup(work, case.setup)
    before = snapshot(resources, work)
    err, out = io.StringIO(), io.StringIO()
    tb = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(case.resolve(resources, work))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - counting tracebacks is the point
            tb = traceback.format_exc()
            code = 1
    after = snapshot(resources, work)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    stderr = err.getvalue()
    lines = error_lines(stderr)
    return {
        "code": code,
        "stderr": stderr,
        "traceback": tb is not None or "Traceback" in stderr,
        "left": changed,
        "message_ok": bool(lines) and bool(re.search(case.message, lines[-1], re.I)),
        "last": lines[-1] if lines else "",
    }


def markdown(table) -> str:
    """The table as markdown (CASES.md, kept in step by test_table.py)."""
    rows = [
        "# Hostile-user cases (generated by `python tests/reliability/cases.py --markdown`)",
        "",
        "Every case exits with the status shown, prints one line `ebsd-keras CMD: error: ...` matching the pattern",
        "(case-insensitive) and leaves nothing behind: its work directory `{W}` and the shared inputs `{R}` are",
        "exactly as before (no output, no temporary, no run directory, no changed file).",
        "",
        "| case | command | exit | error line matches | left behind |",
        "|---|---|---|---|---|",
    ]
    for c in table:
        setup = f" (with {', '.join(c.setup)})" if c.setup else ""
        cmd = " ".join(c.argv).replace("|", "\\|")
        pattern = c.message.replace("|", "\\|")
        rows.append(f"| {c.id} | `ebsd-keras {cmd}`{setup} | {c.code} | `{pattern}` | nothing |")
    return "\n".join(rows) + "\n"


def _worker(resources: str, tmp: str, ids: list[int]) -> None:
    """Run cases ``ids`` in this process, one JSON line each (the parent survives a crash of this process)."""
    import json

    table = cases()
    for i in ids:
        r = run_case(table[i], Path(resources), Path(tmp) / f"W{i}")
        keep = ("code", "traceback", "left", "message_ok", "last")
        print("RESULT " + json.dumps({"i": i, **{k: r[k] for k in keep}}), flush=True)


def _main(argv) -> int:
    """The hostile-user run: every case, grouped by subcommand, each group in a child process (a segfault in a
    library counts as a crash of that case, the run goes on)."""
    import json
    import subprocess
    import tempfile

    table = cases()
    if "--markdown" in argv:
        print(markdown(table), end="")
        return 0
    if argv and argv[0] == "--worker":
        _worker(argv[1], argv[2], [int(i) for i in argv[3].split(",")])
        return 0
    if argv and argv[0] == "--build":
        build_resources(argv[1])
        return 0
    only = [a for a in argv if not a.startswith("-")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    me = [sys.executable, os.path.abspath(__file__)]
    counts = dict(cases=0, tracebacks=0, crashes=0, wrong_exit=0, silent_success=0, left_behind=0, bad_message=0)
    with tempfile.TemporaryDirectory(prefix="hostile_") as tmp:
        resources = os.path.join(tmp, "R")
        subprocess.run([*me, "--build", resources], check=True, env=env)
        groups: dict[str, list[int]] = {}
        for i, case in enumerate(table):
            if not only or any(o in case.id for o in only):
                groups.setdefault(case.id.split("-")[0], []).append(i)
        for todo in groups.values():
            while todo:
                proc = subprocess.run([*me, "--worker", resources, tmp, ",".join(map(str, todo))], env=env,
                                      capture_output=True, text=True)  # fmt: skip
                done = [json.loads(ln[7:]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                for r in done:
                    _tally(counts, table[r["i"]], r, tmp)
                todo = todo[len(done) :]
                if todo and proc.returncode != 0:  # the process died in the next case
                    case = table[todo[0]]
                    counts["cases"] += 1
                    counts["crashes"] += 1
                    counts["wrong_exit"] += 1
                    tail = proc.stderr.strip()[-150:]
                    print(f"FAIL {case.id:45} CRASH (exit {proc.returncode}) | {tail!r}", flush=True)
                    todo = todo[1:]
    print(json.dumps(counts))
    return 0


def _tally(counts: dict, case: Case, r: dict, tmp: str) -> None:
    counts["cases"] += 1
    counts["tracebacks"] += r["traceback"]
    counts["wrong_exit"] += r["code"] != case.code
    counts["silent_success"] += r["code"] == 0 and case.code != 0
    counts["left_behind"] += bool(r["left"])
    counts["bad_message"] += not r["message_ok"]
    good = not r["traceback"] and r["code"] == case.code and not r["left"] and r["message_ok"]
    left = [os.path.relpath(p, tmp) for p in r["left"]][:3]
    print(f"{'ok' if good else 'FAIL':4} {case.id:45} exit {r['code']} {'TB ' if r['traceback'] else ''}"
          f"{'LEFT ' + str(left) + ' ' if left else ''}| {r['last'][:160]}", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
