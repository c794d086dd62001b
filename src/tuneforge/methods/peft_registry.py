"""Teach PEFT tuneforge's own methods (bottleneck adapters) in every process that imports tuneforge.

``install()`` (run by ``import tuneforge``) registers them at once when PEFT is already imported; otherwise it
registers them right after PEFT's first import, so importing tuneforge does not import PEFT (about 3 s).
After that, ``PeftModel.from_pretrained`` loads a saved houlsby/pfeiffer adapter like any other.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings


def register() -> None:
    import tuneforge.methods.bottleneck  # noqa: F401  (registers at import)


class _RegisterAfterPeftImport(importlib.abc.MetaPathFinder):
    """Finds ``peft`` as the other finders do, and wraps its loader so that ``register`` runs once it is loaded."""

    def __init__(self) -> None:
        self.busy = False

    def find_spec(self, name, path, target=None):
        if name != "peft" or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(name)  # the ordinary finders (this one is busy)
        finally:
            self.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module) -> None:
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            try:
                register()
            except Exception as e:  # a PEFT whose internals moved: its own methods still work
                warnings.warn(
                    f"tuneforge could not register bottleneck adapters with PEFT: {e}", stacklevel=2
                )

        spec.loader.exec_module = exec_and_register
        return spec


def install() -> None:
    """Register tuneforge's PEFT methods now (PEFT imported) or on PEFT's first import."""
    if "peft" in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterPeftImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterPeftImport())


def prepare_bottleneck(model, method_cfg, training_cfg, head: bool):
    """``method.name: houlsby | pfeiffer`` (``tuneforge.methods.bottleneck``, which imports PEFT when first used)."""
    from tuneforge.methods.bottleneck import prepare_bottleneck as prepare

    return prepare(model, method_cfg, training_cfg, head)
