//! A Django stand-in for tests: the seed's two endpoints (CONTRACT §2),
//! served by hyper on an ephemeral loopback port.
//!
//! It runs on its own thread with its own runtime, so it keeps answering
//! whatever the test does: block its thread, pause tokio time, or use either
//! runtime flavor. Dropping it stops the server and closes its sockets, so a
//! test can also see Django disappear (connection refused).
//!
//! Endpoints, exactly the seed's paths under the optional prefix:
//! - `GET {prefix}/api/content/chat-service/users/{user_id}/`: 200
//!   `{"id","is_mentor"}` when the bearer token is known and belongs to
//!   `user_id` (in lax mode: to anyone, answering the owner's id); else 401.
//! - `GET {prefix}/api/content/chat-service/lesson/{lesson_id}/detail/`: 401
//!   for an unknown token, 404 for an unknown lesson, else 200
//!   `{"id","course_id","teacher_id"}` plus `"student_ids"` when set.
//! - anything else: 404 (405 for a method other than GET).

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use chat_service::model::{LessonId, UserId};

const USERS_PATH: &str = "/api/content/chat-service/users/";
const LESSON_PATH: &str = "/api/content/chat-service/lesson/";

/// How the stand-in misbehaves; applied to every request that arrives while
/// it is set (requests already waiting keep the mode they arrived under).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outage {
    /// Answer normally.
    #[default]
    None,
    /// Answer 503 with a JSON body.
    Status503,
    /// Read the request, then close the connection without answering.
    Refuse,
    /// Never answer (until the stand-in is dropped).
    Hang,
    /// Answer the two endpoints 200 with a truncated JSON body.
    BrokenBody,
}

pub struct DjangoStandin {
    base_url: String,
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct State {
    prefix: String,
    world: Mutex<World>,
    user_requests: AtomicUsize,
    lesson_requests: AtomicUsize,
    other_requests: AtomicUsize,
}

#[derive(Default)]
struct World {
    /// token → (owner, is_mentor)
    users: HashMap<String, (UserId, bool)>,
    lessons: HashMap<LessonId, LessonRecord>,
    outage: Outage,
    lax_user_ids: bool,
    delay: Duration,
    /// When set, the two endpoints answer 200 with exactly this body.
    answer_body: Option<Arc<str>>,
}

#[derive(Clone)]
struct LessonRecord {
    course_id: i64,
    teacher_id: UserId,
    student_ids: Option<Vec<UserId>>,
}

enum Route {
    User(UserId),
    Lesson(LessonId),
    Other,
}

/// The `/ws` query of [`DjangoStandin::with_pair`]'s student (25, `tok-s25`).
pub const PAIR_STUDENT: &str = "token=tok-s25&user_id=25&lesson_id=100";
/// The `/ws` query of [`DjangoStandin::with_pair`]'s mentor (10, `tok-m10`).
pub const PAIR_MENTOR: &str = "token=tok-m10&user_id=10&lesson_id=100&student_id=25";

impl DjangoStandin {
    /// Serves the endpoints at the root: `base_url()` is `http://127.0.0.1:P`.
    pub async fn start() -> DjangoStandin {
        Self::start_with_prefix("").await
    }

    /// The pair most tests talk as: mentor 10 (`tok-m10`) and student 25
    /// (`tok-s25`) in lesson 100 (see [`PAIR_MENTOR`], [`PAIR_STUDENT`]).
    pub async fn with_pair() -> DjangoStandin {
        let django = Self::start().await;
        django.add_user("tok-m10", 10, true);
        django.add_user("tok-s25", 25, false);
        django.add_lesson(100, 1, 10, None);
        django
    }

