"""Backend registry: the one place that knows about concrete array libraries.

    import backends
    be = backends.get_backend()          # argument, else $MINIBERT_BACKEND, else "numpy"
    be.xp, be.asarray(host_array), be.to_numpy(x), be.scatter_add(table, idx, rows), be.erf(x), ...

Importing this package imports no array library: each backend module is imported only when asked for.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable

from backends.base import Backend, BackendUnavailableError

__all__ = ["Backend", "BackendUnavailableError", "ENV_VAR", "DEFAULT_BACKEND",
           "get_backend", "register", "registered", "available", "on_replace", "initialize_distributed"]

ENV_VAR = "MINIBERT_BACKEND"
DEFAULT_BACKEND = "numpy"

_factories: dict[str, Callable[[], Backend]] = {}
_instances: dict[str, Backend] = {}
_replace_hooks: list[Callable[[str, Backend], None]] = []


def _lazy(module: str) -> Callable[[], Backend]:
    def factory() -> Backend:
        return importlib.import_module(module).create()
    return factory


def register(name: str, factory: Callable[[], Backend]) -> None:
    """Make `factory()` the backend called `name` (replacing any earlier one of that name; the `on_replace`
    hooks are told about a replaced instance, so caches keyed by it can drop it)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name must be a non-empty string, got {name!r}")
    _factories[name] = factory
    replaced = _instances.pop(name, None)
    if replaced is not None:
        for hook in _replace_hooks:
            hook(name, replaced)


def on_replace(hook: Callable[[str, Backend], None]) -> None:
    """Call `hook(name, old_instance)` whenever `register` replaces a backend that had been created."""
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {type(hook).__name__}")
    _replace_hooks.append(hook)


def registered() -> list[str]:
    """Every backend name known to the registry, usable here or not."""
    return sorted(_factories)


def get_backend(name: str | None = None) -> Backend:
    """The backend `name`, else $MINIBERT_BACKEND, else "numpy". Created once, then cached."""
    if name is None:
        name = os.environ.get(ENV_VAR) or DEFAULT_BACKEND
    if name not in _factories:
        raise ValueError(f"unknown backend {name!r}; registered backends: {', '.join(registered())} "
                         f"(choose one by argument or with the {ENV_VAR} environment variable)")
    if name not in _instances:
        _instances[name] = _factories[name]()  # raises BackendUnavailableError, caching nothing
    return _instances[name]


def available() -> list[str]:
    """The registered backends that can be created here (library importable, device present)."""
    names = []
    for name in registered():
        try:
            get_backend(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


def initialize_distributed(name: str | None = None, **options) -> tuple[int, int]:
    """Join a multi-process run before backend `name` (else $MINIBERT_BACKEND, else "numpy") is created; returns
    (this process's index, the process count). Only JAX can (`backends.jax_backend.initialize_distributed`, whose
    keyword arguments `options` are); any other backend raises ValueError naming JAX as the route."""
    name = name or os.environ.get(ENV_VAR) or DEFAULT_BACKEND
    if name != "jax":
        raise ValueError(f"multi-process training (--distributed, --coordinator) uses JAX's distributed runtime: "
                         f"--backend jax; backend {name!r} runs in one process")
    if name in _instances:
        raise RuntimeError("initialize_distributed must come before the JAX backend is created")
    try:
        module = importlib.import_module("backends.jax_backend")
        import jax  # noqa: F401  (installed?)
    except ImportError as exc:
        raise BackendUnavailableError(f"backend 'jax' needs JAX, which is not installed ({exc}); install it "
                                      "with: pip install -e '.[jax]'") from None
    return module.initialize_distributed(**options)


for _name in ("numpy", "jax", "cupy", "strict", "torch"):
    register(_name, _lazy(f"backends.{_name}_backend"))
