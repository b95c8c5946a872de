"""Least privilege: each function's role grants exactly the actions on this allow-list, on its own resources.

The allow-list is written out here on purpose (not imported from the stack): a new grant in the
stack fails these tests until someone decides the function needs it and adds it below.
"""

from __future__ import annotations

from typing import Any

import pytest
from stack_helpers import Synthesized, as_list, render

LOGS = {"logs:CreateLogStream", "logs:PutLogEvents"}
XRAY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
STATE = {
    "dynamodb:BatchGetItem",  # ownership read by key; a JIT run reads its group and users at once
    "dynamodb:BatchWriteItem",
    "dynamodb:ConditionCheckItem",  # a lease holder's transactions check the lease
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
}
BUCKET = {"dynamodb:UpdateItem"}  # the JIT token bucket and the shared rate budget
SECRET = {"secretsmanager:GetSecretValue"}
SCHEDULES = {
    "scheduler:CreateSchedule",
    "scheduler:DeleteSchedule",
    "iam:PassRole",
}
# an activation adopts the user holding its userName, or the membership already there
ADOPTION_LOOKUPS = {"identitystore:GetGroupMembershipId", "identitystore:GetUserId"}

ALLOWED: dict[str, set[str]] = {
    "sync": LOGS
    | XRAY
    | STATE
    | SECRET
    | SCHEDULES  # the PIM safety net schedules the expiry of an activation it applies
    | BUCKET  # and takes a token for it
    | {"sns:Publish", "kms:Decrypt", "kms:GenerateDataKey"}
    | {
        f"identitystore:{action}"
        for action in (
            "CreateUser",
            "UpdateUser",
            "DeleteUser",
            "ListUsers",
            "GetUserId",
            "DescribeUser",
            "DescribeGroup",
            "CreateGroup",
            "UpdateGroup",
            "DeleteGroup",
            "ListGroups",
            "GetGroupId",
            "CreateGroupMembership",
            "DeleteGroupMembership",
            "GetGroupMembershipId",
            "ListGroupMemberships",
        )
    },
    "webhook": LOGS | XRAY | SECRET | {"sqs:SendMessage"},
    "jit_worker": LOGS
    | XRAY
    | STATE
    | BUCKET
    | SECRET
    | SCHEDULES
    | ADOPTION_LOOKUPS
    | {"identitystore:CreateUser", "identitystore:CreateGroupMembership", "identitystore:DeleteGroupMembership"}
    | {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sqs:SendMessage",
    },
    "jit_expiry": LOGS
    | XRAY
    | STATE
    | BUCKET  # its Identity Store calls draw from the shared rate budget
    | SECRET
    | SCHEDULES
    | {"identitystore:DeleteGroupMembership", "identitystore:GetGroupMembershipId"}
    | {"sqs:SendMessage"},  # Lambda sends a failed invocation to the expiry dead-letter queue with this role
    "subscriptions": LOGS | XRAY | STATE | SECRET | {"sqs:SendMessage"},  # hints for subscriptions found missing
    # the poller runs the worker's look, and hands looks that wait for a token to the queue
    "pim_poller": LOGS
    | XRAY
    | STATE
    | SECRET
    | SCHEDULES
    | BUCKET
    | ADOPTION_LOOKUPS
    | {"identitystore:CreateUser", "identitystore:CreateGroupMembership", "identitystore:DeleteGroupMembership"}
    | {"sqs:SendMessage"},
}


