//! Property tests: no input makes the config or import parsers panic, and an import always loads
//! as the `proxy.toml` it prints.

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
            let printed = import::to_toml(&c.to_file(), &[], "generated");
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
