"""TLS for every port a service opens, from the certificate files in the settings.

TLS_CERT_FILE and TLS_KEY_FILE (PEM) turn TLS on for the gRPC port and the HTTP ports
alike; TLS_CLIENT_CA_FILE adds mutual TLS: a client must present a certificate that CA
signed, or the handshake fails before any request is read. The files are read when a
server starts, so a rotated certificate takes effect on the next restart.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from services.shared.config import Settings


def grpc_server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Credentials for a gRPC port; None when TLS is off (plaintext port)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    chain = Path(settings.tls_cert_file).read_bytes()
    key = Path(settings.tls_key_file).read_bytes()
    client_ca = (
        Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def http_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The SSL context of an HTTP port; None when TLS is off (plain HTTP)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file:
        context.load_verify_locations(settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
