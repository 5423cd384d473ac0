"""The HTTP face of the server: one FastAPI app, the ingress deployment of the Ray Serve
application. It checks the key, reads and bounds the body, parses JSON, and hands each request
to the deployment of the model it names; errors leave here as OpenAI-shaped JSON (see
:mod:`.errors`). It holds no model and no state of its own, so it can run as many replicas as
the proxies need.

Routes::

    GET    /v1/models                     every served model
    POST   /v1/completions                decoders (OpenAI; stream: true for server-sent events)
    POST   /v1/chat/completions           decoders, through the bundle's chat template
    POST   /v1/detect/{model}             a clip (raw body or multipart) -> top-k labels
    POST   /v1/streams/{model}            open a streaming session -> its id
    POST   /v1/streams/{id}/frames        frames -> one prediction per step
    POST   /v1/streams/{id}/features      feature vectors -> one prediction per step
    DELETE /v1/streams/{id}               close it
    GET    /metrics                       Prometheus text format (see .metrics)
    GET    /health/live, /health/ready    probes: the API answers; every deployment has a replica up

Every route goes through :func:`route`: the key (the probes need none), then the request counted
by route, model and status and timed. A model whose queue is full (``--max-queued``) answers 429
with ``Retry-After`` at once.
"""


# No `from __future__ import annotations` in this module: FastAPI reads the routes' parameter
# annotations (Request) as classes when Serve wraps the class.
import asyncio
import functools
import hmac
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgert.runtime.errors import EdgertError, InputError

from .catalogue import ServedModel
from .completions import Reply, parse_request
from .errors import (Busy, Failure, NotFound, PayloadTooLarge, SessionLost, Unauthorized, Unavailable, error_body,
                     unwrap)
from .metrics import Metrics
from .options import ServeOptions
from .streams import OPEN, parse_stream_id

log = logging.getLogger("ray.serve")
api = FastAPI(title="edgert", docs_url=None, redoc_url=None, openapi_url=None)


def _error(err: BaseException) -> JSONResponse:
    status, body = error_body(err)
    if status >= 500:
        log.error("edgert: request failed", exc_info=err)
    retry = getattr(unwrap(err), "retry_after_s", None)
    return JSONResponse(body, status_code=status, headers={"Retry-After": str(retry)} if retry else None)


def route(name: str, public: bool = False):
    """A route's one wrapper: the API key (``public``: none, for the probes), then the request
    counted by route, model and final status, and timed to its response's start."""
    def wrap(method):
        @functools.wraps(method)  # FastAPI and Serve read the method's own signature through it
        async def handler(self, *args, **kwargs):
            model = kwargs.get("name") or (kwargs.get("stream_id") or "").partition("~")[0]
            t0, status = time.perf_counter(), 500
            try:
                if not public:
                    self._auth(kwargs["request"])
                response = await method(self, *args, **kwargs)
                status = getattr(response, "status_code", 200)
                return response
            except Exception as err:
                status = error_body(err)[0]  # what the exception handlers answer
                raise
            finally:
                model = model if model in self.models else ""  # a label per served model, not per client's typo
                self.metrics.requests.labels(name, model, str(status)).inc()
                self.metrics.latency.labels(name, model).observe(time.perf_counter() - t0)
        return handler
    return wrap


def not_ready(status, app: str) -> list[str]:
    """The deployments of application ``app`` without a healthy replica, from ``serve.status()``."""
    application = status.applications.get(app)
    if application is None:
        return [app]
    return sorted(name for name, d in application.deployments.items() if getattr(d.status, "value", d.status) != "HEALTHY")


@api.exception_handler(EdgertError)
async def _edgert_error(request: Request, err: EdgertError):
    return _error(err)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException):
    message = {404: f"no route {request.method} {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(err.status_code, str(err.detail))
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": "not_found" if err.status_code == 404 else None}}, status_code=err.status_code)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, err: RequestValidationError):
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body"))
    return _error(InputError(f"{where or 'request'}: {first.get('msg', 'invalid value')}"))


@api.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception):
    return _error(err)


