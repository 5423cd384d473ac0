"""Serving bundles over HTTP on Ray Serve (the ``serve`` extra): an OpenAI-compatible API for
decoder bundles, detection with batching for clip models, streaming sessions for online ones,
replicas across a Ray cluster's machines. See docs/serving.md.

    from edgert.serve import ServeOptions, app
    from ray import serve
    serve.run(app(["bundles/qwen", "tsm=bundles/tsm-online"], ServeOptions(replicas=2)))

Nothing here imports Ray until an application is built.
"""

from .app import app, run
from .catalogue import ServedModel, catalogue
from .options import API_KEY_ENV, ServeOptions

__all__ = ["app", "run", "ServeOptions", "ServedModel", "catalogue", "API_KEY_ENV"]
