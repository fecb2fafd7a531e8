//! Health checking: the pure rise/fall counter ([`machine`]), one HTTP check ([`check`]), what its
//! answer says about the node's role ([`patroni`]), the TLS layer under it ([`tls`]), the optional
//! SQL check of PostgreSQL itself ([`sql`], its TLS in [`pgtls`]) and the per-node task that runs
//! checks on HAProxy's schedule ([`checker`]), which resolves a server's host name first
//! ([`resolve`]).

pub mod check;
pub mod checker;
pub mod machine;
pub mod patroni;
pub mod pgtls;
pub mod resolve;
pub mod sql;
pub mod tls;

pub use check::{CheckResult, CheckSpec, CheckStatus};
pub use machine::{HealthCounter, Status, Transition};
