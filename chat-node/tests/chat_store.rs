//! The two chat stores behave alike: the same checks run on [`MemoryStore`] and on
//! [`RedisStore`] against a real `redis-server` — rooms, memberships, tokens, history
//! order, paging and trimming, the rate limit, a `send`'s combined step, presence across
//! nodes and its expiry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_node::chat::store::{
    Created, Joined, Membership, NewMessage, Post, Posted, PresenceEntry, RoomLimits, RoomMeta,
};
use chat_node::chat::validate::message_id;
use chat_node::chat::{ChatStore, MemoryStore, RateLimit, RedisStore};
use utils::redis::RedisServer;

/// Rooms made by `creator`, who becomes a member of each: a user none of the checks of
/// other users' memberships name.
fn meta(private: bool) -> RoomMeta {
    made_by(private, "creator")
}

fn made_by(private: bool, creator: &str) -> RoomMeta {
    RoomMeta {
        private,
        invite: private.then(|| "invite".to_owned()),
        created_by: creator.to_owned(),
        created_at: 1,
        creation: String::new(),
    }
}

/// A room limit of `max_rooms`, and a membership limit no test reaches.
fn rooms_up_to(max_rooms: usize) -> RoomLimits {
    RoomLimits {
        max_rooms,
        max_memberships: 1000,
    }
}

/// A membership limit of `max_memberships`, and a room limit no test reaches.
fn memberships_up_to(max_memberships: usize) -> RoomLimits {
    RoomLimits {
        max_rooms: 1000,
        max_memberships,
    }
}

/// A membership limit no test reaches.
const ANY: usize = 1000;

fn entry(user: &str, name: &str) -> PresenceEntry {
    PresenceEntry {
        user: user.to_owned(),
        name: name.to_owned(),
    }
}

fn message(i: usize) -> NewMessage {
    NewMessage {
        from: "alice".to_owned(),
        user: "u1".to_owned(),
        text: format!("m{i}"),
        ts: 1,
    }
}

async fn rooms_members_tokens(store: &dyn ChatStore) {
    assert_eq!(
        store
            .create_room("pub", &meta(false), rooms_up_to(3))
            .await
            .unwrap(),
        Created::Created
    );
    assert_eq!(
        store
            .create_room("priv", &meta(true), rooms_up_to(3))
            .await
            .unwrap(),
        Created::Created
    );
    assert_eq!(
        store
            .create_room("priv", &meta(false), rooms_up_to(3))
            .await
            .unwrap(),
        Created::Exists
    );
    // Two rooms exist: a limit of two refuses a third, private rooms counted; a taken
    // name is still told as taken.
    assert_eq!(
        store
            .create_room("third", &meta(false), rooms_up_to(2))
            .await
            .unwrap(),
        Created::Full
    );
    assert_eq!(
        store
            .create_room("pub", &meta(false), rooms_up_to(2))
            .await
            .unwrap(),
        Created::Exists
    );
    assert_eq!(store.room("third").await.unwrap(), None);
    assert_eq!(store.room("priv").await.unwrap(), Some(meta(true)));
    assert_eq!(store.room("none").await.unwrap(), None);
    assert_eq!(store.public_rooms("", 10).await.unwrap(), ["pub"]);
    let found = store
        .rooms(&["pub".into(), "priv".into(), "none".into()])
        .await
        .unwrap();
    assert_eq!(found.keys().collect::<Vec<_>>(), ["priv", "pub"]);

    // The creator is a member of each room it made, and of nothing it did not make.
    let mut made = store.rooms_of("creator").await.unwrap();
    made.sort();
    assert_eq!(made, ["priv", "pub"]);
    assert!(store.is_member("pub", "creator").await.unwrap());

    assert_eq!(
        store.add_member("priv", "u1", "", ANY).await.unwrap(),
        Joined::Added
    );
    assert_eq!(
        store.add_member("priv", "u1", "", ANY).await.unwrap(),
        Joined::Already
    );
    assert_eq!(
        store.add_member("pub", "u1", "", ANY).await.unwrap(),
        Joined::Added
    );
    assert!(store.is_member("priv", "u1").await.unwrap());
    assert!(!store.is_member("priv", "u2").await.unwrap());
    let mut rooms = store.rooms_of("u1").await.unwrap();
    rooms.sort();
    assert_eq!(rooms, ["priv", "pub"]);
    assert!(store.remove_member("priv", "u1").await.unwrap());
    assert!(!store.remove_member("priv", "u1").await.unwrap());
    assert!(!store.is_member("priv", "u1").await.unwrap());
    assert_eq!(store.rooms_of("u1").await.unwrap(), ["pub"]);

    assert_eq!(store.user_for_token("t1", TOKEN_TTL).await.unwrap(), None);
    store.create_user("u1", "t1", TOKEN_TTL).await.unwrap();
    assert_eq!(
        store
            .user_for_token("t1", TOKEN_TTL)
            .await
            .unwrap()
            .as_deref(),
        Some("u1")
    );
}

