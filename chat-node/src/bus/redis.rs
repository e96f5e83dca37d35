//! The Redis bus: one Redis Stream per topic, and a pub/sub channel of the same name that
//! carries each entry live.
//!
//! - Publishing runs the [`APPEND`] script: `XADD <topic> MINID ~ <now - retention> * d
//!   <entry>` (or `MAXLEN ~ n` without a retention), then `PUBLISH <topic> "<id> <entry>"`,
//!   atomically, so that the channel carries the log's entries in the log's order with their
//!   ids. One publisher task, fed by a bounded local queue, sends what has queued up as one
//!   pipeline (one round trip for a burst, in order), and hands each entry's id back to an
//!   [`append`](Bus::append) waiting for it. While Redis is down the entries wait in the
//!   queue (in order) and the task retries with a capped backoff, so a short outage loses
//!   nothing; `append` then answers at once, without an id. A retry after a lost reply may
//!   append an entry twice; readers drop duplicates (see [`crate::cluster`]).
//! - A store on the same Redis may append an entry itself, in the script of its own write
//!   ([`Bus::joint_target`]: the chat's post appends the message's broadcast with it), as
//!   long as nothing waits in the queue: the entry is then the one [`APPEND`] would have
//!   written, trimmed the same way and published on the channel the same way. An entry
//!   that may overtake the queue ([`Bus::log_target`]: the leave in a room's creation)
//!   only needs the last append to have succeeded.
//! - Subscribers are served by one task per bus on one pub/sub connection ([`live`]): entries
//!   arrive as they are published, without a read command per entry. The stream is read
//!   (`XRANGE`) only to catch up: from the last entry at subscription time, after every
//!   reconnection, and for a subscriber that fell behind; so nothing the connection missed
//!   is skipped. That connection speaks RESP2 itself ([`pubsub`]): every node reads every
//!   message there, and the redis crate's general reader cost more than the rest of the
//!   message's way through the hub.
//! - Trimming bounds memory: by age (`MINID`) when recovery needs the log for a time
//!   window, by length (`MAXLEN`) otherwise. A reader away for longer than that misses the
//!   trimmed entries, and [`Bus::read_after`] says so.

mod live;
mod pubsub;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands as _, Script, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::{parse_id, Bus, BusEntry, BusError, StreamTarget, LOG_START, SUBSCRIBER_CAPACITY};
use crate::log_every::{LogEvery, RETRY_LOG_PERIOD};

/// The stream field holding an entry's bytes (also in [`APPEND`]).
const FIELD: &str = "d";

/// Appends an entry and publishes it with its id. `KEYS[1]`: the stream, also the channel's
/// name (Redis keeps channel names apart from keys). ARGV: the trim strategy (`MAXLEN` or
/// `MINID`), its threshold, the entry. Returns the id. The message is `<id> <entry>`: an
/// id has no space. One script, so that no other entry of the stream comes between the two
/// and the channel's order is the log's.
static APPEND: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local id = redis.call('XADD', KEYS[1], ARGV[1], '~', ARGV[2], '*', 'd', ARGV[3])
redis.call('PUBLISH', KEYS[1], id .. ' ' .. ARGV[3])
return id
",
    )
});

/// The first and the longest pause between two attempts while Redis is unreachable.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The most queued entries sent in one pipeline.
const MAX_BATCH: usize = 256;

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// The approximate length each stream is trimmed to (`XADD … MAXLEN ~ n`), unless it
    /// is retained for a time ([`Bus::retain`]: `XADD … MINID ~ <now - window>`).
    pub max_len: usize,
    /// How often the pub/sub connection is pinged (a Redis that vanished without closing
    /// it is noticed within this plus `response_timeout`), and closed subscriptions are
    /// swept.
    pub keepalive: Duration,
    /// How many entries may wait locally for an unreachable Redis before publishing fails.
    pub buffer: usize,
    /// How long a command may take.
    pub response_timeout: Duration,
}

