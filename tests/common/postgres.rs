//! PostgreSQL for the tests: the server `.ci/run` starts (its URL in
//! `CHAT_TEST_POSTGRES_URL`), or a throwaway cluster a test starts and stops
//! itself (fault tests) with `scripts/lib/postgres.sh`.
//!
//! Without a server the tests print a loud `SKIPPED` line and pass; with
//! `CHAT_TEST_REQUIRE_POSTGRES=1` (set by `.ci/run`) they fail instead, so
//! CI can never skip them silently.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use chat_service::store::postgres::{PostgresSettings, PostgresStore};
use chat_service::store::Store;

fn required() -> bool {
    std::env::var("CHAT_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// Skips (or, when required, fails) the calling test.
pub fn skip(why: &str) {
    assert!(!required(), "CHAT_TEST_REQUIRE_POSTGRES=1 but {why}");
    eprintln!("SKIPPED: {why} — PostgreSQL tests not run");
}

/// The shared test server's URL, when there is one.
pub fn url() -> Option<String> {
    match std::env::var("CHAT_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skip(
                "CHAT_TEST_POSTGRES_URL is not set (scripts/lib/postgres.sh start DIR prints one)",
            );
            None
        }
    }
}

pub fn settings(url: &str) -> PostgresSettings {
    PostgresSettings {
        url: url.to_string(),
        ..PostgresSettings::from(&chat_service::config::Config::defaults())
    }
}

/// A store on the shared test server.
pub async fn store() -> Option<Arc<dyn Store>> {
    let url = url()?;
    let store = PostgresStore::connect(&settings(&url))
        .await
        .expect("CHAT_TEST_POSTGRES_URL is set but PostgreSQL cannot be reached");
    Some(Arc::new(store))
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/postgres.sh")
}

/// A cluster of its own, in a temporary directory, on a free port.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
    running: bool,
}

impl Cluster {
    /// Starts one; `None` (after [`skip`]) when PostgreSQL is not installed.
    pub fn start() -> Option<Cluster> {
        let has_server = std::fs::read_dir("/usr/lib/postgresql")
            .map(|dirs| dirs.flatten().any(|d| d.path().join("bin/pg_ctl").exists()))
            .unwrap_or(false);
        if !has_server {
            skip("no PostgreSQL server is installed (apt-get install postgresql)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("chat-pg-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // The cluster runs as the postgres user, who must reach its
        // directory inside this one.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod the cluster's parent");
        let port = free_port();
        let mut cluster = Cluster {
            dir,
            port,
            url: String::new(),
            running: false,
        };
        cluster.url = cluster.run_script("start");
        cluster.running = true;
        Some(cluster)
    }

    fn run_script(&self, command: &str) -> String {
        let output = Command::new("bash")
            .arg(script())
            .arg(command)
            .arg(self.dir.path().join("cluster"))
            .arg(self.port.to_string())
            .output()
            .expect("run scripts/lib/postgres.sh");
        assert!(
            output.status.success(),
            "postgres.sh {command} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Fast shutdown: sessions are ended, the port closes.
    pub fn stop(&mut self) {
        self.run_script("stop");
        self.running = false;
    }

    /// Starts it again on the same port, with the same data.
    pub fn restart(&mut self) {
        self.run_script("start");
        self.running = true;
    }

    /// Runs SQL through psql as the superuser (for fault injection).
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = Command::new("bash")
                .arg(script())
                .arg("stop")
                .arg(self.dir.path().join("cluster"))
                .output();
        }
    }
}

/// Runs SQL on `url` through psql; its output, unaligned.
pub fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .arg(url)
        .args(["-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// Whether the real-binary tests run on PostgreSQL (`CHAT_TEST_STORE=postgres`,
/// set by `scripts/test.sh` for its second pass) instead of the embedded store.
pub fn binary_tests_use_postgres() -> bool {
    std::env::var("CHAT_TEST_STORE").is_ok_and(|store| store == "postgres")
}

/// A new, empty database on the shared test server, for one server under
/// test (so fixed user and lesson ids of one test never meet another's);
/// its URL. Panics without a server: the caller asked for PostgreSQL.
pub fn fresh_database() -> String {
    let admin = std::env::var("CHAT_TEST_POSTGRES_URL")
        .expect("CHAT_TEST_STORE=postgres needs CHAT_TEST_POSTGRES_URL");
    let name = format!("chat_test_{}", chat_service::model::ObjectId::new());
    let output = Command::new("psql")
        .arg(&admin)
        .args(["-qAtX", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "CREATE DATABASE: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let base = admin.split('?').next().unwrap_or(&admin);
    let (server, _db) = base.rsplit_once('/').expect("a database in the URL");
    format!("{server}/{name}")
}
