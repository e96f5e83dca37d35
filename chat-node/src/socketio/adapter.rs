//! Rooms and broadcasts: the [`Adapter`] trait, one per namespace, and [`LocalAdapter`], the
//! in-process implementation.
//!
//! A broadcast travels as an encoded packet ([`Encoded`]: text plus attachments), encoded
//! once and handed to every target as is, so that a distributed adapter can ship it between
//! nodes unchanged. Every socket is in the room named by its id, which is how a broadcast
//! reaches "one socket" or excludes the sender.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::packet::{Encoded, Namespace};
use crate::engineio::{Sid, SidMap, SidSet};

/// A room name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Room(Arc<str>);

impl Serialize for Room {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Room {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

impl Room {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Room {
    fn from(name: &str) -> Self {
        Self(name.into())
    }
}

impl From<String> for Room {
    fn from(name: String) -> Self {
        Self(name.into())
    }
}

/// The room of one socket, named by its id.
impl From<Sid> for Room {
    fn from(sid: Sid) -> Self {
        Self(sid.as_str().into())
    }
}

impl AsRef<str> for Room {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Which sockets of a namespace a broadcast reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastOptions {
    /// The sockets in any of these rooms; every socket of the namespace when empty.
    pub rooms: Vec<Room>,
    /// Minus the sockets in any of these rooms.
    pub except: Vec<Room>,
}

/// A failure of a distributed adapter (the in-process one cannot fail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// The broker behind the adapter cannot be reached.
    #[error("adapter unavailable: {0}")]
    Unavailable(String),
}

/// The sockets of one namespace on this node, as an adapter sees them.
pub trait LocalSockets: Send + Sync + 'static {
    /// Sends an encoded packet to each of the local sockets `sids` that is still
    /// connected. `offset`: the broadcast's position in the namespace log ([`parse_id`]),
    /// when connection-state recovery is on; a socket that was just recovered drops what
    /// it already got in its replay.
    ///
    /// [`parse_id`]: crate::bus::parse_id
    fn deliver(&self, sids: &[Sid], packet: &Encoded, offset: Option<(u64, u64)>);

    /// The local sockets `sids` were taken out of `rooms` by
    /// [`Adapter::del_sockets`] (called on this node or another). Called on the adapter's
    /// own path (a bus reader, between two entries): it must not block.
    fn left(&self, _sids: &[Sid], _rooms: &[Room]) {}

    /// The local sockets `sids` were put in `rooms` by [`Adapter::add_sockets`] (called
    /// on this node or another). Called on the adapter's own path: it must not block.
    fn joined(&self, _sids: &[Sid], _rooms: &[Room]) {}
}

/// The recorded state of a socket that a reconnecting client may take back
/// (connection-state recovery, see [`crate::recovery`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenSession {
    /// Its socket id.
    pub sid: Sid,
    /// Its rooms (its own room included).
    pub rooms: Vec<Room>,
    /// The namespace log's last offset when it connected.
    pub connected_at: String,
    /// Whom the application said it belongs to ([`Socket::set_identity`]), if it did.
    ///
    /// [`Socket::set_identity`]: crate::socketio::socket::Socket::set_identity
    pub identity: Option<String>,
}

/// The broadcasts a recovering socket missed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replay {
    /// In order, each with its offset appended.
    pub packets: Vec<Encoded>,
    /// The position of the last entry the replay covers: a later delivery at or before it
    /// is a duplicate.
    pub through: Option<(u64, u64)>,
}

/// What a [`JointStep`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JointOutcome {
    /// Nothing was written: there is nothing to broadcast.
    Declined,
    /// The step's write is done, its value is this; the broadcast's entry is not in the
    /// log: the adapter appends it, as for any broadcast.
    Written(String),
    /// The write is done and the entry, with the value spliced in, is in the log with id
    /// `id`.
    Appended {
        /// The value spliced into the packet.
        value: String,
        /// The entry's id in the log.
        id: String,
    },
    /// The step got no answer from the broker: the write and the entry's append may have
    /// happened, or may still happen (a stalled broker runs them when it resumes). The
    /// value is unknown, so nothing is delivered now: an adapter with a log delivers the
    /// entry to its local sockets if it shows up there.
    Unknown,
}

