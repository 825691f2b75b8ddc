#!/bin/sh
# Installs what bench/pop3_bench.py and bench/imap_bench.py compare against and creates their
# unprivileged test user.
# Debian/Ubuntu only; run as root. Never touches /var/mail or any existing user.
#
#   dovecot-core + dovecot-pop3d   /usr/lib/dovecot/pop3 (run pre-authenticated, standalone)
#   mailutils-pop3d                /usr/sbin/pop3d (GNU Mailutils)
#   dovecot-imapd                  /usr/lib/dovecot/imap (run pre-authenticated, standalone)
#   mailutils-imap4d               /usr/sbin/imap4d (GNU Mailutils, --preauth)
#   time                           /usr/bin/time (GNU time): the servers' own peak RSS
#
# Packages this script newly installs get their system services stopped and disabled: a
# benchmark must not leave new POP3/IMAP listeners running on the machine.
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: sudo $0" >&2
    exit 1
fi

PACKAGES="dovecot-core dovecot-pop3d dovecot-imapd mailutils-pop3d mailutils-imap4d time"
BENCH_USER=popbench

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done

if [ -n "$missing" ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        case "$missing" in *dovecot-core*) systemctl disable --now dovecot || true ;; esac
        case "$missing" in *mailutils-pop3d*) systemctl disable --now mailutils-pop3d || true ;; esac
        case "$missing" in *mailutils-imap4d*) systemctl disable --now mailutils-imap4d || true ;; esac
    fi
fi

if ! id "$BENCH_USER" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin --comment "POP3 benchmark" "$BENCH_USER"
fi

echo "ready: /usr/lib/dovecot/{pop3,imap}, /usr/sbin/{pop3d,imap4d}, /usr/bin/time, user $BENCH_USER"
echo "next:  cargo build --release -p ipop3d && sudo python3 bench/pop3_bench.py --quick"
echo "       cargo build --release -p imapd && sudo python3 bench/imap_bench.py --sizes 1000"
