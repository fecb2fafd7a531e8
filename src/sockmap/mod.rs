//! The kernel relay's BPF program and maps (`listen.relay = "kernel" | "auto"`): loaded once at
//! start, and a session's two sockets put into them when its relay begins and taken out when it
//! ends. The program (`bpf/relay.bpf.c`, built by `build.rs`) is an `sk_skb` stream verdict that
//! redirects every segment arriving on one socket to its peer, inside the kernel, and counts the
//! bytes and the time of the last segment per socket for the proxy's counters and idle timers.
//!
//! Two socket maps: `targets`, with no program, is where the verdict finds a peer; `socks`, with
//! the verdict attached, holds the sockets whose data it redirects. A session's sockets enter
//! `targets` first, so the first segment the verdict sees always finds its peer there (a missing
//! peer would make the kernel drop it); bytes that arrived before a socket entered `socks` wait
//! in its receive queue until [`crate::backend::relaying::kick`] hands them to the verdict.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};

use aya::maps::{HashMap, MapData, SockHash};
use aya::programs::SkSkb;
use aya::Ebpf;
use slab::Slab;
use std::sync::atomic::Ordering::Relaxed;

use crate::backend::{Backend, Frontend};

/// Why the kernel relay is not available, said once at start (log, dashboard, `relay_mode`).
pub type Unavailable = String;

/// Per socket: its peer's cookie, bytes redirected from it, the time of its last segment
/// (`bpf_ktime_get_ns`, CLOCK_MONOTONIC). As `struct link` in `bpf/relay.bpf.c`.
type Link = [u64; 3];

/// The loaded program and its maps. The program stays attached while this lives.
pub struct Sockmap {
    maps: Mutex<Maps>,
    /// The kernel's id of the loaded program (`bpftool prog show id N`).
    program_id: Option<u32>,
    /// The sessions in the maps, with the counters their bytes go to: [`Sockmap::flush`] brings
    /// those up to date when the stats are read, so open sessions' bytes show as they move.
    live: Mutex<Slab<Live>>,
}

/// Where a kernel-relayed session's counts go.
#[derive(Debug, Clone)]
pub struct Counters {
    pub frontend: Arc<Frontend>,
    pub backend: Arc<Backend>,
}

struct Live {
    cookies: [u64; 2],
    /// Bytes from the client and from the server already added to the counters.
    reported: [u64; 2],
    to: Counters,
}

impl Live {
    /// Adds what the program counted since the last call; returns its counts.
    fn flush(&mut self, links: &HashMap<MapData, u64, Link>) -> [Counted; 2] {
        let counted = self.cookies.map(|c| match links.get(&c, 0) {
            Ok([_, bytes, last_ns]) => Counted { bytes, last_ns },
            Err(_) => Counted::default(),
        });
        let fe = &self.to.frontend;
        let be = &self.to.backend.counters;
        let meters = [[&fe.bin, &be.bin], [&fe.bout, &be.bout]];
        for (i, m) in meters.into_iter().enumerate() {
            let new = counted[i].bytes.saturating_sub(self.reported[i]);
            if new > 0 {
                self.reported[i] = counted[i].bytes;
                for c in m {
                    c.fetch_add(new, Relaxed);
                }
            }
        }
        counted
    }
}

struct Maps {
    socks: SockHash<MapData, u64>,
    targets: SockHash<MapData, u64>,
    links: HashMap<MapData, u64, Link>,
    // Owns the loaded program (and so its attachment to `socks`).
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Sockmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sockmap")
    }
}

/// Whether the kernel relay can be used, decided once at start.
#[derive(Debug)]
pub enum Availability {
    /// Every listener relays in user space: nothing was loaded.
    NotAsked,
    Ready(Arc<Sockmap>),
    /// A listener asked for it and it could not be loaded: why.
    Unavailable(Unavailable),
}

impl Availability {
    /// Loads the program if a listener of `config` asks for the kernel relay (`kernel`/`auto`).
    pub fn for_config(config: &crate::config::Config) -> Self {
        use crate::config::RelayMode;
        if config
            .listen
            .all()
            .iter()
            .all(|l| l.relay == RelayMode::User)
        {
            return Availability::NotAsked;
        }
        match Sockmap::load() {
            Ok(m) => Availability::Ready(m),
            Err(why) => Availability::Unavailable(why),
        }
    }

