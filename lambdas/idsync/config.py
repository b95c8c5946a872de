"""One validated settings model, read once: from a YAML file, then environment overrides.

Environment overrides use ``IDSYNC__SECTION__FIELD=value`` (double underscores separate the
levels; values are parsed as YAML scalars), so ``IDSYNC__SCOPE__MODE=all`` sets ``scope.mode``.
Secrets never live in the file: the Graph client secret comes from ``IDSYNC_CLIENT_SECRET``
(CLI) or from Secrets Manager (Lambda, ``graph.client_secret_arn``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from idsync.errors import ConfigError

ENV_PREFIX = "IDSYNC__"
STACK_SECTION = "stack"  # the deployment's own settings, read by the CDK stack; skipped here
SETTINGS_ENV = "IDSYNC_SETTINGS"  # the whole configuration as JSON (how the Lambda functions get it)
# The stack creates the Graph secret as {"idsync-placeholder": "...", "random": "..."}: no Entra secret is JSON.
PLACEHOLDER_SECRET_KEY = "idsync-placeholder"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GraphSettings(_Strict):
    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: str | None = Field(default=None, repr=False)
    client_secret_arn: str | None = None
    certificate_path: str | None = None
    certificate_thumbprint: str | None = None
    base_url: str = "https://graph.microsoft.com/v1.0"
    authority_host: str = "https://login.microsoftonline.com"
    page_size: int = Field(default=999, ge=1, le=999)
    max_retries: int = Field(default=6, ge=0, le=20)
    timeout_seconds: float = Field(default=30.0, gt=0)
    # a PEM file of CAs to trust instead of the system's (a TLS-inspecting proxy, or the local emulator)
    ca_bundle: str | None = None

    @field_validator("base_url", "authority_host")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


class FilterClause(_Strict):
    """One clause of a scoping filter: ``{attribute, operator, value}`` (Entra's operators)."""

    attribute: str = Field(min_length=1)  # a Graph property, e.g. department or employeeOrgData.division
    operator: str = Field(min_length=1)  # EQUALS, NOT EQUALS, IS TRUE, ..., IS IN (case-insensitive)
    value: str | int | bool | list[str | int] | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _text_number_or_list(cls, value: Any) -> Any:
        if value is None or isinstance(value, str | int):
            return value
        if isinstance(value, list) and all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
            return value
        raise PydanticCustomError("clause_value", "must be text, an integer, a boolean, or a list of text or integers")


class ScopeSettings(_Strict):
    # "assigned": users and groups assigned to the enterprise app; "all": every user and group.
    mode: Literal["assigned", "all"] = "assigned"
    service_principal_id: str | None = None
    flatten_nested_groups: bool = False
    # a list of filters; the clauses of one filter are ANDed, the filters are ORed
    user_filters: list[list[FilterClause]] = Field(default_factory=list)
    group_filters: list[list[FilterClause]] = Field(default_factory=list)
    group_name_include: list[str] = Field(default_factory=list)  # exact names, or "re:<regex>"
    group_name_exclude: list[str] = Field(default_factory=list)
    skip_out_of_scope_deletions: bool = False

    @model_validator(mode="after")
    def _assigned_needs_app(self) -> ScopeSettings:
        if self.mode == "assigned" and not self.service_principal_id:
            raise ValueError(
                "scope.service_principal_id is required when scope.mode is 'assigned' "
                "(the object id of the AWS IAM Identity Center enterprise application)"
            )
        return self

    @model_validator(mode="after")
    def _filters_compile(self) -> ScopeSettings:
        from idsync.scope import build_scope  # the scope module owns what a filter means

        try:
            build_scope(self)
        except ConfigError as error:
            # the error location already names the section
            raise PydanticCustomError("scope", "{reason}", {"reason": _relative(error, "scope.")}) from None
        return self


class IdentityStoreSettings(_Strict):
    identity_store_id: str | None = Field(default=None, pattern=r"^(d-[0-9a-f]{10}|[0-9a-f-]{36})$")
    region: str = "us-east-1"
    endpoint_url: str | None = None  # a local emulator; never set in production
    max_attempts: int = Field(default=10, ge=1, le=30)
    # the IAM Identity Center instance (access as code assigns permission sets in it); discovered when not set
    instance_arn: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:sso:::instance/(sso)?ins-[a-zA-Z0-9-.]{16}$"
    )
    rate_per_second: float = Field(default=20.0, gt=0)  # IAM Identity Center's collective limit
    # writes the sync applies at once (independent ones, in plan order); enough to keep rate_per_second busy
    concurrency: int = Field(default=6, ge=1, le=64)
    # calls kept for the JIT functions: the sync and other bulk writers never take the shared budget below it
    jit_reserve_per_second: float = Field(default=4.0, ge=0)

    @model_validator(mode="after")
    def _reserve_below_rate(self) -> IdentityStoreSettings:
        if self.jit_reserve_per_second >= self.rate_per_second:
            raise ValueError(
                f"identity_store.jit_reserve_per_second ({self.jit_reserve_per_second}) must be below "
                f"identity_store.rate_per_second ({self.rate_per_second}): the bulk writers need a share"
            )
        return self


