//! One shard: a single task that owns its rooms outright, so the hot path
//! takes no lock. Commands come from sessions; results of writes come back
//! from the writer on a second lane, and both are handled here, in order.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::room::{Room, TYPING_INTERVAL};
use super::Command;
use crate::metrics::{self, ShardMetrics};
use crate::model::{now, ConversationId, Message, MessageId, ObjectId, UserId};
use crate::store::writer::WriterHandle;
use crate::store::{ReadUpTo, StoreError, WriteOp, WriteOutcome};
use crate::wire::protocol::{self, ErrorCode};

/// Commands taken per wake-up: amortises the wake-up over a burst.
const BATCH: usize = 256;

/// The result of a write, sent back to the shard that asked for it.
pub(super) enum Done {
    Stored {
        conn_id: u64,
        /// The message as submitted; its `seq` comes with the outcome.
        message: Message,
        received: std::time::Instant,
        outcome: Result<WriteOutcome, StoreError>,
    },
    Viewed {
        conversation_id: ConversationId,
        conn_id: u64,
        message_id: MessageId,
        viewer_id: UserId,
        outcome: Result<WriteOutcome, StoreError>,
    },
    Read {
        conversation_id: ConversationId,
        conn_id: u64,
        user_id: UserId,
        /// An inbound `read` (answered here), not one riding on a `viewed`.
        request: bool,
        outcome: Result<WriteOutcome, StoreError>,
    },
}

/// What woke the shard's loop.
enum Wake {
    Done,
    TypingTick,
    TypingExpiry,
    Commands,
}

pub(super) struct Shard {
    rooms: HashMap<ConversationId, Room>,
    commands: mpsc::Receiver<Command>,
    /// Write results. Unbounded on purpose: every entry is a write the
    /// writer accepted, and the writer's own queue bounds those.
    done_rx: mpsc::UnboundedReceiver<Done>,
    done_tx: mpsc::UnboundedSender<Done>,
    writer: WriterHandle,
    /// Rooms holding back a typing change (see `Room::typing`).
    typing_held: Vec<ConversationId>,
    /// How long a relayed `is_typing: true` lasts without a new one.
    typing_ttl: Duration,
    /// (received + TTL, room) for every `is_typing: true` received: the TTL
    /// is one constant, so pushing at the back keeps it sorted, and only
    /// the front needs a timer. An entry whose typer was refreshed since,
    /// or stopped, finds nothing to end.
    typing_deadlines: VecDeque<(Instant, ConversationId)>,
    /// Busy time (how close this shard is to a full core) and delivery
    /// latency, this shard's own.
    metrics: ShardMetrics,
}

impl Shard {
    pub(super) fn new(
        commands: mpsc::Receiver<Command>,
        writer: WriterHandle,
        typing_ttl: Duration,
        metrics: ShardMetrics,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Shard {
            rooms: HashMap::new(),
            commands,
            done_rx,
            done_tx,
            writer,
            typing_held: Vec::new(),
            typing_ttl,
            typing_deadlines: VecDeque::new(),
            metrics,
        }
    }

