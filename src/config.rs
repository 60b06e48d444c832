//! Configuration: every setting is an environment variable (the seed's names,
//! plus `CHAT_*`) and a flag; all are validated once, at start.
//!
//! Each flag's value name is its variable, so a bad value's error message
//! names the variable the operator actually set.
//!
//! Every default is here, in the flags; `settings.rs` builds each
//! subsystem's settings from a `Config`.

mod settings;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::store::sqlite::SqliteSync;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "chat-service",
    version,
    about = "Real-time mentor–student chat over WebSocket, authenticated by Django.",
    long_about = None
)]
pub struct Config {
    /// HTTP + WebSocket port (0 picks a free one and logs it).
    #[arg(long, env = "PORT", value_name = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to bind.
    #[arg(
        long,
        env = "CHAT_BIND",
        value_name = "CHAT_BIND",
        default_value = "0.0.0.0"
    )]
    pub bind: IpAddr,

    /// MongoDB connection string; unset means the embedded SQLite store.
    #[arg(long, env = "MONGO_URI", value_name = "MONGO_URI", value_parser = non_empty)]
    pub(crate) mongo_uri: Option<String>,

    /// PostgreSQL URL (`postgres://user:pass@host:port/db?sslmode=require`):
    /// selects the PostgreSQL store. Not with MONGO_URI.
    #[arg(long, env = "CHAT_POSTGRES_URL", value_name = "CHAT_POSTGRES_URL", value_parser = non_empty, conflicts_with = "mongo_uri")]
    pub(crate) postgres_url: Option<String>,

    /// MongoDB database name.
    #[arg(long, env = "MONGO_DB", value_name = "MONGO_DB", default_value = "chat", value_parser = non_empty)]
    pub(crate) mongo_db: String,

    /// Django base URL, e.g. `http://django:8000` or `http://host/backend`.
    #[arg(long, env = "DJANGO_BASE_URL", value_name = "DJANGO_BASE_URL", value_parser = django_base_url)]
    pub(crate) django_base_url: String,

    /// Directory of the embedded store.
    #[arg(
        long,
        env = "CHAT_DATA_DIR",
        value_name = "CHAT_DATA_DIR",
        default_value = "./data"
    )]
    pub(crate) data_dir: PathBuf,

    /// Hub shards (default: available cores).
    #[arg(long, env = "CHAT_SHARDS", value_name = "CHAT_SHARDS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) shards: Option<u16>,

    /// Longest message text, in UTF-8 bytes.
    #[arg(long, env = "CHAT_MAX_TEXT_BYTES", value_name = "CHAT_MAX_TEXT_BYTES", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub(crate) max_text_bytes: u32,

    /// Longest inbound WebSocket message, all fragments together.
    #[arg(long, env = "CHAT_MAX_FRAME_BYTES", value_name = "CHAT_MAX_FRAME_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(256..=67_108_864))]
    pub(crate) max_frame_bytes: u32,

    /// Most messages one `/messages` call returns.
    #[arg(long, env = "CHAT_MAX_HISTORY", value_name = "CHAT_MAX_HISTORY", default_value_t = 10000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_history: u32,

    /// Largest `/messages` answer, in bytes of JSON: a page stops before
    /// the message that would pass it (one message is always sent).
    #[arg(long, env = "CHAT_MAX_HISTORY_BYTES", value_name = "CHAT_MAX_HISTORY_BYTES", default_value_t = 4_194_304, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=268_435_456))]
    pub(crate) max_history_bytes: usize,

    /// `/messages` answers built or being sent at once; memory for history
    /// is about this times CHAT_MAX_HISTORY_BYTES.
    #[arg(long, env = "CHAT_HISTORY_CONCURRENCY", value_name = "CHAT_HISTORY_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) history_concurrency: u32,

    /// How long a `/messages` call waits for its turn before answering 503,
    /// in milliseconds.
    #[arg(long, env = "CHAT_HISTORY_WAIT_MS", value_name = "CHAT_HISTORY_WAIT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub(crate) history_wait_ms: u64,

    /// `/messages` answers one caller may have built or being sent at once;
    /// beyond it 429, so one user cannot hold every turn.
    #[arg(long, env = "CHAT_HISTORY_PER_USER", value_name = "CHAT_HISTORY_PER_USER", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) history_per_user: u32,

    /// Comma-separated allowed `Origin`s for `/ws` (unset: any).
    #[arg(long, env = "CHAT_ALLOWED_ORIGINS", value_name = "CHAT_ALLOWED_ORIGINS", value_parser = origin_list)]
    pub(crate) allowed_origins: Option<OriginList>,

    /// Timeout of one Django call, in milliseconds.
    #[arg(long, env = "CHAT_DJANGO_TIMEOUT_MS", value_name = "CHAT_DJANGO_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub(crate) django_timeout_ms: u64,

    /// How long a Django 200 answer is reused, in seconds (0: never cached).
    #[arg(long, env = "CHAT_AUTH_CACHE_TTL_S", value_name = "CHAT_AUTH_CACHE_TTL_S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub(crate) auth_cache_ttl_s: u64,

    /// Path of Django's users endpoint; `{user_id}` is replaced.
    #[arg(long, env = "CHAT_DJANGO_USER_PATH", value_name = "CHAT_DJANGO_USER_PATH", default_value = "/api/content/chat-service/users/{user_id}/", value_parser = path_template("{user_id}"))]
    pub(crate) django_user_path: String,

    /// Path of Django's lesson endpoint; `{lesson_id}` is replaced.
    #[arg(long, env = "CHAT_DJANGO_LESSON_PATH", value_name = "CHAT_DJANGO_LESSON_PATH", default_value = "/api/content/chat-service/lesson/{lesson_id}/detail/", value_parser = path_template("{lesson_id}"))]
    pub(crate) django_lesson_path: String,

    /// Durability of the embedded store: `normal` survives a process crash,
    /// `full` survives power loss.
    #[arg(long, env = "CHAT_SQLITE_SYNC", value_name = "CHAT_SQLITE_SYNC", value_enum, default_value_t = SqliteSync::Normal)]
    pub(crate) sqlite_sync: SqliteSync,

    /// Page cache of the embedded store's write connection, in MiB; it
    /// should hold the newest pages of every active conversation.
    // Merges insert each chunk sorted by conversation, touching the newest
    // B-tree leaf of `messages` and of the client-id index of every active
    // conversation (about 8 KiB each); 64 MiB keeps those of thousands of
    // conversations from one merge to the next instead of reading them back.
    // Measured before the journal, when every batch wrote SQLite directly:
    // 8 → 64 MiB took writer CPU from 18.5 to 11.2 µs per message at 20,000
    // messages/s over 5,000 conversations (docs/performance.md, History).
    #[arg(long, env = "CHAT_SQLITE_CACHE_MB", value_name = "CHAT_SQLITE_CACHE_MB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub(crate) sqlite_cache_mb: u32,

    /// Messages the embedded store's journal holds unmerged, at most: acks
    /// wait for the merge into SQLite beyond it; 0 merges every batch
    /// before its ack.
    // Four merges' worth (a merge starts at 65,536): about 60 MiB of
    // 150-byte messages at most.
    #[arg(long, env = "CHAT_SQLITE_JOURNAL_MAX", value_name = "CHAT_SQLITE_JOURNAL_MAX", default_value_t = 262_144, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=16_777_216))]
    pub(crate) sqlite_journal_max: usize,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `chat_service=debug`.
    #[arg(
        long,
        env = "CHAT_LOG",
        value_name = "CHAT_LOG",
        default_value = "info"
    )]
    pub log: String,

    /// Log line format: `text` (for people) or `json` (one object per line,
    /// for log collectors; span fields such as the connection's user and
    /// conversation ride along).
    #[arg(
        long,
        env = "CHAT_LOG_FORMAT",
        value_name = "CHAT_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,

    /// Most concurrent WebSocket connections (default: what the open-files
    /// limit allows, less a reserve).
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", value_name = "CHAT_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: Option<u32>,

    /// Server ping interval, in seconds.
    #[arg(long, env = "CHAT_PING_INTERVAL_S", value_name = "CHAT_PING_INTERVAL_S", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) ping_interval_s: u64,

    /// A connection that sent nothing for this long is closed (1001), in seconds.
    #[arg(long, env = "CHAT_IDLE_TIMEOUT_S", value_name = "CHAT_IDLE_TIMEOUT_S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) idle_timeout_s: u64,

    /// Bytes of others' events one connection may have queued before it
    /// counts as a slow consumer and is closed with 1013.
    #[arg(long, env = "CHAT_OUTBOUND_QUEUE_BYTES", value_name = "CHAT_OUTBOUND_QUEUE_BYTES", default_value_t = 4 << 20, value_parser = clap::value_parser!(u32).range(4096..=1_073_741_824))]
    pub(crate) outbound_queue_bytes: u32,

    /// Messages per second one connection may send on average (0: no limit).
    #[arg(long, env = "CHAT_MSG_RATE", value_name = "CHAT_MSG_RATE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub(crate) msg_rate: u32,

    /// Messages one connection may send at once before the rate applies.
    #[arg(long, env = "CHAT_MSG_BURST", value_name = "CHAT_MSG_BURST", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub(crate) msg_burst: u32,

    /// WebSocket connections one user may hold at once; beyond it `/ws` answers 429.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_USER", value_name = "CHAT_MAX_CONNECTIONS_PER_USER", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections_per_user: u32,

    /// Seconds a client has to send a complete HTTP request head.
    #[arg(long, env = "CHAT_HEADER_TIMEOUT_S", value_name = "CHAT_HEADER_TIMEOUT_S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub(crate) header_timeout_s: u64,

    /// Connections that have not yet sent a complete request head, at most;
    /// beyond it the oldest of them is closed.
    #[arg(long, env = "CHAT_MAX_PENDING_HEADERS", value_name = "CHAT_MAX_PENDING_HEADERS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_pending_headers: u32,

    /// Refuse a mentor's connection unless Django's lesson lists the student
    /// in `student_ids` (a lesson without the list refuses every mentor).
    #[arg(long, env = "CHAT_REQUIRE_ROSTER", value_name = "CHAT_REQUIRE_ROSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) require_roster: bool,

    /// Most writes one store batch carries. Batches only grow this large under
    /// load (a partial batch waits at most the window): each batch costs one
    /// journal append in SQLite (one fsync with `full`) or one `insert_many`
    /// in MongoDB whatever its size, so large batches keep the cost per
    /// message low.
    #[arg(long, env = "CHAT_WRITER_BATCH", value_name = "CHAT_WRITER_BATCH", default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) writer_batch: u32,

    /// How long a partial batch waits for more writes, in milliseconds. 0
    /// (the default) is group commit: a batch is whatever queued while the
    /// previous one was written, so a lone message is written at once.
    #[arg(long, env = "CHAT_WRITER_WINDOW_MS", value_name = "CHAT_WRITER_WINDOW_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub(crate) writer_window_ms: u64,

    /// Most messages replayed to a connection that reconnects with
    /// `since_seq`; when more were missed, the newest this many are, and the
    /// client pages the rest with `/messages?before_seq=`.
    #[arg(long, env = "CHAT_RECOVERY_MAX", value_name = "CHAT_RECOVERY_MAX", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) recovery_max: u32,

    /// Writes held at most while the store is slow or down; beyond it new
    /// messages are refused with `overloaded`.
    #[arg(long, env = "CHAT_WRITER_QUEUE", value_name = "CHAT_WRITER_QUEUE", default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub(crate) writer_queue: u32,

    /// A typing indicator not refreshed by a new `is_typing: true` for this
    /// long ends with `is_typing: false` to the others, in seconds; keep it
    /// above the clients' repeat interval plus a second.
    #[arg(long, env = "CHAT_TYPING_TTL_S", value_name = "CHAT_TYPING_TTL_S", default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub(crate) typing_ttl_s: u64,

    /// How long shutdown may take to close sockets and flush, in seconds.
    #[arg(long, env = "CHAT_SHUTDOWN_TIMEOUT_S", value_name = "CHAT_SHUTDOWN_TIMEOUT_S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) shutdown_timeout_s: u64,

    /// MongoDB connection pool size.
    #[arg(long, env = "CHAT_MONGO_POOL_SIZE", value_name = "CHAT_MONGO_POOL_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) mongo_pool_size: u32,

    /// MongoDB connect and server-selection timeout, in milliseconds.
    #[arg(long, env = "CHAT_MONGO_TIMEOUT_MS", value_name = "CHAT_MONGO_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub(crate) mongo_timeout_ms: u64,

    /// PostgreSQL connection pool size (the writer takes one connection).
    #[arg(long, env = "CHAT_POSTGRES_POOL_SIZE", value_name = "CHAT_POSTGRES_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=1_000))]
    pub(crate) postgres_pool_size: u32,

    /// PostgreSQL statement and connect timeout, in milliseconds.
    #[arg(long, env = "CHAT_POSTGRES_TIMEOUT_MS", value_name = "CHAT_POSTGRES_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub(crate) postgres_timeout_ms: u64,

    /// MongoDB write concern `w`: `majority` or a number of nodes.
    #[arg(long, env = "CHAT_MONGO_W", value_name = "CHAT_MONGO_W", default_value = "majority", value_parser = write_concern_w)]
    pub(crate) mongo_w: String,

    /// Whether MongoDB writes wait for the journal (`j`).
    #[arg(long, env = "CHAT_MONGO_JOURNAL", value_name = "CHAT_MONGO_JOURNAL", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) mongo_journal: bool,
}

