"""Fixtures for the ipop3d end-to-end suite: the binary, real system users (useradd + chpasswd),
the PAM service file, a self-signed certificate, world-traversable temp dirs and spools, and a
factory for ipop3d command lines.

Everything created here is removed again: users (userdel -r), /etc/pam.d/pop (restored),
temp dirs. Tests that need root skip with a reason when not run as root; CI runs as root.
"""

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mailtest import REPO, FIXTURES, PipeSession, read_file, server_argv, write_file  # noqa: E402
# imapd's fixtures (imapd, pam_imap, imap_users, imap_args, imap_pipe), defined in imaptest.py
from imaptest import imapd_built, imapd, pam_imap, imap_users, imap_args, imap_pipe  # noqa: E402,F401



def is_root():
    return os.geteuid() == 0


def need_root():
    if not is_root():
        pytest.skip("needs root: creates system users, installs /etc/pam.d/pop, drops privileges")


@dataclass
class User:
    name: str
    password: str
    uid: int
    gid: int
    home: str
    groups: tuple


# ---------------------------------------------------------------- binaries


@pytest.fixture(scope="session")
def base_tmp():
    """A world-traversable temp root (test users must reach spools and binaries under it)."""
    path = tempfile.mkdtemp(prefix="ipop3d-tests-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ipop3d_built():
    """The path of the release binary (env IPOP3D), built with cargo if it is missing."""
    path = os.environ.get("IPOP3D") or os.path.join(REPO, "target", "release", "ipop3d")
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=REPO, check=True)
    assert os.access(path, os.X_OK), "no ipop3d binary at %s" % path
    return path


@pytest.fixture(scope="session")
def ipop3d(ipop3d_built, base_tmp):
    """A copy of ipop3d in a world-readable directory, so that test users can run it too."""
    bindir = os.path.join(base_tmp, "bin")
    os.makedirs(bindir, mode=0o755, exist_ok=True)
    dest = os.path.join(bindir, "ipop3d")
    shutil.copy2(ipop3d_built, dest)
    os.chmod(dest, 0o755)
    return dest


@pytest.fixture(scope="session")
def mlock_helper(ipop3d_built, base_tmp):
    """target/release/mlock installed root:mail 2755 in a temp dir, or None if not built."""
    src = os.path.join(os.path.dirname(ipop3d_built), "mlock")
    if not os.path.exists(src) or not is_root():
        return None
    dest = os.path.join(base_tmp, "bin", "mlock")
    os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
    shutil.copy2(src, dest)
    os.chown(dest, 0, grp.getgrnam("mail").gr_gid)
    os.chmod(dest, 0o2755)
    return dest


# ---------------------------------------------------------------- system set-up


@pytest.fixture(scope="session")
def pam_pop():
    """pam.d/pop from this repository installed as /etc/pam.d/pop (previous file restored)."""
    need_root()
    target = "/etc/pam.d/pop"
    saved = read_file(target) if os.path.exists(target) else None
    shutil.copyfile(os.path.join(REPO, "pam.d", "pop"), target)
    os.chmod(target, 0o644)
    yield target
    if saved is None:
        os.unlink(target)
    else:
        write_file(target, saved, mode=0o644)


def _create_user(name, password, extra_groups=()):
    subprocess.run(["userdel", "-r", name], capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
    for group in extra_groups:
        subprocess.run(["usermod", "-a", "-G", group, name], check=True)
    subprocess.run(["chpasswd"], input=("%s:%s\n" % (name, password)).encode(), check=True)
    pw = pwd.getpwnam(name)
    os.chmod(pw.pw_dir, 0o711)
    groups = tuple(sorted({pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}))
    return User(name, password, pw.pw_uid, pw.pw_gid, pw.pw_dir, groups)


@pytest.fixture(scope="session")
def users(pam_pop):
    """Real system users: alice (mbox, in an extra group), bob (mbox), maddy (has ~/Maildir)."""
    # Names unique to this run: several checkouts may run the suite on one machine at once.
    tag = "%05d" % (os.getpid() % 100000)
    extra = "msx" + tag
    subprocess.run(["groupadd", extra], check=True)
    made = {
        "alice": _create_user("msa" + tag, "Alice-pw-1", extra_groups=(extra,)),
        "bob": _create_user("msb" + tag, "B0b pass!"),
        "maddy": _create_user("msm" + tag, "maddy-pw-3"),
    }
    yield made
    for user in made.values():
        subprocess.run(["userdel", "-r", user.name], capture_output=True)
    subprocess.run(["groupdel", extra], capture_output=True)


@pytest.fixture(scope="session")
def cert(base_tmp):
    """A self-signed certificate for CN=localhost: (cert path, key path)."""
    d = os.path.join(base_tmp, "tls")
    os.makedirs(d, mode=0o755, exist_ok=True)
    cert_path, key_path = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", key_path, "-out", cert_path],
        check=True, capture_output=True,
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


@pytest.fixture
def spool(base_tmp):
    """A fresh spool dir, mode 1777 like a sticky /var/mail: users can create their dotlocks."""
    d = tempfile.mkdtemp(prefix="spool-", dir=base_tmp)
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mbox_for(spool):
    """Write a user's spool file: mbox_for(user, bytes) -> path (owned by the user, 0600)."""

    def make(user, data):
        path = os.path.join(spool, user.name)
        write_file(path, data, owner=user, mode=0o600)
        return path

    return make


@pytest.fixture
def uw_inbox():
    return read_file(os.path.join(FIXTURES, "inbox.mbox"))


@pytest.fixture
def server_args(ipop3d, spool, mlock_helper):
    """Command line for ipop3d serving the test spool: server_args(*extra) -> argv list."""

    def make(*extra, binary=None, **options):
        return server_argv(binary or ipop3d, spool, mlock_helper, extra, **options)

    return make


@pytest.fixture
def pipe_session(server_args):
    """Start a pipe-driven ipop3d (as root): pipe_session(*extra, env=None) -> PipeSession."""
    sessions = []

    def start(*extra, env=None, **options):
        s = PipeSession(server_args(*extra, **options), env=env)
        sessions.append(s)
        return s

    yield start
    for s in sessions:
        if s.proc.poll() is None:
            s.kill()
