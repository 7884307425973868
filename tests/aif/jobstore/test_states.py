import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Outbox, Transition
from aif.jobstore.transitions import ALLOWED, IllegalTransition, transition
from events.envelope import CloudEvent
from events.messages import JobStatusChanged
from events.states import JobState
from events.topics import Topics

pytestmark = pytest.mark.store  # transitions and their outbox rows are written in one transaction


def _job() -> Job:
    return Job(id="j1", tenant="acme", request_source="s", request_id="1", request_sha256="x",
               request={}, state=None, reason="")


def test_every_state_has_a_row_and_terminal_states_lead_nowhere() -> None:
    assert set(ALLOWED) == {None, *JobState}
    for state in JobState:
        assert state.terminal == (not ALLOWED[state])


def test_happy_path_stores_transitions_and_outbox_events(
    sessions: sessionmaker[Session],
) -> None:
    topics = Topics("x")
    path = [JobState.validating, JobState.queued, JobState.training, JobState.evaluating,
            JobState.handing_off, JobState.succeeded]
    with sessions() as s:
        job = _job()
        s.add(job)
        for state in path:
            transition(s, job, state, topics, reason=f"to {state}")
        s.commit()
    with sessions() as s:
        stored = s.scalars(select(Transition.to_state).order_by(Transition.id)).all()
        assert stored == [p.value for p in path]
        events = [CloudEvent.model_validate_json(r.payload)
                  for r in s.scalars(select(Outbox).order_by(Outbox.id))]
        assert [JobStatusChanged.model_validate(e.data).state for e in events] == path
        assert {e.subject for e in events} == {"j1"}
        assert len({e.id for e in events}) == len(path)


def test_illegal_transition_raises_and_writes_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        job = _job()
        s.add(job)
        transition(s, job, JobState.validating, Topics())
        s.commit()
        with pytest.raises(IllegalTransition, match="validating -> succeeded"):
            transition(s, job, JobState.succeeded, Topics())
        s.rollback()
        assert s.scalar(select(func.count()).select_from(Outbox)) == 1
