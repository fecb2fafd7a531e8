//! Config files, the `check` command and `import-haproxy`, through the library and the built binary.
//! The import's cases are in `config/import.rs`, the property tests of both parsers in
//! `config/properties.rs`; the fixtures they read are under `config/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use patroni_proxy::config::{limits, Config};
use patroni_proxy::import;

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config")
        .join(sub)
}

fn files(sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures in {sub}");
    v
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patroni-proxy"))
}

#[test]
fn every_valid_fixture_and_proxy_toml_load() {
    let mut all = files("valid");
    all.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml"));
    for f in all {
        Config::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[test]
fn every_invalid_fixture_fails_naming_its_key() {
    // Each fixture's first line is `# expect: <key>`.
    for f in files("invalid") {
        let text = std::fs::read_to_string(&f).unwrap();
        let key = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: KEY`", f.display()));
        let err = Config::load(&f)
            .expect_err(&f.display().to_string())
            .to_string();
        assert!(
            err.contains(&format!("`{key}`")),
            "{}: error does not name `{key}`:\n{err}",
            f.display()
        );
        // A key that is in the file is located; a missing one (no servers) cannot be.
        let leaf = key.rsplit('.').next().unwrap().split('[').next().unwrap();
        if text.lines().skip(1).any(|l| l.contains(leaf)) {
            assert!(
                err.contains("line "),
                "{}: error has no line:\n{err}",
                f.display()
            );
        }
    }
}

#[test]
fn check_command_prints_the_effective_settings_or_fails_with_exit_64() {
    let ok = bin()
        .args(["check", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml"))
        .output()
        .unwrap();
    assert!(ok.status.success());
    let out = String::from_utf8(ok.stdout).unwrap();
    assert!(out.contains("every 3s"), "{out}");
    assert!(out.contains("rise 2 fall 3, timeout 5s"), "{out}");
    assert!(
        out.contains("tcp keepalive: client on, server on (idle 1m, probe every 10s, 6 probes)"),
        "{out}"
    );
    assert!(
        out.contains(
            "server postgresql_127.0.0.12_5432 127.0.0.12:5432 maxconn 100 check 127.0.0.12:8008"
        ),
        "{out}"
    );

    let bad = bin()
        .args(["check", "--config"])
        .arg(dir("invalid").join("zero-inter.toml"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    let err = String::from_utf8(bad.stderr).unwrap();
    assert!(
        err.contains("check.inter") && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn check_reads_the_etcd_certificate_files_and_shows_the_etcd_settings() {
    // An unreadable CA file is a configuration error at `check` (and at start-up), naming the
    // key and the file, not a watch that silently never starts.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, ca: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[etcd]\nendpoints = [\"127.0.0.22:2379\", \"https://etcd3:2379\"]\nscope = \"postgres\"\n\
                 username = \"proxy\"\npassword = \"p\"\nca_file = \"{ca}\"\n\
                 [[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n"
            ),
        )
        .unwrap();
        path
    };
    let missing = dir.path().join("missing-ca.pem");
    let bad = bin()
        .args(["check", "--config"])
        .arg(write("bad.toml", &missing.display().to_string()))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    let err = String::from_utf8(bad.stderr).unwrap();
    assert!(
        err.contains("etcd.ca_file") && err.contains("missing-ca.pem"),
        "{err}"
    );
    let ca = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let ok = bin()
        .args(["check", "--config"])
        .arg(write("ok.toml", &ca_path.display().to_string()))
        .output()
        .unwrap();
    let out = String::from_utf8(ok.stdout).unwrap();
    assert!(ok.status.success(), "{out}");
    assert!(
        out.contains("via 127.0.0.22:2379, https://etcd3:2379 (tried in turn), keys and leader lease re-read every 5s"),
        "{out}"
    );
    assert!(
        out.contains("etcd authentication as user \"proxy\", TLS CA "),
        "{out}"
    );
    assert!(
        !out.contains("\"p\""),
        "the password is not printed:\n{out}"
    );
}

#[test]
fn check_method_and_version_are_closed_sets() {
    // Issue 12: validation accepted POST while its message said "use GET, HEAD or OPTIONS".
    for method in ["POST", "get", "BREW"] {
        let e = Config::from_toml(&with_server(&format!("[check]\nmethod = \"{method}\"")))
            .expect_err(method)
            .to_string();
        assert!(
            e.contains("key `check.method`")
                && e.contains("line 2")
                && e.contains(&format!(
                    "unsupported method \"{method}\": use GET, HEAD or OPTIONS"
                )),
            "{e}"
        );
    }
    let e = Config::from_toml(&with_server("[check]\nversion = \"HTTP/2\""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("key `check.version`")
            && e.contains("line 2")
            && e.contains("unsupported version \"HTTP/2\": use HTTP/1.0 or HTTP/1.1"),
        "{e}"
    );
    for method in ["GET", "HEAD", "OPTIONS"] {
        for version in ["HTTP/1.0", "HTTP/1.1"] {
            let c = Config::from_toml(&with_server(&format!(
                "[check]\nmethod = \"{method}\"\nversion = \"{version}\""
            )))
            .unwrap();
            assert_eq!(
                (c.check.method.as_str(), c.check.version.as_str()),
                (method, version)
            );
            let text = toml::to_string(&c.to_file()).unwrap();
            assert!(text.contains(&format!("method = \"{method}\"")), "{text}");
            assert_eq!(Config::from_toml(&text).unwrap(), c);
        }
    }

    // The import refuses them at the `option httpchk` line, with the same message.
    let seed = std::fs::read_to_string(dir("seed-haproxy.cfg")).unwrap();
    for (args, says) in [
        (
            "POST / HTTP/1.1",
            "unsupported method \"POST\": use GET, HEAD or OPTIONS",
        ),
        (
            "GET / HTTP/2",
            "unsupported version \"HTTP/2\": use HTTP/1.0 or HTTP/1.1",
        ),
    ] {
        let text = seed.replacen(
            "    option httpchk\n",
            &format!("    option httpchk {args}\n"),
            1,
        );
        let e = import::import(&text).expect_err(args);
        let line = text.lines().nth(e.line.saturating_sub(1)).unwrap_or("");
        assert_eq!(e.directive, "option httpchk", "{e}");
        assert!(line.contains(args), "{e} points at {line:?}");
        assert!(e.message.contains(says), "{e}");
    }
    let text = seed.replacen(
        "    option httpchk\n",
        "    option httpchk HEAD / HTTP/1.1\n",
        1,
    );
    let c = import::import(&text).unwrap();
    assert_eq!(
        (c.check.method.as_str(), c.check.version.as_str()),
        ("HEAD", "HTTP/1.1")
    );
}

#[test]
fn the_log_goes_to_stderr_and_stdout_stays_empty() {
    // README: "Logging goes to stderr". The e2e harness and service managers read the start line
    // (with the bound addresses) there.
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    use std::time::Duration;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("proxy.toml");
    std::fs::write(
        &cfg,
        "[listen]\nbind = \"127.0.0.1:0\"\n[stats]\nbind = \"127.0.0.1:0\"\n\
         [[server]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let mut child = bin()
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("patroni-proxy started") {
                let _ = tx.send(line);
            }
        }
    });
    let started = rx.recv_timeout(Duration::from_secs(10));
    child.kill().unwrap();
    child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        started.is_ok(),
        "no start line on stderr; stdout had:\n{out}"
    );
    assert!(
        started.unwrap().contains("127.0.0.1:"),
        "the start line names the bound address"
    );
    assert_eq!(out, "", "nothing on stdout");
}

// ---- Issue 11 item 8: every duration and count has a range; nothing that parses can panic later.

fn with_server(extra: &str) -> String {
    format!("{extra}\n[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n")
}

#[test]
fn values_outside_their_range_are_refused_naming_key_value_range_and_line() {
    // Before: all of these loaded, and the durations overflowed `Instant + Duration` at run time.
    let cases = [
        (
            "[listen]\ntimeout_client = \"18446744073709551615s\"",
            "listen.timeout_client",
            "1ms to 7days",
        ),
        (
            "[check]\ninter = \"584542046090years\"",
            "check.inter",
            "10ms to 1h",
        ),
        ("[check]\nrise = 4294967295", "check.rise", "1 to 1000"),
        ("[check]\nfall = 4294967295", "check.fall", "1 to 1000"),
        (
            "[listen]\nretries = 4294967295",
            "listen.retries",
            "0 to 100",
        ),
        (
            "[global]\nmaxconn = 4294967295",
            "global.maxconn",
            "1 to 1000000",
        ),
        (
            "[global]\nshutdown_grace = \"1000h\"",
            "global.shutdown_grace",
            "1ms to 1h",
        ),
        (
            "[listen]\nhold_timeout = \"99999999999s\"",
            "listen.hold_timeout",
            "1ms to 1h",
        ),
    ];
    for (extra, key, range) in cases {
        let e = Config::from_toml(&with_server(extra))
            .expect_err(extra)
            .to_string();
        assert!(
            e.contains(&format!("key `{key}`")) && e.contains("line 2, column "),
            "{extra}: {e}"
        );
        assert!(e.contains(&format!(" {range}")), "{extra}: {e}");
    }
    // The value as read is named too.
    let e = Config::from_toml(&with_server("[check]\nrise = 4294967295"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("4294967295 is out of range"), "{e}");
}

#[test]
fn errors_locate_keys_however_they_are_written() {
    // Issue 12: keys are found from the parser's spans. The hand-written locator read
    // `[check] # comment` as a table named `check] # comment`, and found no position for dotted
    // keys, inline tables or entries of an inline array.
    let inline_servers = "server = [{ name = \"a\", address = \"127.0.0.11:5432\" },\n  \
                          { name = \"a\", address = \"127.0.0.12:5432\" }]\n";
    let cases = [
        (
            with_server("[check] # the health check\ninter = \"0s\""),
            "key `check.inter`: TOML parse error at line 2, column 9",
            "allowed: 10ms to 1h",
        ),
        (
            with_server("check = { inter = \"0s\" }"),
            "key `check.inter`: TOML parse error at line 1, column 19",
            "allowed: 10ms to 1h",
        ),
        (
            with_server("check.uri = \"primary\""),
            "key `check.uri` (line 1, column 7): ",
            "it must start with `/`",
        ),
        (
            with_server("[check]\n  uri   =   \"primary\""),
            "key `check.uri` (line 2, column 3): ",
            "it must start with `/`",
        ),
        (
            inline_servers.to_string(),
            "key `server[1].name` (line 2, column 5): ",
            "duplicate server name",
        ),
        (
            format!(
                "{}[[server]]\nname = \"b\"\naddress = \"db 1:5432\"\n",
                with_server("")
            ),
            "key `server[1].address`: TOML parse error at line 7, column 11",
            "\"db 1:5432\": host name \"db 1\" contains ' '",
        ),
    ];
    for (text, at, says) in cases {
        let e = Config::from_toml(&text).expect_err(&text).to_string();
        assert!(e.starts_with(at) && e.contains(says), "{text}\n->\n{e}");
    }
}

#[test]
fn duration_strings_that_overflow_are_errors_not_panics() {
    // humantime 2.4 panics on the first two (chronotope/humantime#66); the rest overflow u64.
    for value in [
        "18446744073709551615s 1000000000ns",
        "18446744073709551615s 999999999ns 1ns",
        "18446744073709551615s",
        "99999999999999999999h",
        "1e19s",
        "584542046090y 26w",
    ] {
        let text = with_server(&format!("[check]\ninter = \"{value}\""));
        let e = Config::from_toml(&text).expect_err(value).to_string();
        assert!(e.contains("check.inter") && e.contains("line 2"), "{e}");
    }
}

#[test]
fn every_range_is_documented_in_the_configuration_reference() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    for (key, limit) in limits::LIMITS {
        let shown = match key.strip_prefix("server.") {
            Some(leaf) => format!("`[[server]] {leaf}`"),
            None => format!("`{key}`"),
        };
        let row = doc
            .lines()
            .find(|l| l.starts_with("| ") && l.contains(&shown))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for {shown}"));
        assert!(
            row.contains(&format!("| {limit} |")),
            "the row of {shown} does not give the range {limit}:\n{row}"
        );
    }
}

// ---- TCP keepalive (issue 11, "Also").

#[test]
fn keepalive_is_on_by_default_and_reaches_the_socket() {
    use socket2::{Domain, Socket, Type};
    use std::time::Duration;
    let c = Config::from_toml(&with_server("")).unwrap();
    assert!(c.listen.client_keepalive && c.listen.server_keepalive);
    let cases = [
        (c.clone(), 60, 10, 6),
        // The ends of the ranges are values Linux accepts.
        (
            Config::from_toml(&with_server(
                "[listen]\nkeepalive_idle = \"2h\"\nkeepalive_interval = \"10m\"\nkeepalive_count = 100",
            ))
            .unwrap(),
            7200,
            600,
            100,
        ),
        (
            Config::from_toml(&with_server(
                "[listen]\nkeepalive_idle = \"1s\"\nkeepalive_interval = \"1s\"\nkeepalive_count = 1",
            ))
            .unwrap(),
            1,
            1,
            1,
        ),
    ];
    for (c, idle, interval, count) in cases {
        for ka in [c.client_keepalive(), c.server_keepalive()] {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_tcp_keepalive(&ka.expect("on by default")).unwrap();
            assert!(s.keepalive().unwrap());
            assert_eq!(s.keepalive_time().unwrap(), Duration::from_secs(idle));
            assert_eq!(
                s.keepalive_interval().unwrap(),
                Duration::from_secs(interval)
            );
            assert_eq!(s.keepalive_retries().unwrap(), count);
        }
    }
    let off = Config::from_toml(&with_server(
        "[listen]\nclient_keepalive = false\nserver_keepalive = false",
    ))
    .unwrap();
    assert!(off.client_keepalive().is_none() && off.server_keepalive().is_none());
    let text = toml::to_string(&off.to_file()).unwrap();
    assert_eq!(Config::from_toml(&text).unwrap(), off);
}

#[test]
fn keepalive_settings_round_trip_through_toml() {
    let c = Config::from_toml(&with_server(
        "[listen]\nserver_keepalive = false\nkeepalive_idle = \"30s\"\nkeepalive_interval = \"5s\"\nkeepalive_count = 3",
    ))
    .unwrap();
    let text = toml::to_string(&c.to_file()).unwrap();
    assert!(text.contains("keepalive_idle = \"30s\""), "{text}");
    assert_eq!(Config::from_toml(&text).unwrap(), c);
}

#[path = "config/import.rs"]
mod import_haproxy;

#[path = "config/properties.rs"]
mod properties;

#[path = "config/corpus.rs"]
mod corpus;
