"""Build newsletter/preflight/data/caniemail.json from the caniemail.com data set (MIT licence).

    .venv/bin/python scripts/caniemail_data.py [FEATURES_DIR] [--commit SHA] [--out DIR]

FEATURES_DIR is a caniemail checkout, or a copy holding its ``_features/*.md`` and
``LICENSE`` (default: ``../shared/caniemail`` beside this repository). The CSS and HTML
features are kept, and the image ones (``image-base64``: ``data:`` images; the formats). The source commit is
read from its ``SOURCE.txt`` (``… commit <sha> (<date>) …``) unless ``--commit`` names it.

What is kept, per feature: its title, category (css/html/image), caniemail.com address, the date
it was last tested, and for every client and platform the *last listed* version with its
level (``y`` supported, ``a`` partial, ``n`` not supported, ``u`` unknown). The last
listed version is the one caniemail.com itself treats as current (its estimated-support
summary takes ``forloop.last``); versions are not sorted here because the files mix
schemes (Outlook for Mac's ``2016`` precedes its newer ``16.80``). Notes, links and test
addresses stay out: the caniemail.com page of each feature has them.

The front matter is YAML written for Jekyll, which tolerates tab indentation that PyYAML
refuses; tabs become spaces before parsing, and every scalar is read as a string so a
version like ``16.80`` is not turned into the float ``16.8``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "caniemail"
DEFAULT_OUT = ROOT / "newsletter" / "preflight" / "data"
SITE = "https://www.caniemail.com/features/"
REPOSITORY = "https://github.com/hteumeuleu/caniemail"
_CATEGORIES = ("css", "html", "image")  # caniemail's others (amp, bimi) say nothing about an email's HTML
LEVELS = {"y": "supported", "a": "partial", "n": "not supported", "u": "unknown"}
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)
_SOURCE_COMMIT = re.compile(r"commit ([0-9a-f]{40})(?: \(([^)]*)\))?")


def parse_feature(path: Path) -> dict[str, Any]:
    """One ``_features/<slug>.md`` file as the compact record kept in the package."""
    match = _FRONT_MATTER.match(path.read_text(encoding="utf-8"))
    if not match:
        raise SystemExit(f"{path}: no YAML front matter")
    # Jekyll accepts tab indentation; PyYAML doesn't. BaseLoader keeps every scalar a string.
    data = yaml.load(match.group(1).replace("\t", "    "), Loader=yaml.BaseLoader)
    category = data.get("category", "")
    if category not in _CATEGORIES:
        raise SystemExit(f"{path}: category {category!r} is none of {', '.join(_CATEGORIES)}")
    support: dict[str, dict[str, list[str]]] = {}
    for client, platforms in (data.get("stats") or {}).items():
        for platform, versions in (platforms or {}).items():
            if not versions:
                continue
            version, value = list(versions.items())[-1]
            level = value.split()[0] if value.strip() else "u"
            if level not in LEVELS:
                raise SystemExit(f"{path}: {client}/{platform} {version}: unknown level {value!r}")
            support.setdefault(client, {})[platform] = [version, level]
    slug = path.stem
    return {
        "title": data.get("title", slug).strip(),
        "category": category,
        "url": f"{SITE}{slug}/",
        "tested": data.get("last_test_date", ""),
        "support": {client: dict(sorted(platforms.items())) for client, platforms in sorted(support.items())},
    }


def read_commit(source: Path) -> tuple[str, str]:
    """The caniemail commit (and its date, when known) named in ``SOURCE.txt``."""
    notes = source / "SOURCE.txt"
    if notes.is_file():
        found = _SOURCE_COMMIT.search(notes.read_text(encoding="utf-8"))
        if found:
            return found.group(1), found.group(2) or ""
    return "", ""


def build(source: Path, commit: str, commit_date: str) -> dict[str, Any]:
    """The whole data file: where it came from, the levels, and every feature by slug."""
    folder = source / "_features"
    paths = [path for category in _CATEGORIES for path in sorted(folder.glob(f"{category}-*.md"))]
    if not paths:
        raise SystemExit(f"{folder}: no {', '.join(f'{category}-*.md' for category in _CATEGORIES)} files")
    return {
        "source": REPOSITORY,
        "commit": commit,
        "commit_date": commit_date,
        "licence": "MIT, Copyright (c) 2019 Rémi Parmentier: see CANIEMAIL-LICENSE",
        "generated_by": "scripts/caniemail_data.py",
        "levels": LEVELS,
        "features": {path.stem: parse_feature(path) for path in sorted(paths)},
    }


def dump(data: dict[str, Any]) -> str:
    """Compact JSON with one feature a line, so a regeneration diffs feature by feature."""
    head = {key: value for key, value in data.items() if key != "features"}
    lines = [json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1] + ',"features":{']
    features = list(data["features"].items())
    for index, (slug, feature) in enumerate(features):
        comma = "," if index < len(features) - 1 else ""
        lines.append(json.dumps(slug) + ":" + json.dumps(feature, ensure_ascii=False, separators=(",", ":")) + comma)
    lines.append("}}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write ``caniemail.json`` and ``CANIEMAIL-LICENSE`` into the output folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE,
                        help="a caniemail checkout or copy (default: %(default)s)")
    parser.add_argument("--commit", default="", help="the source commit, when SOURCE.txt doesn't name it")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    source: Path = args.source
    commit, commit_date = read_commit(source)
    commit = args.commit or commit
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise SystemExit(f"{source}: no source commit (SOURCE.txt has none); give it with --commit SHA")
    licence = source / "LICENSE"
    if not licence.is_file():
        raise SystemExit(f"{licence}: missing; the MIT licence must ship with the data")
    data = build(source, commit, commit_date)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "caniemail.json").write_text(dump(data), encoding="utf-8")
    shutil.copyfile(licence, out / "CANIEMAIL-LICENSE")
    print(f"{out / 'caniemail.json'}: {len(data['features'])} features from {REPOSITORY} at {commit[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
