"""The Prometheus alert rules: valid, and their unit tests (series in, alerts out) pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROM = Path(__file__).resolve().parents[1] / "infra" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool comes with the Debian prometheus package (make setup installs it)"
    return path


def test_rules_are_valid(promtool: str) -> None:
    r = subprocess.run(
        [promtool, "check", "rules", "rules/spendstream.yml"],
        cwd=PROM, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 11 rules found" in r.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    r = subprocess.run(
        [promtool, "test", "rules", "rules_test.yml"], cwd=PROM, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
