//! Live delivery to a [`RedisBus`](super::RedisBus)'s subscribers: one task (the hub) and
//! one pub/sub connection for all topics; the streams are read only to catch up.
//!
//! # Why nothing is skipped, repeated or reordered
//!
//! Each subscription keeps the id of the last entry it delivered (`last`) and is either
//! - *live*: its topic's pub/sub messages go straight to it (`try_send`), ids up to `last`
//!   dropped; or
//! - *behind*: a catch-up task reads the stream after `last` (`XRANGE`, pages until the end)
//!   and sends what it finds, while the hub keeps the topic's pub/sub messages in a buffer.
//!   When the catch-up has read to the stream's end, the buffer is sent (ids up to `last`
//!   dropped) and the subscription is live.
//!
//! The hand-over is complete when the channel was subscribed (confirmed by Redis) before
//! the catch-up began and stayed subscribed: an entry is then either in the stream when the
//! catch-up read it, or published after that read, so in the buffer. The hub checks this
//! with a connection generation; a catch-up that began on an older connection, or whose
//! buffer overflowed, is done again from `last`. The [`APPEND`](super::APPEND) script
//! makes the channel's order the log's, and pub/sub is ordered and lossless while its
//! connection lives.
//!
//! - When the connection drops (Redis restarted, the network, or Redis closing a subscriber
//!   over its output buffer limit), every subscription falls behind; once the hub has
//!   reconnected and Redis confirms the channel again, each catches up from its `last`.
//! - A subscriber whose channel is full does not hold up the connection, so the other
//!   topics: it falls behind, and its catch-up task waits for room (`send().await`) on its
//!   own. Its buffer is bounded ([`BUFFER_CAP`]); on overflow the catch-up is done again
//!   (the stream has what the buffer dropped).
//! - A new subscription starts after the stream's last entry when
//!   [`subscribe`](Handle::subscribe) is called (read on the shared connection, as the
//!   publisher's appends are), then catches up like any other.
//!
//! The limit is the stream's trimming: a subscriber behind by more than the stream keeps
//! misses what was trimmed, as it would reading the stream alone.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::pubsub::{self, PubSubError, Reader, Reply, Writer};
use super::{last_entry, next_backoff, range_after, RedisBusConfig, MIN_BACKOFF};
use crate::bus::{parse_id, BusEntry, SUBSCRIBER_CAPACITY};
use crate::log_every::{LogEvery, RETRY_LOG_PERIOD};

/// The most entries one catch-up read returns.
const READ_COUNT: usize = 256;
/// The most pub/sub messages kept for a subscription that is behind.
const BUFFER_CAP: usize = SUBSCRIBER_CAPACITY;

/// An entry id as numbers ([`parse_id`]), compared in log order.
type Id = (u64, u64);

fn id_text((ms, seq): Id) -> String {
    format!("{ms}-{seq}")
}

/// The way to the hub. Dropping it (with the bus) ends the hub, so every subscription.
pub(super) struct Handle {
    requests: mpsc::UnboundedSender<Request>,
    conn: ConnectionManager,
}

/// A new subscription for the hub.
struct Request {
    topic: String,
    tx: mpsc::Sender<BusEntry>,
    /// The last entry before it (`None`: not known yet; the first catch-up asks).
    start: Option<Id>,
}

impl Handle {
    /// Delivers `topic`'s entries from its current last one on into `tx`.
    pub(super) fn subscribe(&self, topic: &str, tx: mpsc::Sender<BusEntry>) {
        let requests = self.requests.clone();
        let mut conn = self.conn.clone();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let start = match last_entry(&mut conn, &topic).await {
                Ok(id) => parse_id(&id),
                Err(error) => {
                    super::bus_error();
                    tracing::warn!(%topic, %error, "XREVRANGE failed; resolving the start later");
                    None
                }
            };
            let _ = requests.send(Request { topic, tx, start });
        });
    }
}

