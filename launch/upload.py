"""What `launch/submit` uploads as a Ray job's working dir: an allow-list of the project's own files.

    python3 launch/upload.py list REPO           exactly the files that would be uploaded, one per line
    python3 launch/upload.py stage REPO DEST     copy those files, and nothing else, into DEST

A job runs `python3 -m lambda_grpo.main` (or `lambda_grpo.preflight`) in the uploaded folder, so it
needs the package's code and the Hydra configs beside it, nothing more:

    lambda_grpo/**/*.py    configs/**/*.py    configs/**/*.yaml

Only regular files (no symlinks), and no file or folder whose name starts with "." or that is a
`__pycache__`. Everything else stays on this machine whatever its name: .git, venvs, data,
checkpoints, weights, keys, cloud and registry credentials, notes. Data, models and checkpoints are
named by absolute paths on the cluster's shared storage. `launch/submit` uploads the staged copy, so
what Ray packs is this list: Ray's own excludes and .gitignore handling never come into play.
Standard library only (it runs under whatever python3 is on PATH).
"""

from __future__ import annotations

import os
import shutil
import sys

# Top-level folder -> the file suffixes uploaded from it (and from its subfolders).
ALLOWED = {"lambda_grpo": (".py",), "configs": (".py", ".yaml")}


def upload_files(repo: str) -> list[str]:
    """The repository-relative paths to upload, sorted."""
    found = []
    for top, suffixes in ALLOWED.items():
        for folder, subfolders, files in os.walk(os.path.join(repo, top)):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d != "__pycache__"
                                   and not os.path.islink(os.path.join(folder, d)))
            for name in files:
                path = os.path.join(folder, name)
                if name.endswith(suffixes) and not name.startswith(".") and not os.path.islink(path) \
                        and os.path.isfile(path):
                    found.append(os.path.relpath(path, repo))
    return sorted(found)


def stage(repo: str, dest: str) -> list[str]:
    """Copy the upload list into `dest` (an empty folder), keeping relative paths and file modes."""
    files = upload_files(repo)
    for relative in files:
        target = os.path.join(dest, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(repo, relative), target)
    return files


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "list":
        print("\n".join(upload_files(argv[1])))
        return 0
    if len(argv) == 3 and argv[0] == "stage":
        if os.listdir(argv[2]):
            print(f"error: staging folder {argv[2]} is not empty", file=sys.stderr)
            return 1
        files = stage(argv[1], argv[2])
        print(f"Uploading {len(files)} files of the project (lambda_grpo/, configs/; see launch/submit --list-upload).")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
