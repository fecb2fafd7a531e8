//! `import-haproxy` against real HAProxy files people run in front of Patroni
//! (`../shared/reference/haproxy-corpus/`, third-party, read in place and never copied here), and
//! against one fixture per shape (`tests/fixtures/import/NAME.cfg` with the expected
//! `NAME.toml`, both written for this project).

use super::*;
use patroni_proxy::config::{Balance, ByteSize, Fallback, Role};
use std::time::Duration;

fn corpus(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/haproxy-corpus")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Variables the corpus files reference, as their deployments would set them.
fn env(name: &str) -> Option<String> {
    Some(
        match name {
            "INT_HAPROXY_STATS_PORT" => "7000",
            "INT_HAPROXY_RW_PORT" => "5000",
            "INT_HAPROXY_RO_PORT" => "5001",
            "INT_PATRONI_PORT" => "8008",
            "INT_PG_PORT" => "5432",
            "HAPROXY_STATS_USER" | "ADMIN_HAPROXY_USER" => "ops",
            "HAPROXY_STATS_PASSWORD" | "ADMIN_HAPROXY_PASSWORD" | "STATS_PASSWORD" => "s3cret",
            n if n.starts_with("HAPROXY_WEIGHT_NODE") => "100",
            n if n.starts_with("PATRONI") && n.ends_with("_PRIVATE_DOMAIN") => {
                return Some(format!("10.0.0.{}", &n[7..8]))
            }
            _ => return None,
        }
        .to_string(),
    )
}

enum Outcome {
    /// Converts, with these roles per listener.
    Converts(&'static [Role]),
    /// Refused at this line, the message containing this text.
    Refused(usize, &'static str),
}

#[test]
fn every_corpus_file_converts_or_is_refused_for_its_stated_reason() {
    use Outcome::*;
    use Role::*;
    let cases: [(&str, Outcome); 19] = [
        ("01-patroni-haproxy.cfg", Converts(&[Primary])),
        // `/sync` and `/async?lag=100MB` become roles sync and async.
        (
            "02-vitabaks-postgresql-cluster.cfg",
            Converts(&[Primary, Replica, Sync, Async]),
        ),
        (
            "03-pigsty-pg-test.cfg",
            Converts(&[Primary, Replica, Primary, Replica]),
        ),
        (
            "04-technotim-frontend-backend-checkssl.cfg",
            Converts(&[Primary]),
        ),
        (
            "05-rd-tony-blog-ubuntu-default-plus-patroni.cfg",
            Converts(&[Primary]),
        ),
        (
            "06-percona-docs-ha-haproxy.cfg",
            Converts(&[Primary, Replica]),
        ),
        // Its stats page over TLS is kept on 127.0.0.1 (noted).
        (
            "07-jmrenouard-patroni-lab-rhel8-ssl-envvars.cfg",
            Converts(&[Primary, Replica]),
        ),
        (
            "08-maborak-patroni-ha-dockerized.cfg",
            Converts(&[Primary, Replica]),
        ),
        (
            "09-jlluesma-routing-bench-callback.cfg",
            Converts(&[Primary, Replica]),
        ),
        (
            "10-aditya41150-patroni-railway-template.cfg",
            Converts(&[Primary, Replica]),
        ),
        ("11-2c9-swarm-pgsql-tests-master.cfg", Converts(&[Primary])),
        // Five TCP-checked listeners, one dev node each: no role to route by. (Its HTTP frontend
        // routing by Host header is left out, as HTTP sections are.)
        (
            "12-veegres-ivory-dev-host-routing.cfg",
            Refused(27, "has no `option httpchk`"),
        ),
        (
            "13-edb-ansible-setup-haproxy.cfg",
            Converts(&[Primary, Replica]),
        ),
        ("14-erawan-cluster-pgsql-tenant.cfg", Converts(&[Primary])),
        (
            "15-volkartd-otus-ubuntu-defaults-master.cfg",
            Converts(&[Primary]),
        ),
        (
            "16-jamesyeogz-posgresqlHA-consul-master.cfg",
            Converts(&[Primary, Replica]),
        ),
        (
            "17-aleks-sharipov-otus-duplicate-mode.cfg",
            Converts(&[Primary]),
        ),
        (
            "18-baseharbor-spilo-resolvers.cfg",
            Refused(18, "DNS service discovery"),
        ),
        // Citus: coordinator and workers are separate Patroni clusters.
        (
            "19-patroni-confd-citus-rendered.cfg",
            Refused(28, "two Patroni clusters"),
        ),
    ];
    for (name, outcome) in cases {
        let text = corpus(name);
        match (import::convert(&text, &env), outcome) {
            (Ok(i), Converts(roles)) => {
                let got: Vec<Role> = i.file.listen.all().iter().map(|l| l.role).collect();
                assert_eq!(got, roles, "{name}");
                let printed = import::to_toml(&i.file, &i.notes, name);
                let back: patroni_proxy::config::FileConfig = toml::from_str(&printed).unwrap();
                assert_eq!(back, i.file, "{name}: the printed TOML reads back the same");
                // `check` accepts it as it is, host names unresolved (the TLS files named by the
                // configs are not on this machine).
                let c = &i.file.check;
                if c.ca_file.is_none() && c.crt.is_none() {
                    Config::from_toml(&printed).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
            (Err(e), Refused(line, says)) => {
                assert_eq!(e.line, line, "{name}: {e}");
                assert!(e.to_string().contains(says), "{name}: {e}");
            }
            (Ok(_), Refused(line, says)) => {
                panic!("{name}: converted, expected line {line}: {says}")
            }
            (Err(e), Converts(_)) => panic!("{name}: {e}"),
        }
    }
}

#[test]
fn host_names_are_kept_as_written_and_not_resolved() {
    // Issue 13: "`server` lines with hostnames (resolved when the proxy runs ...), and `check`
    // validates without resolving". None of these names resolves on this machine.
    for (name, addresses) in [
        (
            "06-percona-docs-ha-haproxy.cfg",
            &["node1:5432", "node2:5432", "node3:5432"][..],
        ),
        (
            "16-jamesyeogz-posgresqlHA-consul-master.cfg",
            &[
                "host.docker.internal:5432",
                "host.docker.internal:5433",
                "host.docker.internal:5434",
            ],
        ),
    ] {
        let i = import::convert(&corpus(name), &env).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got: Vec<String> = i
            .file
            .servers
            .iter()
            .map(|s| s.address.to_string())
            .collect();
        assert_eq!(got, addresses, "{name}");
        let printed = import::to_toml(&i.file, &i.notes, name);
        let c = Config::from_toml(&printed).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            c.servers[0].address.name(),
            Some(addresses[0].split(':').next().unwrap())
        );
    }
}

#[test]
fn ignored_directives_are_noted_once_each_with_their_line() {
    // Issue 13: "accepted, with one warning line each ... never silently dropped".
    let i = import::convert(
        &corpus("05-rd-tony-blog-ubuntu-default-plus-patroni.cfg"),
        &env,
    )
    .unwrap();
    for (line, directive) in [
        (2, "log"),
        (4, "chroot"),
        (9, "daemon"),
        (12, "ca-base"),
        (23, "option httplog"),
        (28, "errorfile"),
        (60, "stats uri"),
        (61, "stats refresh"),
    ] {
        assert!(
            i.notes
                .iter()
                .any(|n| n.line == line && n.directive.starts_with(directive)),
            "no note for line {line} `{directive}`: {:#?}",
            i.notes
        );
    }
    let printed = import::to_toml(&i.file, &i.notes, "x");
    assert!(printed.contains("# line 9: `daemon`: "), "{printed}");
    // `option tcp-check` then `option httpchk`: the last wins, as in HAProxy.
    assert!(
        i.notes.iter().any(|n| n.directive == "option tcp-check"),
        "{:#?}",
        i.notes
    );
    assert!(i.file.check.ssl);
}

#[test]
fn a_read_only_section_with_the_primary_as_backup_falls_back_to_the_primary() {
    let text = "listen ro\n    bind *:5001\n    option httpchk GET /read-only\n    \
        default-server check port 8008\n    server a 10.0.0.1:5432\n    server b 10.0.0.2:5432\n    \
        server c 10.0.0.3:5432 backup\n";
    let i = import::convert(text, &env).unwrap();
    let l = &i.file.listen.all()[0];
    assert_eq!(
        (l.role, l.fallback),
        (Role::Replica, Some(Fallback::Primary))
    );
    let e = Config::from_toml(&import::to_toml(&i.file, &i.notes, "x")).unwrap_err();
    assert!(
        e.to_string()
            .contains("the first listener is the primary port (role 'primary')"),
        "{e}"
    );
}

#[test]
fn every_shape_fixture_gives_its_expected_proxy_toml() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let cfg = entry.unwrap().path();
        if cfg.extension().is_none_or(|e| e != "cfg") {
            continue;
        }
        let text = std::fs::read_to_string(&cfg).unwrap();
        let i = import::convert(&text, &env).unwrap_or_else(|e| panic!("{}: {e}", cfg.display()));
        let printed = import::to_toml(
            &i.file,
            &i.notes,
            &format!(
                "tests/fixtures/import/{}",
                cfg.file_name().unwrap().to_string_lossy()
            ),
        );
        let expected = std::fs::read_to_string(cfg.with_extension("toml")).unwrap_or_default();
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(cfg.with_extension("toml"), &printed).unwrap();
        } else {
            assert_eq!(printed, expected, "{} (BLESS=1 rewrites it)", cfg.display());
        }
        n += 1;
    }
    assert!(n >= 5, "fixtures missing in {}", dir.display());
}

#[test]
fn pigstys_services_become_four_listeners_over_one_set_of_nodes() {
    // Pigsty: primary on pgbouncer (:6432), default/offline on PostgreSQL (:5432), the same
    // nodes and REST API; stats access by userlist (admin group = admin rights).
    let i = import::convert(&corpus("03-pigsty-pg-test.cfg"), &env).unwrap();
    let f = &i.file;
    assert_eq!(f.stats.auth.as_deref(), Some("haproxy:haproxy"));
    assert_eq!(
        (
            f.stats.admin_user.as_deref(),
            f.stats.admin_password.as_deref()
        ),
        (Some("admin"), Some("pigsty"))
    );
    // One node per Patroni member (one check each): the PostgreSQL-port listeners reach the same
    // nodes on port 5432 (`server_port`).
    let names: Vec<&str> = f.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["pg-test-1", "pg-test-2", "pg-test-3"]);
    let ports: Vec<Option<u16>> = f.listen.all().iter().map(|l| l.server_port).collect();
    assert_eq!(ports, [None, None, Some(5432), Some(5432)]);
    let replica = &f.listen.all()[1];
    assert_eq!(
        replica.fallback,
        Some(Fallback::Primary),
        "/read-only with the primary as backup"
    );
    let offline = &f.listen.all()[3];
    assert_eq!(
        offline.servers.as_deref(),
        Some(&["pg-test-3".to_string(), "pg-test-2".to_string()][..])
    );
    // One note for the `weight` on every server line.
    let weights: Vec<_> = i.notes.iter().filter(|n| n.directive == "weight").collect();
    assert_eq!(weights.len(), 1, "{weights:#?}");
    assert!(
        weights[0].why.contains("also lines 77, 78"),
        "{}",
        weights[0].why
    );
}

