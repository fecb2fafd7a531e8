//! `/;csv`: the view in HAProxy 2.6's CSV layout (`haproxy-semantics.md` §3.5), so scripts, Zabbix
//! and Nagios checks written against HAProxy's stats keep working. Same header, same column order,
//! same row order (per listener, as per HAProxy proxy: FRONTEND, one row per server, BACKEND), the
//! trailing comma on every line; columns that mean the same thing here are filled, the others are
//! left empty as HAProxy leaves N/A fields.

use super::export::{FrontendView, ServerView, View};

/// One listener's rows: its name (`pxname`), number (`iid`), counters and servers, and what its
/// BACKEND row says (routable now, seconds since that changed, seconds it was not).
struct Section<'a> {
    px: &'a str,
    iid: usize,
    frontend: &'a FrontendView,
    servers: &'a [ServerView],
    routable: bool,
    lastchg_s: u64,
    downtime_s: u64,
}

/// The header HAProxy 2.6.12 emits, verbatim (without the leading `# ` and the trailing comma).
pub const HEADER: &str = "pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out";

/// HAProxy's object types (`type` column).
const TYPE_FRONTEND: u8 = 0;
const TYPE_BACKEND: u8 = 1;
const TYPE_SERVER: u8 = 2;

/// One CSV line being filled by column name.
struct Row {
    fields: Vec<String>,
}

impl Row {
    fn new(section: &Section<'_>, svname: &str, kind: u8) -> Self {
        let mut r = Self {
            fields: vec![String::new(); HEADER.split(',').count()],
        };
        r.set("pxname", section.px);
        r.set("svname", svname);
        r.set("pid", 1);
        r.set("iid", section.iid);
        r.set("type", kind);
        r.set("mode", "tcp");
        r
    }

    /// Fills a column. Panics on a name not in [`HEADER`]: the unit test renders every row kind.
    fn set(&mut self, column: &str, value: impl ToString) {
        let i = HEADER
            .split(',')
            .position(|c| c == column)
            .unwrap_or_else(|| panic!("no CSV column {column}"));
        self.fields[i] = value.to_string();
    }
}

/// Renders the view: header line, then per listener (the primary port first) FRONTEND, servers,
/// BACKEND. `only_up` is HAProxy's `;up` (server rows that are DOWN are left out).
pub fn render(view: &View, only_up: bool) -> String {
    let mut rows = Vec::new();
    // The BACKEND is "UP" when it can take a connection: here, when a primary is routable (HAProxy:
    // total weight of usable servers > 0).
    rows.extend(section_rows(
        &Section {
            px: &view.proxy,
            iid: 1,
            frontend: &view.frontend,
            servers: &view.servers,
            routable: view.primary.is_some(),
            lastchg_s: view.primary_since_s as u64,
            downtime_s: view.no_primary_total_s as u64,
        },
        only_up,
    ));
    for (i, l) in view.listeners.iter().enumerate() {
        rows.extend(section_rows(
            &Section {
                px: &l.name,
                iid: i + 2,
                frontend: &l.frontend,
                servers: &l.servers,
                routable: !l.members.is_empty() || (l.fallback && view.primary.is_some()),
                // Not tracked per listener: HAProxy's N/A.
                lastchg_s: 0,
                downtime_s: 0,
            },
            only_up,
        ));
    }

    let mut w = ::csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    for r in &rows {
        // The empty last field gives HAProxy's trailing comma.
        w.write_record(r.fields.iter().map(String::as_str).chain([""]))
            .expect("writing to memory");
    }
    let body = String::from_utf8(w.into_inner().expect("writing to memory"))
        .expect("the fields are UTF-8");
    format!("# {HEADER},\n{body}")
}