class SyncSettings(_Strict):
    deprovision: Literal["delete", "keep"] = "delete"
    delete_groups: bool = True
    max_deletions: int = Field(default=500, ge=0)
    max_deletion_percent: float = Field(default=20.0, ge=0, le=100)
    # membership removals have their own threshold, a share of the managed memberships with a floor
    max_membership_removal_percent: float = Field(default=5.0, ge=0, le=100)
    membership_removal_floor: int = Field(default=500, ge=0)
    # a group Entra still lists losing every managed member (at least this many) trips the guard; 0: off
    empty_group_min_memberships: int = Field(default=10, ge=0)
    full_reconcile_hours: float = Field(default=24.0, gt=0)
    # delta cycles read a slice of IAM Identity Center each, so that all of it is compared this often; 0: off
    drift_check_hours: float = Field(default=24.0, ge=0)
    log_retention_days: int = Field(default=30, ge=1, le=3650)
    # soft-deleted users and Microsoft 365 groups keep their AWS object this long (Entra restores for 30 days)
    restorable_deletion_grace_days: float = Field(default=30.0, ge=0, le=365)


class StateSettings(_Strict):
    backend: Literal["sqlite", "dynamodb"] = "sqlite"
    path: str = ".idsync/state.db"
    table_name: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    @model_validator(mode="after")
    def _dynamodb_needs_table(self) -> StateSettings:
        if self.backend == "dynamodb" and not self.table_name:
            raise ValueError("state.table_name is required when state.backend is 'dynamodb'")
        return self


class MappingRule(_Strict):
    """One row of the attribute mapping: ``target <- source | expression | constant``."""

    target: str = Field(min_length=1)  # Entra's AWS attribute name, e.g. name.givenName
    source: str | None = None  # a Graph property (Entra's "Direct" mapping)
    expression: str | None = None  # an Entra expression, e.g. Join(" ", [givenName], [surname])
    constant: str | bool | int | float | None = None
    default: str | None = None  # used when the source or expression gives no value
    apply: Literal["always", "on_create"] = "always"
    remove: bool = False  # drop the default rule for this target

    @field_validator("constant", mode="before")
    @classmethod
    def _scalar(cls, value: Any) -> Any:
        if value is None or isinstance(value, str | int | float):
            return value
        raise PydanticCustomError("constant", "must be text, a number or a boolean")

    @model_validator(mode="after")
    def _one_source(self) -> MappingRule:
        given = [name for name in ("source", "expression", "constant") if getattr(self, name) is not None]
        if self.remove:
            if given or self.default is not None:
                extra = " or ".join(given) or "default"
                raise PydanticCustomError(
                    "mapping_rule",
                    "rule for {target}: remove: true takes no {extra}",
                    {"target": self.target, "extra": extra},
                )
        elif len(given) != 1:
            raise PydanticCustomError(
                "mapping_rule",
                "rule for {target}: give exactly one of source, expression or constant (found {found})",
                {"target": self.target, "found": " and ".join(given) or "none"},
            )
        return self


