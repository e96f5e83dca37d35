//! The chat page in headless Chromium, end to end: a real `redis-server`, three `chat-node`
//! processes and the TLS proxy (least connections) in front of them; browser sessions
//! driven over WebDriver. What a person sees: chatting across nodes, a private room shared
//! by its invite link and invisible to everyone else, message text rendered as text (no
//! HTML injection), the status bar naming the node and transport, the long-polling
//! fallback, a tab moving to another node when its node dies, the nickname prompt and the
//! remembered identity, the room list counting users (not their names), and a CSP the
//! browser enforces (every page also checks that it
//! reported no CSP violation or script error).
//!
//! Screenshots go to `target/artifacts/browser-*.png`. The page's Socket.IO client also has
//! unit tests of its own (`chat-node/web/sio.test.mjs`, run here with Node).
//!
//! Needs `chromium`, `chromedriver` and `redis-server` (`scripts/install-deps.sh`), and the
//! binaries: `cargo build -p chat-node --bin chat-node -p proxy --bin proxy`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fantoccini::Locator;
use serde_json::{json, Value};
use tempfile::TempDir;
use tests::browser::{artifacts_dir, spki_pin, Browser, BrowserOptions, Chromedriver};
use tests::chatnode::{events_until, raw_chat_call, raw_chat_socket, raw_chat_tab, ChatNode};
use tests::redis::RedisServer;
use tests::socketio::run_with_timeout;
use tests::{port_array, Certs, Proxy};

/// Bound for every wait on the page (a connection, a message crossing nodes through Redis);
/// generous for busy CI machines, never waited out when things work.
const T: Duration = Duration::from_secs(30);
/// How many times a tab is reloaded at most to land on another node than a peer.
const MAX_RELOADS: usize = 12;
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// A `WebSocket` that never connects: `error` then `close` (1006), like a blocked upgrade.
const FAILING_WEBSOCKET: &str = "window.WebSocket = class {
  static OPEN = 1;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      this.onerror?.(new Event('error'));
      this.onclose?.(new CloseEvent('close', { code: 1006 }));
    }, 10);
  }
  send() { throw new DOMException('not open', 'InvalidStateError'); }
  close() {}
};";

/// Redis, three chat nodes and the proxy (TLS, least connections), with a certificate for
/// `localhost` that the browsers trust by its key.
struct Stack {
    proxy: Proxy,
    nodes: Vec<ChatNode>,
    _redis: RedisServer,
    pin: String,
    _certs: TempDir,
}

impl Stack {
    fn start() -> Stack {
        Stack::start_with(&[])
    }

    /// [`Stack::start`] with `node_flags` for every chat node.
    fn start_with(node_flags: &[&str]) -> Stack {
        let redis = RedisServer::start();
        let nodes: Vec<ChatNode> = NODES
            .iter()
            .map(|id| ChatNode::start(id, Some(&redis.url()), node_flags))
            .collect();
        let certs_dir = tempfile::tempdir().unwrap();
        let certs = Certs::generate(certs_dir.path(), &["localhost", "127.0.0.1"]);
        let [plain, tls] = port_array();
        let listen = format!("127.0.0.1:{plain}");
        let tls_listen = format!("127.0.0.1:{tls}");
        let cert = certs.cert.display().to_string();
        let key = certs.key.display().to_string();
        let backends: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        let mut args = vec![
            "--listen",
            &listen,
            "--tls-listen",
            &tls_listen,
            "--cert",
            &cert,
            "--key",
            &key,
            // Not round robin: a page load is six requests (five files and the WebSocket), a
            // multiple of three, so every reload would land on the same node. Least
            // connections sends a new WebSocket away from the nodes that hold one.
            "--strategy",
            "least_conn",
            "--health-path",
            "/healthz",
        ];
        for b in &backends {
            args.extend(["--backend", b.as_str()]);
        }
        let proxy = Proxy::start_quick(&args);
        Stack {
            proxy,
            nodes,
            _redis: redis,
            pin: spki_pin(&certs.key),
            _certs: certs_dir,
        }
    }

    /// The page through the proxy's TLS listener, with an optional query (`?transport=…`).
    fn url(&self, query: &str) -> String {
        self.proxy.https_url(&format!("/{query}"))
    }

    /// Kills the node `id` (SIGKILL: no goodbye to its clients).
    fn kill_node(&mut self, id: &str) {
        let node = self.nodes.iter_mut().find(|n| n.id() == id);
        node.unwrap_or_else(|| panic!("no node {id}")).kill();
    }

    fn options(&self) -> BrowserOptions {
        BrowserOptions {
            trust_spki: vec![self.pin.clone()],
            ..BrowserOptions::default()
        }
    }
}

/// Installed before any page script: records Content-Security-Policy violations, uncaught
/// errors, unhandled promise rejections and `console.error` calls in `window.__problems`.
const PROBLEM_RECORDER: &str = "window.__problems = [];
document.addEventListener('securitypolicyviolation', (e) =>
  window.__problems.push(`csp: ${e.violatedDirective} blocked ${e.blockedURI}`));
window.addEventListener('error', (e) => window.__problems.push(`error: ${e.message}`));
window.addEventListener('unhandledrejection', (e) =>
  window.__problems.push(`unhandled rejection: ${e.reason}`));
const consoleError = console.error.bind(console);
console.error = (...args) => {
  window.__problems.push(`console.error: ${args.join(' ')}`);
  consoleError(...args);
};";

/// A new browser session whose pages record their problems (see [`PROBLEM_RECORDER`]).
async fn start_browser(driver: &Chromedriver, label: &str, options: &BrowserOptions) -> Browser {
    let browser = Browser::start(driver, label, options).await;
    browser
        .cdp(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": PROBLEM_RECORDER }),
        )
        .await;
    browser
}

/// Asserts the current page recorded no CSP violation, script error or `console.error`,
/// then ends the session.
async fn close_clean(browser: Browser) {
    let problems = browser.js("return window.__problems;", vec![]).await;
    assert_eq!(
        problems,
        json!([]),
        "{}: the page reported problems",
        browser.label()
    );
    browser.close().await;
}

/// Opens the page in a new session, answers the nickname prompt, and waits until connected.
async fn open_chat(driver: &Chromedriver, stack: &Stack, name: &str, query: &str) -> Browser {
    let browser = start_browser(driver, name, &stack.options()).await;
    browser.goto(&stack.url(query)).await;
    browser
        .wait_js(
            T,
            "the nickname prompt",
            "return !document.getElementById('name-dialog').hidden;",
            vec![],
        )
        .await;
    browser.fill("#name-input", name).await;
    browser.click("#name-submit").await;
    wait_connected(&browser).await;
    browser.wait_text(T, "#status-name", name).await;
    browser
}