    /// Serves the endpoints only under `prefix` (e.g. `/backend`), which
    /// `base_url()` includes, so a client that drops the prefix gets 404s.
    pub async fn start_with_prefix(prefix: &str) -> DjangoStandin {
        let prefix = prefix.trim_end_matches('/').to_string();
        assert!(
            prefix.is_empty() || prefix.starts_with('/'),
            "prefix must start with '/'"
        );
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the Django stand-in");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("stand-in address");
        let state = Arc::new(State {
            prefix: prefix.clone(),
            world: Mutex::new(World::default()),
            user_requests: AtomicUsize::new(0),
            lesson_requests: AtomicUsize::new(0),
            other_requests: AtomicUsize::new(0),
        });
        let (shutdown, stop) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("django-standin".into())
            .spawn({
                let state = Arc::clone(&state);
                move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("stand-in runtime");
                    runtime.block_on(serve(listener, state, stop));
                    // Dropping the runtime cancels every connection task,
                    // which closes their sockets.
                }
            })
            .expect("spawn the stand-in thread");
        DjangoStandin {
            base_url: format!("http://{addr}{prefix}"),
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:P` plus the prefix, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `token` now belongs to user `id` (a user may have several tokens).
    pub fn add_user(&self, token: &str, id: UserId, is_mentor: bool) {
        self.state
            .world
            .lock()
            .users
            .insert(token.to_string(), (id, is_mentor));
    }

    /// Revokes `token`: from now on it is unknown.
    pub fn remove_user(&self, token: &str) {
        self.state.world.lock().users.remove(token);
    }

    pub fn add_lesson(
        &self,
        id: LessonId,
        course_id: i64,
        teacher_id: UserId,
        student_ids: Option<Vec<UserId>>,
    ) {
        let record = LessonRecord {
            course_id,
            teacher_id,
            student_ids,
        };
        self.state.world.lock().lessons.insert(id, record);
    }

    pub fn set_outage(&self, outage: Outage) {
        self.state.world.lock().outage = outage;
    }

    /// Lax: the users endpoint answers 200 with the token owner's id, whatever
    /// id was asked (so a test can prove the client checks the id).
    pub fn set_lax_user_ids(&self, lax: bool) {
        self.state.world.lock().lax_user_ids = lax;
    }

    /// While `Some`, the two endpoints answer 200 with exactly `body`,
    /// whatever the token (for answers Django would never send).
    pub fn set_answer_body(&self, body: Option<&str>) {
        self.state.world.lock().answer_body = body.map(Arc::from);
    }

    /// Every request waits this long before it is handled.
    pub fn set_delay(&self, delay: Duration) {
        self.state.world.lock().delay = delay;
    }

    /// Requests received on any path, answered or not (counted on arrival).
    pub fn requests(&self) -> usize {
        self.user_requests()
            + self.lesson_requests()
            + self.state.other_requests.load(Ordering::SeqCst)
    }

    /// Requests received on the users endpoint, answered or not.
    pub fn user_requests(&self) -> usize {
        self.state.user_requests.load(Ordering::SeqCst)
    }

    /// Requests received on the lesson endpoint, answered or not.
    pub fn lesson_requests(&self) -> usize {
        self.state.lesson_requests.load(Ordering::SeqCst)
    }
}

impl Drop for DjangoStandin {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Joined so the port is closed once the stand-in is gone.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors or the like: wait, don't spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            // `Outage::Refuse` fires this to drop the connection unanswered.
            let kill = Arc::new(Notify::new());
            let service = service_fn({
                let kill = Arc::clone(&kill);
                move |request| handle(Arc::clone(&state), Arc::clone(&kill), request)
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = kill.notified() => {}
            }
        });
    }
}

async fn handle(
    state: Arc<State>,
    kill: Arc<Notify>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let route = state.route(request.uri().path());
    match route {
        Route::User(_) => &state.user_requests,
        Route::Lesson(_) => &state.lesson_requests,
        Route::Other => &state.other_requests,
    }
    .fetch_add(1, Ordering::SeqCst);

    let (outage, delay, answer_body) = {
        let world = state.world.lock();
        (world.outage, world.delay, world.answer_body.clone())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match outage {
        Outage::None => {}
        Outage::Status503 => {
            return Ok(json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"detail":"Service unavailable"}"#.into(),
            ));
        }
        Outage::Refuse => {
            kill.notify_one();
            std::future::pending::<()>().await;
        }
        Outage::Hang => std::future::pending::<()>().await,
        Outage::BrokenBody => {
            if !matches!(route, Route::Other) {
                return Ok(json(StatusCode::OK, r#"{"id": 1, "is_men"#.into()));
            }
        }
    }

    if let (Some(body), false) = (answer_body, matches!(route, Route::Other)) {
        return Ok(json(StatusCode::OK, body.to_string()));
    }

    if request.method() != Method::GET {
        return Ok(json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"detail":"Method not allowed."}"#.into(),
        ));
    }
    let token = bearer(&request);
    let world = state.world.lock();
    let owner = token.and_then(|t| world.users.get(t)).copied();
    let answer = match route {
        Route::Other => json(StatusCode::NOT_FOUND, r#"{"detail":"Not found."}"#.into()),
        Route::User(requested) => match owner {
            Some((id, is_mentor)) if id == requested || world.lax_user_ids => json(
                StatusCode::OK,
                serde_json::json!({"id": id, "is_mentor": is_mentor}).to_string(),
            ),
            _ => unauthorized(),
        },
        Route::Lesson(lesson_id) => match (owner, world.lessons.get(&lesson_id)) {
            (None, _) => unauthorized(),
            (Some(_), None) => json(StatusCode::NOT_FOUND, r#"{"detail":"Not found."}"#.into()),
            (Some(_), Some(lesson)) => {
                let mut body = serde_json::json!({
                    "id": lesson_id,
                    "course_id": lesson.course_id,
                    "teacher_id": lesson.teacher_id,
                });
                if let Some(students) = &lesson.student_ids {
                    body["student_ids"] = serde_json::json!(students);
                }
                json(StatusCode::OK, body.to_string())
            }
        },
    };
    Ok(answer)
}

impl State {
    /// Django's `<int:…>` path converter: digits only.
    fn route(&self, path: &str) -> Route {
        let Some(path) = path.strip_prefix(self.prefix.as_str()) else {
            return Route::Other;
        };
        let id_between = |start: &str, end: &str| -> Option<i64> {
            let digits = path.strip_prefix(start)?.strip_suffix(end)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        };
        if let Some(id) = id_between(USERS_PATH, "/") {
            Route::User(id)
        } else if let Some(id) = id_between(LESSON_PATH, "/detail/") {
            Route::Lesson(id)
        } else {
            Route::Other
        }
    }
}

/// SimpleJWT's header check: exactly `Bearer <token>`.
fn bearer(request: &Request<Incoming>) -> Option<&str> {
    let value = request
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme == "Bearer" && !token.is_empty()).then_some(token)
}

fn unauthorized() -> Response<Full<Bytes>> {
    json(
        StatusCode::UNAUTHORIZED,
        r#"{"detail":"Given token not valid for any token type","code":"token_not_valid"}"#.into(),
    )
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
