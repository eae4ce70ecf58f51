"""Finding workflows: by name in the workflow folders, or by `file.py[:object]`.

A run records the reference it was loaded from, so `resume` loads the same definition."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statepipe.definition.workflow import Workflow
from statepipe.errors import DefinitionError, NotFoundError, StatepipeError


@dataclass(frozen=True)
class Loaded:
    workflow: Workflow
    ref: str  # "absolute/path.py:object", stored with the run


def workflow_dirs() -> list[Path]:
    """`./workflows` first, then each folder in STATEPIPE_WORKFLOWS_PATH (os.pathsep-separated)."""
    dirs = [Path.cwd() / "workflows"]
    extra = os.environ.get("STATEPIPE_WORKFLOWS_PATH", "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs


# a server loads workflows on several threads (requests, its worker): a file imported once
_IMPORTING = threading.RLock()


def _import_file(path: Path) -> object:
    with _IMPORTING:
        return _import_once(path)


def _import_once(path: Path) -> object:
    key = "statepipe_wf_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise DefinitionError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except StatepipeError:
        del sys.modules[key]
        raise
    except SyntaxError as exc:
        del sys.modules[key]
        raise DefinitionError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from exc
    except Exception as exc:  # a workflow file's own bug: report it as a definition error
        del sys.modules[key]
        raise DefinitionError(f"{path}: failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def _workflows_in(module: object) -> dict[str, Workflow]:
    return {k: v for k, v in vars(module).items() if isinstance(v, Workflow)}


def load_file(path: Path, obj: str | None = None, name: str | None = None) -> Loaded:
    path = path.resolve()
    if not path.is_file():
        raise NotFoundError(f"workflow file {path} does not exist")
    found = _workflows_in(_import_file(path))
    if obj is not None:
        if obj not in found:
            raise NotFoundError(f"{path}: no Workflow object named {obj!r}")
        wf_obj = obj
    elif name is not None and any(w.name == name for w in found.values()):
        wf_obj = next(k for k, w in found.items() if w.name == name)
    elif len(found) == 1:
        wf_obj = next(iter(found))
    elif not found:
        raise DefinitionError(f"{path}: defines no Workflow")
    else:
        raise DefinitionError(f"{path}: defines several workflows ({', '.join(found)}); use {path.name}:OBJECT")
    wf = found[wf_obj]
    wf.validate()
    return Loaded(wf, f"{path}:{wf_obj}")


def load(spec: str) -> Loaded:
    """Load `name`, `path.py` or `path.py:object`."""
    if spec.endswith(".py") or ".py:" in spec:
        file, _, obj = spec.partition(".py")
        return load_file(Path(file + ".py"), obj.lstrip(":") or None)
    return load_named(spec)


def load_named(spec: str) -> Loaded:
    """Load a workflow by its name only, from the workflow folders: what a name from another
    machine (an HTTP request) may load. Workflow names are letters, digits, '_' and '-' (see
    Workflow), so nothing else is looked for: a path would import any file, running its code."""
    if not spec.replace("_", "").replace("-", "").isalnum():
        raise NotFoundError(f"unknown workflow {spec!r}: workflow names are letters, digits, '_' or '-'; see `statepipe workflows`")
    for d in workflow_dirs():
        candidate = d / f"{spec}.py"
        if candidate.is_file():
            return load_file(candidate, name=spec)
    for d in workflow_dirs():
        for candidate in sorted(d.glob("*.py")) if d.is_dir() else []:
            if candidate.name.startswith("_"):
                continue
            try:
                found = _workflows_in(_import_file(candidate.resolve()))
            except StatepipeError:
                continue
            for obj, wf in found.items():
                if wf.name == spec:
                    wf.validate()
                    return Loaded(wf, f"{candidate.resolve()}:{obj}")
    searched = ", ".join(str(d) for d in workflow_dirs())
    raise NotFoundError(f"unknown workflow {spec!r} (searched {searched}); see `statepipe workflows`")


def load_ref(ref: str) -> Loaded:
    """Load the definition a run was started from."""
    file, _, obj = ref.rpartition(":")
    return load_file(Path(file), obj or None)


@dataclass(frozen=True)
class Listed:
    name: str
    ref: str
    steps: int
    description: str
    error: str | None = None


def discover() -> list[Listed]:
    """Every workflow in the workflow folders; a file that fails to load is listed with its error."""
    out: list[Listed] = []
    seen: set[Path] = set()
    for d in workflow_dirs():
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.py")):
            path = path.resolve()
            if path.name.startswith("_") or path in seen:
                continue
            seen.add(path)
            try:
                found = _workflows_in(_import_file(path))
                for obj, wf in found.items():
                    out.append(Listed(wf.name, f"{path}:{obj}", len(wf.steps), wf.description))
            except StatepipeError as exc:
                out.append(Listed(path.stem, str(path), 0, "", error=str(exc)))
    return out


def loaded_for(workflow: Any) -> Loaded:
    """A workflow as a run records it: by name (found as the CLI finds it), or a Workflow object,
    found by the module global that holds it, so another process can load it again by file."""
    if isinstance(workflow, str):
        return load(workflow)
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not str(path).endswith(".py"):
            continue
        for name, value in list(vars(module).items()):
            if value is workflow:
                return Loaded(workflow, f"{Path(path).resolve()}:{name}")
    raise DefinitionError(f"workflow {getattr(workflow, 'name', workflow)!r} is not a module-level object of a file: pass its name")
