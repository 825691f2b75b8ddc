"""imapd's deployment files: systemd units pass `systemd-analyze verify` and pair up; xinetd
and inetd entries name the binary and TLS mode; stunnel/imapd.conf really serves IMAPS (with
imaplib through it); /etc/pam.d/imap is the service imapd consults (a deny-all service
refuses the right password); `make install` would install imapd and every example.

Faults tried: an unknown unit key, a wrong port, implicit TLS missing from imaps entries, a
stunnel file that does not start imapd, PAM service ignored, examples missing from install.
"""

import imaplib
import os
import re
import ssl
import subprocess

import pytest

import launchers
from mailtest import REPO, free_port, make_message, mbox_of, stop, wait_listening_probe_free

INSTALLED = "/usr/local/sbin/imapd"
UNITS = [("imapd.socket", "imapd@.service", 143, []),
         ("imapds.socket", "imapds@.service", 993, ["--tls"])]


@pytest.mark.parametrize("socket_unit,service_unit,port,args", UNITS)
def test_systemd_units(socket_unit, service_unit, port, args, imapd, tmp_path):
    for name in (socket_unit, service_unit):
        text = launchers.repo_file("systemd/" + name).replace(INSTALLED, imapd)
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(tmp_path / socket_unit), str(tmp_path / service_unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Unknown" not in proc.stderr and "ignoring" not in proc.stderr, proc.stderr
    assert "Accept=yes" in launchers.repo_file("systemd/" + socket_unit)
    assert launchers.unit_listen_port("systemd/" + socket_unit) == port
    service = launchers.repo_file("systemd/" + service_unit)
    assert "StandardInput=socket" in service and "StandardOutput=socket" in service
    assert launchers.unit_exec_start("systemd/" + service_unit) == [INSTALLED] + args


def test_xinetd_and_inetd_entries():
    for service, args in (("imap", []), ("imaps", ["--tls"])):
        text = launchers.repo_file("xinetd.d/" + service)
        assert "service %s" % service in text and "server\t\t= %s" % INSTALLED in text
        assert "wait\t\t= no" in text and "user\t\t= root" in text
        conf = launchers.xinetd_config("xinetd.d/" + service, "/bin/true", ["--x"], 1234, "/dev/null")
        assert "port = 1234" in conf
        assert re.search(r"server_args = %s ?--x" % " ".join(args), conf), conf
    entries = launchers.inetd_conf_entries()
    assert entries["imap"] == (INSTALLED, ["imapd"])
    assert entries["imaps"] == (INSTALLED, ["simapd"])


def stunnel_config(binary, extra_args, port, cert, key, workdir):
    out = []
    for line in launchers.repo_file("stunnel/imapd.conf").splitlines():
        m = re.match(r"^\s*(\w+)\s*=\s*(.*)$", line)
        name = m.group(1) if m else None
        values = {"pid": os.path.join(workdir, "stunnel-%d.pid" % port), "foreground": "yes",
                  "accept": "127.0.0.1:%d" % port, "cert": cert, "key": key}
        if name in values:
            line = "%s = %s" % (name, values[name])
        elif name == "exec":
            assert m.group(2) == INSTALLED
            line = "exec = " + binary
        elif name == "execArgs":
            line = "execArgs = %s %s" % (m.group(2), " ".join(extra_args))
        out.append(line)
    return "\n".join(out) + "\n"


def test_stunnel_imaps(imap_users, mbox_for, imapd, imap_args, cert, tmp_path):
    alice = imap_users["alice"]
    mbox_for(alice, mbox_of([make_message(1), make_message(2)]))
    port = free_port()
    conf = tmp_path / "stunnel.conf"
    conf.write_text(stunnel_config(imapd, imap_args()[1:], port, cert[0], cert[1], str(tmp_path)))
    proc = subprocess.Popen(["stunnel4", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening_probe_free(port, proc=proc)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        M = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx)
        assert "LOGINDISABLED" not in M.capabilities, "execArgs must carry --allow-plaintext"
        assert M.login(alice.name, alice.password)[0] == "OK"
        assert M.select("INBOX") == ("OK", [b"2"])
        assert M.logout()[0] == "BYE"
    finally:
        stop(proc)


def test_pam_service_is_consulted(imap_users, mbox_for, imap_pipe):
    alice = imap_users["alice"]
    mbox_for(alice, mbox_of([make_message(1)]))
    path = "/etc/pam.d/mailsuite-imap-deny"
    with open(path, "w") as f:
        f.write("auth required pam_deny.so\naccount required pam_deny.so\n")
    try:
        s = imap_pipe("--allow-plaintext", "--pam-service", "mailsuite-imap-deny")
        s.greeting()
        lines, tagged = s.cmd('LOGIN %s "%s"' % (alice.name, alice.password))
        assert tagged.startswith(b"NO"), tagged
        s = imap_pipe("--allow-plaintext")
        s.greeting()
        s.login(alice.name, alice.password)
    finally:
        os.unlink(path)


def test_make_install_includes_imapd():
    out = subprocess.run(["make", "-n", "install", "DESTDIR=/nonexistent-destdir"], cwd=REPO,
                         capture_output=True, text=True, timeout=60).stdout
    assert "install -m 0755 target/release/imapd /nonexistent-destdir/usr/local/sbin/imapd" in out
    examples = re.search(r"for f in ([^;]*);", out).group(1).split()
    for f in ("xinetd.d/imap", "xinetd.d/imaps", "systemd/imapd.socket", "systemd/imapd@.service",
              "systemd/imapds.socket", "systemd/imapds@.service", "stunnel/imapd.conf",
              "pam.d/imap", "inetd.conf.sample"):
        assert f in examples, f
        assert os.path.exists(os.path.join(REPO, f)), f
