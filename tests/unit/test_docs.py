"""The project's documents hold together: every link in README.md and docs/ resolves,
every repository path they name exists, every code comment that points at a document
points at one the repository has, and docs/configuration.md lists every setting of
.env.example with its default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
# Files whose comments may point at documents: the code and the build and deploy files.
CODE_DIRS = ("shared", "services", "tools", "tests", "deploy", ".ci")
CODE_SUFFIXES = {".py", ".yml", ".yaml", ".toml", ".ini", ".json", ".sh", ".cfg"}
CODE_FILES = ("Makefile", "Dockerfile", "pyproject.toml", "alembic.ini", ".env.example")

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"(?:services|shared|tools|tests|deploy|docs)/[\w./-]*")
DOC_REFERENCE = re.compile(r"(?<![\w/.])(docs/[\w/.-]+\.md)(#[\w-]+)?")
# Documents this repository does not have, and places outside it.
FOREIGN = re.compile(r"design\.md|external-api\.md|api-contract\.md|\.\./shared")
# Paths a user creates: named by the documents, absent from the repository.
USER_FILES = {"deploy/.env"}


def _prose(path: Path) -> str:
    """The text of a Markdown file without its fenced code blocks."""
    return FENCE.sub("", path.read_text())


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in _prose(path).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


def broken_link(source: Path, target: str) -> str | None:
    """Why a link of `source` does not resolve, or None."""
    if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
        return None
    file_part, _, anchor = target.partition("#")
    path = (source.parent / file_part).resolve() if file_part else source
    if not path.exists():
        return f"{file_part}: no such file"
    if REPO not in path.parents and path != REPO:
        return f"{file_part}: outside the repository"
    if anchor and path.suffix == ".md" and anchor not in anchors(path):
        return f"#{anchor}: no such heading in {_name(path)}"
    return None


def code_files() -> list[Path]:
    files = [REPO / name for name in CODE_FILES if (REPO / name).exists()]
    for folder in CODE_DIRS:
        files += [
            path
            for path in (REPO / folder).rglob("*")
            if path.is_file()
            and (path.suffix in CODE_SUFFIXES or not path.suffix)
            and ".venv" not in path.parts
        ]
    return sorted(files)


def test_the_documents_exist() -> None:
    names = {_name(path) for path in DOCUMENTS}
    assert {
        "README.md",
        "docs/architecture.md",
        "docs/runbook.md",
        "docs/decisions/README.md",
    } <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_every_link_resolves(document: Path) -> None:
    broken = [
        f"{target}: {why}"
        for target in LINK.findall(_prose(document))
        if (why := broken_link(document, target)) is not None
    ]
    assert not broken, f"{_name(document)} has broken links"


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_every_repository_path_named_exists(document: Path) -> None:
    """`services/x.py`, `tools/infra` (a module or a package): renamed code must be
    renamed in the documents too."""
    missing = sorted(
        {
            path.rstrip("/.")
            for span in CODE_SPAN.findall(_prose(document))
            for path in REPO_PATH.findall(span)
            if not any(mark in span for mark in "<*{")
            and path not in USER_FILES
            and not (REPO / path).exists()
            and not (REPO / f"{path.rstrip('/.')}.py").exists()
        }
    )
    assert not missing, f"{_name(document)} names paths the repository lacks"


def test_code_points_only_at_documents_the_repository_has() -> None:
    wrong = []
    for path in code_files():
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            where = f"{_name(path)}:{number}"
            if FOREIGN.search(line):
                wrong.append(f"{where}: {line.strip()}")
            for document, anchor in DOC_REFERENCE.findall(line):
                target = REPO / document
                if not target.exists():
                    wrong.append(f"{where}: {document} does not exist")
                elif anchor and anchor[1:] not in anchors(target):
                    wrong.append(f"{where}: no heading {anchor} in {document}")
    assert not wrong


def test_the_configuration_page_lists_every_setting_with_its_default() -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    example = (REPO / ".env.example").read_text()
    settings = re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", example, re.MULTILINE)
    assert settings
    missing = [
        f"{name}={default}"
        for name, default in settings
        if f"| `{name}` | {f'`{default}`' if default else 'empty'} |" not in page
    ]
    assert not missing, "docs/configuration.md is out of step with .env.example"
