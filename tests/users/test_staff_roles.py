"""Staff-management rights are checked per agency (P-04: least privilege)."""

from __future__ import annotations

import pytest

from marketplace.errors import Forbidden
from marketplace.extensions import db, utcnow
from marketplace.permissions import Role
from marketplace.users import service
from marketplace.users.models import RoleAssignment
from tests.factories import actor_for, make_agency, make_staff


def test_owner_of_one_agency_is_not_a_manager_of_another(app, app_ctx):  # enforces P-04
    first, second = make_agency(), make_agency()
    person = make_staff(Role.AGENCY_OWNER, agency=first)
    db.session.add(RoleAssignment(user_id=person.user_id, role=Role.AGENCY_STAFF, agency_id=second.id,
                                  granted_at=utcnow()))
    db.session.commit()
    actor = actor_for(person)
    invitation = service.invite_staff(actor, email="new.person@example.com", full_name="New Person",
                                      role=Role.AGENCY_STAFF, agency_id=first.id)
    assert invitation.agency_id == first.id
    with pytest.raises(Forbidden):
        service.invite_staff(actor, email="other.person@example.com", full_name="Other Person",
                             role=Role.AGENCY_STAFF, agency_id=second.id)
