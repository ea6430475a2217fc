"""``qcmb-fractal-server`` as an operator meets it: help, version, ``check``, and one line for each mistake.

Run in this process (``main(argv)``) against the package's snowflake database; the real multi-process
server is in test_plain_qcfractal.py and the README's whole operator path in tests/plugin/test_deploy_example.py.
"""

import secrets
import sys
from pathlib import Path

import psycopg2
import pytest
import qcfractal
import yaml
from qcfractal.config import read_configuration

import qcmb_fractal
from qcmb_fractal.plugin.server.cli import main
from qcmb_fractal.plugin.server.config import DEFAULT_MAX_CHILDREN, plugin_config
from qcmb_fractal.testing.fractal import PG_HOST, PG_PORT, PG_SUPERUSER, checkout_db_name


def run(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """``qcmb-fractal-server ARGV`` in this process; its exit code, stdout and stderr."""
    main_module = sys.modules["__main__"]
    monkeypatch.setattr(main_module, "__spec__", getattr(main_module, "__spec__", None))  # main() points it at cli
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # QCFractal's commands read sys.argv
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help to the terminal
    try:
        code = main(list(argv))
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def server_yaml(fractal, tmp_path) -> Path:
    """A server configuration on the package snowflake's database, as an operator would write it.

    It keeps the snowflake's service_frequency: QCFractal's commands open the database with their own
    configuration and re-register the service loop's job with its period (60 s by default), which would
    slow every later test of the package.
    """
    qcf_config = fractal[0]._qcf_config
    db = qcf_config.database
    config = {
        "base_folder": str(tmp_path),
        "service_frequency": qcf_config.service_frequency,
        "database": {k: getattr(db, k) for k in ("host", "port", "username", "password", "database_name", "own")},
        "api": {"secret_key": secrets.token_urlsafe(16), "jwt_secret_key": secrets.token_urlsafe(16)},
    }
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def database_exists(name: str) -> bool:
    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_SUPERUSER, dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def test_help_and_version_speak_of_the_plugin(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "--help")
    assert code == 0
    assert "qcmb-fractal's plugin loaded: the qcmb_manybody record type" in out
    assert "Verify the plugin: QCFractal version, hooks" in out  # check
    for command in ("init-config", "init-db", "start", "upgrade-db", "user", "backup"):  # QCFractal's, derived
        assert f"\n    {command} " in out
    assert "Upgrade QCFractal database; installs or upgrades the plugin's tables and views" in out

    code, out, _ = run(monkeypatch, capsys, "--version")
    assert code == 0
    assert out.strip() == (
        f"qcmb-fractal-server {qcmb_fractal.__version__} (qcmb-fractal's QCFractal plugin, record type "
        f"qcmb_manybody) on QCFractal {qcfractal.__version__}"
    )


def test_help_never_runs_a_command(monkeypatch, capsys, tmp_path):
    missing_db = checkout_db_name("qcmb_plugin_never_created")
    config = tmp_path / "server.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_folder": str(tmp_path),
                "database": {"host": PG_HOST, "port": PG_PORT, "username": "u", "password": "p", "own": False}
                | {"database_name": missing_db},
                "api": {"secret_key": "s", "jwt_secret_key": "j"},
            }
        )
    )
    for argv in (["init-db", "--config", str(config), "--help"], ["start", "-h", "--config", str(config)]):
        code, out, err = run(monkeypatch, capsys, *argv)
        assert code == 0, err
        assert out.startswith(f"usage: qcmb-fractal-server {argv[0]} ")
    code, out, _ = run(monkeypatch, capsys, "check", "--help")
    assert code == 0 and "Changes nothing" in out
    assert not database_exists(missing_db)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["serve"], "invalid choice: 'serve'"),
        (["start"], "give the QCFractal server configuration with --config PATH"),
        (["upgrade-db", "--config", "/nonexistent/server.yaml"], "/nonexistent/server.yaml does not exist"),
        (["check", "--config", "/nonexistent/server.yaml"], "/nonexistent/server.yaml does not exist"),
    ],
    ids=["no command", "unknown command", "no configuration", "missing configuration", "check, missing"],
)
def test_usage_mistakes_get_one_line_and_exit_2(monkeypatch, capsys, argv, message):
    code, out, err = run(monkeypatch, capsys, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in out + err


def test_operator_mistakes_on_a_server_get_one_line_and_exit_2(monkeypatch, capsys, server_yaml):
    code, out, err = run(
        monkeypatch, capsys, "user", "add", "qcmb_cli_alice", "--role", "read", "--password", "short", "--config",
        str(server_yaml),
    )  # fmt: skip
    assert code == 2
    assert err.startswith("qcmb-fractal-server: error: Password must contain at least 12 characters\n")
    assert "Traceback" not in out + err

    config = yaml.safe_load(server_yaml.read_text())
    server_yaml.write_text(yaml.safe_dump({**config, "qcmb_fractal": {"max_children": 10}}))
    code, out, err = run(monkeypatch, capsys, "check", "--config", str(server_yaml))
    assert code == 2
    assert "qcmb_fractal.max_children" in err and "Extra inputs are not permitted" in err
    assert "Traceback" not in out + err


def test_check_says_ready_and_init_config_writes_the_plugins_section(monkeypatch, capsys, server_yaml, tmp_path):
    code, out, err = run(monkeypatch, capsys, "check", "--config", str(server_yaml))
    assert code == 0, err
    assert out.startswith("qcmb-fractal plugin ready in postgresql://")
    assert f"max_children_per_record {DEFAULT_MAX_CHILDREN:,}" in out

    new = tmp_path / "new" / "server.yaml"
    new.parent.mkdir()
    code, out, err = run(monkeypatch, capsys, "init-config", "--config", str(new))
    assert code == 0, err
    text = new.read_text()
    assert "enable_security: true" in text  # QCFractal's own default, kept
    assert "\nqcmb_fractal:\n  # Most fragment calculations (singlepoint children) one qcmb_manybody record" in text
    assert plugin_config(read_configuration([str(new)])).max_children_per_record == DEFAULT_MAX_CHILDREN
    code, _, err = run(monkeypatch, capsys, "init-config", "--config", str(new))
    assert code == 2 and "File exists" in err  # QCFractal never overwrites a configuration
