"""Charges' durable work: collect a charge when it is due, and the sweeper's relay that makes sure every due
charge has its work row (the rules live in ``charges.service``)."""

from __future__ import annotations

from marketplace import jobs
from marketplace.charges import service


@jobs.handler("charges.collect")
def collect(ref: str) -> None:
    service.collect(int(ref))


@jobs.periodic
def relay_due() -> None:
    service.relay_due()