impl RedisBusConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_len: 10_000,
            keepalive: Duration::from_secs(5),
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
    conn: ConnectionManager,
    outbox: mpsc::Sender<Queued>,
    /// The subscribers' task ([`live`]); it ends when this is dropped.
    live: live::Handle,
    /// The last append succeeded: an `append` may wait for its id.
    healthy: Arc<AtomicBool>,
    /// Entries handed to the publisher task and not yet appended (queued or in flight):
    /// while there are any, nobody appends beside the queue ([`Bus::joint_target`]).
    pending: Arc<AtomicUsize>,
    /// Topics trimmed by age rather than length.
    retained: Retained,
}

type Retained = Arc<parking_lot::RwLock<Trims>>;

/// The topics trimmed by age, and for how long each keeps its entries.
#[derive(Debug, Default)]
struct Trims {
    /// By topic ([`Bus::retain`]).
    topics: std::collections::HashMap<String, Duration>,
    /// By the start of the topic's name ([`Bus::expire`]).
    prefixes: Vec<(String, Duration)>,
}

/// What the publisher task takes from its queue.
enum Queued {
    Entry(Outgoing),
    /// Answered once everything queued before it has been appended ([`Bus::flush`]).
    Flush(oneshot::Sender<()>),
}

/// An entry waiting for the publisher task.
struct Outgoing {
    key: String,
    entry: Bytes,
    /// Where its id goes, when someone waits for it.
    reply: Option<oneshot::Sender<String>>,
}

/// How streams are trimmed on every XADD.
#[derive(Debug, Clone, Copy)]
enum Trim {
    MaxLen(usize),
    Retention(Duration),
}

impl Trim {
    /// The trim of `key`'s stream: by age when it is retained, else by length.
    fn of(key: &str, retained: &Retained, max_len: usize) -> Self {
        let trims = retained.read();
        let by_prefix = || {
            trims
                .prefixes
                .iter()
                .find(|(prefix, _)| key.starts_with(prefix.as_str()))
                .map(|(_, window)| window)
        };
        match trims.topics.get(key).or_else(by_prefix) {
            Some(window) => Self::Retention(*window),
            None => Self::MaxLen(max_len),
        }
    }

    /// The strategy and its threshold now, as [`APPEND`] takes them.
    fn parts(self) -> (&'static str, String) {
        match self {
            Self::MaxLen(n) => ("MAXLEN", n.to_string()),
            Self::Retention(window) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let min = now.saturating_sub(window).as_millis();
                ("MINID", min.to_string())
            }
        }
    }
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("config", &self.inner.config)
            .finish()
    }
}

fn unavailable(error: impl std::fmt::Display) -> BusError {
    bus_error();
    BusError::Unavailable(error.to_string())
}

/// Counts a failed Redis command or connection of the bus.
pub(crate) fn bus_error() {
    crate::metrics::metrics().redis_error(crate::metrics::Component::Bus);
}

/// Opens a managed connection to `url` with the cluster's settings (the bus, the session
/// directory and the chat store all use these): it must answer now.
pub(crate) async fn open(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = client(url)?;
    ConnectionManager::new_with_config(client, manager_config(Duration::from_secs(2))).await
}

