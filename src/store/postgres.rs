//! The PostgreSQL store: the database a Django platform already runs, and
//! a store several nodes can share (CONTRACT §7).
//!
//! Tables live in the schema `chat` (see `migrations/0001_init.sql` for the
//! layout and why ids are `bytea`), created and upgraded by [`migrations`]
//! at connect. Reads go through a deadpool pool with each connection's
//! prepared statements cached; a write batch is one statement, or one
//! pipelined transaction when it holds views or cursor moves ([`write`]).
//! Every call has a deadline on the client (a server that stopped
//! answering) besides the server's `statement_timeout`, and failures a
//! retry may fix are `StoreError::Unavailable` ([`errors`]).

mod errors;
mod inbox;
mod migrations;
mod pipeline;
mod rows;
mod tls;
mod write;

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::types::ToSql;

use crate::model::{
    Conversation, ConversationId, ConversationKey, MessageId, Millis, ObjectId, Seq, UserId,
};
use crate::store::{
    ConversationFilter, HistoryPage, HistoryQuery, InboxEntry, PageBuilder, Store, StoreError,
    StoreFuture, WriteOp, WriteOutcome,
};

use errors::store_error;
use rows::{
    conversation_from, id_bytes, message_from, object_id, seq_param, time, CONVERSATION_COLUMNS,
    MESSAGE_COLUMNS,
};

/// How to reach PostgreSQL; built from `CHAT_POSTGRES_*`, whose defaults
/// are `Config`'s.
#[derive(Clone, Debug)]
pub struct PostgresSettings {
    /// `postgres://user:pass@host:port/db?sslmode=…` (or key=value pairs).
    pub url: String,
    pub pool_size: u32,
    /// Server-side `statement_timeout`, connect timeout and the wait for a
    /// pooled connection; the client gives up on a call after twice this.
    pub timeout: Duration,
}

/// Conversations, messages and read cursors in PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    /// REST, connects, recovery.
    pool: Pool,
    /// The writer's own connections, so a burst of reads never makes a
    /// batch wait for a connection (two: a batch's try, and one being
    /// replaced after a try was dropped).
    writes: Pool,
    /// Deadline of one store call, on the client.
    call_timeout: Duration,
}

