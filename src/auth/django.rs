//! STUB — replaced by the auth branch at merge.
use super::{AuthError, Lesson, User};
use crate::model::{LessonId, UserId};
use std::time::Duration;
pub struct DjangoSettings {
    pub base_url: String,
    pub user_path: String,
    pub lesson_path: String,
    pub timeout: Duration,
    pub cache_ttl: Duration,
}
pub struct DjangoClient;
impl DjangoClient {
    pub fn new(_s: DjangoSettings) -> Result<DjangoClient, String> {
        Ok(DjangoClient)
    }
    pub async fn user(&self, _token: &str, _user_id: UserId) -> Result<User, AuthError> {
        Err(AuthError::Unauthorized)
    }
    pub async fn lesson(&self, _token: &str, _lesson_id: LessonId) -> Result<Lesson, AuthError> {
        Err(AuthError::LessonNotFound)
    }
    pub async fn reachable(&self) -> bool {
        false
    }
}
