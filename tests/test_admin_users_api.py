"""``GET /api/v1/users``: the one read the admin page (/admin) needed that the API
lacked. ``/agents`` lists agents only, so an admin could not see, to change or remove,
the supervisors and admins they had added. In-process (tests/controlplane.py)."""

from __future__ import annotations

from tests.controlplane import ControlPlane


async def test_users_lists_everyone_with_their_role_to_admins_only(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    await cp.add_user("zoe", "pw-zoe-123", "--skills", "billing")
    await cp.add_user("sue", "pw-sue-123", "--role", "supervisor")
    await cp.add_user("ada", "pw-ada-123", "--role", "admin", "--name", "Ada L")
    r = await cp.http().get("/api/v1/users")
    assert r.status_code == 200, r.text
    assert [(u["username"], u["role"], u["display_name"], u["skills"]) for u in r.json()] == [
        ("ada", "admin", "Ada L", []),
        ("sue", "supervisor", "sue", []),
        ("zoe", "agent", "zoe", ["billing"]),
    ]
    assert set(r.json()[0]) == {"id", "username", "display_name", "role", "skills"}  # no hash
    ada = await cp.agent("ada", "pw-ada-123")
    assert [u["username"] for u in (await ada.get("/api/v1/users")).json()] == ["ada", "sue", "zoe"]
    for who in ("sue", "zoe"):  # read and control, not admin
        signed_in = await cp.agent(who, f"pw-{who}-123")
        r = await signed_in.get("/api/v1/users")
        assert r.status_code == 403 and "admin scope" in r.json()["detail"], r.text
    assert (await cp.anonymous().get("/api/v1/users")).status_code == 401


async def test_the_last_admin_cannot_be_removed_or_made_an_agent(
    control_plane: ControlPlane,
) -> None:
    """The admin page offered an admin Delete and a role change on every row: one click
    left nobody who could sign in to manage people."""
    cp = control_plane
    await cp.add_user("ada", "pw-ada-123", "--role", "admin")
    http = cp.http()
    r = await http.delete("/api/v1/agents/ada")
    assert r.status_code == 409 and "last admin" in r.json()["detail"], r.text
    r = await http.patch("/api/v1/agents/ada", json={"role": "agent"})
    assert r.status_code == 409 and "last admin" in r.json()["detail"], r.text
    assert (await http.patch("/api/v1/agents/ada", json={"role": "admin"})).status_code == 200
    await cp.add_user("bea", "pw-bea-123", "--role", "admin")  # with a second one, it can
    assert (await http.patch("/api/v1/agents/ada", json={"role": "supervisor"})).status_code == 200
    r = await http.delete("/api/v1/agents/bea")
    assert r.status_code == 409, r.text  # bea is now the only admin
    assert (await http.delete("/api/v1/agents/ada")).status_code == 204
