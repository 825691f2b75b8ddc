"""fetchmail retrieving every message from ipop3d and handing each to an MDA command that
writes it to a file; the files must equal the originals (fetchmail strips CR for MDAs, so the
comparison is with the LF form, metadata headers hidden). keep leaves the spool intact;
no keep (fetchmail's default) deletes what it fetched.

Faults tried: dot-stuffed lines, >From, 8-bit, a 3000-byte line, metadata headers already in
the spool, an empty body; plain POP3 over loopback and POP3S through xinetd.
"""

import os
import subprocess

import pytest

import launchers
from mailtest import mbox_of, presented, read_file, split_mbox, varied_messages


def run_fetchmail(port, user, outdir, home, keep, ssl=False):
    rc = os.path.join(home, "fetchmailrc")
    opts = "fetchall " + ("keep" if keep else "no keep")
    ssl_opts = "ssl no sslcertck" if ssl else "sslproto ''"
    with open(rc, "w") as f:
        f.write(
            'set no syslog\n'
            'poll 127.0.0.1 with proto POP3 port %d timeout 20\n'
            '  user "%s" there with password "%s" is root here\n'
            '  %s %s no rewrite\n'
            '  mda "cat > %s/msg.$$"\n' % (port, user.name, user.password, opts,
                                            ssl_opts,
                                            outdir))
    os.chmod(rc, 0o600)
    env = dict(os.environ, HOME=home, FETCHMAILHOME=home)
    proc = subprocess.run(["fetchmail", "--invisible", "-f", rc, "-i", os.path.join(home, "ids"),
                           "--nodetach", "-v"], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, "fetchmail exit %d: %s" % (
        proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")[-3000:])
    files = sorted(os.listdir(outdir))
    return [read_file(os.path.join(outdir, name)) for name in files]


def lf_form(raw):
    return presented(raw).replace(b"\r\n", b"\n")


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "nokeep"])
def test_fetchmail_plain(keep, users, mbox_for, server_args, tmp_path):
    alice = users["alice"]
    msgs = varied_messages()
    path = mbox_for(alice, mbox_of(msgs))
    out = tmp_path / "out"
    out.mkdir()
    with launchers.listen_mode(server_args(), str(tmp_path)) as port:
        got = run_fetchmail(port, alice, str(out), str(tmp_path), keep)
    assert sorted(got) == sorted(lf_form(m) for m in msgs)
    left = split_mbox(read_file(path))
    if keep:
        assert [presented(m) for m in left] == [presented(m) for m in msgs]
    else:
        assert left == [], "fetchmail deleted every message it fetched"


def test_fetchmail_pop3s_xinetd(users, mbox_for, server_args, ipop3d, cert, tmp_path):
    alice = users["alice"]
    msgs = varied_messages()
    path = mbox_for(alice, mbox_of(msgs))
    out = tmp_path / "out"
    out.mkdir()
    args = server_args("--cert", cert[0], "--key", cert[1])[1:]
    with launchers.xinetd("xinetd.d/pop3s", ipop3d, args, str(tmp_path)) as port:
        got = run_fetchmail(port, alice, str(out), str(tmp_path), keep=False, ssl=True)
    assert sorted(got) == sorted(lf_form(m) for m in msgs)
    assert split_mbox(read_file(path)) == []