/// Allowed `Origin` values, compared exactly (scheme, host and port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OriginList(pub(crate) Vec<String>);

impl OriginList {
    pub(crate) fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|allowed| allowed == origin)
    }
}

impl Config {
    pub fn shard_count(&self) -> usize {
        match self.shards {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    pub(crate) fn django_timeout(&self) -> Duration {
        Duration::from_millis(self.django_timeout_ms)
    }

    pub(crate) fn auth_cache_ttl(&self) -> Duration {
        Duration::from_secs(self.auth_cache_ttl_s)
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_s)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }

    pub(crate) fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_s)
    }

    pub(crate) fn typing_ttl(&self) -> Duration {
        Duration::from_secs(self.typing_ttl_s)
    }

    pub(crate) fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_s)
    }

    pub(crate) fn writer_window(&self) -> Duration {
        Duration::from_millis(self.writer_window_ms)
    }

    pub(crate) fn history_wait(&self) -> Duration {
        Duration::from_millis(self.history_wait_ms)
    }

    pub(crate) fn mongo_timeout(&self) -> Duration {
        Duration::from_millis(self.mongo_timeout_ms)
    }

    pub(crate) fn postgres_timeout(&self) -> Duration {
        Duration::from_millis(self.postgres_timeout_ms)
    }

    /// Every setting at its default, for tests and benches that need a
    /// subsystem's settings (`WriterConfig::from(&Config::defaults())`).
    /// Django, which has no default, is at a name that never resolves.
    pub fn defaults() -> Self {
        Self::for_tests("http://django.invalid")
    }

    /// Every setting at its default, with Django at `django_base_url`.
    ///
    /// Unlike `parse_from`, it ignores the environment: a test must not
    /// change with the `CHAT_*` variables of the shell that runs it.
    pub(crate) fn for_tests(django_base_url: &str) -> Self {
        let matches =
            without_env().get_matches_from(["chat-service", "--django-base-url", django_base_url]);
        Config::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }
}

