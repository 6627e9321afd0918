"""gRPC server bootstrap shared by the five services.

A service describes itself with a ServiceSpec (its name and how to register its
servicers and background workers on a grpc.aio server). This module gives every
service the same: process resources (settings, database engine, Redis, clock, key
store, tracing), every API method guarded at registration (OpenTelemetry, then auth
+ error mapping; see GuardedServer), the
grpc.health.v1 service, server reflection, and a graceful drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import sys
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared import auth, metrics, telemetry, tls
from services.shared.clock import Clock, clock_for
from services.shared.config import Settings
from services.shared.db.engine import create_engine
from services.shared.errors import ServiceError, invalid, refused_value
from services.shared.redis import create_redis
from services.shared.redis_pipelined import PipelinedConnection, create_pipelined

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # above Batch's 4 MiB so the servicer can say why
# How long a cancelled background worker may take to end at shutdown; one that ignores
# its cancellation past this is logged by name and left, so the process still exits.
WORKER_STOP_SECONDS = 10.0


@dataclass
class Resources:
    """What a service process holds for its lifetime, shared by its servicers."""

    settings: Settings
    engine: AsyncEngine
    redis: Redis
    clock: Clock
    keys: auth.KeyStore
    tracer_provider: TracerProvider | None  # None while tracing is off
    # One shared connection for a service's hottest command (None for rediss://, unix://).
    pipelined: PipelinedConnection | None = None

    @classmethod
    async def open(
        cls,
        settings: Settings,
        service_name: str = "audiences",
        clock: Clock | None = None,
        exporter: SpanExporter | None = None,
    ) -> Resources:
        """Connect to the database and Redis and set up tracing and metrics."""
        provider = telemetry.setup_tracing(service_name, settings.traces_exporter, exporter)
        metrics.setup_metrics()
        engine = create_engine(settings.database_url, settings.db_pool_size)
        clock = clock or clock_for(settings.redis_url, settings.clock_redis_key)
        return cls(
            settings=settings,
            engine=engine,
            redis=create_redis(settings.redis_url),
            clock=clock,
            keys=auth.KeyStore(
                engine, settings.api_key_cache_seconds, clock, settings.operator_token
            ),
            tracer_provider=provider,
            pipelined=create_pipelined(settings.redis_url),
        )

    async def close(self) -> None:
        """Release connections."""
        if self.pipelined is not None:
            self.pipelined.close()
        await self.redis.aclose()
        await self.engine.dispose()


Register = Callable[[grpc.aio.Server, Resources], list[str]]
Workers = Callable[[Resources], list[Coroutine[Any, Any, None]]]
# (resources, workspace id, progress) -> a summary of what was written, e.g. "3 profiles".
RebuildHotState = Callable[[Resources, str, Callable[[str], None]], Awaitable[str]]


@dataclass(frozen=True)
class ServiceSpec:
    """How to put one service on a server.

    `register` adds the servicers and returns their full service names (for health and
    reflection); `workers` returns background coroutines run beside the server.
    `preencoded` names methods (`/package.Service/Method`) whose servicer returns the
    response already serialized: they are registered without a response serializer.
    `rebuild_hot_state` recreates the service's share of one workspace's hot state
    from the database (services/shared/rebuild.py), reporting progress as it goes.
    """

    name: str
    register: Register
    workers: Workers | None = None
    preencoded: frozenset[str] = frozenset()
    rebuild_hot_state: RebuildHotState | None = None


class _ShuttingDown(Exception):
    """A streaming call met the server's shutdown (see OpenStreams)."""


