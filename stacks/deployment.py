"""The deployment configuration: the runtime Settings plus the stack's own settings, from one YAML file.

The file is the one the CLI reads (``idsync.config.Settings``) with an optional top-level ``stack:``
section for what only the stack needs (schedule, alarm thresholds, API throttling, e-mail, ...).
The ``stack:`` section is taken out before the rest is validated with the runtime model (the CLI
skips it too), so the CLI and the stack agree on every runtime field. Environment overrides
(``IDSYNC__...``) are not applied: what is deployed is exactly what the file says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from idsync.config import SETTINGS_ENV, STACK_SECTION, Settings, format_validation_error, parse_settings
from idsync.errors import ConfigError
from idsync.services.jit import RESEND_AFTER_RECEIVES

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557)

# Fields the stack fills in from its own resources (environment overrides at run time); a value in
# the file would be ignored, so it is left out of IDSYNC_SETTINGS rather than deployed as a lie.
STACK_MANAGED: dict[str, Any] = {
    "graph": {"client_secret_arn"},
    "state": True,
    "pim": {
        "client_state_arn",
        "queue_url",
        "scheduler_group",
        "scheduler_role_arn",
        "expiry_function_arn",
        "expiry_dead_letter_arn",
        "notification_url",
        "lifecycle_url",
    },
    "notifications": {"topic_arn"},
}

# Lambda allows 4 KB of environment variables per function; the resource pointers take the rest.
SETTINGS_ENV_BUDGET = 2560


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AlarmSettings(_Strict):
    """Alarm thresholds (each alarm notifies the SNS topic)."""

    lambda_errors: int = Field(default=1, ge=1)  # errors per function in 5 minutes
    dlq_messages: int = Field(default=1, ge=1)  # messages waiting in the JIT dead-letter queue
    quarantine_cycles: int = Field(default=1, ge=1)  # quarantined cycles in an hour
    # p99 activation-to-membership latency; it includes Entra's own (undocumented) notification delay
    jit_latency_seconds: float = Field(default=120.0, gt=0)
    throttles: int = Field(default=5, ge=1)  # throttled invocations (all functions) in 5 minutes


class StackSettings(_Strict):
    """What only the stack needs; the ``stack:`` section of the configuration file."""

    stack_name: str = Field(default="idsync", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")  # default: identity_store.region
    identity_store_account_id: str | None = Field(default=None, pattern=r"^\d{12}$")  # default: this account
    sync_interval_minutes: int = Field(default=10, ge=1, le=1440)
    # the sync function's memory: a delta cycle at 100,000 users peaks near 1.1 GB; 25% headroom (and Lambda
    # gives CPU in proportion to memory)
    sync_memory_mb: int = Field(default=2048, ge=128, le=10240)
    notification_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    api_rate_limit: float = Field(default=50.0, gt=0)  # steady requests per second on the webhook stage
    api_burst_limit: int = Field(default=100, ge=1)
    api_max_items: int = Field(default=1000, ge=1)  # notification items accepted in one request
    jit_max_receive_count: int = Field(default=50)  # receives before a JIT message goes to the DLQ
    architecture: Literal["arm64", "x86_64"] = "arm64"
    # The retained state table of an earlier deployment to adopt (ownership, escrow, grants and delta links
    # carry over); unset, the stack creates its own (and retains it when the stack is deleted).
    existing_table_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{3,255}$")
    # API Gateway writes the stage's access logs through the account's CloudWatch role (one per account and
    # region): "create" makes and sets one (kept when the stack is deleted); "existing" uses the one set.
    api_gateway_cloudwatch_role: Literal["create", "existing"] = "create"
    log_retention_days: int = 90
    alarms: AlarmSettings = Field(default_factory=AlarmSettings)

    @field_validator("jit_max_receive_count")
    @classmethod
    def _above_resend(cls, value: int) -> int:
        if value < RESEND_AFTER_RECEIVES:
            raise ValueError(
                f"must be at least {RESEND_AFTER_RECEIVES}, the receive count at which the JIT worker sends a "
                f"waiting hint afresh; with {value}, a hint waiting for a token would land in the dead-letter queue"
            )
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _known_retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"must be one of {', '.join(str(d) for d in LOG_RETENTION_DAYS)}")
        return value


@dataclass(frozen=True)
class DeploymentConfig:
    """The validated runtime settings and stack settings of one deployment."""

    settings: Settings
    stack: StackSettings
    source: str
    identity_store_id: str  # the identity store the functions may touch

    @property
    def region(self) -> str:
        """The region the stack is deployed to."""
        return self.stack.region or self.settings.identity_store.region

    def settings_json(self) -> str:
        """The runtime settings as the functions receive them in IDSYNC_SETTINGS.

        Fields the stack manages are left out (the functions get them as overrides) and so are
        defaults (the functions apply the same model), which keeps the variable small.
        """
        data = self.settings.model_dump(mode="json", exclude=STACK_MANAGED, exclude_defaults=True)
        return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _value(data: Mapping[str, Any], section: str, field: str) -> Any:
    node = data.get(section)
    return node.get(field) if isinstance(node, Mapping) else None


# Fields the CLI may use but a deployment must not carry, and why.
_NOT_DEPLOYED = {
    ("graph", "client_secret"): "must not be in the file; the functions read it from the Secrets Manager "
    "secret the stack creates",
    ("graph", "certificate_path"): "certificate files are for local runs; a deployment authenticates with "
    "the client secret kept in Secrets Manager",
    ("pim", "client_state"): "must not be in the file; the stack generates it in Secrets Manager",
    ("identity_store", "endpoint_url"): "must not be set for a deployment (local emulators only)",
}


def _deployment_problems(data: Mapping[str, Any]) -> list[str]:
    """What the runtime model accepts but a deployment cannot use (read from the raw file)."""
    problems = []
    if not _value(data, "identity_store", "identity_store_id"):
        problems.append(
            "identity_store.identity_store_id: required for a deployment (the IAM policies are scoped "
            "to it); find it with `aws sso-admin list-instances`"
        )
    if data.get("access") and not _value(data, "identity_store", "instance_arn"):
        problems.append(
            "identity_store.instance_arn: required for a deployment with an access section (the IAM policies "
            "are scoped to the instance); find it with `aws sso-admin list-instances`"
        )
    for (section, field), rule in _NOT_DEPLOYED.items():
        if _value(data, section, field):
            problems.append(f"{section}.{field}: {rule}")
    return problems


def parse_deployment_config(data: Mapping[str, Any], source: str = "configuration") -> DeploymentConfig:
    """Validate a configuration mapping for deployment.

    Raises ConfigError naming every bad field (``stack.<field>`` for the stack section).
    """
    runtime = {key: value for key, value in data.items() if key != STACK_SECTION}
    stack_data = data.get(STACK_SECTION) or {}
    problems: list[str] = []
    settings: Settings | None = None
    stack: StackSettings | None = None
    try:
        settings = parse_settings(runtime, source)
    except ConfigError as error:
        problems.extend(str(error).splitlines()[1:])
    if not isinstance(stack_data, Mapping):
        problems.append(f"  {STACK_SECTION}: must be a mapping of stack settings")
    else:
        try:
            stack = StackSettings.model_validate(dict(stack_data))
        except ValidationError as error:
            lines = format_validation_error(error, source).splitlines()[1:]
            problems.extend(f"  {STACK_SECTION}.{line.strip()}" for line in lines)
    problems.extend(f"  {problem}" for problem in _deployment_problems(runtime))
    store = settings.identity_store.identity_store_id if settings else None
    if problems or settings is None or stack is None or store is None:
        raise ConfigError("\n".join([f"invalid configuration in {source}:", *problems]))
    config = DeploymentConfig(settings=settings, stack=stack, source=source, identity_store_id=store)
    size = len(config.settings_json().encode())
    if size > SETTINGS_ENV_BUDGET:
        raise ConfigError(
            f"invalid configuration in {source}:\n  (top level): the runtime settings take {size} bytes as "
            f"{SETTINGS_ENV}; at most {SETTINGS_ENV_BUDGET} fit in a Lambda function's environment "
            "(shorten mapping, scope filters or the PIM group list)"
        )
    return config


def load_deployment_config(path: str | Path) -> DeploymentConfig:
    """Read and validate the YAML configuration file. Raises ConfigError."""
    file = Path(path)
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {file}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"configuration file {file} is not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"configuration file {file} must hold a mapping at the top level")
    return parse_deployment_config(loaded, str(file))