def statements_of_role(synthesized: Synthesized, role_id: str) -> list[dict[str, Any]]:
    statements = []
    for policy in synthesized.resources("AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    role = synthesized.json["Resources"][role_id]["Properties"]
    for inline in role.get("Policies", []):
        statements.extend(inline["PolicyDocument"]["Statement"])
    return [render(statement) for statement in statements]


def function_statements(synthesized: Synthesized, key: str) -> list[dict[str, Any]]:
    _, properties = synthesized.functions()[key]
    role_id = render(properties["Role"]).strip("${}").removesuffix(".Arn")
    return statements_of_role(synthesized, role_id)


@pytest.mark.parametrize("key", sorted(ALLOWED))
def test_function_role_grants_exactly_the_allowed_actions(synthesized: Synthesized, key: str) -> None:
    # Given the function's role, When every statement's actions are collected
    granted = {action for s in function_statements(synthesized, key) for action in as_list(s["Action"])}
    # Then nothing beyond the allow-list is granted, and nothing on it is missing
    assert granted - ALLOWED[key] == set(), f"{key} is granted actions it does not need"
    assert ALLOWED[key] - granted == set(), f"{key} lacks actions it needs"


@pytest.mark.parametrize("key", sorted(ALLOWED))
def test_statements_allow_named_actions_on_named_resources(synthesized: Synthesized, key: str) -> None:
    for statement in function_statements(synthesized, key):
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement
        assert "NotResource" not in statement
        actions = as_list(statement["Action"])
        assert not [a for a in actions if "*" in a], f"{key}: wildcard action in {actions}"
        resources = as_list(statement["Resource"])
        if "*" in resources:
            # X-Ray is the one service here that takes no resource-level permission
            assert set(actions) <= XRAY, f"{key}: {actions} granted on every resource"


def resources_for(synthesized: Synthesized, key: str, prefix: str) -> set[str]:
    return {
        resource
        for s in function_statements(synthesized, key)
        if any(a.startswith(prefix) for a in as_list(s["Action"]))
        for resource in as_list(s["Resource"])
    }


def test_identity_store_actions_are_scoped_to_the_configured_store(synthesized: Synthesized) -> None:
    expected = {
        "arn:${AWS::Partition}:identitystore::${AWS::AccountId}:identitystore/d-1234567890",
        "arn:${AWS::Partition}:identitystore:::user/*",
        "arn:${AWS::Partition}:identitystore:::group/*",
        "arn:${AWS::Partition}:identitystore:::membership/*",
    }
    for key in ("sync", "jit_worker", "jit_expiry"):
        assert resources_for(synthesized, key, "identitystore:") == expected, key


def test_data_actions_reach_only_the_stacks_own_resources(synthesized: Synthesized) -> None:
    table = synthesized.logical_id("AWS::DynamoDB::Table", "StateTable")
    graph_secret = synthesized.logical_id("AWS::SecretsManager::Secret", "GraphClientSecret")
    client_state = synthesized.logical_id("AWS::SecretsManager::Secret", "WebhookClientState")
    queue = synthesized.logical_id("AWS::SQS::Queue", "JitQueue")
    topic = synthesized.only("AWS::SNS::Topic")[0]
    key_id = synthesized.only("AWS::KMS::Key")[0]
    group = synthesized.only("AWS::Scheduler::ScheduleGroup")[1]["Properties"]["Name"]
    scheduler_role = synthesized.logical_id("AWS::IAM::Role", "SchedulerRole")
    for key in ("sync", "jit_worker", "jit_expiry", "subscriptions"):
        assert resources_for(synthesized, key, "dynamodb:") == {f"${{{table}.Arn}}", f"${{{table}.Arn}}/index/*"}
    for key in ALLOWED:
        secrets = {f"${{{graph_secret}}}"}
        if key in ("webhook", "subscriptions"):
            secrets.add(f"${{{client_state}}}")
        assert resources_for(synthesized, key, "secretsmanager:") == secrets, key
        logs = resources_for(synthesized, key, "logs:")
        assert len(logs) == 1
        assert synthesized.json["Resources"][logs.pop().strip("${}").removesuffix(".Arn")]["Type"] == (
            "AWS::Logs::LogGroup"
        )
    for key in ("webhook", "jit_worker"):
        assert resources_for(synthesized, key, "sqs:") == {f"${{{queue}.Arn}}"}
    assert resources_for(synthesized, "sync", "sns:") == {f"${{{topic}}}"}
    assert resources_for(synthesized, "sync", "kms:") == {f"${{{key_id}.Arn}}"}
    schedules = f"arn:${{AWS::Partition}}:scheduler:${{AWS::Region}}:${{AWS::AccountId}}:schedule/{group}/*"
    for key in ("jit_worker", "jit_expiry"):
        assert resources_for(synthesized, key, "scheduler:") == {schedules}
        (pass_role,) = [s for s in function_statements(synthesized, key) if s["Action"] == "iam:PassRole"]
        assert pass_role["Resource"] == f"${{{scheduler_role}.Arn}}"
        assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}}