class MappingSettings(_Strict):
    """Attribute mappings: rules laid over the default AWS IAM Identity Center mapping, by target.

    With ``extend_defaults: false`` the rules given are the whole mapping.
    """

    users: list[MappingRule] = Field(default_factory=list)
    groups: list[MappingRule] = Field(default_factory=list)
    extend_defaults: bool = True
    user_matching: str = "userName"
    group_matching: str = "displayName"

    @model_validator(mode="after")
    def _rules_compile(self) -> MappingSettings:
        from idsync.mapping import build_mappers  # the mapping module owns what a rule means

        try:
            build_mappers(self)
        except ConfigError as error:
            # the error location already names the section
            raise PydanticCustomError("mapping", "{reason}", {"reason": _relative(error, "mapping.")}) from None
        return self


def _relative(error: ConfigError, section: str) -> str:
    return str(error).removeprefix(section)


class PimSettings(_Strict):
    groups: list[str] = Field(default_factory=list)  # object ids of PIM-enabled groups
    bucket_capacity: int = Field(default=5, ge=1)
    bucket_refill: int = Field(default=5, ge=1)
    bucket_period_seconds: float = Field(default=10.0, gt=0)
    notification_url: str | None = None  # the webhook's public URL (POST /graph/notifications)
    lifecycle_url: str | None = None  # POST /graph/lifecycle
    client_state_arn: str | None = None  # Secrets Manager secret holding the clientState
    client_state: str | None = Field(default=None, repr=False)  # local runs only
    queue_url: str | None = None  # SQS queue feeding the JIT worker
    scheduler_group: str | None = None  # EventBridge Scheduler group for grant expiries
    scheduler_role_arn: str | None = None  # role the scheduler assumes to invoke the expiry function
    expiry_function_arn: str | None = None
    # where EventBridge Scheduler puts an expiry it could not deliver after its retries (SQS queue ARN)
    expiry_dead_letter_arn: str | None = None
    # how often the poller reads every PIM group's assignment schedule instances (the fallback for lost
    # notifications: an activation lands within this interval even when no notification arrives)
    poll_interval_minutes: int = Field(default=1, ge=1, le=60)
    # Graph allows 100 group subscriptions per app and tenant: up to this many PIM groups get one each; beyond
    # it one tenant-wide /groups subscription serves them all (the webhook filters it to the PIM groups)
    max_group_subscriptions: int = Field(default=90, ge=0, le=100)


class NotificationSettings(_Strict):
    topic_arn: str | None = None


ACCOUNT_ID = r"^\d{12}$"
OU_OR_ROOT_ID = r"^(ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}|r-[0-9a-z]{4,32})$"
PERMISSION_SET_ARN = r"^arn:aws[a-z-]*:sso:::permissionSet/ssoins-[a-zA-Z0-9-.]{16}/ps-[a-zA-Z0-9-./]{16}$"


class AccessEntry(_Strict):
    """One line of access as code: a group in scope gets a permission set on some AWS accounts.

    ``accounts`` and the accounts under ``organizational_units`` (recursively; an organization root
    ``r-...`` means every account) are assigned, less ``exclude_accounts``. Names and ids are checked
    against AWS by ``idsync config check``; here only their shape is.
    """

    group: str = Field(min_length=1)  # Entra displayName or object id
    permission_set: str = Field(min_length=1)  # name, or ARN
    accounts: list[Annotated[str, Field(pattern=ACCOUNT_ID)]] = Field(default_factory=list)
    organizational_units: list[Annotated[str, Field(pattern=OU_OR_ROOT_ID)]] = Field(default_factory=list)
    exclude_accounts: list[Annotated[str, Field(pattern=ACCOUNT_ID)]] = Field(default_factory=list)

    @field_validator("permission_set")
    @classmethod
    def _arn_shape(cls, value: str) -> str:
        if value.startswith("arn:") and not re.match(PERMISSION_SET_ARN, value):
            raise ValueError("an ARN must be a permission set's: arn:aws:sso:::permissionSet/ssoins-<16>/ps-<16>")
        return value

    @model_validator(mode="after")
    def _some_target(self) -> AccessEntry:
        if not self.accounts and not self.organizational_units:
            raise PydanticCustomError(
                "access_entry",
                "entry for group {group}: give accounts or organizational_units (or both)",
                {"group": self.group},
            )
        return self


