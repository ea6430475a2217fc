"""The plugin's routes on a server with security enabled: who can submit, who can read.

QCFractal's own roles decide (``check_permissions`` on every route): only a submitter may add; read-only
users and submitters may read; anonymous clients may read only where the server allows unauthenticated
reads (QCFractal's default, off on a private server). Both kinds of server are tested. No compute
manager: permissions are decided before any calculation exists.
"""

import pytest
from qcportal import PortalClient

from qcmb_fractal.plugin.client import (
    QCMBPermissionError,
    add_qcmb_manybodys,
    get_qcmb_manybodys,
    qcmb_level_status,
    query_qcmb_manybodys,
    simple_specification,
)
from qcmb_fractal.testing.fractal import drop_database, fresh_database, portal_molecule
from qcmb_fractal.testing.molecules import water_cluster

DB_NAME = "qcmb_srvfault_plugin_security"
USERS = {
    "reader": ("qcmb_sec_reader", "read", "reader-password-123"),
    "submitter": ("qcmb_sec_submit", "submit", "submit-password-123"),
}
ADMIN = ("qcmb_sec_admin", "admin", "admin-password-123")


@pytest.fixture(scope="module", params=[True, False], ids=["public-read", "private"])
def secured(request):
    from qcfractal.db_socket import SQLAlchemySocket
    from qcfractal.snowflake import FractalSnowflake
    from qcportal.auth import UserInfo

    from qcmb_fractal.plugin.server.hooks import activate, check_startup

    activate()
    public = request.param
    cfg = fresh_database(DB_NAME, plugin=True)
    snowflake = FractalSnowflake(
        start=False,
        compute_workers=0,
        database_config=cfg,
        extra_config={"enable_security": True, "allow_unauthenticated_read": public, "loglevel": "WARNING"},
    )
    socket = SQLAlchemySocket(snowflake._qcf_config)
    for user, role, password in [*USERS.values(), ADMIN]:
        socket.users.add(UserInfo(username=user, role=role, enabled=True), password)
    socket.engine.dispose()
    check_startup(cfg)
    snowflake.start()
    try:
        yield snowflake.get_uri(), public
    finally:
        snowflake.stop()
        drop_database(DB_NAME)


def login(uri: str, who: str | None) -> PortalClient:
    if who is None:
        return PortalClient(uri, show_motd=False)
    user, _, password = USERS[who]
    return PortalClient(uri, user, password, show_motd=False)


SPEC = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2)


@pytest.mark.parametrize("who", [None, "reader"])
def test_anonymous_and_read_only_users_cannot_submit(secured, who):
    from qcportal.client_base import PortalRequestError

    uri, public = secured
    if who is None and not public:  # a private server refuses at login, in QCPortal's own words
        with pytest.raises(PortalRequestError, match="requires login"):
            login(uri, who)
        return
    with pytest.raises(QCMBPermissionError) as refused:
        add_qcmb_manybodys(login(uri, who), portal_molecule(water_cluster(2, shift=7.0)), SPEC)
    text, role = str(refused.value), USERS[who][1] if who else None
    assert f"the server refused this request (HTTP 403): Forbidden: Role '{role}' is not authorized" in text
    assert "Log in as a user whose role allows it" in text and "Traceback" not in text


def test_submitter_submits_and_reading_follows_the_server_rules(secured):
    uri, public = secured
    _, (rid,) = add_qcmb_manybodys(login(uri, "submitter"), portal_molecule(water_cluster(2, shift=9.0)), SPEC)
    for who in ("reader", "submitter"):
        client = login(uri, who)
        assert get_qcmb_manybodys(client, rid).id == rid
        assert [r.id for r in query_qcmb_manybodys(client, record_id=rid)] == [rid]
        assert isinstance(qcmb_level_status(client, rid), list)
    if public:
        anonymous = login(uri, None)
        assert get_qcmb_manybodys(anonymous, rid).id == rid
        assert isinstance(qcmb_level_status(anonymous, rid), list)
    else:
        with pytest.raises(Exception) as refused:  # QCPortal refuses at login: the server needs a user
            qcmb_level_status(login(uri, None), rid)
        assert "requires login" in str(refused.value) and "Traceback" not in str(refused.value)


def test_only_users_who_may_modify_datasets_build_and_submit_qcmb_manybody_datasets(secured):
    from qcportal.client_base import PortalRequestError
    from qcportal.record_models import RecordStatusEnum

    uri, _ = secured
    mine = login(uri, "submitter").add_dataset("qcmb_manybody", "secured campaign")
    mine.add_specification("gfn2", SPEC)
    mine.add_entry("dimer", portal_molecule(water_cluster(2, shift=11.0)))
    theirs = login(uri, "reader").get_dataset("qcmb_manybody", "secured campaign")
    assert theirs.entry_names == ["dimer"] and theirs.specification_names == ["gfn2"]
    trimer = portal_molecule(water_cluster(3, shift=11.0))
    for refused in (
        lambda: theirs.add_entry("trimer", trimer),
        lambda: theirs.add_specification("other", SPEC),
        lambda: theirs.submit(),
        lambda: theirs.delete_entries("dimer"),
    ):
        with pytest.raises(PortalRequestError, match="Role 'read' is not authorized"):
            refused()
    assert mine.submit().n_inserted == 1
    assert theirs.status() == {"gfn2": {RecordStatusEnum.waiting: 1}}