/// A token TTL no check reaches.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A user whose token goes unused for the TTL is forgotten, its memberships with it; one
/// whose token is kept in use (connected: `touch_users`) stays, however long ago it was
/// created, and so does one whose token was just used (a connect).
async fn expired_users(store: &dyn ChatStore) {
    let ttl = Duration::from_millis(600);
    for room in ["x-den", "x-hall"] {
        assert_eq!(
            store
                .create_room(room, &made_by(false, "x-owner"), rooms_up_to(ANY))
                .await
                .unwrap(),
            Created::Created
        );
    }
    for (user, token) in [
        ("x-gone", "tx-gone"),
        ("x-kept", "tx-kept"),
        ("x-back", "tx-back"),
    ] {
        store.create_user(user, token, ttl).await.unwrap();
        for room in ["x-den", "x-hall"] {
            assert_eq!(
                store.add_member(room, user, "", ANY).await.unwrap(),
                Joined::Added
            );
        }
    }
    assert_eq!(store.forget_expired_users(ttl).await.unwrap(), 0);
    // Until the TTL has passed since the tokens were created: `x-kept` connected all
    // along, `x-back` connects again half-way.
    let created = Instant::now();
    let mut back = false;
    while created.elapsed() < ttl + Duration::from_millis(100) {
        store
            .touch_users(&[("x-kept".to_owned(), "tx-kept".to_owned())], ttl)
            .await
            .unwrap();
        if !back && created.elapsed() > ttl / 2 {
            assert_eq!(
                store
                    .user_for_token("tx-back", ttl)
                    .await
                    .unwrap()
                    .as_deref(),
                Some("x-back")
            );
            back = true;
        }
        tokio::time::sleep(ttl / 6).await;
    }
    assert_eq!(store.user_for_token("tx-gone", ttl).await.unwrap(), None);
    assert_eq!(store.forget_expired_users(ttl).await.unwrap(), 1);
    assert_eq!(store.forget_expired_users(ttl).await.unwrap(), 0);
    for room in ["x-den", "x-hall"] {
        assert!(!store.is_member(room, "x-gone").await.unwrap(), "{room}");
        assert!(store.is_member(room, "x-kept").await.unwrap(), "{room}");
        assert!(store.is_member(room, "x-back").await.unwrap(), "{room}");
    }
    assert!(store.rooms_of("x-gone").await.unwrap().is_empty());
    assert_eq!(
        store
            .user_for_token("tx-kept", ttl)
            .await
            .unwrap()
            .as_deref(),
        Some("x-kept")
    );
}

/// The public room list in name order, a page at a time, private rooms left out.
async fn public_room_pages(store: &dyn ChatStore) {
    for (room, private) in [
        ("p-c", false),
        ("p-a", false),
        ("p-x", true),
        ("p-b", false),
    ] {
        assert_eq!(
            store
                .create_room(room, &meta(private), rooms_up_to(100))
                .await
                .unwrap(),
            Created::Created
        );
    }
    let all = store.public_rooms("", 100).await.unwrap();
    let ours: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|r| r.starts_with("p-"))
        .collect();
    assert_eq!(ours, ["p-a", "p-b", "p-c"]);
    assert_eq!(store.public_rooms("p-", 2).await.unwrap(), ["p-a", "p-b"]);
    assert_eq!(store.public_rooms("p-b", 1).await.unwrap(), ["p-c"]);
    // After the last: what sorts later (`pub`, of the test before), never the private one.
    assert_eq!(store.public_rooms("p-c", 5).await.unwrap(), ["pub"]);
}

