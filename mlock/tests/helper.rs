//! The built `mlock` binary, driven as the servers drive it (as the invoking user, no setgid).

use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlock-it-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn helper_binary_locks_until_unlock_line() {
    let dir = temp_dir("lock");
    let mailbox = dir.join("alice");
    fs::write(&mailbox, "").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlock"))
        .arg(&mailbox)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut reply = [0u8; 2];
    stdout.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"+\n");
    let lock = dir.join("alice.lock");
    assert_eq!(
        fs::read_to_string(&lock).unwrap(),
        format!("{}\n", child.id())
    );
    child.stdin.take().unwrap().write_all(b"unlock\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!lock.exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn helper_binary_refuses_foreign_mailbox() {
    let dir = temp_dir("refuse");
    let output = Command::new(env!("CARGO_BIN_EXE_mlock"))
        .arg(dir.join("no-such-user-xyz"))
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.starts_with(b"-"), "{:?}", output.stdout);
    assert!(!dir.join("no-such-user-xyz.lock").exists());
    fs::remove_dir_all(&dir).unwrap();
}
