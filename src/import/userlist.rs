//! `userlist` sections and the stats page's access rules built on them (`acl A
//! http_auth(LIST)`, `stats http-request auth unless A`, `stats admin if B`), turned into the
//! stats listener's two credentials: `[stats] auth` (read-only) and `admin_user` /
//! `admin_password` (admin, which also opens the read-only pages). A set of users that does not
//! fit those two is an error naming the line.

use std::collections::HashMap;

use super::sections::{Block, Line};
use super::{err, ImportError};

/// A userlist: each user's plain password and groups.
#[derive(Debug, Default, Clone)]
pub(super) struct Users {
    /// `(name, password, groups)` in the file's order.
    users: Vec<(String, String, Vec<String>)>,
}

/// Reads `user NAME insecure-password PW [groups G,..]` and `group G users U,..`. A hashed
/// `password` cannot become an HTTP Basic credential here: an error naming the line.
pub(super) fn parse_userlist(block: &Block) -> Result<Users, ImportError> {
    let mut u = Users::default();
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for Line { line, w } in &block.body {
        let word = |i: usize| w.get(i).map(String::as_str);
        match (word(0), word(2)) {
            (Some("user"), Some("insecure-password")) => {
                let (name, pw) = (w[1].clone(), word(3).unwrap_or_default().to_string());
                let groups = match (word(4), word(5)) {
                    (Some("groups"), Some(g)) => g.split(',').map(str::to_string).collect(),
                    _ => Vec::new(),
                };
                u.users.push((name, pw, groups));
            }
            (Some("user"), Some("password")) => {
                return Err(err(
                    *line,
                    "user password",
                    "a hashed password cannot be converted: patroni-proxy's stats credentials \
                     are `user:password` ([stats] auth); write `stats auth` in the stats section",
                ))
            }
            (Some("group"), _) => {
                let users = match (word(2), word(3)) {
                    (Some("users"), Some(list)) => list.split(',').map(str::to_string).collect(),
                    _ => Vec::new(),
                };
                members.push((w.get(1).cloned().unwrap_or_default(), users));
            }
            _ => {
                return Err(err(
                    *line,
                    word(0).unwrap_or_default(),
                    "expected `user NAME insecure-password PW` or `group NAME users U,..`",
                ))
            }
        }
    }
    for (group, names) in members {
        for (name, _, groups) in &mut u.users {
            if names.contains(name) && !groups.contains(&group) {
                groups.push(group.clone());
            }
        }
    }
    Ok(u)
}

/// Who an ACL admits: `http_auth(LIST)` (every user) or `http_auth_group(LIST) G..`.
fn admitted(
    acl: &Line,
    lists: &HashMap<String, Users>,
) -> Result<Vec<(String, String)>, ImportError> {
    let what = acl.w.get(2).map(String::as_str).unwrap_or_default();
    let inner = |prefix: &str| {
        what.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(')'))
            .map(str::to_string)
    };
    let (list, groups) =
        match (inner("http_auth("), inner("http_auth_group(")) {
            (Some(l), _) => (l, None),
            (_, Some(l)) => (l, Some(acl.w[3..].to_vec())),
            _ => return Err(err(
                acl.line,
                "acl",
                "only `http_auth(LIST)` and `http_auth_group(LIST) GROUP` ACLs protect the stats \
                 page here",
            )),
        };
    let users = lists
        .get(&list)
        .ok_or_else(|| err(acl.line, "acl", &format!("no userlist named `{list}`")))?;
    Ok(users
        .users
        .iter()
        .filter(|(_, _, g)| {
            groups
                .as_ref()
                .is_none_or(|want| g.iter().any(|x| want.contains(x)))
        })
        .map(|(n, p, _)| (n.clone(), p.clone()))
        .collect())
}

/// The credentials of `stats http-request auth unless READ` and `stats admin if ADMIN`: read-only
/// `user:password` and admin `(user, password)`.
pub(super) type Credentials = (Option<String>, Option<(String, String)>);

/// `rules` are the stats section's `acl`, `stats http-request` and `stats admin` lines.
pub(super) fn credentials(
    rules: &[Line],
    lists: &HashMap<String, Users>,
) -> Result<Credentials, ImportError> {
    let acl = |name: &str, line: usize, directive: &str| {
        rules
            .iter()
            .find(|l| l.w[0] == "acl" && l.w.get(1).map(String::as_str) == Some(name))
            .ok_or_else(|| {
                err(
                    line,
                    directive,
                    &format!(
                        "no `acl {name}` in the stats section: only `stats admin if TRUE` or an \
                         `http_auth(LIST)` ACL can be imported (patroni-proxy has no other ACLs)"
                    ),
                )
            })
    };
    let (mut readers, mut admins) = (None, None);
    for l in rules {
        let w: Vec<&str> = l.w.iter().map(String::as_str).collect();
        match w.as_slice() {
            ["acl", ..] => {}
            ["stats", "http-request", "auth", .., "unless", name] => {
                readers = Some((
                    l.line,
                    admitted(acl(name, l.line, "stats http-request")?, lists)?,
                ))
            }
            ["stats", "admin", "if", name] => {
                admins = Some((l.line, admitted(acl(name, l.line, "stats admin")?, lists)?))
            }
            _ => {
                return Err(err(
                    l.line,
                    &format!("{} {}", w[0], w.get(1).unwrap_or(&"")),
                    "this access rule on the stats page cannot be converted: write `stats auth \
                     user:password` (and `stats admin if TRUE` for admin rights)",
                ))
            }
        }
    }
    let admin = match &admins {
        None => None,
        Some((_, a)) if a.len() == 1 => Some(a[0].clone()),
        Some((line, a)) => {
            return Err(err(
                *line,
                "stats admin",
                &format!(
                    "{} admin users: patroni-proxy has one ([stats] admin_user / admin_password)",
                    a.len()
                ),
            ))
        }
    };
    let read = match readers {
        None => None,
        Some((line, r)) => {
            let others: Vec<&(String, String)> =
                r.iter().filter(|u| admin.as_ref() != Some(*u)).collect();
            match others.as_slice() {
                [] => admin.as_ref().map(|(u, p)| format!("{u}:{p}")),
                [(u, p)] => Some(format!("{u}:{p}")),
                _ => {
                    return Err(err(
                        line,
                        "stats http-request auth",
                        "more than one read-only user: [stats] auth holds one user:password \
                         (the admin user is a second)",
                    ))
                }
            }
        }
    };
    Ok((read, admin))
}
