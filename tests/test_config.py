"""newsletter.toml through the CLI: a value that can't work is one line naming its key, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli.commands import main
from newsletter.config import SenderSettings, known_keys, load_settings
from newsletter.tokens import ReturnPaths
from tests.conftest import ROOT, SEED_ISSUE


def render_with(tmp_path: Path, toml: str) -> tuple[int, str]:
    """``newsletter render`` of the seed issue with ``toml`` as the config: exit code and stderr."""
    config = tmp_path / "newsletter.toml"
    config.write_text(toml, encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "render", str(SEED_ISSUE), "-o", str(tmp_path / "out")])
    return result.exit_code, result.stderr


REFUSED = [
    # (TOML, what the one line must say): nan passed the "0 or more" check, 0 and inf made no sense
    ("[smtp]\ntimeout = nan", "[smtp] timeout = nan: it must be a finite number more than 0"),
    ("[smtp]\ntimeout = inf", "[smtp] timeout = inf"),
    ("[smtp]\ntimeout = 0", "[smtp] timeout = 0: it must be a finite number more than 0"),
    ("[smtp]\ntimeout = -5", "[smtp] timeout = -5"),
    ("[smtp]\nfinal_reply_timeout = nan", "[smtp] final_reply_timeout = nan"),
    ("[smtp]\nfinal_reply_timeout = 0.0", "[smtp] final_reply_timeout = 0.0"),
    ("[smtp]\nfinal_reply_timeout = 1e300", "[smtp] final_reply_timeout = 1e+300: it must be at most"),
    ("[smtp]\nrate = nan", "[smtp] rate = nan: it must be a finite number 0 (no limit) or more"),
    ("[smtp]\nrate = inf", "[smtp] rate = inf"),
    ("[smtp]\nrate = -1", "[smtp] rate = -1"),
    ("[smtp]\nrate = -inf", "[smtp] rate = -inf"),
    ("[smtp]\nconnections = 0", "[smtp] connections must be a whole number from 1 to 1024"),
    ("[smtp]\nconnections = -3", "[smtp] connections"),
    ("[smtp]\nmax_per_hour = -1", "[smtp] max_per_hour"),
    ("[smtp]\nport = 0", "[smtp] port"),
    ("[smtp]\ntimeout = \"30\"", "[smtp] timeout must be a number, not str '30'"),
    ("[dispatch]\nretry_initial = 0", "[dispatch] retry_initial = 0: it must be a finite number more than 0"),
    ("[dispatch]\nretry_initial = nan", "[dispatch] retry_initial = nan"),
    ("[dispatch]\nretry_max = inf", "[dispatch] retry_max = inf"),
    ("[dispatch]\nretry_initial = 60\nretry_max = 10", "[dispatch] retry_max = 10 is less than retry_initial = 60"),
    ("[dispatch]\ngive_up_after_hours = nan", "[dispatch] give_up_after_hours = nan"),
    ("[dispatch]\ngive_up_after_hours = -1", "[dispatch] give_up_after_hours = -1"),
    ("[dispatch]\nwait_for_retries = inf", "[dispatch] wait_for_retries = inf"),
    # the second address was dropped without a word
    ('[sender]\nfrom = "A <a@example.com>, b@example.org"', "[sender] from 'A <a@example.com>, b@example.org' holds"
     " more than one address; give exactly one"),
    ('[sender]\nfrom = "Doe, Jane <jane@example.com>"', "[sender] from 'Doe, Jane <jane@example.com>' holds more"),
    ('[sender]\nfrom = "A <a@example.com>; b@example.org"', "holds more than one address"),
    ('[sender]\nfrom = "A <a@example.com> b@example.org"', "holds more than one address"),
    ('[sender]\nreply_to = "a@example.com, b@example.org"', "[sender] reply_to 'a@example.com, b@example.org' holds"),
    # copied into every email / refused later as "invalid unsubscribe URL for <address>"
    ('[sender]\nsite_url = "https://editor:hunter2@news.example.com"', "[sender] site_url holds a user name or"
     " password"),
    ('[sender]\nsite_url = "https://editor@news.example.com"', "[sender] site_url holds a user name or password"),
    ('[sender]\nsite_url = "https://news.example.com/my news"', "[sender] site_url 'https://news.example.com/my news'"
     " holds a space"),
    ('[sender]\nsite_url = " https://news.example.com"', "[sender] site_url ' https://news.example.com' holds a space"),
    ('[sender]\nsite_url = "https://news.example.com/a<b"', "holds the character '<'"),
    ('[sender]\nsite_url = "https://bücher.example/"', "[sender] site_url 'https://bücher.example/' holds the"
     " character 'ü'"),
    ('[sender]\nsite_url = "https://news.example.com/?ref=mail"', "[sender] site_url"
     " 'https://news.example.com/?ref=mail' has a query or fragment"),
    ("[inbound]\nbatch_size = 0", "[inbound] batch_size must be a whole number from 1 to 10000"),
    ('[inbound]\nsecurity = "ssl"', "[inbound] security must be one of tls, starttls, none"),
    ('[inbound]\nprocessed_folder = "INBOX"', "[inbound] folder, processed_folder and unhandled_folder must be three"
     " different folders"),
    ('[inbound]\nunhandled_folder = ""', "[inbound] unhandled_folder is empty"),
    ('[inbound]\nca_file = "no-such-ca.pem"', "no-such-ca.pem is not a readable file"),
    # invisible characters that make a sender name read backwards
    ('[sender]\nfrom = "Invoice \\u202Egpj.exe <billing@example.com>"', "[sender] from contains the direction"
     " control U+202E"),
    ('[sender]\npostal_address = "1 Main St \\u2067Springfield\\u2069"', "[sender] postal_address contains the"
     " direction control U+2067"),
    # the bounce mailbox: each return path adds "+<id>" (up to 42 characters) to its local part
    ('[sender]\nbounce_address = "Bounces <bounces@news.example.com>"', "[sender] bounce_address"
     " 'Bounces <bounces@news.example.com>' must be a plain address like editors@example.com"),
    ('[sender]\nbounce_address = "bounces"', "[sender] bounce_address 'bounces' must be a plain address"),
    ('[sender]\nbounce_address = "bounces+news@news.example.com"', "[sender] bounce_address"
     " 'bounces+news@news.example.com' holds '+'; give the bare mailbox"),
    ('[sender]\nbounce_address = "bounces-of-the-briefing@news.example.com"', "[sender] bounce_address"
     " 'bounces-of-the-briefing@news.example.com': the part before '@' has 23 characters, at most 20 fit"),
    ("[sender]\nbounce_address = 3", "[sender] bounce_address must be a string"),
]


@pytest.mark.parametrize(("toml", "message"), REFUSED, ids=[toml.split("\n")[-1] for toml, _ in REFUSED])
def test_a_setting_that_cannot_work_is_one_line_naming_its_key_exit_2(tmp_path: Path, toml: str, message: str
                                                                      ) -> None:
    code, err = render_with(tmp_path, toml + "\n")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'newsletter.toml'}: "), err
    assert message in err
    assert "Traceback" not in err and "hunter2" not in err
    assert not (tmp_path / "out").exists(), "nothing written"


@pytest.mark.parametrize("toml", [
    "[smtp]\nrate = 0\ntimeout = 0.5\nfinal_reply_timeout = 3600",  # 0: no limit
    "[smtp]\nrate = 0.5",
    "[dispatch]\nwait_for_retries = 0\ngive_up_after_hours = 0\nretry_initial = 0.01\nretry_max = 0.01",
    '[sender]\nfrom = "\\"Doe, Jane\\" <jane@example.com>"\nreply_to = "Desk <desk@example.com>"',
    '[sender]\nsite_url = "http://127.0.0.1:8080/news/"',
    '[sender]\nbounce_address = "b.o-u_n.c.e.s.123456@mail.news.example.com"',  # 20 characters
    '[sender]\nsite_url = "https://xn--bcher-kva.example/%C3%BC"\nfrom = "Zoë \\u05e9\\u05dc\\u05d5\\u05dd <z@example.com>"',
])
def test_settings_that_work_still_load(tmp_path: Path, toml: str) -> None:
    code, err = render_with(tmp_path, toml + "\n")
    assert code == 0, err
    load_settings(tmp_path / "newsletter.toml")


def test_the_readme_shows_every_key_the_settings_declare() -> None:
    """README's "Every key" block and the schema (declared once, on the settings dataclasses) agree."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("Every key:\n\n```toml\n", 1)[1].split("```", 1)[0]
    shown: dict[str, set[str]] = {}
    table = ""
    for line in block.splitlines():
        line = line.removeprefix("# ")  # a key without a default value is shown commented out
        if line.startswith("["):
            table = line.split("]", 1)[0].strip("[")
        elif " = " in line:
            shown.setdefault(table, set()).add(line.split(" = ", 1)[0].strip())
    # [lists.NAME] is a table per list; the example shows one, with every key a list may have.
    expected = {**known_keys(), "lists.briefing": ("description", "signup", "title", "welcome")}
    assert {name: tuple(sorted(keys)) for name, keys in sorted(shown.items())} == dict(sorted(expected.items()))


