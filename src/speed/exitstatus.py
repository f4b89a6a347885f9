"""Keep the process exit status truthful once a concrete-python circuit has run.

``concrete.compiler`` registers ``terminate_df_parallelization`` with :mod:`atexit` when it is
imported.  That native function ends the interpreter with status 0 whenever it runs, so every
``sys.exit(n)``, uncaught exception or failing pytest session that happened in a process that
imported concrete would report success (docs/testing.md, "Exit statuses").  Its only job is to
stop concrete's *dataflow* runtime, which is started only by circuits compiled with
``fhe.Configuration(dataflow_parallelize=True)``; no circuit of this package asks for it, so
the hook has nothing to stop and is safe to remove.

:func:`install` removes the hook as soon as ``concrete.compiler`` is imported (or at once if it
already is), through an import hook on ``sys.meta_path``.  ``import speed`` installs it, and
the pytest plugin :mod:`speed.pytest_plugin` (registered through the ``pytest11`` entry point)
does too, so that test sessions of code that imports concrete directly also exit with pytest's
real status.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Sequence

__all__ = ["install", "release_concrete_exit_hook"]

_TARGET = "concrete.compiler"


def release_concrete_exit_hook(module: ModuleType | None = None) -> bool:
    """Unregister concrete's exit hook if ``concrete.compiler`` is loaded; True if it was."""
    mod = module if module is not None else sys.modules.get(_TARGET)
    hook = getattr(mod, "_terminate_df_parallelization", None) if mod is not None else None
    if hook is None:
        return False
    atexit.unregister(hook)
    return True


class _ReleasingLoader(importlib.abc.Loader):
    """Delegates to the real loader, then removes the hook the module registered."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        release_concrete_exit_hook(module)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ... of the real loader
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ReleasingLoader(spec.loader)
                return spec
        return None


_FINDER = _Finder()


def install() -> None:
    """Remove concrete's exit hook now if it is registered, and whenever concrete is imported later."""
    if release_concrete_exit_hook():
        return
    if not any(f is _FINDER for f in sys.meta_path):
        sys.meta_path.insert(0, _FINDER)
