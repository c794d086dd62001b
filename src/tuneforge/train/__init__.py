"""Training: the loop, losses, optimizer and scheduler, checkpoints and resume, early stopping.

``tuneforge.train(config)`` is the public entry point. Because this package is also named
``train``, importing any of its modules rebinds ``tuneforge.train`` to the package; the package is
therefore made callable, so ``tuneforge.train(config)`` runs the recipe either way.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, config, overrides=None, resume=False):
        from tuneforge.train.recipe import train

        return train(config, overrides, resume)


sys.modules[__name__].__class__ = _CallablePackage
