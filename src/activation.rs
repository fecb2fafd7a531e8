//! systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`; `sd_listen_fds(3)`): listening sockets
//! that a service manager (`patroni-proxy.socket`) or a test made and passed as descriptors 3, 4,
//! ... The proxy uses an inherited socket for `listen.bind` or `stats.bind` when its address
//! matches, and binds the rest itself. Because the manager keeps its own copy of each socket, a
//! restart or a binary upgrade refuses no connection: while no process accepts, clients wait in the
//! socket's accept queue (docs/operations.md, "Upgrade without refusing connections").
//!
//! Reading the variables is the `listenfd` crate's (it checks `LISTEN_PID` and clears both, as
//! `sd_listen_fds(1)` does); which socket serves which key is the pure [`matches`].

use std::net::{SocketAddr, TcpListener};

/// The TCP listening sockets this process was given, until taken.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<(SocketAddr, TcpListener)>,
    /// Descriptors that were not TCP sockets with an address, said once logging is up.
    pub refused: Vec<String>,
}

impl Inherited {
    /// The sockets passed to this process. Call it before any thread starts: it removes
    /// `LISTEN_PID` and `LISTEN_FDS` from the environment (children must not take them too).
    pub fn from_env() -> Self {
        let mut fds = listenfd::ListenFd::from_env();
        let mut found = Self::default();
        for i in 0..fds.len() {
            let fd = 3 + i;
            match fds.take_tcp_listener(i) {
                Ok(Some(l)) => match l.local_addr() {
                    Ok(a) => found.sockets.push((a, l)),
                    Err(e) => found.refused.push(format!("descriptor {fd}: {e}")),
                },
                Ok(None) => {}
                Err(e) => found.refused.push(format!(
                    "descriptor {fd} is not a TCP listening socket: {e}"
                )),
            }
        }
        found
    }

    /// The inherited socket for `want`, if one matches.
    pub fn take(&mut self, want: SocketAddr) -> Option<TcpListener> {
        let i = self.sockets.iter().position(|(a, _)| matches(*a, want))?;
        Some(self.sockets.swap_remove(i).1)
    }

    /// Addresses of the sockets no key took.
    pub fn unused(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(a, _)| *a).collect()
    }
}

/// Whether an inherited socket bound to `have` serves a key set to `want`: the same address; or,
/// for a key on all addresses (`*:5000`), a socket on all addresses of either family and the same
/// port (systemd's `ListenStream=5000` is `[::]:5000`, which takes IPv4 clients too).
pub fn matches(have: SocketAddr, want: SocketAddr) -> bool {
    have == want
        || (have.ip().is_unspecified() && want.ip().is_unspecified() && have.port() == want.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_socket_serves_the_key_on_its_address() {
        assert!(matches(a("127.0.0.1:5000"), a("127.0.0.1:5000")));
        assert!(matches(a("0.0.0.0:5000"), a("0.0.0.0:5000")));
        assert!(
            matches(a("[::]:5000"), a("0.0.0.0:5000")),
            "ListenStream=5000"
        );
        assert!(!matches(a("[::]:5001"), a("0.0.0.0:5000")));
        assert!(
            !matches(a("127.0.0.1:5000"), a("0.0.0.0:5000")),
            "narrower than asked"
        );
        assert!(
            !matches(a("0.0.0.0:5000"), a("127.0.0.1:5000")),
            "wider than asked"
        );
        assert!(!matches(a("127.0.0.1:7000"), a("127.0.0.1:5000")));
    }
}
