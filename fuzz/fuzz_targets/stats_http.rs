//! The stats listener's HTTP side: arbitrary bytes as one HTTP/1 connection (pipelined requests,
//! broken heads, bodies, huge headers), served by the real router with the server's hyper settings
//! over an in-memory pipe. The connection must end once the client has sent everything and closed.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use libfuzzer_sys::fuzz_target;
use patroni_proxy::config::Config;
use patroni_proxy::state::Shared;
use patroni_proxy::stats::{self, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    /// Without and with `[stats] auth` (the Basic-auth path reads a header).
    routers: [axum::Router; 2],
}

const SERVER: &str = "[[server]]\nname = \"a\"\naddress = \"127.0.0.1:5432\"\n";

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
        let router = |toml: &str| {
            let cfg = Config::from_toml(toml).expect("the fixed config is valid");
            let stats = Arc::new(stats::Stats::new(&cfg));
            stats::router(Shared::detached(Arc::new(cfg)), stats, Limits::default())
        };
        let with_auth = format!("{SERVER}[stats]\nauth = \"admin:secret\"\n");
        World {
            routers: [router(SERVER), router(&with_auth)],
            rt,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, input)) = data.split_first() else {
        return;
    };
    let w = world();
    let router = w.routers[usize::from(select & 1)].clone();
    let limits = Limits::default();
    w.rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        // As `stats::server::serve_with` builds each connection.
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_head)
            .keep_alive(true);
        let conn = http.serve_connection(TokioIo::new(server), TowerToHyperService::new(router));
        let talk = async {
            // The server may close early (a 4xx with `Connection: close`): writes then fail.
            let _ = client.write_all(input).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
        };
        let both = async { tokio::join!(conn, talk) };
        // An error ending the connection (a malformed head, a timeout) is an answer too.
        let (_ended, ()) = tokio::time::timeout(Duration::from_secs(3), both)
            .await
            .expect("the stats connection ends once the client has sent everything and closed");
    });
});
