"""Every command in README.md and docs/*.md runs here (at a small size) or, where it cannot, parses.

A fenced ``bash`` or ``python`` block may be preceded by one directive (an HTML comment, invisible on GitHub):

- ``<!-- doc-test: run -->`` (the default): run as written.
- ``<!-- doc-test: small | OLD => NEW | ... -->``: run after these literal substitutions (a smaller size); every OLD
  must occur in the block, so a substitution cannot go stale silently.
- ``<!-- doc-test: fixture | OLD => NEW ... -->``: the small dataset (``data/ni20``, ``data/ni20-tfr``) the other
  blocks use; built once per session (substituted) in the documents' working folder.
- ``<!-- doc-test: parse-only (reason) -->``: cannot run here (Docker, several machines, a server, a long training):
  every ``ebsd-keras`` command is parsed by the CLI's own parser, every ``python benchmarks/...`` flag is looked up
  in the script's ``--help``, ``docker`` mounts must hold a SavedModel, ``curl`` bodies are decoded the way TF
  Serving decodes them and fed to the shipped SavedModel's signature.
- ``<!-- doc-test: ci-command -->``: must be exactly the test command ``.ci/run`` runs.

All documents run in one temporary folder (the shipped models copied in, the small dataset built there), so
commands write nothing into the repository; a command that already ran there word for word is not run twice.
``ebsd-keras`` commands run in this process (``ebsd_keras.cli.main``; starting TensorFlow once instead of once per
command keeps the test to a few minutes), must exit 0 and must leave their ``-o`` output behind. Outside the
blocks, inline ``ebsd-keras``/``python benchmarks`` commands must name existing subcommands and flags,
``ebsd_keras.*`` names must import, repository paths must exist and links must resolve.
"""

from __future__ import annotations

import functools
import glob
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras  # noqa: F401 - imported before the CLI modules, as the console script's first model load does
import pytest

from ebsd_keras.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
README_LIMIT = 15_000  # characters: a README for users, not a lab notebook
DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
KINDS = ("run", "small", "fixture", "parse-only", "ci-command")
REPO_DIRS = ("saved_models/", "benchmarks/", "tuning/", "tests/", "docs/", "ebsd_keras/", ".ci/")
SHELL = ("printf", "echo", "cat", "ls", "mkdir")  # plain shell commands a block may run as written
TIMES: list[tuple[str, float]] = []  # (where and what, seconds): printed at the end of the session (-s)
DONE: set = set()  # commands (argv tuples) and python blocks already run in the session's working folder


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    text: str
    kind: str = "run"
    subs: list = field(default_factory=list)
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    def substituted(self) -> str:
        text = self.text
        for old, new in self.subs:
            assert old in text, f"{self.where}: substitution {old!r} no longer matches the block"
            text = text.replace(old, new)
        return text


def parse_blocks(path: Path) -> list[Block]:
    """Fenced blocks of a Markdown file with the directive written just before each."""
    blocks, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        block = Block(path, start + 1, m.group(1), "\n".join(body))
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        d = DIRECTIVE.match(prev.strip())
        if d:
            parts = [p.strip() for p in d.group(1).split("|")]
            kind, _, reason = parts[0].partition(" ")
            assert kind in KINDS, f"{block.where}: unknown doc-test directive {kind!r}"
            block.kind, block.reason = kind, reason.strip()
            for sub in parts[1:]:
                old, sep, new = sub.partition("=>")
                assert sep, f"{block.where}: a substitution reads 'OLD => NEW', got {sub!r}"
                block.subs.append((old.strip(), new.strip()))
        blocks.append(block)
    return blocks


def logical_commands(text: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, heredocs kept whole, comments dropped."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
        if heredoc and not line.lstrip().startswith("#"):
            j = i + 1
            while lines[j].strip() != heredoc.group(1):
                j += 1
            out.append("\n".join(lines[i : j + 1]))
            i = j + 1
            continue
        while line.rstrip().endswith("\\"):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        if _tokens(line):
            out.append(line.strip())
    return out


def split_and(tokens: list[str]) -> list[list[str]]:
    parts, cur = [], []
    for t in tokens:
        if t == "&&":
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    return parts + [cur]


# --- the CLI's own parser ---------------------------------------------------------------------------------------


@functools.cache
def subparsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def parse_cli(argv: list[str], where: str):
    try:
        return build_parser().parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"{where}: `ebsd-keras {shlex.join(argv)}` does not parse (exit {e.code})") from None