async fn history(store: &dyn ChatStore) {
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(store.append("h", &message(i), 1000).await.unwrap());
    }
    let parsed: Vec<(u64, u64)> = ids.iter().map(|id| message_id(id).unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let newest = store.history("h", None, 5).await.unwrap();
    assert_eq!(
        newest.iter().map(|m| &m.id).collect::<Vec<_>>(),
        ids[7..].iter().collect::<Vec<_>>()
    );
    assert_eq!(
        (newest[0].room.as_str(), newest[0].text.as_str()),
        ("h", "m7")
    );
    // `before` is exclusive.
    let page = store.history("h", Some(parsed[7]), 3).await.unwrap();
    let texts: Vec<&str> = page.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["m4", "m5", "m6"]);
    assert!(store
        .history("h", Some(parsed[0]), 3)
        .await
        .unwrap()
        .is_empty());
    assert!(store.history("none", None, 3).await.unwrap().is_empty());

    // Trimming: Redis trims approximately (whole nodes of ~100 entries), memory exactly.
    for i in 0..300 {
        store.append("t", &message(i), 10).await.unwrap();
    }
    let mut kept = 0;
    let mut before = None;
    loop {
        let page = store.history("t", before, 100).await.unwrap();
        let Some(first) = page.first() else { break };
        kept += page.len();
        before = Some(message_id(&first.id).unwrap());
    }
    assert!((10..=110).contains(&kept), "{kept} kept");
    let last = store.history("t", None, 1).await.unwrap();
    assert_eq!(last[0].text, "m299", "the newest are kept");
}

async fn rate_limit(store: &dyn ChatStore) {
    let limit: RateLimit = "3/1h".parse().unwrap();
    for _ in 0..3 {
        assert!(store.admit("r1", &limit).await.unwrap());
    }
    assert!(!store.admit("r1", &limit).await.unwrap());
    assert!(!store.admit("r1", &limit).await.unwrap());
    assert!(store.admit("r2", &limit).await.unwrap(), "per user");
}

fn post<'a>(
    room: &'a str,
    membership: Membership,
    message: &'a NewMessage,
    limit: &'a RateLimit,
) -> Post<'a> {
    Post {
        room,
        membership,
        message,
        limit,
        cap: 100,
    }
}

