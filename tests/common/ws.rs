//! A WebSocket test client (tokio-tungstenite: an implementation independent
//! of the server's) that speaks the JSON events.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for an expected event before failing.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the next read produced.
#[derive(Debug)]
pub enum Next {
    Event(Value),
    Closed(Option<u16>),
    Nothing,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Client { ws }
    }

    /// The HTTP status of a refused handshake (panics if it was accepted).
    pub async fn refused_status(url: &str) -> u16 {
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => panic!("handshake unexpectedly accepted: {url}"),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16()
            }
            Err(other) => panic!("unexpected handshake error: {other}"),
        }
    }

    pub async fn send(&mut self, event: Value) {
        self.ws
            .send(Message::text(event.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next event, close, or nothing within `wait`. Pings are skipped.
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return Next::Nothing,
                Ok(None) => return Next::Closed(None),
                Ok(Some(Err(_))) => return Next::Closed(None),
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Next::Event(
                        serde_json::from_str(text.as_str()).expect("server sent JSON"),
                    )
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Next::Closed(frame.map(|f| u16::from(f.code)))
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next event; fails the test on close or silence.
    pub async fn event(&mut self) -> Value {
        match self.next_within(WAIT).await {
            Next::Event(event) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// The next event, which must be of `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let event = self.event().await;
        assert_eq!(event["type"], kind, "unexpected event {event}");
        event
    }

    /// Asserts nothing arrives for a short while.
    pub async fn expect_silence(&mut self) {
        match self.next_within(Duration::from_millis(300)).await {
            Next::Nothing => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Reads until the close frame; returns its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Next::Closed(code) => return code,
                Next::Event(_) => continue,
                Next::Nothing => panic!("no close frame"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        while let Some(Ok(_)) = self.ws.next().await {}
    }
}

/// A student and then a mentor in one conversation, with the presence
/// events of joining consumed. The student's first event shows its session
/// joined; only then does the mentor connect, so the events come in a known
/// order (a handshake returning does not mean the session has joined yet).
pub async fn join_pair(student_url: &str, mentor_url: &str) -> (Client, Client) {
    let mut student = Client::connect(student_url).await;
    assert_eq!(student.expect("presence").await["online"], false);
    let mut mentor = Client::connect(mentor_url).await;
    assert_eq!(mentor.expect("presence").await["online"], true);
    assert_eq!(student.expect("presence").await["online"], true);
    (student, mentor)
}
