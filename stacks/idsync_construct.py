"""IdsyncConstruct: everything idsync runs on, as one construct a team can drop into its own CDK app."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

from aws_cdk import (
    ArnFormat,
    Aws,
    Duration,
    Names,
    RemovalPolicy,
    Stack,
)
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from idsync.adapters.dynamodb_state import TABLE_SCHEMA
from idsync.config import ENV_PREFIX, PLACEHOLDER_SECRET_KEY, SETTINGS_ENV
from stacks.deployment import DeploymentConfig
from stacks.metrics import (
    JIT_EXPIRY,
    JIT_WORKER,
    NAMESPACE,
    PIM_POLLER,
    SERVICE,
    SUBSCRIPTIONS,
    SYNC,
    WEBHOOK,
    Function,
)
from stacks.observability import Observability
from stacks.packaging import RUNTIME
from stacks.support import acknowledge, log_group
from stacks.webhook_api import WebhookApi

WORKER_TIMEOUT = Duration.seconds(60)

# The state store's calls (idsync.adapters.dynamodb_state); its TransactWriteItems (a lease holder's writes, each
# with a ConditionCheck on the lease) is authorized as ConditionCheckItem, PutItem and DeleteItem.
STATE_ACTIONS = [
    "dynamodb:BatchGetItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:ConditionCheckItem",
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
]
# The buckets' conditional update (idsync.adapters.dynamodb_bucket): the JIT activation bucket, and the rate budget
# every function calling IAM Identity Center shares (sync, worker, expiry, poller). The sync also adds, once, the
# lookup index entries of records written before they existed (DynamoDbStateStore.upgrade_lookups).
BUCKET_ACTIONS = ["dynamodb:UpdateItem"]
# The calls idsync.adapters.identitystore makes: users, groups and memberships, read and written.
SYNC_IDENTITY_STORE_ACTIONS = [
    "identitystore:CreateGroup",
    "identitystore:CreateGroupMembership",
    "identitystore:CreateUser",
    "identitystore:DeleteGroup",
    "identitystore:DeleteGroupMembership",
    "identitystore:DeleteUser",
    "identitystore:DescribeGroup",  # the drift check: is a managed group a listing missed still there?
    "identitystore:DescribeUser",
    "identitystore:GetGroupId",
    "identitystore:GetGroupMembershipId",
    "identitystore:GetUserId",
    "identitystore:ListGroupMemberships",
    "identitystore:ListGroups",
    "identitystore:ListUsers",
    "identitystore:UpdateGroup",
    "identitystore:UpdateUser",
]
# An activation provisions a missing user (or adopts the one holding its userName) and adds a membership
# (or adopts the one already there); an early deactivation removes it.
WORKER_IDENTITY_STORE_ACTIONS = [
    "identitystore:CreateGroupMembership",
    "identitystore:CreateUser",
    "identitystore:DeleteGroupMembership",
    "identitystore:GetGroupMembershipId",
    "identitystore:GetUserId",
]
# An expiry only ever removes a membership: the one idsync recorded (by its id), or one whose record write
# failed, looked up by group and user.
EXPIRY_IDENTITY_STORE_ACTIONS = [
    "identitystore:DeleteGroupMembership",
    "identitystore:GetGroupMembershipId",
]
# Access as code (idsync.adapters.sso_admin, as the sync cycle reconciles): account assignments of the
# one instance, and the permission set names; granted only when the configuration has an access section.
SYNC_ACCESS_ACTIONS = [
    "sso:CreateAccountAssignment",
    "sso:DeleteAccountAssignment",
    "sso:DescribeAccountAssignmentCreationStatus",
    "sso:DescribeAccountAssignmentDeletionStatus",
    "sso:DescribePermissionSet",
    "sso:ListAccountAssignmentsForPrincipal",
    "sso:ListPermissionSets",
]
# The accounts under the configured OUs, re-read each full cycle.
SYNC_ORGANIZATIONS_ACTIONS = [
    "organizations:ListAccountsForParent",
    "organizations:ListOrganizationalUnitsForParent",
]
# A grant's expiry is a one-time schedule; a moved grant gets a new one and the old one is deleted.
SCHEDULE_ACTIONS = [
    "scheduler:CreateSchedule",
    "scheduler:DeleteSchedule",
]
# The poller applies and removes what the worker would (it runs the worker's look), and hands waiting looks
# to the queue (SendMessage).
POLLER_IDENTITY_STORE_ACTIONS = WORKER_IDENTITY_STORE_ACTIONS
# The expiry function's asynchronous invocations (from EventBridge Scheduler): Lambda retries a failed one
# this many times, then sends it to the expiry dead-letter queue.
EXPIRY_RETRY_ATTEMPTS = 2
# The event source mapping polls with the function's role; the worker also sends a long-waiting
# activation afresh (SendMessage) so that waiting for tokens never counts it towards the dead-letter queue.
CONSUME_ACTIONS = [
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:ReceiveMessage",
    "sqs:SendMessage",
]


def override(section: str, field: str) -> str:
    """The environment variable that overrides ``section.field`` of the runtime settings."""
    return f"{ENV_PREFIX}{section.upper()}__{field.upper()}"


@dataclass(frozen=True)
class FunctionSize:
    """How much a function may take."""

    timeout: Duration
    memory_mb: int


class IdsyncConstruct(Construct):
    """The state table, secrets, topic, queues, scheduler group, six functions, API, alarms and dashboard.

    ``code`` is the Lambda asset (``stacks.packaging.bundled_code`` for a deployment; tests pass the
    plain ``lambdas/`` directory). Raises nothing at construction beyond CDK's own errors: the
    configuration is validated when it is loaded.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: DeploymentConfig, code: lambda_.Code) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._code = code
        self._stack = Stack.of(self)
        # Physical names for the two things runtime code must name before they exist (schedules
        # and their target): unique per construct path, within Lambda's 64-character limit.
        base_name = Names.unique_resource_name(self, max_length=52, separator="-")

        self.table = self._state_table()
        # an adopted table's name as given (the imported ARN holds it only as a token expression)
        self.table_name = config.stack.existing_table_name or self.table.table_name
        self.graph_secret = secretsmanager.Secret(
            self,
            "GraphClientSecret",
            description="Client secret of the Entra app registration idsync signs in with "
            "(replace the generated placeholder with the real value)",
            # A placeholder the functions recognise: until it is replaced they report "not configured yet".
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps(
                    {PLACEHOLDER_SECRET_KEY: "replace this whole value with the Entra client secret"}
                ),
                generate_string_key="random",
                exclude_punctuation=True,
            ),
        )
        self.client_state_secret = secretsmanager.Secret(
            self,
            "WebhookClientState",
            description="clientState shared with Microsoft Graph subscriptions (checked on every notification)",
            generate_secret_string=secretsmanager.SecretStringGenerator(password_length=64, exclude_punctuation=True),
        )
        for secret in (self.graph_secret, self.client_state_secret):
            acknowledge(
                secret,
                "AwsSolutions-SMG4",
                "Rotation happens where the value is issued: the client secret in Entra, "
                "the clientState together with the Graph subscriptions that carry it",
            )

        self.topic_key = kms.Key(
            self,
            "NotificationsKey",
            description="Encrypts the idsync notifications topic",
            enable_key_rotation=True,
            # Only the topic uses it and the topic goes with the stack: no key left billed after a destroy.
            removal_policy=RemovalPolicy.DESTROY,
            pending_window=Duration.days(7),
        )
        self.topic = sns.Topic(
            self, "Notifications", display_name="idsync", master_key=self.topic_key, enforce_ssl=True
        )
        # The topic and key policies must both let this account's alarms publish (the topic's own
        # policy replaces SNS's default one, and the key is not AWS-managed).
        alarms = iam.ServicePrincipal("cloudwatch.amazonaws.com")
        alarm_conditions = {
            "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
            "ArnLike": {"aws:SourceArn": f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}:alarm:*"},
        }
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[alarms],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions=alarm_conditions,
            )
        )
        self.topic_key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[alarms],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions=alarm_conditions,
            )
        )
        if config.stack.notification_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.stack.notification_email))

        self.dead_letters = sqs.Queue(
            self,
            "JitDeadLetters",
            retention_period=Duration.days(14),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        self.queue = sqs.Queue(
            self,
            "JitQueue",
            # Lambda's guidance: at least six times the function timeout.
            visibility_timeout=Duration.seconds(WORKER_TIMEOUT.to_seconds() * 6),
            retention_period=Duration.days(14),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letters, max_receive_count=config.stack.jit_max_receive_count
            ),
        )

        # Expiries EventBridge Scheduler could not deliver, and expiry invocations that failed every attempt.
        self.expiry_dead_letters = sqs.Queue(
            self,
            "ExpiryDeadLetters",
            retention_period=Duration.days(14),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        acknowledge(
            self.expiry_dead_letters,
            "AwsSolutions-SQS3",
            "This queue is itself the dead-letter queue of the expiry schedules and the expiry function",
        )

        # Named by CloudFormation (a fixed name collides after a failed create or a destroy); deleted with
        # the stack, since its schedules could only invoke this stack's expiry function.
        self.schedule_group = scheduler.ScheduleGroup(self, "ExpirySchedules", removal_policy=RemovalPolicy.DESTROY)
        # The expiry function's own ARN is in its environment (a moved grant reschedules itself),
        # so it is built from a fixed name rather than read back from the function.
        expiry_name = f"{base_name}-jit-expiry"
        self.expiry_function_arn = self._stack.format_arn(
            service="lambda",
            resource="function",
            resource_name=expiry_name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.scheduler_role = iam.Role(
            self,
            "SchedulerRole",
            description="Assumed by EventBridge Scheduler to invoke the idsync expiry function",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com",
                conditions={
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                    "ArnLike": {"aws:SourceArn": self.schedule_group.schedule_group_arn},
                },
            ),
        )

        self.functions: dict[str, lambda_.Function] = {}
        self.sync_function = self._sync_function()
        self.expiry_function = self._expiry_function(expiry_name)
        self.scheduler_role.add_to_principal_policy(
            iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[self.expiry_function.function_arn])
        )
        # Scheduler sends an expiry it could not deliver to the schedule's dead-letter queue with this role.
        self.scheduler_role.add_to_principal_policy(
            iam.PolicyStatement(actions=["sqs:SendMessage"], resources=[self.expiry_dead_letters.queue_arn])
        )
        self.worker_function = self._worker_function()
        self.webhook_function = self._webhook_function()
        self.webhook = WebhookApi(self, "Webhook", function=self.webhook_function, settings=config.stack)
        self.api = self.webhook.rest_api
        self.notification_url = self.webhook.notification_url
        self.lifecycle_url = self.webhook.lifecycle_url
        self.subscriptions_function = self._subscriptions_function()
        self.poller_function = self._poller_function()

        self.observability = Observability(
            self,
            "Observability",
            functions=self.functions,
            queue=self.queue,
            dead_letters=self.dead_letters,
            api=self.api,
            topic=self.topic,
            alarms=config.stack.alarms,
            expiry_dead_letters=self.expiry_dead_letters,
        )

    # -- resources ---------------------------------------------------------------------------

    def _state_table(self) -> dynamodb.ITable:
        """The state table: created (and retained when the stack is deleted), or the retained table of an
        earlier deployment when ``stack.existing_table_name`` names it."""
        existing = self._config.stack.existing_table_name
        if existing:
            arn = f"arn:{Aws.PARTITION}:dynamodb:{Aws.REGION}:{Aws.ACCOUNT_ID}:table/{existing}"
            return dynamodb.Table.from_table_arn(self, "StateTable", arn)

        def key(name: str) -> dynamodb.Attribute:
            return dynamodb.Attribute(name=name, type=dynamodb.AttributeType.STRING)

        table = dynamodb.Table(
            self,
            "StateTable",
            partition_key=key(TABLE_SCHEMA["partition_key"]),
            sort_key=key(TABLE_SCHEMA["sort_key"]),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=TABLE_SCHEMA["ttl_attribute"],
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        for index in TABLE_SCHEMA["indexes"]:
            table.add_global_secondary_index(
                index_name=index["name"],
                partition_key=key(index["partition_key"]),
                sort_key=key(index["sort_key"]) if "sort_key" in index else None,
                projection_type=dynamodb.ProjectionType[index["projection"]],
            )
        return table

    def _function(
        self,
        spec: Function,
        size: FunctionSize,
        environment: dict[str, str],
        *,
        function_name: str | None = None,
        retry_attempts: int | None = None,
    ) -> lambda_.Function:
        name = "".join(part.capitalize() for part in spec.key.split("_"))
        function_logs = log_group(self, f"{name}Logs", self._config.stack.log_retention_days)
        role = iam.Role(
            self,
            f"{name}Role",
            description=f"idsync {spec.key} function",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[function_logs.log_group_arn],
            )
        )
        self._acknowledge_wildcard(
            role, "*", "X-Ray's PutTraceSegments and PutTelemetryRecords accept no resource but '*'"
        )
        architecture = (
            lambda_.Architecture.ARM_64 if self._config.stack.architecture == "arm64" else lambda_.Architecture.X86_64
        )
        function = lambda_.Function(
            self,
            f"{name}Function",
            description=spec.description,
            function_name=function_name,
            runtime=RUNTIME,
            architecture=architecture,
            handler=spec.handler,
            code=self._code,
            role=role,
            timeout=size.timeout,
            memory_size=size.memory_mb,
            log_group=function_logs,
            tracing=lambda_.Tracing.ACTIVE,
            retry_attempts=retry_attempts,
            environment={
                SETTINGS_ENV: self._config.settings_json(),
                "POWERTOOLS_SERVICE_NAME": SERVICE,
                "POWERTOOLS_METRICS_NAMESPACE": NAMESPACE,
                "LOG_LEVEL": "INFO",
                **environment,
            },
        )
        self.functions[spec.key] = function
        return function

    def _state_environment(self) -> dict[str, str]:
        return {override("state", "backend"): "dynamodb", override("state", "table_name"): self.table_name}

    def _scheduler_environment(self) -> dict[str, str]:
        return {
            override("pim", "scheduler_group"): self.schedule_group.schedule_group_name,
            override("pim", "scheduler_role_arn"): self.scheduler_role.role_arn,
            override("pim", "expiry_function_arn"): self.expiry_function_arn,
            override("pim", "expiry_dead_letter_arn"): self.expiry_dead_letters.queue_arn,
        }

    def _graph_environment(self) -> dict[str, str]:
        return {override("graph", "client_secret_arn"): self.graph_secret.secret_arn}

    def _sync_function(self) -> lambda_.Function:
        function = self._function(
            SYNC,
            FunctionSize(Duration.minutes(15), self._config.stack.sync_memory_mb),
            {
                **self._state_environment(),
                **self._graph_environment(),
                **self._scheduler_environment(),
                override("notifications", "topic_arn"): self.topic.topic_arn,
            },
            # A failed cycle is resumed by the next tick, not retried at once.
            retry_attempts=0,
        )
        # bucket: the PIM safety net takes a token for each activation it applies, as the worker does
        self._allow_state(function, bucket=True)
        self._allow_secrets(function, self.graph_secret)
        self._allow_identity_store(function, SYNC_IDENTITY_STORE_ACTIONS)
        # the cycle is the PIM safety net: it applies activations whose notification was lost and schedules their expiry
        self._allow_schedules(function)
        if self._config.settings.access:
            self._allow_access(function)
        self._allow(function, ["sns:Publish"], [self.topic.topic_arn])
        self._allow(function, ["kms:Decrypt", "kms:GenerateDataKey"], [self.topic_key.key_arn])
        events.Rule(
            self,
            "SyncSchedule",
            description="Runs an idsync sync cycle",
            schedule=events.Schedule.rate(Duration.minutes(self._config.stack.sync_interval_minutes)),
            targets=[targets.LambdaFunction(function)],
        )
        return function

    def _expiry_function(self, function_name: str) -> lambda_.Function:
        function = self._function(
            JIT_EXPIRY,
            FunctionSize(Duration.seconds(60), 512),
            {**self._state_environment(), **self._graph_environment(), **self._scheduler_environment()},
            function_name=function_name,
            retry_attempts=EXPIRY_RETRY_ATTEMPTS,
        )
        # Failed asynchronous invocations go to the expiry dead-letter queue. Set on the invoke config
        # itself, because CDK's SqsDestination would also grant GetQueueAttributes and GetQueueUrl.
        invoke_config = function.node.find_child("EventInvokeConfig").node.default_child
        cast(lambda_.CfnEventInvokeConfig, invoke_config).add_property_override(
            "DestinationConfig.OnFailure.Destination", self.expiry_dead_letters.queue_arn
        )
        self._allow(function, ["sqs:SendMessage"], [self.expiry_dead_letters.queue_arn])
        self._allow_state(function, bucket=True)  # its calls draw from the shared rate budget
        self._allow_secrets(function, self.graph_secret)
        self._allow_identity_store(function, EXPIRY_IDENTITY_STORE_ACTIONS)
        self._allow_schedules(function)
        return function

    def _worker_function(self) -> lambda_.Function:
        function = self._function(
            JIT_WORKER,
            FunctionSize(WORKER_TIMEOUT, 512),
            {
                **self._state_environment(),
                **self._graph_environment(),
                **self._scheduler_environment(),
                override("pim", "queue_url"): self.queue.queue_url,
            },
        )
        self._allow_state(function, bucket=True)
        self._allow_secrets(function, self.graph_secret)
        self._allow_identity_store(function, WORKER_IDENTITY_STORE_ACTIONS)
        self._allow_schedules(function)
        self._allow(function, CONSUME_ACTIONS, [self.queue.queue_arn])
        # Built by hand (not SqsEventSource) so the role gets exactly CONSUME_ACTIONS.
        lambda_.EventSourceMapping(
            self,
            "JitQueueSource",
            target=function,
            event_source_arn=self.queue.queue_arn,
            batch_size=10,
            report_batch_item_failures=True,
        )
        return function

    def _webhook_function(self) -> lambda_.Function:
        function = self._function(
            WEBHOOK,
            FunctionSize(Duration.seconds(10), 512),
            {
                **self._graph_environment(),
                override("pim", "client_state_arn"): self.client_state_secret.secret_arn,
                override("pim", "queue_url"): self.queue.queue_url,
            },
        )
        # The graph secret serves lifecycle reauthorizationRequired (the subscription is renewed).
        self._allow_secrets(function, self.graph_secret, self.client_state_secret)
        self._allow(function, ["sqs:SendMessage"], [self.queue.queue_arn])
        return function

    def _subscriptions_function(self) -> lambda_.Function:
        function = self._function(
            SUBSCRIPTIONS,
            FunctionSize(Duration.minutes(5), 512),
            {
                **self._state_environment(),
                **self._graph_environment(),
                override("pim", "client_state_arn"): self.client_state_secret.secret_arn,
                override("pim", "notification_url"): self.notification_url,
                override("pim", "lifecycle_url"): self.lifecycle_url,
                override("pim", "queue_url"): self.queue.queue_url,
            },
        )
        self._allow_state(function)
        self._allow_secrets(function, self.graph_secret, self.client_state_secret)
        # a subscription found missing sends its groups to the queue for an immediate look
        self._allow(function, ["sqs:SendMessage"], [self.queue.queue_arn])
        events.Rule(
            self,
            "SubscriptionsSchedule",
            description="Creates and renews the Graph subscriptions of the PIM groups",
            schedule=events.Schedule.rate(Duration.days(1)),
            targets=[targets.LambdaFunction(function)],
        )
        return function

    def _poller_function(self) -> lambda_.Function:
        minutes = self._config.settings.pim.poll_interval_minutes
        function = self._function(
            PIM_POLLER,
            # a poll that overruns its interval is harmless (group leases), but one tick should finish in one
            FunctionSize(Duration.seconds(min(900, max(60, minutes * 60))), 512),
            {
                **self._state_environment(),
                **self._graph_environment(),
                **self._scheduler_environment(),
                override("pim", "queue_url"): self.queue.queue_url,
            },
            # a failed poll is repeated by the next tick, not retried at once
            retry_attempts=0,
        )
        self._allow_state(function, bucket=True)  # its looks take tokens, as the worker's do
        self._allow_secrets(function, self.graph_secret)
        self._allow_identity_store(function, POLLER_IDENTITY_STORE_ACTIONS)
        self._allow_schedules(function)
        self._allow(function, ["sqs:SendMessage"], [self.queue.queue_arn])
        events.Rule(
            self,
            "PollerSchedule",
            description="Reads the PIM groups' assignment schedule instances (lost notifications)",
            schedule=events.Schedule.rate(Duration.minutes(minutes)),
            targets=[targets.LambdaFunction(function)],
        )
        return function

    # -- permissions -------------------------------------------------------------------------

    def _allow(self, function: lambda_.Function, actions: list[str], resources: list[str]) -> None:
        function.add_to_role_policy(iam.PolicyStatement(actions=actions, resources=resources))

    def _acknowledge_wildcard(self, scope: Construct, resource: str, reason: str) -> None:
        acknowledge(scope, f"AwsSolutions-IAM5[Resource::{resource}]", reason)

    def _allow_state(self, function: lambda_.Function, bucket: bool = False) -> None:
        actions = sorted(STATE_ACTIONS + BUCKET_ACTIONS) if bucket else STATE_ACTIONS
        self._allow(function, actions, [self.table.table_arn, f"{self.table.table_arn}/index/*"])
        existing = self._config.stack.existing_table_name
        if existing:
            arn = f"arn:<AWS::Partition>:dynamodb:<AWS::Region>:<AWS::AccountId>:table/{existing}"
        else:
            arn = f"<{self._stack.get_logical_id(cast(dynamodb.CfnTable, self.table.node.default_child))}.Arn>"
        self._acknowledge_wildcard(
            cast(iam.Role, function.role), f"{arn}/index/*", "Queries by the state table's own indexes"
        )

    def _allow_secrets(self, function: lambda_.Function, *secrets: secretsmanager.Secret) -> None:
        self._allow(function, ["secretsmanager:GetSecretValue"], [secret.secret_arn for secret in secrets])

    def _allow_identity_store(self, function: lambda_.Function, actions: list[str]) -> None:
        account = self._config.stack.identity_store_account_id or Aws.ACCOUNT_ID
        store = f"arn:{Aws.PARTITION}:identitystore::{account}:identitystore/{self._config.identity_store_id}"
        kinds = ("user", "group", "membership")
        self._allow(function, actions, [store, *(f"arn:{Aws.PARTITION}:identitystore:::{kind}/*" for kind in kinds)])
        for kind in kinds:
            self._acknowledge_wildcard(
                cast(iam.Role, function.role),
                f"arn:<AWS::Partition>:identitystore:::{kind}/*",
                f"Identity Store {kind} ARNs carry no account or store; their ids are minted at run time, "
                "and every call is also scoped to the one identity store ARN",
            )

    def _allow_access(self, function: lambda_.Function) -> None:
        instance = self._config.settings.identity_store.instance_arn
        assert instance is not None  # the deployment configuration requires it with access
        partition, instance_id = instance.split(":")[1], instance.rsplit("/", 1)[1]
        permission_sets = f"arn:{partition}:sso:::permissionSet/{instance_id}/*"
        accounts = f"arn:{partition}:sso:::account/*"
        self._allow(function, SYNC_ACCESS_ACTIONS, [instance, permission_sets, accounts])
        self._allow(function, SYNC_ORGANIZATIONS_ACTIONS, ["*"])
        role = cast(iam.Role, function.role)
        self._acknowledge_wildcard(
            role, permission_sets, "Permission sets of idsync's one IAM Identity Center instance, named in the file"
        )
        self._acknowledge_wildcard(
            role, accounts, "Accounts come from the file and its OUs, re-read each cycle; every call names the instance"
        )
        self._acknowledge_wildcard(
            role, "*", "Organizations list actions take the OU or root named in the file; read only"
        )

    def _allow_schedules(self, function: lambda_.Function) -> None:
        group = self.schedule_group.schedule_group_name
        self._allow(
            function,
            SCHEDULE_ACTIONS,
            [f"arn:{Aws.PARTITION}:scheduler:{Aws.REGION}:{Aws.ACCOUNT_ID}:schedule/{group}/*"],
        )
        self._acknowledge_wildcard(
            cast(iam.Role, function.role),
            f"arn:<AWS::Partition>:scheduler:<AWS::Region>:<AWS::AccountId>:schedule/{group}/*",
            "One schedule per grant, named at run time, only inside idsync's own schedule group",
        )
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.scheduler_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
            )
        )
