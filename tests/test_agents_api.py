"""People managed through the API: an admin adds an agent, changes their skills and
role, and removes them; their sign-in follows each change at once. In-process
(tests/controlplane.py): API answers only, no media."""

from __future__ import annotations

import pytest

from engine.client import ApiError
from tests.controlplane import ControlPlane


@pytest.mark.parametrize("control_plane", ["sqlite", "postgresql"], indirect=True)
async def test_admin_adds_changes_and_removes_an_agent(control_plane: ControlPlane) -> None:
    engine = control_plane
    control = await engine.new_key("crm", "control")
    async with (
        engine.client(api_key=engine.api_key) as admin,
        engine.client(api_key=control) as crm,
        engine.client() as zoe,
    ):
        made = await admin.add_user(
            "zoe", "zoe-secret-1", skills=["billing", " retention ", ""], display_name="Zoe Ng"
        )
        assert (made.role, made.skills, made.display_name) == (
            "agent", ["billing", "retention"], "Zoe Ng",
        )  # fmt: skip
        refusals = []
        for attempt in (
            crm.add_user("eve", "eve-secret-1"),  # control is not admin
            admin.add_user("zoe", "other-secret-1"),  # taken
            admin.add_user("bad name!", "whatever-1"),
            admin.add_user("short", "1234"),
            admin.change_user("nobody", skills=[]),
        ):
            with pytest.raises(ApiError) as refused:
                await attempt
            refusals.append(refused.value.status)
        assert refusals == [403, 409, 422, 422, 404]

        await zoe.login("zoe", "zoe-secret-1")
        assert (await zoe.set_presence("login")).presence == "away"
        await admin.change_user("zoe", skills=["technical_support"])
        listed = {a.username: a for a in await admin.agents()}
        assert listed["zoe"].skills == ["technical_support"]
        assert listed["zoe"].presence == "away"

        await admin.change_user("zoe", role="supervisor")  # her token says agent: no matter
        with pytest.raises(ApiError) as not_agent:
            await zoe.set_presence("available")
        assert not_agent.value.status == 403
        assert "zoe" not in {a.username for a in await admin.agents()}

        await admin.change_user("zoe", role="agent", password="new-secret-2")
        async with engine.client() as old_password:
            with pytest.raises(ApiError):
                await old_password.login("zoe", "zoe-secret-1")
        await admin.remove_user("zoe")
        with pytest.raises(ApiError) as gone:
            await zoe.me()
        assert gone.value.status == 401 and "no longer exists" in gone.value.detail
        with pytest.raises(ApiError) as twice:
            await admin.remove_user("zoe")
        assert twice.value.status == 404
