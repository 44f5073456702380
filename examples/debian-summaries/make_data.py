"""The debian-summaries example's data: Debian package descriptions and their one-line synopses.

    python examples/debian-summaries/make_data.py          # reads /var/lib/dpkg/status, writes data/packages.csv

Every Debian machine describes its installed packages in /var/lib/dpkg/status: a one-line synopsis and a long
description written by the package's maintainer. Summarising the long description into the synopsis is a real
summarization task on real text. Run once by a maintainer; the CSV is committed, so the project's data does not
change with the machine. Its columns are the team's own names (package, source, section, synopsis, description):
params.yaml maps them with `fields:`, and `source` (the Debian source package) keeps related packages in one split.
"""

from __future__ import annotations

import csv
import email.parser
import sys
from pathlib import Path

STATUS = Path("/var/lib/dpkg/status")
OUT = Path(__file__).resolve().parent / "data" / "packages.csv"
SKIP = ("transitional", "dummy package", "metapackage")  # boilerplate descriptions, not summaries of anything


def long_description(folded: str) -> str:
    """deb822 continuation lines: a leading space, and " ." for an empty line between paragraphs."""
    lines = [line[1:] if line.startswith(" ") else line for line in folded.splitlines()[1:]]
    text = "\n".join("" if line.strip() == "." else line.rstrip() for line in lines)
    return text.strip()


def packages(status: Path) -> list[dict]:
    rows, parser = [], email.parser.HeaderParser()
    for paragraph in status.read_text(encoding="utf-8").split("\n\n"):
        fields = parser.parsestr(paragraph)
        description = fields.get("Description")
        if not fields.get("Package") or not description:
            continue
        synopsis = description.splitlines()[0].strip()
        body = long_description(description)
        if len(body) < 80 or len(synopsis) < 10 or any(s in (synopsis + body).lower() for s in SKIP):
            continue
        source = (fields.get("Source") or fields["Package"]).split(" ")[0]  # "Source: name (version)"
        rows.append(
            {
                "package": fields["Package"],
                "source": source,
                "section": fields.get("Section", ""),
                "synopsis": synopsis,
                "description": body,
            }
        )
    return sorted(rows, key=lambda r: r["package"])


def main() -> int:
    if not STATUS.is_file():
        print(f"{STATUS} not found: run this on a Debian or Ubuntu machine", file=sys.stderr)
        return 1
    rows = packages(STATUS)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".csv.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["package", "source", "section", "synopsis", "description"])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(OUT)
    print(f"{OUT}: {len(rows)} packages from {len({r['source'] for r in rows})} source packages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
