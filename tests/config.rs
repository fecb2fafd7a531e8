//! Config files, the `check` command and `import-haproxy`, through the library and the built binary.

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
fn importing_the_seed_haproxy_cfg_gives_proxy_toml_but_the_addresses() {
    // Issue 2: "import of ../shared/reference/haproxy.cfg gives the same settings as proxy.toml except
    // the addresses" (tests/config/seed-haproxy.cfg is a verbatim copy of it).
    let seed = std::fs::read_to_string(dir("seed-haproxy.cfg")).unwrap();
    let mut imported = import::import(&seed).unwrap().into_file();
    let ours = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml"))
        .unwrap()
        .into_file();
    for s in &mut imported.servers {
        // 192.0.2.x in the guide, 127.0.0.x on one machine.
        let loopback = s.address.to_string().replace("192.0.2.", "127.0.0.");
        s.address = loopback.parse().unwrap();
        s.name = s.name.replace("192.0.2.", "127.0.0.");
    }
    // The etcd watch has no HAProxy equivalent.
    imported.etcd = ours.etcd.clone();
    assert_eq!(imported, ours);

    // The printed TOML is itself a valid config with the same meaning.
    let out = bin()
        .arg("import-haproxy")
        .arg(dir("seed-haproxy.cfg"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = Config::from_toml(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(printed, import::import(&seed).unwrap());
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
fn import_rejects_what_it_cannot_carry_over_by_line_and_directive() {
    let seed = std::fs::read_to_string(dir("seed-haproxy.cfg")).unwrap();
    let cases = [
        (
            "    timeout check 5s\n",
            "    timeout check 5s\n    option redispatch\n",
            "option redispatch",
        ),
        (
            "    option httpchk\n",
            "    option httpchk\n    balance leastconn\n",
            "balance",
        ),
        (
            "    maxconn 100\n",
            "    maxconn 100\n    daemon\n",
            "daemon",
        ),
        (" check port 8008\n", " check\n", "server"),
        ("    mode tcp\n", "    mode http\n", "mode"),
    ];
    for (from, to, directive) in cases {
        let text = seed.replacen(from, to, 1);
        let e = import::import(&text).expect_err(directive);
        let line_text = text.lines().nth(e.line.saturating_sub(1)).unwrap_or("");
        assert!(e.directive.starts_with(directive), "{e}");
        assert!(
            line_text.contains(directive.split(' ').next().unwrap()),
            "{e} -> {line_text:?}"
        );
    }
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

#[test]
fn nbthread_becomes_global_threads() {
    // HAProxy's `nbthread` is our `global.threads`; without it, one relay thread per CPU (as
    // HAProxy's default).
    let seed = std::fs::read_to_string(dir("seed-haproxy.cfg")).unwrap();
    let plain = import::import(&seed).unwrap();
    assert_eq!(plain.global.threads, None);
    let text = seed.replacen("    maxconn 100\n", "    maxconn 100\n    nbthread 3\n", 1);
    let c = import::import(&text).unwrap();
    assert_eq!(c.global.threads(), 3);
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
                "{}[[server]]\nname = \"b\"\naddress = \"db1:5432\"\n",
                with_server("")
            ),
            "key `server[1].address`: TOML parse error at line 7, column 11",
            "db1:5432",
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
fn imports_wrap_nothing_and_name_the_line_of_a_value_out_of_range() {
    // Issue 11 item 12: `307445734561825861m` became 44s. Every value the import cannot represent,
    // or `proxy.toml` would refuse, is an error at its line and directive.
    let seed = std::fs::read_to_string(dir("seed-haproxy.cfg")).unwrap();
    let cases = [
        (
            "timeout client 30m",
            "timeout client 307445734561825861m",
            "timeout client",
            "too large",
        ),
        (
            "timeout client 30m",
            "timeout client 5124095576030432h",
            "timeout client",
            "too large",
        ),
        (
            "timeout connect 4s",
            "timeout connect 213503982334602d",
            "timeout connect",
            "too large",
        ),
        (
            "timeout check 5s",
            "timeout check 18446744073709551616",
            "timeout check",
            "too large",
        ),
        (
            "timeout client 30m",
            "timeout client 30d",
            "timeout client",
            "1ms to 7days",
        ),
        (
            "timeout server 30m",
            "timeout server 18446744073709551615s",
            "timeout server",
            "7days",
        ),
        (
            "inter 3s",
            "inter 5ms",
            "default-server inter",
            "10ms to 1h",
        ),
        (
            "rise 2",
            "rise 4294967295",
            "default-server rise",
            "1 to 1000",
        ),
        ("fall 3", "fall 4294967296", "default-server fall", "count"),
        ("retries 2", "retries 4294967295", "retries", "0 to 100"),
        (
            "retries 2",
            "retries 18446744073709551616",
            "retries",
            "count",
        ),
        (
            "    maxconn 100\n",
            "    maxconn 1000001\n",
            "maxconn",
            "1 to 1000000",
        ),
        (
            "maxconn 100 check",
            "maxconn 4000000 check",
            "server maxconn",
            "1 to 1000000",
        ),
    ];
    for (from, to, directive, says) in cases {
        let text = seed.replacen(from, to, 1);
        let e = import::import(&text).expect_err(to);
        let line = text.lines().nth(e.line.saturating_sub(1)).unwrap_or("");
        assert_eq!(e.directive, directive, "{to}: {e}");
        assert!(line.contains(to.trim()), "{to}: {e} points at {line:?}");
        assert!(e.message.contains(says), "{to}: {e}");
    }
    let text = seed.replacen("    maxconn 100\n", "    maxconn 100\n    nbthread 65\n", 1);
    let e = import::import(&text).unwrap_err();
    assert_eq!((e.line, e.directive.as_str()), (3, "nbthread"), "{e}");
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

#[test]
fn import_maps_haproxy_tcpka_options() {
    let seed = std::fs::read_to_string(dir("seed-haproxy.cfg")).unwrap();
    // The seed has no `option *tcpka`: HAProxy's keepalive is off, ours stays on (documented).
    let plain = import::import(&seed).unwrap();
    assert!(plain.listen.client_keepalive && plain.listen.server_keepalive);

    let text = seed.replacen(
        "    retries 2\n",
        "    retries 2\n    option tcpka\n    clitcpka-idle 30\n    srvtcpka-idle 30s\n    \
         clitcpka-intvl 1500ms\n    srvtcpka-cnt 3\n",
        1,
    );
    let c = import::import(&text).unwrap();
    assert_eq!(
        c.listen.keepalive_idle.as_secs(),
        30,
        "bare numbers are seconds"
    );
    assert_eq!(
        c.listen.keepalive_interval.as_secs(),
        2,
        "rounded up to whole seconds, as HAProxy does"
    );
    assert_eq!(c.listen.keepalive_count, 3);

    // `no option` in the listen overrides `option` in defaults, per side.
    let text = seed
        .replacen("    retries 2\n", "    retries 2\n    option tcpka\n", 1)
        .replacen(
            "    option httpchk\n",
            "    option httpchk\n    no option clitcpka\n",
            1,
        );
    let c = import::import(&text).unwrap();
    assert!(!c.listen.client_keepalive && c.listen.server_keepalive);
    let printed = import::to_toml(&c, "x");
    assert!(printed.contains("client_keepalive = false"), "{printed}");
    assert_eq!(Config::from_toml(&printed).unwrap(), c);

    // One shared setting for both sides: differing values are refused at the later line.
    let text = seed.replacen(
        "    retries 2\n",
        "    retries 2\n    clitcpka-cnt 3\n    srvtcpka-cnt 4\n",
        1,
    );
    let e = import::import(&text).unwrap_err();
    assert_eq!((e.line, e.directive.as_str()), (9, "srvtcpka-cnt"), "{e}");
    let text = seed.replacen(
        "    retries 2\n",
        "    retries 2\n    clitcpka-idle 3h\n",
        1,
    );
    let e = import::import(&text).unwrap_err();
    assert_eq!((e.line, e.directive.as_str()), (8, "clitcpka-idle"), "{e}");
    assert!(e.message.contains("1s to 2h"), "{e}");
}

#[test]
fn importing_the_seed_prints_exactly_what_it_did_before_keepalive_existed() {
    // New keys at their defaults are not written: the seed's import output is unchanged.
    let out = bin()
        .arg("import-haproxy")
        .arg(dir("seed-haproxy.cfg"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let expected = std::fs::read_to_string(dir("seed-haproxy.imported.toml")).unwrap();
    // The first line names the source path, which differs between checkouts.
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&printed), body(&expected));
}

// ---- Property tests: no input makes the parsers panic, and an import always loads.

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Numbers as HAProxy files and careless operators write them, huge ones included.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => (1u64..200).prop_map(|n| n.to_string()),
            2 => (0u64..100_000).prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => "[0-9]{15,25}",
            1 => Just("307445734561825861".to_string()),
            1 => Just("4294967295".to_string()),
        ]
    }

    fn time() -> impl Strategy<Value = String> {
        let unit = prop::sample::select(vec!["", "us", "ms", "s", "s", "m", "h", "d", "x"]);
        (number(), unit).prop_map(|(n, u)| format!("{n}{u}"))
    }

    /// Lines allowed in `defaults` and the TCP listen.
    fn shared_line() -> impl Strategy<Value = String> {
        let timeout = prop::sample::select(vec!["client", "server", "connect", "check", "queue"]);
        let ka = prop::sample::select(vec![
            "option tcpka",
            "option clitcpka",
            "option srvtcpka",
            "no option clitcpka",
            "no option srvtcpka",
        ]);
        let ka_time = prop::sample::select(vec![
            "clitcpka-idle",
            "srvtcpka-idle",
            "clitcpka-intvl",
            "srvtcpka-intvl",
        ]);
        let ka_cnt = prop::sample::select(vec!["clitcpka-cnt", "srvtcpka-cnt"]);
        prop_oneof![
            (timeout, time()).prop_map(|(w, t)| format!("timeout {w} {t}")),
            number().prop_map(|n| format!("retries {n}")),
            ka.prop_map(str::to_string),
            (ka_time, time()).prop_map(|(w, t)| format!("{w} {t}")),
            (ka_cnt, number()).prop_map(|(w, n)| format!("{w} {n}")),
        ]
    }

    fn default_server() -> impl Strategy<Value = String> {
        let param = prop_oneof![
            time().prop_map(|t| format!("inter {t}")),
            time().prop_map(|t| format!("fastinter {t}")),
            time().prop_map(|t| format!("downinter {t}")),
            number().prop_map(|n| format!("rise {n}")),
            number().prop_map(|n| format!("fall {n}")),
            number().prop_map(|n| format!("maxconn {n}")),
            Just("on-marked-down shutdown-sessions".to_string()),
        ];
        prop::collection::vec(param, 0..5).prop_map(|p| p.join(" "))
    }

    prop_compose! {
        fn haproxy_cfg()(
            global_maxconn in proptest::option::of(number()),
            nbthread in proptest::option::of(number()),
            defaults in prop::collection::vec(shared_line(), 0..6),
            listen in prop::collection::vec(shared_line(), 0..4),
            frontend_maxconn in proptest::option::of(number()),
            status in number(),
            ds in default_server(),
            servers in prop::collection::vec(proptest::option::of(number()), 1..4),
        ) -> String {
            let mut t = String::from("global\n");
            if let Some(n) = global_maxconn { t += &format!("    maxconn {n}\n"); }
            if let Some(n) = nbthread { t += &format!("    nbthread {n}\n"); }
            t += "defaults\n    mode tcp\n";
            for l in defaults { t += &format!("    {l}\n"); }
            t += "listen postgres\n    bind *:5000\n    option httpchk\n";
            t += &format!("    http-check expect status {status}\n");
            if let Some(n) = frontend_maxconn { t += &format!("    maxconn {n}\n"); }
            for l in listen { t += &format!("    {l}\n"); }
            t += &format!("    default-server {ds}\n");
            for (i, maxconn) in servers.into_iter().enumerate() {
                let m = maxconn.map(|n| format!(" maxconn {n}")).unwrap_or_default();
                t += &format!("    server pg{i} 127.0.0.{}:5432{m} check port 8008\n", 11 + i);
            }
            t
        }
    }

    /// TOML with the config's own keys and duration-ish or numeric values.
    fn toml_text() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            ("global", "maxconn"),
            ("global", "threads"),
            ("global", "shutdown_grace"),
            ("listen", "retries"),
            ("listen", "timeout_connect"),
            ("listen", "timeout_client"),
            ("listen", "timeout_queue"),
            ("listen", "hold_timeout"),
            ("listen", "keepalive_idle"),
            ("listen", "keepalive_interval"),
            ("listen", "keepalive_count"),
            ("check", "inter"),
            ("check", "fastinter"),
            ("check", "rise"),
            ("check", "fall"),
            ("check", "timeout"),
            ("check", "expect_status"),
        ]);
        let value = prop_oneof![
            number(),
            (
                number(),
                prop::sample::select(vec!["ms", "s", "m", "h", "d", "ns", "y", "e19s"])
            )
                .prop_map(|(n, u)| format!("\"{n}{u}\"")),
            (number(), number()).prop_map(|(a, b)| format!("\"{a}s {b}ns\"")),
            Just("\"18446744073709551615s 1000000000ns\"".to_string()),
            "\"[0-9a-z. ]{0,12}\"",
        ];
        prop::collection::vec((key, value), 0..4).prop_map(|kv| {
            let mut t = String::new();
            for ((table, k), v) in kv {
                t += &format!("[{table}]\n{k} = {v}\n");
            }
            t + "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n"
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn an_accepted_import_always_loads_as_proxy_toml(cfg in haproxy_cfg()) {
            if let Ok(c) = import::import(&cfg) {
                let printed = import::to_toml(&c, "generated");
                let back = Config::from_toml(&printed);
                prop_assert!(back.is_ok(), "{cfg}\n->\n{printed}\n{:?}", back.err());
                prop_assert_eq!(back.unwrap(), c);
            }
        }

        #[test]
        fn config_values_never_panic_and_round_trip(text in toml_text()) {
            if let Ok(c) = Config::from_toml(&text) {
                let again = toml::to_string(&c.to_file()).unwrap();
                prop_assert_eq!(Config::from_toml(&again).unwrap(), c);
            }
        }

        #[test]
        fn any_text_is_an_answer_not_a_panic(text in "\\PC*", cfg in haproxy_cfg(), cut in any::<prop::sample::Index>()) {
            let _ = Config::from_toml(&text);
            let _ = import::import(&text);
            // A generated file cut anywhere (at a character boundary).
            let at = cut.index(cfg.len() + 1);
            if let Some(head) = cfg.get(..at) {
                let _ = import::import(head);
            }
        }
    }
}
