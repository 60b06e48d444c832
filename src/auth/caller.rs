//! STUB — replaced by the auth branch at merge.
use crate::model::UserId;
pub fn user_id_from_jwt(_token: &str) -> Option<UserId> {
    None
}
pub fn bearer_token(_v: &str) -> Option<&str> {
    None
}
