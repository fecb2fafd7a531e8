//! The `patroni-proxy` binary: parse the command line, load and check the config, set up logging,
//! bind, run until a signal, drain, exit. All the work lives in the library.

mod gendocs;
mod runtime;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use patroni_proxy::config::Config;
use patroni_proxy::supervisor::{self, Listeners};

/// An L4 proxy that sends every PostgreSQL connection to the current Patroni primary.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = "proxy.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print the effective settings (like `haproxy -c`).
    Check {
        /// Also run the SQL check (`[check.sql]`) once against every server, and exit 64 if
        /// any refuses the monitoring role's login (a wrong password, no pg_hba.conf line, TLS).
        #[arg(long)]
        sql: bool,
    },
    /// Convert an HAProxy configuration in front of Patroni into proxy.toml (stdout); lines
    /// without an equivalent are warnings on stderr and comments in the output.
    ImportHaproxy {
        /// The haproxy.cfg to read.
        file: PathBuf,
        /// Print how each listener will route instead of the TOML.
        #[arg(long)]
        check: bool,
    },
    /// Make the running proxy (the one serving this configuration's stats.bind) read its
    /// configuration file again: sends it SIGHUP and waits for the outcome, which it prints; exits
    /// non-zero if the reload was refused (the proxy then keeps its running configuration).
    Reload {
        /// The proxy's pid (systemd's $MAINPID): signalled even when this configuration's
        /// stats.bind does not answer yet (the file moves it); the outcome is then read at the new
        /// address.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Runtime control of a running proxy through its stats listener's admin API ([stats]
    /// admin_user; the password from PATRONI_PROXY_ADMIN_PASSWORD or the file).
    Ctl {
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Print a completion script for SHELL (stdout), e.g. to
    /// /usr/share/bash-completion/completions/patroni-proxy.
    Completions { shell: clap_complete::Shell },
    /// Print the man page, roff (stdout): the Debian package's patroni-proxy(1).
    #[command(hide = true)]
    Man,
}

#[derive(Subcommand)]
enum CtlAction {
    /// No new sessions to SERVER; open ones continue (HAProxy's DRAIN).
    Drain { server: String },
    /// SERVER is treated as down: no new sessions, open ones cut per on_marked_down (MAINT).
    Maint { server: String },
    /// SERVER's checks decide again (HAProxy's READY).
    Ready { server: String },
    /// Every server's state, the administrative one included, as JSON.
    Show,
}

/// Writes a command's output to stdout. A reader that went away (`patroni-proxy check | head`)
/// ends the command quietly, as other Unix tools do, instead of Rust's panic on a broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($arg:tt)*) => {{
        out!($($arg)*);
        out!("\n");
    }};
}

