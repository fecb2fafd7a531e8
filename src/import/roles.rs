//! Which listener role a Patroni check URI asks for: the request path decides who gets sessions
//! (docs/migrating-from-haproxy.md has the table and how each rule compares with Patroni's).

use crate::config::{ByteSize, Role};

/// The role and lag limit of a check URI, or why it cannot be honoured.
pub(super) fn role_of(uri: &str) -> Result<(Role, Option<ByteSize>), String> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let role = match path.trim_end_matches('/') {
        "" | "/primary" | "/master" | "/read-write" | "/leader" => Role::Primary,
        "/replica" => Role::Replica,
        "/read-only" | "/health" => Role::Any,
        "/standby-leader" | "/standby_leader" => Role::StandbyLeader,
        "/sync" | "/synchronous" => Role::Sync,
        "/async" | "/asynchronous" => Role::Async,
        p @ ("/quorum" | "/read-only-sync" | "/read-only-synchronous" | "/read-only-quorum") => {
            return Err(format!(
                "`{p}` picks nodes by quorum commit or mixes the leader with synchronous \
                 standbys, which no listener role follows: use `/sync` (role sync), `/replica` \
                 (role replica) or `/read-only` (role any)"
            ))
        }
        p => {
            return Err(format!(
                "`{p}` is not a Patroni role endpoint patroni-proxy knows: use /primary, \
                 /replica, /read-only or /standby-leader"
            ))
        }
    };
    let mut lag = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "lag" if role.balances() => {
                lag = Some(ByteSize::parse(v).map_err(|m| {
                    format!(
                        "{m}. Patroni ignores a lag it cannot read, so this check had no limit; \
                         write it as Patroni reads it"
                    )
                })?)
            }
            // Role replica already requires a streaming replica.
            "replication_state" if v == "streaming" && role == Role::Replica => {}
            _ => {
                return Err(format!(
                    "the query `{pair}` selects nodes by something no listener role follows \
                     (Patroni tags, states): remove it"
                ))
            }
        }
    }
    Ok((role, lag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_patroni_endpoint_gives_its_role() {
        // docs/migrating-from-haproxy.md, "Check endpoints and roles".
        for (uri, role) in [
            ("/", Role::Primary),
            ("/primary", Role::Primary),
            ("/master", Role::Primary),
            ("/leader", Role::Primary),
            ("/read-write", Role::Primary),
            ("/replica", Role::Replica),
            ("/read-only", Role::Any),
            ("/health", Role::Any),
            ("/standby-leader", Role::StandbyLeader),
            ("/sync", Role::Sync),
            ("/synchronous", Role::Sync),
            ("/async", Role::Async),
            ("/asynchronous", Role::Async),
        ] {
            assert_eq!(role_of(uri).unwrap(), (role, None), "{uri}");
        }
        assert_eq!(
            role_of("/replica?lag=100MB").unwrap(),
            (Role::Replica, Some(ByteSize(100 << 20)))
        );
        assert_eq!(
            role_of("/read-only?lag=16384").unwrap(),
            (Role::Any, Some(ByteSize(16384)))
        );
        assert_eq!(
            role_of("/async?lag=100MB").unwrap(),
            (Role::Async, Some(ByteSize(100 << 20)))
        );
    }

    #[test]
    fn what_no_role_follows_is_refused_with_the_reason() {
        for (uri, says) in [
            ("/quorum", "quorum commit"),
            ("/read-only-sync", "mixes the leader"),
            ("/replica?lag=10mb", "Patroni ignores"),
            ("/replica?tag_dc=east", "tags"),
            ("/v1/status/leader", "not a Patroni role endpoint"),
        ] {
            let e = role_of(uri).unwrap_err();
            assert!(e.contains(says), "{uri}: {e}");
        }
    }
}