/// Waits for `connected` in the status bar and a node id; returns the node id.
async fn wait_connected(browser: &Browser) -> String {
    browser.wait_text(T, "#status-state", "connected").await;
    let node = browser
        .wait_js(
            T,
            "a node id in the status bar",
            "const n = document.getElementById('status-node').textContent; \
             return n !== 'none' ? n : null;",
            vec![],
        )
        .await;
    node.as_str().unwrap().to_owned()
}

/// Reloads `browser` (same profile: same name and identity) until it is served by another
/// node than `other`; returns its node. Bounded by [`MAX_RELOADS`].
async fn move_off(browser: &Browser, url: &str, other: &str) -> String {
    let mut node = status(browser, "#status-node").await;
    for _ in 0..MAX_RELOADS {
        if node != other {
            return node;
        }
        browser.goto(url).await;
        node = wait_connected(browser).await;
    }
    panic!(
        "{} stayed on node {other} after {MAX_RELOADS} reloads",
        browser.label()
    );
}

/// Opens the chat for `first`, then for `second` on another node; each with its node.
async fn two_on_different_nodes(
    driver: &Chromedriver,
    stack: &Stack,
    first: &str,
    second: &str,
) -> ((Browser, String), (Browser, String)) {
    let one = open_chat(driver, stack, first, "").await;
    let two = open_chat(driver, stack, second, "").await;
    let one_node = status(&one, "#status-node").await;
    let two_node = move_off(&two, &stack.url(""), &one_node).await;
    assert_ne!(one_node, two_node);
    ((one, one_node), (two, two_node))
}

/// The text of the element `css` (a status bar field), empty if there is none.
async fn status(browser: &Browser, css: &str) -> String {
    browser.text(css).await.unwrap_or_default()
}

/// Types `text` into the composer and sends it; waits for the server's acknowledgement (the
/// composer is busy until then).
async fn send(browser: &Browser, text: &str) {
    browser.fill("#message-input", text).await;
    browser.click("#send-button").await;
    browser
        .wait_js(
            T,
            &format!("{text:?} to be acknowledged"),
            "return document.getElementById('message-input').value === '' \
               && !document.getElementById('composer').hasAttribute('aria-busy');",
            vec![],
        )
        .await;
}

/// Presses `keys` (WebDriver key codes allowed: `\u{e007}` is Enter) in the element `css`,
/// without clearing it first.
async fn press(browser: &Browser, css: &str, keys: &str) {
    let element = browser.client().find(Locator::Css(css)).await.unwrap();
    element.send_keys(keys).await.unwrap();
}

/// A single node on its embedded store, straight over plain HTTP, and the page opened on it
/// as `name`.
async fn open_solo(driver: &Chromedriver, node: &ChatNode, name: &str) -> Browser {
    let browser = start_browser(driver, name, &BrowserOptions::default()).await;
    browser.goto(&node.url("/")).await;
    browser.fill("#name-input", name).await;
    browser.click("#name-submit").await;
    wait_connected(&browser).await;
    browser
}

/// Creates `room` from the page's form, public or private, and waits until it is shown.
async fn create_room(browser: &Browser, room: &str, private: bool) {
    browser.fill("#create-name", room).await;
    browser
        .js(
            "document.getElementById('create-private').checked = arguments[0];",
            vec![json!(private)],
        )
        .await;
    browser.click("#create-submit").await;
    browser.wait_text(T, "#room-title", room).await;
}

/// Waits until the message list shows `text` from `from`.
async fn wait_message(browser: &Browser, from: &str, text: &str) {
    browser
        .wait_js(
            T,
            &format!("a message {text:?} from {from}"),
            "const [from, text] = arguments; \
             return [...document.querySelectorAll('#messages li.message')].some(li => \
               li.querySelector('.msg-from')?.textContent === from && \
               li.querySelector('.msg-text')?.textContent === text);",
            vec![json!(from), json!(text)],
        )
        .await;
}

/// The rooms in the sidebar (`data-room` of each entry).
async fn listed_rooms(browser: &Browser) -> Vec<String> {
    let rooms = browser
        .js(
            "return [...document.querySelectorAll('#room-list li')].map(li => li.dataset.room);",
            vec![],
        )
        .await;
    serde_json::from_value(rooms).unwrap()
}

