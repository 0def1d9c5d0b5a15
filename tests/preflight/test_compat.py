"""Client compatibility from the caniemail data: the packaged data, its generator, and the check.

Where a test relies on a fact of the data set ("Outlook for Windows has no flexbox"), it
asserts the fact first, so a regenerated data file that changes it says so plainly.
"""

from __future__ import annotations

import importlib.util
import json
import re
from importlib import resources
from pathlib import Path
from types import ModuleType

import pytest

from newsletter.compose.message import fill_html
from newsletter.compose.sample import example_recipient
from newsletter.config import Settings
from newsletter.models import RenderedIssue
from newsletter.preflight import compat
from newsletter.preflight.compat import (
    BRIEFING_CHOICES,
    DEFAULT_CLIENTS,
    Accepted,
    check_compat,
    features_used,
    known_clients,
    load_caniemail,
    resolve_clients,
    target_name,
)
from newsletter.preflight.finding import Finding

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "preflight"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "caniemail_data.py"
OUTLOOK = ("outlook", "windows")
GMAIL = ("gmail", "desktop-webmail")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def level(slug: str, target: tuple[str, str]) -> str | None:
    found = load_caniemail().features[slug].level(target)
    return found[1] if found else None


def url(slug: str) -> str:
    return f"https://www.caniemail.com/features/{slug}/"


def by_feature(findings: list[Finding], check: str) -> dict[str, Finding]:
    return {finding.url: finding for finding in findings if finding.code == check}


# --- the packaged data ------------------------------------------------------------------