/// Starts the hub; it connects when it has a subscription.
pub(super) fn spawn(
    client: redis::Client,
    conn: ConnectionManager,
    config: RedisBusConfig,
) -> Handle {
    let (requests, requested) = mpsc::unbounded_channel();
    let (events, happened) = mpsc::unbounded_channel();
    let hub = Hub {
        client,
        conn: conn.clone(),
        config,
        events,
        generation: 0,
        link: None,
        awaited: VecDeque::new(),
        channels: HashMap::default(),
        subs: HashMap::default(),
        next_sub: 0,
        next_token: 0,
        backoff: MIN_BACKOFF,
        reconnect_at: Instant::now(),
        connect_failures: LogEvery::new(RETRY_LOG_PERIOD),
    };
    tokio::spawn(hub.run(requested, happened));
    Handle { requests, conn }
}

/// What the hub's helper tasks report.
enum Event {
    /// The connection of `generation` could not take a command: it is not to be trusted.
    Failed { generation: u64 },
    /// Subscription `sub`'s catch-up read to the stream's end, through `last`; `None`: the
    /// subscriber is gone.
    CaughtUp { sub: u64, last: Option<Id> },
}

/// A command for the connection, sent in order by its control task; Redis answers each
/// in turn, so the hub keeps the same list to know what an answer is for.
#[derive(Clone)]
enum Control {
    Subscribe { channel: String, token: u64 },
    Unsubscribe(String),
    Ping,
}

impl Control {
    fn name(&self) -> &'static str {
        match self {
            Control::Subscribe { .. } => "SUBSCRIBE",
            Control::Unsubscribe(_) => "UNSUBSCRIBE",
            Control::Ping => "PING",
        }
    }
}

/// The pub/sub connection's command side. Dropping it ends the control task.
struct Link {
    control: mpsc::UnboundedSender<Control>,
}

/// A subscribed channel (named as its topic).
struct Channel {
    /// The SUBSCRIBE in force, or waited for, on this connection.
    token: u64,
    /// Redis confirmed it: messages flow.
    confirmed: bool,
    subs: Vec<u64>,
}

struct Sub {
    topic: String,
    tx: mpsc::Sender<BusEntry>,
    /// The last entry delivered (or the start).
    last: Option<Id>,
    state: State,
}

enum State {
    Live,
    Behind {
        /// The channel's messages since the catch-up began.
        buffer: Vec<(Id, BusEntry)>,
        /// Some did not fit in the buffer.
        overflowed: bool,
        catch_up: Option<CatchUp>,
    },
}

impl State {
    fn behind() -> Self {
        Self::Behind {
            buffer: Vec::new(),
            overflowed: false,
            catch_up: None,
        }
    }
}

/// A running catch-up; dropping it stops it.
struct CatchUp {
    /// The connection it began on.
    generation: u64,
    task: JoinHandle<()>,
}

impl Drop for CatchUp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What became of a message offered to a subscription.
enum Offer {
    Taken,
    /// Its channel is full: it fell behind.
    Full,
    Closed,
}

impl Sub {
    fn offer(&mut self, key: Id, entry: BusEntry) -> Offer {
        match &mut self.state {
            State::Live => {
                if self.last.is_some_and(|last| key <= last) {
                    return Offer::Taken;
                }
                match self.tx.try_send(entry) {
                    Ok(()) => {
                        self.last = Some(key);
                        Offer::Taken
                    }
                    Err(TrySendError::Full(_)) => {
                        self.state = State::behind();
                        Offer::Full
                    }
                    Err(TrySendError::Closed(_)) => Offer::Closed,
                }
            }
            State::Behind {
                buffer, overflowed, ..
            } => {
                if !*overflowed {
                    if buffer.len() < BUFFER_CAP {
                        buffer.push((key, entry));
                    } else {
                        *overflowed = true;
                        *buffer = Vec::new();
                    }
                }
                Offer::Taken
            }
        }
    }

