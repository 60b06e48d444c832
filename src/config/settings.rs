//! Every subsystem's settings, built from `Config` here and only here.
//!
//! The rule: a subsystem takes a small settings struct of its own (or, for
//! the gates, is built whole), never `Config`, so it need not know the
//! configuration exists; each is made by one `From<&Config>` below; and
//! every default lives in `Config`'s flags, nowhere else.

use crate::auth::django::DjangoSettings;
use crate::capacity::{self, ConnectionGate, HistoryGate};
use crate::hub::HubSettings;
use crate::store::mongo::MongoSettings;
use crate::store::postgres::PostgresSettings;
use crate::store::sqlite::SqliteOptions;
use crate::store::writer::{self, WriterConfig};
use crate::ws::rate::RateLimit;
use crate::ws::session::SessionLimits;

use super::Config;

impl From<&Config> for SqliteOptions {
    fn from(config: &Config) -> Self {
        SqliteOptions {
            sync: config.sqlite_sync,
            cache_mib: config.sqlite_cache_mb,
            journal_max: config.sqlite_journal_max,
        }
    }
}

/// Only used when `MONGO_URI` is set (`App` picks the store by it); `uri`
/// is empty otherwise.
impl From<&Config> for PostgresSettings {
    fn from(config: &Config) -> Self {
        PostgresSettings {
            url: config.postgres_url.clone().unwrap_or_default(),
            pool_size: config.postgres_pool_size,
            timeout: config.postgres_timeout(),
        }
    }
}

impl From<&Config> for MongoSettings {
    fn from(config: &Config) -> Self {
        MongoSettings {
            uri: config.mongo_uri.clone().unwrap_or_default(),
            database: config.mongo_db.clone(),
            pool_size: config.mongo_pool_size,
            timeout: config.mongo_timeout(),
            w: config.mongo_w.clone(),
            journal: config.mongo_journal,
        }
    }
}

impl From<&Config> for WriterConfig {
    fn from(config: &Config) -> Self {
        WriterConfig {
            max_batch: config.writer_batch as usize,
            window: config.writer_window(),
            queue_capacity: config.writer_queue as usize,
            retry_initial: writer::RETRY_INITIAL,
            retry_max: writer::RETRY_MAX,
        }
    }
}

impl From<&Config> for DjangoSettings {
    fn from(config: &Config) -> Self {
        DjangoSettings {
            base_url: config.django_base_url.clone(),
            user_path: config.django_user_path.clone(),
            lesson_path: config.django_lesson_path.clone(),
            timeout: config.django_timeout(),
            cache_ttl: config.auth_cache_ttl(),
        }
    }
}

impl From<&Config> for HubSettings {
    fn from(config: &Config) -> Self {
        HubSettings {
            shards: config.shard_count(),
            typing_ttl: config.typing_ttl(),
        }
    }
}

impl From<&Config> for RateLimit {
    fn from(config: &Config) -> Self {
        RateLimit::new(config.msg_rate, config.msg_burst)
    }
}

impl From<&Config> for SessionLimits {
    fn from(config: &Config) -> Self {
        SessionLimits {
            max_text_bytes: config.max_text_bytes as usize,
            max_frame_bytes: config.max_frame_bytes as usize,
            outbound_queue_bytes: config.outbound_queue_bytes as usize,
            ping_interval: config.ping_interval(),
            idle_timeout: config.idle_timeout(),
            message_rate: RateLimit::from(config),
        }
    }
}

/// `CHAT_MAX_CONNECTIONS`; unset, what the open-files limit allows once it
/// is raised to the hard limit (which building the gate does, once, at
/// start).
impl From<&Config> for ConnectionGate {
    fn from(config: &Config) -> Self {
        let max = match config.max_connections {
            Some(max) => max as usize,
            None => capacity::capacity_for(capacity::raise_open_files_limit()),
        };
        ConnectionGate::new(max)
    }
}

impl From<&Config> for HistoryGate {
    fn from(config: &Config) -> Self {
        HistoryGate::new(
            config.history_concurrency as usize,
            config.history_per_user,
            config.history_wait(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::sqlite::SqliteSync;

    #[test]
    fn sqlite_and_writer_take_the_config_defaults() {
        let config = Config::defaults();
        assert_eq!(
            SqliteOptions::from(&config),
            SqliteOptions {
                sync: SqliteSync::Normal,
                cache_mib: 64,
                journal_max: 262_144,
            }
        );
        assert_eq!(
            WriterConfig::from(&config),
            WriterConfig {
                max_batch: 16_384,
                window: Duration::ZERO,
                queue_capacity: 262_144,
                retry_initial: Duration::from_millis(50),
                retry_max: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn mongo_settings_take_the_mongo_flags() {
        let mongo = MongoSettings::from(&Config::defaults());
        assert_eq!(mongo.uri, "");
        assert_eq!(mongo.database, "chat");
        assert_eq!(mongo.pool_size, 32);
        assert_eq!(mongo.timeout, Duration::from_secs(5));
        assert_eq!(mongo.w, "majority");
        assert!(mongo.journal);
    }

    #[test]
    fn from_config_takes_the_django_settings() {
        let config = Config::for_tests("http://django:8000/backend/");
        let s = DjangoSettings::from(&config);
        assert_eq!(s.base_url, "http://django:8000/backend");
        assert_eq!(s.user_path, "/api/content/chat-service/users/{user_id}/");
        assert_eq!(
            s.lesson_path,
            "/api/content/chat-service/lesson/{lesson_id}/detail/"
        );
        assert_eq!(s.timeout, Duration::from_millis(5000));
        assert_eq!(s.cache_ttl, Duration::from_secs(30));
    }

    #[test]
    fn session_limits_take_the_session_flags() {
        let limits = SessionLimits::from(&Config::defaults());
        assert_eq!(limits.max_text_bytes, 8192);
        assert_eq!(limits.max_frame_bytes, 65_536);
        assert_eq!(limits.outbound_queue_bytes, 4 << 20);
        assert_eq!(limits.ping_interval, Duration::from_secs(25));
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.message_rate, RateLimit::new(20, 2000));
    }

    #[test]
    fn hub_settings_take_the_shards_and_the_typing_ttl() {
        let config = Config {
            shards: Some(3),
            typing_ttl_s: 9,
            ..Config::defaults()
        };
        assert_eq!(
            HubSettings::from(&config),
            HubSettings {
                shards: 3,
                typing_ttl: Duration::from_secs(9),
            }
        );
    }

    #[test]
    fn a_configured_connection_maximum_is_the_gates() {
        let config = Config {
            max_connections: Some(7),
            ..Config::defaults()
        };
        assert_eq!(ConnectionGate::from(&config).max(), 7);
    }
}
