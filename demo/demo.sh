#!/usr/bin/env bash
# The newcomer's demo: build ipop3d and imapd, make a demo mailbox with three messages, serve it
# on loopback ports, and read it with Python's poplib and imaplib and with curl. Needs no root: as
# a normal user the servers run pre-authenticated as you (POP3 AUTH EXTERNAL, IMAP PREAUTH); run
# as root, they serve as `nobody`.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-11110}
imap_port=${IMAP_PORT:-11143}
cargo build --release -p ipop3d -p imapd --quiet
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
MAIL="$work/inbox" HOME="$work" "${run_as[@]}" target/release/imapd --store mbox \
  --listen "127.0.0.1:$imap_port" 2>"$work/imapd.log" &
imap_server=$!
trap 'kill $server $imap_server 2>/dev/null; rm -rf "$work"' EXIT
for log in server imapd; do
  for _ in $(seq 50); do grep -q "listening on" "$work/$log.log" 2>/dev/null && break; sleep 0.1; done
done

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
echo "== Python imaplib: SELECT INBOX, FETCH 1:* (UID FLAGS ENVELOPE), SEARCH"
python3 - "$imap_port" <<'PY'
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
print(m.welcome.decode())
print(m.select("INBOX"))
for item in m.fetch("1:*", "(UID FLAGS ENVELOPE)")[1]:
    print("   ", item.decode()[:110])
print("SEARCH FROM bob", m.search(None, "FROM", "bob"))
m.logout()
PY
echo "== server logs"
cat "$work/server.log" "$work/imapd.log"
