//! [`Cfg`]: the one writer of a mirror's TOML, for the in-process mirror and the child
//! process alike; [`write_config`] puts a child's into a file.

use std::path::{Path, PathBuf};

/// Builds a hoard config file.
#[derive(Clone)]
pub struct Cfg {
    cache_dir: PathBuf,
    default_upstream: String,
    tag_ttl: String,
    upstreams: Vec<(String, Vec<(String, String)>)>,
    /// Extra top-level `key = value` lines (value as TOML).
    top: Vec<(String, String)>,
    /// `[local]` keys (value as TOML).
    local: Vec<(String, String)>,
}

impl Cfg {
    /// `default_upstream = "docker.io"`, `tag_ttl = "5m"`, no upstreams yet.
    pub fn new(cache_dir: &Path) -> Cfg {
        Cfg {
            cache_dir: cache_dir.to_path_buf(),
            default_upstream: "docker.io".to_string(),
            tag_ttl: "5m".to_string(),
            upstreams: Vec::new(),
            top: Vec::new(),
            local: Vec::new(),
        }
    }

    /// Adds a top-level `key = value` (value given as TOML).
    pub fn top(mut self, key: &str, toml_value: &str) -> Cfg {
        self.top.push((key.to_string(), toml_value.to_string()));
        self
    }

    /// Adds `key = value` (value given as TOML) under `[local]`.
    pub fn local(mut self, key: &str, toml_value: &str) -> Cfg {
        self.local.push((key.to_string(), toml_value.to_string()));
        self
    }

    pub fn default_upstream(mut self, name: &str) -> Cfg {
        self.default_upstream = name.to_string();
        self
    }

    pub fn tag_ttl(mut self, ttl: &str) -> Cfg {
        self.tag_ttl = ttl.to_string();
        self
    }

    /// Adds `[upstreams."<name>"] url = "<url>"`.
    pub fn upstream(mut self, name: &str, url: &str) -> Cfg {
        self.upstreams
            .push((name.to_string(), vec![("url".to_string(), toml_str(url))]));
        self
    }

    /// Adds `key = value` (value given as TOML, e.g. `"\"1s\""`) to an upstream added before.
    pub fn upstream_raw(mut self, name: &str, key: &str, toml_value: &str) -> Cfg {
        let entry = self
            .upstreams
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("upstream {name} not added yet"));
        entry.1.push((key.to_string(), toml_value.to_string()));
        self
    }

    /// Adds a string-valued key to an upstream.
    pub fn upstream_key(self, name: &str, key: &str, value: &str) -> Cfg {
        self.upstream_raw(name, key, &toml_str(value))
    }

    pub fn toml(&self) -> String {
        let mut out = format!(
            "listen = \"127.0.0.1:0\"\ncache_dir = {}\ndefault_upstream = {}\ntag_ttl = {}\n",
            toml_str(&self.cache_dir.display().to_string()),
            toml_str(&self.default_upstream),
            toml_str(&self.tag_ttl),
        );
        for (k, v) in &self.top {
            out.push_str(&format!("{k} = {v}\n"));
        }
        if !self.local.is_empty() {
            out.push_str("\n[local]\n");
            for (k, v) in &self.local {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        for (name, keys) in &self.upstreams {
            out.push_str(&format!("\n[upstreams.{}]\n", toml_str(name)));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes `config_toml` into `dir/mirror.toml` with JSON logs (the child harness reads
/// its listening addresses and progress from them) and returns the path. `dir` is the
/// test's `TempDir`, beside the cache directory, never inside it (it would be a stray).
pub fn write_config(dir: &Path, config_toml: &str) -> PathBuf {
    let path = dir.join("mirror.toml");
    std::fs::write(&path, format!("log_format = \"json\"\n{config_toml}"))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}
