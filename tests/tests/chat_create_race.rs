//! Several users creating a room of one name at once, on two chat nodes on a real
//! `redis-server`, while others join it as soon as it exists: the one `create` that wins
//! and every `join` that succeeds leave their sockets in the room, so that a message sent
//! there afterwards reaches them all. A `create` that lost the race, or one that found the
//! name free, must not take anyone out of the new room: the emptying of a room Redis forgot
//! is for the sockets left over from before, which get nothing of the new room, whoever
//! wins the race for its name.
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_create_race`.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};
use tests::chatnode::{events_until, message_within, raw_chat_call, raw_chat_socket, ChatNode};
use tests::redis::RedisServer;
use tests::ws::Ws;

/// Rooms raced for, one after the other: each round is a few milliseconds of racing, and
/// a round where a `create` that finds the name free empties the room before it knows
/// whether it wins takes a member out about once in twenty.
const ROUNDS: usize = 300;
/// Rooms raced for after Redis lost its data, each with sockets left over in it.
const ROUNDS_AFTER_LOSS: usize = 40;
/// Users creating each room at once, on alternating nodes.
const CREATORS: usize = 6;
/// Users joining each room as soon as it exists, on alternating nodes.
const JOINERS: usize = 4;
/// How many `join`s a joiner tries before the room exists (each answered `no such room`).
const MAX_TRIES: usize = 2000;
/// How long a member waits for the round's message: it comes within milliseconds.
const DELIVERY: Duration = Duration::from_secs(5);

/// A chat socket and the id of its last call.
struct User {
    name: String,
    ws: Ws,
    calls: u64,
}

impl User {
    async fn connect(node: &ChatNode, name: String) -> User {
        let ws = raw_chat_socket(node, &name).await;
        User { name, ws, calls: 0 }
    }

    async fn call(&mut self, event: &str, payload: &Value) -> Value {
        self.calls += 1;
        raw_chat_call(&mut self.ws, self.calls, event, &payload.to_string()).await
    }

    /// Joins `room`, trying again while it does not exist yet; whether it got in.
    async fn join_when_made(&mut self, room: &str) -> bool {
        for _ in 0..MAX_TRIES {
            let joined = self.call("join", &json!({ "room": room })).await;
            if joined["ok"] == true {
                return true;
            }
            assert_eq!(joined["error"], "no such room", "{}: {joined}", self.name);
        }
        false
    }
}

/// Two chat nodes on `redis` with rate limits no test reaches.
fn two_nodes(redis: &RedisServer) -> [ChatNode; 2] {
    let url = redis.url();
    // Every creator is on this one address: its creation limit too.
    let args = [
        "--rate-limit",
        "10000/1s",
        "--join-rate-limit",
        "100000/1s",
        "--create-rate-limit",
        "100000/1s",
    ];
    [
        ChatNode::start("a", Some(&url), &args),
        ChatNode::start("b", Some(&url), &args),
    ]
}

/// The name of round `round`'s room.
fn room_of(round: usize) -> String {
    format!("race {round}")
}

/// Rounds `rounds` of the race on `nodes`: creators and joiners go at each round's room
/// at once, then a sender joins and sends a message there, which must reach the winner
/// and every joiner; each of `leftovers` (sockets in a room of that name that Redis
/// forgot) must not get it.
async fn race(nodes: &[ChatNode; 2], rounds: std::ops::Range<usize>, leftovers: &mut [User]) {
    let on = |i: usize| &nodes[i % 2];
    let mut creators = Vec::new();
    for i in 0..CREATORS {
        creators.push(User::connect(on(i), format!("creator{i}")).await);
    }
    let mut joiners = Vec::new();
    for i in 0..JOINERS {
        joiners.push(User::connect(on(i + 1), format!("joiner{i}")).await);
    }
    let mut sender = User::connect(on(0), "sender".to_owned()).await;

    for round in rounds {
        let room = room_of(round);
        let create = json!({ "room": room });
        let creates = join_all(creators.iter_mut().map(|u| u.call("create", &create)));
        let joins = join_all(joiners.iter_mut().map(|u| u.join_when_made(&room)));
        let (created, joined) = tokio::join!(creates, joins);
        let winners: Vec<usize> = (0..CREATORS)
            .filter(|i| created[*i]["ok"] == true)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: one create wins: {created:?}"
        );
        for (i, answer) in created.iter().enumerate() {
            if answer["ok"] != true {
                assert_eq!(answer["error"], "room exists", "round {round}, creator {i}");
            }
        }
        assert!(
            joined.iter().all(|j| *j),
            "round {round}: every joiner got in"
        );

        let joined = sender.call("join", &json!({ "room": room })).await;
        assert_eq!(joined["ok"], true, "{joined}");
        let text = format!("hello {round}");
        let sent = sender
            .call("send", &json!({ "room": room, "text": text }))
            .await;
        assert_eq!(sent["ok"], true, "{sent}");

        let winner = winners[0];
        let members = creators
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| *i == winner)
            .map(|(_, u)| u)
            .chain(joiners.iter_mut());
        let got = join_all(members.map(|u| async {
            let got = message_within(&mut u.ws, &room, &text, DELIVERY).await;
            (u.name.clone(), got)
        }))
        .await;
        let missed: Vec<&String> = got.iter().filter(|(_, got)| !got).map(|(n, _)| n).collect();
        assert!(
            missed.is_empty(),
            "round {round}: {missed:?} were taken out of {room:?} (the message sent there did not reach them)"
        );

        if leftovers.is_empty() {
            continue;
        }
        // After the message in every node's order: a leftover that got it got it before.
        let mark = format!("mark {round}");
        let sent = sender
            .call("send", &json!({ "room": "lobby", "text": mark }))
            .await;
        assert_eq!(sent["ok"], true, "{sent}");
        for user in leftovers.iter_mut() {
            let seen = events_until(&mut user.ws, "message", |m| m["text"] == mark).await;
            // Its message, and the notices of who joined it.
            let leaked = seen
                .iter()
                .any(|e| (e[0] == "message" || e[0] == "system") && e[1]["room"] == room.as_str());
            assert!(
                !leaked,
                "round {round}: {} got the new {room:?}: {seen:?}",
                user.name
            );
        }
    }
}

#[tokio::test]
async fn racing_creates_and_early_joins_keep_every_member_in_the_room() {
    let redis = RedisServer::start();
    let nodes = two_nodes(&redis);
    race(&nodes, 0..ROUNDS, &mut []).await;
}

#[tokio::test]
async fn racing_creates_after_redis_lost_its_data_reach_none_of_the_old_rooms_sockets() {
    let redis = RedisServer::start();
    let nodes = two_nodes(&redis);
    // Rooms of the names raced for, one socket in each on each node.
    let mut leftovers = [
        User::connect(&nodes[0], "old-a".to_owned()).await,
        User::connect(&nodes[1], "old-b".to_owned()).await,
    ];
    for round in 0..ROUNDS_AFTER_LOSS {
        let room = json!({ "room": room_of(round) });
        let made = leftovers[0].call("create", &room).await;
        assert_eq!(made["ok"], true, "{made}");
        let joined = leftovers[1].call("join", &room).await;
        assert_eq!(joined["ok"], true, "{joined}");
    }
    assert_eq!(redis.command(&["FLUSHALL"]), "+OK");
    race(&nodes, 0..ROUNDS_AFTER_LOSS, &mut leftovers).await;
}
