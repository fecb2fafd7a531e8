//! Config files, the `check` command and `import-haproxy`, through the library and the built binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use patroni_proxy::config::Config;
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
    let mut imported = import::import(&seed).unwrap();
    let ours = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml")).unwrap();
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
