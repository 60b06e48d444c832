//! STUB — replaced by the auth branch at merge.
use super::{Lesson, User};
use crate::model::{Conversation, ConversationKey, UserId};
use crate::store::ConversationFilter;
#[derive(Debug)]
pub enum AccessDenied {
    MissingStudentId,
    NotTeacher,
    NotEnrolled,
}
impl AccessDenied {
    pub fn status(&self) -> u16 {
        400
    }
}
impl std::fmt::Display for AccessDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
#[derive(Debug)]
pub struct Forbidden;
pub fn conversation_key(
    _user: &User,
    _lesson: &Lesson,
    _s: Option<UserId>,
) -> Result<ConversationKey, AccessDenied> {
    Err(AccessDenied::NotTeacher)
}
pub fn conversation_filter(
    _c: UserId,
    _m: Option<UserId>,
    _s: Option<UserId>,
    _limit: usize,
) -> Result<ConversationFilter, Forbidden> {
    Err(Forbidden)
}
pub fn can_read(_c: UserId, _conv: &Conversation) -> bool {
    false
}
