"""Helpers for reading a synthesized idsync template."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import App
from aws_cdk.assertions import Template

from stacks.deployment import DeploymentConfig
from stacks.idsync_stack import IdsyncStack, build
from stacks.metrics import FUNCTIONS
from stacks.packaging import prebuilt_code
from stacks.support import feature_flags

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Synthesized:
    """A synthesized stack: the CDK object, its assertions Template and its JSON."""

    stack: IdsyncStack
    template: Template
    outdir: Path

    @property
    def json(self) -> dict[str, Any]:
        return dict(self.template.to_json())

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {
            logical_id: resource
            for logical_id, resource in self.json["Resources"].items()
            if resource["Type"] == resource_type
        }

    def only(self, resource_type: str) -> tuple[str, dict[str, Any]]:
        found = self.resources(resource_type)
        assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
        return next(iter(found.items()))

    def logical_id(self, resource_type: str, contains: str) -> str:
        found = [logical_id for logical_id in self.resources(resource_type) if contains in logical_id]
        assert len(found) == 1, f"expected one {resource_type} named *{contains}*, found {found}"
        return found[0]

    def functions(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Function key (stacks.metrics) -> (logical id, properties), found by handler."""
        by_handler = {
            resource["Properties"]["Handler"]: (logical_id, resource["Properties"])
            for logical_id, resource in self.resources("AWS::Lambda::Function").items()
        }
        return {spec.key: by_handler[spec.handler] for spec in FUNCTIONS}


def synthesize(config: DeploymentConfig, outdir: Path) -> Synthesized:
    """Synthesize the stack as `make synth` does (cdk-nag included), with the plain lambdas/ asset."""
    app = App(outdir=str(outdir), context=feature_flags())
    stack = build(app, config, prebuilt_code(ROOT / "lambdas"))
    app.synth()
    return Synthesized(stack=stack, template=Template.from_stack(stack), outdir=outdir)


def render(value: Any) -> Any:
    """A CloudFormation value as readable text: {"Ref": X} -> "${X}", GetAtt -> "${X.Attr}", Join -> text."""
    if isinstance(value, list):
        return [render(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "Ref" in value:
        return "${" + value["Ref"] + "}"
    if "Fn::GetAtt" in value:
        return "${" + ".".join(value["Fn::GetAtt"]) + "}"
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(str(render(part)) for part in parts)
    return {key: render(item) for key, item in value.items()}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
