"""Using a tuned model: generation, terminal chat, export; and the fine-tuning service (``create_app``).

``tuneforge.serve.create_app(...)`` returns the OpenAI-compatible service as an ASGI app; it is imported
lazily, so ``import tuneforge.serve`` works without the ``serve`` extra (FastAPI, SQLAlchemy, ...).
"""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any):
    """The fine-tuning service as an ASGI app: see ``tuneforge.serve.app.create_app``."""
    try:
        from tuneforge.serve.app import create_app as _create_app
    except ImportError as e:
        from tuneforge.errors import TuneforgeError

        raise TuneforgeError(
            f"the service needs the serve extra ({e.name} is missing): pip install 'tuneforge[serve]'"
        ) from None
    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
