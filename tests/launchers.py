"""Real launchers for ipop3d on loopback, each configured from the deployment file this
repository ships (so a broken file fails a test): --listen, xinetd, systemd-socket-activate
(from the systemd units), an inetd emulation (from inetd.conf.sample) and stunnel.

Each launcher is a context manager yielding the port it listens on; it stops everything it
started. Never binds anything but 127.0.0.1.
"""

import contextlib
import os
import re
import shlex
import socket
import subprocess
import threading
import time

from mailtest import REPO, free_port, stop, wait_listening_probe_free

INSTALLED_BINARY = "/usr/local/sbin/ipop3d"


def repo_file(rel):
    with open(os.path.join(REPO, rel)) as f:
        return f.read()


def substitute_binary(args, binary):
    """Replace the installed ipop3d path in an argument list with the binary under test."""
    return [binary if a == INSTALLED_BINARY else a for a in args]


@contextlib.contextmanager
def listen_mode(argv, workdir):
    """ipop3d --listen 127.0.0.1:PORT; waits for its `listening on` line on stderr."""
    port = free_port()
    errpath = os.path.join(workdir, "listen-%d.err" % port)
    with open(errpath, "wb") as err:
        proc = subprocess.Popen(argv + ["--listen", "127.0.0.1:%d" % port],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 15
        want = "listening on 127.0.0.1:%d" % port
        while want not in open(errpath, errors="replace").read():
            assert proc.poll() is None, "ipop3d --listen exited: %s" % open(errpath).read()
            assert time.monotonic() < deadline, "no '%s' on stderr" % want
            time.sleep(0.05)
        yield port
    finally:
        stop(proc)


def xinetd_config(service_file, binary, extra_args, port, logfile):
    """An xinetd config: the shipped service block with the binary, port and args substituted."""
    text = repo_file(service_file)
    block = text[re.search(r"(?m)^service ", text).start():]
    lines, have_args = [], False
    for line in block.splitlines():
        m = re.match(r"^(\s*)(\w+)\s*(\+?=)\s*(.*)$", line)
        if m and m.group(2) == "server":
            line = "%sserver = %s" % (m.group(1), binary)
        elif m and m.group(2) == "server_args":
            have_args = True
            line = "%sserver_args = %s %s" % (m.group(1), m.group(4), " ".join(extra_args))
        elif line.strip() == "}":
            if not have_args and extra_args:
                lines.append("\tserver_args = " + " ".join(extra_args))
            lines += ["\ttype = UNLISTED", "\tport = %d" % port, "\tbind = 127.0.0.1"]
        lines.append(line)
    defaults = "defaults\n{\n\tlog_type = FILE %s\n}\n" % logfile
    return defaults + "\n".join(lines) + "\n"


@contextlib.contextmanager
def xinetd(service_file, binary, extra_args, workdir):
    """xinetd -dontfork with a config generated from xinetd.d/<service>."""
    port = free_port()
    conf = os.path.join(workdir, "xinetd-%d.conf" % port)
    log = os.path.join(workdir, "xinetd-%d.log" % port)
    with open(conf, "w") as f:
        f.write(xinetd_config(service_file, binary, extra_args, port, log))
    proc = subprocess.Popen(["xinetd", "-dontfork", "-f", conf, "-pidfile",
                             os.path.join(workdir, "xinetd-%d.pid" % port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_listening_probe_free(port, proc=proc)
        yield port
    finally:
        stop(proc)


def unit_exec_start(unit_file):
    """The ExecStart command of a systemd unit as an argv list (the `-` prefix dropped)."""
    for line in repo_file(unit_file).splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line[len("ExecStart="):].lstrip("-@+!:"))
    raise AssertionError("%s has no ExecStart" % unit_file)


def unit_listen_port(socket_file):
    for line in repo_file(socket_file).splitlines():
        if line.startswith("ListenStream="):
            return int(line.split("=", 1)[1].rsplit(":", 1)[-1])
    raise AssertionError("%s has no ListenStream" % socket_file)


@contextlib.contextmanager
def socket_activate(argv):
    """systemd-socket-activate --inetd -a: one argv process per connection, socket on fd 0/1."""
    port = free_port()
    proc = subprocess.Popen(["systemd-socket-activate", "-l", "127.0.0.1:%d" % port,
                             "--inetd", "-a"] + argv,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_listening_probe_free(port, proc=proc)
        yield port
    finally:
        stop(proc)


def inetd_conf_entries(path="inetd.conf.sample"):
    """{service: (server path, argv)} from the non-comment lines of an inetd.conf."""
    entries = {}
    for line in repo_file(path).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        assert len(fields) >= 7, "short inetd.conf line: %r" % line
        service, socktype, proto, wait, user, server = fields[:6]
        assert (socktype, proto, wait, user) == ("stream", "tcp", "nowait", "root"), line
        entries[service] = (server, fields[6:])
    return entries


@contextlib.contextmanager
def inetd_emulation(server, argv):
    """A tiny nowait inetd: accept on loopback, run `server` with argv (argv[0] as given) and
    the connection as fd 0 and 1, like inetd does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    children, stopping = [], threading.Event()

    def serve():
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.setblocking(True)
            children.append(subprocess.Popen(argv, executable=server, stdin=conn, stdout=conn,
                                             stderr=subprocess.DEVNULL))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stopping.set()
        thread.join(timeout=5)
        listener.close()
        for child in children:
            stop(child)


def stunnel_config(binary, extra_args, port, cert, key, workdir):
    """stunnel/ipop3d.conf with loopback port, test cert, foreground and the binary substituted."""
    out = []
    for line in repo_file("stunnel/ipop3d.conf").splitlines():
        m = re.match(r"^\s*(\w+)\s*=\s*(.*)$", line)
        key_name = m.group(1) if m else None
        if key_name == "pid":
            line = "pid = " + os.path.join(workdir, "stunnel-%d.pid" % port)
        elif key_name == "foreground":
            line = "foreground = yes"
        elif key_name == "accept":
            line = "accept = 127.0.0.1:%d" % port
        elif key_name == "cert":
            line = "cert = " + cert
        elif key_name == "key":
            line = "key = " + key
        elif key_name == "exec":
            line = "exec = " + binary
        elif key_name == "execArgs":
            line = "execArgs = %s %s" % (m.group(2), " ".join(extra_args))
        out.append(line)
    return "\n".join(out) + "\n"


@contextlib.contextmanager
def stunnel(binary, extra_args, cert, key, workdir):
    port = free_port()
    conf = os.path.join(workdir, "stunnel-%d.conf" % port)
    with open(conf, "w") as f:
        f.write(stunnel_config(binary, extra_args, port, cert, key, workdir))
    proc = subprocess.Popen(["stunnel4", conf], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening_probe_free(port, proc=proc)
        yield port
    finally:
        stop(proc)