@serve.ingress(api)
class Api:
    def __init__(self, models: dict[str, ServedModel], options: ServeOptions, handles: dict):
        self.models, self.options, self.handles = models, options, handles
        self.key = f"Bearer {options.api_key}".encode() if options.api_key else None
        self.metrics = Metrics()

    # ---- helpers -------------------------------------------------------------------------
    def _auth(self, request: Request) -> None:
        if self.key is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self.key):  # constant time: the key is not guessed byte by byte
            raise Unauthorized("missing or wrong API key (send Authorization: Bearer KEY)")

    async def _body(self, request: Request) -> bytes:
        """The body, refused (413) past the limit: by its declared length before reading, and
        while reading when it declares none (chunked)."""
        limit = self.options.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes; the limit is {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body over the limit of {limit} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        request._body = data  # starlette's form() parses the body it has already read
        return data

    async def _json(self, request: Request, optional: bool = False) -> dict:
        data = await self._body(request)
        if optional and not data.strip():
            return {}
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(f"malformed JSON body: {err}") from None
        except RecursionError:  # [[[[... 100,000 levels: Python's parser gives up
            raise InputError("malformed JSON body: nested too deeply") from None
        if not isinstance(body, dict):
            raise InputError(f"JSON body: expected an object, given {type(body).__name__}")
        return body

    async def _upload(self, request: Request) -> bytes:
        """A file: the raw body, or the first file field of a multipart form (``file`` first)."""
        data = await self._body(request)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            files = [v for k, v in form.multi_items() if hasattr(v, "read")]
            files.sort(key=lambda f: f is not form.get("file"))
            if not files:
                raise InputError("multipart body without a file field (send the clip as field 'file')")
            data = await files[0].read()
        return data

    def _model(self, name: str, kind: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"model {name!r} is not served here (served: {sorted(self.models)})")
        if model.kind != kind:
            route = {"decoder": "/v1/completions or /v1/chat/completions", "detector": "/v1/detect/MODEL",
                     "stream": "/v1/streams/MODEL"}[model.kind]
            raise InputError(f"model {name!r} is a {model.kind} model; use {route}")
        return model

    async def _call(self, model: str, response, lost: str | None = None):
        """A replica's answer; its death becomes 410 for a session (``lost``) or 503; a full
        queue, 429."""
        gauge = self.metrics.in_flight.labels(model)
        gauge.inc()
        try:
            result = await response
        except BackPressureError:
            self.metrics.rejected.labels(model).inc()
            raise Busy(f"model {model!r} is busy: its queue is full ({self.options.max_queued} waiting); retry "
                       f"after {Busy.retry_after_s} s") from None
        except RayActorError:
            self.metrics.replica_failures.labels(model).inc()
            if lost:
                raise SessionLost(f"stream {lost!r}: session lost (its replica died); open a new stream") from None
            raise Unavailable("the replica serving this request died; retry") from None
        except Exception as err:
            raise unwrap(err) from None
        finally:
            gauge.dec()
        if isinstance(result, Failure):
            raise result.error
        return result

    # ---- models ----------------------------------------------------------------------------
    @api.get("/v1/models")
    @route("models")
    async def list_models(self, request: Request):
        return {"object": "list", "data": [m.to_json() for m in self.models.values()]}

    # ---- decoders ----------------------------------------------------------------------------
    @api.post("/v1/completions")
    @route("completions")
    async def completions(self, request: Request):
        return await self._complete(request, chat=False)

    @api.post("/v1/chat/completions")
    @route("chat")
    async def chat_completions(self, request: Request):
        return await self._complete(request, chat=True)

    async def _complete(self, request: Request, chat: bool):
        req = parse_request(await self._json(request), chat)
        model = self._model(req.model, "decoder")
        handle, reply = self.handles[model.name], Reply(req)
        if not req.stream:
            out = await self._call(model.name, handle.complete.remote(req))
            self.metrics.generation(model.name, out)
            return reply.whole(out["text"], out["reason"], out["prompt_tokens"], out["completion_tokens"])
        pieces = handle.options(stream=True).stream.remote(req)
        await self._call(model.name, pieces.__anext__())  # checked: a bad request is a 4xx, not a broken stream
        return StreamingResponse(self._events(model.name, reply, pieces), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(self, model: str, reply: Reply, pieces):
        def event(body: dict) -> str:
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        gauge = self.metrics.in_flight.labels(model)  # the sequence is held until its last event
        gauge.inc()
        try:
            if reply.request.chat:
                yield event(reply.chunk(first=True))
            async for item in pieces:
                if "text" in item:
                    yield event(reply.chunk(item["text"]))
                else:
                    self.metrics.generation(model, item)
                    yield event(reply.chunk(reason=item["reason"]))
                    if reply.request.include_usage:
                        yield event(reply.usage_chunk(item["prompt_tokens"], item["completion_tokens"]))
        except Exception as err:  # the status line went out already: the error travels as an event
            yield event(error_body(err)[1])
        finally:
            gauge.dec()
        yield "data: [DONE]\n\n"

    # ---- detection -------------------------------------------------------------------------
    @api.post("/v1/detect/{name}")
    @route("detect")
    async def detect(self, name: str, request: Request, top_k: int = 5):
        model = self._model(name, "detector")
        if not 1 <= top_k <= 1000:
            raise InputError(f"top_k: must be in [1, 1000], given {top_k}")
        data = await self._upload(request)
        result = await self._call(model.name, self.handles[model.name].detect.remote(data, top_k))
        self.metrics.batch.labels(model.name).observe(result["timings"]["batch_size"])
        return result

    # ---- streaming sessions ----------------------------------------------------------------
    @api.post("/v1/streams/{name}")
    @route("stream_open")
    async def open_stream(self, name: str, request: Request):
        model = self._model(name, "stream")
        body = await self._json(request, optional=True)
        window, top_k, extractor = body.get("window"), body.get("top_k", 5), body.get("extractor")
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 1 << 16):
            raise InputError(f"window: expected an integer in [1, 65536], given {window!r}")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 1000:
            raise InputError(f"top_k: expected an integer in [1, 1000], given {top_k!r}")
        if extractor is not None and not isinstance(extractor, str):
            raise InputError("extractor: expected the name of a served feature extractor")
        handle = self.handles[model.name].options(multiplexed_model_id=OPEN)
        opened = await self._call(model.name, handle.open.remote(window, top_k, extractor))
        self.metrics.sessions.labels(model.name).inc()
        return opened

    def _stream_handle(self, stream_id: str):
        """The served model a stream id names, and the handle that reaches the replica holding it."""
        name, holder = parse_stream_id(stream_id)
        if self.models.get(name) is None or self.models[name].kind != "stream":
            raise NotFound(f"no stream {stream_id!r}")
        return name, self.handles[name].options(multiplexed_model_id=holder)

    @api.post("/v1/streams/{stream_id}/{what}")
    @route("stream_push")
    async def push(self, stream_id: str, what: str, request: Request):
        if what not in ("frames", "features"):
            raise NotFound(f"no route POST /v1/streams/ID/{what} (frames or features)")
        model, handle = self._stream_handle(stream_id)
        data = await self._upload(request)
        t0 = time.perf_counter()
        result = await self._call(model, handle.push.remote(stream_id, what, data), lost=stream_id)
        if result["steps"]:
            per_step = (time.perf_counter() - t0) / len(result["steps"])
            self.metrics.steps.labels(model).inc(len(result["steps"]))
            for _ in result["steps"]:
                self.metrics.step_latency.labels(model).observe(per_step)
        return result

    @api.delete("/v1/streams/{stream_id}")
    @route("stream_close")
    async def close_stream(self, stream_id: str, request: Request):
        model, handle = self._stream_handle(stream_id)
        return await self._call(model, handle.close.remote(stream_id), lost=stream_id)

    # ---- operators ---------------------------------------------------------------------------
    @api.get("/metrics")
    @route("metrics")
    async def metrics_text(self, request: Request):
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    @api.get("/health/live")
    @route("health", public=True)
    async def live(self, request: Request):
        return {"status": "live"}

    @api.get("/health/ready")
    @route("health", public=True)
    async def ready(self, request: Request):
        waiting = await asyncio.to_thread(lambda: not_ready(serve.status(), serve.get_replica_context().app_name))
        if waiting:
            return JSONResponse({"status": "starting", "waiting_for": waiting}, status_code=503)
        return {"status": "ready"}
