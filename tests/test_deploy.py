"""The deployment files themselves: systemd units pass `systemd-analyze verify` with no
warning and pair up (socket Accept=yes with a template service on stdin/stdout); xinetd and
inetd files name the binary and options the launcher tests run; the PAM service file is the
one ipop3d consults (a deny-all service refuses a right password); `make install` lays out
the binary, the setgid mlock helper and the examples.

Faults tried: an unknown unit key, an ExecStart that is not absolute, a mismatched port, a
PAM service that denies, wrong install modes/ownership.
"""

import grp
import os
import shutil
import subprocess

import pytest

import launchers
from mailtest import REPO, make_message, mbox_of

UNITS = [("ipop3d.socket", "ipop3d@.service", 110, []),
         ("ipop3ds.socket", "ipop3ds@.service", 995, ["--tls"])]


@pytest.mark.parametrize("socket_unit,service_unit,port,args", UNITS)
def test_systemd_units(socket_unit, service_unit, port, args, ipop3d, tmp_path):
    for name in (socket_unit, service_unit):
        text = launchers.repo_file("systemd/" + name).replace(launchers.INSTALLED_BINARY, ipop3d)
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(tmp_path / socket_unit), str(tmp_path / service_unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Unknown" not in proc.stderr and "ignoring" not in proc.stderr, proc.stderr
    socket_text = launchers.repo_file("systemd/" + socket_unit)
    assert "Accept=yes" in socket_text
    assert launchers.unit_listen_port("systemd/" + socket_unit) == port
    service_text = launchers.repo_file("systemd/" + service_unit)
    assert "StandardInput=socket" in service_text and "StandardOutput=socket" in service_text
    assert launchers.unit_exec_start("systemd/" + service_unit) == [launchers.INSTALLED_BINARY] + args


def test_xinetd_and_inetd_files():
    for service, args in (("pop3", []), ("pop3s", ["--tls"])):
        text = launchers.repo_file("xinetd.d/" + service)
        assert "service %s" % service in text
        conf = launchers.xinetd_config("xinetd.d/" + service, "/bin/true", ["--x"], 1234, "/dev/null")
        assert "server = /bin/true" in conf and "port = 1234" in conf
        assert ("server_args = %s --x" % " ".join(args)).replace("=  ", "= ") in conf
        assert "wait\t\t= no" in text and "user\t\t= root" in text
    entries = launchers.inetd_conf_entries()
    assert entries["pop3"] == (launchers.INSTALLED_BINARY, ["ipop3d"])
    assert entries["pop3s"][1][0].startswith("s"), "pop3s runs as sipop3d (implicit TLS)"


@pytest.fixture
def deny_service():
    path = "/etc/pam.d/mailsuite-test-deny-%d" % os.getpid()
    with open(path, "w") as f:
        f.write("auth required pam_deny.so\naccount required pam_deny.so\n")
    yield os.path.basename(path)
    os.unlink(path)


def test_pam_service_is_consulted(users, mbox_for, pipe_session, deny_service):
    """With --pam-service naming a deny-all service, the right password fails; with the
    default (pam.d/pop installed by the fixture) it works."""
    alice = users["alice"]
    mbox_for(alice, mbox_of([make_message(1)]))
    s = pipe_session("--allow-plaintext", "--pam-service", deny_service)
    s.greeting()
    s.ok("USER " + alice.name)
    assert s.cmd("PASS " + alice.password) == b"-ERR [AUTH] Bad login"
    s.cmd("QUIT")
    s = pipe_session("--allow-plaintext")
    s.greeting()
    assert s.login(alice.name, alice.password) == b"+OK Mailbox open, 1 messages"
    s.quit()


def test_make_install(ipop3d_built, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("install sets root:mail ownership")
    if not os.path.exists(os.path.join(os.path.dirname(ipop3d_built), "mlock")):
        pytest.skip("target/release/mlock is not built")
    dest = tmp_path / "root"
    proc = subprocess.run(["make", "-C", REPO, "install", "DESTDIR=%s" % dest, "PREFIX=/usr"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    binary = dest / "usr/sbin/ipop3d"
    assert os.stat(binary).st_mode & 0o7777 == 0o755
    helper = os.stat(dest / "usr/libexec/mailsuite/mlock")
    assert helper.st_mode & 0o7777 == 0o2755
    assert (helper.st_uid, helper.st_gid) == (0, grp.getgrnam("mail").gr_gid)
    for rel in ("xinetd.d/pop3", "systemd/ipop3d@.service", "pam.d/pop", "stunnel/ipop3d.conf",
                "inetd.conf.sample"):
        assert (dest / "usr/share/doc/mailsuite/examples" / rel).read_bytes() == \
            open(os.path.join(REPO, rel), "rb").read()
    shutil.rmtree(dest)