class Settings(_Strict):
    graph: GraphSettings
    scope: ScopeSettings = Field(default_factory=lambda: ScopeSettings(mode="all"))
    identity_store: IdentityStoreSettings = Field(default_factory=IdentityStoreSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    mapping: MappingSettings = Field(default_factory=MappingSettings)
    pim: PimSettings = Field(default_factory=PimSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    access: list[AccessEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _access_entries_unique(self) -> Settings:
        seen: dict[tuple[str, str], int] = {}
        for index, entry in enumerate(self.access):
            key = (entry.group, entry.permission_set)
            if key in seen:
                raise PydanticCustomError(
                    "access_duplicate",
                    "access.{index}: group {group} with permission_set {ps} is given already in access.{first}; "
                    "merge the two entries",
                    {"index": index, "group": entry.group, "ps": entry.permission_set, "first": seen[key]},
                )
            seen[key] = index
        return self


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return a copy of ``data`` with every ``IDSYNC__A__B=value`` variable applied."""
    merged: dict[str, Any] = yaml.safe_load(yaml.safe_dump(data)) or {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if path:
            _set_path(merged, path, yaml.safe_load(raw) if raw != "" else None)
    secret = environ.get("IDSYNC_CLIENT_SECRET")
    if secret:
        _set_path(merged, ["graph", "client_secret"], secret)
    return merged


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """The dotted setting each ``IDSYNC__...`` variable (and ``IDSYNC_CLIENT_SECRET``) sets, to its variable name."""
    out = {
        ".".join(p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p): name
        for name in environ
        if name.startswith(ENV_PREFIX)
    }
    if environ.get("IDSYNC_CLIENT_SECRET"):
        out["graph.client_secret"] = "IDSYNC_CLIENT_SECRET"
    return out


def _suggestion(loc: tuple[int | str, ...]) -> str:
    """``did you mean 'x'?`` for an unknown key, from the fields of the model that holds it."""
    import difflib

    model: Any = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        annotation = field.annotation
        for _ in range(3):  # unwrap list[list[Model]] and Optional
            args = getattr(annotation, "__args__", None)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                break
            annotation = next((a for a in args or () if a is not type(None)), None)
        model = annotation
    names = list(getattr(model, "model_fields", {}))
    if isinstance(model, type) and model is Settings:
        names.append(STACK_SECTION)
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def format_validation_error(error: ValidationError, source: str, from_env: Mapping[str, str] | None = None) -> str:
    """Every bad field on its own line: where, what is wrong, a likely key for a mistyped one, and the
    environment variable when one set it (rather than the file)."""
    lines = [f"invalid configuration in {source}:"]
    env = from_env or {}
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message += _suggestion(tuple(item["loc"]))
        variable = next((name for path, name in env.items() if where == path or where.startswith(path + ".")), None)
        origin = f" (set by environment variable {variable})" if variable else ""
        lines.append(f"  {where}: {message}{origin}")
    return "\n".join(lines)


def parse_settings(
    data: Mapping[str, Any], source: str = "configuration", from_env: Mapping[str, str] | None = None
) -> Settings:
    """Validate a configuration mapping. Raises ConfigError naming every bad field (and the environment
    variable that set it, when ``from_env`` maps dotted settings to variable names)."""
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source, from_env)) from None


def load_settings(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the YAML file (if any), apply environment overrides, validate. Raises ConfigError."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "environment"
    if path is not None:
        file = Path(path)
        source = str(file)
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {file}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"configuration file {file} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {file} must hold a mapping at the top level")
        data = {key: value for key, value in (loaded or {}).items() if key != STACK_SECTION}
    return parse_settings(apply_env_overrides(data, env), source, env_overrides(env))


def load_settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for a Lambda function: ``IDSYNC_SETTINGS`` (JSON) plus ``IDSYNC__...`` overrides."""
    env = os.environ if environ is None else environ
    raw = env.get(SETTINGS_ENV, "{}")
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{SETTINGS_ENV} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{SETTINGS_ENV} must hold a JSON object")
    return parse_settings(apply_env_overrides(data, env), SETTINGS_ENV, env_overrides(env))
