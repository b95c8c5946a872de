"""Shared AWS fixtures: fake credentials, moto in-process (with the Identity Store gap-fill), a ready
identity store, and a moto server over HTTP.

Every test runs with fake AWS credentials and no AWS profile, so nothing can reach a real account.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests
from moto import mock_aws

from idsync.adapters.identitystore import IdentityStoreTarget, retry_config
from idsync.ports import CallCounter
from sandbox import moto_ext, moto_server

AWS_REGION = "us-east-1"


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a fixed region for every test; no profile or config file is read."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws_region() -> str:
    return AWS_REGION


@pytest.fixture
def aws() -> Iterator[None]:
    """moto in-process for every AWS service, Identity Store gaps filled; injected faults cleared after."""
    moto_ext.install()
    with mock_aws():
        yield
    moto_ext.clear_faults()


@pytest.fixture
def identity_store_id(aws: None, aws_region: str) -> str:
    """The identity store of moto's IAM Identity Center instance, found as in production (sso-admin)."""
    instances = boto3.client("sso-admin", region_name=aws_region).list_instances()["Instances"]
    return str(instances[0]["IdentityStoreId"])


@pytest.fixture
def identitystore_client(aws: None, aws_region: str) -> Any:
    """A raw boto3 identitystore client (adaptive retries, as the product builds it)."""
    return boto3.client("identitystore", region_name=aws_region, config=retry_config(3))


@pytest.fixture
def call_counter() -> CallCounter:
    return CallCounter()


@pytest.fixture
def identity_store(identity_store_id: str, identitystore_client: Any, call_counter: CallCounter) -> IdentityStoreTarget:
    """A ready IdentityStoreTarget on moto, counting its calls in ``call_counter``."""
    return IdentityStoreTarget(identity_store_id, identitystore_client, call_counter)


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    """A moto server over HTTP on 127.0.0.1 (gap-fill installed); yields its endpoint URL."""
    server, endpoint = moto_server.start(0)
    # the server shares moto's in-process backends: start from an empty account
    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    try:
        yield endpoint
    finally:
        server.stop()
        moto_ext.clear_faults()
