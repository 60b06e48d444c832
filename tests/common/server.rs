//! The real `chat-service` binary, started on an ephemeral loopback port
//! against a Django stand-in, with its own data directory (and, under
//! `CHAT_TEST_STORE=postgres`, a PostgreSQL database of its own).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// Every log line the server printed, as it printed them.
    pub logs: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
    django_url: String,
    env: Vec<(String, String)>,
    /// RLIMIT_NOFILE (soft and hard) for the child, when set.
    open_files: Option<u64>,
}

/// A response: status and parsed JSON body (Null when not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Server {
    /// Starts the binary with `env` on top of test defaults.
    pub fn start(django_url: &str, env: &[(&str, &str)]) -> Server {
        let mut server = Server::start_stopped(django_url, env);
        server.spawn();
        server
    }

    /// Like [`Server::start`], with the child's open-files limit set to
    /// `open_files` (soft and hard), to test descriptor exhaustion.
    pub fn start_with_open_files(
        django_url: &str,
        env: &[(&str, &str)],
        open_files: u64,
    ) -> Server {
        let mut server = Server::start_stopped(django_url, env);
        server.open_files = Some(open_files);
        server.spawn();
        server
    }

    fn start_stopped(django_url: &str, env: &[(&str, &str)]) -> Server {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let chose_store = env
            .iter()
            .any(|(k, _)| k == "CHAT_POSTGRES_URL" || k == "MONGO_URI");
        if super::postgres::binary_tests_use_postgres() && !chose_store {
            env.push((
                "CHAT_POSTGRES_URL".into(),
                super::postgres::fresh_database(),
            ));
        }
        Server {
            child: None,
            addr: String::new(),
            data_dir,
            _temp: Some(temp),
            logs: Default::default(),
            django_url: django_url.to_string(),
            env,
            open_files: None,
        }
    }

    fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-service"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", "0")
            .env("CHAT_BIND", "127.0.0.1")
            .env("DJANGO_BASE_URL", &self.django_url)
            .env("CHAT_DATA_DIR", &self.data_dir)
            .env("CHAT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if let Some(limit) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the
            // child's own limits, between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("spawn chat-service");
        let (tx, rx) = mpsc::channel::<String>();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")) as Box<dyn std::io::Read + Send>,
        ] {
            let tx = tx.clone();
            let logs = self.logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    logs.lock().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("server did not start; logs: {:#?}", self.logs.lock()));
            if line.contains("listening") {
                // `addr=…` in text logs, `"addr":"…"` in JSON ones.
                let addr = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("addr="))
                    .map(str::to_string)
                    .or_else(|| {
                        let json: Value = serde_json::from_str(&line).ok()?;
                        Some(json["fields"]["addr"].as_str()?.to_string())
                    })
                    .expect("addr in the listening line");
                self.addr = addr;
                break;
            }
        }
        self.child = Some(child);
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{}", self.addr, query)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`, then start again on the same data directory.
    pub fn crash_and_restart(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        let _ = child.wait();
        self.spawn();
    }

    /// Starts the server again on the same data directory (after
    /// `terminate`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) with a pid we own and a plain signal number.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// GET with optional bearer token and X-User-Id.
    pub async fn get(&self, path: &str, token: Option<&str>, user: Option<i64>) -> Reply {
        // reqwest is built without a default crypto provider (the service
        // installs ring itself); plain-HTTP tests still need one installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let mut request = client.get(self.http_url(path));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(user) = user {
            request = request.header("X-User-Id", user.to_string());
        }
        let response = request.send().await.expect("http request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("body");
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
