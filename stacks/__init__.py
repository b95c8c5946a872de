"""The idsync CDK app's stack and its reusable construct."""