async fn screenshot(browser: &Browser, name: &str) -> PathBuf {
    let path = artifacts_dir().join(format!("browser-{name}.png"));
    browser.screenshot(&path).await;
    println!("screenshot: {}", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_on_different_nodes_chat_share_a_private_room_and_a_third_cannot_see_it() {
    let stack = Stack::start();
    let driver = Chromedriver::start();
    let url = stack.url("");

    // Two people, served by two different nodes.
    let ((alice, alice_node), (bob, bob_node)) =
        two_on_different_nodes(&driver, &stack, "alice", "bob").await;
    for (browser, node) in [(&alice, &alice_node), (&bob, &bob_node)] {
        assert!(NODES.contains(&node.as_str()), "unknown node {node}");
        assert_eq!(status(browser, "#status-transport").await, "websocket");
        assert_eq!(status(browser, "#status-state").await, "connected");
    }
    assert_eq!(status(&bob, "#status-name").await, "bob");

    // The lobby, both ways across the nodes.
    alice.wait_text(T, "#room-title", "lobby").await;
    bob.wait_text(T, "#room-title", "lobby").await;
    send(&alice, "hello from alice").await;
    wait_message(&bob, "alice", "hello from alice").await;
    send(&bob, "hi alice, bob here").await;
    wait_message(&alice, "bob", "hi alice, bob here").await;

    // Alice creates a private room and gets its invite link.
    alice.fill("#create-name", "secret plans").await;
    let private = alice
        .js(
            "return document.getElementById('create-private').checked;",
            vec![],
        )
        .await;
    assert_eq!(private, json!(true), "private is the default");
    alice.click("#create-submit").await;
    alice.wait_text(T, "#room-title", "secret plans").await;
    let link = alice
        .wait_js(
            T,
            "the invite link",
            "return document.getElementById('invite-box').hidden ? null : \
             document.getElementById('invite-link').value;",
            vec![],
        )
        .await;
    let link = link.as_str().unwrap().to_owned();
    assert!(
        link.starts_with(&url) && link.contains("#room=secret+plans&invite="),
        "{link}"
    );
    let invite = link.rsplit("invite=").next().unwrap();
    assert!(invite.len() >= 22, "an invite of at least 128 bits: {link}");

    // Bob opens the link: the page asks first (joining shows his name to the room), naming
    // the room as text, and he is not in it until he says yes.
    bob.goto(&link).await;
    let bob_node = wait_connected(&bob).await;
    bob.wait_js(
        T,
        "the join question",
        "return !document.getElementById('join-dialog').hidden \
           && document.getElementById('join-room').textContent === 'secret plans';",
        vec![],
    )
    .await;
    assert_ne!(status(&bob, "#room-title").await, "secret plans");
    bob.click("#join-accept").await;
    bob.wait_text(T, "#room-title", "secret plans").await;
    let bob_node = if bob_node == alice_node {
        // Opening the link reloaded the page onto Alice's node: move, then pick the room
        // from the list (membership is kept by the server).
        let node = move_off(&bob, &url, &alice_node).await;
        bob.click("#room-list li[data-room='secret plans'] button")
            .await;
        bob.wait_text(T, "#room-title", "secret plans").await;
        node
    } else {
        bob_node
    };
    assert_ne!(alice_node, bob_node);
    assert!(listed_rooms(&bob)
        .await
        .contains(&"secret plans".to_owned()));
    for browser in [&alice, &bob] {
        browser
            .wait_js(
                T,
                "alice and bob in the member list",
                "const names = [...document.querySelectorAll('#members li')] \
                   .map(li => li.textContent); \
                 return names.includes('alice') && names.includes('bob');",
                vec![],
            )
            .await;
    }
    send(&alice, "the plan: meet at noon").await;
    wait_message(&bob, "alice", "the plan: meet at noon").await;

    // Bob types: Alice sees it, until his message arrives.
    bob.fill("#message-input", "<img").await;
    alice.wait_text(T, "#typing", "bob is typing…").await;

    // Markup in a message is text, nothing else.
    let markup = "<img src=x onerror=alert(1)>";
    send(&bob, markup).await;
    alice.wait_text(T, "#typing", "").await;
    for browser in [&alice, &bob] {
        wait_message(browser, "bob", markup).await;
        let images = browser
            .js(
                "return document.querySelectorAll('#messages img').length;",
                vec![],
            )
            .await;
        assert_eq!(
            images,
            json!(0),
            "{}: markup became elements",
            browser.label()
        );
        let last = browser
            .js(
                "const t = [...document.querySelectorAll('#messages .msg-text')]; \
                 return t[t.length - 1].textContent;",
                vec![],
            )
            .await;
        assert_eq!(last, json!(markup));
        assert!(
            browser.client().get_alert_text().await.is_err(),
            "{}: a script ran and opened an alert",
            browser.label()
        );
    }

    // Carol, without the invite: the room is not listed, joining it by name or with a
    // forged invite fails, and none of its messages reach her page.
    let carol = open_chat(&driver, &stack, "carol", "").await;
    carol.wait_text(T, "#room-title", "lobby").await;
    carol
        .wait_js(
            T,
            "carol's room list",
            "return document.querySelector('#room-list li[data-room=\"lobby\"]') !== null;",
            vec![],
        )
        .await;
    assert!(!listed_rooms(&carol)
        .await
        .contains(&"secret plans".to_owned()));
    // A link she declines leaves her where she was, without asking the server anything.
    carol.goto(&format!("{url}#room=secret+plans")).await;
    wait_connected(&carol).await;
    let join_question = "return document.getElementById('join-dialog').hidden ? null \
                         : document.getElementById('join-room').textContent;";
    let asked = carol
        .wait_js(T, "the join question", join_question, vec![])
        .await;
    assert_eq!(asked, json!("secret plans"));
    carol.click("#join-decline").await;
    carol
        .wait_js(
            T,
            "the question gone",
            "return document.getElementById('join-dialog').hidden;",
            vec![],
        )
        .await;
    assert_eq!(status(&carol, "#room-title").await, "lobby");
    assert!(carol
        .js("return document.getElementById('notice').hidden;", vec![])
        .await
        .as_bool()
        .unwrap());
    for forged in [
        "#room=secret+plans",
        "#room=secret+plans&invite=AAAAAAAAAAAAAAAAAAAAAA",
    ] {
        // Hide the previous refusal, so that the next one is a fresh answer.
        carol
            .js("document.getElementById('notice').hidden = true;", vec![])
            .await;
        carol.goto(&format!("{url}{forged}")).await;
        wait_connected(&carol).await;
        carol
            .wait_js(T, "the join question", join_question, vec![])
            .await;
        carol.click("#join-accept").await;
        carol
            .wait_js(
                T,
                "a refusal notice",
                "const n = document.getElementById('notice'); \
                 return !n.hidden && n.textContent.startsWith('cannot join secret plans');",
                vec![],
            )
            .await;
        assert_eq!(status(&carol, "#room-title").await, "lobby");
    }
    // A message after Carol's attempts: once Bob has it, Carol would have it too if it
    // leaked to her.
    send(&alice, "still just us two").await;
    wait_message(&bob, "alice", "still just us two").await;
    // A lobby message from Bob: once Carol has it, she has had every chance to get the rest.
    bob.click("#room-list li[data-room='lobby'] button").await;
    bob.wait_text(T, "#room-title", "lobby").await;
    send(&bob, "checkpoint in the lobby").await;
    wait_message(&carol, "bob", "checkpoint in the lobby").await;
    let leaked = carol
        .js(
            "const s = window.switchyard.state; \
             return { listed: [...s.rooms.keys()], stored: [...s.messages.keys()], \
                      page: document.body.textContent };",
            vec![],
        )
        .await;
    let listed: Vec<String> = serde_json::from_value(leaked["listed"].clone()).unwrap();
    let stored: Vec<String> = serde_json::from_value(leaked["stored"].clone()).unwrap();
    let page = leaked["page"].as_str().unwrap_or_default();
    assert!(!listed.contains(&"secret plans".to_owned()), "{listed:?}");
    assert!(!stored.contains(&"secret plans".to_owned()), "{stored:?}");
    for secret in ["the plan: meet at noon", "still just us two", markup] {
        assert!(!page.contains(secret), "carol's page shows {secret:?}");
    }
    // Carol's member count for the lobby counts all three people across the nodes.
    carol
        .wait_js(
            T,
            "three people in the lobby",
            "const li = document.querySelector('#room-list li[data-room=\"lobby\"] .room-count'); \
             return li && li.textContent === '3';",
            vec![],
        )
        .await;

    // The status bar of every tab names its node and transport.
    for browser in [&alice, &bob, &carol] {
        let node = status(browser, "#status-node").await;
        assert!(
            NODES.contains(&node.as_str()),
            "{}: {node}",
            browser.label()
        );
        assert_eq!(status(browser, "#status-transport").await, "websocket");
    }

    // Back in the private room for the pictures; Bob's at phone width.
    bob.click("#room-list li[data-room='secret plans'] button")
        .await;
    bob.wait_text(T, "#room-title", "secret plans").await;
    wait_message(&bob, "bob", markup).await;
    screenshot(&alice, "alice-private-room").await;
    screenshot(&carol, "carol-lobby").await;
    bob.client().set_window_size(390, 844).await.unwrap();
    bob.wait_js(
        T,
        "the phone layout",
        "return getComputedStyle(document.getElementById('toggle-rooms')).display !== 'none';",
        vec![],
    )
    .await;
    let wide = bob
        .js(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![],
        )
        .await;
    assert_eq!(
        wide,
        json!(true),
        "the page scrolls sideways at phone width"
    );
    screenshot(&bob, "bob-phone").await;
    bob.click("#toggle-rooms").await;
    screenshot(&bob, "bob-phone-rooms").await;

    for browser in [alice, bob, carol] {
        close_clean(browser).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_falls_back_to_long_polling_and_still_chats() {
    let stack = Stack::start();
    let driver = Chromedriver::start();

    // `?transport=polling` forces what a client gets when WebSockets are blocked.
    let dora = open_chat(&driver, &stack, "dora", "?transport=polling").await;
    let erin = open_chat(&driver, &stack, "erin", "").await;
    assert_eq!(status(&dora, "#status-transport").await, "polling");
    assert_eq!(status(&erin, "#status-transport").await, "websocket");
    let node: Value = dora
        .js("return window.switchyard.client.transport;", vec![])
        .await;
    assert_eq!(node, json!("polling"));

    send(&dora, "over long-polling").await;
    wait_message(&erin, "dora", "over long-polling").await;
    send(&erin, "over a websocket").await;
    wait_message(&dora, "erin", "over a websocket").await;
    // Several round trips: the polling session keeps working across requests that the
    // proxy spreads over the nodes (any node serves any request of a session).
    for i in 0..3 {
        let text = format!("poll {i}");
        send(&dora, &text).await;
        wait_message(&erin, "dora", &text).await;
    }
    assert_eq!(status(&dora, "#status-state").await, "connected");
    screenshot(&dora, "dora-polling").await;

    // Without the option, a browser whose WebSocket connections fail (as behind a proxy that
    // refuses upgrades: error, then close 1006) falls back to long-polling by itself. DevTools
    // cannot block WebSockets by URL, so the failing WebSocket is swapped in before the page's
    // scripts run.
    let finn = start_browser(&driver, "finn", &stack.options()).await;
    finn.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": FAILING_WEBSOCKET }),
    )
    .await;
    finn.goto(&stack.url("")).await;
    finn.fill("#name-input", "finn").await;
    finn.click("#name-submit").await;
    wait_connected(&finn).await;
    assert_eq!(status(&finn, "#status-transport").await, "polling");
    send(&finn, "websockets are blocked here").await;
    wait_message(&erin, "finn", "websockets are blocked here").await;
    send(&erin, "still reaching you").await;
    wait_message(&finn, "erin", "still reaching you").await;

    for browser in [dora, erin, finn] {
        close_clean(browser).await;
    }
}

/// The room list counts the users online, not their names: two people may both be "bob",
/// and a `presence` lists at most 100 names. (Each `presence` set the count to the number
/// of names: the list said 2 where `rooms`, and the `presence` itself, said 3.) Their
/// messages tell them apart by the start of each one's user id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_list_counts_users_not_names() {
    let stack = Stack::start();
    let driver = Chromedriver::start();
    let gail = open_chat(&driver, &stack, "gail", "").await;
    // What the room list shows right after the page handled each `presence` of the lobby
    // (this listener comes after the page's own).
    gail.js(
        "window.__shown = []; \
         window.switchyard.client.on('presence', (e) => { if (e.room === 'lobby') \
           window.__shown.push([e.count, document.querySelector(\
             '#room-list li[data-room=\"lobby\"] .room-count')?.textContent]); });",
        vec![],
    )
    .await;
    let mut bob = raw_chat_socket(&stack.nodes[0], "bob").await;
    let mut other_bob = raw_chat_socket(&stack.nodes[1], "bob").await;
    let shown = gail
        .wait_js(
            T,
            "a presence of the lobby counting 3",
            "const s = window.__shown.find(([count]) => count === 3); return s ?? null;",
            vec![],
        )
        .await;
    assert_eq!(shown, json!([3, "3"]), "the count shown with it");
    let names = gail
        .js(
            "return [...document.querySelectorAll('#members li')].map(li => li.textContent);",
            vec![],
        )
        .await;
    assert_eq!(names, json!(["bob", "gail"]), "names are listed once");
    // Their messages tell the two bobs apart: each name shows the start of its user id.
    for (ws, text) in [(&mut bob, "one"), (&mut other_bob, "two")] {
        let payload = json!({"room": "lobby", "text": text}).to_string();
        let sent = raw_chat_call(ws, 1, "send", &payload).await;
        assert_eq!(sent["ok"], true, "{sent}");
        wait_message(&gail, "bob", text).await;
    }
    let tags = gail
        .js(
            "return [...document.querySelectorAll('#messages li.message .msg-who')]\
               .map(w => w.textContent);",
            vec![],
        )
        .await;
    let tags: Vec<String> = serde_json::from_value(tags).unwrap();
    assert_eq!(tags.len(), 2, "{tags:?}");
    assert_ne!(tags[0], tags[1], "two users, one name");
    assert!(
        tags.iter()
            .all(|t| t.starts_with('#') && t.chars().count() == 5),
        "{tags:?}"
    );
    close_clean(gail).await;
}

/// The room list holds every room, however many pages of `rooms` that takes (the page
/// asks for the most the node answers, 500 at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_list_holds_rooms_beyond_one_page() {
    const ROOMS: usize = 520;
    let stack = Stack::start_with(&[
        "--rate-limit",
        "10000/1s",
        "--create-rate-limit",
        "10000/1s",
    ]);
    let mut maker = raw_chat_socket(&stack.nodes[1], "maker").await;
    for i in 0..ROOMS {
        let payload = format!(r#"{{"room":"room {i:03}"}}"#);
        let answer = raw_chat_call(&mut maker, i as u64, "create", &payload).await;
        assert_eq!(answer["ok"], true, "room {i}: {answer}");
    }
    let driver = Chromedriver::start();
    let hana = open_chat(&driver, &stack, "hana", "").await;
    let count = hana
        .wait_js(
            T,
            "every room listed",
            &format!(
                "const n = document.querySelectorAll('#room-list li').length; \
                 return n === {} ? n : null;",
                ROOMS + 1
            ),
            vec![],
        )
        .await;
    assert_eq!(count, json!(ROOMS + 1));
    let rooms = listed_rooms(&hana).await;
    assert_eq!(rooms.first().map(String::as_str), Some("lobby"));
    assert_eq!(rooms.last().map(String::as_str), Some("room 519"));
    close_clean(hana).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_whose_node_dies_reconnects_to_another_and_misses_nothing() {
    let mut stack = Stack::start();
    let driver = Chromedriver::start();

    let ((fay, _), (gus, gus_node)) = two_on_different_nodes(&driver, &stack, "fay", "gus").await;
    send(&fay, "before the crash").await;
    wait_message(&gus, "fay", "before the crash").await;

    // Gus's node dies, and Fay writes at once, most likely before Gus is back (if not, the
    // checks below hold all the same). His tab reconnects (backoff, through the proxy) to a
    // live node.
    stack.kill_node(&gus_node);
    send(&fay, "while you were away").await;
    let moved = gus
        .wait_js(
            T,
            "gus connected to another node",
            "const node = document.getElementById('status-node').textContent; \
             const state = document.getElementById('status-state').textContent; \
             return state === 'connected' && node !== arguments[0] ? node : null;",
            vec![json!(gus_node)],
        )
        .await;
    let moved = moved.as_str().unwrap().to_owned();
    assert!(
        NODES.contains(&moved.as_str()) && moved != gus_node,
        "{moved}"
    );

    // The message sent around the crash reaches him exactly once (connection-state recovery
    // replays what he missed; the page also de-duplicates by message id).
    wait_message(&gus, "fay", "while you were away").await;
    send(&gus, "back, on another node").await;
    wait_message(&fay, "gus", "back, on another node").await;
    for text in ["before the crash", "while you were away"] {
        let copies = gus
            .js(
                "return [...document.querySelectorAll('#messages .msg-text')] \
                 .filter(t => t.textContent === arguments[0]).length;",
                vec![json!(text)],
            )
            .await;
        assert_eq!(copies, json!(1), "{text:?} shown {copies} times");
    }
    // The server kept his session's recovery record in Redis, so another node restored it.
    let recovered = gus
        .js("return window.switchyard.client.recovered;", vec![])
        .await;
    println!("gus moved from {gus_node} to {moved}; recovered: {recovered}");
    assert_eq!(recovered, json!(true), "the session was not recovered");
    screenshot(&gus, "gus-after-failover").await;

    for browser in [fay, gus] {
        close_clean(browser).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_name_is_explained_and_the_identity_survives_a_reload() {
    // One node on its embedded store, straight over plain HTTP: the page needs no proxy.
    let node = ChatNode::start("solo", None, &["--max-text", "120"]);
    let driver = Chromedriver::start();
    let page = node.url("/");
    let hana = start_browser(&driver, "hana", &BrowserOptions::default()).await;
    hana.goto(&page).await;

    // A name with an invisible character: the server refuses the connection and says why.
    hana.fill("#name-input", "ha\u{200b}na").await;
    hana.click("#name-submit").await;
    hana.wait_text(T, "#status-state", "error").await;
    hana.wait_js(
        T,
        "the refusal in the nickname prompt",
        "return !document.getElementById('name-dialog').hidden && \
         document.getElementById('name-error').textContent === \
         'name contains invisible characters';",
        vec![],
    )
    .await;

    hana.fill("#name-input", "  hana  ").await;
    hana.click("#name-submit").await;
    assert_eq!(wait_connected(&hana).await, "solo");
    hana.wait_text(T, "#status-name", "hana").await;
    // The composer takes the server's text limit, not a guess of its own.
    hana.wait_js(
        T,
        "the composer's maxlength from welcome",
        "return document.getElementById('message-input').maxLength === 120;",
        vec![],
    )
    .await;
    let identity = "return [window.switchyard.state.user, \
                    localStorage.getItem('switchyard.token')];";
    let before = hana.js(identity, vec![]).await;
    assert!(before[0].is_string() && before[1].is_string(), "{before}");
    send(&hana, "remember me").await;

    // A reload connects at once with the remembered name and token: the same user, whose
    // message is in the lobby's history.
    hana.goto(&page).await;
    wait_connected(&hana).await;
    let dialog = hana
        .js(
            "return document.getElementById('name-dialog').hidden;",
            vec![],
        )
        .await;
    assert_eq!(dialog, json!(true), "asked for the name again");
    wait_message(&hana, "hana", "remember me").await;
    let after = hana
        .wait_js(
            T,
            "the user id from the welcome",
            &format!("const v = (() => {{ {identity} }})(); return v[0] ? v : null;"),
            vec![],
        )
        .await;
    assert_eq!(before, after, "a new identity after the reload");
    let mine = hana
        .js(
            "return document.querySelector('#messages li.message.mine .msg-text')?.textContent;",
            vec![],
        )
        .await;
    assert_eq!(mine, json!("remember me"), "own messages are marked");

    // The browser enforces the page's CSP: injected inline code and styles are refused, and
    // so is a WebSocket to any host but the page's own (where an injected script would send
    // what it read); each is reported (so the recorder behind `close_clean` would notice any
    // from the page itself). The page's own WebSocket, to its own host, is allowed: the
    // other tests chat over it.
    let ran = hana
        .js(
            "window.__ran = false; \
             const s = document.createElement('script'); \
             s.textContent = 'window.__ran = true'; \
             document.body.append(s); \
             document.body.setAttribute('style', 'background: red'); \
             try { new WebSocket('ws://127.0.0.2:9/exfiltrate'); } catch (e) {} \
             return window.__ran;",
            vec![],
        )
        .await;
    assert_eq!(ran, json!(false), "an inline script ran");
    hana.wait_js(
        T,
        "three violations reported",
        "const p = window.__problems.join('\\n'); \
         if (!p.includes('csp: script-src') || !p.includes('csp: style-src') \
             || !p.includes('csp: connect-src blocked ws://127.0.0.2:9')) return null; \
         window.__problems.length = 0; return true;",
        vec![],
    )
    .await;
    close_clean(hana).await;
}

/// Sending does not wait on the ack to empty the box: on a slow link a second Enter posted
/// the text twice, and what was typed before the ack came was wiped by it. A connection lost
/// and found again leaves the box usable, with its draft and the keyboard focus (it was
/// disabled, and the focus fell to the page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_composer_survives_a_slow_ack_and_a_reconnection() {
    let node = ChatNode::start("solo", None, &[]);
    let driver = Chromedriver::start();
    let ivy = open_solo(&driver, &node, "ivy").await;
    // A slow link: every `send` leaves a second late.
    ivy.js(
        "const c = window.switchyard.client; const request = c.request.bind(c); \
         c.request = (e, d, t) => e === 'send' \
           ? new Promise((r) => setTimeout(r, 1000)).then(() => request(e, d, t)) \
           : request(e, d, t);",
        vec![],
    )
    .await;
    press(&ivy, "#message-input", "first\u{e007}").await;
    press(&ivy, "#message-input", "\u{e007}").await;
    press(&ivy, "#message-input", "next draft").await;
    wait_message(&ivy, "ivy", "first").await;
    ivy.wait_js(
        T,
        "no send awaiting its ack",
        "return !document.getElementById('composer').hasAttribute('aria-busy');",
        vec![],
    )
    .await;
    // A second copy would have been sent right behind the first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let shown = ivy
        .js(
            "return [[...document.querySelectorAll('#messages .msg-text')] \
               .filter((t) => t.textContent === 'first').length, \
               document.getElementById('message-input').value];",
            vec![],
        )
        .await;
    assert_eq!(shown, json!([1, "next draft"]), "[copies sent, the box]");

    // The connection drops (as when the network does) while Ivy writes on.
    let offline = ivy
        .js(
            "const input = document.getElementById('message-input'); input.focus(); \
             window.switchyard.client.engine.finish('test: network lost'); \
             return [document.getElementById('status-state').textContent, input.disabled, \
                     document.activeElement.id];",
            vec![],
        )
        .await;
    assert_eq!(offline, json!(["reconnecting", false, "message-input"]));
    press(&ivy, "#message-input", ", written offline").await;
    wait_connected(&ivy).await;
    let back = ivy
        .js(
            "return [document.activeElement.id, document.getElementById('message-input').value];",
            vec![],
        )
        .await;
    assert_eq!(
        back,
        json!(["message-input", "next draft, written offline"])
    );
    press(&ivy, "#message-input", "\u{e007}").await;
    wait_message(&ivy, "ivy", "next draft, written offline").await;
    close_clean(ivy).await;
}

/// The room list, rebuilt at every presence and refresh, keeps the keyboard focus on the
/// room that had it (it fell to the page every few seconds). A right-to-left name keeps its
/// user id tag after it (the tag was split around the name: `#71אבי yE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_list_keeps_the_focus_and_right_to_left_names_stay_apart() {
    let node = ChatNode::start("solo", None, &[]);
    let driver = Chromedriver::start();
    let avi = open_solo(&driver, &node, "אבי").await;
    avi.js(
        "document.querySelector('#room-list li[data-room=\"lobby\"] button').focus();",
        vec![],
    )
    .await;
    let _bob = raw_chat_socket(&node, "bob").await;
    avi.wait_js(
        T,
        "two in the lobby",
        "return document.querySelector('#room-list li[data-room=\"lobby\"] .room-count') \
           ?.textContent === '2';",
        vec![],
    )
    .await;
    let focused = avi
        .js(
            "return document.activeElement.closest('#room-list li')?.dataset.room ?? \
               document.activeElement.tagName;",
            vec![],
        )
        .await;
    assert_eq!(focused, json!("lobby"), "the focus left the room list");

    // A user id whose tag starts with digits: they took the direction of the name before
    // them.
    avi.js(
        "window.switchyard.client.fire('message', { id: '1-0', room: 'lobby', from: 'אבי', \
           user: 'u71yEabcdefghijk', text: 'שלום!', ts: Date.now() });",
        vec![],
    )
    .await;
    wait_message(&avi, "אבי", "שלום!").await;
    let layout = avi
        .js(
            "const li = document.querySelector('#messages li.message[data-id=\"1-0\"]'); \
             const from = li.querySelector('.msg-from').getBoundingClientRect(); \
             const who = li.querySelector('.msg-who').getBoundingClientRect(); \
             return [from.left, from.right, who.left, who.right];",
            vec![],
        )
        .await;
    let [from_left, from_right, who_left, _]: [f64; 4] = serde_json::from_value(layout).unwrap();
    assert!(
        from_left < from_right && who_left >= from_right - 0.5,
        "the tag is not after the name: {layout:?}",
        layout = [from_left, from_right, who_left]
    );
    close_clean(avi).await;
}

/// The invite link of a private room is there whenever the room is shown, not only right
/// after creating it: a reload lost it for good. A room name of 64 letters without a space
/// stays inside the invite box and the join question (it spilled out of both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_rooms_invite_link_is_shown_again_after_a_reload() {
    let node = ChatNode::start("solo", None, &[]);
    let driver = Chromedriver::start();
    let jo = open_solo(&driver, &node, "jo").await;
    let hideout = format!("hideout{}", "o".repeat(57));
    create_room(&jo, &hideout, true).await;
    let invite_link = "return document.getElementById('invite-box').hidden ? null : \
                       [document.getElementById('invite-room').textContent, \
                        document.getElementById('invite-link').value];";
    let link = jo.wait_js(T, "the invite link", invite_link, vec![]).await;
    assert_eq!(link[0], json!(hideout));
    let overflow = "const e = document.querySelector(arguments[0]); \
                    return e.scrollWidth - e.clientWidth;";
    let sidebar = jo.js(overflow, vec![json!("#sidebar")]).await;
    assert_eq!(sidebar, json!(0), "the room name spills out of the sidebar");

    jo.goto(&node.url("/")).await;
    wait_connected(&jo).await;
    jo.wait_text(T, "#room-title", "lobby").await;
    let lobby = jo
        .js(
            "return document.getElementById('invite-box').hidden;",
            vec![],
        )
        .await;
    assert_eq!(lobby, json!(true), "an invite link shown for the lobby");
    jo.click(&format!("#room-list li[data-room='{hideout}'] button"))
        .await;
    jo.wait_text(T, "#room-title", &hideout).await;
    let again = jo
        .wait_js(T, "the invite link after a reload", invite_link, vec![])
        .await;
    assert_eq!(again, link);

    let long = "L".repeat(64);
    let mut lee = raw_chat_socket(&node, "lee").await;
    let made = json!({ "room": long, "private": false }).to_string();
    let made = raw_chat_call(&mut lee, 1, "create", &made).await;
    assert_eq!(made["ok"], true, "{made}");
    jo.js(
        "location.hash = new URLSearchParams({ room: arguments[0] }).toString();",
        vec![json!(long)],
    )
    .await;
    jo.wait_text(T, "#join-room", &long).await;
    let dialog = jo.js(overflow, vec![json!("#join-form")]).await;
    assert_eq!(
        dialog,
        json!(0),
        "the room name spills out of the join question"
    );
    close_clean(jo).await;
}

/// A room left from another tab (or device) stays left when this tab comes back without
/// recovery (after a long sleep): the page fetched the room it showed with a `join`, which
/// made the person a member again and announced it to the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_left_in_another_tab_is_not_joined_again_on_a_reconnect() {
    let node = ChatNode::start("solo", None, &[]);
    let driver = Chromedriver::start();
    let kai = open_solo(&driver, &node, "kai").await;
    create_room(&kai, "games", false).await;
    let token = kai
        .js("return localStorage.getItem('switchyard.token');", vec![])
        .await;
    let mut other_tab = raw_chat_tab(&node, "kai", token.as_str().unwrap()).await;
    let left = raw_chat_call(&mut other_tab, 1, "leave", r#"{"room":"games"}"#).await;
    assert_eq!(left["ok"], true, "{left}");

    // The page comes back as a new session (its recovery window gone by).
    kai.js(
        "const c = window.switchyard.client; c.pid = null; c.engine.finish('test: asleep');",
        vec![],
    )
    .await;
    kai.wait_text(T, "#status-state", "reconnecting").await;
    wait_connected(&kai).await;
    kai.wait_text(T, "#room-title", "lobby").await;
    let history = raw_chat_call(&mut other_tab, 2, "history", r#"{"room":"games"}"#).await;
    assert_eq!(
        history["error"], "not a member",
        "kai is in the room again: {history}"
    );
    close_clean(kai).await;
}

#[test]
fn the_page_socketio_client_passes_its_unit_tests() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("../chat-node/web/sio.test.mjs");
    let mut node = Command::new("node");
    node.args(["--test", "--test-reporter=spec"])
        .arg(&suite)
        .env("NO_COLOR", "1");
    run_with_timeout(node, Duration::from_secs(60)).assert_passed("sio.js unit tests");
}

/// A room's earlier messages page in on demand, with "Earlier messages" or by scrolling to
/// the top, a page of 100 at a time, in order, keeping in view the message being read, until
/// the start of the room's history, where the button goes away. Joining shows only the last
/// 50: without this the rest of a room's history (it keeps about 1000) was out of reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_messages_page_in_up_to_the_start_of_the_history() {
    let node = ChatNode::start("solo", None, &["--rate-limit", "1000/1s"]);
    let mut writer = raw_chat_socket(&node, "writer").await;
    for i in 0..250u64 {
        let payload = json!({"room": "lobby", "text": format!("m{i:03}")}).to_string();
        let sent = raw_chat_call(&mut writer, i + 1, "send", &payload).await;
        assert_eq!(sent["ok"], true, "{sent}");
    }
    let driver = Chromedriver::start();
    let ivy = open_solo(&driver, &node, "ivy").await;
    // The texts shown, once there are `n`: their count, first and last, and whether they
    // are in order.
    let shown = |n: usize| {
        let ivy = &ivy;
        async move {
            ivy.wait_js(
                T,
                &format!("{n} messages shown"),
                "const texts = [...document.querySelectorAll('#messages li.message .msg-text')] \
                   .map((t) => t.textContent); \
                 if (texts.length !== arguments[0]) return null; \
                 const sorted = texts.every((t, i) => i === 0 || texts[i - 1] < t); \
                 return [texts[0], texts[texts.length - 1], sorted, \
                         document.getElementById('older').hidden];",
                vec![json!(n)],
            )
            .await
        }
    };
    assert_eq!(shown(50).await, json!(["m200", "m249", true, false]));
    ivy.click("#older").await;
    assert_eq!(shown(150).await, json!(["m100", "m249", true, false]));
    // Scrolled to the top: the next page comes by itself, and what was at the top stays
    // in view.
    ivy.js("document.getElementById('messages').scrollTop = 0;", vec![])
        .await;
    assert_eq!(shown(250).await, json!(["m000", "m249", true, false]));
    let in_view = ivy
        .js(
            "const list = document.getElementById('messages').getBoundingClientRect(); \
             const li = [...document.querySelectorAll('#messages li.message')] \
               .find((li) => li.querySelector('.msg-text').textContent === 'm100'); \
             const top = li.getBoundingClientRect().top; \
             return top >= list.top && top < list.bottom;",
            vec![],
        )
        .await;
    assert_eq!(
        in_view,
        json!(true),
        "m100 was at the top, and should still be in view"
    );
    // The start: one more page, empty, and the button goes.
    ivy.click("#older").await;
    ivy.wait_js(
        T,
        "the button gone at the start of the history",
        "return document.getElementById('older').hidden;",
        vec![],
    )
    .await;
    assert_eq!(shown(250).await, json!(["m000", "m249", true, true]));
    close_clean(ivy).await;
}

/// The nickname dialog opened with "Name" can be called off (Cancel, or Escape), the name
/// and the connection as they were; the first one cannot, there being no name yet (the
/// dialog had no way out but choosing a name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_name_can_be_called_off() {
    let node = ChatNode::start("solo", None, &[]);
    let driver = Chromedriver::start();
    let ivy = start_browser(&driver, "ivy", &BrowserOptions::default()).await;
    ivy.goto(&node.url("/")).await;
    let dialog = "return [document.getElementById('name-dialog').hidden, \
                  document.getElementById('name-cancel').hidden];";
    ivy.wait_js(
        T,
        "the nickname prompt",
        "return !document.getElementById('name-dialog').hidden;",
        vec![],
    )
    .await;
    assert_eq!(
        ivy.js(dialog, vec![]).await,
        json!([false, true]),
        "[dialog hidden, cancel hidden]"
    );
    press(&ivy, "#name-input", "\u{e00c}").await;
    assert_eq!(
        ivy.js(dialog, vec![]).await,
        json!([false, true]),
        "Escape at the first name"
    );
    ivy.fill("#name-input", "ivy").await;
    ivy.click("#name-submit").await;
    let node_id = wait_connected(&ivy).await;

    ivy.click("#change-name").await;
    assert_eq!(ivy.js(dialog, vec![]).await, json!([false, false]));
    ivy.fill("#name-input", "ivan").await;
    press(&ivy, "#name-input", "\u{e00c}").await;
    assert_eq!(
        ivy.js(dialog, vec![]).await,
        json!([true, false]),
        "Escape called it off"
    );
    ivy.click("#change-name").await;
    ivy.click("#name-cancel").await;
    assert_eq!(
        ivy.js(dialog, vec![]).await,
        json!([true, false]),
        "Cancel called it off"
    );
    let after = ivy
        .js(
            "return [document.getElementById('status-name').textContent, \
                     document.getElementById('status-state').textContent, \
                     document.activeElement.id];",
            vec![],
        )
        .await;
    assert_eq!(after, json!(["ivy", "connected", "change-name"]));
    assert_eq!(status(&ivy, "#status-node").await, node_id);
    close_clean(ivy).await;
}

