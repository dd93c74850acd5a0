"""What the outbox adds to ``GET /metrics``: its failed tasks, counted in the directory at scrape time."""

from __future__ import annotations

import logging

import ldap
from prometheus_client.core import GaugeMetricFamily

from didmos_host.errors import DidmosError

log = logging.getLogger("didmos.tasks.metrics")


class OutboxCollector:
    """``didmos_task_outbox_failed``: tasks whose attempts are used up, waiting for ``didmos tasks retry``.

    One one-level search on the indexed ``didmosTaskState``, asking for no attributes. When the directory
    cannot answer, the metric is left out and the scrape still succeeds.
    """

    def __init__(self, outbox):
        self.outbox = outbox

    def collect(self):
        try:
            failed = self.outbox.directory.search(self.outbox.base_dn,
                                                  "(&(objectClass=didmosTask)(didmosTaskState=failed))",
                                                  ldap.SCOPE_ONELEVEL, ["1.1"])
        except DidmosError as exc:
            log.warning("outbox not counted for /metrics: %s", exc.message)
            return
        family = GaugeMetricFamily("didmos_task_outbox_failed", "Tasks of the outbox that failed for good (their "
                                   "attempts used up), until retried; read from the directory at scrape time.")
        family.add_metric([], len(failed))
        yield family
