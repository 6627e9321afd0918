"""gRPC server bootstrap shared by the five services.

A service describes itself with a ServiceSpec (its name and how to register its
servicers and background workers on a grpc.aio server). This module gives every
service the same: process resources (settings, database engine, Redis, clock, key
store, tracing), interceptors (OpenTelemetry, then auth + error mapping), the
grpc.health.v1 service, server reflection, and a graceful drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared import auth, telemetry
from services.shared.clock import Clock, SystemClock
from services.shared.config import Settings
from services.shared.db.engine import create_engine
from services.shared.errors import ServiceError
from services.shared.redis import create_redis

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # above Batch's 4 MiB so the servicer can say why


@dataclass
class Resources:
    """What a service process holds for its lifetime, shared by its servicers."""

    settings: Settings
    engine: AsyncEngine
    redis: Redis
    clock: Clock
    keys: auth.KeyStore
    tracer_provider: TracerProvider | None  # None while tracing is off

    @classmethod
    async def open(
        cls,
        settings: Settings,
        service_name: str = "audiences",
        clock: Clock | None = None,
        exporter: SpanExporter | None = None,
    ) -> Resources:
        """Connect to the database and Redis and set up tracing."""
        provider = telemetry.setup_tracing(service_name, settings.traces_exporter, exporter)
        engine = create_engine(settings.database_url, settings.db_pool_size)
        clock = clock or SystemClock()
        return cls(
            settings=settings,
            engine=engine,
            redis=create_redis(settings.redis_url),
            clock=clock,
            keys=auth.KeyStore(engine, settings.api_key_cache_seconds, clock),
            tracer_provider=provider,
        )

    async def close(self) -> None:
        """Release connections."""
        await self.redis.aclose()
        await self.engine.dispose()


Register = Callable[[grpc.aio.Server, Resources], list[str]]
Workers = Callable[[Resources], list[Coroutine[Any, Any, None]]]


@dataclass(frozen=True)
class ServiceSpec:
    """How to put one service on a server.

    `register` adds the servicers and returns their full service names (for health and
    reflection); `workers` returns background coroutines run beside the server.
    """

    name: str
    register: Register
    workers: Workers | None = None


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """OpenTelemetry's server interceptor for the API, not for health and reflection.

    Kubernetes probes would otherwise fill the traces, and the OpenTelemetry wrapper
    assumes streaming handlers are async generators, which Health.Watch is not.
    """

    def __init__(self) -> None:
        self._traced = telemetry.server_interceptor()
        # Decided when the server is built: an SDK provider is installed before that.
        self._recording = telemetry.tracing_enabled()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if auth.required_scope(handler_call_details.method) is None:
            return await continuation(handler_call_details)
        # With tracing off the wrapper's only effect is to carry a caller's traceparent
        # into the handler's context (and on to stream entries); without one it would
        # cost ~150 us per call (measured) for a span nobody records.
        if not self._recording and not telemetry.carries_trace_context(
            handler_call_details.invocation_metadata
        ):
            return await continuation(handler_call_details)
        return await self._traced.intercept_service(continuation, handler_call_details)


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates and authorises every RPC, then maps ServiceError to rich statuses."""

    def __init__(self, keys: auth.KeyStore) -> None:
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        scope = auth.required_scope(handler_call_details.method)
        if handler is None or scope is None:
            return handler
        secret = auth.bearer_secret(handler_call_details.invocation_metadata)
        return _guarded(handler, self._keys, secret, scope)


async def _authorise(keys: auth.KeyStore, secret: str | None, scope: str) -> None:
    principal = await keys.authenticate(secret)
    auth.check_scope(principal, scope)
    auth.set_principal(principal)


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    if isinstance(error, NotImplementedError):
        # The generated base servicer raises this for RPCs whose issue has not landed.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented yet")
    if isinstance(error, ServiceError):
        status = error.to_status()
        await context.abort(status.code, status.details, status.trailing_metadata)
    log.exception("unhandled error", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _guarded(
    handler: grpc.RpcMethodHandler, keys: auth.KeyStore, secret: str | None, scope: str
) -> grpc.RpcMethodHandler:
    """The same handler with authorisation before it and error mapping around it."""
    aborts = (grpc.aio.AbortError, asyncio.CancelledError)
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                await _authorise(keys, secret, scope)
                return await handler.unary_unary(request, context)
            except aborts:
                raise
            except Exception as error:
                await _abort(context, error)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
    if handler.unary_stream:

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                await _authorise(keys, secret, scope)
                async for response in handler.unary_stream(request, context):
                    yield response
            except aborts:
                raise
            except Exception as error:
                await _abort(context, error)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    if handler.stream_unary:

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                await _authorise(keys, secret, scope)
                return await handler.stream_unary(requests, context)
            except aborts:
                raise
            except Exception as error:
                await _abort(context, error)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            await _authorise(keys, secret, scope)
            async for response in handler.stream_stream(requests, context):
                yield response
        except aborts:
            raise
        except Exception as error:
            await _abort(context, error)

    return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)


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
        await self.server.stop(grace)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def start_service(
    spec: ServiceSpec, resources: Resources, port: int, host: str = "127.0.0.1"
) -> RunningService:
    """Build, bind and start the server of `spec`; port 0 picks a free port."""
    server = grpc.aio.server(
        interceptors=[TracingInterceptor(), GuardInterceptor(resources.keys)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1),  # several processes may share a port
        ],
    )
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
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    running = RunningService(spec.name, server, bound, health_servicer, names)
    for worker in spec.workers(resources) if spec.workers else []:
        running.tasks.append(asyncio.create_task(worker))
    return running


async def serve(specs: list[ServiceSpec], settings: Settings, ports: dict[str, int]) -> None:
    """Run the given services in this process until SIGTERM or SIGINT, then drain."""
    resources = await Resources.open(settings, "+".join(s.name for s in specs))
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


def main(spec: ServiceSpec) -> None:
    """Entry point of `python -m services.<name>`: one service in this process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env()
    asyncio.run(serve([spec], settings, {spec.name: settings.port_for(spec.name)}))
