//! PAM through a minimal FFI to Debian's libpam (no bindgen, no libclang).
//!
//! Owns one PAM transaction per login, following UW's `ckp_pam.c`: `pam_start(service, user)`,
//! `PAM_RHOST` when known, `pam_authenticate`, `pam_acct_mgmt`, `pam_setcred(ESTABLISH)`, and
//! then `pam_open_session`. The handle lives in a [`PamSession`] until the process ends; dropping
//! it closes the session, deletes the credentials and ends the transaction (best effort: after
//! the process has dropped root these may fail, which is harmless).
//!
//! Never changes privileges, never logs a password, and never lets a panic cross the C
//! boundary (the conversation function has no panicking path). Our copy of the password is
//! wiped as soon as the login steps are done; copies PAM modules keep (`PAM_AUTHTOK`) are out of
//! our reach and are freed by `pam_end`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::ptr::{self, NonNull};

use zeroize::{Zeroize, Zeroizing};

// Constants from <security/_pam_types.h> (Linux-PAM).
const PAM_SUCCESS: c_int = 0;
const PAM_BUF_ERR: c_int = 5;
const PAM_CONV_ERR: c_int = 19;
const PAM_RHOST: c_int = 4;
const PAM_PROMPT_ECHO_OFF: c_int = 1;
const PAM_PROMPT_ECHO_ON: c_int = 2;
const PAM_ERROR_MSG: c_int = 3;
const PAM_TEXT_INFO: c_int = 4;
const PAM_MAX_NUM_MSG: c_int = 32;
const PAM_DISALLOW_NULL_AUTHTOK: c_int = 0x0001;
const PAM_ESTABLISH_CRED: c_int = 0x0002;
const PAM_DELETE_CRED: c_int = 0x0004;

/// Opaque `pam_handle_t`.
#[repr(C)]
struct PamHandle {
    _opaque: [u8; 0],
}

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConversationFn = extern "C" fn(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata_ptr: *mut c_void,
) -> c_int;

#[repr(C)]
struct PamConv {
    conv: Option<ConversationFn>,
    appdata_ptr: *mut c_void,
}

#[link(name = "pam")]
extern "C" {
    fn pam_start(
        service_name: *const c_char,
        user: *const c_char,
        pam_conversation: *const PamConv,
        pamh: *mut *mut PamHandle,
    ) -> c_int;
    fn pam_end(pamh: *mut PamHandle, pam_status: c_int) -> c_int;
    fn pam_set_item(pamh: *mut PamHandle, item_type: c_int, item: *const c_void) -> c_int;
    fn pam_authenticate(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_acct_mgmt(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_setcred(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_open_session(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_close_session(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_strerror(pamh: *mut PamHandle, errnum: c_int) -> *const c_char;
}

/// What the conversation function answers with. Allocated with `Box::into_raw` so that PAM's
/// `appdata_ptr` stays valid (and is the only pointer used to reach it) until `pam_end`.
struct ConversationData {
    user: CString,
    /// The password and its terminating NUL.
    password: Zeroizing<Vec<u8>>,
}

/// Why PAM refused (or failed): the step and PAM's own message, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PamError {
    pub step: &'static str,
    pub code: i32,
    pub message: String,
}

impl fmt::Display for PamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.step, self.message, self.code)
    }
}

impl std::error::Error for PamError {}

/// An authenticated PAM transaction with an open session; closed when dropped.
pub struct PamSession {
    handle: *mut PamHandle,
    /// Owned (from `Box::into_raw`); read by PAM through `appdata_ptr` while `handle` lives,
    /// freed in `Drop` after `pam_end`.
    conversation: NonNull<ConversationData>,
    credentials_established: bool,
    session_open: bool,
    last_status: c_int,
}

impl fmt::Debug for PamSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PamSession")
            .field("user", &self.conversation().user)
            .field("session_open", &self.session_open)
            .finish_non_exhaustive()
    }
}