def check_flags(argv: list[str], where: str) -> None:
    """An inline (possibly partial) command: its subcommand and every flag exist."""
    assert argv and argv[0] in subparsers(), f"{where}: no subcommand `ebsd-keras {argv[:1]}`"
    known = subparsers()[argv[0]]._option_string_actions
    for t in argv[1:]:
        if t.startswith("-") and not re.fullmatch(r"-?\d[\d.eE+-]*", t):
            assert t.split("=")[0] in known, f"{where}: `ebsd-keras {argv[0]}` has no option {t}"


def check_repo_paths(tokens, where: str) -> None:
    for t in tokens:
        if t.startswith(REPO_DIRS):
            assert glob.glob(str(REPO / t)), f"{where}: {t} is not in the repository"


# --- benchmark scripts: flags looked up in their --help ------------------------------------------------------


@functools.cache
def script_help(script: str, sub: str | None) -> str:
    argv = [sys.executable, script] + ([sub] if sub else []) + ["--help"]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{shlex.join(argv)} failed: {r.stderr[-500:]}"
    return r.stdout


def check_script(tokens: list[str], where: str) -> None:
    script = tokens[1]
    assert (REPO / script).is_file(), f"{where}: {script} is not in the repository"
    args = tokens[2:]
    sub = args[0] if args and not args[0].startswith("-") and "{" in script_help(script, None).split("\n")[0] else None
    text = script_help(script, sub)
    for t in args:
        if t.startswith("--"):
            assert re.search(rf"{re.escape(t.split('=')[0])}\b", text), f"{where}: {script} has no option {t}"


# --- parse-only blocks --------------------------------------------------------------------------------------


def _tokens(s: str) -> list[str]:
    try:
        return shlex.split(s, comments=True)
    except ValueError:  # a quoted string of a surrounding command (bash -c '...') ends further down
        return shlex.split(s.replace("'", " "), comments=True)


@functools.cache
def saved_model(folder: str):
    import tensorflow as tf

    versions = sorted(p for p in Path(folder).iterdir() if p.name.isdigit())
    return tf.saved_model.load(str(versions[-1]))


def check_parse_only(block: Block) -> None:
    assert block.reason, f"{block.where}: say why the block cannot run here: parse-only (reason)"
    checked = 0
    for cmd in logical_commands(block.text):
        for m in re.finditer(r"(?:^|[\s;(])ebsd-keras\s+([^;|&'\"]*(?:'[^']*'[^;|&'\"]*)*)", cmd):
            argv = _tokens(m.group(1))
            parse_cli(argv, block.where)
            check_repo_paths(argv, block.where)
            checked += 1
        tokens = _tokens(cmd) if "'" not in cmd or cmd.count("'") % 2 == 0 else []
        for part in split_and(tokens):
            if part[:1] == ["python"] and len(part) > 1 and part[1].startswith("benchmarks/"):
                check_script(part, block.where)
                checked += 1
            elif part[:1] == ["tensorboard"]:
                assert shutil.which("tensorboard"), f"{block.where}: tensorboard is not installed"
                checked += 1
            elif part[:2] == ["docker", "run"]:
                mount = next(t for t in part if t.startswith("type=bind"))
                source = dict(kv.split("=", 1) for kv in mount.split(","))["source"]
                folder = source.replace("$PWD", str(REPO))
                assert glob.glob(f"{folder}/*/saved_model.pb"), f"{block.where}: no SavedModel in {source}"
                checked += 1
            elif part[:1] == ["curl"]:
                import tensorflow as tf

                from ebsd_keras.serving.export import decode_rest_request

                body = part[part.index("-d") + 1]
                name = re.search(r"/v1/models/([\w.-]+):predict", cmd).group(1)
                signature, inputs = decode_rest_request(body)
                served = saved_model(str(REPO / "saved_models" / name)).signatures[signature]
                out = served(**{k: tf.constant(v) for k, v in inputs.items()})["patterns"]
                n = len(next(iter(inputs.values())))
                assert tuple(out.shape) == (n, 60, 60, 1), f"{block.where}: {tuple(out.shape)}"
                checked += 1
    assert checked, f"{block.where}: a parse-only block with nothing the test could check"


# --- running blocks -----------------------------------------------------------------------------------------


