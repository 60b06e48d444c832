//! One conversation's live state inside its shard: the connections in it,
//! who of the two participants is here, and recent client ids.

use bytes::Bytes;
use tokio::time::Instant;

use super::conn::ConnHandle;
use super::dedupe::RecentClientIds;
use super::viewed::RecentViews;
use crate::model::{Conversation, UserId};
use crate::ws::protocol;

pub struct Room {
    pub conversation: Conversation,
    members: Vec<ConnHandle>,
    pub recent: RecentClientIds,
    /// Views stored lately: a repeat of one is dropped before the writer.
    pub viewed: RecentViews,
    /// When the last member left; the room lingers a while so a reconnect
    /// still finds its recent client ids.
    pub emptied_at: Option<Instant>,
}

impl Room {
    pub fn new(conversation: Conversation) -> Self {
        Room {
            conversation,
            members: Vec::new(),
            recent: RecentClientIds::default(),
            viewed: RecentViews::default(),
            emptied_at: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member(&self, conn_id: u64) -> Option<&ConnHandle> {
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
    /// is here.
    pub fn join(&mut self, conn: ConnHandle) {
        let user = conn.user_id();
        let first_of_user = !self.is_here(user);
        let other = self.other_than(user);
        let other_online = self.is_here(other);
        let _ = conn.send(protocol::presence_event(other, other_online));
        self.members.push(conn);
        self.emptied_at = None;
        if first_of_user {
            self.broadcast_to_others_of(user, &protocol::presence_event(user, true));
        }
    }

    /// Removes a connection (a no-op if it already left); tells the others
    /// when it was the user's last connection here.
    pub fn leave(&mut self, conn_id: u64) {
        let Some(index) = self.members.iter().position(|m| m.id() == conn_id) else {
            return;
        };
        let user = self.members.swap_remove(index).user_id();
        if !self.is_here(user) {
            self.broadcast_to_others_of(user, &protocol::presence_event(user, false));
        }
        if self.members.is_empty() {
            self.emptied_at = Some(Instant::now());
        }
    }

    /// Queues `frame` to every member except connection `except`. Members
    /// whose queue is full or gone are dropped from the room at once (a full
    /// one has been asked to close with 1013).
    pub fn broadcast(&mut self, frame: &Bytes, except: Option<u64>) {
        self.send_where(frame, |member| Some(member.id()) != except);
    }

    fn broadcast_to_others_of(&mut self, user: UserId, frame: &Bytes) {
        self.send_where(frame, |member| member.user_id() != user);
    }

    /// Queues `frame` to the members `to` picks; drops from the room those
    /// whose queue is full or gone.
    fn send_where(&mut self, frame: &Bytes, to: impl Fn(&ConnHandle) -> bool) {
        let dropped: Vec<u64> = self
            .members
            .iter()
            .filter(|member| to(member) && member.send(frame.clone()).is_err())
            .map(ConnHandle::id)
            .collect();
        for conn_id in dropped {
            self.leave(conn_id);
        }
    }

    /// Queues `frame` to one connection, dropping it from the room if its
    /// queue is full or gone.
    pub fn send_to(&mut self, conn_id: u64, frame: Bytes) {
        let failed = match self.member(conn_id) {
            Some(member) => member.send(frame).is_err(),
            None => false,
        };
        if failed {
            self.leave(conn_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::conn::Receiver;
    use crate::model::{Millis, ObjectId};
    use crate::ws::close::Close;

    fn conversation() -> Conversation {
        Conversation {
            id: ObjectId::new(),
            lesson_id: 1,
            mentor_id: 10,
            student_id: 20,
            created_at: Millis(0),
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
        let (mentor, mut mentor_rx) = ConnHandle::new(1, 10, 16);
        room.join(mentor);
        assert_eq!(
            drain(&mut mentor_rx),
            vec![serde_json::json!({"type":"presence","user_id":20,"online":false})]
        );

        let (tab1, mut tab1_rx) = ConnHandle::new(2, 20, 16);
        room.join(tab1);
        assert_eq!(
            drain(&mut tab1_rx),
            vec![serde_json::json!({"type":"presence","user_id":10,"online":true})]
        );
        assert_eq!(
            drain(&mut mentor_rx),
            vec![serde_json::json!({"type":"presence","user_id":20,"online":true})]
        );

        let (tab2, _tab2_rx) = ConnHandle::new(3, 20, 16);
        room.join(tab2);
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
        let (fast, mut fast_rx) = ConnHandle::new(1, 10, 64);
        let (slow, _slow_rx) = ConnHandle::new(2, 20, 2);
        room.join(fast);
        room.join(slow.clone());
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
}
