//! Identity comes from Django: who a token belongs to, what a lesson is.
//!
//! [`django`] is the HTTP client (pooled, cached, single-flight); [`access`]
//! holds the pure rules that turn a user and a lesson into a conversation;
//! [`caller`] reads who a REST caller claims to be from their token.

pub(crate) mod access;
pub(crate) mod caller;
pub mod django;

use crate::model::{LessonId, UserId};

/// A user as Django's users endpoint describes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub is_mentor: bool,
}

/// A lesson as Django's lesson endpoint describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lesson {
    pub id: LessonId,
    pub course_id: i64,
    pub teacher_id: UserId,
    /// Present only when Django sends `student_ids` (ours; the seed had none).
    pub student_ids: Option<Vec<UserId>>,
}

/// Why Django did not confirm a user or a lesson.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The users endpoint answered non-200, or with another id.
    #[error("not authenticated")]
    Unauthorized,
    /// The lesson endpoint answered non-200.
    #[error("lesson not found")]
    LessonNotFound,
    /// Connection failure, timeout, 5xx or an unreadable 200 body.
    #[error("django unavailable: {0}")]
    Outage(String),
}
