"""The Ray Serve application: one deployment per served bundle, and the API in front.

    from edgert.serve import ServeOptions, app
    from ray import serve
    serve.run(app(["qwen=bundles/qwen", "bundles/tsm-online"], ServeOptions(replicas=2)))

:func:`run` is what ``edgert serve`` does: it joins (``address``) or starts a Ray instance,
starts Serve's HTTP proxy on ``host:port`` and runs the application until interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from edgert.runtime.errors import EdgertError

from .catalogue import ServedModel, catalogue, check_drafts
from .options import ServeOptions

APP_NAME = "edgert"


def _ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise EdgertError("serving needs Ray Serve: pip install 'edgert[serve]'") from None
    return ray, serve


def app(bundles, options: ServeOptions | None = None, *, models: dict[str, ServedModel] | None = None):
    """The application (a bound Ray Serve deployment graph) serving ``bundles`` (``PATH`` or
    ``NAME=PATH`` each); compose it into your own Serve applications or ``serve.run`` it."""
    _, serve = _ray()
    from ray.serve.config import RequestRouterConfig

    from .api import Api
    from .decoder import DecoderReplica
    from .detector import DetectorReplica
    from .streams import StreamReplica

    options = options or ServeOptions()
    models = models or catalogue(bundles)
    check_drafts(options.drafts, options.keys)
    # a streaming session of a feature-based model may chain a served feature extractor
    extractors = {name: model.path for name, model in models.items() if model.extractor}
    check_replicas(models, options)
    handles = {}
    for name, model in models.items():
        replica = {"num_replicas": options.replicas_for(name), "ray_actor_options": {"num_cpus": options.cpus_per_replica},
                   "max_queued_requests": options.max_queued}  # beyond it the API answers 429
        if model.kind == "decoder":
            # a replica decodes one sequence at a time; one more waits on it, the rest in the router
            deployment = serve.deployment(DecoderReplica, name=f"decoder-{name}", max_ongoing_requests=2, **replica)
            handles[name] = deployment.bind(name, model.path, options)
        elif model.kind == "detector":
            deployment = serve.deployment(DetectorReplica, name=f"detector-{name}",
                                          max_ongoing_requests=max(16, 2 * options.max_batch), **replica)
            handles[name] = deployment.bind(name, model.path, options)
        else:
            deployment = serve.deployment(
                StreamReplica, name=f"stream-{name}", max_ongoing_requests=64, health_check_period_s=2.0,
                request_router_config=RequestRouterConfig(request_router_class="edgert.serve.streams.SessionRouter"),
                **replica)
            handles[name] = deployment.bind(name, model.path, options, extractors)
    ingress = serve.deployment(Api, name="api", num_replicas=1, max_ongoing_requests=1024,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(models, options, handles)


def check_replicas(models: dict[str, ServedModel], options: ServeOptions) -> None:
    unknown = sorted(set(options.replicas_of) - set(models))
    if unknown:
        raise EdgertError(f"serve: replicas given for {unknown[0]!r}, which is not served (served: {sorted(models)})")


def cpus_needed(models: dict[str, ServedModel], options: ServeOptions) -> float:
    return sum(options.replicas_for(name) for name in models) * options.cpus_per_replica


def run(bundles, options: ServeOptions, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
        verbose: bool = False) -> None:
    """Serve until interrupted: ``address`` None starts a Ray instance in this process (sized so
    that every replica fits; ``auto`` or ``ray://HOST:PORT`` joins a running cluster, whose
    nodes must hold the bundles at the same paths)."""
    if address is None:
        # Ray's servers listen where its node address is, and on Linux Ray turns a loopback node
        # address into the machine's network one, unless it is told it runs no cluster (the switch
        # is named for Windows and macOS, where that is the default): then every port of Ray's and
        # Serve's binds 127.0.0.1. Its token authentication also makes every one of them refuse a
        # local caller without the token Ray generates for this session (docs/serving.md, "What
        # Ray exposes"). Both are read when Ray is imported: set before.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        if os.environ.get("RAY_AUTH_MODE", "token") != "token":
            print(f"edgert: warning: RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']} overridden: the local Ray asks every "
                  "caller for its token", file=sys.stderr)
        os.environ["RAY_AUTH_MODE"] = "token"
    ray, serve = _ray()
    # Ray's and Serve's INFO lines (a local instance started, Serve's namespace, options "not
    # applied" that were) are theirs, not the user's: in their logs, on the terminal with --verbose
    quiet = logging.INFO if verbose else logging.WARNING
    logging.getLogger("ray.serve").setLevel(quiet)
    models = catalogue(bundles)
    check_replicas(models, options)
    check_drafts(options.drafts, options.keys)
    if address is None:
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(cpus_needed(models, options) + 0.999)),
                 include_dashboard=False, log_to_driver=False, logging_level=quiet,
                 _system_config={"enable_metrics_collection": False})  # no metrics agent on every interface
    else:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=quiet)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise EdgertError(f"serve: cannot join the Ray cluster at {address}: {str(err).splitlines()[0]}") from None
    try:
        serve.start(http_options={"host": host, "port": port})
        logging.getLogger("ray.serve").setLevel(quiet)  # Serve sets up its driver logger as it starts
        serve.run(app(bundles, options, models=models), name=APP_NAME, route_prefix="/")
        print(f"edgert: serving {', '.join(f'{m.name} ({m.kind})' for m in models.values())} on http://{host}:{port}/v1 "
              f"({', '.join(f'{n}: {options.replicas_for(n)}' for n in models)} replica(s)"
              f"{', API key required' if options.api_key else ''}); Ctrl-C stops",
              file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    finally:
        if address is not None:  # a shared cluster keeps Serve and its other applications: only ours goes
            with contextlib.suppress(Exception):  # never deployed, or the cluster is gone: nothing of ours is left
                serve.delete(APP_NAME)
        # The Ray started here takes Serve's actors with it; serve.shutdown() first would add a
        # graceful drain (6 s on an idle machine here; Ray allows its controller 30 s) nobody waits on.
        ray.shutdown()