def run_cli(argv: list[str], where: str) -> None:
    ns = parse_cli(argv, where)
    if tuple(argv) in DONE:  # the same command earlier in the session, in the same folder: its outputs are here
        return
    DONE.add(tuple(argv))
    t0 = time.perf_counter()
    try:
        rc = main(argv)
    except SystemExit as e:  # pragma: no cover - main returns its status; argparse may still exit
        rc = e.code
    TIMES.append((f"{where} ebsd-keras {shlex.join(argv)}", time.perf_counter() - t0))
    assert rc == 0, f"{where}: `ebsd-keras {shlex.join(argv)}` exited {rc}"
    output = getattr(ns, "output", None)
    if output:
        assert Path(output).exists(), f"{where}: `ebsd-keras {argv[0]}` left no {output}"


def run_bash_block(block: Block, text: str) -> None:
    for cmd in logical_commands(text):
        if "\n" in cmd:  # a heredoc: plain shell
            subprocess.run(["bash", "-euc", cmd], check=True, timeout=60)
            continue
        parts = split_and(shlex.split(cmd, comments=True))
        if len(parts) == 1 and parts[0][0] in SHELL:  # redirections and all: plain shell
            subprocess.run(["bash", "-euc", cmd], check=True, timeout=60)
            continue
        for part in parts:
            if part[0] == "ebsd-keras":
                run_cli(part[1:], block.where)
            elif part[:3] == ["pip", "install", "-e"]:
                # the install itself is CI's first step (.ci/run); here: the extra it names exists
                extras = re.fullmatch(r"\.\[([\w,]+)\]", part[3]).group(1).split(",")
                toml = (REPO / "pyproject.toml").read_text()
                for extra in extras:
                    assert re.search(rf"(?m)^{extra} = \[", toml), f"{block.where}: no extra [{extra}]"
            else:
                raise AssertionError(f"{block.where}: cannot run {part[0]!r} here: mark the block parse-only (why)")


def run_python_block(block: Block, text: str) -> None:
    if text in DONE:
        return
    DONE.add(text)
    t0 = time.perf_counter()
    exec(compile(text, block.where, "exec"), {"__name__": "__doc_block__"})  # noqa: S102 - the docs' own code
    TIMES.append((f"{block.where} python block", time.perf_counter() - t0))


