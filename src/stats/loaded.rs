//! What the stats side shows of the configuration this process runs: the file it was loaded from,
//! a hash of its contents, when it was loaded, and how reloads went (counted for
//! `patroni_proxy_config_reloads_total`). Written at start-up and by the `reload` module.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::SystemTime;

/// A configuration file as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub path: PathBuf,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
    pub at: SystemTime,
}

/// The running configuration's origin and the reload counts.
#[derive(Debug, Default)]
pub struct ConfigInfo {
    loaded: Mutex<Option<Loaded>>,
    /// The last failed reload's reason (bounded: one config error message).
    last_error: Mutex<Option<String>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl ConfigInfo {
    /// The file the running configuration came from (start-up or the last reload that applied).
    pub fn set_loaded(&self, loaded: Loaded) {
        *self.loaded.lock().expect("config info lock") = Some(loaded);
    }

    pub fn loaded(&self) -> Option<Loaded> {
        self.loaded.lock().expect("config info lock").clone()
    }

    pub fn reloaded(&self, loaded: Loaded) {
        self.set_loaded(loaded);
        self.reloads_ok.fetch_add(1, Relaxed);
    }

    pub fn failed(&self, why: String) {
        *self.last_error.lock().expect("config info lock") = Some(why);
        self.reloads_failed.fetch_add(1, Relaxed);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("config info lock").clone()
    }
}
