"""The one place that builds the object graph: adapters wired to services, for handlers and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from idsync.adapters.clock import SystemClock
from idsync.config import Settings
from idsync.errors import ConfigError
from idsync.mapping import GroupMapper, UserMapper, build_mappers
from idsync.model import DeprovisionMode, PlanPolicy, content_hash
from idsync.ports import CallCounter, Clock, Notifier, StateStore
from idsync.scope import Scope, build_scope
from idsync.services.cycle import CycleService, Scoping


@dataclass
class Counters:
    """Calls made to each side, for the CLI summary, metrics and benchmarks."""

    graph: CallCounter = field(default_factory=CallCounter)
    aws: CallCounter = field(default_factory=CallCounter)


def graph_secret(settings: Settings) -> str | None:
    """The Graph client secret: from the settings (CLI, environment) or Secrets Manager (Lambda)."""
    if settings.graph.client_secret:
        return settings.graph.client_secret
    if settings.graph.client_secret_arn:
        from aws_lambda_powertools.utilities import parameters

        value = parameters.get_secret(settings.graph.client_secret_arn, max_age=300)
        return str(value)
    if settings.graph.certificate_path:
        return None
    raise ConfigError(
        "no Graph credential: set IDSYNC_CLIENT_SECRET, graph.client_secret_arn, or graph.certificate_path"
    )


def build_state(settings: Settings) -> StateStore:
    if settings.state.backend == "dynamodb":
        from idsync.adapters.dynamodb_state import DynamoDbStateStore

        assert settings.state.table_name is not None
        return DynamoDbStateStore(
            settings.state.table_name,
            client=_aws_client("dynamodb", settings.state.region, settings.state.endpoint_url),
            log_retention_days=settings.sync.log_retention_days,
        )
    from idsync.adapters.sqlite_state import SqliteStateStore

    return SqliteStateStore(settings.state.path, log_retention_days=settings.sync.log_retention_days)


def _aws_client(service: str, region: str | None, endpoint_url: str | None) -> object:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        config=Config(retries={"mode": "adaptive", "max_attempts": 10}),
    )


def policy_from(settings: Settings, user_mapper: UserMapper) -> PlanPolicy:
    return PlanPolicy(
        deprovision=DeprovisionMode(settings.sync.deprovision),
        delete_groups=settings.sync.delete_groups,
        max_deletions=settings.sync.max_deletions,
        max_deletion_percent=settings.sync.max_deletion_percent,
        skip_out_of_scope_deletions=settings.scope.skip_out_of_scope_deletions,
        managed_attributes=user_mapper.managed_attributes,
        create_only_attributes=user_mapper.create_only_attributes,
    )


def build_notifier(settings: Settings, local: bool) -> Notifier | None:
    if settings.notifications.topic_arn:
        from idsync.adapters.notify import SnsNotifier

        return SnsNotifier(settings.notifications.topic_arn, client=_aws_client("sns", None, None))
    if local:
        from idsync.adapters.notify import ConsoleNotifier

        return ConsoleNotifier()
    return None


def config_fingerprint(settings: Settings) -> str:
    """Changes when the mapping, matching or scope changes: the next cycle is then a full reconcile."""
    return content_hash([settings.mapping.model_dump(mode="json"), settings.scope.model_dump(mode="json")])


@dataclass
class Engine:
    """Everything a cycle needs, built once."""

    settings: Settings
    cycle: CycleService
    state: StateStore
    counters: Counters
    user_mapper: UserMapper
    group_mapper: GroupMapper
    scope: Scope
    source: object
    target: object


def build_engine(
    settings: Settings, clock: Clock | None = None, state: StateStore | None = None, local: bool = False
) -> Engine:
    """Wire Graph, the Identity Store and the state store to the cycle service. Raises ConfigError."""
    from idsync.adapters.graph import GraphClient, GraphDirectory
    from idsync.adapters.identitystore import from_settings

    counters = Counters()
    user_mapper, group_mapper = build_mappers(settings.mapping)
    scope = build_scope(settings.scope)
    client = GraphClient(settings.graph, graph_secret(settings), counters.graph)
    source = GraphDirectory(
        client,
        settings.scope,
        user_properties=user_mapper.graph_properties | scope.user_properties,
        group_properties=group_mapper.graph_properties | scope.group_properties,
        expand_manager=user_mapper.needs_manager,
    )
    target = from_settings(settings.identity_store, counters.aws)
    store = state or build_state(settings)
    cycle = CycleService(
        source,
        target,
        store,
        user_mapper,
        group_mapper,
        scope,
        Scoping(settings.scope.mode, settings.scope.flatten_nested_groups),
        policy_from(settings, user_mapper),
        clock or SystemClock(),
        notifier=build_notifier(settings, local),
        full_reconcile=timedelta(hours=settings.sync.full_reconcile_hours),
        config_fingerprint=config_fingerprint(settings),
    )
    return Engine(settings, cycle, store, counters, user_mapper, group_mapper, scope, source, target)
