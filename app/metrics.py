"""Prometheus text exposition: event counts from the store plus this process's counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IngestCounters:
    """Counters kept by the web process (reset on restart, as Prometheus counters may be)."""

    webhooks_accepted: int = 0
    webhooks_new: int = 0
    webhooks_rejected: int = 0

    def observe_ingest(self, accepted: int, new: int) -> None:
        self.webhooks_accepted += accepted
        self.webhooks_new += new


def render(counts: dict[str, int], oldest_pending_age: float, counters: IngestCounters) -> str:
    lines = [
        "# HELP stripeline_events Stored Stripe events by processing status.",
        "# TYPE stripeline_events gauge",
    ]
    for status in ("pending", "processed", "ignored", "failed"):
        lines.append(f'stripeline_events{{status="{status}"}} {counts.get(status, 0)}')
    lines += [
        "# HELP stripeline_events_received Unique Stripe events stored.",
        "# TYPE stripeline_events_received gauge",
        f"stripeline_events_received {sum(counts.values())}",
        "# HELP stripeline_oldest_pending_age_seconds Age of the oldest event waiting to be processed.",
        "# TYPE stripeline_oldest_pending_age_seconds gauge",
        f"stripeline_oldest_pending_age_seconds {oldest_pending_age:.3f}",
        "# HELP stripeline_webhooks_accepted_total Webhook deliveries answered 200 by this process.",
        "# TYPE stripeline_webhooks_accepted_total counter",
        f"stripeline_webhooks_accepted_total {counters.webhooks_accepted}",
        "# HELP stripeline_webhooks_new_total Webhook deliveries that stored a new event.",
        "# TYPE stripeline_webhooks_new_total counter",
        f"stripeline_webhooks_new_total {counters.webhooks_new}",
        "# HELP stripeline_webhooks_rejected_total Webhook deliveries refused (4xx).",
        "# TYPE stripeline_webhooks_rejected_total counter",
        f"stripeline_webhooks_rejected_total {counters.webhooks_rejected}",
    ]
    return "\n".join(lines) + "\n"