/// sysexits' EX_CONFIG-style code for an unusable configuration, as linkerd2-proxy uses.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::ImportHaproxy { file, check }) => import(&file, check),
        Some(Command::Completions { shell }) => gendocs::completions::<Cli>(shell),
        Some(Command::Man) => gendocs::man::<Cli>(),
        Some(Command::Check { sql }) => match Config::load(&cli.config) {
            Ok(c) => match etcd_files(&c) {
                Ok(()) => {
                    out!("{}: OK\n{c}", cli.config.display());
                    if sql {
                        sql_once(&c)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            },
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Some(Command::Ctl { action }) => ctl(&cli.config, action),
        Some(Command::Reload { pid }) => reload(&cli.config, pid),
        None => run(&cli.config),
    }
}

fn ctl(path: &std::path::Path, action: CtlAction) -> ExitCode {
    use patroni_proxy::ctl::{self, Request};
    use patroni_proxy::routing::AdminState;
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let set = |server, state| Request::Set { server, state };
    let request = match action {
        CtlAction::Drain { server } => set(server, AdminState::Drain),
        CtlAction::Maint { server } => set(server, AdminState::Maint),
        CtlAction::Ready { server } => set(server, AdminState::Ready),
        CtlAction::Show => Request::Show,
    };
    let runtime = match client_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let password = std::env::var(ctl::PASSWORD_ENV).ok();
    match runtime.block_on(ctl::run(&config, &request, password)) {
        Ok(json) => {
            outln!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The listener for `key`: the inherited socket for `addr` if there is one, else a new one.
async fn listener(
    inherited: &mut patroni_proxy::activation::Inherited,
    addr: std::net::SocketAddr,
    key: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    match inherited.take(addr) {
        Some(l) => {
            tracing::info!(socket = %l.local_addr()?, "{key}: using the socket passed by the service manager (socket activation)");
            l.set_nonblocking(true)?;
            Ok(tokio::net::TcpListener::from_std(l)?)
        }
        None => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({key})")),
    }
}

fn reload(path: &std::path::Path, pid: Option<u32>) -> ExitCode {
    let (config, loaded) = match patroni_proxy::reload::read(path) {
        Ok(c) => c,
        Err(e) => {
            // The running proxy would refuse it too: say so before signalling anything.
            eprintln!("error: {e}\nerror: not reloading: the running configuration is unchanged");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match client_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(patroni_proxy::ctl::reload(&config, &loaded.sha256, pid)) {
        Ok(said) => {
            outln!("{said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn import(file: &std::path::Path, check: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let imported = match patroni_proxy::import::convert(&text, &|name| std::env::var(name).ok()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for n in &imported.notes {
        eprintln!("warning: {}: {n}", file.display());
    }
    // The file is for the machine that runs the proxy: its TLS files are not read here. A
    // version that does not serve everything it asks for says so.
    if let Err(e) = patroni_proxy::config::served_by_this_version(&imported.file) {
        eprintln!("warning: {}: `{}`: {}", file.display(), e.key, e.message);
    }
    if check {
        out!("{}", imported.file.routing());
    } else {
        out!(
            "{}",
            patroni_proxy::import::to_toml(
                &imported.file,
                &imported.notes,
                &file.display().to_string()
            )
        );
    }
    ExitCode::SUCCESS
}

/// The `[etcd]` certificate files, read and parsed as the watch will: an unreadable or malformed
/// one is a configuration error at `check` and at start-up, not a watch that never starts.
fn etcd_files(config: &Config) -> Result<(), String> {
    match &config.etcd {
        Some(e) => patroni_proxy::dcs::client::Client::new(e).map(|_| ()),
        None => Ok(()),
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    // First, while this is the only thread: it clears LISTEN_PID and LISTEN_FDS.
    let inherited = patroni_proxy::activation::Inherited::from_env();
    let (config, loaded) = match patroni_proxy::reload::read(path) {
        Ok((c, loaded)) => (Arc::new(c), loaded),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = etcd_files(&config) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let _log = patroni_proxy::logging::init(config.log.format);
    // A relaying session holds two sockets, and four more (two pipes) while it splices bulk data:
    // the default soft limit (1024) would cap us near 170 busy sessions.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "raised the open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let runtime = match runtime::build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, path, loaded, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: Arc<Config>,
    path: &std::path::Path,
    loaded: patroni_proxy::stats::loaded::Loaded,
    mut inherited: patroni_proxy::activation::Inherited,
) -> anyhow::Result<()> {
    let proxy = listener(&mut inherited, config.listen.bind.first(), "listen.bind").await?;
    let mut proxy_more = Vec::new();
    for &bind in &config.listen.bind.all()[1..] {
        let l = listener(&mut inherited, bind, "listen.bind").await?;
        tracing::info!(listener = %config.listen.name, bind = %l.local_addr()?, "listening");
        proxy_more.push(l);
    }
    let stats = listener(&mut inherited, config.stats.bind, "stats.bind").await?;
    let mut sets = Vec::new();
    for (i, spec) in patroni_proxy::state::sets::specs(&config)
        .into_iter()
        .enumerate()
    {
        let key = format!("listen '{}' bind", spec.name);
        for bind in spec.binds {
            let l = listener(&mut inherited, bind, &key).await?;
            tracing::info!(listener = %spec.name, role = spec.rule.role.as_str(), bind = %l.local_addr()?,
                "listening; no server is routable until a check admits it");
            sets.push((i, l));
        }
    }
    for why in &inherited.refused {
        tracing::warn!("socket activation: {why}; not used");
    }
    for a in inherited.unused() {
        // Clients connecting there would wait in a queue nobody accepts from.
        tracing::error!(socket = %a, "socket activation: a socket was passed for {a}, which \
            neither listen.bind nor stats.bind names; fix the socket unit (ListenStream=) or the \
            config");
    }
    // The bound addresses (not the configured ones): with port 0 they say where we really listen.
    tracing::info!(
        listen = %proxy.local_addr()?,
        stats = %stats.local_addr()?,
        servers = config.servers.len(),
        version = env!("CARGO_PKG_VERSION"),
        "patroni-proxy started; no server is routable until a check confirms the primary"
    );
    // Installed before serving: from here on SIGHUP no longer ends the process.
    let signals = patroni_proxy::signals::Signals::install()?;
    let running = supervisor::start(
        config,
        Listeners {
            proxy,
            proxy_more,
            stats: Some(stats),
            sets,
        },
    );
    // For the dashboard's process line and /stats.json.
    running.stats.config.set_loaded(loaded);
    let reloader = patroni_proxy::reload::Reloader {
        path: path.to_path_buf(),
        shared: running.shared.clone(),
        stats: running.stats.clone(),
        move_to: running.move_to.clone(),
        stats_move_to: running.stats_move_to.clone(),
    };
    patroni_proxy::signals::serve_until_stopped(running, signals, Some(reloader)).await
}

/// `check --sql`: one SQL check per server, one line each; a refused login is a configuration
/// error (exit 64), a node that does not answer is not.
fn sql_once(config: &Config) -> ExitCode {
    use patroni_proxy::health::sql::{self, Verdict};
    let Some(spec) = config.sql_check() else {
        eprintln!("error: --sql: the configuration has no [check.sql]");
        return ExitCode::from(EXIT_CONFIG);
    };
    let runtime = match client_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut refused = 0;
    for s in &config.servers {
        // A host name is resolved here as the running proxy would (the system resolver).
        let address = runtime.block_on(async {
            match s.address.ip_addr() {
                Some(a) => Ok(a),
                None => tokio::net::lookup_host(s.address.to_string())
                    .await
                    .and_then(|mut a| a.next().ok_or_else(|| std::io::Error::other("no address"))),
            }
        });
        let address = match address {
            Ok(a) => a,
            Err(e) => {
                outln!(
                    "SQL check of {} ({}): not run: host name does not resolve: {e}",
                    s.name,
                    s.address
                );
                continue;
            }
        };
        let line = match runtime.block_on(sql::run(address, spec)) {
            Ok(r) => {
                refused += usize::from(matches!(r.verdict, Verdict::Refused { .. }));
                format!(
                    "{} in {} ms{}",
                    r.verdict.describe(),
                    r.duration.as_millis(),
                    if r.tls { " over TLS" } else { "" }
                )
            }
            Err(e) => format!("not run: {e}"),
        };
        outln!("SQL check of {} ({}): {line}", s.name, s.address);
    }
    if refused > 0 {
        eprintln!("error: {refused} server(s) refused the SQL check's login: fix [check.sql]");
        return ExitCode::from(EXIT_CONFIG);
    }
    ExitCode::SUCCESS
}

/// The small runtime of the commands that talk to a running proxy (`ctl`, `reload`).
fn client_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}
