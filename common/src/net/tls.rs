//! The server's TLS configuration: where the certificate and key live and how they are loaded.
//!
//! Owns rustls configuration (ring provider, TLS 1.2 and 1.3 only, no client certificates).
//! It never touches the connection itself (see `conn`) and never logs key material.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// UW's default certificate and key paths for a program: `/etc/ssl/certs/<program>.pem` and
/// `/etc/ssl/private/<program>.pem`.
pub fn default_paths(program: &str) -> (PathBuf, PathBuf) {
    (
        PathBuf::from(format!("/etc/ssl/certs/{program}.pem")),
        PathBuf::from(format!("/etc/ssl/private/{program}.pem")),
    )
}

/// Loads a PEM certificate chain and private key (PKCS#8, PKCS#1 RSA or SEC1 EC) into a server
/// configuration. `cert` and `key` may be the same file holding both (UW style).
/// Errors are complete sentences for the log, e.g.
/// `cannot read certificate /x/y.pem: No such file or directory`.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = load_cert_chain(cert)?;
    let private_key = load_private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("cannot configure TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| {
            format!(
                "cannot use certificate {} with key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}

fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem_file("certificate", path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot parse certificate {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "no certificate found in {} (expected a PEM \"BEGIN CERTIFICATE\" block)",
            path.display()
        ));
    }
    Ok(chain)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem_file("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "no private key found in {} (expected a PEM PKCS#8, RSA or EC private key)",
            path.display()
        ),
        other => format!("cannot parse private key {}: {other}", path.display()),
    })
}

fn read_pem_file(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "cannot read {what} {}: {}",
            path.display(),
            os_error_text(&e)
        )
    })
}

/// The OS's text for an I/O error without std's ` (os error N)` suffix.
pub(crate) fn os_error_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// A temporary directory removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("net-test-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Generates a self-signed certificate for CN=localhost with the openssl CLI.
    /// `key_args` chooses the key type, e.g. `["-newkey", "rsa:2048"]`.
    pub(crate) fn make_cert(dir: &Path, key_args: &[&str]) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let status = Command::new("openssl")
            .args(["req", "-x509"])
            .args(key_args)
            .args(["-nodes", "-subj", "/CN=localhost", "-days", "2"])
            .args(["-addext", "subjectAltName=DNS:localhost"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl CLI is installed");
        assert!(status.success(), "openssl req failed");
        (cert, key)
    }

    #[test]
    fn default_paths_follow_uw() {
        let (cert, key) = default_paths("ipop3d");
        assert_eq!(cert, Path::new("/etc/ssl/certs/ipop3d.pem"));
        assert_eq!(key, Path::new("/etc/ssl/private/ipop3d.pem"));
    }

    #[test]
    fn rsa_pkcs8_certificate_loads() {
        let dir = TempDir::new("rsa");
        let (cert, key) = make_cert(&dir.0, &["-newkey", "rsa:2048"]);
        let config = load_server_config(&cert, &key).unwrap();
        assert!(config.alpn_protocols.is_empty());
    }

    #[test]
    fn ec_key_in_sec1_form_loads() {
        let dir = TempDir::new("ec");
        let (cert, _) = make_cert(
            &dir.0,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let sec1 = dir.0.join("sec1.pem");
        let status = Command::new("openssl")
            .args(["ec", "-in"])
            .arg(dir.0.join("key.pem"))
            .arg("-out")
            .arg(&sec1)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(&sec1).unwrap();
        assert!(text.contains("BEGIN EC PRIVATE KEY"), "{text}");
        load_server_config(&cert, &sec1).unwrap();
    }

    #[test]
    fn rsa_key_in_pkcs1_form_loads() {
        let dir = TempDir::new("pkcs1");
        let (cert, key) = make_cert(&dir.0, &["-newkey", "rsa:2048"]);
        let pkcs1 = dir.0.join("pkcs1.pem");
        let status = Command::new("openssl")
            .args(["rsa", "-traditional", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&pkcs1)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(&pkcs1).unwrap();
        assert!(text.contains("BEGIN RSA PRIVATE KEY"), "{text}");
        load_server_config(&cert, &pkcs1).unwrap();
    }

    #[test]
    fn combined_cert_and_key_file_loads() {
        let dir = TempDir::new("combined");
        let (cert, key) = make_cert(&dir.0, &["-newkey", "rsa:2048"]);
        let both = dir.0.join("both.pem");
        let mut text = std::fs::read(&cert).unwrap();
        text.extend(std::fs::read(&key).unwrap());
        std::fs::write(&both, text).unwrap();
        load_server_config(&both, &both).unwrap();
    }

    #[test]
    fn missing_certificate_is_reported_clearly() {
        let err = load_server_config(
            Path::new("/nonexistent/x.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "cannot read certificate /nonexistent/x.pem: No such file or directory"
        );
    }

    #[test]
    fn file_without_key_is_reported_clearly() {
        let dir = TempDir::new("nokey");
        let (cert, _) = make_cert(&dir.0, &["-newkey", "rsa:2048"]);
        let err = load_server_config(&cert, &cert).unwrap_err();
        assert!(err.starts_with("no private key found in "), "{err}");
        let err = load_server_config(&dir.0.join("key.pem"), &cert).unwrap_err();
        assert!(err.starts_with("no certificate found in "), "{err}");
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let one = TempDir::new("one");
        let two = TempDir::new("two");
        let (cert, _) = make_cert(&one.0, &["-newkey", "rsa:2048"]);
        let (_, other_key) = make_cert(&two.0, &["-newkey", "rsa:2048"]);
        let err = load_server_config(&cert, &other_key).unwrap_err();
        assert!(err.starts_with("cannot use certificate "), "{err}");
    }
}