/// A room left in another tab (or on another device) leaves this tab's view at once: the
/// server tells every connection of the person (`left`), and the page goes back to the
/// lobby with a notice, instead of showing a room gone quiet whose sends are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_left_in_another_tab_leaves_this_tabs_view() {
    let node = ChatNode::start("solo", None, &[]);
    let driver = Chromedriver::start();
    let kai = open_solo(&driver, &node, "kai").await;
    create_room(&kai, "games", true).await;
    let token = kai
        .js("return localStorage.getItem('switchyard.token');", vec![])
        .await;
    let mut other_tab = raw_chat_tab(&node, "kai", token.as_str().unwrap()).await;
    let left = raw_chat_call(&mut other_tab, 1, "leave", r#"{"room":"games"}"#).await;
    assert_eq!(left["ok"], true, "{left}");
    kai.wait_text(T, "#room-title", "lobby").await;
    kai.wait_js(
        T,
        "the notice of the leave",
        "return document.getElementById('notice').textContent.includes('you left games');",
        vec![],
    )
    .await;
    // Still connected all along: told, not reconnected.
    assert_eq!(status(&kai, "#status-state").await, "connected");
    close_clean(kai).await;
}

/// Switching rooms mid-draft ends the typing notice in the room it was shown in: it was
/// ended in the room switched to, and stayed in the first one until it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_rooms_ends_the_typing_notice_where_it_was_shown() {
    let node = ChatNode::start("solo", None, &[]);
    let driver = Chromedriver::start();
    let kai = open_solo(&driver, &node, "kai").await;
    create_room(&kai, "games", false).await;
    let mut lia = raw_chat_socket(&node, "lia").await;
    let joined = raw_chat_call(&mut lia, 1, "join", r#"{"room":"games"}"#).await;
    assert_eq!(joined["ok"], true, "{joined}");
    press(&kai, "#message-input", "half a thou").await;
    events_until(&mut lia, "typing", |e| {
        e["room"] == "games" && e["name"] == "kai" && e["typing"] == true
    })
    .await;
    kai.click("#room-list li[data-room='lobby'] button").await;
    kai.wait_text(T, "#room-title", "lobby").await;
    events_until(&mut lia, "typing", |e| {
        e["room"] == "games" && e["name"] == "kai" && e["typing"] == false
    })
    .await;
    close_clean(kai).await;
}

