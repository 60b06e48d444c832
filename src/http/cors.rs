//! CORS as the seed sent it (plus `X-User-Id`, which REST now reads, and
//! the `/messages` paging headers exposed to scripts).

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::Body;

/// Adds the CORS headers to any response.
pub(crate) fn decorate(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization, X-User-Id"),
    );
    // A browser hides other response headers from scripts unless named here.
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "X-History-Truncated, X-History-Next-Before, X-History-Next-After",
        ),
    );
    response
}

/// The answer to a preflight: 200, no authentication needed.
pub(crate) fn preflight() -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::OK;
    response
}
