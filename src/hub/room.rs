//! One conversation's live state inside its shard: the connections in it,
//! who of the two participants is here, what is held back for connections
//! still recovering, and what was last relayed of each participant's typing.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::conn::{ConnHandle, SendError};
use super::viewed::RecentViews;
use crate::model::{Conversation, Seq, UserId};
use crate::wire::close::Close;
use crate::wire::protocol;

/// At most one typing relay per participant per this interval (4 a
/// second): a flood of typing frames costs the others nothing.
pub(crate) const TYPING_INTERVAL: Duration = Duration::from_millis(250);
/// A repeated `is_typing: true` is relayed again after this long: clients
/// (the demo's among them) re-send it as a heartbeat and hide a peer's
/// indicator when it stops.
pub(crate) const TYPING_REFRESH: Duration = Duration::from_secs(2);

pub(crate) struct Room {
    pub(crate) conversation: Conversation,
    members: Vec<ConnHandle>,
    /// Views stored lately: a repeat of one is dropped before the writer.
    pub(crate) viewed: RecentViews,
    /// One slot per participant who has sent `typing` (at most two).
    typing: Vec<TypingSlot>,
    /// Members whose replay (`since_seq`) is still being queued: what the
    /// room sends them waits here, so it follows the replay.
    held: Vec<Held>,
}

/// What a recovering member gets once its replay is queued.
struct Held {
    conn_id: u64,
    /// (seq or 0 for other events, a reply to its own frame, the frame).
    frames: Vec<(Seq, Route, Bytes)>,
    /// Bytes of others' frames held, bounded like its queue.
    others_bytes: usize,
}

/// Bytes of others' frames held for one recovering member at most: beyond
/// it the member is a slow consumer (1013), as its queue would make it.
const HELD_MAX_BYTES: usize = 4 << 20;

/// How a frame reaches one member.
#[derive(Clone, Copy, Debug)]
enum Route {
    /// A reply to its own frame (echo, `ack`, `error`): never a
    /// slow-consumer close, see `ConnHandle::send_own`.
    Own,
    /// Others' traffic, bounded by its queue.
    Others,
}

impl Route {
    fn send(self, member: &ConnHandle, frame: Bytes) -> Result<(), SendError> {
        match self {
            Route::Own => member.send_own(frame),
            Route::Others => member.send(frame),
        }
    }
}

impl Held {
    fn push(
        &mut self,
        member: &ConnHandle,
        seq: Seq,
        route: Route,
        frame: &Bytes,
    ) -> Result<(), SendError> {
        if let Route::Others = route {
            self.others_bytes += frame.len();
            if self.others_bytes > HELD_MAX_BYTES {
                member.close(Close::SlowConsumer);
                return Err(SendError::SlowConsumer);
            }
        }
        self.frames.push((seq, route, frame.clone()));
        Ok(())
    }
}

/// What was last relayed of one participant's typing, and the change held
/// back until [`TYPING_INTERVAL`] has passed since.
struct TypingSlot {
    user: UserId,
    /// `None` until the first relay, so a participant's first `typing` is
    /// always relayed, whatever its value.
    relayed: Option<bool>,
    relayed_at: Instant,
    /// (is_typing, the connection that sent it): relayed at the next flush.
    held: Option<(bool, u64)>,
    /// The last `is_typing: true` received (not relayed: a repeat is
    /// relayed only every [`TYPING_REFRESH`]) and the connection that sent
    /// it; a relayed `true` ends [`Room::expire_typing`]'s TTL after it.
    refreshed: Option<(Instant, u64)>,
}

impl Room {
    pub(crate) fn new(conversation: Conversation) -> Self {
        Room {
            conversation,
            members: Vec::new(),
            viewed: RecentViews::default(),
            typing: Vec::new(),
            held: Vec::new(),
        }
    }

