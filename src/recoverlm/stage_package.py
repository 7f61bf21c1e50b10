"""Stage packages that can be called as their stage: `from recoverlm import recover` gives the
`recoverlm.recover` package, and calling it runs `recoverlm.recover.trainer.recover`.

A plain function of that name in `recoverlm/__init__.py` would be replaced by the subpackage the
first time anything imports `recoverlm.recover.<module>` (Python binds a subpackage onto its
parent), and renaming the packages would split each stage's name from its code. A callable
package keeps both `from recoverlm import recover` and `recoverlm.recover.trainer` working.
"""

from __future__ import annotations

import importlib
import sys
import types


class StagePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        module, name = self.__stage_entry__
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


def callable_as(package: str, module: str, name: str) -> None:
    """Make the package `package` callable as `module.name` (imported at the first call)."""
    pkg = sys.modules[package]
    pkg.__class__ = StagePackage
    pkg.__stage_entry__ = (module, name)
