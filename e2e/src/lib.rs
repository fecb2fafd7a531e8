//! The real-cluster harness of patroni-proxy, one crate shared by the end-to-end tests
//! (`tests/e2e/`), `scripts/failover-compare` (`examples/failover_compare.rs`) and `scripts/soak`
//! (`examples/soak`): [`harness`] drives the cluster and the proxies and records what clients see;
//! [`scenarios`] are the failovers run through them, [`outage`] the primary's REST API cut off by
//! a firewall rule, [`faults`] its REST API wedged and etcd stopped, [`timeline`] the old primary
//! back on its old timeline, [`churn`] many failovers in a row through the same proxies; [`browser`] drives a headless Chromium and
//! [`pictures`] watches a switchover on the dashboard's pictures; [`instances`] compares
//! several proxy instances in front of the one cluster; [`reloads`] reloads the configuration
//! under load; [`replicas`] follows the read-only port.

pub mod browser;
pub mod churn;
pub mod faults;
pub mod harness;
pub mod instances;
pub mod outage;
pub mod pictures;
pub mod reloads;
pub mod replicas;
pub mod scenarios;
pub mod timeline;