def run_block(block: Block) -> None:
    if block.kind == "parse-only":
        check_parse_only(block)
    elif block.kind == "ci-command":
        ci = [ln for ln in (REPO / ".ci/run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        assert block.text.strip() == ci[-1].strip(), f"{block.where}: .ci/run runs `{ci[-1]}`"
    elif block.lang == "python":
        run_python_block(block, block.substituted())
    else:
        run_bash_block(block, block.substituted())


# --- fixtures -----------------------------------------------------------------------------------------------


def all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in parse_blocks(doc)]


@pytest.fixture(scope="session")
def doc_workspace(tmp_path_factory):
    """One working folder for every document: the shipped models and tuning files copied (nothing a command writes
    reaches the repository) and the small dataset built by the one `fixture` block. Documents run in order (README
    first) and a command that already ran here, word for word, is not run again: its outputs are already here."""
    base = tmp_path_factory.mktemp("docs")
    shutil.copytree(REPO / "saved_models", base / "saved_models")
    shutil.copytree(REPO / "tuning", base / "tuning")
    (base / "benchmarks").symlink_to(REPO / "benchmarks")
    fixtures = [b for b in all_blocks() if b.kind == "fixture"]
    assert len(fixtures) == 1, "exactly one block builds the documents' small dataset"
    cwd = os.getcwd()
    os.chdir(base)
    try:
        run_bash_block(fixtures[0], fixtures[0].substituted())
    finally:
        os.chdir(cwd)
    assert (base / "data/ni20/test.h5").is_file() and (base / "data/ni20-tfr/metadata.json").is_file()
    yield base
    print("\ndoc-test wall times:\n" + "\n".join(f"{t:7.1f} s  {w}" for w, t in sorted(TIMES, key=lambda x: -x[1])))


# --- tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_every_command_of_the_document_runs_or_parses(doc, doc_workspace, monkeypatch):
    monkeypatch.chdir(doc_workspace)
    blocks = [b for b in parse_blocks(doc) if b.lang in ("bash", "sh", "python")]
    for block in blocks:
        if block.kind == "fixture":  # built by doc_workspace; its outputs are in the working folder
            assert (doc_workspace / "data/ni20/test.h5").is_file()
            continue
        run_block(block)


def test_readme_is_for_users():
    text = (REPO / "README.md").read_text()
    assert len(text) <= README_LIMIT, f"README.md has {len(text)} characters (at most {README_LIMIT})"
    for needed in ("## Two commands", "## Five-minute tour", "## Shipped models", "## Results", "docs/"):
        assert needed in text
    for page in sorted((REPO / "docs").glob("*.md")):  # every page findable from the README, listed once
        assert text.count(f"| [docs/{page.name}](docs/{page.name}) |") == 1, f"docs/{page.name} in 'Where to go next'"
    shipped = sorted(p.parent.name for p in (REPO / "saved_models").glob("*/model_card.json"))
    for name in shipped:  # every shipped model is in the table, with its card's voltage range
        card = json.loads((REPO / "saved_models" / name / "model_card.json").read_text())
        lo, hi = card["trained_voltage_kv"]
        kv = f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"
        rows = re.findall(rf"(?m)^\| `{name}` \| {kv} \|", text)
        assert len(rows) == 1, f"README's model table has {len(rows)} rows for `{name}` at {kv} kV (one wanted)"


def test_every_bash_and_python_block_has_a_known_directive():
    for block in all_blocks():
        if block.lang in ("bash", "sh", "python"):
            assert block.kind in KINDS, block.where
        else:  # other blocks (yaml, toml, text) are data, not commands: no directive may pretend otherwise
            assert block.kind == "run" and not block.subs, f"{block.where}: directive on a {block.lang!r} block"


def _inline_spans(text: str) -> list[str]:
    outside = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.findall(r"`([^`\n]+)`", outside)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_inline_commands_names_paths_and_links_resolve(doc):
    text = doc.read_text()
    where = str(doc.relative_to(REPO))
    # commands written inline, and the ebsd-keras commands inside non-shell blocks (e.g. Kubernetes YAML)
    commands = _inline_spans(text) + [
        m.group(0)
        for b in parse_blocks(doc)
        if b.lang not in ("bash", "sh", "python")
        for m in re.finditer(r"ebsd-keras [^\n\"']*", b.text)
    ]
    for span in commands:
        tokens = _tokens(span.replace("...", " ").replace("NAME", " "))
        if tokens[:1] == ["ebsd-keras"] and len(tokens) > 1:
            check_flags(tokens[1:], where)
        elif tokens[:1] == ["python"] and len(tokens) > 1 and tokens[1].startswith("benchmarks/"):
            check_script(tokens, where)
    for span in _inline_spans(text):
        for name in re.findall(r"(?<![\w/.])(ebsd_keras(?:\.\w+)+)", span):
            if not re.search(r"\.(json|py|md|keras|h5|toml)$", name):  # file names, not Python names
                _resolve(name, where)
        first = span.split()[0] if span.split() else ""
        if first.startswith(REPO_DIRS) and " " not in span:
            check_repo_paths([first.rstrip(".,;:")], where)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        assert dest.exists(), f"{where}: link to {target}: no such file"
        if anchor:
            slugs = {_slug(h) for h in re.findall(r"(?m)^#+ (.+)$", dest.read_text())}
            assert anchor in slugs, f"{where}: link to {target}: no such heading"


def _resolve(name: str, where: str) -> None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"{where}: `{name}` does not resolve ({'.'.join(parts[:i])} has no {attr})"
            obj = getattr(obj, attr)
        return
    raise AssertionError(f"{where}: `{name}` does not import")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return s.replace(" ", "-")


def test_dead_references_stay_out():
    for doc in DOCS:
        text = doc.read_text()
        for dead in ("paper-method.md", "runs/refine/", "nikin-hr", "the issue"):
            assert dead not in text, f"{doc.relative_to(REPO)} mentions {dead!r}"


def test_conventions_example_reads_eu_files_as_degrees(doc_workspace, monkeypatch):
    """docs/conventions.md's claim, checked: radians on the command line, --degrees, and an EMsoft 'eu' file (degrees)
    give the same patterns."""
    import numpy as np

    monkeypatch.chdir(doc_workspace)
    for block in parse_blocks(REPO / "docs/conventions.md"):
        if block.lang == "bash":
            run_block(block)  # already run by the document's test in a full session: not run twice
    radians, degrees, from_file = (np.load(f"{n}.npy") for n in ("radians", "degrees", "from_file"))
    assert radians.shape == degrees.shape == from_file.shape == (2, 60, 60)
    np.testing.assert_array_equal(from_file, degrees)  # the same angles in degrees, by file or by flag
    assert np.abs(radians - degrees).mean() < 0.01  # 2.0944 rad is 120.0002 deg: a rounding, not a unit, apart
    assert np.abs(radians - np.roll(degrees, 1, axis=0)).mean() > 0.05  # and the two orientations do differ