def test_function_roles_trust_lambda_only_and_carry_no_managed_policy(synthesized: Synthesized) -> None:
    for key in ALLOWED:
        _, properties = synthesized.functions()[key]
        role = synthesized.json["Resources"][render(properties["Role"]).strip("${}").removesuffix(".Arn")]
        assert "ManagedPolicyArns" not in role["Properties"]
        (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}
        assert trust["Action"] == "sts:AssumeRole"


def test_scheduler_role_may_only_invoke_the_expiry_function_and_dead_letter_it(synthesized: Synthesized) -> None:
    role_id = synthesized.logical_id("AWS::IAM::Role", "SchedulerRole")
    expiry_id, _ = synthesized.functions()["jit_expiry"]
    dlq_id = synthesized.logical_id("AWS::SQS::Queue", "ExpiryDeadLetters")
    group_id = synthesized.only("AWS::Scheduler::ScheduleGroup")[0]
    role = synthesized.json["Resources"][role_id]["Properties"]
    (trust,) = render(role["AssumeRolePolicyDocument"]["Statement"])
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    # Confused-deputy guard: only schedules in this account's idsync group may assume it
    assert trust["Condition"] == {
        "StringEquals": {"aws:SourceAccount": "${AWS::AccountId}"},
        "ArnLike": {"aws:SourceArn": f"${{{group_id}.Arn}}"},
    }
    assert statements_of_role(synthesized, role_id) == [
        {"Action": "lambda:InvokeFunction", "Effect": "Allow", "Resource": f"${{{expiry_id}.Arn}}"},
        {"Action": "sqs:SendMessage", "Effect": "Allow", "Resource": f"${{{dlq_id}.Arn}}"},
    ]


def test_queue_senders_may_send_to_their_own_queue_only(synthesized: Synthesized) -> None:
    queue = "${" + synthesized.logical_id("AWS::SQS::Queue", "JitQueue") + ".Arn}"
    dlq = "${" + synthesized.logical_id("AWS::SQS::Queue", "ExpiryDeadLetters") + ".Arn}"
    for key, target in (("pim_poller", queue), ("subscriptions", queue), ("webhook", queue), ("jit_expiry", dlq)):
        sends = [s for s in function_statements(synthesized, key) if "sqs:SendMessage" in as_list(s["Action"])]
        assert [s["Resource"] for s in sends] == [target], key


def test_no_other_roles_or_policies_exist(synthesized: Synthesized) -> None:
    roles = set(synthesized.resources("AWS::IAM::Role"))
    function_roles = {
        render(properties["Role"]).strip("${}").removesuffix(".Arn")
        for _, properties in synthesized.functions().values()
    }
    api_role = synthesized.logical_id("AWS::IAM::Role", "CloudWatchRole")
    assert roles == function_roles | {synthesized.logical_id("AWS::IAM::Role", "SchedulerRole"), api_role}
    # API Gateway's account-level logging role: trusted by API Gateway only, AWS's policy made for it, nothing else
    role = synthesized.json["Resources"][api_role]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "apigateway.amazonaws.com"}
    assert [render(arn) for arn in role["ManagedPolicyArns"]] == [
        "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
    ]
    assert "Policies" not in role
    for policy in synthesized.resources("AWS::IAM::Policy").values():
        (attached,) = policy["Properties"]["Roles"]
        assert attached["Ref"] in roles
    assert synthesized.resources("AWS::IAM::ManagedPolicy") == {}
    assert synthesized.resources("AWS::IAM::User") == {}
