"""The REST API Microsoft Graph posts change and lifecycle notifications to."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from stacks.deployment import StackSettings
from stacks.support import acknowledge, log_group

NOTIFICATIONS_PATH = "/graph/notifications"
LIFECYCLE_PATH = "/graph/lifecycle"
STAGE_NAME = "v1"
# Bounds on one notification item's values (Graph's are short ids, URLs, dates and a <= 128-char clientState).
MAX_STRING = 4096
MAX_FIELDS = 32


def notification_schema(max_items: int) -> apigw.JsonSchema:
    """The request model: ``{"value": [item, ...]}`` with the batch and each item's values bounded.

    API Gateway REST has no body-size setting below its 10 MB ceiling; bounding the item count,
    the number of fields and every string's length caps what reaches the function, which checks
    the byte size itself. Bodies of another content type (the validation handshake is text/plain)
    have no model and pass through to the function.
    """
    value = apigw.JsonSchema(max_length=MAX_STRING, max_properties=MAX_FIELDS, max_items=MAX_FIELDS)
    item = apigw.JsonSchema(type=apigw.JsonSchemaType.OBJECT, max_properties=MAX_FIELDS, additional_properties=value)
    return apigw.JsonSchema(
        schema=apigw.JsonSchemaVersion.DRAFT4,
        title="NotificationBatch",
        type=apigw.JsonSchemaType.OBJECT,
        required=["value"],
        max_properties=8,
        properties={"value": apigw.JsonSchema(type=apigw.JsonSchemaType.ARRAY, max_items=max_items, items=item)},
    )


class WebhookApi(Construct):
    """``POST /graph/notifications`` and ``POST /graph/lifecycle`` to ``function`` (proxy integration).

    The stage is throttled and traced and writes JSON access logs; bodies are checked against
    ``notification_schema`` before the function is invoked.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, function: lambda_.IFunction, settings: StackSettings
    ) -> None:
        super().__init__(scope, construct_id)
        access_logs = log_group(self, "AccessLogs", settings.log_retention_days)
        create_role = settings.api_gateway_cloudwatch_role == "create"
        self.rest_api = apigw.RestApi(
            self,
            "Api",
            rest_api_name=f"{Stack.of(self).stack_name}-graph-webhook",
            description="Microsoft Graph change and lifecycle notifications for idsync",
            endpoint_configuration=apigw.EndpointConfiguration(types=[apigw.EndpointType.REGIONAL]),
            # Access logging needs the account's API Gateway CloudWatch role; a fresh account has none.
            cloud_watch_role=create_role,
            # Other APIs of the account log through it too: it stays when this stack is deleted.
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN if create_role else None,
            deploy_options=apigw.StageOptions(
                stage_name=STAGE_NAME,
                throttling_rate_limit=settings.api_rate_limit,
                throttling_burst_limit=settings.api_burst_limit,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=False,
                ),
                metrics_enabled=True,
                tracing_enabled=True,
            ),
        )
        validator = self.rest_api.add_request_validator(
            "NotificationBodyValidator", validate_request_body=True, validate_request_parameters=True
        )
        model = self.rest_api.add_model(
            "NotificationBatch",
            content_type="application/json",
            description="Bounds a notification batch before it reaches the function",
            schema=notification_schema(settings.api_max_items),
        )
        integration = apigw.LambdaIntegration(function, proxy=True, allow_test_invoke=False)
        graph = self.rest_api.root.add_resource("graph")
        for path in (NOTIFICATIONS_PATH, LIFECYCLE_PATH):
            graph.add_resource(path.rsplit("/", 1)[-1]).add_method(
                "POST", integration, request_validator=validator, request_models={"application/json": model}
            )
        self.notification_url = self.rest_api.url_for_path(NOTIFICATIONS_PATH)
        self.lifecycle_url = self.rest_api.url_for_path(LIFECYCLE_PATH)

        acknowledge(
            self.rest_api,
            "AwsSolutions-APIG4",
            "Microsoft Graph sends no credentials; each notification is authenticated by its "
            "clientState secret, compared in constant time by the webhook",
        )
        acknowledge(
            self.rest_api,
            "AwsSolutions-COG4",
            "Microsoft Graph cannot present a Cognito token; clientState authenticates notifications",
        )
        acknowledge(
            self.rest_api,
            "AwsSolutions-APIG3",
            "The stage is throttled, bodies are bounded by a request validator and by the "
            "webhook itself; a WAF web ACL is left to the account's own perimeter",
        )
        if create_role:
            acknowledge(
                self.rest_api,
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AmazonAPIGatewayPushToCloudWatchLogs]",
                "API Gateway's account-level CloudWatch role uses the AWS managed policy made for it "
                "(AmazonAPIGatewayPushToCloudWatchLogs), as AWS documents",
            )
        acknowledge(
            self.rest_api,
            "AwsSolutions-APIG6",
            "Access logs are on; execution logging needs an account-wide CloudWatch role "
            "this stack must not impose on the account's other APIs",
        )
