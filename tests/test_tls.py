"""STLS and implicit TLS: openssl s_client (-starttls pop3 and -connect), poplib's stls() and
POP3_SSL, and a STLS upgrade on a unix socketpair (not loopback, so plaintext is refused
before STLS and accepted after it).

Faults tried: STLS offered without a certificate, STLS twice, STLS after login, plaintext
login before STLS on a non-loopback transport, CAPA after STLS still offering STLS.
"""

import poplib
import socket
import ssl
import subprocess

import launchers
from mailtest import make_message, mbox_of, poplib_fetch_all, presented, varied_messages


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def s_client(args, commands):
    proc = subprocess.run(["openssl", "s_client", "-quiet", "-crlf"] + args,
                          input="".join(c + "\n" for c in commands).encode(),
                          capture_output=True, timeout=60)
    return proc.stdout.decode(errors="replace").replace("\r\n", "\n").splitlines()


def test_openssl_starttls_pop3(users, mbox_for, server_args, cert, tmp_path):
    alice = users["alice"]
    msgs = [make_message(1), make_message(2)]
    mbox_for(alice, mbox_of(msgs))
    with launchers.listen_mode(server_args("--cert", cert[0], "--key", cert[1]), str(tmp_path)) as port:
        out = s_client(["-starttls", "pop3", "-connect", "127.0.0.1:%d" % port],
                       ["CAPA", "USER " + alice.name, "PASS " + alice.password, "STAT", "QUIT"])
    assert "STLS" not in out, "STLS still offered after the upgrade: %r" % out
    assert "+OK Mailbox open, 2 messages" in out, out
    assert "+OK 2 %d" % sum(len(presented(m)) for m in msgs) in out, out
    assert out[-1] == "+OK Sayonara", out


def test_openssl_implicit_tls(users, mbox_for, server_args, cert, tmp_path):
    alice = users["alice"]
    mbox_for(alice, mbox_of([make_message(1)]))
    argv = server_args("--tls", "--cert", cert[0], "--key", cert[1])
    with launchers.listen_mode(argv, str(tmp_path)) as port:
        out = s_client(["-connect", "127.0.0.1:%d" % port],
                       ["CAPA", "USER " + alice.name, "PASS " + alice.password, "RETR 1", "QUIT"])
    assert out[0].startswith("+OK POP3 "), out
    assert "STLS" not in out, "STLS offered inside implicit TLS"
    assert "+OK Mailbox open, 1 messages" in out, out
    assert "Message-ID: <t-1@test>" in out
    assert out[-1] == "+OK Sayonara", out


def test_poplib_stls_and_pop3_ssl(users, mbox_for, server_args, cert, tmp_path):
    """poplib stls() on a --listen server and POP3_SSL on an argv[0]=sipop3d server."""
    alice = users["alice"]
    msgs = varied_messages()
    mbox_for(alice, mbox_of(msgs))
    want = [(len(presented(m)), presented(m)) for m in msgs]
    with launchers.listen_mode(server_args("--cert", cert[0], "--key", cert[1]), str(tmp_path)) as port:
        client = poplib.POP3("127.0.0.1", port, timeout=20)
        assert "STLS" in client.capa()
        assert client.stls(context=tls_context()).startswith(b"+OK")
        assert "STLS" not in client.capa()
        client.user(alice.name)
        client.pass_(alice.password)
        try:
            client._shortcmd("STLS")
            raise AssertionError("second STLS accepted")
        except poplib.error_proto:
            pass
        assert poplib_fetch_all(client) == want
        client.quit()
    server, argv = launchers.inetd_conf_entries()["pop3s"]
    args = server_args("--cert", cert[0], "--key", cert[1])
    with launchers.inetd_emulation(args[0], argv + args[1:]) as port:
        client = poplib.POP3_SSL("127.0.0.1", port, timeout=20, context=tls_context())
        client.user(alice.name)
        client.pass_(alice.password)
        assert poplib_fetch_all(client) == want
        client.quit()


def test_stls_on_non_loopback_transport(users, mbox_for, server_args, cert):
    """On a socketpair (not loopback, not TLS) without --allow-plaintext: CAPA lacks USER and
    offers STLS; USER is refused; after STLS USER/PASS work and CAPA offers USER, not STLS."""
    alice = users["alice"]
    mbox_for(alice, mbox_of([make_message(1)]))
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(server_args("--cert", cert[0], "--key", cert[1]),
                            stdin=theirs, stdout=theirs, stderr=subprocess.DEVNULL)
    theirs.close()
    ours.settimeout(20)
    try:
        reader = ours.makefile("rb")

        def cmd(line, sock=ours, rd=None):
            sock.sendall(line.encode() + b"\r\n")
            return (rd or reader).readline().rstrip(b"\r\n")

        def multiline(rd):
            lines = []
            while True:
                line = rd.readline().rstrip(b"\r\n")
                if line == b".":
                    return lines
                lines.append(line)

        assert reader.readline().startswith(b"+OK POP3 ")
        assert cmd("CAPA") == b"+OK Capability list follows"
        caps = multiline(reader)
        assert b"STLS" in caps and b"USER" not in caps, caps
        assert cmd("USER " + alice.name).startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
        assert cmd("STLS").startswith(b"+OK")
        reader.close()
        tls = tls_context().wrap_socket(ours, server_hostname="localhost")
        rd = tls.makefile("rb")
        assert cmd("CAPA", tls, rd) == b"+OK Capability list follows"
        caps = multiline(rd)
        assert b"USER" in caps and b"STLS" not in caps, caps
        assert cmd("USER " + alice.name, tls, rd).startswith(b"+OK")
        assert cmd("PASS " + alice.password, tls, rd) == b"+OK Mailbox open, 1 messages"
        assert cmd("STLS", tls, rd).startswith(b"-ERR")
        assert cmd("QUIT", tls, rd) == b"+OK Sayonara"
    finally:
        ours.close()
        proc.wait(timeout=10)


def test_no_stls_without_certificate(users, mbox_for, pipe_session):
    s = pipe_session("--allow-plaintext", "--cert", "/nonexistent/cert.pem", "--key", "/nonexistent/key.pem")
    s.greeting()
    s.send("CAPA")
    s.readline()
    assert b"STLS" not in s.multiline()
    assert s.cmd("STLS").startswith(b"-ERR")
    s.cmd("QUIT")
