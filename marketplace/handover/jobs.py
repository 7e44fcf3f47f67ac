"""Handover's durable work: the rental closes a while after the return (the names the job runner knows)."""

from __future__ import annotations

from marketplace import jobs
from marketplace.handover import service


@jobs.handler("handover.after_return")
def after_return(ref: str) -> None:
    service.after_return(int(ref))
