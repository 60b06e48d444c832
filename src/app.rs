//! The App: the store, the writer, the hub and the Django client, wired
//! from a `Config`, plus what shutdown needs to stop them in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::django::{DjangoClient, DjangoSettings};
use crate::capacity::{ConnectionGate, HistoryGate};
use crate::config::Config;
use crate::hub::{Hub, HubSettings};
use crate::store::mongo::{MongoSettings, MongoStore};
use crate::store::postgres::{PostgresSettings, PostgresStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::writer::{Writer, WriterConfig, WriterHandle};
use crate::store::Store;
use crate::wire::protocol::ErrorCode;
use crate::ws::session::SessionLimits;

/// Shared state of every request and session.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub(crate) writer: WriterHandle,
    pub(crate) hub: Hub,
    pub(crate) django: DjangoClient,
    pub gate: ConnectionGate,
    /// Turns for `/messages`: bounds the history pages held in memory.
    pub(crate) history: HistoryGate,
    pub(crate) limits: SessionLimits,
    /// Cancelled at shutdown: every session closes with 1001.
    pub(crate) sessions_shutdown: CancellationToken,
    /// Every WebSocket session, so shutdown can wait for them: hyper stops
    /// tracking a connection once it is upgraded.
    pub(crate) sessions: TaskTracker,
    next_conn_id: AtomicU64,
}

/// The background parts that outlive requests, stopped last at shutdown.
pub struct Background {
    pub(crate) writer: Writer,
    pub(crate) shards: Vec<JoinHandle<()>>,
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
    /// Opens the store named by the config (PostgreSQL when
    /// `CHAT_POSTGRES_URL` is set, MongoDB when `MONGO_URI` is, else the
    /// embedded SQLite; both set is refused by `Config`) and starts writer
    /// and hub.
    pub async fn build(config: Config) -> Result<(Arc<App>, Background), StartError> {
        let store: Arc<dyn Store> = if config.postgres_url.is_some() {
            Arc::new(
                PostgresStore::connect(&PostgresSettings::from(&config))
                    .await
                    .map_err(|e| StartError::Store(e.to_string()))?,
            )
        } else if config.mongo_uri.is_some() {
            Arc::new(
                MongoStore::connect(&MongoSettings::from(&config))
                    .await
                    .map_err(|e| StartError::Store(e.to_string()))?,
            )
        } else {
            Arc::new(
                SqliteStore::open(&config.data_dir, SqliteOptions::from(&config))
                    .map_err(|e| StartError::Store(e.to_string()))?,
            )
        };
        Self::with_store(config, store)
    }

    /// Starts writer and hub over an already open store.
    pub(crate) fn with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<(Arc<App>, Background), StartError> {
        let django =
            DjangoClient::new(DjangoSettings::from(&config)).map_err(StartError::Django)?;
        crate::metrics::get().ws_error_codes(ErrorCode::ALL.map(ErrorCode::as_str));
        let (writer, writer_handle) =
            Writer::spawn(Arc::clone(&store), WriterConfig::from(&config));
        let (hub, shards) = Hub::start(HubSettings::from(&config), writer_handle.clone());
        let app = App {
            gate: ConnectionGate::from(&config),
            history: HistoryGate::from(&config),
            limits: SessionLimits::from(&config),
            config,
            store,
            writer: writer_handle,
            hub,
            django,
            sessions_shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            next_conn_id: AtomicU64::new(1),
        };
        Ok((Arc::new(app), Background { writer, shards }))
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}
