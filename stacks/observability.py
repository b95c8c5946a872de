"""Alarms (to the SNS topic) and the dashboard: cycles, changes by action, failures, JIT latency, queue depth."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks import metrics
from stacks.deployment import AlarmSettings

FIVE_MINUTES = Duration.minutes(5)
ONE_HOUR = Duration.hours(1)


def app_metric(
    name: str, statistic: str = "Sum", period: Duration = FIVE_MINUTES, label: str | None = None
) -> cloudwatch.Metric:
    """One metric the functions publish through Powertools (namespace and service ``idsync``)."""
    return cloudwatch.Metric(
        namespace=metrics.NAMESPACE,
        metric_name=name,
        dimensions_map={"service": metrics.SERVICE},
        statistic=statistic,
        period=period,
        label=label,
    )


class Observability(Construct):
    """The stack's alarms, each notifying ``topic``, and one dashboard."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        functions: Mapping[str, lambda_.Function],
        queue: sqs.Queue,
        dead_letters: sqs.Queue,
        api: apigw.RestApi,
        topic: sns.ITopic,
        alarms: AlarmSettings,
        expiry_dead_letters: sqs.Queue | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self._action = actions.SnsAction(topic)
        self.alarms: list[cloudwatch.Alarm] = []

        for spec in metrics.FUNCTIONS:
            function = functions[spec.key]
            self._alarm(
                f"{spec.key.replace('_', '-')}-errors",
                function.metric_errors(period=FIVE_MINUTES, statistic="Sum"),
                alarms.lambda_errors,
                f"The {spec.key} function failed {alarms.lambda_errors} or more times in 5 minutes",
            )
        self._alarm(
            "jit-dead-letters",
            dead_letters.metric_approximate_number_of_messages_visible(period=FIVE_MINUTES, statistic="Maximum"),
            alarms.dlq_messages,
            "JIT activations gave up after every retry and wait in the dead-letter queue",
        )
        if expiry_dead_letters is not None:
            self._alarm(
                "expiry-dead-letters",
                expiry_dead_letters.metric_approximate_number_of_messages_visible(
                    period=FIVE_MINUTES, statistic="Maximum"
                ),
                alarms.dlq_messages,
                "PIM grant expiries failed every attempt and wait in the expiry dead-letter queue "
                "(the PIM poller removes ended access within one poll interval)",
            )
        self._alarm(
            "quarantine",
            app_metric(metrics.QUARANTINED, period=ONE_HOUR),
            alarms.quarantine_cycles,
            "idsync is in quarantine: cycles slowed to once a day (see `idsync status`)",
        )
        self._alarm(
            "jit-latency",
            app_metric(metrics.ACTIVATION_LATENCY, statistic="p99"),
            alarms.jit_latency_seconds,
            f"p99 PIM activation latency above {alarms.jit_latency_seconds:g} s",
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        )
        throttles = {
            f"t{index}": functions[spec.key].metric_throttles(period=FIVE_MINUTES, statistic="Sum")
            for index, spec in enumerate(metrics.FUNCTIONS)
        }
        self._alarm(
            "throttles",
            cloudwatch.MathExpression(
                expression=" + ".join(f"FILL({name}, 0)" for name in throttles),
                using_metrics=throttles,
                label="Throttled invocations",
                period=FIVE_MINUTES,
            ),
            alarms.throttles,
            "Lambda throttled idsync invocations (concurrency limit reached)",
        )

        self.dashboard = self._dashboard(functions, queue, dead_letters, api)

    def _alarm(
        self,
        name: str,
        metric: cloudwatch.IMetric,
        threshold: float,
        description: str,
        comparison: cloudwatch.ComparisonOperator = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
    ) -> None:
        alarm = cloudwatch.Alarm(
            self,
            "".join(part.capitalize() for part in name.split("-")) + "Alarm",
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=comparison,
            # No data means nothing happened: no error, no quarantined cycle, no activation.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        alarm.add_alarm_action(self._action)
        self.alarms.append(alarm)

    def _changes(self, action: str) -> cloudwatch.MathExpression:
        # One line per action, summed over users, groups and memberships.
        counts = {
            f"{kind}{action}".lower(): app_metric(metrics.change_metric(kind, action), period=ONE_HOUR)
            for kind in metrics.KINDS
        }
        return cloudwatch.MathExpression(
            expression=" + ".join(f"FILL({name}, 0)" for name in counts),
            using_metrics=counts,
            label=action.lower(),
            period=ONE_HOUR,
        )

    def _dashboard(
        self,
        functions: Mapping[str, lambda_.Function],
        queue: sqs.Queue,
        dead_letters: sqs.Queue,
        api: apigw.RestApi,
    ) -> cloudwatch.Dashboard:
        dashboard = cloudwatch.Dashboard(self, "Dashboard", default_interval=Duration.days(1))
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Sync cycles",
                left=[
                    app_metric(metrics.CYCLE_COMPLETE, period=ONE_HOUR, label="complete"),
                    app_metric(metrics.CYCLES_SKIPPED, period=ONE_HOUR, label="skipped"),
                ],
                right=[functions[metrics.SYNC.key].metric_duration(period=ONE_HOUR, label="duration")],
            ),
            cloudwatch.GraphWidget(
                title="Changes by action",
                left=[self._changes(action) for action in metrics.ACTIONS],
                stacked=True,
            ),
            cloudwatch.GraphWidget(
                title="Failures",
                left=[
                    app_metric(metrics.FAILURES, period=ONE_HOUR, label="objects failed"),
                    app_metric(metrics.REFUSALS, period=ONE_HOUR, label="objects refused"),
                    app_metric(metrics.DELETION_GUARD, period=ONE_HOUR, label="deletion guard"),
                    app_metric(metrics.QUARANTINED, period=ONE_HOUR, label="quarantined cycles"),
                ],
                right=[
                    functions[spec.key].metric_errors(period=ONE_HOUR, label=f"{spec.key} errors")
                    for spec in metrics.FUNCTIONS
                ],
            ),
        )
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="JIT activation latency (s)",
                left=[
                    app_metric(metrics.ACTIVATION_LATENCY, statistic="p50", label="p50"),
                    app_metric(metrics.ACTIVATION_LATENCY, statistic="p99", label="p99"),
                ],
                right=[app_metric(metrics.ACTIVATIONS_APPLIED, label="activations")],
            ),
            cloudwatch.GraphWidget(
                title="JIT queue",
                left=[
                    queue.metric_approximate_number_of_messages_visible(statistic="Maximum", label="waiting"),
                    dead_letters.metric_approximate_number_of_messages_visible(
                        statistic="Maximum", label="dead letters"
                    ),
                ],
                right=[queue.metric_approximate_age_of_oldest_message(statistic="Maximum", label="oldest (s)")],
            ),
            cloudwatch.GraphWidget(
                title="Webhook",
                left=[
                    app_metric(metrics.NOTIFICATIONS_ACCEPTED, label="accepted"),
                    app_metric(metrics.NOTIFICATIONS_DROPPED, label="dropped"),
                    app_metric(metrics.REQUESTS_REJECTED, label="rejected"),
                    app_metric(metrics.REQUESTS_FAILED, label="failed (Graph retries)"),
                ],
                right=[api.metric_client_error(label="4xx"), api.metric_server_error(label="5xx")],
            ),
        )
        dashboard.add_widgets(cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms), width=24))
        return dashboard
