//! The stats listener over real HTTP against in-process fakes (issue 4): every endpoint and content
//! type, the CSV parsed as CSV in HAProxy's column order, the metrics parsed as exposition text,
//! Basic auth and read-only access. The listener's limits (hostile clients) are in
//! `stats_limits.rs`.

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{connect, outcome, Cluster, Mode, Outcome};
use patroni_proxy::health::CheckStatus;

const PRIMARY: Mode = Mode::Primary { timeline: 1 };
/// Checks every 100 ms so the cluster settles in well under a second.
const FAST: &str = "[check]\ninter = \"100ms\"\n";

/// HAProxy 2.6.12's CSV header, copied from `haproxy-semantics.md` §3.5 (not from our source).
const HAPROXY_HEADER: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,";

fn url(c: &Cluster, path: &str) -> String {
    format!("http://{}{path}", c.stats)
}

async fn get(c: &Cluster, path: &str) -> reqwest::Response {
    reqwest::get(url(c, path)).await.expect("stats answered")
}

/// Primary node0, running replica node1, node2's REST stopped (unreachable); settled.
async fn settled() -> Cluster {
    let c = Cluster::start(vec![PRIMARY, Mode::Replica, Mode::Replica], FAST).await;
    c.nodes[2].rest.stop();
    c.wait_for(Duration::from_secs(10), "node0 routed, others DOWN", |c| {
        let refused = c.shared().current().nodes[2]
            .last_check
            .as_ref()
            .is_some_and(|r| r.status == CheckStatus::L4CON);
        c.primary() == Some(0) && c.status(0) == "UP" && c.status(1) == "DOWN" && refused
    })
    .await;
    c
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_with_its_content_type() {
    let c = settled().await;
    for (path, ctype, needle) in [
        ("/", "text/html; charset=utf-8", "<table id=\"servers\">"),
        ("/;csv", "text/plain; charset=utf-8", "# pxname,svname,"),
        (
            "/;csv;norefresh",
            "text/plain; charset=utf-8",
            "# pxname,svname,",
        ),
        ("/?;csv", "text/plain; charset=utf-8", "# pxname,svname,"),
        ("/;up", "text/html; charset=utf-8", "<table id=\"servers\">"),
        ("/stats.json", "application/json", "\"servers\":"),
        (
            "/metrics",
            "text/plain; version=0.0.4; charset=utf-8",
            "# TYPE patroni_proxy_server_up gauge",
        ),
        ("/healthz", "text/plain; charset=utf-8", "ok"),
        ("/ready", "text/plain; charset=utf-8", "primary node0"),
        (
            "/dashboard/app.js",
            "text/javascript; charset=utf-8",
            "/stats.json",
        ),
        (
            "/dashboard/style.css",
            "text/css; charset=utf-8",
            ".tone-primary",
        ),
        ("/dashboard/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let r = get(&c, path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(content_type(&r), ctype, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache", "{path}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains(needle),
            "{path}: {needle:?} not in {body:.300}"
        );
    }
    // HEAD: the same headers, no body.
    let r = reqwest::Client::new()
        .head(url(&c, "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(content_type(&r), "text/html; charset=utf-8");
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_view_is_rendered_on_the_server() {
    // Issue 4: "the first view is rendered on the server so it works without JavaScript".
    let c = settled().await;
    let page = get(&c, "/").await.text().await.unwrap();
    let row = |name: &str| {
        let start = page
            .find(&format!("data-server=\"{name}\""))
            .unwrap_or_else(|| panic!("no row for {name}"));
        let tr = page[..start].rfind("<tr ").unwrap();
        let end = start + page[start..].find("</tr>").unwrap();
        page[tr..end].to_string()
    };
    let cell = |row: &str, f: &str| {
        let at = row.find(&format!("data-f=\"{f}\"")).unwrap();
        let open = at + row[at..].find('>').unwrap() + 1;
        let close = open + row[open..].find("</td>").unwrap();
        row[open..close].to_string()
    };
    let (n0, n1, n2) = (row("node0"), row("node1"), row("node2"));
    assert!(n0.contains("class=\"server tone-primary routed\""), "{n0}");
    assert_eq!(
        (cell(&n0, "role"), cell(&n0, "status")),
        ("primary".into(), "UP".into())
    );
    assert_eq!(
        (cell(&n0, "chk"), cell(&n0, "code")),
        ("L7OK".into(), "200".into())
    );
    assert!(cell(&n0, "dur").ends_with(" ms"));
    // A running replica: DOWN in HAProxy's words, but neutral, not an error.
    assert!(n1.contains("class=\"server tone-replica\""), "{n1}");
    assert_eq!(
        (cell(&n1, "role"), cell(&n1, "status")),
        ("replica".into(), "DOWN".into())
    );
    assert_eq!(
        (cell(&n1, "chk"), cell(&n1, "code")),
        ("L7STS".into(), "503".into())
    );
    // Unreachable: red, role unknown, HAProxy's L4CON with the OS error in the tooltip.
    assert!(n2.contains("class=\"server tone-down\""), "{n2}");
    assert_eq!(
        (cell(&n2, "role"), cell(&n2, "chk")),
        ("unknown".into(), "L4CON".into())
    );
    assert!(
        n2.contains("Layer4 connection problem: Connection refused"),
        "{n2}"
    );
    assert_eq!(cell(&n2, "slim"), "100");

    assert!(page.contains("<strong data-p=\"primary\" id=\"primary\">node0</strong>"));
    assert!(page.contains("class=\"frontend\" id=\"frontend\""));
    assert!(page.contains("patroni-proxy ") && page.contains("config (in-process)"));
    assert!(
        page.contains("Routed primary of postgres is now node0"),
        "the timeline shows the routing event"
    );
    assert!(
        page.contains("ev-down") && page.contains("is DOWN, reason: Layer4 connection problem")
    );
    assert!(page.contains("<noscript><meta http-equiv=\"refresh\""));

    // `;up` hides DOWN servers, as in HAProxy.
    let up = get(&c, "/;up").await.text().await.unwrap();
    assert!(up.contains("data-server=\"node0\"") && !up.contains("data-server=\"node1\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_in_a_check_answer_stay_text_on_the_page() {
    // Hardening item 11: the template was filled by chained `.replace()`, so a placeholder in a
    // value inserted early (a REST reason phrase in a row's tooltip) was expanded by a later one.
    let reason = "{{events}} & {{frontend}} <b>";
    let answer = format!("HTTP/1.0 503 {reason}\r\nContent-Length: 0\r\n\r\n");
    let c = Cluster::start(vec![PRIMARY, Mode::Raw(answer)], FAST).await;
    c.wait_for(Duration::from_secs(10), "node0 routed, node1 DOWN", |c| {
        c.primary() == Some(0) && c.status(1) == "DOWN"
    })
    .await;
    let page = get(&c, "/").await.text().await.unwrap();
    let count = |needle: &str| page.matches(needle).count();

    // The reason is text, escaped, in node1's last-check tooltip and in its DOWN event.
    let escaped = "{{events}} &amp; {{frontend}} &lt;b&gt;";
    assert!(
        page.contains(&format!("title=\"Layer7 wrong status: {escaped}\"")),
        "{page}"
    );
    assert!(
        page.contains(&format!("info: &quot;{escaped}&quot;")),
        "{page}"
    );
    assert!(!page.contains("<b>"));
    // The structure is the template's: one events list holding every event, one FRONTEND row.
    assert_eq!(count("<ol id=\"events\">"), 1);
    assert_eq!(count("id=\"frontend\""), 1, "{page}");
    let list = &page[page.find("<ol id=\"events\">").unwrap()..];
    let list = &list[..list.find("</ol>").unwrap()];
    let events = list.matches("<li class=\"ev ").count();
    assert!(events >= 2, "node1 DOWN and node0 routed: {list}");
    assert_eq!(
        count("<li class=\"ev "),
        events,
        "event items outside the list"
    );
    // Every row has its 21 cells and nothing else.
    assert_eq!(count("<tr class=\"server "), 2);
    assert_eq!(count("<td "), 3 * 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_is_haproxys_layout() {
    // Issue 4: "/;csv in HAProxy's CSV layout ... so scripts written for HAProxy's CSV keep working".
    let c = settled().await;
    let (node, mut session) = connect(c.addr).await.expect("routed");
    assert_eq!(node, "node0");
    assert!(session.alive().await);

    let text = get(&c, "/;csv").await.text().await.unwrap();
    assert_eq!(text.lines().next().unwrap(), HAPROXY_HEADER);
    assert!(
        text.lines().all(|l| l.ends_with(',')),
        "trailing comma on every line"
    );

    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let expected: Vec<&str> = HAPROXY_HEADER.trim_start_matches("# ").split(',').collect();
    assert_eq!(header[0], "# pxname");
    assert_eq!(
        &header[1..],
        &expected[1..],
        "every column in HAProxy's order"
    );
    let col = |name: &str| {
        expected
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert!(rows.iter().all(|r| r.len() == expected.len()));
    let f = |r: &csv::StringRecord, name: &str| r[col(name)].to_string();
    let names: Vec<String> = rows
        .iter()
        .map(|r| format!("{}/{}", &r[0], &r[1]))
        .collect();
    assert_eq!(
        names,
        [
            "postgres/FRONTEND",
            "postgres/node0",
            "postgres/node1",
            "postgres/node2",
            "postgres/BACKEND"
        ]
    );
    let (fe, n0, n1, n2, be) = (&rows[0], &rows[1], &rows[2], &rows[3], &rows[4]);
    assert_eq!(
        [f(fe, "type"), f(n0, "type"), f(be, "type")],
        ["0", "2", "1"]
    );
    assert_eq!(
        [f(fe, "status"), f(fe, "scur"), f(fe, "stot"), f(fe, "slim")],
        ["OPEN", "1", "1", "100"]
    );
    assert!(
        f(fe, "bin").parse::<u64>().unwrap() > 0,
        "the ping went through"
    );

    assert_eq!(f(n0, "status"), "UP");
    assert_eq!(
        [f(n0, "scur"), f(n0, "stot"), f(n0, "slim"), f(n0, "lbtot")],
        ["1", "1", "100", "1"]
    );
    assert_eq!(
        [f(n0, "check_status"), f(n0, "check_code")],
        ["L7OK", "200"]
    );
    assert_eq!(f(n0, "check_desc"), "Layer7 check passed");
    assert_eq!(
        [
            f(n0, "check_rise"),
            f(n0, "check_fall"),
            f(n0, "check_health")
        ],
        ["2", "3", "4"]
    );
    assert_eq!(
        [f(n0, "act"), f(n0, "bck"), f(n0, "mode"), f(n0, "sid")],
        ["1", "0", "tcp", "1"]
    );
    assert_eq!(f(n0, "addr"), c.nodes[0].db.addr.to_string());
    assert!(f(n0, "check_duration").parse::<u64>().is_ok());
    assert!(f(n0, "bout").parse::<u64>().unwrap() >= "NODE node0\nping\n".len() as u64);

    assert_eq!(f(n1, "status"), "DOWN");
    assert_eq!(
        [f(n1, "check_status"), f(n1, "check_code")],
        ["L7STS", "503"]
    );
    assert_eq!(f(n1, "last_chk"), "Service Unavailable");
    assert_eq!([f(n1, "chkdown"), f(n1, "check_health")], ["1", "0"]);
    assert_eq!([f(n2, "check_status"), f(n2, "check_code")], ["L4CON", ""]);
    assert_eq!(f(n2, "last_chk"), "Connection refused");

    assert_eq!(
        [f(be, "status"), f(be, "act"), f(be, "weight")],
        ["UP", "1", "1"]
    );
    assert_eq!([f(be, "scur"), f(be, "stot")], ["1", "1"]);
    // Columns with no meaning here stay empty, as HAProxy leaves N/A fields.
    for name in ["dreq", "hrsp_2xx", "agent_status", "ssl_sess", "cookie"] {
        assert_eq!(f(n0, name), "", "{name}");
    }

    // `;up`: only servers that are UP.
    let up = get(&c, "/;csv;up").await.text().await.unwrap();
    let svnames: Vec<&str> = up
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(svnames, ["FRONTEND", "node0", "BACKEND"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_json_is_the_typed_snapshot() {
    let c = settled().await;
    let v: serde_json::Value = get(&c, "/stats.json").await.json().await.unwrap();
    assert_eq!(v["proxy"], "postgres");
    assert_eq!(v["primary"], "node0");
    assert_eq!(v["primary_timeline"], 1);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let s = &v["servers"];
    let pick = |i: usize, k: &str| s[i][k].clone();
    assert_eq!(
        [pick(0, "tone"), pick(1, "tone"), pick(2, "tone")],
        ["primary", "replica", "down"]
    );
    assert_eq!(
        [pick(0, "role"), pick(1, "role"), pick(2, "role")],
        ["primary", "replica", "unknown"]
    );
    assert_eq!([pick(0, "status"), pick(1, "status")], ["UP", "DOWN"]);
    assert_eq!(pick(0, "routed_primary"), true);
    assert_eq!(s[1]["last_check"]["status"], "L7STS");
    assert_eq!(s[1]["last_check"]["code"], 503);
    assert_eq!(s[1]["patroni_state"], "running");
    assert!(s[0]["last_check_age_s"].as_f64().unwrap() < 5.0);
    // The export model carries no display text (issue 12): the live page reads the same view with
    // its cells from /dashboard/data.json.
    assert!(s[0].get("display").is_none() && v.get("display").is_none());
    let d: serde_json::Value = get(&c, "/dashboard/data.json").await.json().await.unwrap();
    assert_eq!(d["servers"][0]["display"]["status"]["text"], "UP");
    assert_eq!(d["display"]["primary"]["text"], "node0");
    assert_eq!(d["frontend"]["display"]["name"]["text"], "FRONTEND");
    assert_eq!(d["servers"][0]["name"], v["servers"][0]["name"]);
    assert!(v["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "primary_changed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_guards_everything_but_the_probes() {
    // HAProxy's `stats auth`: 401 with a Basic challenge; the probes stay open for load balancers.
    let c = Cluster::start(
        vec![PRIMARY],
        &format!("{FAST}[stats]\nauth = \"admin:s3cret\"\n"),
    )
    .await;
    let client = reqwest::Client::new();
    for path in [
        "/",
        "/;csv",
        "/stats.json",
        "/metrics",
        "/sessions.json",
        "/sessions",
        "/dashboard/app.js",
        "/nope",
    ] {
        let r = client.get(url(&c, path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Basic realm=\"patroni-proxy\""
        );
        let r = client
            .get(url(&c, path))
            .basic_auth("admin", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    for path in [
        "/",
        "/;csv",
        "/stats.json",
        "/metrics",
        "/sessions.json",
        "/sessions",
    ] {
        let r = client
            .get(url(&c, path))
            .basic_auth("admin", Some("s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = client
        .get(url(&c, "/nope"))
        .basic_auth("admin", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    for path in ["/healthz", "/ready"] {
        let r = client.get(url(&c, path)).send().await.unwrap();
        assert_ne!(r.status(), 401, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_unknown_paths_are_refused() {
    let c = Cluster::start(vec![PRIMARY], FAST).await;
    let client = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::POST, "/"),
        (reqwest::Method::PUT, "/metrics"),
        (reqwest::Method::DELETE, "/stats.json"),
        (reqwest::Method::PATCH, "/;csv"),
        (reqwest::Method::OPTIONS, "/"),
    ] {
        let r = client
            .request(method.clone(), url(&c, path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], "GET, HEAD");
    }
    for path in [
        "/nope",
        "/haproxy?stats",
        "/;json",
        "/;csv;bogus",
        "/stats.json/x",
        "/dashboard/",
    ] {
        let r = client.get(url(&c, path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    // A query on `/` is not a path: cache busters still get the page.
    let r = client.get(url(&c, "/?t=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

mod metrics;
