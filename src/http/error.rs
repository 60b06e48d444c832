//! The one error type of the HTTP layer and its mapping to a status and a
//! JSON body: `{"error":{"code":"…","message":"…"}}`.

use http::{header, Response, StatusCode};

use super::Body;
use crate::auth::access::{AccessDenied, Forbidden};
use crate::auth::AuthError;
use crate::capacity::HistoryBusy;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this path",
        )
    }

    pub(crate) fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        json_response(self.status, &body)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        crate::metrics::get().store_error("read", error.kind());
        match error {
            StoreError::Unavailable(_) => {
                tracing::warn!(%error, "store unavailable");
                ApiError::unavailable("the message store is unavailable; retry shortly")
            }
            StoreError::Internal(_) => {
                tracing::error!(%error, "store error");
                ApiError::internal("storage error")
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthorized => {
                ApiError::unauthorized("the token does not authenticate this user")
            }
            AuthError::LessonNotFound => ApiError::not_found("lesson not found"),
            AuthError::Outage(ref why) => {
                tracing::warn!(reason = %why, "django unavailable");
                ApiError::unavailable("the identity service is unavailable; retry shortly")
            }
        }
    }
}

/// A `match` on every refusal, so a new one cannot go without a status.
impl From<AccessDenied> for ApiError {
    fn from(denied: AccessDenied) -> Self {
        match denied {
            AccessDenied::MissingStudentId => ApiError::bad_request(denied.message()),
            AccessDenied::NotTeacher | AccessDenied::NotEnrolled | AccessDenied::NoRoster => {
                ApiError::forbidden(denied.message())
            }
        }
    }
}

impl From<Forbidden> for ApiError {
    fn from(Forbidden: Forbidden) -> Self {
        ApiError::forbidden("you can only list your own conversations")
    }
}

impl From<HistoryBusy> for ApiError {
    fn from(error: HistoryBusy) -> Self {
        tracing::warn!(%error, "history request refused");
        match error {
            HistoryBusy::Full(_) => {
                ApiError::unavailable("too many history requests at once; retry shortly")
            }
            HistoryBusy::PerUser => ApiError::too_many_requests(
                "you already have history answers being sent; finish reading them first",
            ),
        }
    }
}

/// A JSON response with `status`.
pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_are_json_with_their_status() {
        let response = ApiError::forbidden("nope").into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "forbidden", "message": "nope"}})
        );
    }

    #[test]
    fn store_and_auth_errors_map_to_statuses() {
        assert_eq!(
            ApiError::from(StoreError::Unavailable("x".into())).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(StoreError::Internal("x".into())).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ApiError::from(AuthError::Unauthorized).status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            ApiError::from(AuthError::LessonNotFound).status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::from(AuthError::Outage("down".into())).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let busy = ApiError::from(HistoryBusy::Full(std::time::Duration::from_secs(5)));
        assert_eq!(
            (busy.status, busy.code),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        let share = ApiError::from(HistoryBusy::PerUser);
        assert_eq!(
            (share.status, share.code),
            (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
        );
    }

    #[test]
    fn access_refusals_map_to_the_contract_statuses() {
        let missing = ApiError::from(AccessDenied::MissingStudentId);
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        assert_eq!(missing.message, AccessDenied::MissingStudentId.message());
        for denial in [
            AccessDenied::NotTeacher,
            AccessDenied::NotEnrolled,
            AccessDenied::NoRoster,
        ] {
            let error = ApiError::from(denial);
            assert_eq!(error.status, StatusCode::FORBIDDEN, "{denial:?}");
            assert_eq!(error.message, denial.message());
        }
        assert_eq!(ApiError::from(Forbidden).status, StatusCode::FORBIDDEN);
    }
}