    /// Runs until every sender of commands is gone (all sessions ended and
    /// the hub dropped), then returns.
    pub(super) async fn run(mut self) {
        let mut commands = Vec::with_capacity(BATCH);
        let mut done = Vec::with_capacity(BATCH);
        let mut typing_tick = tokio::time::interval(TYPING_INTERVAL / 2);
        typing_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Armed at the front typing deadline, polled only while there is
        // one: nobody typing costs nothing.
        let typing_expiry = tokio::time::sleep_until(Instant::now());
        tokio::pin!(typing_expiry);
        loop {
            if let Some(&(deadline, _)) = self.typing_deadlines.front() {
                if typing_expiry.deadline() != deadline {
                    typing_expiry.as_mut().reset(deadline);
                }
            }
            // Every arm is cancel-safe: `recv_many` on an mpsc receiver and
            // `Interval::tick` lose nothing when another arm wins. The arms
            // only say what woke the shard; the work comes after, timed
            // from the wake-up, so idle time is not counted as busy.
            let wake = tokio::select! {
                biased;
                n = self.done_rx.recv_many(&mut done, BATCH) => {
                    debug_assert!(n > 0, "the shard holds a sender of its own done lane");
                    Wake::Done
                }
                // Timers before commands: a flood of commands must not
                // starve them (ticks are rare and cheap).
                _ = typing_tick.tick(), if !self.typing_held.is_empty() => Wake::TypingTick,
                () = typing_expiry.as_mut(), if !self.typing_deadlines.is_empty() => {
                    Wake::TypingExpiry
                }
                n = self.commands.recv_many(&mut commands, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    Wake::Commands
                }
            };
            let woke = std::time::Instant::now();
            match wake {
                Wake::Done => {
                    for item in done.drain(..) {
                        self.on_done(item);
                    }
                }
                Wake::TypingTick => self.flush_typing(),
                Wake::TypingExpiry => self.expire_typing(),
                Wake::Commands => {
                    for command in commands.drain(..) {
                        self.on_command(command);
                    }
                }
            }
            metrics::add_seconds(&self.metrics.busy, woke.elapsed());
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Join {
                conversation,
                conn,
                recovering,
            } => {
                let room = self
                    .rooms
                    .entry(conversation.id)
                    .or_insert_with(|| Room::new(conversation));
                room.join(conn, recovering.is_some());
                if let Some(joined) = recovering {
                    let _ = joined.send(());
                }
            }
            Command::Recovered {
                conversation_id,
                conn_id,
                last_seq,
                frame,
            } => {
                if let Some(room) = self.rooms.get_mut(&conversation_id) {
                    room.release(conn_id, last_seq, frame);
                }
            }
            Command::Leave {
                conversation_id,
                conn_id,
            } => {
                if let Some(room) = self.rooms.get_mut(&conversation_id) {
                    room.leave(conn_id);
                    // Writes still in flight for it complete without a
                    // room: stored, relayed to nobody (nobody is here).
                    if room.is_empty() {
                        self.rooms.remove(&conversation_id);
                    }
                }
            }
            Command::Publish {
                conversation_id,
                conn_id,
                sender_id,
                text,
                client_id,
                received,
            } => self.publish(
                conversation_id,
                conn_id,
                sender_id,
                text,
                client_id,
                received,
            ),
            Command::Typing {
                conversation_id,
                conn_id,
                sender_id,
                is_typing,
            } => {
                if let Some(room) = self.rooms.get_mut(&conversation_id) {
                    let now = Instant::now();
                    let held = room.typing(sender_id, conn_id, is_typing, now);
                    if held && !self.typing_held.contains(&conversation_id) {
                        self.typing_held.push(conversation_id);
                    }
                    if is_typing {
                        self.typing_deadlines
                            .push_back((now + self.typing_ttl, conversation_id));
                    }
                }
            }
            Command::View {
                conversation_id,
                conn_id,
                viewer_id,
                message_id,
            } => self.view(conversation_id, conn_id, viewer_id, message_id),
            Command::Read {
                conversation_id,
                conn_id,
                user_id,
                seq,
            } => {
                if self.rooms.contains_key(&conversation_id) {
                    self.read(conversation_id, conn_id, user_id, ReadUpTo::Seq(seq));
                }
            }
        }
    }

    /// Stored, then relayed (CONTRACT §6): the message goes to the writer,
    /// and is relayed, echoed and acknowledged when its batch is durable
    /// and the store has given it its `seq` (`on_done`). A resend of a
    /// stored `client_id` is answered by the store as `Duplicate`: only the
    /// `ack` goes out.
    fn publish(
        &mut self,
        conversation_id: ConversationId,
        conn_id: u64,
        sender_id: UserId,
        text: String,
        client_id: Option<String>,
        received: std::time::Instant,
    ) {
        let Some(room) = self.rooms.get_mut(&conversation_id) else {
            return;
        };
        room.end_typing(sender_id, Instant::now());
        let message = Message {
            id: ObjectId::new(),
            conversation_id,
            sender_id,
            text,
            created_at: now(),
            seq: 0,
            client_id,
            viewed_by: None,
            viewed_at: None,
        };
        // A copy to relay once stored: the store takes the original.
        let relayed = message.clone();
        let refusal_client_id = message.client_id.clone();
        let done_tx = self.done_tx.clone();
        let submitted = self.writer.submit(
            WriteOp::Insert(message),
            Box::new(move |outcome| {
                let _ = done_tx.send(Done::Stored {
                    conn_id,
                    message: relayed,
                    received,
                    outcome,
                });
            }),
        );
        if submitted.is_err() {
            let refusal = protocol::error_event(
                ErrorCode::Overloaded,
                "the server cannot store messages fast enough; resend later",
                refusal_client_id.as_deref(),
            );
            room.settle(conn_id);
            room.send_to(conn_id, refusal);
        }
    }