def test_packaged_data_keeps_source_commit_licence_and_addresses() -> None:
    data = load_caniemail()
    assert re.fullmatch(r"[0-9a-f]{40}", data.commit)
    licence = resources.files("newsletter.preflight").joinpath("data", "CANIEMAIL-LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "Rémi Parmentier" in licence
    raw = json.loads(resources.files("newsletter.preflight").joinpath("data", "caniemail.json").read_text(encoding="utf-8"))
    assert raw["source"] == "https://github.com/hteumeuleu/caniemail" and raw["commit"] == data.commit
    assert len(data.features) > 250
    for slug, feature in data.features.items():
        assert feature.url == url(slug)
        assert feature.category in ("css", "html", "image")  # image: data: images (image-base64), the formats
        assert all(value[1] in "yanu" for value in feature.support.values())
    assert not any("notes" in entry or "notes_by_num" in entry for entry in raw["features"].values())


def test_every_feature_the_checker_maps_to_is_in_the_data() -> None:
    known = load_caniemail().features
    named = {
        *compat._ELEMENT_FEATURES.values(), *compat._ATTRIBUTE_FEATURES.values(),
        *compat._PROPERTY_FEATURES.values(), *compat._DISPLAY_FEATURES.values(),
        *compat._FUNCTION_FEATURES.values(), *compat._MEDIA_FEATURES.values(), *compat._AT_RULE_FEATURES.values(),
        *(choice.feature for choice in BRIEFING_CHOICES),
        *(f"css-unit-{'percent' if unit == '%' else unit}" for unit in compat._UNITS),
    }
    assert sorted(named - set(known)) == []


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("caniemail_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_source(folder: Path, *, source_txt: bool = True) -> None:
    features = folder / "_features"
    features.mkdir(parents=True)
    # What the real files do: tab indentation, trailing commas, note markers, an unquoted
    # version, versions listed out of order (the last one listed is the current one).
    (features / "css-made-up.md").write_text(
        '---\ntitle: "made-up"\ncategory: css\nlast_test_date: "2024-01-02"\nstats: {\n'
        '\toutlook: {\n\t\tmacos: {\n\t\t\t"2016":"n",\n\t\t\t16.80: "a #1",\n\t\t},\n'
        '\t\toutlook-com: {\n\t\t\t"2024-04":"n",\n\t\t\t"2024-01":"y"\n\t\t}\n\t},\n'
        '\tgmail: {\n\t\tandroid: {\n\t\t\t"2019-08":"u"\n\t\t}\n\t}\n}\n'
        'notes_by_num: {\n\t"1": "Partial. A prose note that must stay out."\n}\n---\n\nProse body.\n',
        encoding="utf-8",
    )
    (features / "html-thing.md").write_text(
        '---\ntitle: "<thing> element"\ncategory: html\nstats: {\n  yahoo: {\n    ios: {\n'
        '      "2020-01": "y"\n    }\n  }\n}\n---\n', encoding="utf-8",
    )
    (features / "image-thing.md").write_text('---\ntitle: "Thing image format"\ncategory: image\nstats: {\n'
                                             '  gmail: {\n    ios: {\n      "2020-02": "n"\n    }\n  }\n}\n---\n')
    (features / "amp-ignored.md").write_text('---\ntitle: "not css, html or image"\ncategory: amp\n---\n')
    (folder / "LICENSE").write_text("MIT License\n\nCopyright (c) 2019 Rémi Parmentier\n", encoding="utf-8")
    if source_txt:
        (folder / "SOURCE.txt").write_text(f"Source: x commit {'ab' * 20} (Mon Jun 29 2026) — kept\n")


def test_generator_keeps_the_latest_level_and_drops_the_prose(tmp_path: Path) -> None:
    _write_source(tmp_path / "src")
    out = tmp_path / "out"
    assert _load_script().main([str(tmp_path / "src"), "--out", str(out)]) == 0
    data = json.loads((out / "caniemail.json").read_text(encoding="utf-8"))
    assert data["commit"] == "ab" * 20 and data["commit_date"] == "Mon Jun 29 2026"
    assert sorted(data["features"]) == ["css-made-up", "html-thing", "image-thing"]  # css-*, html-*, image-*
    assert data["features"]["image-thing"]["support"] == {"gmail": {"ios": ["2020-02", "n"]}}
    made_up = data["features"]["css-made-up"]
    assert made_up == {
        "title": "made-up", "category": "css", "url": url("css-made-up"), "tested": "2024-01-02",
        "support": {
            "gmail": {"android": ["2019-08", "u"]},
            "outlook": {"macos": ["16.80", "a"], "outlook-com": ["2024-01", "y"]},
        },
    }
    assert "prose" not in (out / "caniemail.json").read_text(encoding="utf-8").lower()
    assert (out / "CANIEMAIL-LICENSE").read_text(encoding="utf-8").startswith("MIT License")


def test_generator_refuses_a_source_without_commit(tmp_path: Path) -> None:
    _write_source(tmp_path / "src", source_txt=False)
    with pytest.raises(SystemExit, match="--commit"):
        _load_script().main([str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


# --- clients --------------------------------------------------------------------------


def test_default_clients_stand_for_their_caniemail_platforms() -> None:
    clients = {client.id: client.targets for client in resolve_clients(DEFAULT_CLIENTS)}
    assert clients == {
        "gmail": (("gmail", "desktop-webmail"), ("gmail", "ios"), ("gmail", "android")),
        "outlook-windows": (OUTLOOK,),
        "apple-mail": (("apple-mail", "macos"), ("apple-mail", "ios")),
        "yahoo": (("yahoo", "desktop-webmail"), ("yahoo", "ios"), ("yahoo", "android")),
    }
    assert known_clients()["thunderbird-macos"].targets == (("thunderbird", "macos"),)
    assert target_name(OUTLOOK) == "Outlook Windows"


def test_an_unknown_client_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ValueError, match=r"unknown client 'outlook-window' \(did you mean outlook-windows"):
        resolve_clients(["gmail", "outlook-window"])


# --- what the HTML uses ----------------------------------------------------------------


def test_features_used_reads_values_selectors_at_rules_and_elements() -> None:
    html = """<!doctype html><html lang="en"><head><style>
      /* a comment */
      @media (prefers-color-scheme: dark) {
        div > p + span ~ a[href]::before, .a.b { color: rgba(0, 0, 0, .5) !important; width: calc(100% - 2em); }
      }
      @font-face { font-family: X; src: url(https://example.com/x.woff2); }
      p:first-child { margin-top: 1.5rem; font-family: system-ui, sans-serif; }
    </style></head><body><table role="presentation"><tr><td valign="top">
      <a href="mailto:a@example.com">mail</a><a href="#top">top</a><img srcset="a.png 2x" alt="">
    </td></tr></table></body></html>"""
    used = {usage.feature for usage in features_used(html)}
    assert {
        "html-doctype", "html-lang", "html-style", "css-comments", "css-at-media", "css-at-media-prefers-color-scheme",
        "css-selector-child", "css-selector-adjacent-sibling", "css-selector-general-sibling",
        "css-selector-attribute", "css-pseudo-element-before", "css-selector-grouping", "css-selector-chaining",
        "css-selector-class", "css-selector-type", "css-rgba", "css-important", "css-width", "css-unit-calc",
        "css-unit-percent", "css-unit-em", "css-at-font-face", "css-pseudo-class-first-child", "css-margin",
        "css-unit-rem", "css-sytem-ui", "html-table", "html-role", "html-valign", "html-mailto-links",
        "html-anchor-links", "html-img", "html-srcset",
    } <= used
    # a colour's hex digits are no unit, and a URL's path is no value
    assert "css-unit-ex" not in used and "css-unit-in" not in used
    rule = next(usage for usage in features_used(html) if usage.feature == "css-rgba")
    assert rule.where.startswith("<style> @media (prefers-color-scheme: dark) div > p")
    assert rule.conditions == ("html-style", "css-at-media", "css-at-media-prefers-color-scheme")


# --- the check, on fixtures made for it -----------------------------------------------------


@pytest.mark.parametrize("slug, target", [
    ("css-display-flex", OUTLOOK),
    ("css-pseudo-class-hover", OUTLOOK),
    ("css-variables", GMAIL),
    ("html-video", GMAIL),
    ("css-opacity", OUTLOOK),
])
def test_risky_fixture_reports_what_a_default_client_lacks(slug: str, target: tuple[str, str]) -> None:
    assert level(slug, target) == "n"  # the caniemail fact this test relies on
    unsupported = by_feature(check_compat(fixture("compat-risky.html")), "compat-unsupported")
    finding = unsupported[url(slug)]
    assert finding.severity == "warning"
    assert target_name(target) in finding.message


def test_risky_fixture_says_where_and_reports_unknown_features_as_unknown() -> None:
    findings = check_compat(fixture("compat-risky.html"))
    flex = by_feature(findings, "compat-unsupported")[url("css-display-flex")]
    assert flex.where == "div.row[style]"
    unknown = [finding for finding in findings if finding.code == "compat-unknown"]
    assert [(finding.severity, finding.where) for finding in unknown if "zoom" in finding.message] == [
        ("info", "div.row[style]"),
    ]


def test_safe_fixture_has_no_finding_above_info() -> None:
    html = fixture("compat-safe.html")
    findings = check_compat(html)
    assert [finding for finding in findings if finding.counts] == []
    used = {usage.feature for usage in features_used(html)}
    assert {"html-table", "html-p", "html-h1-h6", "html-strong", "html-img", "css-background-color"} <= used


def test_partial_support_is_info_and_an_untested_client_is_unknown_not_supported() -> None:
    html = fixture("compat-safe.html")
    assert level("html-width", OUTLOOK) == "a"
    partial = by_feature(check_compat(html, clients=["outlook-windows"]), "compat-partial")
    assert partial[url("html-width")].severity == "info"
    assert level("html-table", ("thunderbird", "windows")) is None  # caniemail never tested it there
    untested = by_feature(check_compat(html, clients=["thunderbird-windows"]), "compat-untested")
    assert "Mozilla Thunderbird Windows" in untested[url("html-table")].message


def test_outlook_conditional_comments_decide_who_is_checked() -> None:
    html = fixture("compat-outlook.html")
    assert level("css-transform", OUTLOOK) == "n" and level("css-transform", GMAIL) == "n"
    audiences = {usage.where: usage.audience for usage in features_used(html) if usage.feature == "css-transform"}
    assert audiences == {"<!--[if mso]> div.outlook-only[style]": "mso", "div.others-only[style]": "not-mso"}
    gmail = by_feature(check_compat(html, clients=["gmail"]), "compat-unsupported")[url("css-transform")]
    assert gmail.where == "div.others-only[style]"
    outlook = by_feature(check_compat(html, clients=["outlook-windows"]), "compat-unsupported")[url("css-transform")]
    assert outlook.where == "<!--[if mso]> div.outlook-only[style]"


def test_what_sits_inside_an_ignored_media_query_is_not_reported_again() -> None:
    assert level("css-at-media", OUTLOOK) == "n" and level("css-opacity", OUTLOOK) == "n"
    inside = by_feature(check_compat(fixture("compat-outlook.html"), clients=["outlook-windows"]), "compat-unsupported")
    assert url("css-at-media") in inside and url("css-opacity") not in inside
    inline = by_feature(check_compat(fixture("compat-risky.html"), clients=["outlook-windows"]), "compat-unsupported")
    assert inline[url("css-opacity")].where == "p.faded[style]"


def test_an_accepted_choice_becomes_info_with_its_reason_only_for_the_clients_it_names() -> None:
    html = fixture("compat-risky.html")
    reason = "the two columns stack, which reads fine"
    covered = check_compat(html, accepted=[Accepted("css-display-flex", ("outlook-windows",), reason)])
    flex = by_feature(covered, "compat-unsupported")[url("css-display-flex")]
    assert flex.severity == "info" and flex.message.endswith(f"accepted, {reason}")
    elsewhere = check_compat(html, accepted=[Accepted("css-display-flex", ("gmail",), reason)])
    assert by_feature(elsewhere, "compat-unsupported")[url("css-display-flex")].severity == "warning"


# --- the seed and the built-in template ------------------------------------------------------


def test_seed_passes_with_the_templates_choices_and_every_choice_is_needed(
    seed_rendered: RenderedIssue, settings: Settings,
) -> None:
    html = fill_html(seed_rendered, example_recipient(settings))
    plain = check_compat(html)
    assert any(finding.counts for finding in plain)  # without the choices, the seed has warnings
    chosen = check_compat(html, accepted=BRIEFING_CHOICES)
    assert [str(finding) for finding in chosen if finding.counts] == []
    accepted = {finding.url for finding in chosen if ": accepted, " in finding.message}
    assert accepted == {url(choice.feature) for choice in BRIEFING_CHOICES}  # none is stale


def test_a_data_image_is_checked_against_caniemails_base64_page() -> None:
    assert level("image-base64", ("gmail", "ios")) == "n" and level("image-base64", ("apple-mail", "ios")) == "y"
    html = ('<html><body><img class="dot" src="data:image/png;base64,iVBORw0KGgo=" alt="A dot" width="5" height="5">'
            '<img src="https://example.com/a.png" alt="A photo of a harbour" width="5" height="5"></body></html>')
    uses = [usage for usage in features_used(html) if usage.feature == "image-base64"]
    assert [usage.where for usage in uses] == ["img.dot[src=data:image/png;base64,iVBORw0KGgo=]"]
    [finding] = by_feature(check_compat(html, clients=["gmail"]), "compat-unsupported").values()
    assert finding.url == url("image-base64") and "data: URI" in finding.message and "Gmail iOS" in finding.message
    assert not [finding for finding in check_compat(html, clients=["apple-mail"]) if finding.url == url("image-base64")]