class OpenStreams:
    """A server's calls that answer with a stream, so that its shutdown can end them.

    A drain waits for in-flight calls up to the grace period, and a server stream such
    as WatchChanges never ends by itself: every SIGTERM with one open used to wait out
    the whole grace. So at shutdown every call whose answer is a stream is ended with
    UNAVAILABLE (its client reconnects, to another replica or after the restart, and
    resumes; WatchChanges from its last seq): a server-streaming call at once (it only
    reads, so any await is a safe place to stop), a bidirectional one while it waits
    for the client's next message or when it asks for one, so a message it has
    received is still answered. Unary and client-streaming calls drain as before.
    """

    def __init__(self) -> None:
        self.closing = False
        # Each open call's task -> whether it may be cancelled right now.
        self._open: dict[asyncio.Task[Any], bool] = {}
        # Tasks end_all cancelled, asked after their call left `open` (weak: no cleanup).
        self._ended: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

    @contextlib.contextmanager
    def open(self, cancellable: bool) -> Iterator[asyncio.Task[Any]]:
        """Track the current call while inside; ShuttingDown if the server is closing."""
        if self.closing:
            raise _ShuttingDown
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = cancellable
        try:
            yield task
        finally:
            del self._open[task]

    async def requests(
        self, task: asyncio.Task[Any], requests: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        """A bidirectional call's `requests`, cancellable while it waits for the next."""
        while not self.closing:
            self._open[task] = True
            try:
                request = await anext(requests)
            except StopAsyncIteration:
                return
            finally:
                if task in self._open:  # not when closed after its call ended
                    self._open[task] = False
            yield request
        raise _ShuttingDown

    def end_all(self) -> None:
        """Refuse new streams and cancel the open ones that may stop now."""
        self.closing = True
        for task, cancellable in self._open.items():
            if cancellable:
                self._ended.add(task)
                task.cancel()

    def ended(self, task: asyncio.Task[Any] | None) -> bool:
        """True when `task` was cancelled by end_all (not by its client)."""
        return task in self._ended


async def _abort_for_shutdown(context: grpc.aio.ServicerContext) -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    await context.abort(
        grpc.StatusCode.UNAVAILABLE, "the server is shutting down: reconnect and resume"
    )


class GuardedServer(grpc.aio.Server):
    """A grpc.aio server whose API methods are guarded once, when they are registered.

    Every method handler a servicer registers is wrapped at registration in the
    project's per-call behaviour: authorisation (key, scope, the caller's workspace),
    decoding of the request bytes, error mapping (ServiceError to rich statuses,
    anything else to INTERNAL) and, when tracing records or the caller sent a
    `traceparent`, OpenTelemetry's server span. Health and reflection get the decoding
    and error mapping only: they need no key, and probes would otherwise fill the traces.

    Requests are decoded here rather than by grpc: a deserializer that fails inside
    grpc's machinery answers UNKNOWN with the exception's text, where undecodable bytes
    are the client's error (INVALID_ARGUMENT, naming the message type expected).

    Why not grpc.aio server interceptors: with any interceptor, grpc.aio resolves
    every call's handler through the interceptor chain (a coroutine per interceptor
    per call, plus a fresh wrapper handler each time), where a server without
    interceptors looks the pre-registered handler up directly; measured, that chain
    was a large share of a GetProfile's Python time.
    """

    def __init__(
        self, server: grpc.aio.Server, keys: auth.KeyStore, preencoded: frozenset[str] = frozenset()
    ) -> None:
        """Wrap `server`; `preencoded` methods return their responses serialized (ServiceSpec)."""
        self._server = server
        self._keys = keys
        self._preencoded = preencoded
        self._traced = telemetry.server_interceptor()
        self._streams = OpenStreams()
        # Decided when the server is built: an SDK provider is installed before that.
        self._recording = telemetry.tracing_enabled()
        # Likewise metrics: with them off, calls are not timed at all.
        self._timing = metrics.enabled()

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Register a service's handlers (the path generated code takes), each guarded."""
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self.guard(f"/{service_name}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        """Register generic handlers; their method handlers are guarded on first use."""
        self._server.add_generic_rpc_handlers(
            [_GuardedGenericHandler(handler, self) for handler in generic_rpc_handlers]
        )

    def guard(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` of `method` with the per-call behaviour above (public methods decoded
        and error-mapped only)."""
        scope = auth.required_scope(method)
        if scope is None:
            # Public streams (health Watch) are left to the drain: a probe must still
            # see NOT_SERVING announced before its stream ends.
            return _guarded(handler, None, None)
        if method in self._preencoded:
            handler = _without_response_serializer(handler)
        guarded = _guarded(handler, _authoriser(self._keys, scope), self._streams)
        traced = self._traced.intercept_service(_resolved(guarded), _CallDetails(method))
        # intercept_service is a coroutine function; it only wraps the handler once here.
        traced_handler = _run_once(traced)
        # Only a continuation that finds no handler makes it None; ours always finds one.
        assert traced_handler is not None
        chosen = traced_handler if self._recording else _trace_when_asked(guarded, traced_handler)
        return _timed(chosen, method) if self._timing else chosen

    # The rest is grpc.aio.Server's, delegated unchanged.

    def add_insecure_port(self, address: str) -> int:
        """See grpc.aio.Server."""
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        """See grpc.aio.Server."""
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        """See grpc.aio.Server."""
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        """See grpc.aio.Server; open streams end at once (OpenStreams), other calls drain."""
        self._streams.end_all()
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - grpc's signature
        """See grpc.aio.Server."""
        return await self._server.wait_for_termination(timeout)


@dataclass(frozen=True)
class _CallDetails(grpc.HandlerCallDetails):
    """The call details OpenTelemetry's wrapper reads at registration (only `method`)."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def _resolved(
    handler: grpc.RpcMethodHandler,
) -> Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]:
    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return handler

    return continuation


def _run_once(awaitable: Coroutine[Any, Any, _T]) -> _T:
    """The result of a coroutine that never suspends (no event loop needed)."""
    try:
        awaitable.send(None)
    except StopIteration as done:
        return done.value
    awaitable.close()
    raise RuntimeError("a registration-time wrapper suspended")


class _GuardedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are guarded once per handler, not per call."""

    def __init__(self, inner: grpc.GenericRpcHandler, server: GuardedServer) -> None:
        self._inner = inner
        self._server = server
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:  # not this handler's method
            return None
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is None or known[0] is not handler:
            known = (handler, self._server.guard(method, handler))
            self._guarded[method] = known
        return known[1]


Authorise = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


def _authoriser(keys: auth.KeyStore, scope: str) -> Authorise:
    async def authorise(context: grpc.aio.ServicerContext) -> None:
        secret = auth.bearer_secret(context.invocation_metadata())
        if scope == auth.OPERATOR:
            # The operator acts on no workspace: no principal is bound.
            await keys.authenticate_operator(secret)
            return
        principal = await keys.authenticate(secret)
        auth.check_scope(principal, scope)
        auth.set_principal(principal)

    return authorise


def _decoder(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """`deserializer` raising InvalidArgument for bytes that are not its message."""
    if deserializer is None:
        return lambda raw: raw
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    expected = message_type.full_name if message_type is not None else "request"

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            raise invalid("request", f"not a valid {expected} protobuf message") from None

    return decode


async def _decoded(
    requests: AsyncIterator[bytes], decode: Callable[[bytes], Any]
) -> AsyncIterator[Any]:
    async for raw in requests:
        yield decode(raw)


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    if isinstance(error, NotImplementedError):
        # The generated base servicer raises this for RPCs whose issue has not landed.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented yet")
    if not isinstance(error, ServiceError):
        refused = refused_value(error)
        if refused is not None:
            log.info("request refused by the database: %s", error)
            error = refused
    if isinstance(error, ServiceError):
        status = error.to_status()
        await context.abort(status.code, status.details, status.trailing_metadata)
    log.exception("unhandled error", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _codec(handler: grpc.RpcMethodHandler) -> dict[str, Any]:
    return {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }


def _undecoded(handler: grpc.RpcMethodHandler) -> dict[str, Any]:
    """The codec of `handler` without its request deserializer (the guard decodes)."""
    return {"response_serializer": handler.response_serializer}


def _without_response_serializer(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` sending what its behaviour returns as the response bytes.

    grpc passes a response through unchanged when the handler has no serializer; the
    generated registration always sets one, so a servicer method that returns wire
    bytes (ServiceSpec.preencoded) has it removed here.
    """
    if not handler.unary_unary:
        raise ValueError("only unary-unary methods can return pre-encoded responses")
    return grpc.unary_unary_rpc_method_handler(
        handler.unary_unary, request_deserializer=handler.request_deserializer
    )


def _guarded(
    handler: grpc.RpcMethodHandler, authorise: Authorise | None, streams: OpenStreams | None
) -> grpc.RpcMethodHandler:
    """The same handler taking request bytes, with authorisation (unless public) before
    it, decoding of the requests, and error mapping around it; a streaming answer is
    tracked in `streams`, which a shutdown ends."""
    aborts = (grpc.aio.AbortError, asyncio.CancelledError)
    decode = _decoder(handler.request_deserializer)
    codec = _undecoded(handler)
    # grpc's stubs type a handler's behaviours as synchronous; on grpc.aio they are
    # coroutine and async generator functions taking an aio context.
    behaviour: Any
    streaming: Any
    consuming: Any
    both: Any
    if handler.unary_unary:
        behaviour = handler.unary_unary

        async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                if authorise is not None:
                    await authorise(context)
                return await behaviour(decode(raw), context)
            except aborts:
                raise
            except Exception as error:
                await _abort(context, error)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
    if handler.unary_stream:
        streaming = handler.unary_stream

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            answers = _streamed(
                lambda _task: streaming(decode(raw), context), authorise, streams, context, True
            )
            async with contextlib.aclosing(answers):  # a call its client ends closes it now
                async for response in answers:
                    yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    if handler.stream_unary:
        consuming = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if authorise is not None:
                    await authorise(context)
                return await consuming(_decoded(requests, decode), context)
            except aborts:
                raise
            except Exception as error:
                await _abort(context, error)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)
    both = handler.stream_stream

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        answers = _streamed(
            lambda task: both(_requests(streams, task, _decoded(requests, decode)), context),
            authorise,
            streams,
            context,
            False,
        )
        async with contextlib.aclosing(answers):
            async for response in answers:
                yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)


def _requests(
    streams: OpenStreams | None, task: asyncio.Task[Any], requests: AsyncIterator[Any]
) -> AsyncIterator[Any]:
    """A bidirectional call's requests, tracked by `streams` when there are any."""
    return streams.requests(task, requests) if streams else requests


@contextlib.contextmanager
def _untracked() -> Iterator[asyncio.Task[Any]]:
    """The current task, for a stream no shutdown ends early (public methods)."""
    task = asyncio.current_task()
    assert task is not None
    yield task


async def _streamed(
    responses: Callable[[asyncio.Task[Any]], Any],
    authorise: Authorise | None,
    streams: OpenStreams | None,
    context: grpc.aio.ServicerContext,
    cancellable: bool,
) -> AsyncGenerator[Any]:
    """A streaming call's responses (made from the call's task) with authorisation
    (unless public) before them, error mapping around them, and an UNAVAILABLE end at
    shutdown (OpenStreams; `cancellable`: whether the call may be cancelled at any
    await). A behaviour may also be a coroutine writing with context.write (health Watch)."""
    try:
        if authorise is not None:
            await authorise(context)
        with streams.open(cancellable) if streams else _untracked() as task:
            replies = responses(task)
            if inspect.isawaitable(replies):
                await replies
            else:
                async for response in replies:
                    yield response
    except asyncio.CancelledError:
        if streams is None or not streams.ended(asyncio.current_task()):
            raise
        await _abort_for_shutdown(context)
    except grpc.aio.AbortError:
        raise
    except _ShuttingDown:
        await _abort_for_shutdown(context)
    except Exception as error:
        await _abort(context, error)


def _trace_when_asked(
    plain: grpc.RpcMethodHandler, traced: grpc.RpcMethodHandler
) -> grpc.RpcMethodHandler:
    """`plain`, or `traced` for a call that carries a `traceparent`.

    With tracing off the OpenTelemetry wrapper's only effect is to carry a caller's
    trace context into the handler (and on to stream entries); without one it would
    cost ~150 us per call (measured) for a span nobody records.
    """
    codec = _codec(plain)
    untraced: Any  # grpc.aio behaviours, typed as synchronous by the stubs (see _guarded)
    with_span: Any
    if plain.unary_unary:
        untraced, with_span = plain.unary_unary, traced.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if telemetry.carries_trace_context(context.invocation_metadata()):
                return await with_span(request, context)
            return await untraced(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
    if plain.stream_unary:
        untraced, with_span = plain.stream_unary, traced.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            if telemetry.carries_trace_context(context.invocation_metadata()):
                return await with_span(requests, context)
            return await untraced(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)
    if plain.unary_stream:
        untraced, with_span = plain.unary_stream, traced.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            traced_call = telemetry.carries_trace_context(context.invocation_metadata())
            async for response in (with_span if traced_call else untraced)(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    untraced, with_span = plain.stream_stream, traced.stream_stream

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        chosen = (
            with_span
            if telemetry.carries_trace_context(context.invocation_metadata())
            else untraced
        )
        async for response in chosen(requests, context):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)


def _status_name(context: grpc.aio.ServicerContext) -> str:
    """The status a call ended with (after an abort), for the latency metric's label."""
    try:
        code = context.code()
    except Exception:
        return "UNKNOWN"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if code is None else str(code)


def _timed(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """`handler` recording each call's latency (metrics.RPC_DURATION) by method and
    status; streaming answers are left untimed (their length is the client's)."""
    succeeded = metrics.RPC_DURATION.labels(method, "OK")  # bound once: the common case

    def observe(started: float, status: str) -> None:
        elapsed = time.perf_counter() - started
        if status == "OK":
            succeeded.observe(elapsed)
        else:
            metrics.RPC_DURATION.labels(method, status).observe(elapsed)

    inner: Any
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            status = "OK"
            try:
                return await inner(request, context)
            except BaseException:
                status = _status_name(context)
                raise
            finally:
                observe(started, status)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **_codec(handler))
    if handler.stream_unary:
        inner = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            status = "OK"
            try:
                return await inner(requests, context)
            except BaseException:
                status = _status_name(context)
                raise
            finally:
                observe(started, status)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **_codec(handler))
    return handler


@dataclass
class RunningService:
    """A started server with its health servicer and background tasks."""

    name: str
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace: float) -> None:
        """Say NOT_SERVING, drain in-flight RPCs for up to `grace` seconds, stop workers."""
        await self.health.enter_graceful_shutdown()
        try:
            await asyncio.wait_for(self.server.stop(grace), grace + WORKER_STOP_SECONDS)
        except TimeoutError:
            log.error("%s: the server did not stop within %.0f s; left behind", self.name, grace)
        for task in self.tasks:
            task.cancel()
        if not self.tasks:
            return
        _, stuck = await asyncio.wait(self.tasks, timeout=WORKER_STOP_SECONDS)
        for task in stuck:
            log.error(
                "%s: worker %s did not stop within %.0f s of its cancellation; left behind",
                self.name,
                task.get_name(),
                WORKER_STOP_SECONDS,
            )
        for task in self.tasks:
            failure = task.exception() if task.done() and not task.cancelled() else None
            if failure is not None:
                raise failure


async def start_service(
    spec: ServiceSpec, resources: Resources, port: int, host: str = "127.0.0.1"
) -> RunningService:
    """Build, bind and start the server of `spec`; port 0 picks a free port. The port
    serves TLS when the settings name certificate files (services.shared.tls)."""
    bare = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1),  # several processes may share a port
        ],
    )
    server = GuardedServer(bare, resources.keys, spec.preencoded)
    names = spec.register(server, resources)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    credentials = tls.grpc_server_credentials(resources.settings)
    if credentials is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    await server.start()
    running = RunningService(spec.name, server, bound, health_servicer, names)
    for worker in spec.workers(resources) if spec.workers else []:
        running.tasks.append(
            asyncio.create_task(worker, name=getattr(worker, "__qualname__", None))
        )
    watching = metrics.start_lag_watch(resources.redis)  # one per process, metrics on
    if watching is not None:
        running.tasks.append(watching)
    return running


async def serve(
    specs: list[ServiceSpec],
    settings: Settings,
    ports: dict[str, int],
    before_start: Callable[[Resources], Awaitable[None]] | None = None,
) -> None:
    """Run the given services in this process until SIGTERM or SIGINT, then drain.

    `before_start` runs on the process's resources before any server listens (the dev
    runner rebuilds the hot state there)."""
    resources = await Resources.open(settings, "+".join(s.name for s in specs))
    if before_start is not None:
        await before_start(resources)
    running = [
        await start_service(spec, resources, ports[spec.name], settings.grpc_host) for spec in specs
    ]
    for service in running:
        log.info("%s serving on %s:%d", service.name, settings.grpc_host, service.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("draining (grace %.0fs)", settings.shutdown_grace_seconds)
    await asyncio.gather(*(s.stop(settings.shutdown_grace_seconds) for s in running))
    await resources.close()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a service process's main coroutine on uvloop.

    uvloop's event loop (libuv, in C) does the per-call socket, callback and task
    work of a grpc.aio server with less CPU than asyncio's default loop (measured on
    GetProfile: about 6% less server CPU per call); grpc.aio, redis-py, asyncpg and
    aiohttp all run on it unchanged.
    """
    uvloop.run(main)


def main(spec: ServiceSpec) -> None:
    """Entry point of `python -m services.<name>`: one service in this process, or with
    `rebuild-hot-state [--workspace WS ...]` its share of the hot state rebuilt."""
    telemetry.configure_logging()
    if sys.argv[1:2] == ["rebuild-hot-state"]:
        # Imported here: the rebuild module builds on this one (Resources, ServiceSpec).
        from services.shared.rebuild import command

        sys.exit(command(spec, sys.argv[1:]))
    settings = Settings.from_env()
    run(serve([spec], settings, {spec.name: settings.port_for(spec.name)}))