/// The room chosen last is the one shown, whichever `join` answer comes last: a second
/// click while the first room's answer was on its way landed in the first room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_chosen_last_is_shown_whatever_the_order_of_the_answers() {
    let node = ChatNode::start("solo", None, &[]);
    let driver = Chromedriver::start();
    let kai = open_solo(&driver, &node, "kai").await;
    create_room(&kai, "games", false).await;
    kai.click("#room-list li[data-room='lobby'] button").await;
    kai.wait_text(T, "#room-title", "lobby").await;
    // The answer to a join of `games` now takes a second; the lobby's does not.
    kai.js(
        "const c = window.switchyard.client; const request = c.request.bind(c); \
         window.__slowJoins = 0; \
         c.request = (e, d, t) => e === 'join' && d.room === 'games' \
           ? new Promise((r) => setTimeout(r, 1000)).then(() => request(e, d, t)) \
               .finally(() => { window.__slowJoins += 1; }) \
           : request(e, d, t);",
        vec![],
    )
    .await;
    kai.click("#room-list li[data-room='games'] button").await;
    kai.click("#room-list li[data-room='lobby'] button").await;
    kai.wait_js(
        T,
        "the slow answer for games",
        "return window.__slowJoins === 1;",
        vec![],
    )
    .await;
    let shown = kai
        .js(
            "return [document.getElementById('room-title').textContent, \
                     window.switchyard.state.current];",
            vec![],
        )
        .await;
    assert_eq!(shown, json!(["lobby", "lobby"]));
    close_clean(kai).await;
}