/// A write of the application's that a broadcast announces, run together with the
/// broadcast's append when the broker allows it ([`Adapter::broadcast_joint`]): the
/// chat's post, which stores a message and yields its id, the value the packet is
/// missing. The step keeps its own result (an error, a refusal) for its caller; the
/// adapter only learns whether there is something to broadcast.
#[async_trait]
pub trait JointStep: Send + Sync {
    /// Does the write; with `target`, also appends `head`, the value, then `tail` to the
    /// stream there, in the same atomic step on the broker, unless that stream refuses it
    /// (then [`JointOutcome::Written`]: the adapter appends it).
    async fn run(
        &self,
        target: Option<&crate::bus::StreamTarget>,
        head: &[u8],
        tail: &[u8],
    ) -> JointOutcome;
}

/// Room membership and broadcasts for one namespace.
///
/// Membership is about this node's sockets; a broadcast reaches the matching sockets
/// wherever they are connected (on this node only, for [`LocalAdapter`]).
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// Adds a local socket to rooms.
    async fn add_all(&self, sid: Sid, rooms: Vec<Room>) -> Result<(), AdapterError>;
    /// Removes a local socket from a room.
    async fn del(&self, sid: Sid, room: Room) -> Result<(), AdapterError>;
    /// Removes a local socket from every room (it disconnected).
    async fn del_all(&self, sid: Sid) -> Result<(), AdapterError>;
    /// The rooms a local socket is in.
    async fn rooms_of(&self, sid: Sid) -> Result<Vec<Room>, AdapterError>;
    /// Sends `packet` to the sockets `opts` selects.
    async fn broadcast(&self, packet: Encoded, opts: BroadcastOptions) -> Result<(), AdapterError>;
    /// Runs `step`, then sends `packet`, its text's `hole` replaced by the value the step
    /// wrote, to the sockets `opts` selects; nothing when the step declined. A distributed
    /// adapter may have the step append the broadcast's entry itself (one round trip to
    /// the broker for both); the default runs the step, then [`broadcast`](Adapter::broadcast)s.
    async fn broadcast_joint(
        &self,
        packet: Encoded,
        hole: std::ops::Range<usize>,
        opts: BroadcastOptions,
        step: &dyn JointStep,
    ) -> Result<(), AdapterError> {
        match step.run(None, &[], &[]).await {
            // Without a target no entry can show up: an unknown write is not broadcast.
            JointOutcome::Declined | JointOutcome::Unknown => Ok(()),
            JointOutcome::Written(value) | JointOutcome::Appended { value, .. } => {
                self.broadcast(packet.splice(hole, &value), opts).await
            }
        }
    }
    /// The ids of the sockets `opts` selects.
    async fn sockets(&self, opts: BroadcastOptions) -> Result<Vec<Sid>, AdapterError>;
    /// Takes the sockets `opts` selects out of `rooms`, wherever they are connected (the
    /// reference server's `socketsLeave`). When it returns `Ok`, this node's sockets have
    /// left, and no broadcast that starts afterwards, on any node, reaches one of the
    /// selected sockets through those rooms. An error means the other nodes may not have
    /// been told (this node's sockets have left all the same).
    async fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
    ) -> Result<(), AdapterError>;
    /// Runs `step`, then [`del_sockets`](Adapter::del_sockets) unless the step declined:
    /// the leave of the sockets that a write of the application's turns into strangers
    /// (the chat's creation of a room, for the sockets left over from a room of that name
    /// that Redis lost). A distributed adapter may have the step append the leave's entry
    /// itself, in the same atomic step as its write (`head` is the whole entry, `tail`
    /// empty): nothing that follows the write can then come before the leave in the log.
    /// When it returns `Ok` after a write, this node's sockets have left.
    async fn del_sockets_joint(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
        step: &dyn JointStep,
    ) -> Result<(), AdapterError> {
        match step.run(None, &[], &[]).await {
            JointOutcome::Declined | JointOutcome::Unknown => Ok(()),
            JointOutcome::Written(_) | JointOutcome::Appended { .. } => {
                self.del_sockets(opts, rooms).await
            }
        }
    }
    /// Puts the sockets `opts` selects in `rooms`, wherever they are connected (the
    /// reference server's `socketsJoin`). When it returns `Ok`, this node's sockets are
    /// in, and every node puts its own in before it delivers any broadcast that starts
    /// afterwards. An error means the other nodes may not have been told.
    async fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
    ) -> Result<(), AdapterError>;

    /// Whether this adapter recovers connection states: sockets then get a private id.
    fn recovers(&self) -> bool {
        false
    }

    /// Socket `sid` connected with private id `pid` (new or recovered), belonging to
    /// `identity` as the application says; record its state (rooms and identity included)
    /// so that it can be recovered, even if this node dies.
    async fn session_opened(
        &self,
        _sid: Sid,
        _pid: &str,
        _identity: Option<&str>,
    ) -> Result<(), AdapterError> {
        Ok(())
    }

    /// Socket `sid` disconnected. `recoverable`: keep its state for the recovery window;
    /// else forget it. Called before [`del_all`](Adapter::del_all), while its rooms are known.
    async fn session_closed(&self, _sid: Sid, _recoverable: bool) -> Result<(), AdapterError> {
        Ok(())
    }

    /// Takes the recorded state of the socket with private id `pid`: `None` when there is
    /// none (unknown, expired, already taken, or its socket is still connected here).
    async fn take_session(&self, _pid: &str) -> Result<Option<TakenSession>, AdapterError> {
        Ok(None)
    }

    /// Puts back a state [`take_session`](Adapter::take_session) took, for its owner to
    /// recover: the application refused it to whoever presented the pid.
    async fn restore_session(&self, _pid: &str, _taken: TakenSession) -> Result<(), AdapterError> {
        Ok(())
    }

    /// The broadcasts to `rooms` after offset `after`; `None` when `after` is no longer in
    /// the log (or never was), so that what was missed cannot be known.
    async fn missed(&self, _after: &str, _rooms: &[Room]) -> Result<Option<Replay>, AdapterError> {
        Ok(None)
    }
}

