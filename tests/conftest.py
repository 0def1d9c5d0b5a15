"""Shared fixtures: the seed issue, settings, and the --update-golden flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import SenderSettings, Settings
from newsletter.issue.parse import load_issue
from newsletter.models import Issue, RenderedIssue
from newsletter.render.engine import render_issue

ROOT = Path(__file__).resolve().parent.parent
SEED_ISSUE = ROOT / "issues" / "2017-07-07-trump-putin.md"
SEED_BRIEFING = Path(__file__).resolve().parent / "fixtures" / "seed-briefing.txt"
GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", default=False,
        help="rewrite tests/golden/* from the current output instead of comparing",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def sender() -> SenderSettings:
    return SenderSettings()


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def seed_issue() -> Issue:
    return load_issue(SEED_ISSUE)


@pytest.fixture(scope="session")
def seed_rendered(seed_issue: Issue, sender: SenderSettings) -> RenderedIssue:
    return render_issue(seed_issue, sender=sender)


def write_issue(folder: Path, body: str, *, front: str | None = None, name: str = "2024-01-02-test.md") -> Path:
    """Write an issue file with a valid front matter (unless ``front`` is given)."""
    if front is None:
        front = "subject: Test issue\ndate: 2024-01-02\npreheader: A test\n"
    path = folder / name
    path.write_text(f"---\n{front}---\n{body}", encoding="utf-8")
    return path


# --- hypothesis: the "fuzz" profile of tests/test_fuzz.py -------------------------
# Deterministic (derandomize, no example database) so that a CI run is reproducible and
# the same on every machine; no deadline, because the first example pays for imports and
# a shared CI core is slow at times. Each property sets its own max_examples on top.
from hypothesis import HealthCheck  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

hypothesis_settings.register_profile(
    "fuzz",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