impl PamSession {
    /// Authenticate `user` with `password` through PAM service `service`, check the account,
    /// establish credentials and open the session. `rhost` (the client's host or address) is
    /// given to PAM when known. Must run as root (pam_unix reads /etc/shadow).
    pub fn open(
        service: &str,
        user: &str,
        password: &[u8],
        rhost: Option<&str>,
    ) -> Result<PamSession, PamError> {
        let service = c_string(service, "service name")?;
        let user = c_string(user, "user name")?;
        if password.contains(&0) {
            return Err(refusal("password contains NUL"));
        }
        let mut secret = Zeroizing::new(Vec::with_capacity(password.len() + 1));
        secret.extend_from_slice(password);
        secret.push(0);
        let user_ptr = user.as_ptr();
        let conversation = NonNull::from(Box::leak(Box::new(ConversationData {
            user,
            password: secret,
        })));
        // Linux-PAM copies this struct in pam_start; only `appdata_ptr` must outlive the call.
        let conv = PamConv {
            conv: Some(converse),
            appdata_ptr: conversation.as_ptr().cast::<c_void>(),
        };
        let mut handle: *mut PamHandle = ptr::null_mut();
        // SAFETY: the strings are valid and NUL-terminated (`user_ptr` points into the leaked
        // ConversationData, alive until Drop/`free_conversation`), `conv` is valid for the call.
        let status = unsafe { pam_start(service.as_ptr(), user_ptr, &conv, &mut handle) };
        if status != PAM_SUCCESS || handle.is_null() {
            if !handle.is_null() {
                // SAFETY: a handle pam_start returned, ended once, before its appdata is freed.
                unsafe { pam_end(handle, status) };
            }
            free_conversation(conversation);
            return Err(PamError {
                step: "pam_start",
                code: status,
                message: "cannot start PAM".into(),
            });
        }
        let mut session = PamSession {
            handle,
            conversation,
            credentials_established: false,
            session_open: false,
            last_status: PAM_SUCCESS,
        };
        let result = session.log_in(rhost);
        session.forget_password();
        crate::log::reopen();
        result.map(|()| session)
    }

    fn conversation(&self) -> &ConversationData {
        // SAFETY: owned by `self` until Drop; PAM only reads it, and only during our calls.
        unsafe { self.conversation.as_ref() }
    }

    /// Wipe our copy of the password; a later prompt would get an empty string.
    fn forget_password(&mut self) {
        // SAFETY: owned by `self`; no PAM call is running, so nothing else reads it now.
        let data = unsafe { self.conversation.as_mut() };
        data.password.zeroize();
        data.password.push(0);
    }

    fn log_in(&mut self, rhost: Option<&str>) -> Result<(), PamError> {
        if let Some(rhost) = rhost.and_then(|h| CString::new(h).ok()) {
            // SAFETY: valid handle; PAM copies the string.
            let status = unsafe { pam_set_item(self.handle, PAM_RHOST, rhost.as_ptr().cast()) };
            self.check("pam_set_item(PAM_RHOST)", status)?;
        }
        // SAFETY (all four calls): `self.handle` is a live handle from pam_start.
        let status = unsafe { pam_authenticate(self.handle, PAM_DISALLOW_NULL_AUTHTOK) };
        self.check("pam_authenticate", status)?;
        let status = unsafe { pam_acct_mgmt(self.handle, PAM_DISALLOW_NULL_AUTHTOK) };
        self.check("pam_acct_mgmt", status)?;
        let status = unsafe { pam_setcred(self.handle, PAM_ESTABLISH_CRED) };
        self.check("pam_setcred", status)?;
        self.credentials_established = true;
        let status = unsafe { pam_open_session(self.handle, 0) };
        self.check("pam_open_session", status)?;
        self.session_open = true;
        Ok(())
    }

    fn check(&mut self, step: &'static str, status: c_int) -> Result<(), PamError> {
        if status == PAM_SUCCESS {
            return Ok(());
        }
        self.last_status = status;
        Err(PamError {
            step,
            code: status,
            message: self.describe(status),
        })
    }