impl PostgresStore {
    /// Connects, checks the server answers and brings the schema up to
    /// date. `Err(Unavailable)` when the server cannot be reached within
    /// `settings.timeout`; `Err(Internal)` for an unusable URL.
    pub async fn connect(settings: &PostgresSettings) -> Result<PostgresStore, StoreError> {
        let (url, verify) = tls::ssl_mode(&settings.url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|error| {
            StoreError::Internal(format!("CHAT_POSTGRES_URL is not usable: {error}"))
        })?;
        if config.get_application_name().is_none() {
            config.application_name("chat-service");
        }
        let timeout_ms = settings.timeout.as_millis().max(1);
        // The server cancels a statement past the timeout (57014, retried)
        // instead of holding locks for a client that gave up. The isolation
        // level is pinned: the seq numbering relies on READ COMMITTED's
        // re-read of a row updated concurrently, where a database default
        // of REPEATABLE READ would turn it into serialization failures.
        let options = format!(
            "{} -c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms} \
             -c default_transaction_isolation=read\\ committed",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim());
        config.connect_timeout(settings.timeout);
        // A peer that vanished (partition, failover) is found in about a
        // minute instead of the kernel's defaults (two hours idle, fifteen
        // minutes with data unacknowledged): keepalive probes while idle,
        // and a limit on unacknowledged data while not.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(60));
        let connector = tls::connector(verify)?;
        let pool_of = |size: usize| {
            let manager = Manager::from_config(
                config.clone(),
                connector.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(settings.timeout))
                .create_timeout(Some(settings.timeout))
                .recycle_timeout(Some(settings.timeout))
                .build()
                .map_err(|error| StoreError::Internal(format!("postgres pool: {error}")))
        };
        let store = PostgresStore {
            pool: pool_of(usize::try_from(settings.pool_size.max(1)).unwrap_or(1))?,
            writes: pool_of(2)?,
            call_timeout: settings.timeout.saturating_mul(2),
        };
        let client = store.bounded("connect", store.client()).await?;
        // Its own connection, closed after: the migration holds a session
        // lock while it runs, and may wait for another node's migration or
        // build an index for longer than any statement timeout allows.
        let mut client = Object::take(client);
        let (found, now) = match tokio::time::timeout(MIGRATION_DEADLINE, async {
            check_encoding(&client).await?;
            client
                .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
                .await
                .map_err(|error| store_error("migration session", error))?;
            migrations::migrate(&mut client).await
        })
        .await
        {
            Ok(result) => result?,
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "postgres migrations: not done within {MIGRATION_DEADLINE:?}"
                )))
            }
        };
        tracing::info!(schema_found = found, schema = now, "PostgreSQL store ready");
        Ok(store)
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// A connection of the writer's pool.
    async fn write_client(&self) -> Result<Object, StoreError> {
        self.writes.get().await.map_err(pool_error)
    }

    /// Runs `call` with the store's deadline; a missed deadline is
    /// `Unavailable`, like any other timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        crate::store::within("postgres", what, self.call_timeout, call).await
    }

    /// Runs one prepared (and per-connection cached) statement.
    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        // Pooled again once the call has ended, not when it is dropped at
        // its deadline (`bounded`): then the connection is closed.
        let connection = write::BatchConnection(Some(self.client().await?));
        let client = connection.client()?;
        let rows = async {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        }
        .await
        .map_err(|error| store_error(what, error));
        connection.release();
        rows
    }

    async fn find_by_key(&self, key: ConversationKey) -> Result<Option<Conversation>, StoreError> {
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS} FROM chat.conversations \
             WHERE lesson_id = $1 AND mentor_id = $2 AND student_id = $3"
        );
        let rows = self
            .query(
                "find conversation",
                &sql,
                &[&key.lesson_id, &key.mentor_id, &key.student_id],
            )
            .await?;
        rows.first()
            .map(|row| conversation_from(row, 0))
            .transpose()
    }

    async fn get_or_create(
        &self,
        key: ConversationKey,
        created_at: Millis,
    ) -> Result<Conversation, StoreError> {
        // Most calls find an existing conversation.
        if let Some(found) = self.find_by_key(key).await? {
            return Ok(found);
        }
        let sql = format!(
            "INSERT INTO chat.conversations (id, lesson_id, mentor_id, student_id, created_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (lesson_id, mentor_id, student_id) DO NOTHING \
             RETURNING {CONVERSATION_COLUMNS}"
        );
        let id = id_bytes(ObjectId::new());
        let rows = self
            .query(
                "create conversation",
                &sql,
                &[
                    &id,
                    &key.lesson_id,
                    &key.mentor_id,
                    &key.student_id,
                    &time(created_at),
                ],
            )
            .await?;
        if let Some(row) = rows.first() {
            return conversation_from(row, 0);
        }
        // Another caller created it since the read; this statement waited
        // for its commit, so a new read sees it.
        self.find_by_key(key).await?.ok_or_else(|| {
            StoreError::Unavailable("postgres: conversation neither created nor found".into())
        })
    }

    async fn find_by_id(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM chat.conversations WHERE id = $1");
        let rows = self.query("conversation", &sql, &[&id_bytes(id)]).await?;
        rows.first()
            .map(|row| conversation_from(row, 0))
            .transpose()
    }

    async fn list_conversations(
        &self,
        filter: ConversationFilter,
    ) -> Result<Vec<Conversation>, StoreError> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        // One statement text per combination of filters (at most eight, each
        // prepared once per connection), so every one gets a plan that uses
        // its index; values are always parameters.
        let mut conditions = Vec::new();
        let mut params: Vec<i64> = Vec::new();
        if let Some(mentor) = filter.mentor_id {
            params.push(mentor);
            conditions.push(format!("mentor_id = ${}", params.len()));
        }
        if let Some(student) = filter.student_id {
            params.push(student);
            conditions.push(format!("student_id = ${}", params.len()));
        }
        if let Some(user) = filter.participant {
            params.push(user);
            let n = params.len();
            conditions.push(format!("(mentor_id = ${n} OR student_id = ${n})"));
        }
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        params.push(limit);
        let limit_param = params.len();
        let condition = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS} FROM chat.conversations {condition} \
             ORDER BY created_at, id LIMIT ${limit_param}"
        );
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self.query("conversations", &sql, &refs).await?;
        rows.iter().map(|row| conversation_from(row, 0)).collect()
    }

    async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        if query.limit == 0 {
            return Ok(HistoryPage::default());
        }
        // Pages follow id, as the Store contract says (the seed's cursor).
        // Known limit: with several nodes writing one conversation, id
        // order (each node's clock and process bytes) need not be seq
        // order, and recovery resolves seqs to ids; cluster mode needs a
        // seq-ranged history call in the trait (see the README).
        // Open ends are ids every id passes (ids are 12 bytes; bytea
        // compares bytes, then length), so one plan serves every page.
        let after = query.after.map_or_else(Vec::new, id_bytes);
        let before = query.before.map_or_else(|| vec![0xff; 13], id_bytes);
        // No more rows than the page can hold (every message takes at least
        // MIN_JSON_LEN bytes of the budget, and the first is taken whatever
        // its size), plus one to tell whether the budget cut the page.
        let rows_wanted = query
            .limit
            .min(query.max_bytes / crate::model::Message::MIN_JSON_LEN + 2);
        let limit = i64::try_from(rows_wanted).unwrap_or(i64::MAX);
        let order = if query.newest_first() { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat.messages \
             WHERE conversation_id = $1 AND id > $2 AND id < $3 \
             ORDER BY id {order} LIMIT $4"
        );
        let rows = self
            .query(
                "messages",
                &sql,
                &[&id_bytes(query.conversation_id), &after, &before, &limit],
            )
            .await?;
        let mut page = PageBuilder::new(&query);
        for row in &rows {
            if !page.push(message_from(row, 0)?) {
                break;
            }
        }
        Ok(page.finish())
    }

    async fn find_at_seq(
        &self,
        conversation_id: ConversationId,
        seq: Seq,
    ) -> Result<Option<MessageId>, StoreError> {
        let rows = self
            .query(
                "message at seq",
                "SELECT id FROM chat.messages WHERE conversation_id = $1 AND seq = $2",
                &[&id_bytes(conversation_id), &seq_param(seq)],
            )
            .await?;
        match rows.first() {
            Some(row) => {
                let id: Vec<u8> = row
                    .try_get(0)
                    .map_err(|error| store_error("message at seq", error))?;
                object_id(&id, "message").map(Some)
            }
            None => Ok(None),
        }
    }

    async fn ping_now(&self) -> Result<(), StoreError> {
        self.query("ping", "SELECT 1", &[]).await.map(drop)
    }
}

