"""Wiring for the PIM webhook: the notification service with its SQS queue and clientState secret."""

from __future__ import annotations

from idsync.adapters.clock import SystemClock
from idsync.adapters.secrets import SecretsManagerSource, StaticSecrets
from idsync.adapters.sqs_queue import SqsHintQueue
from idsync.config import Settings
from idsync.errors import ConfigError
from idsync.ports import Clock, HintQueue, SecretSource, SubscriptionApi, SubscriptionRenewer
from idsync.services.notifications import NotificationService

LOCAL_CLIENT_STATE = "pim.client_state"


class GraphRenewer:
    """Answers ``reauthorizationRequired`` by renewing the subscription through Graph.

    Built on first use: lifecycle events are rare, and most invocations need no Graph token.
    """

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._api: SubscriptionApi | None = None

    def renew(self, subscription_id: str) -> None:
        """Renew to the longest expiration. Raises DirectoryError (SubscriptionGone when it no longer exists)."""
        from idsync.services.subscriptions import subscription_expiration

        if self._api is None:
            from idsync.adapters.graph import GraphClient
            from idsync.adapters.graph_pim import GraphSubscriptions
            from idsync.wiring import graph_secret

            self._api = GraphSubscriptions(GraphClient(self.settings.graph, graph_secret(self.settings)))
        self._api.renew(subscription_id, subscription_expiration(self.clock.now()))


def build_webhook_service(
    settings: Settings,
    *,
    queue: HintQueue | None = None,
    secrets: SecretSource | None = None,
    clock: Clock | None = None,
    renewer: SubscriptionRenewer | None = None,
) -> NotificationService:
    """The webhook's service, from the settings; any collaborator given replaces the default one.

    clientState: Secrets Manager (``pim.client_state_arn``) or, locally, ``pim.client_state``.
    Raises ConfigError when the queue URL or the clientState is not configured.
    """
    pim = settings.pim
    if queue is None:
        if not pim.queue_url:
            raise ConfigError("pim.queue_url is required by the webhook (the SQS queue feeding the JIT worker)")
        queue = SqsHintQueue(pim.queue_url)
    if pim.client_state_arn:
        secret_name = pim.client_state_arn
        secrets = secrets or SecretsManagerSource()
    elif pim.client_state:
        secret_name = LOCAL_CLIENT_STATE
        secrets = secrets or StaticSecrets({LOCAL_CLIENT_STATE: pim.client_state})
    else:
        raise ConfigError(
            "pim.client_state_arn (Secrets Manager) or pim.client_state (local runs) is required by the "
            "webhook: it is the clientState every Graph notification must carry"
        )
    clock = clock or SystemClock()
    return NotificationService(
        queue=queue,
        secrets=secrets,
        client_state_secret=secret_name,
        pim_groups=pim.groups,
        clock=clock,
        tenant_id=settings.graph.tenant_id,
        renewer=renewer if renewer is not None else GraphRenewer(settings, clock),
    )
