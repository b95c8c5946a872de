"""Least privilege, derived from the code: every AWS action a function's role holds is one a code path
of that function calls, and every call the code makes is granted.

The calls are read from the source (ast): each adapter's client calls (``client.<method>(...)``, and
the operation names handed to its ``_call``/``_pages``/``_update``/``get_paginator`` plumbing), turned
into API names with botocore's own service model. For the Identity Store, the operations are followed
from each function's entry point through its service (``*.target.<method>(...)`` calls reachable from
``CycleService.run`` (with the PIM safety net it runs through the JIT service), ``WorkerBatch.handle`` or
``JitService.expire``) into the adapter's methods.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

import boto3
import pytest
from stack_helpers import ROOT, Synthesized, as_list, render, synthesize
from test_stack_iam import function_statements

from stacks.idsync_construct import (
    EXPIRY_IDENTITY_STORE_ACTIONS,
    POLLER_IDENTITY_STORE_ACTIONS,
    SYNC_ACCESS_ACTIONS,
    SYNC_IDENTITY_STORE_ACTIONS,
    SYNC_ORGANIZATIONS_ACTIONS,
    WORKER_IDENTITY_STORE_ACTIONS,
)

RUNTIME = ROOT / "lambdas" / "idsync"
ADAPTERS = RUNTIME / "adapters"
SERVICE_OF = {
    "dynamodb_state": "dynamodb",
    "dynamodb_bucket": "dynamodb",
    "identitystore": "identitystore",
    "scheduler": "scheduler",
    "sqs_queue": "sqs",
    "sqs_requeue": "sqs",
    "notify": "sns",
}
PLUMBING = {"_call", "_page", "_pages", "_update", "get_paginator"}
# IAM authorizes some APIs under other actions' names.
IAM_ACTION_OF = {
    "sqs:SendMessageBatch": ("sqs:SendMessage",),
    # a transaction's items, by kind: the state store's transactions check the lease, put and delete
    "dynamodb:TransactWriteItems": ("dynamodb:ConditionCheckItem", "dynamodb:PutItem", "dynamodb:DeleteItem"),
}
# Calls made with the function's role by the platform, not by idsync's code, and why.
PLATFORM = {
    "logs:CreateLogStream": "Lambda writes the function's logs",
    "logs:PutLogEvents": "Lambda writes the function's logs",
    "xray:PutTraceSegments": "Lambda's active tracing",
    "xray:PutTelemetryRecords": "Lambda's active tracing",
    "sqs:ReceiveMessage": "the event source mapping polls the JIT queue",
    "sqs:DeleteMessage": "the event source mapping deletes what the worker handled",
    "sqs:GetQueueAttributes": "the event source mapping reads the queue",
    "kms:Decrypt": "SNS encrypts what sns:Publish sends with the topic's key",
    "kms:GenerateDataKey": "SNS encrypts what sns:Publish sends with the topic's key",
    "iam:PassRole": "scheduler:CreateSchedule hands EventBridge Scheduler its role",
}
# Which adapters each function's wiring builds (idsync.wiring); the Graph secret comes through Powertools.
ADAPTERS_OF = {
    # the cycle's PIM safety net takes tokens and (re-)arms expiries, as the worker does; the shared rate
    # budget's item is a bucket too (dynamodb_bucket), drawn from by every function that calls the Identity Store
    "sync": ["dynamodb_state", "dynamodb_bucket", "notify", "scheduler"],
    "jit_worker": ["dynamodb_state", "dynamodb_bucket", "scheduler", "sqs_requeue"],
    # an expiry never takes an activation token, but its Identity Store calls draw from the shared rate budget
    "jit_expiry": ["dynamodb_state", "dynamodb_bucket", "scheduler"],
    "webhook": ["sqs_queue"],
    "subscriptions": ["dynamodb_state", "sqs_queue"],  # groups of a subscription found missing: a look now
    "pim_poller": ["dynamodb_state", "dynamodb_bucket", "scheduler", "sqs_requeue"],
}
# Adapter calls a function's code path never reaches (the scan is per adapter module), and why.
UNREACHED_OF = {
    "pim_poller": {"sqs:ChangeMessageVisibility": "the poller only resends hints; it holds no queue message to delay"},
    "subscriptions": {
        "dynamodb:UpdateItem": "the state's only update (DynamoDbStateStore.upgrade_lookups) runs after a sync cycle"
    },
}
# Calls made with one function's role by the platform on its behalf, and why.
PLATFORM_OF = {
    "jit_expiry": {"sqs:SendMessage": "Lambda sends a failed asynchronous invocation to the dead-letter queue"},
}
SECRETS = {"secretsmanager:GetSecretValue"}  # Powertools' SecretsProvider.get
ENTRY = {
    # jit.py: the PIM pass; drift.py: the drift check of delta cycles
    "sync": (["services/cycle.py", "services/sync.py", "services/jit.py", "services/drift.py"], "run"),
    "jit_worker": (["services/jit.py"], "handle"),
    "jit_expiry": (["services/jit.py"], "expire"),
    "pim_poller": (["services/poller.py", "services/jit.py"], "poll"),
}
TABLE = {
    "sync": SYNC_IDENTITY_STORE_ACTIONS,
    "jit_worker": WORKER_IDENTITY_STORE_ACTIONS,
    "jit_expiry": EXPIRY_IDENTITY_STORE_ACTIONS,
    "pim_poller": POLLER_IDENTITY_STORE_ACTIONS,
}


def _api_name(service: str, name: str) -> str:
    if name[0].isupper():
        return name
    mapping: dict[str, str] = boto3.client(service, region_name="us-east-1").meta.method_to_api_mapping
    assert name in mapping, f"{service} has no operation {name}"
    return mapping[name]


def _receiver(node: ast.Call) -> str:
    return ast.unparse(node.func.value) if isinstance(node.func, ast.Attribute) else ""


def _calls(tree: ast.AST) -> Iterable[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _operations(tree: ast.AST, service: str) -> set[str]:
    """The API operations a piece of adapter code calls."""
    found = set()
    for call in _calls(tree):
        if not isinstance(call.func, ast.Attribute):
            continue
        name = call.func.attr
        if name in PLUMBING:
            if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
                found.add(_api_name(service, call.args[0].value))
        elif _receiver(call).split(".")[-1] in ("client", "_client"):
            found.add(_api_name(service, name))
    return found


def adapter_actions(module: str) -> set[str]:
    service = SERVICE_OF[module]
    tree = ast.parse((ADAPTERS / f"{module}.py").read_text(encoding="utf-8"))
    operations = [f"{service}:{op}" for op in _operations(tree, service)]
    return {action for op in operations for action in IAM_ACTION_OF.get(op, (op,))}


def identity_store_methods() -> dict[str, set[str]]:
    """IdentityStoreTarget method -> the Identity Store operations it calls (through its own helpers)."""
    tree = ast.parse((ADAPTERS / "identitystore.py").read_text(encoding="utf-8"))
    (target,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "IdentityStoreTarget"]
    methods = {n.name: n for n in target.body if isinstance(n, ast.FunctionDef)}
    direct = {name: _operations(node, "identitystore") for name, node in methods.items()}
    helpers = {
        name: {c.func.attr for c in _calls(node) if isinstance(c.func, ast.Attribute) and _receiver(c) == "self"}
        for name, node in methods.items()
    }

    def closure(name: str, seen: set[str]) -> set[str]:
        seen.add(name)
        ops = set(direct[name])
        for helper in helpers[name] & set(methods) - seen:
            ops |= closure(helper, seen)
        return ops

    return {name: closure(name, set()) for name in methods}


def reachable_target_calls(files: list[str], entry: str) -> set[str]:
    """``*.target.<method>`` calls reachable from ``entry`` (functions and methods joined by name)."""
    bodies: dict[str, list[ast.AST]] = {}
    for file in files:
        for node in ast.walk(ast.parse((RUNTIME / file).read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                bodies.setdefault(node.name, []).append(node)
    seen, pending, found = set(), [entry], set()
    while pending:
        name = pending.pop()
        if name in seen or name not in bodies:
            continue
        seen.add(name)
        for body in bodies[name]:
            for call in _calls(body):
                if isinstance(call.func, ast.Attribute) and _receiver(call).endswith("target"):
                    found.add(call.func.attr)
            # a method referenced without a call (a dispatch table of bound methods) is reachable too
            for node in ast.walk(body):
                if isinstance(node, ast.Attribute):
                    pending.append(node.attr)
                elif isinstance(node, ast.Name):
                    pending.append(node.id)
    return found


def code_identity_store_actions(key: str) -> set[str]:
    files, entry = ENTRY[key]
    methods = identity_store_methods()
    calls = reachable_target_calls(files, entry)
    assert calls <= set(methods), f"{key} calls {calls - set(methods)} the adapter does not have"
    return {f"identitystore:{op}" for call in calls for op in methods[call]}


def granted(synthesized: Synthesized, key: str) -> set[str]:
    return {action for s in function_statements(synthesized, key) for action in as_list(s["Action"])}


@pytest.mark.parametrize("key", sorted(TABLE))
def test_identity_store_actions_are_exactly_those_the_functions_code_path_calls(
    synthesized: Synthesized, key: str
) -> None:
    from_code = code_identity_store_actions(key)
    assert set(TABLE[key]) == from_code, f"{key}: the stack's table differs from the code's calls"
    in_template = {a for a in granted(synthesized, key) if a.startswith("identitystore:")}
    assert in_template == from_code


def test_the_expiry_only_ever_removes_and_the_worker_never_reads_whole_groups() -> None:
    # it finds a membership whose record write failed by group and user, and deletes it; it creates nothing
    assert code_identity_store_actions("jit_expiry") == {
        "identitystore:DeleteGroupMembership",
        "identitystore:GetGroupMembershipId",
    }
    worker = code_identity_store_actions("jit_worker")
    assert not {"identitystore:ListGroupMemberships", "identitystore:GetGroupId"} & worker


@pytest.mark.parametrize("key", sorted(ADAPTERS_OF))
def test_every_granted_action_is_called_by_the_functions_code_or_its_platform(
    synthesized: Synthesized, key: str
) -> None:
    from_code = set().union(*(adapter_actions(module) for module in ADAPTERS_OF[key])) | SECRETS
    if key in TABLE:
        from_code |= code_identity_store_actions(key)
    actions = granted(synthesized, key)
    unused = actions - from_code - set(PLATFORM) - set(PLATFORM_OF.get(key, {}))
    assert unused == set(), f"{key} holds actions no code path calls: {sorted(unused)}"
    missing = from_code - actions - set(UNREACHED_OF.get(key, {}))
    assert missing == set(), f"{key} calls actions its role lacks: {sorted(missing)}"


def test_the_scan_sees_the_adapters_calls() -> None:
    # the scan itself must find what is plainly there, or the tests above prove nothing
    assert adapter_actions("scheduler") == {"scheduler:CreateSchedule", "scheduler:DeleteSchedule"}
    assert {"dynamodb:BatchWriteItem", "dynamodb:BatchGetItem", "dynamodb:ConditionCheckItem"} <= adapter_actions(
        "dynamodb_state"
    )
    assert adapter_actions("sqs_queue") == {"sqs:SendMessage"}
    assert identity_store_methods()["find_membership"] == {"GetGroupMembershipId"}
    assert identity_store_methods()["update_user"] == {"UpdateUser"}


# --------------------------------------------------------------------------- access as code

ACCESS_RECEIVERS = {"self._client": "sso-admin", "self._orgs": "organizations"}
IAM_PREFIX = {"sso-admin": "sso", "organizations": "organizations"}
INSTANCE = "arn:aws:sso:::instance/ssoins-1234567890abcdef"


def access_adapter_methods() -> dict[str, set[str]]:
    """SsoAdminAccess method -> the IAM actions it calls (sso-admin on ``self._client``, Organizations on
    ``self._orgs``; paginators by their operation name)."""
    tree = ast.parse((ADAPTERS / "sso_admin.py").read_text(encoding="utf-8"))
    (access,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SsoAdminAccess"]
    out: dict[str, set[str]] = {}
    for method in (n for n in access.body if isinstance(n, ast.FunctionDef)):
        found = set()
        for call in _calls(method):
            if not isinstance(call.func, ast.Attribute):
                continue
            receiver = _receiver(call)
            if call.func.attr == "get_paginator":
                receiver = _receiver(call.func.value) if isinstance(call.func.value, ast.Call) else receiver
                service = ACCESS_RECEIVERS.get(receiver)
                if service and call.args and isinstance(call.args[0], ast.Constant):
                    found.add(f"{IAM_PREFIX[service]}:{_api_name(service, str(call.args[0].value))}")
            elif receiver in ACCESS_RECEIVERS:
                service = ACCESS_RECEIVERS[receiver]
                found.add(f"{IAM_PREFIX[service]}:{_api_name(service, call.func.attr)}")
        out[method.name] = found
    return out


def code_access_actions() -> set[str]:
    """What the sync cycle reaches through the access service: ``*.access.<method>`` calls from ``after_cycle``."""
    bodies: dict[str, list[ast.AST]] = {}
    for node in ast.walk(ast.parse((RUNTIME / "services" / "access.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef):
            bodies.setdefault(node.name, []).append(node)
    seen, pending, calls = set(), ["after_cycle"], set()
    while pending:
        name = pending.pop()
        if name in seen or name not in bodies:
            continue
        seen.add(name)
        for body in bodies[name]:
            for call in _calls(body):
                if isinstance(call.func, ast.Attribute) and _receiver(call).endswith("access"):
                    calls.add(call.func.attr)
                elif isinstance(call.func, ast.Attribute) and _receiver(call) == "self":
                    pending.append(call.func.attr)
                elif isinstance(call.func, ast.Name):
                    pending.append(call.func.id)
    methods = access_adapter_methods()
    assert calls <= set(methods), f"the access service calls {calls - set(methods)} the adapter does not have"
    return {action for call in calls for action in methods[call]}


@pytest.fixture(scope="module")
def synthesized_with_access(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    import yaml

    from stacks.deployment import parse_deployment_config

    data = yaml.safe_load((ROOT / "config" / "example.yaml").read_text(encoding="utf-8"))
    data["identity_store"]["instance_arn"] = INSTANCE
    data["access"] = [{"group": "AWS Readers", "permission_set": "ViewOnlyAccess", "accounts": ["111111111111"]}]
    return synthesize(parse_deployment_config(data), tmp_path_factory.mktemp("cdk-access"))


def test_with_access_the_sync_function_holds_exactly_the_access_calls_scoped_to_the_instance(
    synthesized_with_access: Synthesized,
) -> None:
    from_code = code_access_actions()
    assert set(SYNC_ACCESS_ACTIONS) | set(SYNC_ORGANIZATIONS_ACTIONS) == from_code
    statements = function_statements(synthesized_with_access, "sync")
    granted = {a for s in statements for a in as_list(s["Action"]) if a.startswith(("sso:", "organizations:"))}
    assert granted == from_code
    for statement in statements:
        actions = set(as_list(statement["Action"]))
        if actions & set(SYNC_ACCESS_ACTIONS):
            assert {render(r) for r in as_list(statement["Resource"])} == {
                INSTANCE,
                "arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/*",
                "arn:aws:sso:::account/*",
            }
    # the other functions never touch assignments
    for key in ("jit_worker", "jit_expiry", "webhook", "subscriptions"):
        assert (
            not {a for s in function_statements(synthesized_with_access, key) for a in as_list(s["Action"])} & from_code
        )


def test_without_access_no_function_holds_an_access_action(synthesized: Synthesized) -> None:
    for key in ADAPTERS_OF:
        actions = {a for s in function_statements(synthesized, key) for a in as_list(s["Action"])}
        assert not {a for a in actions if a.startswith(("sso:", "organizations:"))}


def test_the_access_scan_sees_the_adapters_calls() -> None:
    methods = access_adapter_methods()
    assert methods["accounts_under"] == {
        "organizations:ListAccountsForParent",
        "organizations:ListOrganizationalUnitsForParent",
    }
    assert methods["create"] == {"sso:CreateAccountAssignment"}
    assert "organizations:ListAccounts" not in code_access_actions()  # `config check` only
