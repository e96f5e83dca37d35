//! The WebSocket relay byte for byte, with raw peers on both ends: where the proxy's own
//! Close frames land in the two frame streams (never inside a frame, also for the frames
//! that arrive with the handshake and for a stream that never pauses), a side whose Close
//! went first, upgrades that are not WebSockets, half-closes, a client that stops reading,
//! a peer that vanishes, and the counts a tunnel holds until it ends.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tests::admin::{total, wait_idle, wait_status};
use tests::fixtures::{listener, upstream};
use tests::get;
use tests::raw::{proxy_for_raw, reply, RawBackend, RawConn};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Bound for waits on the proxy's state and on the peers' events.
const T: Duration = Duration::from_secs(10);

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

const SWITCH: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

const IDLE_1S: &str = "[timeouts]\ntunnel_idle = \"1s\"\n";

/// A frame as a peer reads it: its first byte (FIN, RSV, opcode), whether it was masked,
/// and its payload (unmasked).
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    first: u8,
    masked: bool,
    payload: Vec<u8>,
}

impl Frame {
    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    /// The code and reason of a Close frame.
    fn close(&self) -> Option<(u16, String)> {
        (self.opcode() == 8 && self.payload.len() >= 2).then(|| {
            (
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                String::from_utf8_lossy(&self.payload[2..]).into_owned(),
            )
        })
    }
}

/// A frame with `first` as its first byte, masked with `mask` when given.
fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![first];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => f.push(m | n as u8),
        n @ 126..=0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            f.extend_from_slice(&key);
            f.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// Reads one frame, each read bounded by `limit`.
async fn read_frame(c: &mut RawConn<TcpStream>, limit: Duration) -> Result<Frame, String> {
    let head = c.take(2, limit).await?;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes(
            c.take(2, limit).await?.try_into().unwrap(),
        )),
        127 => u64::from_be_bytes(c.take(8, limit).await?.try_into().unwrap()),
        n => u64::from(n),
    };
    let key = if masked {
        c.take(4, limit).await?
    } else {
        vec![0; 4]
    };
    let len = usize::try_from(len).map_err(|_| format!("length {len}"))?;
    if len > 16 << 20 {
        return Err(format!("a frame of {len} bytes: the stream is out of step"));
    }
    let payload = c.take(len, limit).await?;
    let payload = payload
        .iter()
        .zip(key.iter().cycle())
        .map(|(b, k)| b ^ k)
        .collect();
    Ok(Frame {
        first: head[0],
        masked,
        payload,
    })
}

/// Connects to the proxy and opens a WebSocket: the 101 is read, what follows it is left.
async fn open(proxy: &tests::Proxy, behind: &[u8]) -> RawConn<TcpStream> {
    let mut c = RawConn::connect(proxy.addr()).await;
    let mut req = UPGRADE.as_bytes().to_vec();
    req.extend_from_slice(behind);
    c.send(req).await;
    let head = c.head(T).await.unwrap().unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c
}

/// Reads a raw backend's request and answers `101` followed by `behind`, in one write.
async fn accept(conn: &mut RawConn<TcpStream>, behind: &[u8]) -> bool {
    if conn.request().await.is_none() {
        return false;
    }
    let mut out = SWITCH.as_bytes().to_vec();
    out.extend_from_slice(behind);
    reply(conn, out).await
}

