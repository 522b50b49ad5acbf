import plistlib

from stratavore import service

from .conftest import assert_clean_error


def test_systemd_unit_install_and_uninstall(sv, home, monkeypatch):
    env = {"XDG_CONFIG_HOME": str(home / "xdg")}
    out = sv("daemon", "install", check=True, env=env).stdout
    unit = home / "xdg" / "systemd" / "user" / "stratavore.service"
    assert f"Wrote {unit}" in out and "systemctl --user" in out
    text = unit.read_text()
    assert "daemon run" in text.splitlines()[text.splitlines().index("[Service]") + 2]
    assert "KillMode=process" in text  # stopping the service must not kill the runners' keepers
    assert f"Environment=STRATAVORE_HOME={home}" in text
    assert sv("daemon", "install", "--print", check=True, env=env).stdout == text
    assert f"Removed {unit}" in sv("daemon", "uninstall", check=True, env=env).stdout
    assert not unit.exists()
    assert_clean_error(sv("daemon", "uninstall", env=env), 9, "no service unit")


def test_launchd_agent(monkeypatch, home):
    monkeypatch.setenv("HOME", str(home))
    data = plistlib.loads(service.unit_text("darwin"))
    assert data["Label"] == service.LAUNCHD_LABEL
    assert data["ProgramArguments"][-2:] == ["daemon", "run"]
    assert data["AbandonProcessGroup"] is True
    assert data["EnvironmentVariables"]["STRATAVORE_HOME"] == str(home)
    path = service.install("darwin")
    assert path == home / "Library" / "LaunchAgents" / "dev.stratavore.daemon.plist" and path.exists()
