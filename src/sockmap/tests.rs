//! The kernel relay's maps on real sockets: bytes move without the proxy, the program counts
//! them, and a session leaves nothing in the maps. Loading the program needs `CAP_BPF` and
//! `CAP_NET_ADMIN`: without them each test says so and passes (the fallback has its own tests).

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn loaded() -> Option<Arc<Sockmap>> {
    match Sockmap::load() {
        Ok(m) => Some(m),
        Err(why) => {
            eprintln!("kernel relay not tested here: {why}");
            None
        }
    }
}

fn counters() -> Counters {
    Counters {
        frontend: Arc::default(),
        backend: Arc::new(Backend::new(10)),
    }
}

/// A connected pair: (the far end, the proxy's end).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let far = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (near, _) = l.accept().unwrap();
    (far, near)
}

fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn bytes_move_both_ways_are_counted_and_the_maps_empty_after() {
    let Some(map) = loaded() else { return };
    let (mut app, client) = pair();
    let (server, mut db) = pair();
    // Sent before the sockets join: waits in the receive queue until the join kicks it on.
    app.write_all(b"early").unwrap();
    // Let it arrive (a read on the proxy's side would consume it).
    let deadline = Instant::now() + Duration::from_secs(5);
    while crate::backend::relaying::bytes_received(&client, Some(false)) != Some(5) {
        assert!(Instant::now() < deadline, "the early bytes never arrived");
        std::thread::yield_now();
    }
    assert_eq!(map.entries(), (0, 0, 0));
    let joined = map.join(&client, &server, counters()).unwrap();
    assert_eq!(map.entries(), (2, 2, 2));
    assert_eq!(read_exactly(&mut db, 5), b"early");
    db.write_all(b"answer!").unwrap();
    assert_eq!(read_exactly(&mut app, 7), b"answer!");
    let big = vec![7u8; 1 << 20];
    app.write_all(&big).unwrap();
    assert_eq!(read_exactly(&mut db, big.len()), big);
    let counted = joined.flush();
    assert_eq!(counted.map(|c| c.bytes), [5 + (1 << 20), 7]);
    assert!(counted.iter().all(|c| c.last_ns > 0));
    drop(joined);
    assert_eq!(map.entries(), (0, 0, 0), "a session leaves nothing behind");
    // Out of the maps, the sockets are plain sockets again.
    app.write_all(b"x").unwrap();
    let mut near = client;
    assert_eq!(read_exactly(&mut near, 1), b"x");
}

#[test]
fn a_closed_socket_leaves_the_socket_maps_by_itself() {
    let Some(map) = loaded() else { return };
    let (_app, client) = pair();
    let (server, _db) = pair();
    let joined = map.join(&client, &server, counters()).unwrap();
    drop(client);
    drop(server);
    assert_eq!(map.entries(), (0, 0, 2));
    drop(joined);
    assert_eq!(map.entries(), (0, 0, 0));
}
