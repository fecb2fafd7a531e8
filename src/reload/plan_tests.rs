use super::*;

const BASE: &str = "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n\
                    [[server]]\nname = \"b\"\naddress = \"127.0.0.12:5432\"\n";

fn config(text: &str) -> Config {
    Config::from_toml(text).expect("valid")
}

fn with(extra: &str) -> Config {
    config(&format!("{extra}\n{BASE}"))
}

#[test]
fn the_same_file_changes_nothing() {
    let p = plan(&config(BASE), &config(BASE));
    assert!(p.applies_live());
    assert_eq!(p.kept, ["a", "b"]);
    assert!(p.live.is_empty() && p.added.is_empty() && p.removed.is_empty());
    assert_eq!(p.live_text(), "none");
}

#[test]
fn check_timers_apply_live_from_the_next_check() {
    let new = with(
        "[check]\ninter = \"500ms\"\nrise = 3\nfall = 2\ntimeout = \"1s\"\nfastinter = \"100ms\"",
    );
    let p = plan(&config(BASE), &new);
    assert!(p.applies_live(), "{p:?}");
    assert_eq!(
        p.live,
        [
            "check.inter",
            "check.fastinter",
            "check.rise",
            "check.fall",
            "check.timeout"
        ]
    );
    assert_eq!(p.kept, ["a", "b"], "the servers keep their state");
}

#[test]
fn session_timeouts_and_grace_apply_live() {
    let new = with(
        "[global]\nshutdown_grace = \"5s\"\n[listen]\nhold_timeout = \"3s\"\nretries = 1\n\
         timeout_client = \"1h\"\n[log]\nsessions = true",
    );
    let p = plan(&config(BASE), &new);
    assert!(p.applies_live(), "{p:?}");
    assert_eq!(
        p.live,
        [
            "global.shutdown_grace",
            "listen.retries",
            "listen.timeout_client",
            "listen.hold_timeout",
            "log.sessions"
        ]
    );
}

#[test]
fn both_listeners_move_live_and_new_credentials_need_a_restart() {
    let new = with(
        "[listen]\nbind = \"127.0.0.1:6000\"\n[stats]\nbind = \"127.0.0.1:7001\"\n\
         admin_user = \"ops\"\nadmin_password = \"secret-secret\"\n[global]\nmaxconn = 10",
    );
    let p = plan(&config(BASE), &new);
    assert!(!p.applies_live());
    assert_eq!(
        p.live,
        ["listen.bind", "stats.bind"],
        "both listeners move live"
    );
    assert_eq!(
        p.restart,
        ["global.maxconn", "stats.admin_user", "stats.admin_password"]
    );
}

#[test]
fn servers_are_matched_by_name() {
    let old = config(BASE);
    let new = config(
        "[[server]]\nname = \"b\"\naddress = \"127.0.0.22:5432\"\n\
         [[server]]\nname = \"c\"\naddress = \"127.0.0.13:5432\"\n",
    );
    let p = plan(&old, &new);
    assert_eq!(p.added, ["c"]);
    assert_eq!(p.removed, ["a"]);
    assert_eq!(p.changed, [("b".to_string(), vec!["address"])]);
    assert!(p.kept.is_empty());
    // Issue 15 item 1: "unchanged servers keep their health state and counters, added servers
    // start fail-closed, removed servers drain": all of it live, applied by `state::servers`.
    assert!(p.applies_live(), "{p:?}");
    assert_eq!(
        p.live_text(),
        "server 'c' added, server 'a' removed, server 'b' (address)"
    );
}

#[test]
fn a_reordered_server_list_changes_nothing() {
    let p = plan(
        &config(BASE),
        &config(
            "[[server]]\nname = \"b\"\naddress = \"127.0.0.12:5432\"\n\
             [[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n",
        ),
    );
    assert!(p.applies_live(), "{p:?}");
    assert_eq!(p.kept, ["b", "a"]);
    assert_eq!(p.live_text(), "none");
}

#[test]
fn etcd_and_the_log_format_need_a_restart() {
    let new = with(
        "[log]\nformat = \"json\"\n[etcd]\nendpoints = [\"127.0.0.1:2379\"]\nscope = \"demo\"",
    );
    let p = plan(&config(BASE), &new);
    assert_eq!(p.restart, ["etcd", "log.format"]);
}