    /// The connection is gone: what it would have carried must be read from the stream.
    fn fall_behind(&mut self) {
        match &mut self.state {
            State::Live => self.state = State::behind(),
            State::Behind { buffer, .. } => *buffer = Vec::new(),
        }
    }
}

struct Hub {
    client: redis::Client,
    /// The shared connection, for the catch-up reads.
    conn: ConnectionManager,
    config: RedisBusConfig,
    events: mpsc::UnboundedSender<Event>,
    /// Counts connections: a catch-up or a failure of an older one is stale.
    generation: u64,
    link: Option<Link>,
    /// The commands sent on this connection and not answered yet, oldest first, each with
    /// the time by which its answer is due.
    awaited: VecDeque<(Control, Instant)>,
    /// Keyed by this node's own topic names and subscription numbers: a fast hash (one
    /// lookup per message) with nothing to defend against.
    channels: HashMap<String, Channel, foldhash::fast::RandomState>,
    subs: HashMap<u64, Sub, foldhash::fast::RandomState>,
    next_sub: u64,
    next_token: u64,
    backoff: Duration,
    reconnect_at: Instant,
    /// The log lines of failed reconnections: one per period at most while Redis is down.
    connect_failures: LogEvery,
}

/// The next reply of the connection, if there is one.
async fn next_reply(reader: &mut Option<Reader>) -> Result<Reply, PubSubError> {
    match reader {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}

impl Hub {
    async fn run(
        mut self,
        mut requested: mpsc::UnboundedReceiver<Request>,
        mut happened: mpsc::UnboundedReceiver<Event>,
    ) {
        let mut reader: Option<Reader> = None;
        let mut ticks = tokio::time::interval(self.config.keepalive);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reconnect = self.link.is_none() && !self.channels.is_empty();
            let reconnect_at = self.reconnect_at;
            let due = self.awaited.front().map(|(_, due)| *due);
            tokio::select! {
                request = requested.recv() => match request {
                    Some(request) => self.add(request),
                    // The bus is gone.
                    None => return,
                },
                Some(event) = happened.recv() => self.on_event(event),
                reply = next_reply(&mut reader) => match reply {
                    Ok(reply) => self.on_reply(reply),
                    Err(error) => {
                        tracing::warn!(%error, "Redis pub/sub connection lost; reconnecting");
                        self.lost();
                    }
                },
                // Lazy: no timer is made for the (usual) loop turn without a reconnection.
                () = async { tokio::time::sleep_until(reconnect_at).await }, if reconnect => {
                    reader = self.connect().await;
                }
                () = async {
                    if let Some(due) = due {
                        tokio::time::sleep_until(due).await;
                    }
                }, if due.is_some() => {
                    let what = self.awaited.front().map_or("", |(c, _)| c.name());
                    tracing::warn!("Redis pub/sub connection not answering {what}; reconnecting");
                    self.lost();
                }
                _ = ticks.tick() => self.keep_alive(),
            }
            if self.link.is_none() {
                reader = None;
            }
        }
    }

    async fn connect(&mut self) -> Option<Reader> {
        let opened = tokio::time::timeout(
            self.config.response_timeout,
            pubsub::open(self.client.get_connection_info()),
        )
        .await;
        let (reader, writer) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => {
                super::bus_error();
                if let Some(suppressed) = self.connect_failures.due() {
                    tracing::warn!(%error, suppressed, "Redis pub/sub connection failed; retrying");
                }
                self.retry_later();
                return None;
            }
            Err(_) => {
                super::bus_error();
                if let Some(suppressed) = self.connect_failures.due() {
                    tracing::warn!(suppressed, "Redis pub/sub connection timed out; retrying");
                }
                self.retry_later();
                return None;
            }
        };
        self.generation += 1;
        let (control, commands) = mpsc::unbounded_channel();
        tokio::spawn(control_loop(
            writer,
            commands,
            self.events.clone(),
            self.generation,
            self.config.response_timeout,
        ));
        self.link = Some(Link { control });
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            self.send_subscribe(name);
        }
        Some(reader)
    }

    /// Sends `command` on the connection, if there is one, and awaits its answer.
    fn send(&mut self, command: Control) {
        if let Some(link) = &self.link {
            let due = Instant::now() + self.config.response_timeout;
            self.awaited.push_back((command.clone(), due));
            let _ = link.control.send(command);
        }
    }

    fn retry_later(&mut self) {
        self.reconnect_at = Instant::now() + self.backoff;
        self.backoff = next_backoff(self.backoff);
    }

    /// The connection is gone or untrustworthy: count the error, drop the connection, and
    /// reconnect after a pause.
    fn lost(&mut self) {
        super::bus_error();
        self.link = None;
        self.awaited.clear();
        self.generation += 1;
        for channel in self.channels.values_mut() {
            channel.confirmed = false;
        }
        for sub in self.subs.values_mut() {
            sub.fall_behind();
        }
        self.retry_later();
    }

    fn send_subscribe(&mut self, channel: String) {
        self.next_token += 1;
        let token = self.next_token;
        let Some(entry) = self.channels.get_mut(&channel) else {
            return;
        };
        entry.token = token;
        entry.confirmed = false;
        self.send(Control::Subscribe { channel, token });
    }

    fn add(&mut self, request: Request) {
        let Request { topic, tx, start } = request;
        let sub = self.next_sub;
        self.next_sub += 1;
        self.subs.insert(
            sub,
            Sub {
                topic: topic.clone(),
                tx,
                last: start,
                state: State::behind(),
            },
        );
        match self.channels.get_mut(&topic) {
            Some(channel) => {
                channel.subs.push(sub);
                if channel.confirmed {
                    self.start_catch_up(sub);
                }
            }
            None => {
                self.channels.insert(
                    topic.clone(),
                    Channel {
                        token: 0,
                        confirmed: false,
                        subs: vec![sub],
                    },
                );
                // Without a connection, connecting subscribes it.
                self.send_subscribe(topic);
            }
        }
    }

    fn remove(&mut self, sub: u64) {
        let Some(removed) = self.subs.remove(&sub) else {
            return;
        };
        let Some(channel) = self.channels.get_mut(&removed.topic) else {
            return;
        };
        channel.subs.retain(|s| *s != sub);
        if channel.subs.is_empty() {
            self.channels.remove(&removed.topic);
            self.send(Control::Unsubscribe(removed.topic));
        }
    }

    /// Starts reading the stream for `sub`, if it is behind and not reading already. Only
    /// while its channel is confirmed on the current connection.
    fn start_catch_up(&mut self, sub: u64) {
        let Some(entry) = self.subs.get_mut(&sub) else {
            return;
        };
        let State::Behind {
            buffer,
            overflowed,
            catch_up,
        } = &mut entry.state
        else {
            return;
        };
        if catch_up.is_some() {
            return;
        }
        // The read below starts later than every buffered message was published: it finds
        // them in the stream.
        buffer.clear();
        *overflowed = false;
        let events = self.events.clone();
        let read = read_after(
            self.conn.clone(),
            entry.topic.clone(),
            entry.tx.clone(),
            entry.last,
        );
        let task = tokio::spawn(async move {
            let last = read.await;
            let _ = events.send(Event::CaughtUp { sub, last });
        });
        *catch_up = Some(CatchUp {
            generation: self.generation,
            task,
        });
    }

    /// Redis confirmed the SUBSCRIBE of `channel` that carried `token`.
    fn subscribed(&mut self, channel: &str, token: u64) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        // An older SUBSCRIBE of a channel dropped and asked for again since.
        if entry.token != token {
            return;
        }
        self.backoff = MIN_BACKOFF;
        entry.confirmed = true;
        // One that is still reading (begun on an older connection) starts again when it
        // ends.
        for sub in entry.subs.clone() {
            self.start_catch_up(sub);
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        let answered = match reply {
            Reply::Message { channel, payload } => return self.on_message(&channel, &payload),
            Reply::Other => return,
            reply => (reply, self.awaited.pop_front().map(|(c, _)| c)),
        };
        match answered {
            (Reply::Subscribed(confirmed), Some(Control::Subscribe { channel, token }))
                if confirmed == channel.as_bytes() =>
            {
                self.subscribed(&channel, token)
            }
            (Reply::Unsubscribed(_), Some(Control::Unsubscribe(_)))
            | (Reply::Pong, Some(Control::Ping)) => {}
            (Reply::Error(error), command) => {
                let what = command.as_ref().map_or("a command", Control::name);
                match command {
                    Some(Control::Subscribe { channel, .. }) => {
                        tracing::warn!(%channel, %error, "SUBSCRIBE failed; reconnecting")
                    }
                    _ => tracing::warn!(%error, "pub/sub {what} failed; reconnecting"),
                }
                self.lost();
            }
            (reply, command) => {
                let what = command.as_ref().map_or("nothing", Control::name);
                tracing::warn!(
                    ?reply,
                    "pub/sub answer out of step with {what}; reconnecting"
                );
                self.lost();
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Failed { generation } => {
                if generation == self.generation && self.link.is_some() {
                    tracing::warn!("Redis pub/sub connection not answering; reconnecting");
                    self.lost();
                }
            }
            Event::CaughtUp { sub, last } => match last {
                Some(last) => self.caught_up(sub, last),
                None => self.remove(sub),
            },
        }
    }

    fn caught_up(&mut self, sub: u64, last: Id) {
        let generation = self.generation;
        let confirmed = self.link.is_some();
        let Some(entry) = self.subs.get_mut(&sub) else {
            return;
        };
        entry.last = Some(last);
        let confirmed = confirmed
            && self
                .channels
                .get(&entry.topic)
                .is_some_and(|channel| channel.confirmed);
        let State::Behind {
            buffer,
            overflowed,
            catch_up,
        } = &mut entry.state
        else {
            return;
        };
        let began = catch_up.take().map(|c| c.generation);
        if !confirmed {
            // The channel's confirmation starts the next catch-up.
            *buffer = Vec::new();
            return;
        }
        if began != Some(generation) || *overflowed {
            self.start_catch_up(sub);
            return;
        }
        let buffered = std::mem::take(buffer);
        entry.state = State::Live;
        for (key, message) in buffered {
            match entry.offer(key, message) {
                Offer::Taken => {}
                Offer::Full => {
                    self.start_catch_up(sub);
                    return;
                }
                Offer::Closed => {
                    self.remove(sub);
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, channel: &[u8], payload: &[u8]) {
        let Some((name, channel)) = std::str::from_utf8(channel)
            .ok()
            .and_then(|name| Some((name, self.channels.get(name)?)))
        else {
            return;
        };
        let Some((key, entry)) = parse_message(payload) else {
            tracing::warn!(channel = name, "malformed bus message; skipped");
            return;
        };
        let mut behind = Vec::new();
        let mut closed = Vec::new();
        let mut entry = Some(entry);
        for (i, sub) in channel.subs.iter().enumerate() {
            let Some(target) = self.subs.get_mut(sub) else {
                continue;
            };
            // The last one takes the entry itself.
            let message = if i + 1 == channel.subs.len() {
                entry.take()
            } else {
                entry.clone()
            };
            let Some(message) = message else { break };
            match target.offer(key, message) {
                Offer::Taken => {}
                Offer::Full => behind.push(*sub),
                Offer::Closed => closed.push(*sub),
            }
        }
        for sub in behind {
            self.start_catch_up(sub);
        }
        for sub in closed {
            self.remove(sub);
        }
    }

    /// Pings the connection, and forgets the subscriptions whose receiver is gone (a quiet
    /// topic would not show it).
    fn keep_alive(&mut self) {
        self.send(Control::Ping);
        let gone: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, sub)| sub.tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for sub in gone {
            self.remove(sub);
        }
    }
}

/// A message `<id> <entry>` as [`APPEND`](super::APPEND) publishes it.
fn parse_message(payload: &[u8]) -> Option<(Id, BusEntry)> {
    let space = payload.iter().position(|b| *b == b' ')?;
    let id = std::str::from_utf8(&payload[..space]).ok()?;
    let key = parse_id(id)?;
    let data = bytes::Bytes::copy_from_slice(&payload[space + 1..]);
    Some((
        key,
        BusEntry {
            id: id.to_owned(),
            data,
        },
    ))
}

/// Writes the connection's commands in order (so that an UNSUBSCRIBE and a later SUBSCRIBE
/// of one channel reach Redis in that order), each within `timeout`; the hub reads the
/// answers. Ends when the hub drops the connection, or at the first write that fails.
async fn control_loop(
    mut writer: Writer,
    mut commands: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Event>,
    generation: u64,
    timeout: Duration,
) {
    while let Some(command) = commands.recv().await {
        let args: &[&[u8]] = match &command {
            Control::Subscribe { channel, .. } => &[b"SUBSCRIBE", channel.as_bytes()],
            Control::Unsubscribe(channel) => &[b"UNSUBSCRIBE", channel.as_bytes()],
            Control::Ping => &[b"PING"],
        };
        let written = tokio::time::timeout(timeout, writer.send(args)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(?written, "pub/sub {} not sent", command.name());
            let _ = events.send(Event::Failed { generation });
            return;
        }
    }
}

/// Sends `topic`'s entries after `last` (after the stream's current last entry when
/// `None`) into `tx`, until a read reaches the stream's end; retries through errors.
/// Returns the last entry sent (or the start), or `None` when the receiver is gone.
async fn read_after(
    mut conn: ConnectionManager,
    topic: String,
    tx: mpsc::Sender<BusEntry>,
    mut last: Option<Id>,
) -> Option<Id> {
    let mut failures = LogEvery::new(RETRY_LOG_PERIOD);
    let mut backoff = MIN_BACKOFF;
    loop {
        let read = async {
            let from = match last {
                Some(from) => from,
                None => {
                    let from = parse_id(&last_entry(&mut conn, &topic).await?).unwrap_or((0, 0));
                    last = Some(from);
                    from
                }
            };
            range_after(&mut conn, &topic, &id_text(from), READ_COUNT).await
        };
        let read = tokio::select! {
            read = read => read,
            () = tx.closed() => return None,
        };
        match read {
            Ok(entries) => {
                backoff = MIN_BACKOFF;
                let more = entries.len() >= READ_COUNT;
                for (id, data) in entries {
                    let Some(key) = parse_id(&id) else {
                        tracing::warn!(%topic, %id, "stream entry with a malformed id; skipped");
                        continue;
                    };
                    last = Some(key);
                    match data {
                        Some(data) => tx.send(BusEntry { id, data }).await.ok()?,
                        None => tracing::warn!(%topic, "stream entry without data; skipped"),
                    }
                }
                if !more {
                    return last;
                }
            }
            Err(error) => {
                super::bus_error();
                if let Some(suppressed) = failures.due() {
                    tracing::warn!(%topic, %error, suppressed, "XRANGE failed; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = tx.closed() => return None,
                }
                backoff = next_backoff(backoff);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_an_id_a_space_and_the_entry() {
        let (key, entry) = parse_message(b"17-3 {\"a\": 1}").unwrap();
        assert_eq!(key, (17, 3));
        assert_eq!(entry.id, "17-3");
        assert_eq!(entry.data.as_ref(), b"{\"a\": 1}");
        // An empty entry.
        assert_eq!(parse_message(b"1-0 ").unwrap().1.data.len(), 0);
        for bad in [&b"17-3"[..], b"x-1 data", b" data", b""] {
            assert!(parse_message(bad).is_none());
        }
    }
}
