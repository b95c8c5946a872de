"""Errors the adapters raise and the services understand."""

from __future__ import annotations


class IdsyncError(Exception):
    """Base of every idsync error."""


class ConfigError(IdsyncError):
    """The configuration is invalid; the message names the field and the rule."""


class NotConfigured(ConfigError):
    """A deployment is not set up yet (the Graph secret still holds the stack's placeholder, or no value):
    reported as such, never as rejected credentials."""


class DirectoryError(IdsyncError):
    """Microsoft Graph could not be read."""


class DirectoryAuthError(DirectoryError):
    """Credentials or permissions were rejected (quarantine-worthy)."""


class DeltaExpired(DirectoryError):
    """A delta link is no longer valid (410 Gone / syncStateNotFound): a full read is needed."""


class TargetError(IdsyncError):
    """IAM Identity Center refused a request."""


class TargetConflict(TargetError):
    """The object exists already (userName, displayName or membership taken)."""


class TargetTransient(TargetError):
    """AWS throttled or failed on its side (ThrottlingException, 5xx) after the client's retries: try later."""


class TargetThrottled(TargetTransient):
    """AWS asked the whole account to slow down (ThrottlingException): no one object is at fault."""


class TargetNotFound(TargetError):
    """The object does not exist (deleted by hand, for one)."""


class TargetAuthError(TargetError):
    """AWS credentials or permissions were rejected."""


class StateError(IdsyncError):
    """The state store (SQLite file or DynamoDB table) could not be read or written."""


class QueueError(IdsyncError):
    """A message could not be enqueued (SQS refused or was unreachable)."""


class SecretError(IdsyncError):
    """A secret could not be read (Secrets Manager refused, or the secret is missing or not text)."""


class SubscriptionGone(DirectoryError):
    """A Graph subscription no longer exists (expired, or deleted by Graph or an administrator)."""


class SchedulerError(IdsyncError):
    """An expiry schedule could not be created or removed (EventBridge Scheduler refused or was unreachable)."""


class LeaseLost(StateError):
    """A lease this writer held was taken over (it outlived its time): stop writing, the new holder decides."""
