"""Run Debian's SpamAssassin on one message: the rules the package ships, local tests only.

``judge(message, home)`` pipes the bytes through ``spamassassin -L -t`` and returns its
:class:`Verdict`: the score, the threshold, every rule that fired with its points and
description, and the report table as SpamAssassin prints it. Nothing touches the network
(``-L``: no DNS blocklists, URIBL, Razor/Pyzor or DKIM key look-ups) or the machine's
``~/.spamassassin`` (``HOME`` and ``TMPDIR`` are a throwaway directory, the Bayes database is
off), and the rules are pinned to the package's own directory, so an ``sa-update`` on some
machine can't change the verdict.

SpamAssassin 4 looks for its "global state dir" in the home directory of the passwd entry,
not ``$HOME``, and creates ``~/.spamassassin`` there (``spamd`` can be told another one, the
``spamassassin`` command can't). So the command runs as ``perl -T -MThrowawayHome
/usr/bin/spamassassin …``: a five-line module, written into the throwaway directory, fills
the hook SpamAssassin's ``portable_getpwuid`` provides (``_getpwuid_wrapper``) with the real
entry but the throwaway home. The debug line that names the state dir proves it took effect.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

#: where Debian's spamassassin package installs its rules (sa-update would write elsewhere)
PACKAGE_RULES = Path("/usr/share/spamassassin")
INSTALL_HINT = "install it with: bash scripts/bootstrap.sh --spamassassin (CI's scripts/test.sh does)"

# Settings on top of the site config: no Bayes (it would learn from, and judge by, this
# machine's history), the message left as it is (report_safe 0: no wrapping of spam in a
# report message), and every rule with its exact score in a header of our own.
_CONFIG = (
    "use_bayes 0",
    "bayes_auto_learn 0",
    "dns_available no",
    "report_safe 0",
    "add_header all Tests _TESTSSCORES(,)_",
)
_SHIM = r"""package ThrowawayHome;
# SpamAssassin finds its global state dir through getpwuid's home, not $HOME: give it $HOME.
my ($home) = ($ENV{HOME} // '') =~ m{^(/[^\0]*)$} or die "ThrowawayHome: HOME must be an absolute path\n";
{ no warnings 'once';
  *Mail::SpamAssassin::Util::_getpwuid_wrapper = sub { my @entry = getpwuid($_[0]); $entry[7] = $home if @entry; @entry }; }
1;
"""
_STATUS_RE = re.compile(r"^(Yes|No), score=(-?\d+(?:\.\d+)?) required=(-?\d+(?:\.\d+)?)(?: |$)")
_REPORT_LINE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s+(.*)$")
_TIMEOUT = 120  # seconds: a run takes ~1 s; this only stops a hung one from hanging CI


@dataclass(frozen=True)
class Verdict:
    """What SpamAssassin made of one message."""

    score: float
    required: float
    is_spam: bool
    rules: dict[str, float]  # every rule that fired: name -> points
    descriptions: dict[str, str]  # name -> SpamAssassin's description
    report: str  # the "Content analysis details" table as spamassassin -t prints it
    version: str

    @property
    def positive(self) -> float:
        """The points of the rules that count against the message, without any bonus."""
        return sum(points for points in self.rules.values() if points > 0)

    def describe(self, label: str) -> str:
        """A block for the test log: score, threshold and one line per rule, highest first."""
        lines = [
            f"SpamAssassin {self.version} (local tests only) on {label}: score {self.score}"
            f" (rules sum {sum(self.rules.values()):.3f}, points against {self.positive:.3f})"
            f", required {self.required}: {'spam' if self.is_spam else 'not spam'};"
            f" {len(self.rules)} rule(s) fired:"
        ]
        for name, points in sorted(self.rules.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  {points:7.3f} {name:<24} {self.descriptions.get(name, '')}")
        return "\n".join(lines)


def spamassassin_command() -> str:
    """The path of ``spamassassin``; fails the test (not a skip: CI installs it) when it's missing."""
    path = shutil.which("spamassassin")
    if path is None:
        pytest.fail(f"spamassassin is not installed: {INSTALL_HINT}", pytrace=False)
    if not (PACKAGE_RULES / "50_scores.cf").is_file():
        pytest.fail(f"{PACKAGE_RULES} holds no SpamAssassin rules: {INSTALL_HINT}", pytrace=False)
    return path


def judge(message: bytes, home: Path) -> Verdict:
    """Run ``spamassassin -L -t`` on ``message`` with ``home`` as its home directory."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "ThrowawayHome.pm").write_text(_SHIM, encoding="utf-8")
    perl = shutil.which("perl") or "/usr/bin/perl"
    command = [
        perl, "-T", "-w", f"-I{home}", "-MThrowawayHome",  # -T as on spamassassin's #! line: perl insists
        spamassassin_command(),
        "--local",  # -L: local tests only, no network
        "--test-mode",  # -t: the report table appended to the message
        "--debug=config",  # only to read where the state dir went (on stderr)
        "--nocreate-prefs",
        "--prefspath", str(home / "user_prefs"),
        "--configpath", str(PACKAGE_RULES),
        *(f"--cf={line}" for line in _CONFIG),
    ]
    # Only what Perl needs: C locale for English descriptions, HOME for ~/.spamassassin.
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(home), "TMPDIR": str(home), "LC_ALL": "C", "LANG": "C"}
    completed = subprocess.run(command, input=message, capture_output=True, env=env, timeout=_TIMEOUT, check=False)
    output = completed.stdout.decode("utf-8", "replace")
    log = completed.stderr.decode("utf-8", "replace")
    assert completed.returncode == 0, f"spamassassin exited {completed.returncode}: {log[-3000:]}"
    state = re.findall(r"global_state_dir set to (.*)", log)
    assert state == [str(home / ".spamassassin")], f"SpamAssassin kept its state in {state}, not in {home}"
    return parse_output(output)


def parse_output(output: str) -> Verdict:
    """The verdict from what ``spamassassin -t`` printed: its X-Spam-* headers and the report table."""
    text = output.replace("\r\n", "\n")
    head = re.sub(r"\n[ \t]+", " ", text.split("\n\n", 1)[0])  # unfold
    headers: dict[str, str] = {}
    for line in head.split("\n"):
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    status = headers.get("x-spam-status")
    assert status is not None, f"no X-Spam-Status in spamassassin's output:\n{output[:2000]}"
    match = _STATUS_RE.match(status)
    assert match, f"unexpected X-Spam-Status: {status}"
    tests = headers.get("x-spam-tests", "")
    rules: dict[str, float] = {}
    for item in tests.replace(" ", "").split(","):
        if item and item != "none":
            name, _, points = item.partition("=")
            rules[name] = float(points)

    report = ""
    descriptions: dict[str, str] = {}
    if "Content analysis details:" in text:
        report = text[text.index("Content analysis details:"):].rstrip("\n")
        table = report.split("\n---- ", 1)[-1].split("\n")[1:]  # below the dashed line
        last = ""
        for line in table:
            row = _REPORT_LINE_RE.match(line)
            if row:
                last = row.group(2)
                descriptions[last] = row.group(3).strip()
            elif last and line.strip():  # a description wrapped onto the next line
                descriptions[last] += " " + line.strip()
    version = headers.get("x-spam-checker-version", "?").split(" (", 1)[0].removeprefix("SpamAssassin ")
    return Verdict(
        score=float(match.group(2)),
        required=float(match.group(3)),
        is_spam=match.group(1) == "Yes",
        rules=rules,
        descriptions=descriptions,
        report=report,
        version=version,
    )
