"""IdsyncStack: the deployable stack (the construct plus its outputs)."""

from __future__ import annotations

from typing import Any

from aws_cdk import App, CfnOutput, Environment, Stack, Tags, Validations
from aws_cdk import aws_lambda as lambda_
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from stacks.deployment import DeploymentConfig
from stacks.idsync_construct import IdsyncConstruct


class IdsyncStack(Stack):
    """One idsync deployment; its outputs are what the Deploy guide asks the operator to use."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: DeploymentConfig, code: lambda_.Code, **kwargs: Any
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            description="idsync: Microsoft Entra ID users, groups and PIM for Groups into IAM Identity Center",
            **kwargs,
        )
        Tags.of(self).add("application", "idsync")
        self.idsync = IdsyncConstruct(self, "Idsync", config=config, code=code)
        outputs = {
            "NotificationUrl": (self.idsync.notification_url, "Graph change notification URL (webhook)"),
            "LifecycleUrl": (self.idsync.lifecycle_url, "Graph lifecycle notification URL"),
            "TableName": (
                self.idsync.table_name,
                "DynamoDB state table (retained; stack.existing_table_name adopts it)",
            ),
            "TopicArn": (self.idsync.topic.topic_arn, "SNS topic for failures, quarantine and alarms"),
            "GraphSecretName": (
                self.idsync.graph_secret.secret_name,
                "Secrets Manager secret to hold the Entra client secret",
            ),
            "ClientStateSecretName": (
                self.idsync.client_state_secret.secret_name,
                "Secrets Manager secret holding the webhook clientState (generated)",
            ),
            "JitQueueUrl": (self.idsync.queue.queue_url, "SQS queue feeding the JIT worker"),
            "SyncFunctionName": (self.idsync.sync_function.function_name, "Sync cycle function (invoke to run now)"),
            "SubscriptionsFunctionName": (
                self.idsync.subscriptions_function.function_name,
                "Graph subscriptions function (invoke to create them now)",
            ),
            "SyncLogGroupName": (
                self.idsync.sync_function.log_group.log_group_name,
                "Sync cycle logs (aws logs tail)",
            ),
            "DashboardName": (self.idsync.observability.dashboard.dashboard_name, "CloudWatch dashboard"),
        }
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)


def build(app: App, config: DeploymentConfig, code: lambda_.Code, account: str | None = None) -> IdsyncStack:
    """Add the stack to ``app`` with the cdk-nag AwsSolutions checks that run on every synth.

    Synth raises (ValidationFailed) on any finding that is not acknowledged with its reason.
    """
    stack = IdsyncStack(
        app,
        config.stack.stack_name,
        config=config,
        code=code,
        env=Environment(account=account, region=config.region),
    )
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return stack