@pytest.mark.parametrize(("toml", "message"), [
    ("[smtp]\ncolour = 1", "unknown key [smtp] colour (known: ca_file, connections, final_reply_timeout, host,"
     " max_per_hour, port, rate, security, timeout, tls_skip_verify_for, username)"),
    ('[smpt]\nhost = "x"', "unknown table [smpt] (known: bounces, database, dispatch, dkim, inbound, issues, sender,"
     " signup, smtp, templates, lists.NAME)"),
    ('[lists.Daily]\ntitle = "x"', "[lists.Daily]: a list name is lower-case letters, digits, '-' and '_'"),
    ('[lists.daily]\ntitel = "x"', "unknown key [lists.daily] titel (known: description, signup, title, welcome)"),
    ('[lists.daily]\nsignup = "yes"', "[lists.daily] signup must be true or false"),
    ('[lists.daily]\ntitle = "a\\u202eb"', "[lists.daily] title contains the direction control"),
    ("[signup]\npending_days = 0", "[signup] pending_days must be a whole number from 1 to 365"),
    ("smtp = 1", "'smtp' must be a table, [smtp]"),
    ('[smtp]\npassword = "s3cret"', "unknown key [smtp] password"),  # a secret comes from the environment only
    ('[sender]\nfrom_name = "Ed"', "unknown key [sender] from_name"),  # the file says from = "Ed <ed@…>"
    ("[templates]\ndir = 3", "[templates] dir must be a string"),
    ('[issues]\ndir = "a\\nb"', "[issues] dir must be one line"),
    ('[smtp]\nsecurity = "ssl"', "[smtp] security must be one of starttls, tls, none"),
    ('[sender]\nunsubscribe_mailto = "Ed <ed@example.com>"', "[sender] unsubscribe_mailto 'Ed <ed@example.com>'"
     " must be a plain address like editors@example.com"),
    ('[database]\nurl = "mysql://db.example.com/news"', "[database] url must start with postgresql://"),
])
def test_a_key_or_table_the_settings_dont_declare_is_named(tmp_path: Path, toml: str, message: str) -> None:
    code, err = render_with(tmp_path, toml + "\n")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'newsletter.toml'}: {message}"), err
    assert "s3cret" not in err


