"""Check that the installed Python packages are the versions this project pins (run at image build time).

    python docker/check_versions.py            # from the repository root; exit 1 on any mismatch
    python docker/check_versions.py --constraints FILE   # another constraints file (tests)

Checked: every requirement of pyproject.toml's `dependencies` and `gpu` extra (verl==0.9.1, ray>=2.52.0,
torch==2.11.0, ...) and every pin of constraints-gpu.txt (ray==2.60.0, ...). A local version label counts
as the version it labels (torch 2.11.0+cu130 is torch 2.11.0), as in pip. Prints one line per package.
Standard library and `packaging` only: it runs in the image's own interpreter, before anything else.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def pinned_requirements(pyproject_text: str, constraints_text: str) -> list[Requirement]:
    """pyproject's `dependencies` + `gpu` extra, then the constraints file's lines (comments skipped), each
    (name, version range) once."""
    project = tomllib.loads(pyproject_text)["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["gpu"]]
    lines += [line.split("#", 1)[0].strip() for line in constraints_text.splitlines()]
    unique = {}
    for requirement in (Requirement(line) for line in lines if line):
        unique.setdefault((requirement.name.lower(), str(requirement.specifier)), requirement)
    return list(unique.values())


def installed_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def mismatches(requirements: Iterable[Requirement],
               installed: Callable[[str], str | None] = installed_version) -> tuple[list[str], list[str]]:
    """(one line per requirement checked, one line per requirement not met)."""
    report, problems = [], []
    for requirement in requirements:
        have = installed(requirement.name)
        if have is None:
            problems.append(f"{requirement.name} is not installed (wanted {requirement})")
        elif not requirement.specifier.contains(have, prereleases=True):
            problems.append(f"{requirement.name} {have} does not satisfy {requirement}")
        else:
            report.append(f"{requirement.name} {have} satisfies {requirement}")
    return report, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check installed versions against this project's pins.")
    parser.add_argument("--pyproject", default=str(REPO / "pyproject.toml"))
    parser.add_argument("--constraints", default=str(REPO / "constraints-gpu.txt"))
    args = parser.parse_args(argv)
    requirements = pinned_requirements(Path(args.pyproject).read_text(), Path(args.constraints).read_text())
    report, problems = mismatches(requirements)
    print("\n".join(report))
    if problems:
        print("version check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"version check passed: {len(report)} requirements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
