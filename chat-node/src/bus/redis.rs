//! The Redis bus: one Redis Stream per topic.
//!
//! - Publishing is `XADD <topic> MAXLEN ~ <maxlen> * d <entry>` from one publisher task fed by
//!   a bounded local queue: while Redis is down the entries wait in the queue (in order) and
//!   the task retries with a capped backoff, so a short outage loses nothing. A retry after
//!   a lost reply may append an entry twice; readers drop duplicates (see
//!   [`crate::cluster`]).
//! - Each subscription is a reader task on its own connection (a blocking `XREAD` would
//!   stall every other command on a shared, multiplexed one). It starts from the stream's
//!   last entry at subscription time (`XREVRANGE + - COUNT 1`, not `$`, so that nothing
//!   published between two `XREAD`s is skipped) and always resumes from the last id it
//!   read, across errors and reconnections.
//! - `MAXLEN ~` bounds memory: a reader away for longer than the stream's length of
//!   traffic misses the trimmed entries.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands as _;
use tokio::sync::mpsc;

use super::{Bus, BusError, SUBSCRIBER_CAPACITY};

/// The stream field holding an entry's bytes.
const FIELD: &str = "d";
/// The first and the longest pause between two attempts while Redis is unreachable.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// The approximate length each stream is trimmed to (`XADD … MAXLEN ~ n`).
    pub max_len: usize,
    /// How long one `XREAD` blocks waiting for entries.
    pub block: Duration,
    /// How many entries may wait locally for an unreachable Redis before publishing fails.
    pub buffer: usize,
    /// How long a command (other than the blocking read) may take.
    pub response_timeout: Duration,
}

impl RedisBusConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_len: 10_000,
            block: Duration::from_secs(5),
            buffer: 10_000,
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// A bus on Redis Streams; clones share the connection and the publisher.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisBusConfig,
    client: redis::Client,
    conn: ConnectionManager,
    outbox: mpsc::Sender<(String, Bytes)>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("config", &self.inner.config)
            .finish()
    }
}

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(error.to_string())
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

impl RedisBus {
    /// Connects to Redis (it must answer now) and starts the publisher task.
    pub async fn connect(config: RedisBusConfig) -> Result<Self, BusError> {
        let client = redis::Client::open(config.url.as_str()).map_err(unavailable)?;
        let conn = ConnectionManager::new_with_config(
            client.clone(),
            manager_config(config.response_timeout),
        )
        .await
        .map_err(unavailable)?;
        let (outbox, queue) = mpsc::channel(config.buffer.max(1));
        tokio::spawn(publish_loop(conn.clone(), queue, config.max_len));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                conn,
                outbox,
            }),
        })
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, topic: &str, entry: Bytes) -> Result<(), BusError> {
        self.inner
            .outbox
            .try_send((topic.to_owned(), entry))
            .map_err(|_| BusError::BufferFull(self.inner.config.buffer))
    }

    fn subscribe(&self, topic: &str) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        tokio::spawn(read_loop(
            self.inner.client.clone(),
            self.inner.conn.clone(),
            self.inner.config.clone(),
            topic.to_owned(),
            tx,
        ));
        rx
    }

    async fn ping(&self) -> Result<(), BusError> {
        let mut conn = self.inner.conn.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.inner.config.response_timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(unavailable(error)),
            Err(_) => Err(BusError::Unavailable("PING timed out".to_owned())),
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(MAX_BACKOFF)
}

/// Appends the queued entries in order, each retried until Redis takes it. Ends when the
/// bus is dropped.
async fn publish_loop(
    mut conn: ConnectionManager,
    mut queue: mpsc::Receiver<(String, Bytes)>,
    max_len: usize,
) {
    while let Some((key, entry)) = queue.recv().await {
        let mut backoff = MIN_BACKOFF;
        loop {
            let added: redis::RedisResult<String> = redis::cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len)
                .arg("*")
                .arg(FIELD)
                .arg(entry.as_ref())
                .query_async(&mut conn)
                .await;
            match added {
                Ok(_) => break,
                Err(error) if queue.is_closed() => {
                    tracing::warn!(%key, %error, lost = queue.len() + 1, "XADD failed and the bus is gone; dropping what is left");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%key, %error, waiting = queue.len(), "XADD failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                }
            }
        }
    }
}

/// The id of the last entry of stream `key` (`0-0` when it is empty or missing).
async fn last_entry(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<String> {
    let last: StreamRangeReply = conn.xrevrange_count(key, "+", "-", 1).await?;
    Ok(last
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone()))
}

/// Reads `key` from its last entry on, forever, into `tx`; ends when `tx`'s receiver is
/// dropped.
async fn read_loop(
    client: redis::Client,
    mut shared: ConnectionManager,
    config: RedisBusConfig,
    key: String,
    tx: mpsc::Sender<Bytes>,
) {
    // The blocking read must not time out on the client side before Redis answers.
    let settings = manager_config(config.block + config.response_timeout);
    let block_ms = usize::try_from(config.block.as_millis()).unwrap_or(usize::MAX);
    let mut conn: Option<ConnectionManager> = None;
    // The start is resolved at once on the shared connection, already open (the reader's
    // own connection takes a while to open, and what is published meanwhile must not be
    // skipped). The publisher's XADDs go through that connection too, in order.
    let mut last_id: Option<String> = match last_entry(&mut shared, &key).await {
        Ok(id) => Some(id),
        Err(error) => {
            tracing::warn!(%key, %error, "XREVRANGE failed; resolving the start later");
            None
        }
    };
    let mut backoff = MIN_BACKOFF;
    while !tx.is_closed() {
        let result = async {
            let conn = match &mut conn {
                Some(conn) => conn,
                None => conn.insert(
                    ConnectionManager::new_with_config(client.clone(), settings.clone()).await?,
                ),
            };
            let from = match &last_id {
                Some(id) => id.clone(),
                None => {
                    let id = last_entry(conn, &key).await?;
                    last_id = Some(id.clone());
                    id
                }
            };
            let options = StreamReadOptions::default().block(block_ms).count(256);
            let reply: Option<StreamReadReply> =
                conn.xread_options(&[&key], &[&from], &options).await?;
            Ok::<_, redis::RedisError>(reply)
        }
        .await;
        match result {
            Ok(reply) => {
                backoff = MIN_BACKOFF;
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    let data = entry
                        .map
                        .get(FIELD)
                        .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok());
                    last_id = Some(entry.id);
                    match data {
                        Some(data) => {
                            if tx.send(Bytes::from(data)).await.is_err() {
                                return;
                            }
                        }
                        None => tracing::warn!(%key, "stream entry without data; skipped"),
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%key, %error, "XREAD failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
            }
        }
    }
}
