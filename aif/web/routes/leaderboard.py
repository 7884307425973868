"""The leaderboard of the caller's jobs plus every tenant's public ones (staff: all)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from aif.web.deps import CurrentTenant, SessionDep, problems
from aif.web.leaderboard import LeaderboardFilter, LeaderboardPublic, leaderboard_rows, visible_to

router = APIRouter(prefix="/v1/leaderboard", tags=["leaderboard"], responses=problems(401))


@router.get("")
def get_leaderboard(principal: CurrentTenant, session: SessionDep,
                    filters: Annotated[LeaderboardFilter, Query()]) -> LeaderboardPublic:
    return LeaderboardPublic(data=leaderboard_rows(session, visible_to(principal), filters))