    /// `viewed` goes through the same ordered writer as messages, so it lands
    /// after the insert it names; it is relayed once applied.
    fn view(
        &mut self,
        conversation_id: ConversationId,
        conn_id: u64,
        viewer_id: UserId,
        message_id: MessageId,
    ) {
        let Some(room) = self.rooms.get_mut(&conversation_id) else {
            return;
        };
        // A repeat: the store would answer `AlreadyViewed`, which sends nothing.
        if room.viewed.contains(viewer_id, message_id) {
            // Answered (with nothing): the reader may send more.
            room.settle(conn_id);
            return;
        }
        let done_tx = self.done_tx.clone();
        let op = WriteOp::View {
            conversation_id,
            message_id,
            viewer_id,
            at: now(),
        };
        let submitted = self.writer.submit(
            op,
            Box::new(move |outcome| {
                let _ = done_tx.send(Done::Viewed {
                    conversation_id,
                    conn_id,
                    message_id,
                    viewer_id,
                    outcome,
                });
            }),
        );
        if submitted.is_err() {
            let refusal = protocol::error_event(
                ErrorCode::Overloaded,
                "the server cannot store read receipts fast enough; resend later",
                None,
            );
            room.settle(conn_id);
            room.send_to(conn_id, refusal);
            return;
        }
        // A `viewed` also moves the viewer's cursor to the message; the
        // store applies it after the view, and refuses it with the view.
        self.read(
            conversation_id,
            conn_id,
            viewer_id,
            ReadUpTo::Message(message_id),
        );
    }