    fn describe(&self, status: c_int) -> String {
        // SAFETY: valid handle; pam_strerror returns a static string or NULL.
        let text = unsafe { pam_strerror(self.handle, status) };
        if text.is_null() {
            return format!("PAM error {status}");
        }
        // SAFETY: non-NULL, NUL-terminated, static.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }

    /// Whether `pam_open_session` succeeded (always true for a session `open` returned).
    pub fn is_open(&self) -> bool {
        self.session_open
    }
}

impl Drop for PamSession {
    fn drop(&mut self) {
        // SAFETY: `self.handle` is the live handle from pam_start, ended exactly once, here,
        // before the conversation data it points to is freed.
        unsafe {
            if self.session_open {
                pam_close_session(self.handle, 0);
            }
            if self.credentials_established {
                pam_setcred(self.handle, PAM_DELETE_CRED);
            }
            pam_end(self.handle, self.last_status);
        }
        free_conversation(self.conversation);
        crate::log::reopen();
    }
}

/// Free (and wipe) conversation data once no PAM handle refers to it any more.
fn free_conversation(conversation: NonNull<ConversationData>) {
    // SAFETY: created by Box::leak in `PamSession::open` and freed exactly once: either when
    // pam_start failed or in Drop after pam_end.
    drop(unsafe { Box::from_raw(conversation.as_ptr()) });
}

fn c_string(text: &str, what: &'static str) -> Result<CString, PamError> {
    CString::new(text).map_err(|_| refusal(what).with_suffix(" contains NUL"))
}

fn refusal(message: &str) -> PamError {
    PamError {
        step: "input",
        code: PAM_CONV_ERR,
        message: message.into(),
    }
}

impl PamError {
    fn with_suffix(mut self, suffix: &str) -> PamError {
        self.message.push_str(suffix);
        self
    }
}

/// The PAM conversation: the password for echo-off prompts, the user name for echo-on prompts,
/// nothing for informational messages; any other style aborts the conversation. Replies are
/// `malloc`ed because PAM frees them.
extern "C" fn converse(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata_ptr: *mut c_void,
) -> c_int {
    if num_msg <= 0 || num_msg > PAM_MAX_NUM_MSG || msg.is_null() || resp.is_null() {
        return PAM_CONV_ERR;
    }
    if appdata_ptr.is_null() {
        return PAM_CONV_ERR;
    }
    // SAFETY: PAM passes back the appdata_ptr we gave pam_start: a live ConversationData.
    let data = unsafe { &*appdata_ptr.cast::<ConversationData>() };
    let count = num_msg as usize;
    // SAFETY: calloc of `count` zeroed PamResponse structs (all-NULL pointers are valid).
    let replies =
        unsafe { libc::calloc(count, std::mem::size_of::<PamResponse>()) }.cast::<PamResponse>();
    if replies.is_null() {
        return PAM_BUF_ERR;
    }
    for i in 0..count {
        // SAFETY: Linux-PAM passes an array of `num_msg` pointers to messages.
        let message = unsafe { *msg.add(i) };
        if message.is_null() {
            free_replies(replies, count);
            return PAM_CONV_ERR;
        }
        // SAFETY: non-NULL message from PAM.
        let answer = match unsafe { (*message).msg_style } {
            PAM_PROMPT_ECHO_OFF => Some(data.password.as_ptr().cast::<c_char>()),
            PAM_PROMPT_ECHO_ON => Some(data.user.as_ptr()),
            PAM_ERROR_MSG | PAM_TEXT_INFO => None,
            _ => {
                free_replies(replies, count);
                return PAM_CONV_ERR;
            }
        };
        if let Some(text) = answer {
            // SAFETY: `text` points to a NUL-terminated string we own (the password buffer
            // always ends in NUL); strdup copies it into malloc'ed memory PAM will free.
            let copy = unsafe { libc::strdup(text) };
            if copy.is_null() {
                free_replies(replies, count);
                return PAM_BUF_ERR;
            }
            // SAFETY: `i < count`, inside the calloc'ed array.
            unsafe { (*replies.add(i)).resp = copy };
        }
    }
    // SAFETY: `resp` is non-NULL, PAM's out-parameter.
    unsafe { *resp = replies };
    PAM_SUCCESS
}

/// Wipe and free a reply array we will not hand to PAM.
fn free_replies(replies: *mut PamResponse, count: usize) {
    for i in 0..count {
        // SAFETY: `replies` has `count` entries, each NULL or a strdup'ed string of ours.
        unsafe {
            let text = (*replies.add(i)).resp;
            if !text.is_null() {
                let len = libc::strlen(text);
                std::slice::from_raw_parts_mut(text.cast::<u8>(), len).zeroize();
                libc::free(text.cast());
            }
        }
    }
    // SAFETY: allocated by calloc in `converse`, not yet given to PAM.
    unsafe { libc::free(replies.cast()) };
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    pub(crate) const TEST_PASSWORD: &str = "Corr3ct horse %s battery";

    /// useradd/chpasswd/userdel lock /etc/passwd and /etc/shadow; run them one at a time here,
    /// and retry when another process holds the lock.
    static ACCOUNT_TOOLS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A throwaway system account with password [`TEST_PASSWORD`], deleted on drop. The name
    /// carries the pid so concurrent test runs never share one.
    pub(crate) struct TestAccount {
        pub(crate) name: String,
    }

    impl TestAccount {
        /// `None`, with a printed reason, when PAM tests cannot run here (not root).
        pub(crate) fn create(tag: &str) -> Option<TestAccount> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("skipped: PAM tests need root (useradd, /etc/pam.d, /etc/shadow)");
                return None;
            }
            let name = format!("mailsuite-{tag}-{}", std::process::id());
            let _serial = ACCOUNT_TOOLS.lock().unwrap_or_else(|e| e.into_inner());
            if nix::unistd::User::from_name(&name).ok().flatten().is_none() {
                run_account_tool(
                    "useradd",
                    &["--no-create-home", "--shell", "/usr/sbin/nologin", &name],
                    None,
                );
            }
            let account = TestAccount { name };
            let line = format!("{}:{TEST_PASSWORD}\n", account.name);
            run_account_tool("chpasswd", &[], Some(&line));
            Some(account)
        }
    }

    impl Drop for TestAccount {
        fn drop(&mut self) {
            let _serial = ACCOUNT_TOOLS.lock().unwrap_or_else(|e| e.into_inner());
            let _ = Command::new("userdel").arg(&self.name).status();
        }
    }

    /// Run a shadow-utils tool, retrying while another process holds the passwd lock.
    fn run_account_tool(tool: &str, args: &[&str], stdin: Option<&str>) {
        use std::io::Write;
        for _ in 0..50 {
            let mut child = Command::new(tool)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
            if let Some(text) = stdin {
                let pipe = child.stdin.as_mut().expect("piped stdin");
                pipe.write_all(text.as_bytes()).expect("feed stdin");
            }
            drop(child.stdin.take());
            if child.wait().expect("wait").success() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{tool} {args:?} keeps failing");
    }

    /// A PAM service file in /etc/pam.d, like Debian's pam.d/pop, removed on drop.
    pub(crate) struct TestService {
        pub(crate) name: String,
        path: PathBuf,
    }

    impl TestService {
        pub(crate) fn install(tag: &str) -> TestService {
            TestService::install_with(
                tag,
                "@include common-auth\n@include common-account\n@include common-session\n",
            )
        }

        fn install_with(tag: &str, content: &str) -> TestService {
            let name = format!("mailsuite-test-{tag}-{}", std::process::id());
            let path = PathBuf::from("/etc/pam.d").join(&name);
            std::fs::write(&path, content).expect("write PAM service file");
            TestService { name, path }
        }
    }

    impl Drop for TestService {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[test]
    fn real_pam_accepts_right_password_and_refuses_others() {
        let Some(account) = TestAccount::create("pam") else {
            return;
        };
        let service = TestService::install("pam");
        let session = PamSession::open(
            &service.name,
            &account.name,
            TEST_PASSWORD.as_bytes(),
            Some("127.0.0.1"),
        )
        .expect("right password accepted");
        assert!(session.is_open());
        assert!(session.conversation().password.iter().all(|&b| b == 0));
        drop(session);

        let wrong = PamSession::open(&service.name, &account.name, b"wrong", None).unwrap_err();
        assert_eq!(wrong.step, "pam_authenticate", "{wrong}");

        let unknown = PamSession::open(
            &service.name,
            "mailsuite-no-such-user",
            TEST_PASSWORD.as_bytes(),
            None,
        )
        .unwrap_err();
        assert_eq!(unknown.step, "pam_authenticate", "{unknown}");

        let empty = PamSession::open(&service.name, &account.name, b"", None).unwrap_err();
        assert_eq!(empty.step, "pam_authenticate", "{empty}");

        let nul = PamSession::open(&service.name, &account.name, b"a\0b", None).unwrap_err();
        assert_eq!(nul.step, "input");
    }

    #[test]
    fn account_refused_after_right_password_fails_in_acct_mgmt() {
        let Some(account) = TestAccount::create("acct") else {
            return;
        };
        let service = TestService::install_with(
            "acct",
            "@include common-auth\naccount required pam_deny.so\n@include common-session\n",
        );
        let refused =
            PamSession::open(&service.name, &account.name, TEST_PASSWORD.as_bytes(), None)
                .unwrap_err();
        assert_eq!(refused.step, "pam_acct_mgmt", "{refused}");
    }
}