/// Makes the adapter of each namespace.
pub trait AdapterFactory: Send + Sync + 'static {
    /// The adapter of namespace `nsp`, delivering to its local sockets through `local`.
    fn create(&self, nsp: &Namespace, local: Weak<dyn LocalSockets>) -> Arc<dyn Adapter>;
}

/// Makes [`LocalAdapter`]s: one node, everything in memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalAdapterFactory;

impl AdapterFactory for LocalAdapterFactory {
    fn create(&self, _nsp: &Namespace, local: Weak<dyn LocalSockets>) -> Arc<dyn Adapter> {
        Arc::new(LocalAdapter::new(local))
    }
}

/// Room membership in memory, broadcasts delivered to local sockets. A distributed adapter
/// keeps one for its node's sockets and adds the traffic between nodes.
pub struct LocalAdapter {
    local: Weak<dyn LocalSockets>,
    index: RwLock<Index>,
}

#[derive(Default)]
struct Index {
    rooms: HashMap<Room, SidSet>,
    sids: SidMap<HashSet<Room>>,
}

impl fmt::Debug for LocalAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = self.index.read();
        f.debug_struct("LocalAdapter")
            .field("rooms", &index.rooms.len())
            .field("sockets", &index.sids.len())
            .finish()
    }
}

impl LocalAdapter {
    /// An empty adapter delivering through `local`.
    pub fn new(local: Weak<dyn LocalSockets>) -> Self {
        Self {
            local,
            index: RwLock::new(Index::default()),
        }
    }

