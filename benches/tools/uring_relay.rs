//! A measuring stick, not a product: the least a user-space relay can do per message with io_uring,
//! to measure what is left in user space beside the kernel relay (issue 17; docs/benchmarks.md).
//!
//! It reads the config `benches/compare` writes (`listen.bind`, the one server's `address`,
//! `stats.bind`), answers `GET /ready` on the stats address, and relays each client to the server
//! with one ring per thread (one thread per CPU, as `global.threads`): a `recv` and then a `send`
//! per message and direction, every thread's pending operations submitted and reaped in one
//! `io_uring_enter` per loop. No health checks, no startup inspection, no counters: whatever it
//! gains over `patroni-proxy` is the most a real relay built on io_uring could gain.
//!
//! `cargo build --release --example uring_relay`, then
//! `bash benches/run.sh --rows pgbench1,pgbench16,pingpong --also uring=target/release/examples/uring_relay`.

// io_uring's submissions hand the kernel raw pointers into buffers this program owns: each buffer
// lives in its session, which is freed only after both directions' operations have completed.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring};
use slab::Slab;

const BUF: usize = 16 * 1024;
const ACCEPT: u64 = u64::MAX;

/// One direction of a session: bytes read from `from`, being written to `to`.
struct Direction {
    from: RawFd,
    to: RawFd,
    buf: Box<[u8; BUF]>,
    /// Bytes in `buf` and how many of them are sent.
    len: usize,
    sent: usize,
    /// An operation of this direction is in the ring.
    busy: bool,
    done: bool,
}

struct Session {
    client: TcpStream,
    server: TcpStream,
    dirs: [Direction; 2],
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .iter()
        .position(|a| a == "--config" || a == "-c")
        .and_then(|i| args.get(i + 1))
        .expect("--config PATH");
    let cfg: toml::Value = std::fs::read_to_string(path)
        .expect("read the config")
        .parse()
        .expect("parse the config");
    let addr = |v: Option<&toml::Value>| -> SocketAddr {
        v.and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok())
            .expect("an address")
    };
    let bind = addr(cfg.get("listen").and_then(|l| l.get("bind")));
    let stats = addr(cfg.get("stats").and_then(|l| l.get("bind")));
    let server = addr(
        cfg.get("server")
            .and_then(|s| s.as_array())
            .and_then(|s| s.first())
            .and_then(|s| s.get("address")),
    );
    let listener = TcpListener::bind(bind).expect("bind");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for _ in 0..threads {
        let l = listener.try_clone().expect("dup the listener");
        std::thread::spawn(move || relay(l, server));
    }
    // `/ready` for the harness: always ready (no checks).
    let stats = TcpListener::bind(stats).expect("bind stats");
    for s in stats.incoming() {
        let Ok(mut s) = s else { continue };
        let mut req = [0u8; 1024];
        let _ = s.read(&mut req);
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
    }
}

fn relay(listener: TcpListener, server: SocketAddr) {
    let mut ring = IoUring::new(1024).expect("io_uring");
    let mut sessions: Slab<Session> = Slab::new();
    let lfd = listener.as_raw_fd();
    let accept = opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
        .build()
        .user_data(ACCEPT);
    // SAFETY: the entry points at nothing of ours.
    unsafe { ring.submission().push(&accept).expect("room for accept") };
    loop {
        ring.submit_and_wait(1).expect("io_uring_enter");
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (data, res) in done {
            if data == ACCEPT {
                if res >= 0 {
                    // SAFETY: the kernel just gave us this descriptor.
                    let client = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(res) };
                    if let Ok(upstream) = TcpStream::connect(server) {
                        let _ = client.set_nodelay(true);
                        let _ = upstream.set_nodelay(true);
                        let (c, s) = (client.as_raw_fd(), upstream.as_raw_fd());
                        let dir = |from, to| Direction {
                            from,
                            to,
                            buf: Box::new([0; BUF]),
                            len: 0,
                            sent: 0,
                            busy: false,
                            done: false,
                        };
                        let key = sessions.insert(Session {
                            client,
                            server: upstream,
                            dirs: [dir(c, s), dir(s, c)],
                        });
                        for d in 0..2 {
                            next(&mut ring, &mut sessions[key].dirs[d], key, d);
                        }
                    }
                }
                // SAFETY: as above.
                unsafe { ring.submission().push(&accept).expect("room for accept") };
                continue;
            }
            let (key, d) = ((data >> 1) as usize, (data & 1) as usize);
            let Some(s) = sessions.get_mut(key) else {
                continue;
            };
            let dir = &mut s.dirs[d];
            dir.busy = false;
            if dir.len == 0 {
                // A recv completed.
                if res <= 0 {
                    dir.done = true;
                    // Pass the end of stream on.
                    let _ = rustix::net::shutdown(
                        unsafe { std::os::fd::BorrowedFd::borrow_raw(dir.to) },
                        rustix::net::Shutdown::Write,
                    );
                } else {
                    dir.len = res as usize;
                    dir.sent = 0;
                }
            } else if res <= 0 {
                dir.done = true;
            } else {
                dir.sent += res as usize;
                if dir.sent == dir.len {
                    dir.len = 0;
                }
            }
            if !dir.done {
                next(&mut ring, dir, key, d);
            }
            let s = &sessions[key];
            if s.dirs.iter().all(|d| d.done && !d.busy) {
                let s = sessions.remove(key);
                drop((s.client, s.server));
            }
        }
    }
}

/// Queues the direction's next operation: a `send` of what is left, else a `recv`.
fn next(ring: &mut IoUring, dir: &mut Direction, key: usize, d: usize) {
    let data = ((key as u64) << 1) | d as u64;
    let e = if dir.len > 0 {
        let rest = &dir.buf[dir.sent..dir.len];
        opcode::Send::new(types::Fd(dir.to), rest.as_ptr(), rest.len() as u32)
            .build()
            .user_data(data)
    } else {
        opcode::Recv::new(types::Fd(dir.from), dir.buf.as_mut_ptr(), BUF as u32)
            .build()
            .user_data(data)
    };
    dir.busy = true;
    // SAFETY: `dir.buf` lives in its session until both directions are done and idle.
    while unsafe { ring.submission().push(&e) }.is_err() {
        ring.submit().expect("io_uring_enter");
    }
}
