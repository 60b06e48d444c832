//! The App: the store, the writer, the hub and the Django client, wired
//! from a `Config`, plus what shutdown needs to stop them in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::django::{DjangoClient, DjangoSettings};
use crate::capacity::{self, ConnectionGate, HistoryGate};
use crate::config::Config;
use crate::hub::Hub;
use crate::store::mongo::{MongoSettings, MongoStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::writer::{Writer, WriterConfig, WriterHandle};
use crate::store::Store;
use crate::ws::rate::RateLimit;
use crate::ws::session::SessionLimits;

/// Shared state of every request and session.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub writer: WriterHandle,
    pub hub: Hub,
    pub django: DjangoClient,
    pub gate: ConnectionGate,
    /// Turns for `/messages`: bounds the history pages held in memory.
    pub history: HistoryGate,
    pub limits: SessionLimits,
    /// Cancelled at shutdown: every session closes with 1001.
    pub sessions_shutdown: CancellationToken,
    /// Every WebSocket session, so shutdown can wait for them: hyper stops
    /// tracking a connection once it is upgraded.
    pub sessions: TaskTracker,
    next_conn_id: AtomicU64,
}

/// The background parts that outlive requests, stopped last at shutdown.
pub struct Background {
    pub writer: Writer,
    pub shards: Vec<JoinHandle<()>>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store: {0}")]
    Store(String),
    #[error("cannot build the Django client: {0}")]
    Django(String),
}

impl App {
    /// Opens the store named by the config and starts writer and hub.
    pub async fn build(config: Config) -> Result<(Arc<App>, Background), StartError> {
        let store: Arc<dyn Store> = match MongoSettings::from_config(&config) {
            Some(settings) => Arc::new(
                MongoStore::connect(&settings)
                    .await
                    .map_err(|e| StartError::Store(e.to_string()))?,
            ),
            None => Arc::new(
                SqliteStore::open_with(
                    &config.data_dir,
                    SqliteOptions {
                        sync: config.sqlite_sync,
                        cache_mib: config.sqlite_cache_mb,
                        journal_max: config.sqlite_journal_max,
                    },
                )
                .map_err(|e| StartError::Store(e.to_string()))?,
            ),
        };
        Self::with_store(config, store)
    }

    /// Starts writer and hub over an already open store.
    pub fn with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<(Arc<App>, Background), StartError> {
        let django =
            DjangoClient::new(DjangoSettings::from_config(&config)).map_err(StartError::Django)?;
        let writer_config = WriterConfig {
            max_batch: config.writer_batch as usize,
            window: config.writer_window(),
            queue_capacity: config.writer_queue as usize,
            ..WriterConfig::default()
        };
        let (writer, writer_handle) = Writer::spawn(Arc::clone(&store), writer_config);
        let (hub, shards) = Hub::start(config.shard_count(), writer_handle.clone());
        let max_connections = match config.max_connections {
            Some(max) => max as usize,
            None => capacity::capacity_for(capacity::raise_open_files_limit()),
        };
        let limits = SessionLimits {
            max_text_bytes: config.max_text_bytes as usize,
            max_frame_bytes: config.max_frame_bytes as usize,
            outbound_queue_bytes: config.outbound_queue_bytes as usize,
            ping_interval: config.ping_interval(),
            idle_timeout: config.idle_timeout(),
            message_rate: RateLimit::new(config.msg_rate, config.msg_burst),
        };
        let history = HistoryGate::new(
            config.history_concurrency as usize,
            config.history_per_user,
            config.history_wait(),
        );
        let app = App {
            config,
            store,
            writer: writer_handle,
            hub,
            django,
            gate: ConnectionGate::new(max_connections),
            history,
            limits,
            sessions_shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            next_conn_id: AtomicU64::new(1),
        };
        Ok((Arc::new(app), Background { writer, shards }))
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}