    /// A participant's `typing` from connection `conn_id`: relayed to every
    /// other connection when it changes the state last relayed, at most once
    /// per [`TYPING_INTERVAL`]; a change inside the interval is held (the
    /// latest wins). A repeated `true` is relayed again after
    /// [`TYPING_REFRESH`]. Returns true when a change is held and
    /// [`Room::flush_typing`] must run later.
    pub(crate) fn typing(
        &mut self,
        user: UserId,
        conn_id: u64,
        is_typing: bool,
        now: Instant,
    ) -> bool {
        let index = match self.typing_slot(user) {
            Some(index) => index,
            None => {
                self.typing.push(TypingSlot {
                    user,
                    relayed: None,
                    relayed_at: now,
                    held: None,
                    refreshed: None,
                });
                self.typing.len() - 1
            }
        };
        let slot = &mut self.typing[index];
        if is_typing {
            slot.refreshed = Some((now, conn_id));
        }
        if slot.held.is_some() {
            slot.held = Some((is_typing, conn_id));
            return true;
        }
        if slot.relayed == Some(is_typing)
            && !(is_typing && now >= slot.relayed_at + TYPING_REFRESH)
        {
            return false;
        }
        if slot.relayed.is_some() && now < slot.relayed_at + TYPING_INTERVAL {
            slot.held = Some((is_typing, conn_id));
            return true;
        }
        self.relay_typing(index, is_typing, conn_id, now);
        false
    }

    /// Relays the held typing changes whose interval has passed. Returns true
    /// while some change is still held.
    pub(crate) fn flush_typing(&mut self, now: Instant) -> bool {
        let mut still_held = false;
        for user in self.typing_users() {
            let Some(index) = self.typing_slot(user) else {
                continue;
            };
            let slot = &mut self.typing[index];
            let Some((is_typing, conn_id)) = slot.held else {
                continue;
            };
            if now < slot.relayed_at + TYPING_INTERVAL {
                still_held = true;
                continue;
            }
            slot.held = None;
            if slot.relayed != Some(is_typing) {
                self.relay_typing(index, is_typing, conn_id, now);
            }
        }
        still_held
    }

    /// Ends every relayed `true` not refreshed for `ttl`, as if its typer
    /// had sent `false` (CONTRACT §6: typing cannot get stuck).
    pub(crate) fn expire_typing(&mut self, now: Instant, ttl: Duration) {
        for user in self.typing_users() {
            let Some(index) = self.typing_slot(user) else {
                continue;
            };
            let slot = &self.typing[index];
            if let (Some(true), Some((at, _))) = (slot.relayed, slot.refreshed) {
                if now >= at + ttl {
                    self.stop_typing(index, now);
                }
            }
        }
    }

    /// `user` sent a message: their typing ends at once, and a change still
    /// held is dropped (it was typed before the message).
    pub(crate) fn end_typing(&mut self, user: UserId, now: Instant) {
        if let Some(index) = self.typing_slot(user) {
            self.stop_typing(index, now);
        }
    }

    /// The users with a typing slot, copied: a relay may drop a member
    /// whose queue is gone, and their leaving removes their slot, so a loop
    /// over slots finds each again by user rather than by index.
    fn typing_users(&self) -> Vec<UserId> {
        self.typing.iter().map(|slot| slot.user).collect()
    }

    fn typing_slot(&self, user: UserId) -> Option<usize> {
        self.typing.iter().position(|slot| slot.user == user)
    }

    /// Relays `false` for a slot whose relayed state is `true`, to every
    /// connection but the one that sent the last `true`: the `false` that
    /// connection would have sent. Drops a held change either way.
    fn stop_typing(&mut self, index: usize, now: Instant) {
        let slot = &mut self.typing[index];
        slot.held = None;
        // A relayed `true` was received, so `refreshed` names its sender.
        if let (Some(true), Some((_, typer))) = (slot.relayed, slot.refreshed) {
            self.relay_typing(index, false, typer, now);
        }
    }

