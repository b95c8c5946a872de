"""Secret sources: Secrets Manager through Powertools (cached), or values from the local configuration."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import boto3
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.config import Config

from idsync.config import PLACEHOLDER_SECRET_KEY
from idsync.errors import NotConfigured, SecretError

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

DEFAULT_MAX_AGE_SECONDS = 300  # a rotated secret is picked up within five minutes


def _provider(client: SecretsManagerClient | None) -> SecretsProvider:
    return SecretsProvider(
        boto3_client=client
        or boto3.client("secretsmanager", config=Config(retries={"mode": "adaptive", "max_attempts": 5}))
    )


class SecretsManagerSource:
    """``ports.SecretSource`` reading Secrets Manager; each value is cached for ``max_age`` seconds."""

    def __init__(self, client: SecretsManagerClient | None = None, max_age: int = DEFAULT_MAX_AGE_SECONDS) -> None:
        self._provider = _provider(client)
        self._max_age = max_age

    def get(self, name: str) -> str:
        try:
            value = self._provider.get(name, max_age=self._max_age)
        except GetParameterError as error:
            raise SecretError(f"secret {name} could not be read from Secrets Manager: {error}") from error
        if not isinstance(value, str) or not value:
            raise SecretError(f"secret {name} must hold a non-empty string (SecretString)")
        return value


def is_placeholder(value: str) -> bool:
    """True for the value the stack generates before an administrator puts the real client secret."""
    if not value.lstrip().startswith("{"):
        return False
    try:
        parsed = json.loads(value)
    except ValueError:
        return False
    return isinstance(parsed, dict) and PLACEHOLDER_SECRET_KEY in parsed


class GraphSecret:
    """``ports.Credential``: the Graph client secret in Secrets Manager, cached ``max_age`` seconds.

    ``current(fresh=True)`` skips the cache (after Entra refused the cached value). Raises
    NotConfigured while the secret has no value or still holds the stack's placeholder, SecretError
    when Secrets Manager cannot be read.
    """

    def __init__(
        self, arn: str, client: SecretsManagerClient | None = None, max_age: int = DEFAULT_MAX_AGE_SECONDS
    ) -> None:
        self.arn = arn
        self._provider = _provider(client)
        self._max_age = max_age
        self._configured = True

    def current(self, fresh: bool = False) -> str:
        # until a real value was seen, every read goes to Secrets Manager: the first cycle runs at once
        self._configured, was_configured = False, self._configured
        try:
            value = self._provider.get(self.arn, max_age=self._max_age, force_fetch=fresh or not was_configured)
        except GetParameterError as error:
            if "ResourceNotFoundException" in str(error) and "AWSCURRENT" in str(error):
                raise NotConfigured(f"the Graph client secret {self.arn} has no value yet") from error
            raise SecretError(f"secret {self.arn} could not be read from Secrets Manager: {error}") from error
        if not isinstance(value, str) or not value.strip():
            raise NotConfigured(f"the Graph client secret {self.arn} is empty (put the Entra client secret in it)")
        if is_placeholder(value):
            raise NotConfigured(
                f"the Graph client secret {self.arn} still holds the placeholder the stack generated "
                "(put the Entra client secret in it)"
            )
        self._configured = True
        return value


class StaticSecrets:
    """``ports.SecretSource`` over fixed values (local runs, where the configuration holds the secret)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def get(self, name: str) -> str:
        value = self._values.get(name)
        if not value:
            raise SecretError(f"secret {name} is not configured")
        return value