/// A tab left open in a busy room keeps its last 1000 messages or so, not every message
/// since it opened; the older ones can be paged in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_open_in_a_busy_room_keeps_a_bounded_list() {
    let node = ChatNode::start("solo", None, &["--rate-limit", "10000/1s"]);
    let driver = Chromedriver::start();
    let ivy = open_solo(&driver, &node, "ivy").await;
    let mut writer = raw_chat_socket(&node, "writer").await;
    for i in 0..1500u64 {
        let payload = json!({"room": "lobby", "text": format!("m{i:04}")}).to_string();
        let sent = raw_chat_call(&mut writer, i + 1, "send", &payload).await;
        assert_eq!(sent["ok"], true, "{sent}");
    }
    wait_message(&ivy, "writer", "m1499").await;
    let kept = ivy
        .js(
            "const texts = [...document.querySelectorAll('#messages li.message .msg-text')] \
               .map((t) => t.textContent); \
             return [texts.length <= 1100, texts.length >= 1000, \
                     window.switchyard.state.messages.get('lobby').size <= 1100, \
                     document.getElementById('older').hidden];",
            vec![],
        )
        .await;
    assert_eq!(
        kept,
        json!([true, true, true, false]),
        "[shown ≤ 1100, shown ≥ 1000, kept ≤ 1100, the button hidden]"
    );
    close_clean(ivy).await;
}