/// A client for `url` with `TCP_NODELAY`: redis-rs leaves Nagle's algorithm on, and a
/// pipelined command written while the previous reply is unacknowledged then waits for the
/// peer's delayed ACK (tens of milliseconds: it set the chat's p99 delivery latency).
fn client(url: &str) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo as _;
    let info = url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
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
        let client = client(&config.url).map_err(unavailable)?;
        let conn = ConnectionManager::new_with_config(
            client.clone(),
            manager_config(config.response_timeout),
        )
        .await
        .map_err(unavailable)?;
        let (outbox, queue) = mpsc::channel(config.buffer.max(1));
        let healthy = Arc::new(AtomicBool::new(true));
        let pending = Arc::new(AtomicUsize::new(0));
        let retained = Retained::default();
        let live = live::spawn(client, conn.clone(), config.clone());
        tokio::spawn(publish_loop(
            conn.clone(),
            queue,
            config.max_len,
            Arc::clone(&retained),
            Arc::clone(&healthy),
            Arc::clone(&pending),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                conn,
                outbox,
                live,
                healthy,
                pending,
                retained,
            }),
        })
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, topic: &str, entry: Bytes) -> Result<(), BusError> {
        self.enqueue(topic, entry, None)
    }

    async fn append(&self, topic: &str, entry: Bytes) -> Result<Option<String>, BusError> {
        if !self.inner.healthy.load(Ordering::Relaxed) {
            // Redis is down: queue it without making the caller wait for the outage.
            return self.enqueue(topic, entry, None).map(|()| None);
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue(topic, entry, Some(tx))?;
        match tokio::time::timeout(self.inner.config.response_timeout, rx).await {
            Ok(Ok(id)) => Ok(Some(id)),
            // Still queued: it is appended when Redis answers again.
            _ => Ok(None),
        }
    }

    async fn read_after(
        &self,
        topic: &str,
        after: &str,
        limit: usize,
    ) -> Result<Option<Vec<BusEntry>>, BusError> {
        if parse_id(after).is_none() {
            return Ok(None);
        }
        let mut conn = self.inner.conn.clone();
        if after != LOG_START {
            let found: StreamRangeReply = conn
                .xrange_count(topic, after, after, 1)
                .await
                .map_err(unavailable)?;
            if found.ids.is_empty() {
                return Ok(None);
            }
        }
        let range = range_after(&mut conn, topic, after, limit)
            .await
            .map_err(unavailable)?;
        Ok(Some(
            range
                .into_iter()
                .filter_map(|(id, data)| Some(BusEntry { id, data: data? }))
                .collect(),
        ))
    }

    fn joint_target(&self, topic: &str) -> Option<StreamTarget> {
        if self.inner.pending.load(Ordering::Acquire) != 0 {
            return None;
        }
        self.log_target(topic)
    }

    fn log_target(&self, topic: &str) -> Option<StreamTarget> {
        let inner = &self.inner;
        if !inner.healthy.load(Ordering::Relaxed) {
            return None;
        }
        Some(StreamTarget {
            server: inner.config.url.clone(),
            key: topic.to_owned(),
            trim: Trim::of(topic, &inner.retained, inner.config.max_len).parts(),
        })
    }

    async fn last_id(&self, topic: &str) -> Result<String, BusError> {
        let mut conn = self.inner.conn.clone();
        last_entry(&mut conn, topic).await.map_err(unavailable)
    }

    fn session_store(&self) -> Arc<dyn crate::recovery::SessionStore> {
        Arc::new(crate::recovery::RedisStore::on(self.inner.conn.clone()))
    }

    fn retain(&self, topic: &str, window: Duration) {
        self.inner
            .retained
            .write()
            .topics
            .insert(topic.to_owned(), window);
    }

    fn expire(&self, prefix: &str, window: Duration) {
        // The same trim by age (`MINID`) as a retained topic's.
        let mut trims = self.inner.retained.write();
        trims.prefixes.retain(|(p, _)| p != prefix);
        trims.prefixes.push((prefix.to_owned(), window));
    }

    async fn discard(&self, topic: &str, ids: &[String]) -> Result<(), BusError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.inner.conn.clone();
        let mut command = redis::cmd("XDEL");
        command.arg(topic).arg(ids);
        let deleted = command.query_async::<u64>(&mut conn);
        match tokio::time::timeout(self.inner.config.response_timeout, deleted).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(unavailable(error)),
            Err(_) => Err(BusError::Unavailable("XDEL timed out".to_owned())),
        }
    }

    fn subscribe(&self, topic: &str) -> mpsc::Receiver<BusEntry> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        self.inner.live.subscribe(topic, tx);
        rx
    }

    async fn ping(&self) -> Result<(), BusError> {
        let mut conn = self.inner.conn.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.inner.config.response_timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(unavailable(error)),
            Err(_) => {
                bus_error();
                Err(BusError::Unavailable("PING timed out".to_owned()))
            }
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.outbox.send(Queued::Flush(tx)).await.is_ok() {
            // An error: the publisher gave up (the bus is being dropped); nothing to wait for.
            let _ = rx.await;
        }
    }
}

