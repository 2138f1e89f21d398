"""Output files: atomic writes whose modes follow the umask, and one run's set of outputs swapped into place.

`write_text_atomically(path, text)`: the text goes to a new temporary file beside `path` (created as `open()`
creates files, mode 0o666 minus the umask), which is fsynced and then replaces `path` by a rename, and the folder is fsynced: readers see the old file or
the new one, never a part, also after a crash (the checkpoint marker of lambda_grpo.complete_checkpoints relies
on it).

`StagedOutputs(out_dir)`: a run writes all its files into a private staging folder inside `out_dir`; `commit`
moves them into `out_dir` (the file named last, e.g. a report, after all others) and then deletes the files of
the previous run that the new set does not have. A failure before `commit` leaves `out_dir` as it was (the
staging folder is removed); files in `out_dir` that no run of ours wrote are never touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden name beside `path` (".<name>.<random>.tmp")."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file and a rename (module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        with temporary.open("x", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class StagedOutputs:
    """A run's outputs, written into a staging folder of `out_dir` and moved in by `commit` (module docstring).

    Use as a context manager: leaving it by an exception (or without `commit`) discards the staged files.
    """

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def path(self, name: str) -> Path:
        """Where to write the output file `name` (a plain file name)."""
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"output name {name!r}: expected a plain file name")
        return self.staging / name

    def stale(self, previous: Iterable[str], new: Iterable[str]) -> list[str]:
        """The files of `previous` (the previous run's output names) in `out_dir` that `new` does not have."""
        names = set(previous) - set(new)
        return sorted(name for name in names if Path(name).name == name and (self.out_dir / name).is_file())

    def commit(self, last: str, remove: Iterable[str]) -> None:
        """Move the staged files into `out_dir`, `last` after all others; then delete the files `remove` of
        `out_dir` (from `stale`)."""
        staged = sorted(path.name for path in self.staging.iterdir() if path.name != last)
        for name in [*staged, last]:
            os.replace(self.staging / name, self.out_dir / name)
        for name in remove:
            (self.out_dir / name).unlink(missing_ok=True)