/// The flags with no variable behind any of them.
fn without_env() -> clap::Command {
    Config::command().mut_args(|arg| arg.env(None))
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(value.to_string())
    }
}

/// Accepts `http(s)://host[:port][/prefix]`; drops one trailing slash so the
/// seed's string concatenation (`base + "/api/..."`) gives the same URL.
fn django_base_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .ok_or_else(|| format!("{value:?} is not an http:// or https:// URL"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains(['?', '#', ' ', '@']) {
        return Err(format!("{value:?} has no valid host"));
    }
    if value.contains(['?', '#']) {
        return Err(format!("{value:?} must not carry a query or fragment"));
    }
    Ok(value.strip_suffix('/').unwrap_or(value).to_string())
}

fn origin_list(value: &str) -> Result<OriginList, String> {
    let origins: Vec<String> = value
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_string())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.is_empty() {
        return Err("lists no origin".into());
    }
    Ok(OriginList(origins))
}

/// How log lines are written (`CHAT_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn path_template(placeholder: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |value: &str| {
        if !value.starts_with('/') {
            Err(format!("{value:?} must start with '/'"))
        } else if value.matches(placeholder).count() != 1 {
            Err(format!("{value:?} must contain {placeholder} exactly once"))
        } else {
            Ok(value.to_string())
        }
    }
}

