//! Who is on the other end of fd 0: the client's address and its reverse-DNS name.
//!
//! Owns the `host=` value written to the log (UW style `localhost [127.0.0.1]`). It must never
//! trust the reverse name for anything but logging: it is only what the client's DNS claims.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{getpeername, SockaddrLike, SockaddrStorage};

/// The client of this process, as far as the kernel and reverse DNS can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client's IP address; `None` when fd 0 is not a socket (pipe, tty, ssh).
    pub addr: Option<IpAddr>,
    /// The reverse-DNS name of `addr`, when it has one.
    pub name: Option<String>,
}

impl Peer {
    /// The peer of fd 0, the process's standard input.
    pub fn from_fd0() -> Peer {
        // SAFETY: fd 0 stays open for the whole life of the process; the borrow ends here.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        Peer::from_fd(stdin)
    }

    /// The peer of any descriptor; a descriptor that is not a connected socket gives no address.
    pub fn from_fd(fd: BorrowedFd<'_>) -> Peer {
        match peer_ip(fd) {
            Some(ip) => Peer::from_addr(ip),
            None => Peer {
                addr: None,
                name: None,
            },
        }
    }

    /// A peer at `ip`, its name looked up in reverse DNS (IPv4-mapped IPv6 becomes IPv4).
    pub fn from_addr(ip: IpAddr) -> Peer {
        let ip = unmap_ipv4(ip);
        Peer {
            addr: Some(ip),
            name: reverse_lookup(ip),
        }
    }

    /// True when the client connects from this machine's loopback.
    pub fn is_loopback(&self) -> bool {
        self.addr.is_some_and(|ip| ip.is_loopback())
    }

    /// The `host=` value for log lines: the same text as `Display`.
    pub fn log_host(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, self.addr) {
            (Some(name), Some(ip)) => write!(f, "{name} [{ip}]"),
            (None, Some(ip)) => write!(f, "[{ip}]"),
            (_, None) => f.write_str("UNKNOWN"),
        }
    }
}

fn peer_ip(fd: BorrowedFd<'_>) -> Option<IpAddr> {
    let storage: SockaddrStorage = getpeername(fd.as_raw_fd()).ok()?;
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    storage.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

fn unmap_ipv4(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// getnameinfo(NI_NAMEREQD): the name the address maps back to, or None.
fn reverse_lookup(ip: IpAddr) -> Option<String> {
    let sockaddr = SockaddrStorage::from(SocketAddr::new(ip, 0));
    let mut host = [0 as libc::c_char; libc::NI_MAXHOST as usize];
    // SAFETY: `sockaddr` is a valid socket address of `sockaddr.len()` bytes; `host` is a writable
    // buffer whose exact length is passed; the service buffer is null with length 0, as allowed.
    let rc = unsafe {
        libc::getnameinfo(
            sockaddr.as_ptr(),
            sockaddr.len(),
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // getnameinfo NUL-terminates on success; stop at the first NUL (or the buffer's end).
    let bytes: Vec<u8> = host
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let name = String::from_utf8(bytes).ok()?;
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn tcp_peer_on_loopback_has_address_and_name() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let peer = Peer::from_fd(server_side.as_fd());
        assert_eq!(peer.addr, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(peer.is_loopback());
        // /etc/hosts maps 127.0.0.1 to localhost on every sane machine.
        assert_eq!(peer.name.as_deref(), Some("localhost"));
        assert_eq!(peer.to_string(), "localhost [127.0.0.1]");
        assert_eq!(peer.log_host(), "localhost [127.0.0.1]");
    }

    #[test]
    fn pipe_is_unknown() {
        let (reader, _writer) = nix::unistd::pipe().unwrap();
        let peer = Peer::from_fd(reader.as_fd());
        assert_eq!(peer.addr, None);
        assert!(!peer.is_loopback());
        assert_eq!(peer.to_string(), "UNKNOWN");
    }

    #[test]
    fn address_without_name_is_bracketed() {
        let peer = Peer {
            addr: Some("192.0.2.1".parse().unwrap()),
            name: None,
        };
        assert_eq!(peer.to_string(), "[192.0.2.1]");
        assert!(!peer.is_loopback());
    }

    #[test]
    fn ipv4_mapped_ipv6_is_shown_as_ipv4() {
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(unmap_ipv4(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let real_v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(unmap_ipv4(real_v6), real_v6);
    }
}