    pub fn ready(&self) -> Option<&Arc<Sockmap>> {
        match self {
            Availability::Ready(m) => Some(m),
            _ => None,
        }
    }

    /// Who relays the sessions of a listener with `mode`: `"kernel"` or `"user"`.
    pub fn mode_of(&self, mode: crate::config::RelayMode) -> &'static str {
        match (mode, self) {
            (crate::config::RelayMode::User, _) => "user",
            (_, Availability::Ready(_)) => "kernel",
            _ => "user",
        }
    }
}

#[cfg(kernel_relay)]
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay.bpf.o"));

impl Sockmap {
    /// Loads and attaches the program. The error says what the kernel (or the build) answered:
    /// the errno, and the verifier's log when it refused the program.
    pub fn load() -> Result<Arc<Self>, Unavailable> {
        #[cfg(not(kernel_relay))]
        {
            Err(format!(
                "this build has no BPF program ({})",
                env!("PATRONI_PROXY_NO_KERNEL_RELAY")
            ))
        }
        #[cfg(kernel_relay)]
        {
            Self::load_object(OBJECT)
        }
    }

    #[cfg_attr(not(kernel_relay), allow(dead_code))]
    fn load_object(object: &[u8]) -> Result<Arc<Self>, Unavailable> {
        // Without the kernel's BTF: the program needs no CO-RE relocation, and parsing
        // /sys/kernel/btf/vmlinux (several MiB) stayed in the idle proxy's RSS (docs/benchmarks.md).
        let mut ebpf = aya::EbpfLoader::new()
            .btf(None)
            .load(object)
            .map_err(|e| format!("loading the BPF maps: {}", chain(&e)))?;
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| format!("the BPF object has no map {name}"))
        };
        let socks: SockHash<MapData, u64> = take(&mut ebpf, "socks")?
            .try_into()
            .map_err(|e| format!("map socks: {e}"))?;
        let targets: SockHash<MapData, u64> = take(&mut ebpf, "targets")?
            .try_into()
            .map_err(|e| format!("map targets: {e}"))?;
        let links: HashMap<MapData, u64, Link> = take(&mut ebpf, "links")?
            .try_into()
            .map_err(|e| format!("map links: {e}"))?;
        let prog: &mut SkSkb = ebpf
            .program_mut("relay")
            .ok_or("the BPF object has no program relay")?
            .try_into()
            .map_err(|e| format!("program relay: {e}"))?;
        prog.load()
            .map_err(|e| describe("loading the program", &e))?;
        prog.attach(socks.fd())
            .map_err(|e| describe("attaching the program", &e))?;
        let program_id = prog.info().ok().map(|i| i.id());
        Ok(Arc::new(Self {
            program_id,
            maps: Mutex::new(Maps {
                socks,
                targets,
                links,
                _ebpf: ebpf,
            }),
            live: Mutex::default(),
        }))
    }

    /// Puts a session's sockets into the maps: from now on the kernel relays their data. On an
    /// error nothing of the session is left in the maps, and the caller relays in user space.
    /// Their bytes are added to `to` as they are read ([`Sockmap::flush`], [`Joined::flush`]).
    pub fn join(
        self: &Arc<Self>,
        client: impl AsFd,
        server: impl AsFd,
        to: Counters,
    ) -> io::Result<Joined> {
        let cookies = [cookie(&client)?, cookie(&server)?];
        let [c, s] = cookies;
        let key = self.lock_live().insert(Live {
            cookies,
            reported: [0; 2],
            to,
        });
        // From here on, an error drops `joined`, which takes out whatever was put in.
        let joined = Joined {
            map: self.clone(),
            key,
        };
        {
            let mut m = self.lock_maps();
            m.links.insert(c, [s, 0, 0], 0).map_err(io_err)?;
            m.links.insert(s, [c, 0, 0], 0).map_err(io_err)?;
            m.targets
                .insert(c, client.as_fd().as_raw_fd(), 0)
                .map_err(io_err)?;
            m.targets
                .insert(s, server.as_fd().as_raw_fd(), 0)
                .map_err(io_err)?;
            m.socks
                .insert(c, client.as_fd().as_raw_fd(), 0)
                .map_err(io_err)?;
            m.socks
                .insert(s, server.as_fd().as_raw_fd(), 0)
                .map_err(io_err)?;
        }
        // Bytes that arrived before the socket entered `socks` are still in its receive queue.
        crate::backend::relaying::kick(client.as_fd())?;
        crate::backend::relaying::kick(server.as_fd())?;
        Ok(joined)
    }

    /// Adds every open session's new bytes to its counters: called before the stats are read.
    pub fn flush(&self) {
        let mut live = self.lock_live();
        let maps = self.lock_maps();
        for (_, l) in live.iter_mut() {
            l.flush(&maps.links);
        }
    }

    // Always `live` before `maps` where both are taken.
    fn lock_live(&self) -> std::sync::MutexGuard<'_, Slab<Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kernel's id of the loaded program: it stays loaded while anything holds a reference to
    /// it (this process's maps, a socket's psock), so its absence after the proxy stops shows that
    /// nothing was left behind. For tests and the leak check.
    pub fn program_id(&self) -> Option<u32> {
        self.program_id
    }

    /// Entries in the maps now: `(socks, targets, links)`. For tests and the leak check.
    pub fn entries(&self) -> (usize, usize, usize) {
        let m = self.lock_maps();
        let n = |it: &mut dyn Iterator<Item = Result<u64, aya::maps::MapError>>| it.count();
        (
            n(&mut m.socks.keys()),
            n(&mut m.targets.keys()),
            n(&mut m.links.keys()),
        )
    }
}

