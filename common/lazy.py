"""A package's names imported on first use (PEP 562), so that importing one light module of it, or `python -m
package.module --help`, does not load torch and transformers through the package's __init__."""

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """`exports` maps each name to the submodule (relative, as ".model") that defines it. Returns the package's
    `__getattr__` and `__dir__`."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
