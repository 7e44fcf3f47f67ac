"""Agency statuses: the transition table, every illegal move refused, and each console verb's legal starts."""

from __future__ import annotations

import itertools

import pytest

from marketplace.agencies import service as agencies
from marketplace.agencies import states
from marketplace.agencies.models import AgencyStatus
from marketplace.extensions import db
from marketplace.permissions import Role
from tests.agencies.helpers import agency_with_people, attach_all_documents
from tests.factories import actor_for, make_staff

S = AgencyStatus
LEGAL = {(S.PENDING, S.ACTIVE), (S.PENDING, S.REJECTED), (S.REJECTED, S.PENDING), (S.ACTIVE, S.SUSPENDED),
         (S.SUSPENDED, S.ACTIVE)}


def test_the_table_is_exactly_the_legal_moves():
    assert {(a, b) for a, targets in states.TRANSITIONS.items() for b in targets} == LEGAL
    assert set(states.TRANSITIONS) == set(AgencyStatus)


@pytest.mark.parametrize("current,target", [p for p in itertools.product(AgencyStatus, AgencyStatus)
                                            if p not in LEGAL])
def test_every_illegal_move_is_refused(current, target):
    with pytest.raises(states.IllegalTransition) as caught:
        states.check(current, target)
    assert caught.value.code == "illegal_state_transition" and caught.value.status == 409


VERBS = {
    "approve": (agencies.approve, {S.PENDING}),
    "reject": (lambda actor, ref: agencies.reject(actor, ref, "Documents unreadable"), {S.PENDING}),
    "suspend": (lambda actor, ref: agencies.suspend(actor, ref, "Complaints under review"), {S.ACTIVE}),
    "reinstate": (agencies.reinstate, {S.SUSPENDED}),
}


@pytest.mark.parametrize("verb,status", list(itertools.product(VERBS, AgencyStatus)))
def test_console_verbs_move_only_from_their_legal_status(app, app_ctx, verb, status):
    action, allowed = VERBS[verb]
    world = agency_with_people(S.PENDING)
    attach_all_documents(world.agency, world.owner)
    world.agency.status = status
    db.session.commit()
    admin = actor_for(make_staff(Role.ADMIN))
    if status in allowed:
        action(admin, world.public_id)
    else:
        with pytest.raises(states.IllegalTransition):
            action(admin, world.public_id)
    db.session.rollback()


def test_console_verbs_need_the_verify_permission(app, app_ctx):
    world = agency_with_people(S.PENDING)
    for role in (Role.KYC_REVIEWER, Role.DPO, Role.AGENCY_OWNER):
        actor = actor_for(make_staff(role, agency=world.agency if role == Role.AGENCY_OWNER else None))
        for verb, (action, _) in VERBS.items():
            with pytest.raises(agencies.Forbidden):
                action(actor, world.public_id)
            assert verb