/// At phone width, creating a public room shows it: the rooms panel closes (it stayed open
/// over the chat). A private room's creation keeps the panel on its invite link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_phone_width_a_new_public_room_is_shown_and_a_private_ones_invite_kept() {
    let node = ChatNode::start("solo", None, &[]);
    let driver = Chromedriver::start();
    let kai = open_solo(&driver, &node, "kai").await;
    kai.client().set_window_size(390, 844).await.unwrap();
    kai.wait_js(
        T,
        "the phone layout",
        "return getComputedStyle(document.getElementById('toggle-rooms')).display !== 'none';",
        vec![],
    )
    .await;
    let panel = "return [document.getElementById('sidebar').classList.contains('open'), \
                 document.getElementById('invite-box').hidden];";
    for (room, private, expected) in [
        ("games", false, json!([false, true])),
        ("den", true, json!([true, false])),
    ] {
        kai.click("#toggle-rooms").await;
        assert_eq!(
            kai.js(panel, vec![]).await[0],
            json!(true),
            "{room}: the panel opened"
        );
        create_room(&kai, room, private).await;
        assert_eq!(
            kai.js(panel, vec![]).await,
            expected,
            "{room}: [panel open, invite hidden]"
        );
        if private {
            kai.click("#toggle-rooms").await;
        }
    }
    close_clean(kai).await;
}