#[test]
fn check_tls_keys_apply_live_from_the_next_check() {
    // The check carries its TLS client config: turning TLS on is a live change.
    let p = plan(
        &config(BASE),
        &with("[check]\nssl = true\nverify = \"none\"\nsni = \"patroni\""),
    );
    assert!(p.applies_live(), "{p:?}");
    assert_eq!(p.live, ["check.ssl", "check.verify", "check.sni"]);
}

#[test]
fn the_sql_check_applies_live_from_the_next_check() {
    // The SQL check's spec travels with the check's; the gate is read at each decision.
    let sql = "[check.sql]\nuser = \"m\"\npassword = \"a\"";
    let p = plan(&config(BASE), &with(sql));
    assert!(p.applies_live(), "{p:?}");
    assert_eq!(p.live, ["check.sql"]);
    let changed = with("[check.sql]\nuser = \"m\"\npassword = \"b\"");
    assert_eq!(plan(&with(sql), &changed).live, ["check.sql"]);
    assert!(plan(&with(sql), &with(sql)).live.is_empty());
}

#[test]
fn every_etcd_key_needs_a_restart_and_is_named() {
    // The watch reads [etcd] once, at start-up: a change to any of its keys is refused by name.
    let etcd = "[etcd]\nendpoints = [\"127.0.0.1:2379\"]\nscope = \"demo\"\n";
    let old = with(etcd);
    let new = with(
        "[etcd]\nendpoints = [\"127.0.0.1:2379\", \"127.0.0.2:2379\"]\nscope = \"demo\"\n\
         resync = \"7s\"\nusername = \"u\"\npassword = \"p\"",
    );
    let p = plan(&old, &new);
    assert_eq!(
        p.restart,
        [
            "etcd.endpoints",
            "etcd.resync",
            "etcd.username",
            "etcd.password"
        ]
    );
    assert!(plan(&old, &with(etcd)).restart.is_empty());
}

#[test]
fn the_listeners_and_their_routing_need_a_restart_their_session_keys_do_not() {
    // Issue 13: the set of listeners, role/balance/max_lag/fallback/servers and a second bind
    // are built with the listeners; today's live keys stay live for every listener.
    let two = |ro: &str| {
        Config::unserved(&format!(
            "[[listen]]\nname = \"rw\"\n[[listen]]\nname = \"ro\"\nbind = \"*:5001\"\n\
             role = \"replica\"\n{ro}\n{BASE}"
        ))
        .unwrap()
    };
    let before = two("");
    for (change, key) in [
        (
            "role = \"replica\"\nbalance = \"roundrobin\"",
            "listen.balance",
        ),
        ("max_lag = \"1MB\"", "listen.max_lag"),
        ("fallback = \"primary\"", "listen.fallback"),
        ("servers = [\"b\"]", "listen.servers"),
        ("bind = [\"*:5001\", \"*:5002\"]", "listen.bind"),
    ] {
        let text = format!(
            "[[listen]]\nname = \"rw\"\n[[listen]]\nname = \"ro\"\nbind = \"*:5001\"\n\
             role = \"replica\"\n{change}\n{BASE}"
        )
        .replace(
            "bind = \"*:5001\"\nrole = \"replica\"\nbind",
            "role = \"replica\"\nbind",
        )
        .replace("role = \"replica\"\nrole", "role");
        let p = plan(&before, &Config::unserved(&text).unwrap());
        assert_eq!(p.restart, [key], "{change}");
    }
    let p = plan(&before, &two("retries = 5"));
    assert!(p.applies_live(), "{p:?}");
    assert_eq!(p.live, ["listen.retries"]);
    let one = Config::unserved(BASE).unwrap();
    let p = plan(&one, &before);
    assert_eq!(p.restart, ["listen (the set of listeners)"]);
}

#[test]
fn the_ride_through_and_a_servers_member_name_apply_live() {
    // Both are read by the state owner at each decision (docs/configuration.md).
    let etcd = "[etcd]\nendpoints = [\"127.0.0.21:2379\"]\nscope = \"postgres\"\n";
    let old = with(etcd);
    let new = config(&format!(
        "{etcd}ride_through = false\n{BASE}member = \"postgresql1\"\n"
    ));
    let p = plan(&old, &new);
    assert!(p.applies_live(), "{p:?}");
    assert_eq!(p.live, ["etcd.ride_through"]);
    assert_eq!(p.changed, [("b".to_string(), vec!["member"])]);
}
