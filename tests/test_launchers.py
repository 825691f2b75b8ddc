"""ipop3d under real launchers, each configured from the deployment files in this repository:
--listen, xinetd (xinetd.d/pop3, pop3s), systemd-socket-activate (the ExecStart of
systemd/ipop3d@.service, ipop3ds@.service), an inetd emulation (inetd.conf.sample lines,
argv[0] "sipop3d" meaning TLS) and stunnel (stunnel/ipop3d.conf). Clients: Python's poplib and
curl. Every message's bytes must equal the original (CRLF, metadata hidden).

Faults tried: dot-stuffing, >From lines, 8-bit bytes, a 3000-byte line, pre-existing metadata
headers, an empty body, DELE applied at QUIT through each launcher.
"""

import poplib
import re
import ssl
import subprocess
import time

import pytest

import launchers
from mailtest import mbox_of, poplib_fetch_all, presented, read_file, split_mbox, varied_messages


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def plain_launcher(kind, server_args, ipop3d, workdir):
    args = server_args()[1:]
    if kind == "listen":
        return launchers.listen_mode(server_args(), workdir)
    if kind == "xinetd":
        return launchers.xinetd("xinetd.d/pop3", ipop3d, args, workdir)
    if kind == "socket-activate":
        argv = launchers.substitute_binary(launchers.unit_exec_start("systemd/ipop3d@.service"), ipop3d)
        return launchers.socket_activate(argv + args)
    if kind == "inetd":
        server, argv = launchers.inetd_conf_entries()["pop3"]
        assert server == launchers.INSTALLED_BINARY
        return launchers.inetd_emulation(ipop3d, argv + args)
    raise ValueError(kind)


def tls_launcher(kind, server_args, ipop3d, cert, workdir):
    args = server_args("--cert", cert[0], "--key", cert[1])[1:]
    if kind == "listen":
        return launchers.listen_mode(server_args("--tls", "--cert", cert[0], "--key", cert[1]), workdir)
    if kind == "xinetd":
        return launchers.xinetd("xinetd.d/pop3s", ipop3d, args, workdir)
    if kind == "socket-activate":
        argv = launchers.substitute_binary(launchers.unit_exec_start("systemd/ipop3ds@.service"), ipop3d)
        return launchers.socket_activate(argv + args)
    if kind == "inetd":
        server, argv = launchers.inetd_conf_entries()["pop3s"]
        assert server == launchers.INSTALLED_BINARY
        return launchers.inetd_emulation(ipop3d, argv + args)
    if kind == "stunnel":
        return launchers.stunnel(ipop3d, server_args()[1:], cert[0], cert[1], workdir)
    raise ValueError(kind)


def check_mailbox_through(client, user, msgs, path):
    """Login, compare every message byte for byte, DELE 1, QUIT; spool keeps the rest."""
    assert client.getwelcome().startswith(b"+OK POP3 ")
    client.user(user.name)
    assert client.pass_(user.password) == b"+OK Mailbox open, %d messages" % len(msgs)
    got = poplib_fetch_all(client)
    want = [presented(m) for m in msgs]
    assert [size for size, _ in got] == [len(w) for w in want]
    for i, ((_, data), w) in enumerate(zip(got, want)):
        assert data == w, "message %d differs" % (i + 1)
    client.dele(1)
    assert client.quit() == b"+OK Sayonara"
    assert [presented(m) for m in split_mbox(read_file(path))] == want[1:]


@pytest.mark.parametrize("kind", ["listen", "xinetd", "socket-activate", "inetd"])
def test_poplib_plain(kind, users, mbox_for, server_args, ipop3d, tmp_path):
    """Loopback peer: USER/PASS allowed without TLS; bytes exact through each launcher."""
    alice = users["alice"]
    msgs = varied_messages()
    path = mbox_for(alice, mbox_of(msgs))
    with plain_launcher(kind, server_args, ipop3d, str(tmp_path)) as port:
        client = poplib.POP3("127.0.0.1", port, timeout=20)
        check_mailbox_through(client, alice, msgs, path)


@pytest.mark.parametrize("kind", ["listen", "xinetd", "socket-activate", "inetd", "stunnel"])
def test_poplib_implicit_tls(kind, users, mbox_for, server_args, ipop3d, cert, tmp_path):
    """POP3S (implicit TLS) through each launcher with poplib.POP3_SSL."""
    alice = users["alice"]
    msgs = varied_messages()
    path = mbox_for(alice, mbox_of(msgs))
    with tls_launcher(kind, server_args, ipop3d, cert, str(tmp_path)) as port:
        client = poplib.POP3_SSL("127.0.0.1", port, timeout=20, context=tls_context())
        check_mailbox_through(client, alice, msgs, path)


def curl(url, user, *extra):
    proc = subprocess.run(["curl", "-sS", "--max-time", "20", "-u", "%s:%s" % (user.name, user.password)]
                          + list(extra) + [url], capture_output=True, timeout=30)
    assert proc.returncode == 0, "curl %s failed: %s" % (url, proc.stderr.decode(errors="replace"))
    return proc.stdout