/// A screen reader is told each new message of the room shown, and only that: the message
/// list was the live region, and switching rooms, which rebuilds it, had the whole
/// history read out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screen_reader_hears_new_messages_not_a_rooms_history() {
    let node = ChatNode::start("solo", None, &[]);
    let driver = Chromedriver::start();
    let ivy = open_solo(&driver, &node, "ivy").await;
    let live = "return [...document.querySelectorAll('[aria-live]')] \
                .filter((e) => e.getAttribute('aria-live') !== 'off') \
                .map((e) => [e.id, e.textContent]);";
    let mut writer = raw_chat_socket(&node, "writer").await;
    let sent = raw_chat_call(&mut writer, 1, "send", r#"{"room":"lobby","text":"hello"}"#).await;
    assert_eq!(sent["ok"], true, "{sent}");
    wait_message(&ivy, "writer", "hello").await;
    assert_eq!(
        ivy.js(live, vec![]).await,
        json!([["announcer", "writer: hello"], ["typing", ""]])
    );
    close_clean(ivy).await;
}

/// The question an invite link asks can be declined with Escape, as with "Not now": the
/// page stays where it was and the server is asked nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_links_question_is_declined_with_escape() {
    let node = ChatNode::start("solo", None, &[]);
    let driver = Chromedriver::start();
    let kai = open_solo(&driver, &node, "kai").await;
    kai.goto(&node.url("/#room=den&invite=AAAA")).await;
    wait_connected(&kai).await;
    kai.wait_js(
        T,
        "the join question",
        "return !document.getElementById('join-dialog').hidden;",
        vec![],
    )
    .await;
    press(&kai, "#join-accept", "\u{e00c}").await;
    let after = kai
        .js(
            "return [document.getElementById('join-dialog').hidden, \
                     document.getElementById('room-title').textContent, \
                     window.switchyard.state.pendingInvite];",
            vec![],
        )
        .await;
    assert_eq!(after, json!([true, "lobby", null]));
    close_clean(kai).await;
}