fn write_concern_w(value: &str) -> Result<String, String> {
    if value == "majority" || value.parse::<u32>().is_ok() {
        Ok(value.to_string())
    } else {
        Err(format!("{value:?} is neither \"majority\" nor a number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["chat-service"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).map_err(|e| e.to_string())
    }

    #[test]
    fn base_url_keeps_prefix_and_drops_one_trailing_slash() {
        let cfg = parse(&["--django-base-url", "http://h:8000/backend/"]).unwrap();
        assert_eq!(cfg.django_base_url, "http://h:8000/backend");
        let cfg = parse(&["--django-base-url", "https://h"]).unwrap();
        assert_eq!(cfg.django_base_url, "https://h");
    }

    #[test]
    fn malformed_base_url_names_the_variable() {
        for bad in ["h:8000", "ftp://h", "http://", "http://h/?q=1"] {
            let err = parse(&["--django-base-url", bad]).unwrap_err();
            assert!(err.contains("DJANGO_BASE_URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn mongodb_and_postgresql_together_are_refused_naming_both() {
        let err = parse(&[
            "--django-base-url",
            "http://h",
            "--mongo-uri",
            "mongodb://m",
            "--postgres-url",
            "postgres://p/chat",
        ])
        .unwrap_err();
        assert!(
            err.contains("MONGO_URI") && err.contains("CHAT_POSTGRES_URL"),
            "{err}"
        );
        let cfg = parse(&[
            "--django-base-url",
            "http://h",
            "--postgres-url",
            "postgres://p/chat",
        ])
        .unwrap();
        assert_eq!(cfg.postgres_url.as_deref(), Some("postgres://p/chat"));
        assert_eq!(
            (cfg.postgres_pool_size, cfg.postgres_timeout_ms),
            (16, 5000)
        );
    }

    #[test]
    fn missing_base_url_names_the_variable() {
        let err = parse(&[]).unwrap_err();
        assert!(err.contains("DJANGO_BASE_URL"), "{err}");
    }

    #[test]
    fn bad_numbers_name_their_variable() {
        let err = parse(&["--django-base-url", "http://h", "--max-text-bytes", "0"]).unwrap_err();
        assert!(err.contains("CHAT_MAX_TEXT_BYTES"), "{err}");
        let err = parse(&["--django-base-url", "http://h", "--shards", "x"]).unwrap_err();
        assert!(err.contains("CHAT_SHARDS"), "{err}");
        let err = parse(&["--django-base-url", "http://h", "--sqlite-cache-mb", "0"]).unwrap_err();
        assert!(err.contains("CHAT_SQLITE_CACHE_MB"), "{err}");
        let err = parse(&[
            "--django-base-url",
            "http://h",
            "--max-history-bytes",
            "100",
        ])
        .unwrap_err();
        assert!(err.contains("CHAT_MAX_HISTORY_BYTES"), "{err}");
        let err = parse(&[
            "--django-base-url",
            "http://h",
            "--history-concurrency",
            "0",
        ])
        .unwrap_err();
        assert!(err.contains("CHAT_HISTORY_CONCURRENCY"), "{err}");
        for bad in ["0", "301"] {
            let err = parse(&["--django-base-url", "http://h", "--typing-ttl-s", bad]).unwrap_err();
            assert!(err.contains("CHAT_TYPING_TTL_S"), "{bad}: {err}");
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let cfg = Config::defaults();
        assert_eq!(cfg.port, 8080);
        assert_eq!(cfg.bind.to_string(), "0.0.0.0");
        assert_eq!(cfg.mongo_db, "chat");
        assert_eq!(cfg.max_text_bytes, 8192);
        assert_eq!(cfg.max_frame_bytes, 65536);
        assert_eq!(cfg.max_history, 10000);
        assert_eq!(cfg.max_history_bytes, 4_194_304);
        assert_eq!(cfg.history_concurrency, 8);
        assert_eq!(cfg.history_wait_ms, 5000);
        assert_eq!(cfg.django_timeout_ms, 5000);
        assert_eq!(cfg.auth_cache_ttl_s, 30);
        assert_eq!(cfg.sqlite_sync, SqliteSync::Normal);
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(cfg.sqlite_cache_mb, 64);
        assert_eq!(cfg.sqlite_journal_max, 262_144);
        assert_eq!(
            cfg.django_user_path,
            "/api/content/chat-service/users/{user_id}/"
        );
        assert_eq!(
            cfg.django_lesson_path,
            "/api/content/chat-service/lesson/{lesson_id}/detail/"
        );
        assert!(cfg.allowed_origins.is_none());
        assert!(cfg.shard_count() >= 1);
        assert_eq!(cfg.data_dir, PathBuf::from("./data"));
        assert!(cfg.mongo_uri.is_none());
        assert_eq!(cfg.max_connections, None);
        assert_eq!(cfg.max_connections_per_user, 20);
        assert_eq!(cfg.ping_interval_s, 25);
        assert_eq!(cfg.idle_timeout_s, 60);
        assert_eq!(cfg.outbound_queue_bytes, 4 << 20);
        assert_eq!((cfg.msg_rate, cfg.msg_burst), (20, 2000));
        assert_eq!(cfg.history_per_user, 2);
        assert_eq!(cfg.header_timeout_s, 10);
        assert_eq!(cfg.max_pending_headers, 1024);
        assert!(!cfg.require_roster);
        assert_eq!(cfg.writer_batch, 16_384);
        assert_eq!(cfg.writer_window_ms, 0);
        assert_eq!(cfg.recovery_max, 1000);
        assert_eq!(cfg.writer_queue, 262_144);
        assert_eq!(cfg.shutdown_timeout_s, 10);
        assert_eq!(cfg.typing_ttl_s, 6);
        assert_eq!(cfg.mongo_pool_size, 32);
        assert_eq!(cfg.mongo_timeout_ms, 5000);
        assert_eq!(cfg.mongo_w, "majority");
        assert!(cfg.mongo_journal);
        assert_eq!(cfg.log, "info");
    }

    // Checked on the command rather than by setting a variable: other tests
    // of this binary run at the same time and read the environment.
    #[test]
    fn test_configs_ignore_the_environment() {
        let has_env = |command: clap::Command| {
            command
                .get_arguments()
                .filter(|arg| arg.get_env().is_some())
                .count()
        };
        assert!(has_env(Config::command()) > 30, "every setting has one");
        assert_eq!(has_env(without_env()), 0);
    }

    #[test]
    fn origins_are_split_and_trimmed() {
        let cfg = parse(&[
            "--django-base-url",
            "http://h",
            "--allowed-origins",
            "https://a.example, http://b:3000/",
        ])
        .unwrap();
        let origins = cfg.allowed_origins.unwrap();
        assert!(origins.allows("https://a.example"));
        assert!(origins.allows("http://b:3000"));
        assert!(!origins.allows("https://evil.example"));
    }

    #[test]
    fn path_templates_need_their_placeholder() {
        let err = parse(&[
            "--django-base-url",
            "http://h",
            "--django-user-path",
            "/users/",
        ])
        .unwrap_err();
        assert!(err.contains("CHAT_DJANGO_USER_PATH"), "{err}");
    }
}
