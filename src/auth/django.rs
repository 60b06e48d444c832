//! The Django client: who a token belongs to, what a lesson is (CONTRACT §2).
//!
//! Both calls pass the client's JWT through as `Authorization: Bearer`.
//! A 200 answers the question; a 5xx, a timeout, a refused connection or an
//! unreadable 200 is a Django *outage* (503 to our client, not an auth
//! failure); any other status is a denial. Answers are cached and shared by
//! concurrent callers through [`lookup_cache`].
//!
//! Tokens are credentials: they are never logged and never put into an error
//! string. Logs carry the endpoint, the id and the status only.

mod lookup_cache;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use serde::Deserialize;

use self::lookup_cache::LookupCache;
use super::{AuthError, Lesson, User};
use crate::model::{LessonId, UserId};

/// Cached answers per endpoint; enough for every active user of a large
/// deployment, small enough (a JWT is a few hundred bytes) to bound memory.
const MAX_CACHED_ANSWERS: usize = 100_000;
/// A Django answer is a small JSON object; a bigger one is not Django's.
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// `/readyz` must answer quickly even while Django hangs.
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Django is and how patient to be with it; built from
/// `DJANGO_BASE_URL` and `CHAT_DJANGO_*`, whose defaults are `Config`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DjangoSettings {
    /// `http(s)://host[:port][/prefix]`, without a trailing slash.
    pub base_url: String,
    /// Path of the users endpoint; contains `{user_id}`.
    pub user_path: String,
    /// Path of the lesson endpoint; contains `{lesson_id}`.
    pub lesson_path: String,
    /// Connect timeout and total timeout of one call.
    pub timeout: Duration,
    /// How long a 200 answer is reused; zero disables the cache.
    pub cache_ttl: Duration,
}

/// A pooled, caching, single-flight client for Django's two endpoints.
/// Cheap to clone: clones share the pool and the caches.
#[derive(Clone)]
pub struct DjangoClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    user_path: String,
    lesson_path: String,
    timeout: Duration,
    users: LookupCache<User>,
    lessons: LookupCache<Lesson>,
}

/// The users endpoint's 200 body.
#[derive(Deserialize)]
struct UserAnswer {
    id: UserId,
    is_mentor: bool,
}

/// The lesson endpoint's 200 body; `student_ids` is ours and optional.
#[derive(Deserialize)]
struct LessonAnswer {
    id: LessonId,
    course_id: i64,
    teacher_id: UserId,
    #[serde(default)]
    student_ids: Option<Vec<UserId>>,
}

/// Which endpoint a call goes to, for logs and error strings.
#[derive(Clone, Copy)]
enum Endpoint {
    Users,
    Lesson,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Users => "users",
            Endpoint::Lesson => "lesson",
        }
    }
}

/// How an endpoint answered, before the body is interpreted.
enum Answer {
    Ok(Vec<u8>),
    /// Any status other than 200 and 5xx (logged at debug).
    Denied,
}

