"""KYC housekeeping run on the sweeper's clock."""

from __future__ import annotations

from marketplace import jobs
from marketplace.kyc import service


@jobs.periodic
def purge_unclaimed_uploads() -> None:
    service.purge_unclaimed_uploads()