def test_inbound_imap_settings_and_their_password(tmp_path: Path) -> None:
    """[inbound]: defaults, the usual ports, and NEWSLETTER_IMAP_PASSWORD never in clear but to 127.0.0.1."""
    from newsletter.errors import ConfigError

    inbound = load_settings(None, {}).inbound
    assert (inbound.host, inbound.folder, inbound.processed_folder, inbound.unhandled_folder) == (
        "", "INBOX", "processed", "unhandled")
    assert (inbound.security, inbound.effective_port, inbound.batch_size) == ("tls", 993, 100)
    config = tmp_path / "newsletter.toml"
    config.write_text('[inbound]\nhost = "imap.example.com"\nsecurity = "none"\nusername = "bounces"\n')
    with pytest.raises(ConfigError, match=r'\[inbound\] security = "none" would send the IMAP password in clear'
                                          " to imap.example.com"):
        load_settings(config, {"NEWSLETTER_IMAP_PASSWORD": "s3cret"})
    assert load_settings(config, {}).inbound.effective_port == 143  # no password: nothing to protect
    config.write_text('[inbound]\nhost = "127.0.0.1"\nsecurity = "none"\nport = 1143\n')
    settings = load_settings(config, {"NEWSLETTER_IMAP_PASSWORD": "s3cret"})
    assert settings.inbound.password.reveal() == "s3cret" and settings.inbound.effective_port == 1143
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(("toml", "mailto"), [
    ("", "briefing@news.example.com"),                                                 # from
    ('reply_to = "Desk <desk@news.example.com>"', "desk@news.example.com"),            # reply-to
    ('reply_to = "desk@news.example.com"\nbounce_address = "bounces@news.example.com"',
     "bounces+unsubscribe@news.example.com"),                                          # the bounce mailbox's
    ('bounce_address = "bounces@news.example.com"\nunsubscribe_mailto = "out@news.example.com"',
     "out@news.example.com"),                                                          # an explicit one wins
])
def test_list_unsubscribe_mailto_goes_to_the_bounce_mailbox_when_there_is_one(tmp_path: Path, toml: str,
                                                                             mailto: str) -> None:
    """A human reads the reply-to; `newsletter inbound` reads the bounce mailbox and honours the request.

    (What a dispatched message carries is held in tests/deliver/test_return_paths.py.)
    """
    config = tmp_path / "newsletter.toml"
    config.write_text(f"[sender]\n{toml}\n", encoding="utf-8")
    sender = load_settings(config).sender
    assert sender.unsubscribe_address == mailto
    if sender.bounce_address and not sender.unsubscribe_mailto:
        assert mailto == ReturnPaths(sender.bounce_address, [b"k" * 32]).unsubscribe_address