/// `post`: the membership check, then the rate limit, then the append; a failed check
/// changes nothing.
async fn posting(store: &dyn ChatStore) {
    let limit: RateLimit = "2/1h".parse().unwrap();
    let by = |user: &str, text: &str| NewMessage {
        from: "someone".to_owned(),
        user: user.to_owned(),
        text: text.to_owned(),
        ts: 1,
    };
    assert_eq!(
        store
            .create_room("club", &meta(false), rooms_up_to(ANY))
            .await
            .unwrap(),
        Created::Created
    );
    assert_eq!(
        store.add_member("club", "p1", "", ANY).await.unwrap(),
        Joined::Added
    );
    let outsider = store
        .post(post("club", Membership::Required, &by("p2", "no"), &limit))
        .await
        .unwrap();
    assert_eq!(outsider, Posted::NotMember);
    assert!(store.history("club", None, 10).await.unwrap().is_empty());

    // The refused post did not count against p2's limit: two pass, the third does not.
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        match store
            .post(post("open", Membership::Open, &by("p2", text), &limit))
            .await
            .unwrap()
        {
            Posted::Appended(id) => ids.push(id),
            Posted::RateLimited => assert_eq!(text, "three", "limited too early"),
            Posted::NotMember => panic!("open rooms need no membership"),
        }
    }
    assert_eq!(ids.len(), 2);
    let open = store.history("open", None, 10).await.unwrap();
    let got: Vec<(&str, &str, &str)> = open
        .iter()
        .map(|m| (m.id.as_str(), m.user.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(got, [(&*ids[0], "p2", "one"), (&*ids[1], "p2", "two")]);

    let Posted::Appended(id) = store
        .post(post("club", Membership::Required, &by("p1", "hi"), &limit))
        .await
        .unwrap()
    else {
        panic!("a member's post is appended");
    };
    let club = store.history("club", None, 10).await.unwrap();
    assert_eq!(club.len(), 1);
    assert_eq!((club[0].id.as_str(), club[0].text.as_str()), (&*id, "hi"));
}

async fn presence(store: &dyn ChatStore) {
    let long = Duration::from_secs(60);
    let rooms = ["p".to_owned(), "empty".to_owned()];
    store
        .presence_add("n1", "p", "s1", &entry("u1", "alice"), long)
        .await
        .unwrap();
    store
        .presence_add("n2", "p", "s2", &entry("u2", "bob"), long)
        .await
        .unwrap();
    store
        .presence_add("n2", "p", "s3", &entry("u1", "alice"), long)
        .await
        .unwrap();
    let online = store.presence(&rooms).await.unwrap();
    assert_eq!(online["p"].len(), 3);
    assert!(online["empty"].is_empty());
    store.presence_remove("n2", "p", "s3").await.unwrap();
    let mut online = store.presence(&rooms).await.unwrap().remove("p").unwrap();
    online.sort_by(|a, b| a.user.cmp(&b.user));
    assert_eq!(online, [entry("u1", "alice"), entry("u2", "bob")]);

    // Node n3 writes once with a short TTL and falls silent; n1's heartbeat keeps its
    // entry alive.
    let short = Duration::from_millis(400);
    store
        .presence_add("n3", "p", "s4", &entry("u3", "carol"), short)
        .await
        .unwrap();
    assert_eq!(store.presence(&rooms).await.unwrap()["p"].len(), 3);
    let mut beat = BTreeMap::new();
    beat.insert(
        "p".to_owned(),
        vec![("s1".to_owned(), entry("u1", "alice"))],
    );
    let nodes =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| (*n).to_owned()).collect() };
    assert_eq!(
        store.presence_nodes().await.unwrap(),
        nodes(&["n1", "n2", "n3"])
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Its entries were there: added, then kept by each beat.
        assert!(store.presence_refresh("n1", &beat, short).await.unwrap());
        let online = store.presence(&rooms).await.unwrap().remove("p").unwrap();
        if !online.contains(&entry("u3", "carol")) {
            assert!(online.contains(&entry("u1", "alice")), "{online:?}");
            break;
        }
        assert!(Instant::now() < deadline, "n3's entry never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.presence_nodes().await.unwrap(), nodes(&["n1", "n2"]));

    // A node whose entries are gone (lost, or a beat with none) is told so by its next
    // beat, and has none listed after a beat with none.
    assert!(!store.presence_refresh("n4", &beat, short).await.unwrap());
    assert!(store
        .presence_refresh("n4", &BTreeMap::new(), short)
        .await
        .unwrap());
    assert!(!store
        .presence_refresh("n4", &BTreeMap::new(), short)
        .await
        .unwrap());
    assert!(!store.presence_nodes().await.unwrap().contains("n4"));
}

/// `--max-memberships`: `add_member` and `create_room` stop at the user's limit and
/// change nothing then; a user at the limit still re-joins a room it is in; leaving
/// makes room for another.
async fn membership_limit(store: &dyn ChatStore) {
    let two = memberships_up_to(2);
    for room in ["cap-a", "cap-b"] {
        assert_eq!(
            store
                .create_room(room, &made_by(false, "capped"), two)
                .await
                .unwrap(),
            Created::Created
        );
    }
    // At the limit: no third room, and nothing of it is left behind.
    assert_eq!(
        store
            .create_room("cap-c", &made_by(false, "capped"), two)
            .await
            .unwrap(),
        Created::TooManyMemberships
    );
    assert_eq!(store.room("cap-c").await.unwrap(), None);
    assert!(!store.is_member("cap-c", "capped").await.unwrap());
    assert!(!store
        .public_rooms("cap-", 10)
        .await
        .unwrap()
        .contains(&"cap-c".to_owned()));
    // A taken name is still told as such.
    assert_eq!(
        store
            .create_room("cap-a", &made_by(false, "capped"), two)
            .await
            .unwrap(),
        Created::Exists
    );
    // Someone else's room, for the joins below.
    assert_eq!(
        store
            .create_room("cap-x", &meta(false), rooms_up_to(ANY))
            .await
            .unwrap(),
        Created::Created
    );

    // Joining: a room it is in is fine at the limit, another is not.
    assert_eq!(
        store.add_member("cap-a", "capped", "", 2).await.unwrap(),
        Joined::Already
    );
    assert_eq!(
        store.add_member("cap-x", "capped", "", 2).await.unwrap(),
        Joined::TooManyMemberships
    );
    assert!(!store.is_member("cap-x", "capped").await.unwrap());
    let mut rooms = store.rooms_of("capped").await.unwrap();
    rooms.sort();
    assert_eq!(rooms, ["cap-a", "cap-b"]);
    // A higher limit lets it in (the limit is the caller's, not stored).
    assert_eq!(
        store.add_member("cap-x", "capped", "", 3).await.unwrap(),
        Joined::Added
    );
    // Leaving makes room.
    assert!(store.remove_member("cap-b", "capped").await.unwrap());
    assert_eq!(
        store
            .create_room("cap-c", &made_by(true, "capped"), memberships_up_to(3))
            .await
            .unwrap(),
        Created::Created
    );
    let mut rooms = store.rooms_of("capped").await.unwrap();
    rooms.sort();
    assert_eq!(rooms, ["cap-a", "cap-c", "cap-x"]);
}

/// Many joins and creations of one user at once (as from tabs on several nodes) stop
/// exactly at the limit: the check and the change are one step.
async fn membership_limit_under_concurrency(store: Arc<dyn ChatStore>) {
    let rooms: Vec<String> = (0..12).map(|i| format!("race-{i:02}")).collect();
    for room in &rooms {
        assert_eq!(
            store
                .create_room(room, &meta(false), rooms_up_to(ANY))
                .await
                .unwrap(),
            Created::Created
        );
    }
    let joins = rooms.iter().map(|room| {
        let store = Arc::clone(&store);
        let room = room.clone();
        tokio::spawn(async move { store.add_member(&room, "racer", "", 5).await.unwrap() })
    });
    assert_eq!(succeeded(joins, |j| *j == Joined::Added).await, 5);
    assert_eq!(store.rooms_of("racer").await.unwrap().len(), 5);

    let creations = (0..12).map(|i| {
        let store = Arc::clone(&store);
        let room = format!("made-{i:02}");
        let meta = made_by(false, "maker");
        tokio::spawn(async move {
            let limits = memberships_up_to(4);
            store.create_room(&room, &meta, limits).await.unwrap()
        })
    });
    assert_eq!(succeeded(creations, |c| *c == Created::Created).await, 4);
    assert_eq!(store.rooms_of("maker").await.unwrap().len(), 4);
}

/// Awaits `tasks`, running at once; how many answered what `success` accepts.
async fn succeeded<T: std::fmt::Debug>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
    success: impl Fn(&T) -> bool,
) -> usize {
    let answers = futures::future::join_all(tasks).await;
    let answers: Vec<T> = answers
        .into_iter()
        .map(|answer| answer.expect("a task that ends"))
        .collect();
    let count = answers.iter().filter(|a| success(a)).count();
    eprintln!("{count} of {answers:?}");
    count
}