#[test]
fn what_would_change_routing_is_refused_at_its_line_saying_what_to_write() {
    // Issue 13: "only what changes routing and that we cannot honour ... is an error, naming the
    // line, the directive and what to write instead".
    let head = "defaults\n    mode tcp\nfrontend fe\n    bind *:5000\n";
    let be = "backend be\n    option httpchk GET /primary\n    \
              server a 10.0.0.1:5432 check port 8008\n";
    let listen = "listen pg\n    bind *:5000\n    option httpchk GET /primary\n";
    let srv = "    server a 10.0.0.1:5432 check port 8008\n";
    for (text, line, directive, says) in [
        (format!("{head}    use_backend be if {{ src 10.0.0.0/8 }}\n{be}"), 5, "use_backend", "own frontend"),
        (format!("{head}    use_backend %[req.hdr(host)]\n{be}"), 5, "use_backend", "per request"),
        (format!("{head}    default_backend nope\n{be}"), 5, "default_backend", "no backend named"),
        (format!("{listen}    tcp-request content reject\n{srv}"), 4, "tcp-request", "pg_hba.conf"),
        (
            "listen pg\n    bind *:5000\n    option tcp-check\n    tcp-check send PING\n".to_string() + srv,
            3,
            "option tcp-check",
            "custom",
        ),
        ("listen pg\n    bind *:5000\n".to_string() + srv, 3, "server", "no `option httpchk`"),
        (format!("{listen}    server-template pg 3 _pg._tcp:5432\n"), 4, "server-template", "list each node"),
        (format!("{listen}    server a 10.0.0.1:5432 check port 8008 resolvers dns\n"), 4, "server resolvers", "DNS"),
        (format!("{listen}    server a db1.example check port 8008\n"), 4, "server", "has no port"),
        (format!("{listen}    server a 10.0.0.1:5432 check port 8008 ssl\n"), 4, "server ssl", "check-ssl"),
        (format!("{listen}    server a 10.0.0.1:5432 check port ${{NOPE}}\n"), 4, "server a 10.0.0.1:5432 check port ${NOPE}", "`NOPE` is not set"),
        (
            format!("{listen}{srv}    server b 10.0.0.2:5432 check port 8008 check-ssl verify none\n"),
            5,
            "check-ssl",
            "every node is checked the same way",
        ),
        (
            format!("{listen}{srv}    server b 10.0.0.2:5432 check port 8008 on-marked-down shutdown-sessions\n"),
            5,
            "on-marked-down",
            "default-server",
        ),
        ("listen pg\n    bind *:5000\n    option httpchk GET /quorum\n".to_string() + srv, 3, "option httpchk", "/replica"),
        ("listen pg\n    bind *:5000\n    option httpchk GET /replica?lag=1mb\n".to_string() + srv, 3, "option httpchk", "case-sensitive"),
        (format!("{listen}    bind *:5001 ssl crt /x.pem\n{srv}"), 4, "bind ssl", "sslmode"),
        (format!("{listen}    http-check expect string running\n{srv}"), 4, "http-check expect", "status"),
        (format!("{listen}    server a 10.0.0.1:5432 check port 8008 check-ssl\n"), 4, "check-ssl", "ca-file"),
    ] {
        let e = import::convert(&text, &env).expect_err(&text);
        assert_eq!((e.line, e.directive.as_str()), (line, directive), "{text}\n{e}");
        assert!(e.message.contains(says), "{e}");
    }
}

