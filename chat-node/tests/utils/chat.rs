//! A raw Socket.IO chat client of `/` that keeps every event it reads.

use serde_json::{json, Value};

use super::{TestServer, Ws};

/// A client connected with `auth`, past its welcome (kept in `welcome`).
pub struct Client {
    pub ws: Ws,
    pub events: Vec<(String, Value)>,
    next_ack: u32,
    pub welcome: Value,
}

impl Client {
    pub async fn connect(server: &TestServer, auth: Value) -> Self {
        let (mut ws, _) = Ws::open(server).await;
        ws.send_text(&format!("40{auth}")).await;
        assert!(ws.recv_text().await.starts_with("40{"));
        let mut client = Self {
            ws,
            events: Vec::new(),
            next_ack: 1,
            welcome: Value::Null,
        };
        client.welcome = client.event("welcome", |_| true).await;
        client
    }

    /// Reads one frame: an event is kept, an ack is returned.
    pub async fn read(&mut self) -> Option<(u32, Value)> {
        let text = self.ws.recv_text().await;
        if let Some(event) = text.strip_prefix("42") {
            let args: Value = serde_json::from_str(event).unwrap();
            self.events
                .push((args[0].as_str().unwrap().to_owned(), args[1].clone()));
            return None;
        }
        let ack = text.strip_prefix("43").expect("an event or an ack");
        let split = ack.find('[').unwrap();
        let args: Value = serde_json::from_str(&ack[split..]).unwrap();
        Some((ack[..split].parse().unwrap(), args[0].clone()))
    }

    /// Emits `event` with `arg` and returns the ack's answer.
    pub async fn call(&mut self, event: &str, arg: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.ws
            .send_text(&format!("42{id}{}", json!([event, arg])))
            .await;
        loop {
            if let Some((ack, answer)) = self.read().await {
                assert_eq!(ack, id);
                return answer;
            }
        }
    }

    /// The first `event` (kept or still to come) whose payload satisfies `pred`.
    pub async fn event(&mut self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut seen = 0;
        loop {
            if let Some((_, v)) = self.events[seen..]
                .iter()
                .find(|(e, v)| e == event && pred(v))
            {
                return v.clone();
            }
            seen = self.events.len();
            assert!(self.read().await.is_none(), "an ack nobody asked for");
        }
    }
}
