//! Broadcasts: select sockets by room (`to`), leave some out (`except`), then emit to all
//! of them through the namespace's adapter.

use std::sync::Arc;

use super::adapter::{BroadcastOptions, JointStep, Room};
use super::data::Data;
use super::namespace::NamespaceInner;
use super::packet::Packet;
use super::socket::{check_event, EmitError, SocketRef};

/// A broadcast being built: `nsp.to("room").except("other").emit(...)`.
#[derive(Clone)]
#[must_use = "a broadcast does nothing until it is emitted"]
pub struct BroadcastOperator {
    ns: Arc<NamespaceInner>,
    opts: BroadcastOptions,
}

impl std::fmt::Debug for BroadcastOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastOperator")
            .field("nsp", self.ns.name())
            .field("opts", &self.opts)
            .finish()
    }
}

impl BroadcastOperator {
    pub(crate) fn new(ns: Arc<NamespaceInner>) -> Self {
        Self {
            ns,
            opts: BroadcastOptions::default(),
        }
    }

    /// Adds the sockets in `room` (without any room: every socket of the namespace).
    pub fn to(mut self, room: impl Into<Room>) -> Self {
        let room = room.into();
        if !self.opts.rooms.contains(&room) {
            self.opts.rooms.push(room);
        }
        self
    }

    /// Leaves out the sockets in `room` (a socket id is a room too).
    pub fn except(mut self, room: impl Into<Room>) -> Self {
        let room = room.into();
        if !self.opts.except.contains(&room) {
            self.opts.except.push(room);
        }
        self
    }

    /// The selection so far.
    pub fn options(&self) -> &BroadcastOptions {
        &self.opts
    }

    /// Emits an event to every selected socket; the packet is encoded once.
    pub async fn emit(self, event: &str, args: Vec<Data>) -> Result<(), EmitError> {
        check_event(event)?;
        let packet = Packet::event(self.ns.name().clone(), event, args, None).encode();
        Ok(self.ns.adapter().broadcast(packet, self.opts).await?)
    }

    /// Emits an event whose arguments hold the placeholder `hole` (text that no argument
    /// can otherwise produce: a random token) where the value `step` writes goes: the
    /// step runs first, and nothing is sent when it declines (see
    /// [`Adapter::broadcast_joint`](super::Adapter::broadcast_joint)). A placeholder that
    /// the encoded packet does not hold exactly once is refused before the step runs.
    pub async fn emit_joint(
        self,
        event: &str,
        args: Vec<Data>,
        hole: &str,
        step: &dyn JointStep,
    ) -> Result<(), EmitError> {
        check_event(event)?;
        let packet = Packet::event(self.ns.name().clone(), event, args, None).encode();
        let mut found = packet.text.match_indices(hole).map(|(at, _)| at);
        let (Some(at), None) = (found.next(), found.next()) else {
            return Err(EmitError::Placeholder);
        };
        let hole = at..at + hole.len();
        Ok(self
            .ns
            .adapter()
            .broadcast_joint(packet, hole, self.opts, step)
            .await?)
    }

    /// Takes every selected socket, on every node, out of `rooms` (see
    /// [`Adapter::del_sockets`](super::Adapter::del_sockets) for what `Ok` promises).
    pub async fn sockets_leave(self, rooms: Vec<Room>) -> Result<(), EmitError> {
        Ok(self.ns.adapter().del_sockets(self.opts, rooms).await?)
    }

    /// Runs `step`, then takes every selected socket, on every node, out of `rooms`,
    /// unless the step declined; the leave's entry appended by the step itself when the
    /// adapter allows (see
    /// [`Adapter::del_sockets_joint`](super::Adapter::del_sockets_joint)).
    pub async fn sockets_leave_joint(
        self,
        rooms: Vec<Room>,
        step: &dyn JointStep,
    ) -> Result<(), EmitError> {
        Ok(self
            .ns
            .adapter()
            .del_sockets_joint(self.opts, rooms, step)
            .await?)
    }

    /// Puts every selected socket, on every node, in `rooms` (see
    /// [`Adapter::add_sockets`](super::Adapter::add_sockets) for what `Ok` promises).
    pub async fn sockets_join(self, rooms: Vec<Room>) -> Result<(), EmitError> {
        Ok(self.ns.adapter().add_sockets(self.opts, rooms).await?)
    }

    /// The selected sockets connected to this node.
    pub async fn local_sockets(self) -> Result<Vec<SocketRef>, EmitError> {
        let sids = self.ns.adapter().sockets(self.opts).await?;
        Ok(sids
            .into_iter()
            .filter_map(|sid| self.ns.socket(sid))
            .collect())
    }
}
