"""One exit code per kind of error, whichever command meets it (the table in newsletter.cli.commands).

2 is bad input (an issue file, its template, newsletter.toml or the environment, an address,
an argument), 1 is a failure (the database, the relay) or findings; ``dispatch``, which a
scheduler runs, exits 1 for every error. Each case is a real command on real files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from newsletter.cli.commands import main
from tests.conftest import SEED_ISSUE

KEY = "exit-code-test-key-0123456789"


def cli(folder: Path, *args: str, **env: str) -> Result:
    environment = {"NEWSLETTER_SECRET_KEY": KEY, "NEWSLETTER_DKIM_KEY_FILE": "", "NEWSLETTER_DATABASE_URL": "",
                   "NEWSLETTER_CHROMIUM": "", **env}
    return CliRunner().invoke(main, ["--config", str(folder / "newsletter.toml"), *args], env=environment)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "issues").mkdir()
    shutil.copy(SEED_ISSUE, tmp_path / "issues" / SEED_ISSUE.name)
    (tmp_path / "people.csv").write_text("email,name\nann@example.org,Ann\n", encoding="utf-8")
    # nothing listens on port 9: a command that got as far as connecting would fail another way
    (tmp_path / "newsletter.toml").write_text('[smtp]\nport = 9\n[database]\npath = "news.db"\n', encoding="utf-8")
    return tmp_path


def seed(folder: Path) -> str:
    return str(folder / "issues" / SEED_ISSUE.name)


def one_error_line(result: Result) -> str:
    """The command's last line on standard error, which must be its only ``error:`` line."""
    lines = result.stderr.splitlines()
    assert lines and "Traceback" not in result.output, result.output
    assert sum(1 for line in lines if line.startswith("error: ")) == 1, result.stderr
    return lines[-1]


# Every command that reads newsletter.toml, with arguments that would otherwise get past it.
READS_THE_CONFIG = [
    ("render", "{seed}", "-o", "{folder}/out"),
    ("check", "{seed}"),
    ("send-test", "{seed}", "--to", "me@example.com"),
    ("subscribers", "import", "{folder}/people.csv"),
    ("subscribers", "add", "ann@example.org"),
    ("subscribers", "remove", "ann@example.org"),
    ("subscribers", "list"),
    ("subscribers", "count"),
    ("subscribers", "export"),
    ("status",),
    ("workers",),
    ("archive", "build", "{folder}/public"),
    ("preview", "{seed}", "--port", "1"),
    ("serve", "--port", "1"),
    ("dkim-keygen", "{folder}/dkim.pem"),
]


def _args(folder: Path, args: tuple[str, ...]) -> list[str]:
    return [arg.format(seed=seed(folder), folder=folder) for arg in args]


@pytest.mark.parametrize("args", READS_THE_CONFIG, ids=lambda args: " ".join(args[:2]).replace("{", "").replace("}", ""))
def test_a_bad_config_is_exit_2_from_every_command(folder: Path, args: tuple[str, ...]) -> None:
    (folder / "newsletter.toml").write_text("[smtp]\nport = 0\n", encoding="utf-8")
    result = cli(folder, *_args(folder, args))
    assert result.exit_code == 2, result.output
    assert "[smtp] port must be a whole number" in one_error_line(result)
    assert not (folder / "news.db").exists() and not (folder / "dkim.pem").exists()


def test_a_bad_config_is_exit_1_from_dispatch_which_a_scheduler_runs(folder: Path) -> None:
    (folder / "newsletter.toml").write_text("[smtp]\nport = 0\n", encoding="utf-8")
    result = cli(folder, "dispatch", "--issue", seed(folder))
    assert result.exit_code == 1, result.output
    assert "[smtp] port must be a whole number" in one_error_line(result)


# Every command that opens the database, with arguments that get as far as opening it.
OPENS_THE_DATABASE = [
    ("subscribers", "import", "{folder}/people.csv"),  # was 2
    ("send-test", "{seed}", "--to", "me@example.com"),  # was 2: it looks the address up among the subscribers
    ("subscribers", "add", "ann@example.org"),
    ("subscribers", "remove", "ann@example.org"),
    ("subscribers", "list"),
    ("subscribers", "count"),
    ("subscribers", "export"),
    ("status",),
    ("workers",),
    ("archive", "build", "{folder}/public"),
    ("dispatch", "--issue", "{seed}"),
]


@pytest.mark.parametrize("args", OPENS_THE_DATABASE,
                         ids=lambda args: " ".join(args[:2]).replace("{", "").replace("}", ""))
def test_a_damaged_database_is_exit_1_from_every_command(folder: Path, args: tuple[str, ...]) -> None:
    (folder / "news.db").write_bytes(b"this is not a database at all" * 100)
    result = cli(folder, *_args(folder, args))
    assert result.exit_code == 1, result.output
    assert "damaged or not a database" in result.stderr and str(folder / "news.db") in result.stderr, result.output
    assert "Traceback" not in result.output
    assert (folder / "news.db").read_bytes() == b"this is not a database at all" * 100


def test_serve_without_a_secret_key_is_bad_input(folder: Path) -> None:
    result = cli(folder, "serve", "--port", "1", NEWSLETTER_SECRET_KEY="")
    assert result.exit_code == 2, result.output  # was 1 (a ConfigError, as from every other command)
    assert "NEWSLETTER_SECRET_KEY" in one_error_line(result)


def test_preview_with_a_missing_templates_folder_is_bad_input(folder: Path) -> None:
    (folder / "newsletter.toml").write_text('[templates]\ndir = "nowhere"\n', encoding="utf-8")
    result = cli(folder, "preview", seed(folder), "--port", "1")
    assert result.exit_code == 2, result.output  # was 1
    assert f"the templates folder {folder / 'nowhere'} does not exist" in one_error_line(result)


def test_check_without_chromium_is_bad_input(folder: Path) -> None:
    result = cli(folder, "check", "--browser", seed(folder), NEWSLETTER_CHROMIUM=str(folder / "no-chromium"))
    assert result.exit_code == 2, result.output  # was 1
    assert "Chromium not found at" in one_error_line(result)


@pytest.mark.parametrize("command", ["render", "check", "send-test", "dispatch"])
def test_a_broken_template_is_bad_input_but_dispatch_exits_1(folder: Path, command: str) -> None:
    (folder / "templates").mkdir()
    (folder / "templates" / "briefing.mjml").write_text("<mjml>{% if %}</mjml>\n", encoding="utf-8")
    (folder / "newsletter.toml").write_text('[templates]\ndir = "templates"\n[database]\npath = "news.db"\n',
                                            encoding="utf-8")
    args = {"render": ["render", seed(folder), "-o", str(folder / "out")], "check": ["check", seed(folder)],
            "send-test": ["send-test", seed(folder), "--to", "me@example.com"],
            "dispatch": ["dispatch", "--issue", seed(folder)]}[command]
    if command == "dispatch":
        cli(folder, "subscribers", "add", "ann@example.org")
    result = cli(folder, *args)
    assert result.exit_code == (1 if command == "dispatch" else 2), result.output  # check was 1
    assert "briefing.mjml:1: template error" in result.stderr, result.output
    assert not (folder / "out").exists()


def test_the_help_says_what_each_exit_code_means() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    codes = [line.split() for line in result.output.split("Exit codes:", 1)[1].splitlines()]
    meanings = {words[0]: " ".join(words[1:3]) for words in codes if words and words[0].isdigit()}
    assert meanings == {"0": "success", "1": "an error:", "2": "bad input:", "3": "dispatch left"}, result.output
