//! Rooms that a node from before the look index created (written straight into a real
//! `redis-server`, as that node would have: the room's settings and the public list, no
//! look) have look-alikes refused once the nodes of this version start, two at once:
//! `create` answers `room looks like another` for them as for any room.
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_look_index`.

use serde_json::json;
use tests::chatnode::{raw_chat_call, raw_chat_socket, ChatNode};
use tests::redis::RedisServer;

/// How many rooms the older node made: more than one step of the indexing reads.
const OLD_ROOMS: usize = 2500;

#[tokio::test]
async fn look_alikes_of_an_older_nodes_rooms_are_refused() {
    let redis = RedisServer::start();
    let public = json!({"private": false, "created_by": "u-old", "created_at": 1}).to_string();
    let private =
        json!({"private": true, "invite": "secret", "created_by": "u-old", "created_at": 1})
            .to_string();
    let fill = format!(
        "for i = 1, {OLD_ROOMS} do \
           redis.call('SET', 'syd:chat:room:old' .. i, ARGV[1]) \
           redis.call('SADD', 'syd:chat:rooms:public', 'old' .. i) \
         end"
    );
    assert_eq!(redis.command(&["EVAL", &fill, "0", &public]), "$-1");
    assert_eq!(
        redis.command(&["SET", "syd:chat:room:pop", &private]),
        "+OK"
    );
    assert_eq!(
        redis.command(&["SET", "syd:chat:room:modern", &public]),
        "+OK"
    );
    assert_eq!(
        redis.command(&["SADD", "syd:chat:rooms:public", "modern"]),
        ":1"
    );

    let a = ChatNode::start("a", Some(&redis.url()), &[]);
    let b = ChatNode::start("b", Some(&redis.url()), &[]);
    let mut users = [
        raw_chat_socket(&a, "alice").await,
        raw_chat_socket(&b, "bob").await,
    ];
    // Cyrillic рор beside the private pop, rn for m, the digit 1 for l; on either node.
    let look_alikes = ["\u{440}\u{43e}\u{440}", "rnodern", "o1d2500", "o1d1"];
    for (call, room) in (1..).zip(look_alikes) {
        let create = json!({ "room": room }).to_string();
        let ws = &mut users[usize::from(call % 2 == 0)];
        let answer = raw_chat_call(ws, call, "create", &create).await;
        assert_eq!(
            answer,
            json!({"ok": false, "error": "room looks like another"}),
            "{room}"
        );
    }
    let made = raw_chat_call(&mut users[0], 9, "create", r#"{"room":"new"}"#).await;
    assert_eq!(made["ok"], true, "{made}");
}