def test_the_bounce_notice_names_where_bounces_and_mail_unsubscribes_go() -> None:
    assert SenderSettings(bounce_address="bounces@news.example.com").bounce_notice == ""
    notice = SenderSettings(reply_to="desk@news.example.com").bounce_notice
    assert notice == ("note: [sender] bounce_address is not set, so bounces (to briefing@news.example.com) and"
                      " unsubscribe requests by mail (to desk@news.example.com) can't be processed; set it to a"
                      " mailbox that `newsletter inbound` reads")
    # an explicit unsubscribe_mailto may be a mailbox `newsletter inbound` reads: only bounces are lost
    assert "unsubscribe" not in SenderSettings(unsubscribe_mailto="out@news.example.com").bounce_notice.split(";")[0]


def test_lists_are_read_in_the_files_order_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "newsletter.toml"
    config.parent.mkdir()
    config.write_text('[lists.daily]\ntitle = "The Daily"\ndescription = "Mornings."\nwelcome = "issues/hi.md"\n'
                      "[lists.events]\nsignup = false\n", encoding="utf-8")
    settings = load_settings(config, {})
    assert [item.name for item in settings.lists] == ["daily", "events"]
    daily = settings.list_settings("daily")
    assert daily is not None and daily.title == "The Daily" and daily.description == "Mornings."
    assert daily.welcome == tmp_path / "conf" / "issues" / "hi.md" and daily.signup
    events = settings.list_settings("events")
    assert events is not None and events.title == "events" and events.welcome is None and not events.signup
    assert settings.list_settings("other") is None
    assert settings.signup.pending_days == 7 and settings.signup.confirm_every_hours == 24