/// A session's sockets in the maps; dropping it counts their last bytes and takes them out
/// (before the sockets close).
#[derive(Debug)]
pub struct Joined {
    map: Arc<Sockmap>,
    /// The session in `live`.
    key: usize,
}

/// What the program counted on one socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    /// Bytes that arrived on it and were redirected to its peer.
    pub bytes: u64,
    /// CLOCK_MONOTONIC nanoseconds of the last segment, 0 = none yet.
    pub last_ns: u64,
}

impl Joined {
    /// Adds the session's new bytes to its counters; returns the client's and the server's
    /// counts (zero where the lookup fails).
    pub fn flush(&self) -> [Counted; 2] {
        let mut live = self.map.lock_live();
        let maps = self.map.lock_maps();
        match live.get_mut(self.key) {
            Some(l) => l.flush(&maps.links),
            None => [Counted::default(); 2],
        }
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        let mut live = self.map.lock_live();
        let mut m = self.map.lock_maps();
        let Some(mut l) = live.try_remove(self.key) else {
            return;
        };
        l.flush(&m.links);
        for c in l.cookies {
            // `socks` first: no segment is redirected from a socket whose link is gone. A socket
            // that already closed has left the socket maps by itself (ENOENT here).
            let _ = m.socks.remove(&c);
            let _ = m.targets.remove(&c);
            let _ = m.links.remove(&c);
        }
    }
}

/// An error and its sources, the kernel's answer (errno) last.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        next = cause.source();
    }
    s
}

fn cookie(fd: impl AsFd) -> io::Result<u64> {
    Ok(rustix::net::sockopt::socket_cookie(fd)?)
}

fn io_err(e: aya::maps::MapError) -> io::Error {
    match e {
        aya::maps::MapError::SyscallError(s) => s.io_error,
        other => io::Error::other(other.to_string()),
    }
}

/// The error with its source chain; a verifier refusal carries the verifier's log.
fn describe(what: &str, e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            format!("{what}: {io_error}; verifier log: {verifier_log}")
        }
        aya::programs::ProgramError::SyscallError(s) => {
            format!("{what}: {}: {}", s.call, s.io_error)
        }
        other => format!("{what}: {}", chain(other)),
    }
}

#[cfg(test)]
mod tests;
