"""The crash soak in CI: 10,000 recipients, the dispatcher SIGKILLed at 20 random moments and
restarted each time: no duplicates, nobody lost but the reported uncertain, and at most one
uncertain per connection per kill (see :mod:`tests.harness.soak`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.soak import run_soak

pytestmark = pytest.mark.slow  # the inner loop is `pytest -m "not slow"`; CI runs everything


def test_crash_soak_10000_recipients_20_sigkills(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        result = run_soak(tmp_path, recipients=10_000, kills=20, connections=8, seed=20261125,
                          log=lambda text: print(f"\n{text}", end=""))
        print(f"\n{result.line()}")
    assert result.problems == []
    assert result.duplicates == 0 and result.lost_not_uncertain == 0
    assert result.uncertain <= result.connections * result.kills
    assert result.kills_mid_sending >= 5  # the kills did land while messages were going out
    assert result.received + result.lost == result.recipients
