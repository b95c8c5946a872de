"""Every resource of the stack and its key properties, from the example configuration."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from stack_helpers import ROOT, Synthesized, render

from idsync.config import load_settings_from_env
from stacks.deployment import DeploymentConfig
from stacks.metrics import FUNCTIONS, Function


def _env(synthesized: Synthesized, key: str) -> dict[str, Any]:
    _, properties = synthesized.functions()[key]
    return {name: render(value) for name, value in properties["Environment"]["Variables"].items()}


def test_state_table_is_on_demand_recoverable_encrypted_and_retained(synthesized: Synthesized) -> None:
    # Given the example configuration, When the stack is synthesized, Then the table is as the state store needs it
    logical_id, table = synthesized.only("AWS::DynamoDB::Table")
    properties = table["Properties"]
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert properties["SSESpecification"]["SSEEnabled"] is True
    assert properties["DeletionProtectionEnabled"] is True
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"
    assert properties["GlobalSecondaryIndexes"] == [
        {
            "IndexName": "gsi1",
            "KeySchema": [
                {"AttributeName": "gsi1pk", "KeyType": "HASH"},
                {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        },
        {
            "IndexName": "gsi2",
            "KeySchema": [{"AttributeName": "targetId", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        },
    ]
    assert {a["AttributeName"]: a["AttributeType"] for a in properties["AttributeDefinitions"]} == {
        "pk": "S",
        "sk": "S",
        "gsi1pk": "S",
        "gsi1sk": "S",
        "targetId": "S",
    }
    assert logical_id


@pytest.mark.parametrize(
    ("key", "timeout", "memory"),
    [
        ("sync", 900, 2048),
        ("webhook", 10, 512),
        ("jit_worker", 60, 512),
        ("jit_expiry", 60, 512),
        ("subscriptions", 300, 512),
        ("pim_poller", 60, 512),
    ],
)
def test_functions_run_arm64_python_with_tracing_and_their_own_log_group(
    synthesized: Synthesized, key: str, timeout: int, memory: int
) -> None:
    logical_id, properties = synthesized.functions()[key]
    assert properties["Runtime"] == "python3.14"
    assert properties["Architectures"] == ["arm64"]
    assert properties["Timeout"] == timeout
    assert properties["MemorySize"] == memory
    assert properties["TracingConfig"] == {"Mode": "Active"}
    log_group = render(properties["LoggingConfig"]["LogGroup"])
    group_id = log_group.strip("${}")
    assert synthesized.json["Resources"][group_id]["Properties"]["RetentionInDays"] == 90
    assert logical_id


def test_sync_runs_on_the_configured_rate_without_async_retries(synthesized: Synthesized) -> None:
    functions = synthesized.functions()
    sync_id, _ = functions["sync"]
    subscriptions_id, _ = functions["subscriptions"]
    poller_id, _ = functions["pim_poller"]
    rules = {
        rule["Properties"]["ScheduleExpression"]: render(rule["Properties"]["Targets"][0]["Arn"])
        for rule in synthesized.resources("AWS::Events::Rule").values()
    }
    assert rules == {
        "rate(10 minutes)": f"${{{sync_id}.Arn}}",
        "rate(1 day)": f"${{{subscriptions_id}.Arn}}",
        "rate(1 minute)": f"${{{poller_id}.Arn}}",  # pim.poll_interval_minutes' default
    }
    for function_id in (sync_id, poller_id):
        synthesized.template.has_resource_properties(
            "AWS::Lambda::EventInvokeConfig",
            {"FunctionName": {"Ref": function_id}, "MaximumRetryAttempts": 0},
        )


def test_expiry_failures_land_in_a_dead_letter_queue_with_an_alarm(synthesized: Synthesized) -> None:
    expiry_id, _ = synthesized.functions()["jit_expiry"]
    dlq_id = synthesized.logical_id("AWS::SQS::Queue", "ExpiryDeadLetters")
    # Lambda retries a failed expiry twice, then sends it to the expiry dead-letter queue
    configs = [render(c["Properties"]) for c in synthesized.resources("AWS::Lambda::EventInvokeConfig").values()]
    (config,) = [c for c in configs if c["FunctionName"] == f"${{{expiry_id}}}"]
    assert config["MaximumRetryAttempts"] == 2
    assert config["DestinationConfig"] == {"OnFailure": {"Destination": f"${{{dlq_id}.Arn}}"}}
    # the scheduler's schedules are pointed at the same queue (the runtime sets it on every schedule)
    env = synthesized.functions()["jit_expiry"][1]["Environment"]["Variables"]
    assert render(env["IDSYNC__PIM__EXPIRY_DEAD_LETTER_ARN"]) == f"${{{dlq_id}.Arn}}"
    queue = synthesized.json["Resources"][dlq_id]["Properties"]
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600
    alarms = [render(a["Properties"]) for a in synthesized.resources("AWS::CloudWatch::Alarm").values()]
    (alarm,) = [a for a in alarms if "expiry dead-letter queue" in a["AlarmDescription"]]
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": f"${{{dlq_id}.QueueName}}"}]
    assert (alarm["MetricName"], alarm["Threshold"]) == ("ApproximateNumberOfMessagesVisible", 1)


def test_jit_queue_redrives_to_a_dead_letter_queue_after_many_receives(synthesized: Synthesized) -> None:
    queue_id = synthesized.logical_id("AWS::SQS::Queue", "JitQueue")
    dlq_id = synthesized.logical_id("AWS::SQS::Queue", "JitDeadLetters")
    queue = synthesized.json["Resources"][queue_id]["Properties"]
    assert queue["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]}, "maxReceiveCount": 50}
    assert queue["VisibilityTimeout"] == 360  # six times the worker's 60 s timeout
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600
    for logical_id in (queue_id, dlq_id):
        assert synthesized.json["Resources"][logical_id]["Properties"]["SqsManagedSseEnabled"] is True
    # Every queue refuses requests without TLS
    expiry_dlq_id = synthesized.logical_id("AWS::SQS::Queue", "ExpiryDeadLetters")
    policies = [render(p["Properties"]) for p in synthesized.resources("AWS::SQS::QueuePolicy").values()]
    assert sorted(p["Queues"][0] for p in policies) == sorted(
        [f"${{{queue_id}}}", f"${{{dlq_id}}}", f"${{{expiry_dlq_id}}}"]
    )
    for policy in policies:
        (statement,) = policy["PolicyDocument"]["Statement"]
        assert statement["Effect"] == "Deny"
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_jit_worker_consumes_the_queue_in_batches_with_partial_failures(synthesized: Synthesized) -> None:
    worker_id, _ = synthesized.functions()["jit_worker"]
    queue_id = synthesized.logical_id("AWS::SQS::Queue", "JitQueue")
    _, mapping = synthesized.only("AWS::Lambda::EventSourceMapping")
    assert render(mapping["Properties"]) == {
        "BatchSize": 10,
        "EventSourceArn": f"${{{queue_id}.Arn}}",
        "FunctionName": f"${{{worker_id}}}",
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "Tags": [{"Key": "application", "Value": "idsync"}],
    }


def test_secrets_are_generated_never_written_in_the_template(synthesized: Synthesized) -> None:
    secrets = synthesized.resources("AWS::SecretsManager::Secret")
    assert len(secrets) == 2
    for secret in secrets.values():
        assert "SecretString" not in secret["Properties"]
        assert "GenerateSecretString" in secret["Properties"]
    client_state = secrets[synthesized.logical_id("AWS::SecretsManager::Secret", "WebhookClientState")]
    # Graph accepts a clientState of at most 128 characters
    assert client_state["Properties"]["GenerateSecretString"] == {"ExcludePunctuation": True, "PasswordLength": 64}


def test_topic_is_encrypted_tls_only_and_mails_the_configured_address(synthesized: Synthesized) -> None:
    topic_id, topic = synthesized.only("AWS::SNS::Topic")
    key_id, key = synthesized.only("AWS::KMS::Key")
    assert render(topic["Properties"]["KmsMasterKeyId"]) == f"${{{key_id}.Arn}}"
    assert key["Properties"]["EnableKeyRotation"] is True
    cloudwatch = [
        s
        for s in key["Properties"]["KeyPolicy"]["Statement"]
        if s["Principal"].get("Service") == "cloudwatch.amazonaws.com"
    ]
    (statement,) = cloudwatch
    assert statement["Action"] == ["kms:Decrypt", "kms:GenerateDataKey*"]
    # Only this account's alarms may use the key
    assert render(statement["Condition"]) == {
        "StringEquals": {"aws:SourceAccount": "${AWS::AccountId}"},
        "ArnLike": {"aws:SourceArn": "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:*"},
    }
    synthesized.template.has_resource_properties(
        "AWS::SNS::Subscription",
        {"Protocol": "email", "Endpoint": "identity-team@example.com", "TopicArn": {"Ref": topic_id}},
    )
    _, policy = synthesized.only("AWS::SNS::TopicPolicy")
    statements = render(policy["Properties"]["PolicyDocument"]["Statement"])
    (deny,) = [s for s in statements if s["Effect"] == "Deny"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # Alarms may publish (the topic policy replaces SNS's default one), from this account only
    (alarms,) = [s for s in statements if s["Effect"] == "Allow"]
    assert alarms["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert alarms["Action"] == "sns:Publish"
    assert alarms["Resource"] == f"${{{topic_id}}}"
    assert alarms["Condition"] == render(statement["Condition"])


def test_api_routes_post_notifications_and_lifecycle_to_the_webhook(synthesized: Synthesized) -> None:
    webhook_id, _ = synthesized.functions()["webhook"]
    _, api = synthesized.only("AWS::ApiGateway::RestApi")
    assert api["Properties"]["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    resources = synthesized.resources("AWS::ApiGateway::Resource")
    paths = {logical_id: api_path(resources, logical_id) for logical_id in resources}
    methods = {
        (paths[render(m["Properties"]["ResourceId"]).strip("${}")], m["Properties"]["HttpMethod"]): m["Properties"]
        for m in synthesized.resources("AWS::ApiGateway::Method").values()
    }
    assert set(methods) == {("/graph/notifications", "POST"), ("/graph/lifecycle", "POST")}
    validator_id, validator = synthesized.only("AWS::ApiGateway::RequestValidator")
    assert validator["Properties"]["ValidateRequestBody"] is True
    model_id, _ = synthesized.only("AWS::ApiGateway::Model")
    for method in methods.values():
        assert method["AuthorizationType"] == "NONE"
        assert method["Integration"]["Type"] == "AWS_PROXY"
        assert webhook_id in json.dumps(method["Integration"]["Uri"])
        assert render(method["RequestValidatorId"]) == f"${{{validator_id}}}"
        assert render(method["RequestModels"]) == {"application/json": f"${{{model_id}}}"}


def api_path(resources: dict[str, dict[str, Any]], logical_id: str) -> str:
    """The full path of an API Gateway resource, following its parents up to the root."""
    resource = resources[logical_id]["Properties"]
    parent = render(resource["ParentId"]).strip("${}")
    prefix = api_path(resources, parent) if parent in resources else ""
    return f"{prefix}/{resource['PathPart']}"


def test_request_model_bounds_the_size_of_a_notification_batch(synthesized: Synthesized) -> None:
    _, model = synthesized.only("AWS::ApiGateway::Model")
    schema = model["Properties"]["Schema"]
    assert model["Properties"]["ContentType"] == "application/json"
    assert schema["required"] == ["value"]
    value = schema["properties"]["value"]
    assert value["type"] == "array"
    assert value["maxItems"] == 1000
    assert value["items"]["maxProperties"] == 32
    assert value["items"]["additionalProperties"] == {"maxLength": 4096, "maxProperties": 32, "maxItems": 32}


def test_stage_is_throttled_traced_and_writes_access_logs(synthesized: Synthesized) -> None:
    _, stage = synthesized.only("AWS::ApiGateway::Stage")
    properties = stage["Properties"]
    assert properties["StageName"] == "v1"
    assert properties["TracingEnabled"] is True
    assert properties["MethodSettings"] == [
        {
            "DataTraceEnabled": False,
            "HttpMethod": "*",
            "MetricsEnabled": True,
            "ResourcePath": "/*",
            "ThrottlingBurstLimit": 100,
            "ThrottlingRateLimit": 50,
        }
    ]
    destination = render(properties["AccessLogSetting"]["DestinationArn"])
    (group,) = [g for g in synthesized.resources("AWS::Logs::LogGroup") if "${" + g + "}" in destination]
    assert destination == f"arn:aws:logs:eu-west-1:${{AWS::AccountId}}:log-group:${{{group}}}"
    access_format = json.loads(properties["AccessLogSetting"]["Format"])
    assert {"status", "requestTime", "httpMethod", "resourcePath", "responseLength"} <= set(access_format)


def test_each_function_gets_the_settings_and_only_the_pointers_it_uses(
    synthesized: Synthesized, example_config: DeploymentConfig
) -> None:
    functions = synthesized.functions()
    table = "${" + synthesized.logical_id("AWS::DynamoDB::Table", "StateTable") + "}"
    graph_secret = "${" + synthesized.logical_id("AWS::SecretsManager::Secret", "GraphClientSecret") + "}"
    client_state = "${" + synthesized.logical_id("AWS::SecretsManager::Secret", "WebhookClientState") + "}"
    queue = "${" + synthesized.logical_id("AWS::SQS::Queue", "JitQueue") + "}"
    topic = "${" + synthesized.only("AWS::SNS::Topic")[0] + "}"
    group_id, group = synthesized.only("AWS::Scheduler::ScheduleGroup")
    role = "${" + synthesized.logical_id("AWS::IAM::Role", "SchedulerRole") + ".Arn}"
    expiry_name = functions["jit_expiry"][1]["FunctionName"]
    # the region is known, so the partition is written out (the @aws-cdk/core:enablePartitionLiterals flag)
    expiry_arn = f"arn:aws:lambda:eu-west-1:${{AWS::AccountId}}:function:{expiry_name}"
    api = synthesized.only("AWS::ApiGateway::RestApi")[0]
    stage = synthesized.only("AWS::ApiGateway::Stage")[0]
    url = f"https://${{{api}}}.execute-api.eu-west-1.${{AWS::URLSuffix}}/${{{stage}}}"
    state = {"IDSYNC__STATE__BACKEND": "dynamodb", "IDSYNC__STATE__TABLE_NAME": table}
    scheduler = {
        "IDSYNC__PIM__SCHEDULER_GROUP": group["Properties"]["Name"],
        "IDSYNC__PIM__SCHEDULER_ROLE_ARN": role,
        "IDSYNC__PIM__EXPIRY_FUNCTION_ARN": expiry_arn,
        "IDSYNC__PIM__EXPIRY_DEAD_LETTER_ARN": "${"
        + synthesized.logical_id("AWS::SQS::Queue", "ExpiryDeadLetters")
        + ".Arn}",
    }
    graph = {"IDSYNC__GRAPH__CLIENT_SECRET_ARN": graph_secret}
    expected = {
        "sync": {**state, **graph, **scheduler, "IDSYNC__NOTIFICATIONS__TOPIC_ARN": topic},
        "webhook": {**graph, "IDSYNC__PIM__CLIENT_STATE_ARN": client_state, "IDSYNC__PIM__QUEUE_URL": queue},
        "jit_worker": {**state, **graph, **scheduler, "IDSYNC__PIM__QUEUE_URL": queue},
        "jit_expiry": {**state, **graph, **scheduler},
        "subscriptions": {
            **state,
            **graph,
            "IDSYNC__PIM__CLIENT_STATE_ARN": client_state,
            "IDSYNC__PIM__NOTIFICATION_URL": f"{url}/graph/notifications",
            "IDSYNC__PIM__LIFECYCLE_URL": f"{url}/graph/lifecycle",
            "IDSYNC__PIM__QUEUE_URL": queue,
        },
        "pim_poller": {**state, **graph, **scheduler, "IDSYNC__PIM__QUEUE_URL": queue},
    }
    for key, pointers in expected.items():
        env = _env(synthesized, key)
        assert env.pop("IDSYNC_SETTINGS") == example_config.settings_json()
        assert env == {
            **pointers,
            "POWERTOOLS_SERVICE_NAME": "idsync",
            "POWERTOOLS_METRICS_NAMESPACE": "idsync",
            "LOG_LEVEL": "INFO",
        }, key
    assert group_id


def test_functions_environment_loads_with_the_runtime_settings_loader(
    synthesized: Synthesized, example_config: DeploymentConfig
) -> None:
    # Given the worker's environment as deployed (tokens stand in for the resolved values)
    env = {name: str(value) for name, value in _env(synthesized, "jit_worker").items()}
    # When the function reads its settings the way every handler does
    settings = load_settings_from_env(env)
    # Then the overrides land on the fields the runtime reads, and the file's values survive
    assert settings.state.backend == "dynamodb"
    assert settings.state.table_name == env["IDSYNC__STATE__TABLE_NAME"]
    assert settings.graph.client_secret_arn == env["IDSYNC__GRAPH__CLIENT_SECRET_ARN"]
    assert settings.pim.queue_url == env["IDSYNC__PIM__QUEUE_URL"]
    assert settings.pim.scheduler_group == env["IDSYNC__PIM__SCHEDULER_GROUP"]
    assert settings.pim.expiry_function_arn == env["IDSYNC__PIM__EXPIRY_FUNCTION_ARN"]
    assert settings.identity_store == example_config.settings.identity_store
    assert settings.scope == example_config.settings.scope
    assert settings.pim.groups == example_config.settings.pim.groups


def test_scheduler_group_goes_with_the_stack(synthesized: Synthesized) -> None:
    # its schedules can only invoke this stack's expiry function: kept, it would block the next deploy
    _, group = synthesized.only("AWS::Scheduler::ScheduleGroup")
    assert group["DeletionPolicy"] == "Delete"
    assert group["UpdateReplacePolicy"] == "Delete"


ALARMS = {
    # description fragment -> (namespace, metric, statistic, threshold, comparison)
    "sync function failed": ("AWS/Lambda", "Errors", "Sum", 1, "GreaterThanOrEqualToThreshold"),
    "webhook function failed": ("AWS/Lambda", "Errors", "Sum", 1, "GreaterThanOrEqualToThreshold"),
    "jit_worker function failed": ("AWS/Lambda", "Errors", "Sum", 1, "GreaterThanOrEqualToThreshold"),
    "jit_expiry function failed": ("AWS/Lambda", "Errors", "Sum", 1, "GreaterThanOrEqualToThreshold"),
    "subscriptions function failed": ("AWS/Lambda", "Errors", "Sum", 1, "GreaterThanOrEqualToThreshold"),
    "pim_poller function failed": ("AWS/Lambda", "Errors", "Sum", 1, "GreaterThanOrEqualToThreshold"),
    "expiry dead-letter queue": (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        "Maximum",
        1,
        "GreaterThanOrEqualToThreshold",
    ),
    "JIT activations gave up": (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        "Maximum",
        1,
        "GreaterThanOrEqualToThreshold",
    ),
    "quarantine": ("idsync", "Quarantined", "Sum", 1, "GreaterThanOrEqualToThreshold"),
    "activation latency": ("idsync", "ActivationLatency", "p99", 120, "GreaterThanThreshold"),
}


def test_alarms_watch_errors_dead_letters_quarantine_latency_and_throttling(synthesized: Synthesized) -> None:
    alarms = [render(a["Properties"]) for a in synthesized.resources("AWS::CloudWatch::Alarm").values()]
    topic = "${" + synthesized.only("AWS::SNS::Topic")[0] + "}"
    assert len(alarms) == len(ALARMS) + 1
    for alarm in alarms:
        assert alarm["AlarmActions"] == [topic]
        assert alarm["TreatMissingData"] == "notBreaching"
    for fragment, (namespace, metric, statistic, threshold, comparison) in ALARMS.items():
        (alarm,) = [a for a in alarms if fragment in a["AlarmDescription"]]
        assert alarm["Namespace"] == namespace, fragment
        assert alarm["MetricName"] == metric, fragment
        assert alarm.get("Statistic", alarm.get("ExtendedStatistic")) == statistic, fragment
        assert alarm["Threshold"] == threshold, fragment
        assert alarm["ComparisonOperator"] == comparison, fragment
    (throttles,) = [a for a in alarms if "throttled" in a["AlarmDescription"]]
    expression = next(m for m in throttles["Metrics"] if "Expression" in m)
    assert expression["Expression"].count("FILL(") == 6
    assert throttles["Threshold"] == 5


def test_app_metric_alarms_read_the_service_the_functions_publish_under(synthesized: Synthesized) -> None:
    alarms = [a["Properties"] for a in synthesized.resources("AWS::CloudWatch::Alarm").values()]
    dimensions = {a["MetricName"]: a["Dimensions"] for a in alarms if a.get("Namespace") == "idsync"}
    assert dimensions == {
        "Quarantined": [{"Name": "service", "Value": "idsync"}],
        "ActivationLatency": [{"Name": "service", "Value": "idsync"}],
    }


def test_dashboard_shows_cycles_changes_failures_latency_and_queue_depth(synthesized: Synthesized) -> None:
    _, dashboard = synthesized.only("AWS::CloudWatch::Dashboard")
    body = json.loads(str(render(dashboard["Properties"]["DashboardBody"])))
    titles = {widget["properties"].get("title") for widget in body["widgets"]}
    assert {
        "Sync cycles",
        "Changes by action",
        "Failures",
        "JIT activation latency (s)",
        "JIT queue",
        "Webhook",
        "Alarms",
    } <= titles
    metrics = json.dumps(body)
    # The names the handlers publish: CycleComplete, <Kind><Action> counts, Failures, ...
    for name in ("CycleComplete", "UserCreate", "GroupUpdate", "MembershipDelete", "Failures", "ActivationLatency"):
        assert f'"{name}"' in metrics


def test_outputs_name_the_webhook_table_topic_and_secrets(synthesized: Synthesized) -> None:
    outputs = {name: render(output["Value"]) for name, output in synthesized.json["Outputs"].items()}
    table = synthesized.logical_id("AWS::DynamoDB::Table", "StateTable")
    topic = synthesized.only("AWS::SNS::Topic")[0]
    assert outputs["NotificationUrl"].endswith("/graph/notifications")
    assert outputs["LifecycleUrl"].endswith("/graph/lifecycle")
    assert outputs["TableName"] == f"${{{table}}}"
    assert outputs["TopicArn"] == f"${{{topic}}}"
    graph_secret = synthesized.logical_id("AWS::SecretsManager::Secret", "GraphClientSecret")
    client_state = synthesized.logical_id("AWS::SecretsManager::Secret", "WebhookClientState")
    assert graph_secret in json.dumps(synthesized.json["Outputs"]["GraphSecretName"])
    assert client_state in json.dumps(synthesized.json["Outputs"]["ClientStateSecretName"])
    functions = synthesized.functions()
    assert outputs["SyncFunctionName"] == f"${{{functions['sync'][0]}}}"
    assert outputs["SubscriptionsFunctionName"] == f"${{{functions['subscriptions'][0]}}}"
    sync_logs = render(functions["sync"][1]["LoggingConfig"]["LogGroup"])
    assert outputs["SyncLogGroupName"] == sync_logs


@pytest.mark.parametrize("spec", FUNCTIONS, ids=lambda spec: spec.key)
def test_every_handler_the_stack_names_is_in_the_asset(spec: Function) -> None:
    # The handler string is all the stack knows of the code: a renamed or missing module would
    # only show at the first invocation (Runtime.ImportModuleError).
    module, function = spec.handler.rsplit(".", 1)
    source = ROOT / "lambdas" / Path(*module.split(".")).with_suffix(".py")
    assert source.is_file(), f"{spec.handler}: {source.relative_to(ROOT)} does not exist"
    names = {node.name for node in ast.parse(source.read_text()).body if isinstance(node, ast.FunctionDef)}
    assert function in names, f"{spec.handler}: no top-level def {function}"