/// Waits for the peer to close (EOF or reset) and returns what came before.
async fn rest_until_eof(c: &mut RawConn<TcpStream>, limit: Duration) -> Result<Vec<u8>, String> {
    loop {
        match c.fill(limit).await {
            Ok(0) => return Ok(std::mem::take(&mut c.buf)),
            Ok(_) => {}
            Err(e) if e.starts_with("read failed") => return Ok(std::mem::take(&mut c.buf)),
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. The frames that come with the handshake are followed too.

/// A backend's first frame often arrives in the same read as its `101`. The relay must
/// count those bytes into its frame cursor: here the head of a 4-byte frame comes with the
/// 101 and half its payload later, which a cursor that started after the 101 would take
/// for a whole (empty) frame and put the idle Close right inside the real one.
#[tokio::test]
async fn a_frame_begun_with_the_101_is_not_cut_by_the_idle_close() {
    let (tx, mut to_backend) = mpsc::unbounded_channel::<Result<Frame, String>>();
    let raw = RawBackend::start(move |mut conn, _| {
        let tx = tx.clone();
        async move {
            // The head of a binary frame of 4 bytes right behind the 101, then 2 bytes of it
            // that a lost cursor reads as a frame header.
            if !accept(&mut conn, &[0x82, 0x04]).await || !reply(&mut conn, [0, 0]).await {
                return;
            }
            // The proxy's Close reaches the backend at the idle timeout (that side is
            // between frames); only then does the frame to the client end.
            let close = read_frame(&mut conn, T).await;
            let _ = tx.send(close);
            let _ = reply(&mut conn, *b"ab").await;
            let _ = rest_until_eof(&mut conn, T).await;
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], IDLE_1S);
    let mut c = open(&proxy, b"").await;

    let to_backend = tokio::time::timeout(T, to_backend.recv()).await.unwrap();
    let to_backend = to_backend.unwrap().unwrap();
    assert_eq!(to_backend.close(), Some((1001, "idle timeout".into())));
    assert!(to_backend.masked, "{to_backend:?}");
    // The client gets the frame whole, then the Close.
    let first = read_frame(&mut c, T).await.unwrap();
    assert_eq!(
        (first.first, first.payload.as_slice()),
        (0x82, &b"\0\0ab"[..])
    );
    let close = read_frame(&mut c, T).await.unwrap();
    assert_eq!(
        close.close(),
        Some((1001, "idle timeout".into())),
        "{close:?}"
    );
    assert!(!close.masked);
    wait_idle(&proxy, T).await;
}

/// The same toward the backend: a client's first frame sent right behind its upgrade
/// request (held by the proxy until the backend said 101) is followed from its first byte.
#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_not_cut_by_the_idle_close() {
    let key = [0x12, 0x34, 0x56, 0x78];
    // Masked with `key`, the first two payload bytes are 00 00: a lost cursor's empty frame.
    let payload = [0x12, 0x34, 0x56, 0x78];
    let whole = frame(0x82, &payload, Some(key));
    let (tx, mut seen) = mpsc::unbounded_channel::<Result<Frame, String>>();
    let raw = RawBackend::start(move |mut conn, _| {
        let tx = tx.clone();
        async move {
            if !accept(&mut conn, b"").await {
                return;
            }
            for _ in 0..2 {
                let f = read_frame(&mut conn, T).await;
                let stop = f.is_err();
                let _ = tx.send(f);
                if stop {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], IDLE_1S);
    // The frame's head comes with the request, then 2 of its 4 payload bytes.
    let mut c = open(&proxy, &whole[..6]).await;
    c.send(&whole[6..8]).await;
    // The client gets its Close at the idle timeout; then it ends its frame.
    let close = read_frame(&mut c, T).await.unwrap();
    assert_eq!(
        close.close(),
        Some((1001, "idle timeout".into())),
        "{close:?}"
    );
    c.send(&whole[8..]).await;

    let first = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    let first = first.unwrap();
    assert_eq!((first.first, first.payload), (0x82, payload.to_vec()));
    let second = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    let second = second.unwrap();
    assert_eq!(second.close(), Some((1001, "idle timeout".into())));
    assert!(second.masked);
    wait_idle(&proxy, T).await;
}

// ---------------------------------------------------------------------------------------
// 2. A side whose own Close went first.

/// The backend closed first and the client never answered: at the idle timeout the client
/// has the backend's Close whole and no second one; the backend gets the proxy's (the
/// answer the client never gave).
#[tokio::test]
async fn a_close_already_sent_is_not_followed_by_the_proxys() {
    let (tx, mut seen) = mpsc::unbounded_channel::<Result<Frame, String>>();
    let raw = RawBackend::start(move |mut conn, _| {
        let tx = tx.clone();
        async move {
            let bye = frame(0x88, b"\x03\xe8bye", None);
            if !accept(&mut conn, &bye).await {
                return;
            }
            let _ = tx.send(read_frame(&mut conn, T).await);
            let _ = rest_until_eof(&mut conn, T).await;
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], IDLE_1S);
    let mut c = open(&proxy, b"").await;
    let at_backend = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    assert_eq!(
        at_backend.unwrap().close(),
        Some((1001, "idle timeout".into()))
    );
    let rest = rest_until_eof(&mut c, T).await.unwrap();
    assert_eq!(rest, frame(0x88, b"\x03\xe8bye", None));
    wait_idle(&proxy, T).await;
}

// ---------------------------------------------------------------------------------------
// 3. The proxy's Close in a stream that never pauses.

/// A proxy over `raw` with a grace period of 2 s (the WebSockets are told at 1.5 s) and
/// `extra` in its config.
fn stopping_in_2s(raw: &RawBackend, extra: &str) -> tests::Proxy {
    tests::Proxy::start_config(&format!(
        "[server]\nthreads = 2\ngrace_period = \"2s\"\n{extra}\n{}\n{}",
        listener(tests::free_port()),
        upstream(
            "app",
            None,
            &[format!("{{ addr = \"{}\", id = \"raw\" }}", raw.addr)]
        )
    ))
}

/// A backend that, once upgraded, streams binary frames of 1000 bytes without a pause (in
/// writes of 7777 bytes, which never end with a frame) and reports the first frame it
/// reads.
async fn streaming_backend() -> (RawBackend, mpsc::UnboundedReceiver<Result<Frame, String>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let raw = RawBackend::start(move |mut conn, _| {
        let tx = tx.clone();
        async move {
            if !accept(&mut conn, b"").await {
                return;
            }
            let RawConn { io, buf } = conn;
            let (read, mut write) = io.into_split();
            let mut reader = RawConn { io: read, buf };
            tokio::spawn(async move {
                let mut stream = Vec::new();
                for i in 0..64u32 {
                    stream.extend(frame(0x82, &[i as u8; 1000], None));
                }
                let mut at = 0;
                loop {
                    let end = at + 7777;
                    let mut chunk = Vec::with_capacity(7777);
                    for i in at..end {
                        chunk.push(stream[i % stream.len()]);
                    }
                    at = end % stream.len();
                    if write.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
            let f = read_frame_from(&mut reader).await;
            let _ = tx.send(f);
        }
    })
    .await;
    (raw, rx)
}

/// [`read_frame`] on a read half.
async fn read_frame_from(c: &mut RawConn<tokio::net::tcp::OwnedReadHalf>) -> Result<Frame, String> {
    let head = c.take(2, T).await?;
    let masked = head[1] & 0x80 != 0;
    let len = usize::from(head[1] & 0x7f);
    if len > 125 {
        return Err(format!("unexpected length form {head:?}"));
    }
    let key = if masked {
        c.take(4, T).await?
    } else {
        vec![0; 4]
    };
    let payload = c.take(len, T).await?;
    Ok(Frame {
        first: head[0],
        masked,
        payload: payload
            .iter()
            .zip(key.iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect(),
    })
}

/// Data frames read (all checked whole) until the first other frame, which is returned.
async fn frames_until_control(c: &mut RawConn<TcpStream>, mut on_data: impl FnMut(usize)) -> Frame {
    let mut n = 0;
    loop {
        let f = read_frame(c, T)
            .await
            .unwrap_or_else(|e| panic!("after {n} whole data frames: {e}"));
        if f.opcode() != 2 {
            return f;
        }
        assert_eq!(f.first, 0x82);
        assert_eq!(f.payload.len(), 1000, "frame {n}");
        let b = f.payload[0];
        assert!(f.payload.iter().all(|&x| x == b), "frame {n} mixed");
        n += 1;
        on_data(n);
    }
}

/// At the end of a graceful stop's grace period, a WebSocket whose backend never stops
/// sending still gets its Close (1001) between two frames: the relay must stop at a frame's
/// end to put it there, not wait for a read that happens to end with a frame (which a
/// busy stream may never do) until the closing wait runs out and the connection is cut.
#[tokio::test]
async fn a_stopping_proxy_closes_a_websocket_that_never_pauses_between_two_frames() {
    let (raw, mut seen) = streaming_backend().await;
    let mut proxy = stopping_in_2s(&raw, "");
    let mut c = open(&proxy, b"").await;
    let signalled = std::cell::Cell::new(false);
    let close = frames_until_control(&mut c, |n| {
        if n == 100 && !signalled.get() {
            proxy.signal(nix::sys::signal::Signal::SIGTERM);
            signalled.set(true);
        }
    })
    .await;
    assert_eq!(
        close.close(),
        Some((1001, "proxy stopping".into())),
        "{close:?}"
    );
    assert!(!close.masked);
    let at_backend = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    let at_backend = at_backend.unwrap();
    assert_eq!(at_backend.close(), Some((1001, "proxy stopping".into())));
    drop(c);
    proxy
        .wait_exit(T)
        .unwrap_or_else(|| panic!("the proxy still runs:\n{}", proxy.logs()));
}

/// A large frame under way when the grace period ends is finished before the Close: the
/// backend sends the rest of it only once the proxy's Close has reached it.
#[tokio::test]
async fn a_stopping_proxy_finishes_a_slow_frame_before_its_close() {
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let whole = frame(0x82, &big, None);
    let sent = whole.clone();
    let raw = RawBackend::start(move |mut conn, _| {
        let sent = sent.clone();
        async move {
            if !accept(&mut conn, &sent[..30_000]).await {
                return;
            }
            if read_frame(&mut conn, T).await.is_err() {
                return;
            }
            let _ = reply(&mut conn, &sent[30_000..]).await;
            let _ = rest_until_eof(&mut conn, T).await;
        }
    })
    .await;
    let mut proxy = stopping_in_2s(&raw, "");
    let mut c = open(&proxy, b"").await;
    // Under way: the frame's first bytes have come.
    c.fill(T).await.unwrap();
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    let got = read_frame(&mut c, T).await.unwrap();
    assert!(got.payload == big, "the frame was not relayed whole");
    let close = read_frame(&mut c, T).await.unwrap();
    assert_eq!(close.close(), Some((1001, "proxy stopping".into())));
    drop(c);
    proxy
        .wait_exit(T)
        .unwrap_or_else(|| panic!("the proxy still runs:\n{}", proxy.logs()));
}

// ---------------------------------------------------------------------------------------
// 4. Other upgrades, half-closes, backpressure, vanished peers.

/// An upgrade to another protocol is relayed as bytes: the idle timeout closes it without
/// a byte of its own (a Close frame would corrupt that protocol).
#[tokio::test]
async fn an_idle_tunnel_of_another_protocol_gets_no_close_frame() {
    let (tx, mut seen) = mpsc::unbounded_channel::<Vec<u8>>();
    let raw = RawBackend::start(move |mut conn, _| {
        let tx = tx.clone();
        async move {
            if conn.request().await.is_none()
                || !reply(
                    &mut conn,
                    &b"HTTP/1.1 101 Switching\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n\x88\x02"[..],
                )
                .await
            {
                return;
            }
            let _ = tx.send(rest_until_eof(&mut conn, T).await.unwrap_or_default());
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], IDLE_1S);
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(
        &b"GET /x HTTP/1.1\r\nHost: test\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n\x81"[..],
    )
    .await;
    let head = c.head(T).await.unwrap().unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(rest_until_eof(&mut c, T).await.unwrap(), b"\x88\x02");
    let at_backend = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    assert_eq!(at_backend, b"\x81");
    wait_idle(&proxy, T).await;
}

/// A client that shuts its write side (half-close) still gets what the backend sends,
/// until the backend closes too: the shutdown is passed on, not taken for the end.
#[tokio::test]
async fn a_half_closed_websocket_still_carries_the_other_way() {
    let raw = RawBackend::start(|mut conn, _| async move {
        if !accept(&mut conn, b"").await {
            return;
        }
        // The client's FIN comes through as a FIN.
        if !matches!(rest_until_eof(&mut conn, T).await, Ok(b) if b.is_empty()) {
            return;
        }
        for i in 0..3u8 {
            if !reply(&mut conn, frame(0x81, &[b'0' + i], None)).await {
                return;
            }
        }
        let _ = conn.io.shutdown().await;
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = open(&proxy, b"").await;
    c.io.shutdown().await.unwrap();
    let rest = rest_until_eof(&mut c, T).await.unwrap();
    let mut want = Vec::new();
    for i in 0..3u8 {
        want.extend(frame(0x81, &[b'0' + i], None));
    }
    assert_eq!(rest, want);
    wait_idle(&proxy, T).await;
}

/// A client that stops reading while the backend floods it: the tunnel still ends at the
/// idle timeout plus the closing wait (the Close it cannot take does not hold it open),
/// what the client got is whole frames, and the backend is told.
#[tokio::test]
async fn a_client_that_stops_reading_does_not_hold_the_tunnel() {
    let (tx, mut seen) = mpsc::unbounded_channel::<Result<Frame, String>>();
    let raw = RawBackend::start(move |mut conn, _| {
        let tx = tx.clone();
        async move {
            if !accept(&mut conn, b"").await {
                return;
            }
            let RawConn { io, buf } = conn;
            let (read, mut write) = io.into_split();
            let mut reader = RawConn { io: read, buf };
            tokio::spawn(async move {
                let f = frame(0x82, &[7u8; 3000], None);
                while write.write_all(&f).await.is_ok() {}
            });
            let _ = tx.send(read_frame_from(&mut reader).await);
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], IDLE_1S);
    let c = open(&proxy, b"").await;
    let at_backend = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    assert_eq!(
        at_backend.unwrap().close(),
        Some((1001, "idle timeout".into()))
    );
    wait_idle(&proxy, T).await;
    drop(c);
}

/// A client that vanishes without a FIN (nothing more comes from it, nothing it is sent is
/// answered) is ended at the idle timeout, and its per-IP slot and the backend's tunnel
/// count are given back; so are they when the backend resets or the client closes.
#[tokio::test]
async fn every_end_of_a_tunnel_gives_back_its_slots() {
    let raw = RawBackend::start(|mut conn, _| async move {
        // Plain requests on a kept-alive connection, until an upgrade.
        let req = loop {
            let Some(req) = conn.request().await else {
                return;
            };
            if req.path != "/plain" {
                break req;
            }
            if !reply(&mut conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await {
                return;
            }
        };
        if !reply(&mut conn, SWITCH).await {
            return;
        }
        match req.path.as_str() {
            // Reset: close with unread bytes pending.
            "/reset" => {
                let _ = conn.fill(T).await;
                #[allow(deprecated)] // a zero linger does not block the drop
                let _ = conn.io.set_linger(Some(Duration::ZERO));
            }
            _ => {
                let _ = rest_until_eof(&mut conn, Duration::from_secs(30)).await;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(
        &[&raw],
        "[limits]\nmax_connections_per_ip = 1\n[timeouts]\ntunnel_idle = \"1s\"\n",
    );
    let plain = proxy.url("/plain");
    for how in ["vanish", "reset", "close"] {
        let path = if how == "reset" { "/reset" } else { "/ws" };
        let mut c = RawConn::connect(proxy.addr()).await;
        c.send(UPGRADE.replace("/ws", path)).await;
        let head = c.head(T).await.unwrap().unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 101"), "{how}: {head}");
        // Counted once the 101 has gone out, which the client may read first.
        wait_status(&proxy, T, &format!("{how}: one tunnel"), |s| {
            (total(s, "tunnels") == 1).then_some(())
        })
        .await;
        assert_eq!(get(&plain).await.status, 429, "{how}: the slot is taken");
        match how {
            "vanish" => {}
            "reset" => c.send(b"\x81\x80\0\0\0\0").await,
            _ => c.io.shutdown().await.unwrap(),
        }
        wait_idle(&proxy, T).await;
        tests::wait_until(T, &format!("{how}: the per-IP slot back"), || {
            let plain = plain.clone();
            async move { get(&plain).await.status == 200 }
        })
        .await;
        drop(c);
    }
}

/// An extension the backend negotiates (permessage-deflate) is the peers' business: the
/// 101 keeps its field, frames with RSV1 set cross unchanged both ways, and the idle Close
/// still lands between two of them.
#[tokio::test]
async fn a_negotiated_extension_crosses_unchanged() {
    let (tx, mut seen) = mpsc::unbounded_channel::<Result<Frame, String>>();
    let raw = RawBackend::start(move |mut conn, _| {
        let tx = tx.clone();
        async move {
            let Some(req) = conn.request().await else {
                return;
            };
            let offered = req
                .headers
                .iter()
                .any(|(n, v)| n == "sec-websocket-extensions" && v.contains("permessage-deflate"));
            let head = SWITCH.replace(
                "\r\n\r\n",
                "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
            );
            let mut out = head.into_bytes();
            // A compressed text frame ("Hello", RFC 7692 §7.2.3.1), split from its head.
            out.extend_from_slice(&[0xc1, 0x07, 0xf2]);
            if !offered || !reply(&mut conn, out).await {
                return;
            }
            if !reply(&mut conn, [0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]).await {
                return;
            }
            for _ in 0..2 {
                let _ = tx.send(read_frame(&mut conn, T).await);
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], IDLE_1S);
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(UPGRADE.replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    ))
    .await;
    let head = c.head(T).await.unwrap().unwrap_or_default();
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
    let hello = read_frame(&mut c, T).await.unwrap();
    assert_eq!(hello.first, 0xc1);
    assert_eq!(hello.payload, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    let key = [9, 8, 7, 6];
    c.send(frame(
        0xc1,
        &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
        Some(key),
    ))
    .await;
    let echoed = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    let echoed = echoed.unwrap();
    assert_eq!((echoed.first, echoed.masked), (0xc1, true));
    assert_eq!(echoed.payload, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    let close = read_frame(&mut c, T).await.unwrap();
    assert_eq!(close.close(), Some((1001, "idle timeout".into())));
    let at_backend = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    assert_eq!(
        at_backend.unwrap().close(),
        Some((1001, "idle timeout".into()))
    );
}

/// Over a TLS backend the proxy's Close is written inside the TLS stream like any byte:
/// the client gets its 1001 at the idle timeout, and the tunnel is released.
#[tokio::test]
async fn an_idle_websocket_to_a_tls_backend_is_closed_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tests::TestCa::new(dir.path());
    let (cert, key) = ca.issue(&["backend.test", "127.0.0.1"]);
    let b = tests::Backend::start_with(
        "tls",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let proxy = tests::Proxy::start_config(&format!(
        "{IDLE_1S}\n{}\n[upstreams.app]\nbackends = [{{ addr = \"{}\", id = \"tls\" }}]\n\
         [upstreams.app.tls]\nca = \"{}\"\nserver_name = \"backend.test\"\n",
        listener(tests::free_port()),
        b.addr(),
        ca.pem.display(),
    ));
    let (mut ws, id) = tests::ws_connect(&proxy.ws_url("/ws")).await;
    assert_eq!(id, "tls");
    tests::ws_echo(&mut ws, "through tls").await;
    let got = tests::ws_recv(&mut ws, T).await;
    match got {
        Some(tokio_tungstenite::tungstenite::Message::Close(Some(f))) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1001, "idle timeout")
            );
        }
        other => panic!("expected the proxy's Close, got {other:?}"),
    }
    tests::ws_close(ws).await;
    wait_idle(&proxy, T).await;
}
