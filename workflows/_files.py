"""Finding the example inputs, shared by the example workflows.

Not a workflow: files whose name starts with '_' are skipped when statepipe looks for workflows.
Workflow files are loaded by path rather than as a package, so they load this one the same way:

    _spec = importlib.util.spec_from_file_location("statepipe_examples_files", Path(__file__).with_name("_files.py"))
    files = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(files)
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def locate(path: str, *, what: str = "document", directory: bool = False) -> Path:
    """A relative path is tried against the current directory, then the repository root, so the
    default works both from a checkout and from wherever `statepipe run` is started."""
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, REPO_ROOT / given]
    for candidate in candidates:
        if candidate.is_dir() if directory else candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{what} {path!r} not found (looked for {looked})")