    fn relay_typing(&mut self, index: usize, is_typing: bool, conn_id: u64, now: Instant) {
        let slot = &mut self.typing[index];
        slot.relayed = Some(is_typing);
        slot.relayed_at = now;
        let frame = protocol::typing_event(&self.conversation.id, slot.user, is_typing);
        self.broadcast(&frame, Some(conn_id));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(crate) fn member(&self, conn_id: u64) -> Option<&ConnHandle> {
        self.members.iter().find(|m| m.id() == conn_id)
    }

    fn is_here(&self, user: UserId) -> bool {
        self.members.iter().any(|m| m.user_id() == user)
    }

    /// The conversation's other participant, seen from `user`.
    fn other_than(&self, user: UserId) -> UserId {
        if user == self.conversation.mentor_id {
            self.conversation.student_id
        } else {
            self.conversation.mentor_id
        }
    }

    /// Adds a connection. Tells the others when this is the user's first
    /// connection here, and tells the newcomer whether the other participant
    /// is here. A `recovering` one gets nothing until [`Room::release`].
    pub(crate) fn join(&mut self, conn: ConnHandle, recovering: bool) {
        let user = conn.user_id();
        let conn_id = conn.id();
        let first_of_user = !self.is_here(user);
        let other = self.other_than(user);
        let other_online = self.is_here(other);
        self.members.push(conn);
        if recovering {
            self.held.push(Held {
                conn_id,
                frames: Vec::new(),
                others_bytes: 0,
            });
        }
        self.deliver(&protocol::presence_event(other, other_online), 0, |m| {
            (m.id() == conn_id).then_some(Route::Others)
        });
        if first_of_user {
            self.broadcast_to_others_of(user, &protocol::presence_event(user, true));
        }
    }

    /// Removes a connection (a no-op if it already left); tells the others
    /// when it was the user's last connection here.
    pub(crate) fn leave(&mut self, conn_id: u64) {
        let Some(index) = self.members.iter().position(|m| m.id() == conn_id) else {
            return;
        };
        let user = self.members.swap_remove(index).user_id();
        self.held.retain(|held| held.conn_id != conn_id);
        if !self.is_here(user) {
            // A typer who is gone is not typing: the others hear it before
            // the user goes offline.
            if let Some(index) = self.typing_slot(user) {
                self.stop_typing(index, Instant::now());
            }
            // Nothing held is relayed after the user is gone, and their
            // first `typing` after a return is news again.
            self.typing.retain(|slot| slot.user != user);
            self.broadcast_to_others_of(user, &protocol::presence_event(user, false));
        }
    }

    /// The replay of recovering connection `conn_id` is queued: queues
    /// `recovered`, then what was held back for it, less the messages the
    /// replay carried (`seq <= last_seq`).
    pub(crate) fn release(&mut self, conn_id: u64, last_seq: Seq, recovered: Bytes) {
        let Some(index) = self.held.iter().position(|held| held.conn_id == conn_id) else {
            return;
        };
        let held = self.held.swap_remove(index);
        let Some(member) = self.member(conn_id) else {
            return;
        };
        let mut sent = member.send_own(recovered);
        for (seq, route, frame) in held.frames {
            if sent.is_err() {
                break;
            }
            if seq == 0 || seq > last_seq {
                sent = route.send(member, frame);
            }
        }
        if sent.is_err() {
            self.leave(conn_id);
        }
    }

    /// Relays a stored message (number `seq`) to every member; for its
    /// sender's connection it is the echo of its own frame.
    pub(crate) fn relay(&mut self, frame: &Bytes, seq: Seq, sender_conn: u64) {
        self.deliver(frame, seq, |member| {
            Some(if member.id() == sender_conn {
                Route::Own
            } else {
                Route::Others
            })
        });
    }

    /// Queues `frame` to every member except connection `except`. Members
    /// whose queue is full or gone are dropped from the room at once (a full
    /// one has been asked to close with 1013).
    pub(crate) fn broadcast(&mut self, frame: &Bytes, except: Option<u64>) {
        self.deliver(frame, 0, |member| {
            (Some(member.id()) != except).then_some(Route::Others)
        });
    }

    fn broadcast_to_others_of(&mut self, user: UserId, frame: &Bytes) {
        self.deliver(frame, 0, |member| {
            (member.user_id() != user).then_some(Route::Others)
        });
    }

    /// Queues a reply to connection `conn_id`'s own frame (an `ack`, an
    /// `error`): never a slow-consumer close, see `ConnHandle::send_own`.
    pub(crate) fn send_to(&mut self, conn_id: u64, frame: Bytes) {
        self.deliver(&frame, 0, |member| {
            (member.id() == conn_id).then_some(Route::Own)
        });
    }

    /// Queues `frame` (message number `seq`, or 0) to the members `route`
    /// addresses, or holds it for those recovering; drops from the room
    /// those whose queue was full or gone.
    fn deliver(&mut self, frame: &Bytes, seq: Seq, route: impl Fn(&ConnHandle) -> Option<Route>) {
        let mut dropped = Vec::new();
        for member in &self.members {
            let Some(route) = route(member) else {
                continue;
            };
            let held = self
                .held
                .iter_mut()
                .find(|held| held.conn_id == member.id());
            let sent = match held {
                Some(held) => held.push(member, seq, route, frame),
                None => route.send(member, frame.clone()),
            };
            if sent.is_err() {
                dropped.push(member.id());
            }
        }
        for conn_id in dropped {
            self.leave(conn_id);
        }
    }

    /// Connection `conn_id`'s request is answered (or needs no answer): its
    /// reader may send another.
    pub(crate) fn settle(&self, conn_id: u64) {
        if let Some(member) = self.member(conn_id) {
            member.request_settled();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::conn::Receiver;
    use crate::model::{Millis, ObjectId};
    use crate::wire::close::Close;

    fn conversation() -> Conversation {
        Conversation {
            id: ObjectId::new(),
            lesson_id: 1,
            mentor_id: 10,
            student_id: 20,
            created_at: Millis(0),
            last_seq: 0,
        }
    }

    fn drain(rx: &mut Receiver) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            events.push(serde_json::from_slice(&frame[2..]).unwrap());
        }
        events
    }

    #[test]
    fn presence_follows_first_and_last_connection_of_a_user() {
        let mut room = Room::new(conversation());
        let (mentor, mut mentor_rx) = ConnHandle::new(1, 10, 4096);
        room.join(mentor, false);
        assert_eq!(
            drain(&mut mentor_rx),
            vec![serde_json::json!({"type":"presence","user_id":20,"online":false})]
        );

        let (tab1, mut tab1_rx) = ConnHandle::new(2, 20, 4096);
        room.join(tab1, false);
        assert_eq!(
            drain(&mut tab1_rx),
            vec![serde_json::json!({"type":"presence","user_id":10,"online":true})]
        );
        assert_eq!(
            drain(&mut mentor_rx),
            vec![serde_json::json!({"type":"presence","user_id":20,"online":true})]
        );

        let (tab2, _tab2_rx) = ConnHandle::new(3, 20, 4096);
        room.join(tab2, false);
        assert!(drain(&mut mentor_rx).is_empty(), "a second tab is not news");
        assert!(
            drain(&mut tab1_rx).is_empty(),
            "a user is not told about their own tabs"
        );

        room.leave(2);
        assert!(
            drain(&mut mentor_rx).is_empty(),
            "one tab left; the student is still here"
        );
        room.leave(3);
        assert_eq!(
            drain(&mut mentor_rx),
            vec![serde_json::json!({"type":"presence","user_id":20,"online":false})]
        );
        room.leave(3);
        assert!(drain(&mut mentor_rx).is_empty(), "leaving twice is a no-op");
    }

    #[test]
    fn a_slow_member_is_dropped_without_affecting_others() {
        let mut room = Room::new(conversation());
        let (fast, mut fast_rx) = ConnHandle::new(1, 10, 65536);
        let (slow, _slow_rx) = ConnHandle::new(2, 20, 140);
        room.join(fast, false);
        room.join(slow.clone(), false);
        drain(&mut fast_rx);
        for _ in 0..10 {
            room.broadcast(&Bytes::from_static(b"\x81\x02{}"), None);
        }
        assert_eq!(slow.close_requested(), Some(Close::SlowConsumer));
        assert!(room.member(2).is_none());
        let received = drain(&mut fast_rx);
        // 10 broadcasts plus the presence event telling the student left,
        // which comes right after the broadcast that found the queue full.
        assert_eq!(received.len(), 11);
        let offline: Vec<_> = received
            .iter()
            .filter(|e| e["type"] == "presence")
            .collect();
        assert_eq!(
            offline,
            vec![&serde_json::json!({"type":"presence","user_id":20,"online":false})]
        );
    }

    #[test]
    fn typing_is_relayed_once_per_change_and_at_most_every_interval() {
        let mut room = Room::new(conversation());
        let (mentor, mut mentor_rx) = ConnHandle::new(1, 10, 65536);
        let (student, mut student_rx) = ConnHandle::new(2, 20, 65536);
        room.join(mentor, false);
        room.join(student, false);
        drain(&mut mentor_rx);
        drain(&mut student_rx);
        let start = Instant::now();
        // The first typing is relayed whatever its value.
        assert!(!room.typing(20, 2, false, start));
        assert_eq!(drain(&mut mentor_rx).len(), 1);
        // A flood of the same state and of fast changes.
        let mut held = false;
        for i in 0..10_000u32 {
            held = room.typing(
                20,
                2,
                i % 2 == 0,
                start + Duration::from_micros(u64::from(i)),
            );
        }
        assert!(held, "the last change is held for the next flush");
        assert!(
            drain(&mut mentor_rx).is_empty(),
            "nothing inside the interval"
        );
        assert!(drain(&mut student_rx).is_empty(), "never to the sender");
        // The latest state (i = 9999: false) is what the flush relays; it
        // equals the relayed state, so nothing is sent.
        assert!(!room.flush_typing(start + TYPING_INTERVAL));
        assert!(drain(&mut mentor_rx).is_empty());
        // A real change after the interval is relayed at once.
        let later = start + TYPING_INTERVAL * 2;
        assert!(!room.typing(20, 2, true, later));
        let events = drain(&mut mentor_rx);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["is_typing"], true);
        // A change right after is held, then flushed.
        assert!(room.typing(20, 2, false, later + Duration::from_millis(1)));
        assert!(room.flush_typing(later + Duration::from_millis(100)));
        assert!(drain(&mut mentor_rx).is_empty());
        assert!(!room.flush_typing(later + TYPING_INTERVAL));
        let events = drain(&mut mentor_rx);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["is_typing"], false);

