"""Delivery accounting: failed deliveries counted by reason, from both delivery paths."""

from __future__ import annotations

import logging
import threading
from collections import Counter

from feedhandler.kafka._producer_link import ProducerLink

log = logging.getLogger(__name__)


class DeliveryErrors:
    """Counts failed deliveries by reason: librdkafka's error-only delivery reports for records
    produced through the Producer, plus the ProducerLink's own count for per-tick records.

    Successes are not reported one by one: delivered = produced - failed - still queued."""

    def __init__(self, units_of=lambda message: 1):
        self._units_of = units_of
        self._lock = threading.Lock()
        self._records = 0
        self._units = 0
        self._reasons: Counter[str] = Counter()
        self.link: ProducerLink | None = None

    def __call__(self, error, message):
        if error is None:
            return
        with self._lock:
            self._records += 1
            self._units += self._units_of(message)
            self._reasons[error.str()] += 1
        log.error("delivery failed for %s [%s]: %s", message.topic(), message.partition(),
                  error.str())

    @property
    def records(self) -> int:
        """Failed records."""
        return self._records + (self.link.failed if self.link else 0)

    @property
    def units(self) -> int:
        """Ticks in the failed records (a batched record holds many)."""
        return self._units + (self.link.failed if self.link else 0)

    @property
    def reasons(self) -> Counter[str]:
        return self._reasons + Counter(self.link.failures() if self.link else {})