/// One listener's FRONTEND, server and BACKEND rows.
fn section_rows(section: &Section<'_>, only_up: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    let f = section.frontend;
    let mut fe = Row::new(section, "FRONTEND", TYPE_FRONTEND);
    fe.set("scur", f.scur);
    fe.set("smax", f.smax);
    fe.set("slim", f.slim);
    fe.set("stot", f.stot);
    fe.set("bin", f.bin);
    fe.set("bout", f.bout);
    fe.set("status", "OPEN");
    fe.set("conn_tot", f.stot);
    rows.push(fe);

    for (i, s) in section.servers.iter().enumerate() {
        if only_up && !s.up {
            continue;
        }
        let mut r = Row::new(section, &s.name, TYPE_SERVER);
        r.set("sid", i + 1);
        r.set("qcur", s.qcur);
        r.set("qmax", s.qmax);
        r.set("scur", s.scur);
        r.set("smax", s.smax);
        r.set("slim", s.slim);
        r.set("stot", s.stot);
        r.set("bin", s.bin);
        r.set("bout", s.bout);
        r.set("econ", s.econ);
        r.set("eresp", s.srv_abrt);
        r.set("wretr", s.wretr);
        r.set("wredis", 0);
        r.set("status", &s.status);
        // Configured weight and "active, not backup", as HAProxy prints them for every server; who
        // actually gets traffic is the BACKEND row's weight/act and our own columns elsewhere.
        r.set("weight", 1);
        r.set("uweight", 1);
        r.set("act", 1);
        r.set("bck", 0);
        r.set("chkfail", s.chkfail);
        r.set("chkdown", s.chkdown);
        r.set("lastchg", s.lastchg_s);
        r.set("downtime", s.downtime_s);
        r.set("lbtot", s.stot);
        r.set("cli_abrt", s.cli_abrt);
        r.set("srv_abrt", s.srv_abrt);
        r.set(
            "lastsess",
            s.lastsess_s.map_or("-1".to_string(), |v| v.to_string()),
        );
        match &s.last_check {
            Some(c) => {
                r.set("check_status", c.status);
                if c.status.is_layer7() {
                    if let Some(code) = c.code {
                        r.set("check_code", code);
                    }
                }
                r.set("check_duration", c.duration.as_millis());
                if let Some(info) = &c.info {
                    r.set("last_chk", info);
                }
            }
            None => r.set("check_status", "INI"),
        }
        r.set("check_desc", s.check_desc);
        r.set("check_rise", s.check_rise);
        r.set("check_fall", s.check_fall);
        r.set("check_health", s.check_health);
        r.set("addr", &s.address);
        rows.push(r);
    }

    // `act` counts the servers that get traffic.
    let routable = section.routable;
    let sum = |g: fn(&ServerView) -> u64| section.servers.iter().map(g).sum::<u64>();
    let mut be = Row::new(section, "BACKEND", TYPE_BACKEND);
    be.set("qcur", f.qcur);
    be.set("qmax", f.qmax);
    be.set("scur", sum(|s| s.scur));
    be.set("stot", sum(|s| s.stot));
    be.set("bin", sum(|s| s.bin));
    be.set("bout", sum(|s| s.bout));
    // HAProxy counts "no server available" in the backend's econ.
    be.set("econ", sum(|s| s.econ) + f.refusals.no_primary);
    be.set("eresp", sum(|s| s.srv_abrt));
    be.set("wretr", sum(|s| s.wretr));
    be.set("wredis", 0);
    be.set("status", if routable { "UP" } else { "DOWN" });
    be.set("weight", u8::from(routable));
    be.set("uweight", u8::from(routable));
    be.set("act", u8::from(routable));
    be.set("bck", 0);
    be.set("lastchg", section.lastchg_s);
    be.set("downtime", section.downtime_s);
    be.set("lbtot", sum(|s| s.stot));
    be.set("cli_abrt", sum(|s| s.cli_abrt));
    be.set("srv_abrt", sum(|s| s.srv_abrt));
    rows.push(be);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_haproxys_with_its_trailing_comma() {
        let cols: Vec<&str> = HEADER.split(',').collect();
        assert_eq!(cols.len(), 128);
        assert_eq!(cols[..4], ["pxname", "svname", "qcur", "qmax"]);
        assert_eq!(
            cols[36..39],
            ["check_status", "check_code", "check_duration"]
        );
        assert_eq!(cols[73], "addr");
        assert_eq!(cols[102], "agg_check_status");
        assert_eq!(cols[103], "-");
    }
}
