"""Secret sources: Secrets Manager through Powertools (cached), or values from the local configuration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import boto3
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.config import Config

from idsync.errors import SecretError

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

DEFAULT_MAX_AGE_SECONDS = 300  # a rotated secret is picked up within five minutes


class SecretsManagerSource:
    """``ports.SecretSource`` reading Secrets Manager; each value is cached for ``max_age`` seconds."""

    def __init__(self, client: SecretsManagerClient | None = None, max_age: int = DEFAULT_MAX_AGE_SECONDS) -> None:
        self._provider = SecretsProvider(
            boto3_client=client
            or boto3.client("secretsmanager", config=Config(retries={"mode": "adaptive", "max_attempts": 5}))
        )
        self._max_age = max_age

    def get(self, name: str) -> str:
        try:
            value = self._provider.get(name, max_age=self._max_age)
        except GetParameterError as error:
            raise SecretError(f"secret {name} could not be read from Secrets Manager: {error}") from error
        if not isinstance(value, str) or not value:
            raise SecretError(f"secret {name} must hold a non-empty string (SecretString)")
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