impl DjangoClient {
    /// Checks the settings and builds the connection pool.
    pub fn new(settings: DjangoSettings) -> Result<DjangoClient, String> {
        for endpoint in [Endpoint::Users, Endpoint::Lesson] {
            crate::metrics::get().django_endpoint(endpoint.name());
        }
        // reqwest is built without a crypto provider; mongodb's rustls already
        // links ring, so ring becomes the process default. Whoever installs
        // first wins, which is the same provider either way.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let base_url = settings
            .base_url
            .strip_suffix('/')
            .unwrap_or(&settings.base_url)
            .to_string();
        if !settings.user_path.contains("{user_id}") {
            return Err(format!(
                "django user path {:?} lacks {{user_id}}",
                settings.user_path
            ));
        }
        if !settings.lesson_path.contains("{lesson_id}") {
            return Err(format!(
                "django lesson path {:?} lacks {{lesson_id}}",
                settings.lesson_path
            ));
        }
        for path in [&settings.user_path, &settings.lesson_path] {
            let sample = format!("{base_url}{path}");
            let url =
                reqwest::Url::parse(&sample).map_err(|e| format!("django URL {sample:?}: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("django URL {sample:?} is not http(s)"));
            }
        }
        if settings.timeout.is_zero() {
            return Err("django timeout must be positive".into());
        }

        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .user_agent(concat!("chat-service/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("django HTTP client: {e}"))?;

        Ok(DjangoClient {
            inner: Arc::new(Inner {
                http,
                base_url,
                user_path: settings.user_path,
                lesson_path: settings.lesson_path,
                timeout: settings.timeout,
                users: LookupCache::new(
                    Endpoint::Users.name(),
                    settings.cache_ttl,
                    MAX_CACHED_ANSWERS,
                ),
                lessons: LookupCache::new(
                    Endpoint::Lesson.name(),
                    settings.cache_ttl,
                    MAX_CACHED_ANSWERS,
                ),
            }),
        })
    }

    /// Who `token` belongs to, confirmed to be `user_id`.
    pub async fn user(&self, token: &str, user_id: UserId) -> Result<User, AuthError> {
        let Some(authorization) = bearer(token) else {
            return Err(AuthError::Unauthorized);
        };
        let inner = Arc::clone(&self.inner);
        // Runs only on a cache miss, in the look-up's own task.
        let fetch = move || {
            timed(Endpoint::Users, async move {
                let url = inner.url(&inner.user_path, "{user_id}", user_id);
                let http = &inner.http;
                match call(http, url, authorization, Endpoint::Users, user_id).await? {
                    Answer::Denied => Err(AuthError::Unauthorized),
                    Answer::Ok(body) => {
                        let answer: UserAnswer = parse(&body, Endpoint::Users, user_id)?;
                        if answer.id != user_id {
                            tracing::warn!(
                                user_id,
                                answered_id = answer.id,
                                "django users answer names another user"
                            );
                            return Err(AuthError::Unauthorized);
                        }
                        Ok(User {
                            id: answer.id,
                            is_mentor: answer.is_mentor,
                        })
                    }
                }
            })
        };
        self.inner.users.get_or_fetch(token, user_id, fetch).await
    }

    /// The lesson `lesson_id`, as `token`'s owner may see it.
    pub async fn lesson(&self, token: &str, lesson_id: LessonId) -> Result<Lesson, AuthError> {
        let Some(authorization) = bearer(token) else {
            return Err(AuthError::LessonNotFound);
        };
        let inner = Arc::clone(&self.inner);
        // Runs only on a cache miss, in the look-up's own task.
        let fetch = move || {
            timed(Endpoint::Lesson, async move {
                let url = inner.url(&inner.lesson_path, "{lesson_id}", lesson_id);
                let http = &inner.http;
                match call(http, url, authorization, Endpoint::Lesson, lesson_id).await? {
                    Answer::Denied => Err(AuthError::LessonNotFound),
                    Answer::Ok(body) => {
                        let answer: LessonAnswer = parse(&body, Endpoint::Lesson, lesson_id)?;
                        if answer.id != lesson_id {
                            tracing::warn!(
                                lesson_id,
                                answered_id = answer.id,
                                "django lesson answer names another lesson"
                            );
                            return Err(AuthError::LessonNotFound);
                        }
                        Ok(Lesson {
                            id: answer.id,
                            course_id: answer.course_id,
                            teacher_id: answer.teacher_id,
                            student_ids: answer.student_ids,
                        })
                    }
                }
            })
        };
        self.inner
            .lessons
            .get_or_fetch(token, lesson_id, fetch)
            .await
    }

    /// Whether Django answers HTTP at all (any status), for `/readyz`.
    pub async fn reachable(&self) -> bool {
        self.inner
            .http
            .get(&self.inner.base_url)
            .timeout(self.inner.timeout.min(REACHABLE_TIMEOUT))
            .send()
            .await
            .is_ok()
    }
}

impl Inner {
    fn url(&self, template: &str, placeholder: &str, id: i64) -> String {
        format!(
            "{}{}",
            self.base_url,
            template.replace(placeholder, &id.to_string())
        )
    }
}

impl fmt::Debug for DjangoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DjangoClient")
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

/// `Bearer <token>` as a header marked sensitive (kept out of debug output);
/// `None` when the token cannot be a header value, so it cannot be valid.
fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Runs one look-up (the call and the reading of its answer), timed for
/// `chat_django_request_seconds` under its final outcome, so an unreadable
/// 200 counts as the outage it is.
async fn timed<T>(
    endpoint: Endpoint,
    lookup: impl Future<Output = Result<T, AuthError>>,
) -> Result<T, AuthError> {
    let started = std::time::Instant::now();
    let answer = lookup.await;
    let outcome = match &answer {
        Ok(_) => "ok",
        Err(AuthError::Outage(_)) => "outage",
        Err(AuthError::Unauthorized | AuthError::LessonNotFound) => "denied",
    };
    crate::metrics::get()
        .django_seconds
        .get_or_create(&crate::metrics::DjangoLabels {
            endpoint: endpoint.name(),
            outcome,
        })
        .observe(started.elapsed().as_secs_f64());
    answer
}

/// One GET; sorts the answer into success, denial and outage.
async fn call(
    http: &reqwest::Client,
    url: String,
    authorization: HeaderValue,
    endpoint: Endpoint,
    id: i64,
) -> Result<Answer, AuthError> {
    let name = endpoint.name();
    let mut response = match http
        .get(url)
        .header(AUTHORIZATION, authorization)
        .send()
        .await
    {
        Ok(response) => response,
        Err(err) => return Err(outage(endpoint, id, &describe(&err))),
    };
    let status = response.status();
    if status.is_server_error() {
        return Err(outage(
            endpoint,
            id,
            &format!("answered {}", status.as_u16()),
        ));
    }
    if status != StatusCode::OK {
        tracing::debug!(
            endpoint = name,
            id,
            status = status.as_u16(),
            "django denied"
        );
        return Ok(Answer::Denied);
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(outage(endpoint, id, "answer too large"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Answer::Ok(body)),
            Err(err) => {
                return Err(outage(
                    endpoint,
                    id,
                    &format!("reading the answer: {}", describe(&err)),
                ))
            }
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    body: &[u8],
    endpoint: Endpoint,
    id: i64,
) -> Result<T, AuthError> {
    serde_json::from_slice(body).map_err(|err| {
        // serde_json's message names a position and an expected type, never
        // the input, so it carries no user data.
        outage(endpoint, id, &format!("unreadable 200 answer: {err}"))
    })
}

fn outage(endpoint: Endpoint, id: i64, reason: &str) -> AuthError {
    let name = endpoint.name();
    crate::metrics::get()
        .django_outages
        .get_or_create(&crate::metrics::EndpointLabels { endpoint: name })
        .inc();
    tracing::warn!(endpoint = name, id, reason, "django outage");
    AuthError::Outage(format!("{name} {id}: {reason}"))
}

/// A reqwest error in words, without its URL and with its root cause (e.g.
/// "connection refused"); request headers never appear in these.
fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut root: Option<&dyn std::error::Error> = None;
    let mut next = std::error::Error::source(err);
    while let Some(source) = next {
        root = Some(source);
        next = source.source();
    }
    match root {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DjangoSettings {
        DjangoSettings {
            base_url: "http://127.0.0.1:9/backend".into(),
            user_path: "/api/content/chat-service/users/{user_id}/".into(),
            lesson_path: "/api/content/chat-service/lesson/{lesson_id}/detail/".into(),
            timeout: Duration::from_secs(1),
            cache_ttl: Duration::from_secs(30),
        }
    }

    #[test]
    fn new_accepts_seed_settings_and_drops_one_trailing_slash() {
        let mut s = settings();
        s.base_url.push('/');
        let client = DjangoClient::new(s).unwrap();
        assert_eq!(client.inner.base_url, "http://127.0.0.1:9/backend");
    }

    #[test]
    fn new_rejects_bad_settings() {
        let mut s = settings();
        s.user_path = "/api/users/".into();
        assert!(DjangoClient::new(s).unwrap_err().contains("{user_id}"));
        let mut s = settings();
        s.lesson_path = "/api/lesson/".into();
        assert!(DjangoClient::new(s).unwrap_err().contains("{lesson_id}"));
        let mut s = settings();
        s.base_url = "ftp://h".into();
        assert!(DjangoClient::new(s).is_err());
        let mut s = settings();
        s.base_url = "not a url".into();
        assert!(DjangoClient::new(s).is_err());
        let mut s = settings();
        s.timeout = Duration::ZERO;
        assert!(DjangoClient::new(s).is_err());
    }

    #[tokio::test]
    async fn a_token_that_cannot_be_a_header_is_refused_without_a_call() {
        let client = DjangoClient::new(settings()).unwrap();
        assert_eq!(
            client.user("bad\ntoken", 1).await,
            Err(AuthError::Unauthorized)
        );
        assert_eq!(
            client.lesson("bad\ntoken", 1).await,
            Err(AuthError::LessonNotFound)
        );
    }

    #[test]
    fn bearer_header_is_sensitive() {
        let value = bearer("secret").unwrap();
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("secret"));
    }
}
