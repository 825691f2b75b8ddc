#!/usr/bin/env bash
# The newcomer's demo: build ipop3d, make a demo mailbox with three messages, serve it on a
# loopback port, and fetch it with Python's poplib and with curl. Needs no root: as a normal user
# the server runs pre-authenticated as you (AUTH EXTERNAL); run as root, it serves as `nobody`.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-11110}
cargo build --release -p ipop3d --quiet
work=$(mktemp -d /tmp/ipop3d-demo.XXXXXX)
install -m 0600 tests/fixtures/inbox.mbox "$work/inbox"
run_as=()
if [ "$(id -u)" = 0 ]; then
  chown -R nobody "$work"
  run_as=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
fi
MAIL="$work/inbox" HOME="$work" "${run_as[@]}" target/release/ipop3d --store mbox \
  --listen "127.0.0.1:$port" 2>"$work/server.log" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do grep -q "listening on" "$work/server.log" 2>/dev/null && break; sleep 0.1; done

echo "== Python poplib: STAT, UIDL, TOP 1 0"
python3 - "$port" <<'PY'
import poplib, sys
p = poplib.POP3("127.0.0.1", int(sys.argv[1]))
print(p.getwelcome().decode())
print(p._shortcmd("AUTH EXTERNAL =").decode())
print("STAT", p.stat())
print("UIDL", [u.decode() for u in p.uidl()[1]])
for line in p.top(1, 0)[1]:
    print("   ", line.decode())
p.quit()
PY
echo "== curl pop3://127.0.0.1:$port/3"
who=$(if [ "$(id -u)" = 0 ]; then echo nobody; else id -un; fi)
curl -sS --login-options AUTH=EXTERNAL -u "$who:" "pop3://127.0.0.1:$port/3"
echo "== server log"
cat "$work/server.log"