impl RedisBus {
    fn enqueue(
        &self,
        topic: &str,
        entry: Bytes,
        reply: Option<oneshot::Sender<String>>,
    ) -> Result<(), BusError> {
        // Counted before it is queued: the publisher may take it (and count it off) at once.
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        self.inner
            .outbox
            .try_send(Queued::Entry(Outgoing {
                key: topic.to_owned(),
                entry,
                reply,
            }))
            .map_err(|_| {
                self.inner.pending.fetch_sub(1, Ordering::AcqRel);
                BusError::BufferFull(self.inner.config.buffer)
            })
    }
}

fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(MAX_BACKOFF)
}

/// Appends (and publishes) the queued entries in order, each batch retried until Redis
/// takes it, and hands the ids back. Ends when the bus is dropped.
async fn publish_loop(
    mut conn: ConnectionManager,
    mut queue: mpsc::Receiver<Queued>,
    max_len: usize,
    retained: Retained,
    healthy: Arc<AtomicBool>,
    pending: Arc<AtomicUsize>,
) {
    let mut failures = LogEvery::new(RETRY_LOG_PERIOD);
    while let Some(first) = queue.recv().await {
        let mut batch = Vec::new();
        // A flush ends the batch: it is answered once the batch is appended.
        let mut flushed = None;
        let mut next = Some(first);
        while let Some(queued) = next.take() {
            match queued {
                Queued::Entry(entry) => batch.push(entry),
                Queued::Flush(done) => {
                    flushed = Some(done);
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        let mut backoff = MIN_BACKOFF;
        while !batch.is_empty() {
            let mut pipe = redis::pipe();
            for item in &batch {
                let (strategy, threshold) = Trim::of(&item.key, &retained, max_len).parts();
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(APPEND.get_hash())
                    .arg(1)
                    .arg(&item.key)
                    .arg(strategy)
                    .arg(threshold);
                cmd.arg(item.entry.as_ref());
                pipe.add_command(cmd);
            }
            let added: redis::RedisResult<Vec<String>> = pipe.query_async(&mut conn).await;
            match added {
                Ok(ids) => {
                    healthy.store(true, Ordering::Relaxed);
                    pending.fetch_sub(batch.len(), Ordering::AcqRel);
                    for (item, id) in batch.drain(..).zip(ids) {
                        if let Some(reply) = item.reply {
                            let _ = reply.send(id);
                        }
                    }
                    break;
                }
                // A new or restarted Redis: load the script and send the batch again (no
                // entry of it was appended: they all failed the same way).
                Err(error) if is_no_script(&error) => {
                    if let Err(error) = APPEND.load_async(&mut conn).await {
                        bus_error();
                        if let Some(suppressed) = failures.due() {
                            tracing::warn!(%error, suppressed, "SCRIPT LOAD failed; retrying");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = next_backoff(backoff);
                    }
                }
                Err(error) if queue.is_closed() => {
                    bus_error();
                    tracing::warn!(%error, lost = queue.len() + batch.len(), "append failed and the bus is gone; dropping what is left");
                    return;
                }
                Err(error) => {
                    bus_error();
                    healthy.store(false, Ordering::Relaxed);
                    if let Some(suppressed) = failures.due() {
                        tracing::warn!(
                            %error,
                            waiting = queue.len() + batch.len(),
                            suppressed,
                            "append failed; retrying (one line per {}s at most, `suppressed`: those left out before this one)",
                            RETRY_LOG_PERIOD.as_secs()
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                }
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// Whether `error` (of one command, or the first of a pipeline's) says that a script is
/// not loaded.
fn is_no_script(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript)
}

/// The id of the last entry of stream `key` (`0-0` when it is empty or missing).
async fn last_entry(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<String> {
    let last: StreamRangeReply = conn.xrevrange_count(key, "+", "-", 1).await?;
    Ok(last
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone()))
}

/// Up to `count` entries of stream `key` after the entry `after` (`XRANGE key (<after> +`),
/// as [`range_entries`] gives them. Both [`Bus::read_after`] and the subscribers' catch-up
/// ([`live`]) read the log this way.
async fn range_after(
    conn: &mut ConnectionManager,
    key: &str,
    after: &str,
    count: usize,
) -> redis::RedisResult<Vec<(String, Option<Bytes>)>> {
    let mut range = redis::cmd("XRANGE");
    range
        .arg(key)
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count);
    Ok(range_entries(range.query_async::<Value>(conn).await?))
}

/// The entries of an `XRANGE` reply, in order: each id with its data (`None` when the
/// entry has no [`FIELD`]). Read from the reply as it is, without a map per entry or a copy
/// of the data.
fn range_entries(reply: Value) -> Vec<(String, Option<Bytes>)> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    let mut read = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(entry) = entry else { continue };
        let mut parts = entry.into_iter();
        let Some(id) = parts.next().and_then(text) else {
            continue;
        };
        let data = match parts.next() {
            Some(Value::Array(fields)) => field(fields),
            Some(Value::Map(fields)) => {
                field(fields.into_iter().flat_map(|(k, v)| [k, v]).collect())
            }
            _ => None,
        };
        read.push((id, data));
    }
    read
}

/// The value of [`FIELD`] among an entry's `field, value, ...`.
fn field(fields: Vec<Value>) -> Option<Bytes> {
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let is_data = match &name {
            Value::BulkString(name) => name.as_slice() == FIELD.as_bytes(),
            Value::SimpleString(name) => name == FIELD,
            _ => false,
        };
        if is_data {
            return match value {
                Value::BulkString(data) => Some(Bytes::from(data)),
                Value::SimpleString(data) => Some(Bytes::from(data)),
                _ => None,
            };
        }
    }
    None
}

/// A string reply's text.
fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_trimmed_by_age_by_name_or_by_prefix_else_by_length() {
        let retained = Retained::default();
        retained
            .write()
            .topics
            .insert("log".into(), Duration::from_secs(60));
        retained
            .write()
            .prefixes
            .push(("syd:node:".into(), Duration::from_secs(5)));
        let strategy = |key: &str| Trim::of(key, &retained, 10).parts().0;
        assert_eq!(strategy("log"), "MINID");
        assert_eq!(strategy("syd:node:a"), "MINID");
        assert_eq!(strategy("syd:nodes"), "MAXLEN");
        assert_eq!(strategy("other"), "MAXLEN");
        let (_, threshold) = Trim::of("syd:node:a", &retained, 10).parts();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let min: u128 = threshold.parse().unwrap_or(0);
        assert!((now - 6_000..=now - 4_000).contains(&min), "{min} vs {now}");
    }

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn range_replies_give_ids_and_data_in_order() {
        let entries = Value::Array(vec![
            entry("1-0", &["d", "one"]),
            entry("1-1", &["x", "y"]),
            entry("2-0", &["x", "y", "d", "two"]),
            // Not an entry: skipped.
            bulk("3-0"),
        ]);
        let expected = vec![
            ("1-0".to_owned(), Some(Bytes::from_static(b"one"))),
            ("1-1".to_owned(), None),
            ("2-0".to_owned(), Some(Bytes::from_static(b"two"))),
        ];
        assert_eq!(range_entries(entries), expected);
        // RESP3 may give an entry's fields as a map.
        let map = Value::Array(vec![Value::Array(vec![
            bulk("4-0"),
            Value::Map(vec![(bulk("d"), bulk("four"))]),
        ])]);
        assert_eq!(
            range_entries(map),
            vec![("4-0".to_owned(), Some(Bytes::from_static(b"four")))]
        );
        assert!(range_entries(Value::Nil).is_empty());
    }
}
