//! Test harness: runs the real `imapd` binary over pipes, as an unprivileged user (via
//! `setpriv` when the tests run as root, so the server takes the PREAUTH path and never PAM),
//! with HOME and MAIL pointing into a temporary directory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A fresh directory under /tmp, removed on drop, owned by the user the server runs as.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("imapd-test-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Give everything to the server's user (when running as root).
    pub fn hand_over(&self) {
        if let Some((uid, gid)) = server_ids() {
            chown_tree(&self.0, uid, gid);
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn is_root() -> bool {
    common::privs::is_root()
}

/// The uid and gid the server runs as when we are root: nobody's.
fn server_ids() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let nobody = common::privs::lookup("nobody").expect("user nobody");
    Some((nobody.uid, nobody.gid))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

/// One running `imapd`.
pub struct Server {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Server {
    /// Start the server with `home` as HOME and `mail` (if any) as MAIL, plus `args`.
    pub fn start(home: &Path, mail: Option<&Path>, args: &[&str]) -> Server {
        Server::spawn(home, mail, args, true)
    }

    /// Start the server as whoever runs the tests (root: the login path, before any PAM).
    pub fn start_unchanged(home: &Path, args: &[&str]) -> Server {
        Server::spawn(home, None, args, false)
    }

    fn spawn(home: &Path, mail: Option<&Path>, args: &[&str], drop_root: bool) -> Server {
        let binary = env!("CARGO_BIN_EXE_imapd");
        let mut cmd = if is_root() && drop_root {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                binary,
            ]);
            c
        } else {
            Command::new(binary)
        };
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home)
            .env("TMPDIR", home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(mail) = mail {
            cmd.env("MAIL", mail);
        }
        let mut child = cmd.spawn().expect("start imapd");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Server {
            child,
            input,
            output,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.input.write_all(bytes).unwrap();
        self.input.flush().unwrap();
    }

    /// One whole response (literals included), with its CRLF; empty at EOF.
    pub fn response(&mut self) -> String {
        let mut whole = Vec::new();
        loop {
            let mut line = Vec::new();
            self.output.read_until(b'\n', &mut line).unwrap();
            if line.is_empty() {
                break;
            }
            whole.extend_from_slice(&line);
            let Some(n) = literal_length(&line) else {
                break;
            };
            let mut literal = vec![0u8; n];
            self.output.read_exact(&mut literal).unwrap();
            whole.extend_from_slice(&literal);
        }
        String::from_utf8_lossy(&whole).into_owned()
    }

    /// Send `tag command` and collect every response up to and including the tagged one.
    pub fn command(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(format!("{tag} {command}\r\n").as_bytes());
        self.until_tagged(tag)
    }

    pub fn until_tagged(&mut self, tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let r = self.response();
            assert!(!r.is_empty(), "EOF before tagged response; got {out:?}");
            let done = r.starts_with(&format!("{tag} "));
            out.push(r);
            if done {
                return out;
            }
        }
    }

    /// Wait for the server to exit; its status code.
    pub fn wait(mut self) -> i32 {
        drop(self.input);
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

/// `{n}` (or `~{n}`) at the end of a response line: the literal's length.
fn literal_length(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?;
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&c| c == b'{')?;
    std::str::from_utf8(&body[open + 1..]).ok()?.parse().ok()
}

/// The UW reference fixture directory.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// Blank UIDVALIDITY values (they are the time of creation).
pub fn blank_validity(response: &str) -> String {
    let mut out = Vec::new();
    let mut previous = "";
    for word in response.split(' ') {
        if matches!(
            previous,
            "[UIDVALIDITY" | "UIDVALIDITY" | "[COPYUID" | "[APPENDUID"
        ) {
            let tail: String = word.chars().skip_while(char::is_ascii_digit).collect();
            out.push(format!("V{tail}"));
        } else {
            out.push(word.to_string());
        }
        previous = word;
    }
    out.join(" ")
}

/// A Maildir with `count` small messages delivered to new/, owned by the server's user.
pub fn maildir_home(dir: &TempDir, count: usize) -> PathBuf {
    let home = dir.path().join("home");
    let maildir = home.join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    for i in 1..=count {
        deliver(&maildir, i);
    }
    dir.hand_over();
    home
}

/// Deliver message number `i` into `maildir`/new as an MTA would (tmp/, then rename).
pub fn deliver(maildir: &Path, i: usize) {
    let text = format!(
        "From: a{i}@example.com\r\nTo: b@example.com\r\nSubject: msg {i}\r\n\
         Date: Mon, {i} Jan 2024 10:00:00 +0000\r\nMessage-ID: <m{i}@x>\r\n\r\nbody {i} text\r\n"
    );
    let name = format!("100{i}.M{i}P1.host");
    let tmp = maildir.join("tmp").join(&name);
    std::fs::write(&tmp, text).unwrap();
    if let Some((uid, gid)) = server_ids() {
        std::os::unix::fs::lchown(&tmp, Some(uid), Some(gid)).unwrap();
    }
    std::fs::rename(&tmp, maildir.join("new").join(&name)).unwrap();
}
