"""The one place that builds the object graph: adapters wired to services, for handlers and the CLI."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from idsync.adapters.clock import SystemClock
from idsync.config import Settings
from idsync.errors import ConfigError
from idsync.mapping import GroupMapper, UserMapper, build_mappers
from idsync.model import DeprovisionMode, PlanPolicy, content_hash
from idsync.ports import (
    AccountAccess,
    BucketStore,
    CallCounter,
    Clock,
    Credential,
    ExpiryScheduler,
    GrantStore,
    HintQueue,
    HintRetry,
    IdentityStore,
    Notifier,
    RateBudget,
    SecretSource,
    StateStore,
    SubscriptionApi,
)
from idsync.scope import Scope, build_scope
from idsync.services.access import AccessService
from idsync.services.cycle import CycleService, Scoping
from idsync.services.drift import DriftCheck
from idsync.services.jit import JitService, JitWorker
from idsync.services.poller import PimPoller
from idsync.services.rate_budget import TokenRateBudget
from idsync.services.shared_budget import SharedBucket, SharedBudgetPolicy, SharedRateBudget, writer_class
from idsync.services.subscriptions import SubscriptionsService
from idsync.services.sync import RECORD_FLUSH_EVERY
from idsync.services.token_bucket import BucketPolicy, TokenBucket

logger = logging.getLogger(__name__)


@dataclass
class Counters:
    """Calls made to each side, for the CLI summary, metrics and benchmarks."""

    graph: CallCounter = field(default_factory=CallCounter)
    aws: CallCounter = field(default_factory=CallCounter)


def graph_secret(settings: Settings) -> str | Credential | None:
    """The Graph client secret: a value from the settings (CLI, environment), or the Secrets Manager
    secret (Lambda), read when signing in and cached five minutes, so a rotation reaches warm functions.
    Raises ConfigError when no credential is configured."""
    if settings.graph.client_secret:
        return settings.graph.client_secret
    if settings.graph.client_secret_arn:
        from idsync.adapters.secrets import GraphSecret

        return GraphSecret(settings.graph.client_secret_arn)
    if settings.graph.certificate_path:
        return None
    raise ConfigError(
        "no Graph credential: set IDSYNC_CLIENT_SECRET, graph.client_secret_arn, or graph.certificate_path"
    )


_local_budgets: dict[float, TokenRateBudget] = {}  # one per process and rate: every writer in it shares it
_local_budgets_lock = threading.Lock()


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
        max_membership_removal_percent=settings.sync.max_membership_removal_percent,
        membership_removal_floor=settings.sync.membership_removal_floor,
        empty_group_min_memberships=settings.sync.empty_group_min_memberships,
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
    access: AccessService | None = None


def build_engine(
    settings: Settings,
    clock: Clock | None = None,
    state: StateStore | None = None,
    local: bool = False,
    jit: JitService | None = None,
    writer: str | None = None,
) -> Engine:
    """Wire Graph, the Identity Store and the state store to the cycle service. Raises ConfigError.

    ``writer`` names the engine to the rate budget: "cli" for a local run, "sync" otherwise. The Identity Store
    client draws from the shared budget wherever it exists (DynamoDB state), and from the local one with access
    as code; a local run without it is not metered (nothing else calls IAM Identity Center from it).

    With PIM groups configured, the cycle runs the PIM safety net through ``jit`` (built here from the settings
    when not given). Where the JIT path cannot be built (no DynamoDB bucket or expiry scheduler: a local run),
    the cycle still leaves the PIM groups' memberships alone, and says so.
    """
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
    budget = build_rate_budget(settings, writer or ("cli" if local else "sync"))
    target = from_settings(settings.identity_store, counters.aws, budget=budget)
    store = state or build_state(settings)
    clock = clock or SystemClock()
    if jit is None and settings.pim.groups:
        try:
            jit = build_jit_service(settings, clock=clock, state=store, counters=counters, target=target)
        except ConfigError as error:
            logger.warning(
                "PIM groups' memberships are left to the JIT worker: the cycle cannot run the PIM safety net here",
                extra={"reason": str(error)},
            )
    access = build_access_service(settings, store, clock, counters, target, budget=budget) if settings.access else None
    cycle = CycleService(
        source,
        target,
        store,
        user_mapper,
        group_mapper,
        scope,
        Scoping(settings.scope.mode, settings.scope.flatten_nested_groups),
        policy_from(settings, user_mapper),
        clock,
        notifier=build_notifier(settings, local),
        full_reconcile=timedelta(hours=settings.sync.full_reconcile_hours),
        config_fingerprint=config_fingerprint(settings),
        restorable_grace=timedelta(days=settings.sync.restorable_deletion_grace_days),
        pim=jit,
        pim_groups=settings.pim.groups,
        access=access,
        concurrency=settings.identity_store.concurrency,
        record_every=RECORD_FLUSH_EVERY,
    )
    if settings.sync.drift_check_hours > 0:
        cycle.drift = DriftCheck(
            target,
            store,
            clock,
            timedelta(hours=settings.sync.drift_check_hours),
            cycle.policy.managed_attributes,
            cycle.policy.create_only_attributes,
            cycle.pim_groups,
        )
    return Engine(settings, cycle, store, counters, user_mapper, group_mapper, scope, source, target, access)


def build_access_service(
    settings: Settings,
    state: StateStore,
    clock: Clock,
    counters: Counters | None = None,
    target: object | None = None,
    access: AccountAccess | None = None,
    budget: RateBudget | None = None,
) -> AccessService:
    """Access as code: sso-admin and Organizations behind one rate budget (``build_rate_budget``), shared with
    the Identity Store client ``target`` when given (IAM Identity Center's APIs share one collective limit)."""
    from idsync.adapters.budget import attach_budget
    from idsync.adapters.sso_admin import from_settings as access_from_settings

    budget = budget or build_rate_budget(settings, "access")
    client = getattr(target, "client", None)
    if client is not None:
        attach_budget(client, budget)
    if access is None:
        access = access_from_settings(settings.identity_store, budget, (counters or Counters()).aws)
    return AccessService(access, state, clock, settings.access)


# --------------------------------------------------------------------------- IAM Identity Center's rate budget


def shared_budget_configured(settings: Settings) -> bool:
    """Whether the functions share their rate budget through the state table (DynamoDB state)."""
    return settings.state.backend == "dynamodb" and bool(settings.state.table_name)


def _count_fallback() -> None:
    """The RateBudgetFallback metric, published with the invoking handler's metrics (Powertools shares them)."""
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.metrics import MetricUnit

    Metrics(namespace="idsync", service="idsync").add_metric(name="RateBudgetFallback", unit=MetricUnit.Count, value=1)


def build_rate_budget(
    settings: Settings,
    writer: str,
    *,
    store: BucketStore | None = None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RateBudget:
    """The budget every call of ``writer`` ("sync" | "jit" | "expiry" | "poller" | "access" | "cli") to IAM
    Identity Center takes a turn from: shared by all functions through the state table's bucket item (or
    ``store``) with the JIT reserve, else one for this process alone. ``clock`` is the wall clock unless given
    (the bucket's time is shared across processes). Raises ValueError for an unknown writer."""
    ids = settings.identity_store
    if store is None and not shared_budget_configured(settings):
        writer_class(writer)
        if sleep is not time.sleep:
            return TokenRateBudget(ids.rate_per_second, sleep=sleep)
        with _local_budgets_lock:
            local = _local_budgets.get(ids.rate_per_second)
            if local is None:
                local = _local_budgets[ids.rate_per_second] = TokenRateBudget(ids.rate_per_second)
            return local
    policy = SharedBudgetPolicy(rate=ids.rate_per_second, reserve=ids.jit_reserve_per_second)
    bucket = SharedBucket(store or _bucket_store(settings), clock or SystemClock(), policy)
    return SharedRateBudget(
        bucket,
        writer,
        sleep,
        fallback=lambda rate: TokenRateBudget(rate, sleep=sleep),
        on_fallback=None if writer == "cli" else _count_fallback,
    )


# --------------------------------------------------------------------------- PIM for Groups (JIT)

LOCAL_CLIENT_STATE = "pim.client_state"


def build_expiry_scheduler(settings: Settings) -> ExpiryScheduler:
    """Grant expiries on EventBridge Scheduler. Raises ConfigError naming the missing settings."""
    from idsync.adapters.scheduler import EventBridgeExpiryScheduler

    pim = settings.pim
    group, role, target = pim.scheduler_group, pim.scheduler_role_arn, pim.expiry_function_arn
    if not (group and role and target):
        missing = [
            name for name in ("scheduler_group", "scheduler_role_arn", "expiry_function_arn") if not getattr(pim, name)
        ]
        raise ConfigError(
            f"pim.{', pim.'.join(missing)} required to schedule grant expiries (the schedule group, the role "
            "EventBridge Scheduler assumes, and the expiry function it invokes)"
        )
    return EventBridgeExpiryScheduler(
        group,
        target,
        role,
        client=_aws_client("scheduler", None, None),
        dead_letter_arn=pim.expiry_dead_letter_arn,
    )


def _bucket_store(settings: Settings) -> BucketStore:
    if settings.state.backend != "dynamodb" or not settings.state.table_name:
        raise ConfigError(
            "the JIT token bucket is shared by every worker through DynamoDB: set state.backend to dynamodb "
            "(local runs pass their own bucket store)"
        )
    from idsync.adapters.dynamodb_bucket import DynamoDbBucketStore

    return DynamoDbBucketStore(
        settings.state.table_name,
        client=_aws_client("dynamodb", settings.state.region, settings.state.endpoint_url),
    )


def build_jit_service(
    settings: Settings,
    *,
    clock: Clock | None = None,
    state: StateStore | None = None,
    bucket_store: BucketStore | None = None,
    scheduler: ExpiryScheduler | None = None,
    counters: Counters | None = None,
    target: IdentityStore | None = None,
    writer: str = "jit",
    call_seconds: float | None = None,
) -> JitService:
    """The JIT service (worker and expiry function): Graph, the Identity Store, the state store (which also
    keeps the grants), the shared token bucket and the expiry scheduler; any collaborator given replaces
    the default one. The Identity Store client built here draws from the rate budget as ``writer`` ("jit",
    "expiry" or "poller": the JIT reserve is theirs), through ``bucket_store`` when given; its calls' timeouts
    are bounded (``JIT_CALL_SECONDS``), but not the budget's wait before each, so the group lease is renewed before
    every external call. ``call_seconds``: the longest a call of a ``target`` given takes (None: unbounded).
    Raises ConfigError, TargetError (the identity store id cannot be discovered)."""
    from idsync.adapters.budget import attach_budget
    from idsync.adapters.graph import GraphClient
    from idsync.adapters.graph_pim import GraphPim
    from idsync.adapters.identitystore import from_settings

    counters = counters or Counters()
    user_mapper, _ = build_mappers(settings.mapping)
    scope = build_scope(settings.scope)
    client = GraphClient(settings.graph, graph_secret(settings), counters.graph)
    directory = GraphPim(client, user_mapper.graph_properties | scope.user_properties, user_mapper.needs_manager)
    store = state if state is not None else build_state(settings)
    if not isinstance(store, GrantStore):
        raise ConfigError(f"the state store {type(store).__name__} cannot keep JIT grants")
    clock = clock or SystemClock()
    buckets = bucket_store or _bucket_store(settings)
    bucket = TokenBucket(buckets, clock, BucketPolicy.from_settings(settings.pim))
    if target is None:
        bounded = from_settings(settings.identity_store, counters.aws, bounded=True)
        attach_budget(bounded.client, build_rate_budget(settings, writer, store=buckets))
        # the budget's turn is taken inside the request (before-send) and its wait has no bound, so no call's
        # length is known in advance: the lease is renewed before every external call
        target = bounded
    return JitService(
        directory,
        target,
        store,
        store,
        bucket,
        scheduler or build_expiry_scheduler(settings),
        user_mapper,
        scope,
        clock,
        settings.pim.groups,
        call_seconds=call_seconds,
    )


def _hint_retry(settings: Settings, who: str) -> HintRetry:
    if not settings.pim.queue_url:
        raise ConfigError(f"pim.queue_url is required by the {who} (it puts waiting hints back on the queue)")
    from idsync.adapters.sqs_requeue import SqsHintRetry

    return SqsHintRetry(settings.pim.queue_url, client=_aws_client("sqs", None, None))


def build_jit_worker(
    settings: Settings, *, service: JitService | None = None, retry: HintRetry | None = None
) -> JitWorker:
    """The queue worker: the JIT service and the queue it puts waiting hints back on. Raises ConfigError."""
    return JitWorker(service or build_jit_service(settings), retry or _hint_retry(settings, "JIT worker"))


def build_pim_poller(
    settings: Settings, *, service: JitService | None = None, retry: HintRetry | None = None
) -> PimPoller:
    """The PIM poller: the JIT service and the queue it hands waiting looks to. Raises ConfigError."""
    return PimPoller(
        service or build_jit_service(settings, writer="poller"), retry or _hint_retry(settings, "PIM poller")
    )


def client_state_source(settings: Settings) -> tuple[SecretSource, str]:
    """Where the clientState lives: Secrets Manager (``pim.client_state_arn``) or, locally,
    ``pim.client_state``; and its name there. Raises ConfigError when neither is set."""
    if settings.pim.client_state_arn:
        from idsync.adapters.secrets import SecretsManagerSource

        return SecretsManagerSource(), settings.pim.client_state_arn
    if settings.pim.client_state:
        from idsync.adapters.secrets import StaticSecrets

        return StaticSecrets({LOCAL_CLIENT_STATE: settings.pim.client_state}), LOCAL_CLIENT_STATE
    raise ConfigError(
        "pim.client_state_arn (Secrets Manager) or pim.client_state (local runs) is required: it is the "
        "clientState every Graph subscription carries"
    )


def build_subscriptions_service(
    settings: Settings,
    *,
    clock: Clock | None = None,
    state: StateStore | None = None,
    secrets: SecretSource | None = None,
    api: SubscriptionApi | None = None,
    looks: HintQueue | None = None,
) -> SubscriptionsService:
    """The PIM groups' Graph subscriptions (daily job, CLI, and the webhook's renewals); a subscription found
    missing sends its groups to the JIT queue (``pim.queue_url``, when set) for an immediate look.
    Raises ConfigError."""
    source, secret_name = client_state_source(settings)
    if api is None:
        from idsync.adapters.graph import GraphClient
        from idsync.adapters.graph_pim import GraphSubscriptions

        api = GraphSubscriptions(GraphClient(settings.graph, graph_secret(settings)))
    return SubscriptionsService(
        api,
        secrets or source,
        secret_name,
        settings.pim.groups,
        settings.pim.notification_url,
        settings.pim.lifecycle_url,
        clock or SystemClock(),
        state if state is not None else build_state(settings),
        max_group_subscriptions=settings.pim.max_group_subscriptions,
        looks=looks if looks is not None else _hint_queue(settings),
    )


def _hint_queue(settings: Settings) -> HintQueue | None:
    if not settings.pim.queue_url:
        return None
    from idsync.adapters.sqs_queue import SqsHintQueue

    return SqsHintQueue(settings.pim.queue_url, client=_aws_client("sqs", None, None))
