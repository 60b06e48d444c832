//! A scripted MongoDB on 127.0.0.1: speaks OP_MSG, answers the driver's
//! handshake as a standalone server, records every other command it gets,
//! and answers each through the test's script (or a plain success).

use std::sync::{Arc, Mutex};

use mongodb::bson::{doc, Bson, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OP_MSG: i32 = 2013;
const CHECKSUM_PRESENT: u32 = 1;

/// What the script answers to one command.
pub enum Reply {
    /// This reply document.
    Document(Document),
    /// The default success for the command.
    Default,
    /// Close the connection without answering (a network failure).
    HangUp,
    /// Keep the connection open and never answer (a stalled server).
    Never,
}

type Script = Box<dyn FnMut(&Document) -> Reply + Send>;

struct State {
    commands: Mutex<Vec<Document>>,
    script: Mutex<Script>,
}

pub struct WireServer {
    port: u16,
    state: Arc<State>,
}

impl WireServer {
    pub async fn start() -> WireServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            commands: Mutex::new(Vec::new()),
            script: Mutex::new(Box::new(|_: &Document| Reply::Default)),
        });
        let accepting = Arc::clone(&state);
        tokio::spawn(async move {
            let mut connection_id = 0;
            while let Ok((stream, _)) = listener.accept().await {
                connection_id += 1;
                tokio::spawn(serve(stream, Arc::clone(&accepting), connection_id));
            }
        });
        WireServer { port, state }
    }

    /// A URI for one direct connection with short timeouts.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Answers every later command through `script`.
    pub fn script(&self, script: impl FnMut(&Document) -> Reply + Send + 'static) {
        *self.state.script.lock().unwrap() = Box::new(script);
    }

    /// Every recorded command (handshakes excluded), oldest first; document
    /// sequences (`documents`, `updates`) are merged in as arrays.
    pub fn commands(&self) -> Vec<Document> {
        self.state.commands.lock().unwrap().clone()
    }

    /// The recorded commands named `name` (`insert`, `find`, ...).
    pub fn commands_named(&self, name: &str) -> Vec<Document> {
        self.commands()
            .into_iter()
            .filter(|command| command_name(command) == name)
            .collect()
    }

    pub fn forget_commands(&self) {
        self.state.commands.lock().unwrap().clear();
    }
}

pub fn command_name(command: &Document) -> &str {
    command.keys().next().map(String::as_str).unwrap_or("")
}

async fn serve(mut stream: TcpStream, state: Arc<State>, connection_id: i32) {
    let mut request_ids = 1000;
    loop {
        let mut header = [0u8; 16];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let length = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let request_id = i32::from_le_bytes(header[4..8].try_into().unwrap());
        let op_code = i32::from_le_bytes(header[12..16].try_into().unwrap());
        let mut body = vec![0u8; length - 16];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        assert_eq!(op_code, OP_MSG, "the driver only speaks OP_MSG");
        let command = parse_op_msg(&body);
        let reply = match command_name(&command) {
            "hello" | "isMaster" | "ismaster" => hello(connection_id),
            _ => {
                state.commands.lock().unwrap().push(command.clone());
                let scripted = (state.script.lock().unwrap())(&command);
                match scripted {
                    Reply::Document(reply) => reply,
                    Reply::Default => default_reply(&command),
                    Reply::HangUp => return,
                    Reply::Never => std::future::pending().await,
                }
            }
        };
        request_ids += 1;
        if stream
            .write_all(&op_msg(request_ids, request_id, &reply))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The body document, with each document sequence added under its name.
fn parse_op_msg(message: &[u8]) -> Document {
    let flags = u32::from_le_bytes(message[0..4].try_into().unwrap());
    let end = if flags & CHECKSUM_PRESENT != 0 {
        message.len() - 4
    } else {
        message.len()
    };
    let mut at = 4;
    let mut body = Document::new();
    let mut sequences = Vec::new();
    while at < end {
        let kind = message[at];
        at += 1;
        if kind == 0 {
            let size = bson_size(&message[at..]);
            body = Document::from_reader(&message[at..at + size]).unwrap();
            at += size;
        } else {
            let size = bson_size(&message[at..]);
            let section_end = at + size;
            let name_end = at + 4 + message[at + 4..].iter().position(|&b| b == 0).unwrap();
            let name = String::from_utf8(message[at + 4..name_end].to_vec()).unwrap();
            let mut documents = Vec::new();
            let mut doc_at = name_end + 1;
            while doc_at < section_end {
                let doc_size = bson_size(&message[doc_at..]);
                let document = Document::from_reader(&message[doc_at..doc_at + doc_size]).unwrap();
                documents.push(Bson::Document(document));
                doc_at += doc_size;
            }
            sequences.push((name, documents));
            at = section_end;
        }
    }
    for (name, documents) in sequences {
        body.insert(name, documents);
    }
    body
}

fn bson_size(bytes: &[u8]) -> usize {
    i32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize
}

fn op_msg(request_id: i32, response_to: i32, reply: &Document) -> Vec<u8> {
    let mut document = Vec::new();
    reply.to_writer(&mut document).unwrap();
    let length = 16 + 4 + 1 + document.len();
    let mut out = Vec::with_capacity(length);
    out.extend((length as i32).to_le_bytes());
    out.extend(request_id.to_le_bytes());
    out.extend(response_to.to_le_bytes());
    out.extend(OP_MSG.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.push(0);
    out.extend(document);
    out
}

/// A standalone, writable server of MongoDB 7.0's wire version.
fn hello(connection_id: i32) -> Document {
    doc! {
        "helloOk": true,
        "isWritablePrimary": true,
        "ismaster": true,
        "maxBsonObjectSize": 16_777_216,
        "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000,
        "localTime": mongodb::bson::DateTime::now(),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": connection_id,
        "minWireVersion": 0,
        "maxWireVersion": 21,
        "readOnly": false,
        "ok": 1.0,
    }
}

/// What a healthy server answers when nothing else is scripted.
pub fn default_reply(command: &Document) -> Document {
    let count = |field: &str| {
        command
            .get_array(field)
            .map(|items| items.len() as i32)
            .unwrap_or(0)
    };
    match command_name(command) {
        "insert" => doc! { "n": count("documents"), "ok": 1.0 },
        "update" => doc! { "n": count("updates"), "nModified": count("updates"), "ok": 1.0 },
        "find" | "aggregate" => cursor_reply(command, Vec::new()),
        "findAndModify" => {
            doc! { "lastErrorObject": { "n": 0, "updatedExisting": false }, "value": Bson::Null, "ok": 1.0 }
        }
        "createIndexes" => doc! { "numIndexesBefore": 1, "numIndexesAfter": 2, "ok": 1.0 },
        _ => doc! { "ok": 1.0 },
    }
}

/// A `find` or `aggregate` reply holding `documents` in one batch (cursor
/// closed).
pub fn cursor_reply(command: &Document, documents: Vec<Document>) -> Document {
    let collection = command
        .get_str("find")
        .or_else(|_| command.get_str("aggregate"))
        .unwrap_or("unknown");
    let database = command.get_str("$db").unwrap_or("chat");
    doc! {
        "cursor": { "firstBatch": documents, "id": 0_i64, "ns": format!("{database}.{collection}") },
        "ok": 1.0,
    }
}
