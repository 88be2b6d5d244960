"""Every row of the hostile-user table (cases.py), in-process: exit status, one-line error matching the row, no
traceback, nothing left behind (the case's work directory and the shared inputs exactly as before)."""

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("_reliability_cases", Path(__file__).with_name("cases.py"))
cases = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cases  # dataclasses look their module up
_spec.loader.exec_module(cases)

TABLE = cases.cases()


def test_the_table_covers_every_subcommand_with_150_cases():
    from ebsd_keras.cli import SUBCOMMANDS

    assert len(TABLE) >= 150
    assert len({c.id for c in TABLE}) == len(TABLE)
    assert {c.id.split("-")[0] for c in TABLE} == set(SUBCOMMANDS)


def test_the_markdown_table_is_up_to_date():
    assert (Path(__file__).with_name("CASES.md")).read_text() == cases.markdown(TABLE)


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    return cases.build_resources(tmp_path_factory.mktemp("hostile") / "R")


@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_case(case, resources, tmp_path):
    r = cases.run_case(case, resources, tmp_path / "W")
    assert not r["traceback"], r["stderr"]
    assert r["code"] == case.code, r["stderr"]
    lines = cases.error_lines(r["stderr"])
    assert len(lines) == 1 and lines[0].startswith(f"ebsd-keras {case.argv[0]}: error: "), r["stderr"]
    assert r["message_ok"], f"{lines[0]!r} does not match {case.message!r}"
    assert not r["left"], f"left behind or changed: {r['left']}"