        // A heartbeat of `true` is relayed again after TYPING_REFRESH only.
        let typing_at = later + TYPING_INTERVAL * 2;
        assert!(!room.typing(20, 2, true, typing_at));
        assert_eq!(drain(&mut mentor_rx).len(), 1);
        assert!(!room.typing(20, 2, true, typing_at + TYPING_REFRESH / 2));
        assert!(drain(&mut mentor_rx).is_empty());
        assert!(!room.typing(20, 2, true, typing_at + TYPING_REFRESH));
        assert_eq!(drain(&mut mentor_rx).len(), 1, "the heartbeat");

        // Leaving forgets the state: a return's first typing is news.
        room.leave(2);
        drain(&mut mentor_rx);
        let (back, _back_rx) = ConnHandle::new(3, 20, 65536);
        room.join(back, false);
        drain(&mut mentor_rx);
        assert!(!room.typing(20, 3, true, typing_at + TYPING_REFRESH));
        assert_eq!(drain(&mut mentor_rx).len(), 1);
    }

    const TTL: Duration = Duration::from_secs(6);

    fn typing(is_typing: bool, room: &Room) -> serde_json::Value {
        serde_json::json!({
            "type": "typing",
            "conversation_id": room.conversation.id.to_string(),
            "sender_id": 20,
            "is_typing": is_typing,
        })
    }

    /// Mentor 10 on connection 1, student 20 on connections 2 and 3, with
    /// the presence events of joining drained.
    fn room_with_two_student_tabs() -> (Room, Receiver, Receiver, Receiver) {
        let mut room = Room::new(conversation());
        let (mentor, mut mentor_rx) = ConnHandle::new(1, 10, 65536);
        let (tab1, mut tab1_rx) = ConnHandle::new(2, 20, 65536);
        let (tab2, mut tab2_rx) = ConnHandle::new(3, 20, 65536);
        room.join(mentor, false);
        room.join(tab1, false);
        room.join(tab2, false);
        drain(&mut mentor_rx);
        drain(&mut tab1_rx);
        drain(&mut tab2_rx);
        (room, mentor_rx, tab1_rx, tab2_rx)
    }

    #[test]
    fn typing_not_refreshed_for_the_ttl_ends_as_if_the_typer_sent_false() {
        let (mut room, mut mentor_rx, mut tab1_rx, mut tab2_rx) = room_with_two_student_tabs();
        let start = Instant::now();
        assert!(!room.typing(20, 2, true, start));
        assert_eq!(drain(&mut mentor_rx), vec![typing(true, &room)]);
        assert_eq!(drain(&mut tab2_rx), vec![typing(true, &room)]);

        // A repeat inside TYPING_REFRESH is not relayed, but refreshes.
        let refreshed = start + Duration::from_secs(1);
        assert!(!room.typing(20, 2, true, refreshed));
        assert!(drain(&mut mentor_rx).is_empty());
        room.expire_typing(start + TTL, TTL);
        assert!(
            drain(&mut mentor_rx).is_empty(),
            "the TTL runs from the last true received, not relayed"
        );
        room.expire_typing(refreshed + TTL - Duration::from_millis(1), TTL);
        assert!(drain(&mut mentor_rx).is_empty(), "not before the TTL");

        room.expire_typing(refreshed + TTL, TTL);
        assert_eq!(drain(&mut mentor_rx), vec![typing(false, &room)]);
        assert_eq!(
            drain(&mut tab2_rx),
            vec![typing(false, &room)],
            "the typer's other tab sees it, as it saw the true"
        );
        assert!(
            drain(&mut tab1_rx).is_empty(),
            "the typing connection gets no echo, as of its own false"
        );
        room.expire_typing(refreshed + TTL * 2, TTL);
        assert!(drain(&mut mentor_rx).is_empty(), "ended once");

        // Typing again is news.
        let again = refreshed + TTL * 2;
        assert!(!room.typing(20, 3, true, again));
        assert_eq!(drain(&mut mentor_rx), vec![typing(true, &room)]);
        assert_eq!(drain(&mut tab1_rx), vec![typing(true, &room)]);
        // A false from the typer ends it: nothing is left to expire.
        assert!(!room.typing(20, 3, false, again + TYPING_INTERVAL));
        assert_eq!(drain(&mut mentor_rx), vec![typing(false, &room)]);
        room.expire_typing(again + TTL, TTL);
        assert!(drain(&mut mentor_rx).is_empty());
    }

    #[test]
    fn a_refresh_from_another_tab_keeps_typing_and_moves_the_echo() {
        let (mut room, mut mentor_rx, mut tab1_rx, mut tab2_rx) = room_with_two_student_tabs();
        let start = Instant::now();
        assert!(!room.typing(20, 2, true, start));
        let refreshed = start + Duration::from_secs(4);
        assert!(!room.typing(20, 3, true, refreshed));
        drain(&mut mentor_rx);
        drain(&mut tab1_rx);
        drain(&mut tab2_rx);
        room.expire_typing(start + TTL, TTL);
        assert!(drain(&mut mentor_rx).is_empty());
        room.expire_typing(refreshed + TTL, TTL);
        assert_eq!(drain(&mut mentor_rx), vec![typing(false, &room)]);
        assert_eq!(drain(&mut tab1_rx), vec![typing(false, &room)]);
        assert!(drain(&mut tab2_rx).is_empty(), "tab 2 sent the last true");
    }

    #[test]
    fn the_typers_last_connection_leaving_ends_typing_before_presence() {
        let (mut room, mut mentor_rx, _tab1_rx, mut tab2_rx) = room_with_two_student_tabs();
        let start = Instant::now();
        assert!(!room.typing(20, 2, true, start));
        drain(&mut mentor_rx);
        drain(&mut tab2_rx);

        room.leave(2);
        assert!(
            drain(&mut mentor_rx).is_empty(),
            "the student is still here on another tab (the TTL ends it)"
        );
        room.leave(3);
        assert_eq!(
            drain(&mut mentor_rx),
            vec![
                typing(false, &room),
                serde_json::json!({"type":"presence","user_id":20,"online":false}),
            ]
        );
        room.expire_typing(start + TTL, TTL);
        assert!(
            drain(&mut mentor_rx).is_empty(),
            "the slot went with the user"
        );
    }

    #[test]
    fn leaving_after_typing_false_sends_only_presence() {
        let (mut room, mut mentor_rx, _tab1_rx, _tab2_rx) = room_with_two_student_tabs();
        let start = Instant::now();
        assert!(!room.typing(20, 2, true, start));
        assert!(!room.typing(20, 2, false, start + TYPING_INTERVAL));
        drain(&mut mentor_rx);
        room.leave(2);
        room.leave(3);
        assert_eq!(
            drain(&mut mentor_rx),
            vec![serde_json::json!({"type":"presence","user_id":20,"online":false})]
        );
    }

    #[test]
    fn a_message_ends_typing_and_drops_a_held_change() {
        let (mut room, mut mentor_rx, mut tab1_rx, mut tab2_rx) = room_with_two_student_tabs();
        let start = Instant::now();
        assert!(!room.typing(20, 2, true, start));
        drain(&mut mentor_rx);
        drain(&mut tab2_rx);
        room.end_typing(10, start);
        assert!(
            drain(&mut mentor_rx).is_empty(),
            "the mentor was not typing"
        );

        let sent = start + Duration::from_millis(10);
        room.end_typing(20, sent);
        assert_eq!(drain(&mut mentor_rx), vec![typing(false, &room)]);
        assert_eq!(drain(&mut tab2_rx), vec![typing(false, &room)]);
        assert!(drain(&mut tab1_rx).is_empty());
        room.end_typing(20, sent);
        assert!(drain(&mut mentor_rx).is_empty(), "ended once");
        room.expire_typing(start + TTL, TTL);
        assert!(drain(&mut mentor_rx).is_empty(), "nothing left to expire");

        // A true typed before the message, still held, is not relayed
        // after it.
        assert!(room.typing(20, 2, true, sent + Duration::from_millis(1)));
        room.end_typing(20, sent + Duration::from_millis(2));
        assert!(!room.flush_typing(sent + TYPING_INTERVAL * 2));
        assert!(drain(&mut mentor_rx).is_empty());
    }

    /// A relay that finds a member's queue gone drops the member, and with
    /// its user's last connection their typing slot: the loop over slots
    /// must not index past the end (it did, and the shard task panicked).
    #[test]
    fn a_relay_that_drops_a_typer_does_not_break_the_loop_over_slots() {
        let mut room = Room::new(conversation());
        let (student, _student_rx) = ConnHandle::new(1, 20, 65536);
        let (mentor, mentor_rx) = ConnHandle::new(2, 10, 65536);
        room.join(student, false);
        room.join(mentor, false);
        let start = Instant::now();
        assert!(!room.typing(20, 1, true, start));
        assert!(!room.typing(10, 2, true, start));
        // The student's change is held; the mentor's session ends before
        // its Leave reaches the room.
        assert!(room.typing(20, 1, false, start + Duration::from_millis(1)));
        drop(mentor_rx);
        assert!(!room.flush_typing(start + TYPING_INTERVAL));
        assert!(room.member(2).is_none());

        let (mentor, mentor_rx) = ConnHandle::new(3, 10, 65536);
        room.join(mentor, false);
        assert!(!room.typing(20, 1, true, start + TYPING_INTERVAL * 2));
        assert!(!room.typing(10, 3, true, start + TYPING_INTERVAL * 2));
        drop(mentor_rx);
        room.expire_typing(start + TYPING_INTERVAL * 2 + TTL, TTL);
        assert!(room.member(3).is_none());
    }

    #[test]
    fn a_message_echo_to_its_sender_never_makes_it_a_slow_consumer() {
        let mut room = Room::new(conversation());
        let (sender, mut sender_rx) = ConnHandle::new(1, 10, 140);
        room.join(sender.clone(), false);
        drain(&mut sender_rx);
        for _ in 0..10 {
            room.relay(&Bytes::from_static(b"\x81\x02{}"), 1, 1);
        }
        assert_eq!(sender.close_requested(), None);
        assert!(room.member(1).is_some());
        assert_eq!(drain(&mut sender_rx).len(), 10);
    }
}
