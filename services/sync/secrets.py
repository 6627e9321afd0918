"""Encryption of destination secrets at rest (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from the environment (SYNC_SECRET_KEY: one or more comma-separated
Fernet keys, the first encrypts, every one decrypts, so keys rotate without a
migration). A process without a key can still run syncs whose destinations carry no
secret; storing or reading a secret then fails with a clear error.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from services.shared.errors import FailedPrecondition


class SecretBox:
    """Encrypts and decrypts destination secrets with the configured keys."""

    def __init__(self, keys: str | None) -> None:
        """`keys`: comma-separated urlsafe-base64 Fernet keys, or None (no key configured)."""
        self._fernet: MultiFernet | None = None
        if keys:
            try:
                self._fernet = MultiFernet([Fernet(k.strip()) for k in keys.split(",")])
            except ValueError as error:
                raise ValueError(
                    "SYNC_SECRET_KEY must be Fernet keys (32 urlsafe-base64 bytes each)"
                ) from error

    def _require(self) -> MultiFernet:
        if self._fernet is None:
            raise FailedPrecondition(
                "destination secrets need SYNC_SECRET_KEY set on the sync service"
            )
        return self._fernet

    def encrypt(self, secret: str) -> str:
        """Ciphertext of `secret` (text, storable in a column)."""
        return self._require().encrypt(secret.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        """The secret; FailedPrecondition when no configured key opens it."""
        try:
            return self._require().decrypt(ciphertext.encode()).decode()
        except InvalidToken as error:
            raise FailedPrecondition(
                "a destination secret cannot be decrypted with SYNC_SECRET_KEY"
            ) from error