async fn all(store: Arc<dyn ChatStore>) {
    rooms_members_tokens(&*store).await;
    public_room_pages(store.as_ref()).await;
    history(&*store).await;
    rate_limit(&*store).await;
    posting(&*store).await;
    presence(&*store).await;
    // Last: their rooms would be in the room counts and pages checked above.
    membership_limit(&*store).await;
    membership_limit_under_concurrency(Arc::clone(&store)).await;
    look_alike_rooms(&*store).await;
    expired_users(&*store).await;
}

/// One room per look (`chat::validate::look`): a name a reader could not tell from an
/// existing room's (Cyrillic `рор` beside `pop`, `rnodern` beside `modern`) is refused,
/// a private room's look too; a name that only resembles one is not.
async fn look_alike_rooms(store: &dyn ChatStore) {
    let create = |room: &'static str, private: bool| async move {
        store
            .create_room(room, &meta(private), rooms_up_to(ANY))
            .await
            .unwrap()
    };
    assert_eq!(create("pop", true).await, Created::Created);
    assert_eq!(
        create("\u{440}\u{43e}\u{440}", false).await,
        Created::LooksLike
    );
    assert_eq!(create("pop", false).await, Created::Exists);
    assert_eq!(store.room("\u{440}\u{43e}\u{440}").await.unwrap(), None);
    assert_eq!(create("modern", false).await, Created::Created);
    assert_eq!(create("rnodern", false).await, Created::LooksLike);
    assert_eq!(create("pip", false).await, Created::Created);
}