#[test]
fn import_check_prints_how_each_listener_routes() {
    let out = bin()
        .arg("import-haproxy")
        .arg("--check")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/import/frontend-backend.cfg"),
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        "routing: listen pg_rw on 0.0.0.0:5000, 127.0.0.1:6000 -> role primary: the one confirmed \
         primary among pg1, pg2, pg3 (fail closed; clients wait up to 10s for one)\n\
         routing: listen pg_ro on 0.0.0.0:5001 -> role replica: running streaming replicas \
         within max_lag 10MB among pg1, pg2, pg3, balanced roundrobin; when none qualifies: \
         refused\n"
    );
    // Warnings on stderr, one line each; and `check` accepts it as it is (two binds on the
    // primary port).
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("line 4: `log`"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn the_primary_listener_sets_the_one_check_and_other_timers_are_noted() {
    // One check per node feeds every listener: the primary section's schedule wins wherever it
    // is in the file; another section's differing `inter` only changes how fast a node enters or
    // leaves that listener, so it is a note naming both lines.
    let text = "listen ro\n    bind *:5001\n    option httpchk GET /replica\n    \
        default-server inter 10s rise 5 check port 8008\n    server a 10.0.0.1:5432\n\
        listen rw\n    bind *:5000\n    option httpchk GET /primary\n    \
        default-server inter 2s rise 2 check port 8008\n    server a 10.0.0.1:5432\n";
    let i = import::convert(text, &env).unwrap();
    let c = &i.file.check;
    assert_eq!((c.inter, c.rise.get()), (Duration::from_secs(2), 2));
    let names: Vec<&str> = i
        .file
        .listen
        .all()
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(names, ["ro", "rw"], "the file's order");
    let inter = i
        .notes
        .iter()
        .find(|n| n.directive == "inter")
        .expect("a note");
    assert_eq!(inter.line, 4);
    assert!(inter.why.contains("keeps 2s from line 9"), "{}", inter.why);
}

#[test]
fn a_frontends_server_timeouts_are_noted_as_haproxy_ignores_them() {
    let text = "frontend fe\n    bind *:5000\n    timeout client 1m\n    timeout server 9m\n    \
        default_backend be\nbackend be\n    timeout client 9m\n    timeout server 2m\n    \
        option httpchk\n    server a 10.0.0.1:5432 check port 8008\n";
    let i = import::convert(text, &env).unwrap();
    let l = &i.file.listen;
    assert_eq!(
        (l.timeout_client, l.timeout_server),
        (Duration::from_secs(60), Duration::from_secs(120))
    );
    let ignored: Vec<usize> = i
        .notes
        .iter()
        .filter(|n| n.why.starts_with("HAProxy ignores it"))
        .map(|n| n.line)
        .collect();
    assert_eq!(ignored, [4, 7]);
}

#[test]
fn a_ca_file_with_verify_none_is_noted_not_written() {
    // `check` refuses `ca_file` with `verify = "none"`; HAProxy ignores it: so does the import.
    let text = "listen pg\n    bind *:5000\n    option httpchk\n    \
        server a 10.0.0.1:5432 check port 8008 check-ssl verify none ca-file /ca.pem\n";
    let i = import::convert(text, &env).unwrap();
    assert!(i.file.check.ssl && i.file.check.ca_file.is_none());
    assert!(
        i.notes
            .iter()
            .any(|n| n.line == 4 && n.directive == "ca-file"),
        "{:#?}",
        i.notes
    );
    Config::from_toml(&import::to_toml(&i.file, &i.notes, "x")).expect("check accepts it");
}

#[test]
fn timeout_tunnel_sets_both_idle_timeouts_as_haproxy_applies_it_in_tcp_mode() {
    // HAProxy: "In TCP, this timeout is used as soon as no analyzer remains attached to either
    // connection", superseding `timeout client` and `timeout server`.
    let text = "defaults\n    timeout client 30s\n    timeout server 30s\n    timeout tunnel 2h\n\
        listen pg\n    bind *:5000\n    option splice-auto\n    option httpchk\n    \
        server a 10.0.0.1:5432 check port 8008\n";
    let i = import::convert(text, &env).unwrap();
    let l = &i.file.listen;
    assert_eq!(
        (l.timeout_client, l.timeout_server),
        (Duration::from_secs(7200), Duration::from_secs(7200))
    );
    assert!(
        i.notes
            .iter()
            .any(|n| n.line == 7 && n.directive == "option splice-auto"),
        "{:#?}",
        i.notes
    );
}

#[test]
fn http_rules_and_stats_lines_in_a_tcp_section_are_noted_not_dropped() {
    let text = "listen pg\n    bind *:5000\n    stats enable\n    http-request deny\n    \
        option httpchk\n    server a 10.0.0.1:5432 check port 8008\n";
    let i = import::convert(text, &env).unwrap();
    assert_eq!(i.file.listen.name, "pg", "still the PostgreSQL listener");
    let lines: Vec<usize> = i
        .notes
        .iter()
        .filter(|n| n.why.contains("no effect in a TCP section"))
        .map(|n| n.line)
        .collect();
    assert_eq!(lines, [3, 4]);
}

#[test]
fn every_bind_form_is_read() {
    // `*:P`, `:P`, `IP:P`, `[IPv6]:P`, `:::P`, `ipv4@`, comma lists and several lines.
    let text =
        "listen pg\n    bind *:5000,:5001\n    bind 127.0.0.1:5002\n    bind [::1]:5003\n    \
        bind :::5004\n    bind ipv4@10.0.0.5:5005\n    option httpchk\n    \
        server a ipv4@10.0.0.1:5432 check port 8008\n";
    let i = import::convert(text, &env).unwrap();
    let binds: Vec<String> = i
        .file
        .listen
        .bind
        .all()
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        binds,
        [
            "0.0.0.0:5000",
            "0.0.0.0:5001",
            "127.0.0.1:5002",
            "[::1]:5003",
            "[::]:5004",
            "10.0.0.5:5005"
        ]
    );
    // `*:5000` and `:::5000` are different sockets; the same address twice is refused.
    let e = import::convert(&text.replace(":5001", ":5000"), &env).unwrap_err();
    assert!(e.message.contains("already taken"), "{e}");
    assert_eq!(e.line, 2);
}

#[test]
fn vitabaks_four_ports_keep_their_lag_balance_and_timers() {
    // The master, replicas (lag=100MB), sync and async (lag=100MB) ports.
    let i = import::convert(&corpus("02-vitabaks-postgresql-cluster.cfg"), &env).unwrap();
    let l = i.file.listen.all();
    assert_eq!(
        (l[1].role, l[1].max_lag, l[1].balance),
        (
            Role::Replica,
            Some(ByteSize(100 << 20)),
            Some(Balance::Roundrobin)
        )
    );
    assert_eq!((l[2].role, l[2].max_lag), (Role::Sync, None));
    assert_eq!(
        (l[3].role, l[3].max_lag),
        (Role::Async, Some(ByteSize(100 << 20)))
    );
    assert_eq!(
        (i.file.check.rise.get(), i.file.global.maxconn.get()),
        (4, 10000)
    );
}