    /// Adds `sid` to `rooms`.
    pub fn join(&self, sid: Sid, rooms: impl IntoIterator<Item = Room>) {
        let mut index = self.index.write();
        for room in rooms {
            index.rooms.entry(room.clone()).or_default().insert(sid);
            index.sids.entry(sid).or_default().insert(room);
        }
    }

    /// Removes `sid` from `room`.
    pub fn leave(&self, sid: Sid, room: &Room) {
        let mut index = self.index.write();
        if let Some(members) = index.rooms.get_mut(room) {
            members.remove(&sid);
            if members.is_empty() {
                index.rooms.remove(room);
            }
        }
        if let Some(rooms) = index.sids.get_mut(&sid) {
            rooms.remove(room);
            if rooms.is_empty() {
                index.sids.remove(&sid);
            }
        }
    }

    /// Removes `sid` from every room.
    pub fn leave_all(&self, sid: Sid) {
        let mut index = self.index.write();
        let Some(rooms) = index.sids.remove(&sid) else {
            return;
        };
        for room in rooms {
            if let Some(members) = index.rooms.get_mut(&room) {
                members.remove(&sid);
                if members.is_empty() {
                    index.rooms.remove(&room);
                }
            }
        }
    }

    /// The rooms `sid` is in.
    pub fn rooms(&self, sid: Sid) -> Vec<Room> {
        self.index
            .read()
            .sids
            .get(&sid)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The local sockets `opts` selects (the reference adapter's `apply`).
    pub fn targets(&self, opts: &BroadcastOptions) -> Vec<Sid> {
        let index = self.index.read();
        let except: SidSet = opts
            .except
            .iter()
            .filter_map(|room| index.rooms.get(room))
            .flatten()
            .copied()
            .collect();
        if opts.rooms.is_empty() {
            return index
                .sids
                .keys()
                .filter(|sid| !except.contains(sid))
                .copied()
                .collect();
        }
        // One room holds each socket once: only several need de-duplicating.
        let several = opts.rooms.len() > 1;
        let mut seen = SidSet::default();
        opts.rooms
            .iter()
            .filter_map(|room| index.rooms.get(room))
            .flatten()
            .filter(|sid| !except.contains(sid) && (!several || seen.insert(**sid)))
            .copied()
            .collect()
    }

    /// Takes the local sockets `opts` selects out of `rooms`, and tells the namespace
    /// which ([`LocalSockets::left`]).
    pub fn leave_selected(&self, opts: &BroadcastOptions, rooms: &[Room]) -> Vec<Sid> {
        let sids = self.targets(opts);
        if sids.is_empty() {
            return sids;
        }
        for sid in &sids {
            for room in rooms {
                self.leave(*sid, room);
            }
        }
        if let Some(local) = self.local.upgrade() {
            local.left(&sids, rooms);
        }
        sids
    }

    /// Puts the local sockets `opts` selects in `rooms` and tells the namespace
    /// ([`LocalSockets::joined`]); returns them.
    pub fn join_selected(&self, opts: &BroadcastOptions, rooms: &[Room]) -> Vec<Sid> {
        let sids = self.targets(opts);
        if sids.is_empty() {
            return sids;
        }
        for sid in &sids {
            self.join(*sid, rooms.iter().cloned());
        }
        if let Some(local) = self.local.upgrade() {
            local.joined(&sids, rooms);
        }
        sids
    }

    /// Delivers `packet` to the local sockets `opts` selects.
    pub fn deliver(&self, packet: &Encoded, opts: &BroadcastOptions, offset: Option<(u64, u64)>) {
        let Some(local) = self.local.upgrade() else {
            return;
        };
        let targets = self.targets(opts);
        if !targets.is_empty() {
            local.deliver(&targets, packet, offset);
        }
    }
}

#[async_trait]
impl Adapter for LocalAdapter {
    async fn add_all(&self, sid: Sid, rooms: Vec<Room>) -> Result<(), AdapterError> {
        self.join(sid, rooms);
        Ok(())
    }

    async fn del(&self, sid: Sid, room: Room) -> Result<(), AdapterError> {
        self.leave(sid, &room);
        Ok(())
    }

    async fn del_all(&self, sid: Sid) -> Result<(), AdapterError> {
        self.leave_all(sid);
        Ok(())
    }

    async fn rooms_of(&self, sid: Sid) -> Result<Vec<Room>, AdapterError> {
        Ok(self.rooms(sid))
    }

    async fn broadcast(&self, packet: Encoded, opts: BroadcastOptions) -> Result<(), AdapterError> {
        self.deliver(&packet, &opts, None);
        Ok(())
    }

    async fn sockets(&self, opts: BroadcastOptions) -> Result<Vec<Sid>, AdapterError> {
        Ok(self.targets(&opts))
    }

    async fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
    ) -> Result<(), AdapterError> {
        self.leave_selected(&opts, &rooms);
        Ok(())
    }

    async fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
    ) -> Result<(), AdapterError> {
        self.join_selected(&opts, &rooms);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use parking_lot::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Sid, String)>>);

    impl LocalSockets for Recorder {
        fn deliver(&self, sids: &[Sid], packet: &Encoded, _offset: Option<(u64, u64)>) {
            let mut got = self.0.lock();
            got.extend(sids.iter().map(|sid| (*sid, packet.text.clone())));
        }
    }

    fn sorted(mut sids: Vec<Sid>) -> Vec<Sid> {
        sids.sort();
        sids
    }

    #[test]
    fn rooms_select_and_except_excludes() {
        let recorder = Arc::new(Recorder::default());
        let local: Weak<dyn LocalSockets> = Arc::downgrade(&recorder) as Weak<dyn LocalSockets>;
        let adapter = LocalAdapter::new(local);
        let [a, b, c] = [Sid::random(), Sid::random(), Sid::random()];
        for sid in [a, b, c] {
            adapter.join(sid, [Room::from(sid)]);
        }
        adapter.join(a, [Room::from("red"), Room::from("blue")]);
        adapter.join(b, [Room::from("red")]);

        let all = BroadcastOptions::default();
        assert_eq!(sorted(adapter.targets(&all)), sorted(vec![a, b, c]));
        let red = BroadcastOptions {
            rooms: vec!["red".into(), "blue".into()],
            except: vec![],
        };
        // A socket in two of the rooms is reached once.
        assert_eq!(sorted(adapter.targets(&red)), sorted(vec![a, b]));
        let red_but_a = BroadcastOptions {
            rooms: vec!["red".into()],
            except: vec![Room::from(a)],
        };
        assert_eq!(adapter.targets(&red_but_a), vec![b]);
        let all_but_blue = BroadcastOptions {
            rooms: vec![],
            except: vec!["blue".into()],
        };
        assert_eq!(sorted(adapter.targets(&all_but_blue)), sorted(vec![b, c]));

        adapter.deliver(
            &Encoded {
                text: "2[\"x\"]".into(),
                attachments: vec![],
            },
            &red_but_a,
            None,
        );
        assert_eq!(recorder.0.lock().clone(), vec![(b, "2[\"x\"]".to_owned())]);
    }

    #[test]
    fn leaving_cleans_up_empty_rooms() {
        let adapter = LocalAdapter::new(Weak::<Recorder>::new() as Weak<dyn LocalSockets>);
        let a = Sid::random();
        adapter.join(a, [Room::from("red"), Room::from("blue")]);
        adapter.leave(a, &Room::from("red"));
        assert_eq!(adapter.rooms(a), vec![Room::from("blue")]);
        adapter.leave_all(a);
        assert!(adapter.rooms(a).is_empty());
        let index = adapter.index.read();
        assert!(index.rooms.is_empty() && index.sids.is_empty());
    }
}
