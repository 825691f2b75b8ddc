//! Users and privileges: passwd lookups (through NSS, so LDAP/SQL users work) and the one-way drop
//! from root to the mail owner.
//!
//! Owns: [`Account`] lookups, [`become_user`] (supplementary groups, gid, uid, verified afterwards)
//! and the uid policy [`check_uid_allowed`]. Never touches the environment (HOME, USER, MAIL are
//! the caller's business) and never grants anything back: after [`become_user`] succeeds the
//! process cannot regain root.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::unistd::{self, Gid, Uid, User};

/// A user as the passwd database (NSS) describes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl From<User> for Account {
    fn from(user: User) -> Account {
        Account {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            shell: user.shell,
        }
    }
}

/// Look `name` up with getpwnam_r. `None` when unknown or when the lookup fails.
pub fn lookup(name: &str) -> Option<Account> {
    if name.is_empty() || name.contains('\0') {
        return None;
    }
    User::from_name(name).ok().flatten().map(Account::from)
}

/// The account of the real uid.
pub fn current() -> Option<Account> {
    User::from_uid(unistd::getuid())
        .ok()
        .flatten()
        .map(Account::from)
}

/// Whether we run with effective uid 0 (and so must authenticate and then drop privileges).
pub fn is_root() -> bool {
    unistd::geteuid().is_root()
}

/// The uid policy: root never logs in, nor does any uid below `min_uid` (system accounts).
pub fn check_uid_allowed(uid: u32, min_uid: u32) -> Result<(), String> {
    if uid == 0 {
        Err("login as root is not allowed".to_string())
    } else if uid < min_uid {
        Err(format!(
            "login as uid {uid} is not allowed (below {min_uid})"
        ))
    } else {
        Ok(())
    }
}

/// Become `acct` for good: supplementary groups (initgroups), then real/effective/saved gid, then
/// real/effective/saved uid; then verify all six ids and that setuid(0) now fails; then chdir to
/// the home directory (or `/` when it is missing or not enterable).
///
/// Refuses uid 0 and uids below `min_uid`. When the process already runs as `acct` without root
/// it only verifies and changes directory. On `Err` the process may be half-dropped: the caller
/// must end the session, never continue.
pub fn become_user(acct: &Account, min_uid: u32) -> Result<(), String> {
    check_uid_allowed(acct.uid, min_uid)?;
    let uid = Uid::from_raw(acct.uid);
    let gid = Gid::from_raw(acct.gid);
    if is_root() {
        drop_to(&acct.name, uid, gid)?;
    }
    verify_dropped(uid, gid)?;
    enter_home(&acct.home);
    Ok(())
}

fn drop_to(name: &str, uid: Uid, gid: Gid) -> Result<(), String> {
    let c_name = CString::new(name).map_err(|_| format!("invalid user name {name:?}"))?;
    unistd::initgroups(&c_name, gid).map_err(|e| format!("initgroups({name}): {e}"))?;
    unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}): {e}"))?;
    unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}): {e}"))
}

/// Check with getresuid/getresgid that every id is the user's and that root cannot come back.
fn verify_dropped(uid: Uid, gid: Gid) -> Result<(), String> {
    let uids = unistd::getresuid().map_err(|e| format!("getresuid: {e}"))?;
    let gids = unistd::getresgid().map_err(|e| format!("getresgid: {e}"))?;
    if [uids.real, uids.effective, uids.saved] != [uid; 3] {
        return Err(format!(
            "uid drop failed: real {} effective {} saved {}, wanted {uid}",
            uids.real, uids.effective, uids.saved
        ));
    }
    if [gids.real, gids.effective, gids.saved] != [gid; 3] {
        return Err(format!(
            "gid drop failed: real {} effective {} saved {}, wanted {gid}",
            gids.real, gids.effective, gids.saved
        ));
    }
    if unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err("privileges were not dropped: setuid(0) succeeded".to_string());
    }
    Ok(())
}

fn enter_home(home: &Path) {
    if unistd::chdir(home).is_err() {
        let _ = unistd::chdir("/");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    pub(crate) const TEST_USER: &str = "mailsuite-privtest";
    const CHILD_ENV: &str = "MAILSUITE_PRIVS_CHILD";

    #[test]
    fn uid_policy() {
        assert!(check_uid_allowed(0, 0).is_err());
        assert!(check_uid_allowed(0, 1000).is_err());
        assert!(check_uid_allowed(999, 1000).is_err());
        assert!(check_uid_allowed(1000, 1000).is_ok());
        assert!(check_uid_allowed(1, 1).is_ok());
    }

    #[test]
    fn become_user_refuses_root_and_low_uids_before_acting() {
        let root = lookup("root").expect("root in passwd");
        assert_eq!(root.uid, 0);
        assert!(become_user(&root, 0).is_err());
        let me = current().expect("current user in passwd");
        if me.uid != 0 {
            let err = become_user(&me, me.uid + 1).unwrap_err();
            assert!(err.contains("below"), "{err}");
        }
        assert_eq!(unistd::getuid(), Uid::from_raw(me.uid), "ids changed");
    }

    #[test]
    fn lookup_finds_root_and_rejects_junk() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(root.home, PathBuf::from("/root"));
        assert!(lookup("").is_none());
        assert!(lookup("no\0such").is_none());
        assert!(lookup("no-such-user-mailsuite").is_none());
    }

    /// Create the test user once (root only). Returns it, or `None` with a printed reason.
    pub(crate) fn test_user() -> Option<Account> {
        if !is_root() {
            println!("skipped: needs root to create and become {TEST_USER}");
            return None;
        }
        if let Some(acct) = lookup(TEST_USER) {
            return Some(acct);
        }
        // Tests run in parallel: a concurrent useradd may win the race, so look up again.
        let status = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", TEST_USER])
            .status();
        let acct = lookup(TEST_USER);
        if acct.is_none() {
            println!("skipped: useradd {TEST_USER} failed: {status:?}");
        }
        acct
    }

    /// Run test `name` of this binary in a child process with [`CHILD_ENV`] set.
    pub(crate) fn run_in_child(name: &str, extra_env: &[(&str, &str)]) -> std::process::Output {
        let exe = std::env::current_exe().unwrap();
        Command::new(exe)
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .envs(extra_env.iter().copied())
            .output()
            .unwrap()
    }

    pub(crate) fn in_child() -> bool {
        std::env::var_os(CHILD_ENV).is_some()
    }

    #[test]
    fn child_part_become_user() {
        if !in_child() {
            return;
        }
        let acct = lookup(TEST_USER).unwrap();
        become_user(&acct, 1).unwrap();
        let uids = unistd::getresuid().unwrap();
        let gids = unistd::getresgid().unwrap();
        assert_eq!(uids.real.as_raw(), acct.uid);
        assert_eq!(uids.saved.as_raw(), acct.uid);
        assert_eq!(gids.effective.as_raw(), acct.gid);
        assert_eq!(gids.saved.as_raw(), acct.gid);
        let groups = unistd::getgroups().unwrap();
        assert!(!groups.contains(&Gid::from_raw(0)), "kept root group");
        assert_eq!(std::env::current_dir().unwrap(), PathBuf::from("/"));
        assert!(unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_err());
        assert!(
            std::fs::read("/etc/shadow").is_err(),
            "still reads /etc/shadow"
        );
        println!("CHILD-OK");
    }

    #[test]
    fn become_user_drops_everything_as_root() {
        if in_child() || test_user().is_none() {
            return;
        }
        let out = run_in_child("privs::tests::child_part_become_user", &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-OK"),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