/// How long start-up waits for the migrations (another node's included).
const MIGRATION_DEADLINE: Duration = Duration::from_secs(600);

/// Texts are UTF-8; a database in another encoding would refuse some of
/// them one by one, so it is refused at start instead.
async fn check_encoding(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    let encoding: String = client
        .query_one("SHOW server_encoding", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|error| store_error("server encoding", error))?;
    if encoding.eq_ignore_ascii_case("UTF8") {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "the PostgreSQL database's encoding is {encoding}; chat-service needs UTF8 \
             (CREATE DATABASE … ENCODING 'UTF8')"
        )))
    }
}

/// Getting a connection never wrote anything: whatever went wrong, a
/// later try may work (a wrong password included: an operator can fix it
/// while the writer keeps its queue).
fn pool_error(error: PoolError) -> StoreError {
    match error {
        PoolError::NoRuntimeSpecified => StoreError::Internal("postgres pool: no runtime".into()),
        PoolError::Backend(error) => StoreError::Unavailable(format!("postgres connect: {error}")),
        other => StoreError::Unavailable(format!("postgres pool: {other}")),
    }
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn conversation_for(
        &self,
        key: ConversationKey,
        created_at: Millis,
    ) -> StoreFuture<'_, Conversation> {
        Box::pin(self.bounded("conversation_for", self.get_or_create(key, created_at)))
    }

    fn conversation(&self, id: ConversationId) -> StoreFuture<'_, Option<Conversation>> {
        Box::pin(self.bounded("conversation", self.find_by_id(id)))
    }

    fn conversations(&self, filter: ConversationFilter) -> StoreFuture<'_, Vec<Conversation>> {
        Box::pin(self.bounded("conversations", self.list_conversations(filter)))
    }

    fn inbox(
        &self,
        caller: UserId,
        conversations: Vec<Conversation>,
    ) -> StoreFuture<'_, Vec<InboxEntry>> {
        Box::pin(self.bounded("inbox", self.read_inbox(caller, conversations)))
    }

    fn messages(&self, query: HistoryQuery) -> StoreFuture<'_, HistoryPage> {
        Box::pin(self.bounded("messages", self.history(query)))
    }

    fn message_at_seq(
        &self,
        conversation_id: ConversationId,
        seq: Seq,
    ) -> StoreFuture<'_, Option<MessageId>> {
        Box::pin(self.bounded("message_at_seq", self.find_at_seq(conversation_id, seq)))
    }

    fn write_batch(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, Vec<WriteOutcome>> {
        // Each try of the batch has the deadline (see `write`).
        Box::pin(self.apply_batch(ops))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.bounded("ping", self.ping_now()))
    }
}
