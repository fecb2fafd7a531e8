//! `import-haproxy`: the seed HAProxy file gives `proxy.toml`, and whatever the import cannot carry
//! over or represent is an error naming its line and directive.

use super::*;

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
fn import_rejects_what_it_cannot_carry_over_by_line_and_directive() {
    let seed = std::fs::read_to_string(dir("seed-haproxy.cfg")).unwrap();
    // Issue 13: what changes routing and cannot be honoured is refused at its line.
    let cases = [
        (
            "    option httpchk\n",
            "    option httpchk\n    tcp-request content reject\n",
            "tcp-request",
        ),
        (
            "    option httpchk\n",
            "    option httpchk GET /quorum\n",
            "option httpchk",
        ),
        (
            "    option httpchk\n",
            "    option httpchk\n    server-template pg 3 _pg._tcp.example:5432 check\n",
            "server-template",
        ),
        (
            "    maxconn 100\n",
            "    maxconn 100\n    lua-load /x.lua\n",
            "lua-load",
        ),
        (" check port 8008\n", " check\n", "server"),
        ("192.0.2.11:5432 maxconn", "db1.example maxconn", "server"),
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
    let printed = import::to_toml(&c.to_file(), &[], "x");
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

#[test]
fn stats_admin_if_true_turns_runtime_control_on_with_the_stats_auth_credentials() {
    // haproxy-semantics.md §3.7: `stats admin if <cond>` gives the `stats auth` users the admin
    // level (READY/DRAIN/MAINT); here that is `[stats] admin_user` / `admin_password`.
    let seed = std::fs::read_to_string(dir("seed-haproxy.cfg")).unwrap();
    let with =
        |lines: &str| seed.replacen("    stats uri /\n", &format!("    stats uri /\n{lines}"), 1);
    let c = import::import(&with(
        "    stats auth ops:s3cret\n    stats admin if TRUE\n",
    ))
    .unwrap();
    assert_eq!(c.admin_credentials(), Some(("ops", "s3cret")));
    assert_eq!(c.stats.auth.as_deref(), Some("ops:s3cret"));
    for (lines, why) in [
        ("    stats admin if TRUE\n", "needs `stats auth"),
        (
            "    stats auth ops:s3cret\n    stats admin if LOCALHOST\n",
            "only `stats admin if TRUE`",
        ),
    ] {
        let e = import::import(&with(lines)).expect_err(lines);
        assert_eq!(e.directive, "stats admin", "{e}");
        assert!(e.to_string().contains(why), "{e}");
    }
}