    /// Moves a read cursor through the writer; a move is relayed to every
    /// connection of the room, the reader's own included (its other tabs
    /// clear their badges). `ReadUpTo::Seq` is a request of its own (it
    /// settles); `ReadUpTo::Message` rides on a `viewed`, which settles.
    fn read(
        &mut self,
        conversation_id: ConversationId,
        conn_id: u64,
        user_id: UserId,
        up_to: ReadUpTo,
    ) {
        let request = matches!(up_to, ReadUpTo::Seq(_));
        let done_tx = self.done_tx.clone();
        let submitted = self.writer.submit(
            WriteOp::Read {
                conversation_id,
                user_id,
                up_to,
            },
            Box::new(move |outcome| {
                let _ = done_tx.send(Done::Read {
                    conversation_id,
                    conn_id,
                    user_id,
                    request,
                    outcome,
                });
            }),
        );
        if submitted.is_err() && request {
            if let Some(room) = self.rooms.get_mut(&conversation_id) {
                room.settle(conn_id);
                room.send_to(
                    conn_id,
                    protocol::error_event(
                        ErrorCode::Overloaded,
                        "the server cannot store read state fast enough; resend later",
                        None,
                    ),
                );
            }
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Read {
                conversation_id,
                conn_id,
                user_id,
                request,
                outcome,
            } => {
                let Some(room) = self.rooms.get_mut(&conversation_id) else {
                    return;
                };
                if request {
                    room.settle(conn_id);
                }
                let refusal = match outcome {
                    Ok(WriteOutcome::ReadMoved { last_read_seq }) => {
                        let frame = protocol::read_event(&conversation_id, user_id, last_read_seq);
                        room.broadcast(&frame, None);
                        None
                    }
                    Ok(WriteOutcome::ReadUnchanged { .. }) => None,
                    Ok(WriteOutcome::SeqBeyondLast { last_seq }) => Some((
                        ErrorCode::BadSeq,
                        format!("seq is beyond the conversation's last seq {last_seq}"),
                    )),
                    // The `viewed` it rode on reports the missing message.
                    Ok(WriteOutcome::ViewTargetMissing) if !request => None,
                    other => {
                        tracing::error!(outcome = ?other, %conversation_id, "read cursor not stored");
                        Some((
                            ErrorCode::Internal,
                            "the read state could not be stored".into(),
                        ))
                    }
                };
                if let (Some((code, message)), true) = (refusal, request) {
                    room.send_to(conn_id, protocol::error_event(code, &message, None));
                }
            }
            Done::Stored {
                conn_id,
                mut message,
                received,
                outcome,
            } => {
                let conversation_id = message.conversation_id;
                let Some(room) = self.rooms.get_mut(&conversation_id) else {
                    return;
                };
                room.settle(conn_id);
                let client_id = message.client_id.as_deref();
                let ack = match outcome {
                    Ok(WriteOutcome::Inserted { seq }) => {
                        message.seq = seq;
                        room.relay(&protocol::message_event(&message), seq, conn_id);
                        metrics::get().messages_relayed.inc();
                        self.metrics
                            .delivery
                            .observe(received.elapsed().as_secs_f64());
                        protocol::ack_event(&message.id, seq, message.client_id.as_deref())
                    }
                    Ok(WriteOutcome::Duplicate { existing, seq }) => {
                        protocol::ack_event(&existing, seq, client_id)
                    }
                    Ok(other) => {
                        tracing::error!(outcome = ?other, %conversation_id, "message not stored");
                        protocol::error_event(
                            ErrorCode::Internal,
                            "the message could not be stored",
                            client_id,
                        )
                    }
                    Err(error) => {
                        tracing::error!(%error, %conversation_id, "message not stored");
                        protocol::error_event(
                            ErrorCode::Internal,
                            "the message could not be stored; resend it",
                            client_id,
                        )
                    }
                };
                room.send_to(conn_id, ack);
            }
            Done::Viewed {
                conversation_id,
                conn_id,
                message_id,
                viewer_id,
                outcome,
            } => {
                let Some(room) = self.rooms.get_mut(&conversation_id) else {
                    return;
                };
                room.settle(conn_id);
                match outcome {
                    Ok(WriteOutcome::Viewed) => {
                        room.viewed.insert(viewer_id, message_id);
                        let frame = protocol::viewed_event(&conversation_id, &message_id, viewer_id);
                        room.broadcast(&frame, Some(conn_id));
                    }
                    // A repeat: accepted, and the first one was relayed.
                    Ok(WriteOutcome::AlreadyViewed) => room.viewed.insert(viewer_id, message_id),
                    Ok(WriteOutcome::ViewTargetMissing) => room.send_to(
                        conn_id,
                        protocol::error_event(
                            ErrorCode::MessageNotFound,
                            "no message with that id from the other participant in this conversation",
                            None,
                        ),
                    ),
                    other => {
                        tracing::error!(outcome = ?other, %conversation_id, "view not stored");
                        room.send_to(
                            conn_id,
                            protocol::error_event(
                                ErrorCode::Internal,
                                "the read receipt could not be stored",
                                None,
                            ),
                        );
                    }
                }
            }
        }
    }

    fn flush_typing(&mut self) {
        let now = Instant::now();
        let rooms = &mut self.rooms;
        self.typing_held.retain(|id| match rooms.get_mut(id) {
            Some(room) => room.flush_typing(now),
            None => false,
        });
    }

    /// Ends the typing whose deadline has come (`Room::expire_typing`
    /// checks against the latest `true`, so a stale entry ends nothing).
    fn expire_typing(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, conversation_id)) = self.typing_deadlines.front() {
            if deadline > now {
                break;
            }
            self.typing_deadlines.pop_front();
            if let Some(room) = self.rooms.get_mut(&conversation_id) {
                room.expire_typing(now, self.typing_ttl);
            }
        }
    }
}

#[cfg(test)]
mod tests;