/// A room without members for the TTL is deleted with its history, its place in the
/// public list, its look and its place in the count, so that its name can be created
/// again; a room with a member is not, and a join while it is empty starts its wait over.
/// A join that read the room's settings before it was deleted (and created again) gets
/// no membership. A room whose last member is forgotten with its token is empty too.
/// Runs on a store of its own: the room count is checked.
async fn empty_rooms(store: &dyn ChatStore) {
    // Long enough that a stall of the machine cannot make the half-way join below come
    // after the deletion it is to prevent.
    let ttl = Duration::from_secs(2);
    let limits = rooms_up_to(3);
    for room in ["e-hall", "e-den", "e-kept"] {
        assert_eq!(
            store
                .create_room(room, &made_by(false, "e-a"), limits)
                .await
                .unwrap(),
            Created::Created
        );
    }
    assert_eq!(
        store
            .create_room("e-more", &made_by(false, "e-a"), limits)
            .await
            .unwrap(),
        Created::Full
    );
    store.append("e-hall", &message(1), 10).await.unwrap();
    store.create_user("e-b", "t-e-b", ttl).await.unwrap();
    assert_eq!(
        store.add_member("e-kept", "e-b", "", ANY).await.unwrap(),
        Joined::Added
    );
    for room in ["e-hall", "e-den", "e-kept"] {
        assert!(store.remove_member(room, "e-a").await.unwrap());
    }
    // After the marks: waiting from here waits at least the TTL from each.
    let emptied = Instant::now();
    assert_eq!(store.forget_empty_rooms(ttl).await.unwrap(), 0);
    // Half-way, someone joins `e-den` and leaves again: its wait starts over.
    tokio::time::sleep(ttl / 2).await;
    assert_eq!(
        store.add_member("e-den", "e-c", "", ANY).await.unwrap(),
        Joined::Added
    );
    assert!(store.remove_member("e-den", "e-c").await.unwrap());
    let den_emptied = Instant::now();
    tokio::time::sleep((emptied + ttl + Duration::from_millis(100)) - Instant::now()).await;
    assert_eq!(store.forget_empty_rooms(ttl).await.unwrap(), 1);
    assert_eq!(store.room("e-hall").await.unwrap(), None);
    assert!(store.room("e-den").await.unwrap().is_some());
    assert!(store.room("e-kept").await.unwrap().is_some());
    assert_eq!(
        store.public_rooms("", 10).await.unwrap(),
        ["e-den", "e-kept"]
    );
    // Its name, look and place in the count are free: created again (private now), with
    // nothing of the old room's history.
    let again = RoomMeta {
        creation: "second".to_owned(),
        ..made_by(true, "e-d")
    };
    assert_eq!(
        store.create_room("e-hall", &again, limits).await.unwrap(),
        Created::Created
    );
    assert!(store.history("e-hall", None, 10).await.unwrap().is_empty());
    // A join that checked the deleted room (public, creation "") gets nothing of the new
    // private one; nor does one of a room that is gone.
    assert_eq!(
        store.add_member("e-hall", "e-c", "", ANY).await.unwrap(),
        Joined::NoSuchRoom
    );
    assert!(!store.is_member("e-hall", "e-c").await.unwrap());
    assert_eq!(
        store.add_member("e-gone", "e-c", "", ANY).await.unwrap(),
        Joined::NoSuchRoom
    );
    assert!(store.rooms_of("e-c").await.unwrap().is_empty());
    assert_eq!(
        store
            .add_member("e-hall", "e-c", "second", ANY)
            .await
            .unwrap(),
        Joined::Added
    );

    tokio::time::sleep((den_emptied + ttl + Duration::from_millis(100)) - Instant::now()).await;
    assert_eq!(store.forget_empty_rooms(ttl).await.unwrap(), 1);
    assert_eq!(store.room("e-den").await.unwrap(), None);
    // `e-b`'s token has expired: forgotten, it leaves `e-kept` empty from now.
    assert_eq!(store.forget_expired_users(ttl).await.unwrap(), 1);
    assert_eq!(store.forget_empty_rooms(ttl).await.unwrap(), 0);
    assert_eq!(
        store.forget_empty_rooms(Duration::ZERO).await.unwrap(),
        1,
        "e-kept, and not e-hall, which has members"
    );
    assert_eq!(store.room("e-kept").await.unwrap(), None);
    assert!(store.room("e-hall").await.unwrap().is_some());
    assert!(store.public_rooms("", 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_rooms_in_the_memory_store() {
    empty_rooms(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_rooms_in_the_redis_store() {
    let redis = RedisServer::start();
    empty_rooms(&RedisStore::connect(&redis.url()).await.unwrap()).await;
}

/// The rooms an older node left without members (it kept no record of when) are marked
/// empty when asked (a node starting asks), however many pages of keys the store holds;
/// asking again changes nothing. A room marked empty that an older node's join filled
/// (it does not clear the mark) is not deleted, and loses its mark.
#[tokio::test]
async fn an_older_nodes_empty_rooms_are_marked() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let json = serde_json::to_string(&meta(false)).unwrap();
    // 1500 empty rooms and one with a member, more than one step of the index reads.
    let () = redis::cmd("EVAL")
        .arg(
            "for i = 1, 1500 do redis.call('SET', 'syd:chat:room:old' .. i, ARGV[1]) end \
             redis.call('SET', 'syd:chat:room:full', ARGV[1]) \
             redis.call('SADD', 'syd:chat:members:full', 'u')",
        )
        .arg(0)
        .arg(&json)
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    assert_eq!(store.index_empty_rooms().await.unwrap(), 1500);
    assert_eq!(store.index_empty_rooms().await.unwrap(), 0);
    // An older node's join of `old1`, after the mark.
    let _: i64 = redis::cmd("SADD")
        .arg("syd:chat:members:old1")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        store.forget_empty_rooms(Duration::ZERO).await.unwrap(),
        1499
    );
    assert!(store.room("full").await.unwrap().is_some());
    assert!(store.room("old1").await.unwrap().is_some());
    assert_eq!(store.room("old2").await.unwrap(), None);
    let mark: Option<String> = redis::cmd("ZSCORE")
        .arg("syd:chat:rooms:empty")
        .arg("old1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(mark, None);
}

/// What an older node's join or post that crossed a room's deletion left (a membership,
/// a message: it checks no room) passes to no room created again under that name.
#[tokio::test]
async fn a_room_created_again_inherits_nothing_an_older_node_left() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("EVAL")
        .arg(
            "redis.call('SADD', 'syd:chat:members:den', 'stale') \
             redis.call('SADD', 'syd:chat:user:stale:rooms', 'den', 'elsewhere') \
             redis.call('XADD', 'syd:chat:history:den', '*', 'm', ARGV[1])",
        )
        .arg(0)
        .arg(serde_json::to_string(&message(1)).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    assert_eq!(
        store
            .create_room("den", &meta(true), rooms_up_to(ANY))
            .await
            .unwrap(),
        Created::Created
    );
    assert!(!store.is_member("den", "stale").await.unwrap());
    assert_eq!(store.rooms_of("stale").await.unwrap(), ["elsewhere"]);
    assert!(store.is_member("den", "creator").await.unwrap());
    assert!(store.history("den", None, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store() {
    all(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    assert_eq!(store.kind(), "redis");
    all(Arc::new(store)).await;
}

/// Rooms made before the room count was kept (by an older node, or one still running it
/// during a rolling upgrade) count toward the limit when the count is first needed, the
/// private ones too: they are rooms, but not in the public list.
#[tokio::test]
async fn an_older_nodes_rooms_are_counted_and_listed() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // What an older node wrote: each room's settings, and the public ones listed.
    for (room, private) in [("old-public", false), ("old-private", true)] {
        let json = serde_json::to_string(&meta(private)).unwrap();
        let () = redis::cmd("SET")
            .arg(format!("syd:chat:room:{room}"))
            .arg(json)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _: i64 = redis::cmd("SADD")
        .arg("syd:chat:rooms:public")
        .arg("old-public")
        .query_async(&mut conn)
        .await
        .unwrap();

    let store = RedisStore::connect(&redis.url()).await.unwrap();
    assert_eq!(
        store
            .create_room("new", &meta(false), rooms_up_to(2))
            .await
            .unwrap(),
        Created::Full,
        "two rooms exist already"
    );
    assert_eq!(
        store
            .create_room("new", &meta(true), rooms_up_to(3))
            .await
            .unwrap(),
        Created::Created
    );
    assert_eq!(
        store
            .create_room("newer", &meta(false), rooms_up_to(3))
            .await
            .unwrap(),
        Created::Full
    );
    // The older node's public room is in the sorted list too, and so is one an older node
    // still running lists after the list was first kept.
    assert_eq!(store.public_rooms("", 10).await.unwrap(), ["old-public"]);
    let _: i64 = redis::cmd("SADD")
        .arg("syd:chat:rooms:public")
        .arg("old-later")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        store.public_rooms("", 10).await.unwrap(),
        ["old-later", "old-public"]
    );
}

/// Rooms an older node created before the look index was kept are indexed when asked
/// (a node starting asks): their look-alikes are refused from then on, public or private,
/// however many pages of keys the store holds. Asking again, or on two nodes at once,
/// changes nothing.
#[tokio::test]
async fn an_older_nodes_rooms_are_indexed_by_look() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // More rooms than one step of the index reads, as an older node wrote them.
    let json = serde_json::to_string(&meta(false)).unwrap();
    let () = redis::cmd("EVAL")
        .arg("for i = 1, 2500 do redis.call('SET', 'syd:chat:room:old' .. i, ARGV[1]) end")
        .arg(0)
        .arg(&json)
        .query_async(&mut conn)
        .await
        .unwrap();
    let private = serde_json::to_string(&meta(true)).unwrap();
    let () = redis::cmd("SET")
        .arg("syd:chat:room:pop")
        .arg(private)
        .query_async(&mut conn)
        .await
        .unwrap();

    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let create = |room: &'static str| {
        let store = store.clone();
        async move {
            store
                .create_room(room, &meta(false), rooms_up_to(10_000))
                .await
                .unwrap()
        }
    };
    // Not indexed yet: a look-alike gets through.
    assert_eq!(create("o1d1").await, Created::Created);

    let other = RedisStore::connect(&redis.url()).await.unwrap();
    let (here, there) = tokio::join!(store.index_looks(), other.index_looks());
    // Each look once: `old1`'s is `o1d1`'s, indexed when that room was created.
    assert_eq!(here.unwrap() + there.unwrap(), 2500);
    assert_eq!(store.index_looks().await.unwrap(), 0);
    for look_alike in ["o1d2500", "\u{440}\u{43e}\u{440}", "oldl234"] {
        assert_eq!(create(look_alike).await, Created::LooksLike, "{look_alike}");
    }
    assert_eq!(create("new").await, Created::Created);
}

/// Users an older node created (a token, memberships, no record of the token's use) are
/// recorded when asked (a node starting asks), with the use the token's expiry implies,
/// and forgotten once it expires. A user whose token an older node keeps in use (it
/// refreshes the token, not the record) is not forgotten.
#[tokio::test]
async fn an_older_nodes_users_are_forgotten_when_their_token_expires() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl = Duration::from_secs(60);
    // What an older node wrote: `u-old` last connected 59.5 s before a 60 s TTL ran out.
    let () = redis::cmd("EVAL")
        .arg(
            "redis.call('SET', 'syd:chat:token:t-old', 'u-old', 'PX', 500) \
             redis.call('SET', 'syd:chat:token:t-busy', 'u-busy', 'PX', 60000) \
             for _, u in ipairs({'u-old', 'u-busy'}) do \
               redis.call('SADD', 'syd:chat:user:' .. u .. ':rooms', 'den') \
               redis.call('SADD', 'syd:chat:members:den', u) \
             end",
        )
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    assert_eq!(store.index_users(ttl).await.unwrap(), 2);
    assert_eq!(store.index_users(ttl).await.unwrap(), 0, "each user once");
    assert_eq!(store.forget_expired_users(ttl).await.unwrap(), 0);
    // `u-busy`'s record says it expired long ago, but an older node keeps its token in use.
    let _: i64 = redis::cmd("ZADD")
        .arg("syd:chat:users:used")
        .arg(0)
        .arg("u-busy t-busy")
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut forgotten = 0;
    while forgotten == 0 {
        assert!(Instant::now() < deadline, "u-old was never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
        forgotten = store.forget_expired_users(ttl).await.unwrap();
    }
    assert_eq!(forgotten, 1);
    assert!(!store.is_member("den", "u-old").await.unwrap());
    assert!(store.rooms_of("u-old").await.unwrap().is_empty());
    assert!(store.is_member("den", "u-busy").await.unwrap());
    assert_eq!(
        store
            .user_for_token("t-busy", ttl)
            .await
            .unwrap()
            .as_deref(),
        Some("u-busy")
    );
}