@pytest.mark.parametrize("kind", ["xinetd", "socket-activate"])
def test_curl_pop3(kind, users, mbox_for, server_args, ipop3d, tmp_path):
    """curl pop3://: LIST output and every RETR byte-exact."""
    alice = users["alice"]
    msgs = varied_messages()
    path = mbox_for(alice, mbox_of(msgs))
    want = [presented(m) for m in msgs]
    with plain_launcher(kind, server_args, ipop3d, str(tmp_path)) as port:
        listing = curl("pop3://127.0.0.1:%d/" % port, alice)
        assert listing == b"".join(b"%d %d\r\n" % (i + 1, len(w)) for i, w in enumerate(want))
        for i, w in enumerate(want):
            assert curl("pop3://127.0.0.1:%d/%d" % (port, i + 1), alice) == w, "message %d" % (i + 1)
        curl("pop3://127.0.0.1:%d/2" % port, alice, "-X", "DELE", "-I")
    left = [presented(m) for m in split_mbox(read_file(path))]
    assert left == [w for i, w in enumerate(want) if i != 1], "curl DELE 2 then QUIT"


@pytest.mark.parametrize("kind", ["xinetd", "socket-activate", "stunnel"])
def test_curl_pop3s(kind, users, mbox_for, server_args, ipop3d, cert, tmp_path):
    """curl -k pop3s:// (implicit TLS): every RETR byte-exact."""
    alice = users["alice"]
    msgs = varied_messages()
    mbox_for(alice, mbox_of(msgs))
    with tls_launcher(kind, server_args, ipop3d, cert, str(tmp_path)) as port:
        for i, m in enumerate(msgs):
            assert curl("pop3s://127.0.0.1:%d/%d" % (port, i + 1), alice, "-k") == presented(m)


def test_curl_stls(users, mbox_for, server_args, cert, tmp_path):
    """curl --ssl-reqd pop3:// upgrades with STLS and retrieves exact bytes."""
    alice = users["alice"]
    msgs = varied_messages()
    mbox_for(alice, mbox_of(msgs))
    with launchers.listen_mode(server_args("--cert", cert[0], "--key", cert[1]), str(tmp_path)) as port:
        got = curl("pop3://127.0.0.1:%d/3" % port, alice, "-k", "--ssl-reqd")
    assert got == presented(msgs[2])


def test_listen_max_children(users, mbox_for, server_args, tmp_path):
    """--max-children 1: a second connection waits (no greeting) until the first ends."""
    import socket
    alice = users["alice"]
    mbox_for(alice, mbox_of(varied_messages()))
    with launchers.listen_mode(server_args("--max-children", "1"), str(tmp_path)) as port:
        first = poplib.POP3("127.0.0.1", port, timeout=20)
        second = socket.create_connection(("127.0.0.1", port), timeout=1.5)
        try:
            second.recv(100)
            raise AssertionError("second connection greeted while the first is served")
        except socket.timeout:
            pass
        first.quit()
        second.settimeout(20)
        assert second.recv(100).startswith(b"+OK POP3 ")
        second.close()


def test_listen_ipv6_loopback_and_log_host(users, mbox_for, server_args, tmp_path):
    """--listen [::1]:PORT serves IPv6 loopback (plaintext allowed); the log names the peer."""
    import socket
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as e:
        pytest.skip("no IPv6 loopback here: %s" % e)
    alice = users["alice"]
    msgs = varied_messages()
    mbox_for(alice, mbox_of(msgs))
    port = launchers.free_port()
    errpath = tmp_path / "v6.err"
    with open(errpath, "wb") as err:
        proc = subprocess.Popen(server_args("--listen", "[::1]:%d" % port), stderr=err,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if b"listening on" in errpath.read_bytes():
                break
            assert proc.poll() is None, errpath.read_bytes()
            time.sleep(0.05)
        client = poplib.POP3("::1", port, timeout=20)
        assert client.sock.family == socket.AF_INET6
        client.user(alice.name)
        assert client.pass_(alice.password) == b"+OK Mailbox open, %d messages" % len(msgs)
        assert [d for _, d in poplib_fetch_all(client)] == [presented(m) for m in msgs]
        client.quit()
        time.sleep(0.3)
    finally:
        launchers.stop(proc)
    log = errpath.read_text(errors="replace")
    assert re.search(r"Login user=%s host=(\S+ )?\[::1\] nmsgs=6/6" % alice.name, log), log
    assert re.search(r"Logout user=%s host=(\S+ )?\[::1\]" % alice.name, log), log


def test_listen_logs_ipv4_peer(users, mbox_for, server_args, tmp_path):
    alice = users["alice"]
    mbox_for(alice, mbox_of(varied_messages()))
    with launchers.listen_mode(server_args(), str(tmp_path)) as port:
        client = poplib.POP3("127.0.0.1", port, timeout=20)
        client.user(alice.name)
        client.pass_(alice.password)
        client.dele(2)
        client.quit()
        time.sleep(0.3)
        log = open(tmp_path / ("listen-%d.err" % port), errors="replace").read()
    u = alice.name
    assert re.search(r"Login user=%s host=localhost \[127\.0\.0\.1\] nmsgs=6/6" % u, log), log
    assert re.search(r"Update user=%s host=localhost \[127\.0\.0\.1\] nmsgs=5 ndele=1 nseen=0" % u, log), log
    assert re.search(r"Logout user=%s host=localhost \[127\.0\.0\.1\]" % u, log), log
