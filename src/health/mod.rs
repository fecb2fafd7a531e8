//! Health checking: the pure rise/fall counter ([`machine`]), one HTTP check ([`check`]) and the
//! per-node task that runs checks on HAProxy's schedule ([`checker`]).

pub mod check;
pub mod checker;
pub mod machine;

pub use check::{CheckResult, CheckSpec, CheckStatus};
pub use machine::{HealthCounter, Status, Transition};
