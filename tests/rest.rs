//! REST (CONTRACT §4): the seed's paths and shapes, authentication,
//! scoping, pagination, CORS, health, and JSON errors.

mod common;

use common::django::{DjangoStandin, Outage};
use common::server::Server;
use common::ws::Client;
use serde_json::{json, Value};

struct Fixture {
    django: DjangoStandin,
    server: Server,
    /// Conversation of (lesson 100, mentor 10, student 25), with 5 messages.
    conversation: String,
    ids: Vec<String>,
    /// Kept open: students 25 and 26 are online.
    _clients: Vec<Client>,
}

/// A JWT as SimpleJWT shapes it; the signature is never checked here (Django does).
fn jwt_for(user_id: i64) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64.encode(json!({"token_type": "access", "user_id": user_id}).to_string());
    format!("{header}.{payload}.c2lnbmF0dXJl")
}

async fn fixture() -> Fixture {
    let django = DjangoStandin::start().await;
    django.add_user("tok-m10", 10, true);
    django.add_user("tok-s25", 25, false);
    django.add_user("tok-s26", 26, false);
    django.add_user(&jwt_for(25), 25, false);
    django.add_lesson(100, 1, 10, None);
    let server = Server::start(&django.base_url(), &[]);
    let mut student =
        Client::connect(&server.ws_url("token=tok-s25&user_id=25&lesson_id=100")).await;
    student.expect("presence").await;
    let mut ids = Vec::new();
    let mut conversation = String::new();
    for i in 0..5 {
        student
            .send(json!({"type": "message", "text": format!("m{i}")}))
            .await;
        let event = student.expect("message").await;
        student.expect("ack").await;
        conversation = event["conversation_id"].as_str().unwrap().to_string();
        ids.push(event["id"].as_str().unwrap().to_string());
    }
    // Student 26 has a conversation with the same mentor.
    let mut other = Client::connect(&server.ws_url("token=tok-s26&user_id=26&lesson_id=100")).await;
    other.expect("presence").await;
    Fixture {
        django,
        server,
        conversation,
        ids,
        _clients: vec![student, other],
    }
}

fn texts(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn rest_needs_a_confirmed_caller() {
    let f = fixture().await;
    let path = format!("/messages?conversation_id={}", f.conversation);
    let missing = f.server.get(&path, None, None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json["error"]["code"], "unauthorized");
    assert_eq!(
        f.server.get(&path, Some("tok-s25"), None).await.status,
        401,
        "no X-User-Id and no claim"
    );
    assert_eq!(
        f.server.get(&path, Some("tok-s25"), Some(26)).await.status,
        401,
        "token of another user"
    );
    assert_eq!(
        f.server.get(&path, Some("forged"), Some(25)).await.status,
        401
    );
    assert_eq!(
        f.server.get(&path, Some("tok-s25"), Some(25)).await.status,
        200
    );
    // The caller's id from the token's user_id claim.
    assert_eq!(
        f.server.get(&path, Some(&jwt_for(25)), None).await.status,
        200
    );
}

/// A token whose payload nests 40,000 levels after a valid claim (about
/// what the 64 KiB request head lets through; 9,000 overflowed simd-json):
/// no claim (serde_json's recursion limit), so 401, and the server lives on.
#[tokio::test]
async fn a_deeply_nested_token_payload_is_401_not_a_crash() {
    use base64::Engine;
    let f = fixture().await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // Left open: a parser without a depth limit recurses all the way
    // before it finds the end.
    let payload = format!(r#"{{"user_id":25,"x":{}"#, "[".repeat(40_000));
    let token = format!("e30.{}.c2ln", b64.encode(payload));
    // Django would confirm it: only the payload's shape refuses it.
    f.django.add_user(&token, 25, false);
    let path = format!("/messages?conversation_id={}", f.conversation);
    let reply = f.server.get(&path, Some(&token), None).await;
    assert_eq!(reply.status, 401, "{:?}", reply.json);
    assert_eq!(
        f.server.get(&path, Some(&jwt_for(25)), None).await.status,
        200
    );
}

#[tokio::test]
async fn message_history_has_the_seed_shape_oldest_first() {
    let f = fixture().await;
    let reply = f
        .server
        .get(
            &format!("/messages?conversation_id={}", f.conversation),
            Some("tok-m10"),
            Some(10),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(texts(&reply.json), ["m0", "m1", "m2", "m3", "m4"]);
    let first = &reply.json[0];
    let mut keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        // The seed's keys, plus `seq` (CONTRACT §6).
        [
            "conversation_id",
            "created_at",
            "id",
            "sender_id",
            "seq",
            "text"
        ]
    );
    assert_eq!(first["sender_id"], 25);
    assert_eq!(first["conversation_id"], f.conversation.as_str());
}

#[tokio::test]
async fn history_pages_with_limit_before_and_after() {
    let f = fixture().await;
    let (server, conversation) = (&f.server, f.conversation.as_str());
    let get = |query: String| async move {
        server
            .get(
                &format!("/messages?conversation_id={conversation}&{query}"),
                Some("tok-s25"),
                Some(25),
            )
            .await
    };
    assert_eq!(
        texts(&get("limit=2".into()).await.json),
        ["m3", "m4"],
        "a bare limit gives the newest, oldest first"
    );
    assert_eq!(
        texts(&get(format!("limit=2&before={}", f.ids[3])).await.json),
        ["m1", "m2"]
    );
    assert_eq!(
        texts(&get(format!("limit=2&after={}", f.ids[1])).await.json),
        ["m2", "m3"]
    );
    assert_eq!(
        texts(&get(format!("after={}", f.ids[4])).await.json),
        Vec::<String>::new()
    );
    assert_eq!(
        texts(&get(format!("before={}", f.ids[0])).await.json),
        Vec::<String>::new()
    );
    assert_eq!(
        texts(
            &get(format!("after={}&before={}", f.ids[0], f.ids[3]))
                .await
                .json
        ),
        ["m1", "m2"]
    );
    // Crossed cursors (`after` not below `before`) match nothing: an empty
    // page, and the store goes on serving (once, a SQLite reader panicked
    // on the reversed range of its unmerged tail and never read again).
    for crossed in [
        format!("after={}&before={}", f.ids[3], f.ids[1]),
        format!("after={}&before={}", f.ids[2], f.ids[2]),
        "after=ffffffffffffffffffffffff&before=000000000000000000000001".to_string(),
        "after_seq=4&before_seq=2".to_string(),
    ] {
        for _ in 0..4 {
            let reply = get(crossed.clone()).await;
            assert_eq!(reply.status, 200, "{crossed}: {:?}", reply.json);
            assert_eq!(reply.json, json!([]), "{crossed}");
        }
    }
    assert_eq!(texts(&get("limit=1".into()).await.json), ["m4"]);
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=10001",
        "limit=-1",
        "limit=x",
        "before=nope",
        "after=123",
    ] {
        let reply = get(bad.into()).await;
        assert_eq!(reply.status, 400, "{bad}");
        assert_eq!(reply.json["error"]["code"], "bad_request");
    }
    // `limit` is 1–1000 (CONTRACT §4); without it the page is
    // CHAT_MAX_HISTORY (10,000 by default), byte-capped either way.
    for good in ["limit=5", "limit=1000", ""] {
        let reply = get(good.into()).await;
        assert_eq!(reply.status, 200, "{good}");
        assert_eq!(texts(&reply.json), ["m0", "m1", "m2", "m3", "m4"]);
        assert!(reply.headers.get("x-history-truncated").is_none());
    }
}

/// No page holds more than CHAT_MAX_HISTORY messages, whatever `limit`
/// asks (within its 1–1000).
#[tokio::test]
async fn limit_ranges_up_to_the_configured_max_history() {
    let django = DjangoStandin::start().await;
    django.add_user("tok-s25", 25, false);
    django.add_lesson(100, 1, 10, None);
    let server = Server::start(&django.base_url(), &[("CHAT_MAX_HISTORY", "2")]);
    let (conversation, _) = send_history(&server, &["a".into(), "b".into(), "c".into()]).await;
    let get = |limit: &'static str| {
        let path = format!("/messages?conversation_id={conversation}{limit}");
        let server = &server;
        async move { server.get(&path, Some("tok-s25"), Some(25)).await }
    };
    assert_eq!(texts(&get("").await.json), ["b", "c"]);
    assert_eq!(texts(&get("&limit=2").await.json), ["b", "c"]);
    assert_eq!(texts(&get("&limit=1").await.json), ["c"]);
    assert_eq!(texts(&get("&limit=3").await.json), ["b", "c"]);
    assert_eq!(texts(&get("&limit=1000").await.json), ["b", "c"]);
    let over = get("&limit=1001").await;
    assert_eq!(over.status, 400);
    assert_eq!(
        over.json["error"]["message"],
        "limit must be an integer from 1 to 1000"
    );
}

/// Student 25 connects to lesson 100 and sends `texts`, each acknowledged;
/// returns the conversation and the message ids, oldest first.
async fn send_history(server: &Server, texts: &[String]) -> (String, Vec<String>) {
    let mut student =
        Client::connect(&server.ws_url("token=tok-s25&user_id=25&lesson_id=100")).await;
    student.expect("presence").await;
    let (mut conversation, mut ids) = (String::new(), Vec::new());
    for text in texts {
        student.send(json!({"type": "message", "text": text})).await;
        let event = student.expect("message").await;
        student.expect("ack").await;
        conversation = event["conversation_id"].as_str().unwrap().to_string();
        ids.push(event["id"].as_str().unwrap().to_string());
    }
    student.close().await;
    (conversation, ids)
}

fn header<'a>(reply: &'a common::server::Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).map(|value| value.to_str().unwrap())
}

/// With CHAT_MAX_HISTORY_BYTES small, a page is cut by size: it says so,
/// names the cursor to continue from, and following it either way walks
/// the whole history with no gap and no repeat.
#[tokio::test]
async fn a_page_cut_by_bytes_says_so_and_continuing_walks_the_whole_history() {
    const BUDGET: usize = 1024;
    let django = DjangoStandin::start().await;
    django.add_user("tok-s25", 25, false);
    django.add_lesson(100, 1, 10, None);
    let server = Server::start(
        &django.base_url(),
        &[("CHAT_MAX_HISTORY_BYTES", &BUDGET.to_string())],
    );
    // Control characters: 6 bytes each in JSON, 1 in the text.
    let sent: Vec<String> = (0..9)
        .map(|n| format!("{}{n}", "\u{1}".repeat(10 + 15 * (n % 4))))
        .collect();
    let (conversation, ids) = send_history(&server, &sent).await;
    let get = |query: String| {
        let server = &server;
        let conversation = &conversation;
        async move {
            let reply = server
                .get(
                    &format!("/messages?conversation_id={conversation}{query}"),
                    Some("tok-s25"),
                    Some(25),
                )
                .await;
            assert_eq!(reply.status, 200, "{query}: {:?}", reply.json);
            let length: usize = header(&reply, "content-length").unwrap().parse().unwrap();
            let count = reply.json.as_array().unwrap().len();
            assert!(count >= 1);
            assert!(length <= BUDGET || count == 1, "{query}: {length} bytes");
            reply
        }
    };

    let newest = get(String::new()).await;
    assert_eq!(header(&newest, "x-history-truncated"), Some("true"));
    let page = texts(&newest.json);
    assert!(page.len() < sent.len());
    assert_eq!(page, sent[sent.len() - page.len()..], "the newest messages");
    assert_eq!(
        header(&newest, "x-history-next-before"),
        newest.json[0]["id"].as_str()
    );
    let expose = header(&newest, "access-control-expose-headers").unwrap();
    for name in [
        "X-History-Truncated",
        "X-History-Next-Before",
        "X-History-Next-After",
    ] {
        assert!(expose.contains(name), "{expose}");
    }

    // Back: `before` = the page's first id, until a page is not cut.
    let (mut walked, mut pages, mut reply) = (Vec::new(), 0, newest);
    loop {
        pages += 1;
        walked.splice(0..0, texts(&reply.json));
        match header(&reply, "x-history-next-before") {
            Some(before) => reply = get(format!("&before={before}")).await,
            None => {
                assert!(header(&reply, "x-history-truncated").is_none());
                break;
            }
        }
    }
    assert_eq!(walked, sent, "walking back");
    assert!(pages >= 3, "{pages} pages");

    // Forward: `after` = the page's last id.
    let mut walked = Vec::new();
    let mut reply = get("&after=000000000000000000000000".into()).await;
    loop {
        walked.extend(texts(&reply.json));
        match header(&reply, "x-history-next-after") {
            Some(after) => {
                assert_eq!(
                    Some(after),
                    reply.json.as_array().unwrap().last().unwrap()["id"].as_str()
                );
                reply = get(format!("&after={after}")).await;
            }
            None => break,
        }
    }
    assert_eq!(walked, sent, "walking forward");

    // Pages the budget does not cut carry no header.
    let small = get("&limit=2".into()).await;
    assert_eq!(texts(&small.json), sent[7..]);
    assert!(header(&small, "x-history-truncated").is_none());
    let last = get(format!("&after={}", ids[7])).await;
    assert_eq!(texts(&last.json), sent[8..]);
    assert!(header(&last, "x-history-truncated").is_none());
}

#[tokio::test]
async fn messages_need_a_well_formed_conversation_id_the_caller_is_in() {
    let f = fixture().await;
    assert_eq!(
        f.server
            .get("/messages", Some("tok-s25"), Some(25))
            .await
            .status,
        400
    );
    assert_eq!(
        f.server
            .get("/messages?conversation_id=xyz", Some("tok-s25"), Some(25))
            .await
            .status,
        400
    );
    let unknown = f
        .server
        .get(
            "/messages?conversation_id=663af8129dde123456789def",
            Some("tok-s25"),
            Some(25),
        )
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json["error"]["code"], "not_found");
    let foreign = f
        .server
        .get(
            &format!("/messages?conversation_id={}", f.conversation),
            Some("tok-s26"),
            Some(26),
        )
        .await;
    assert_eq!(
        foreign.status, 404,
        "another student's conversation does not exist for you"
    );
}

#[tokio::test]
async fn conversations_are_scoped_to_the_caller() {
    let f = fixture().await;
    let mine = f
        .server
        .get("/conversations", Some("tok-s25"), Some(25))
        .await;
    assert_eq!(mine.status, 200);
    let list = mine.json.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let mut keys: Vec<&String> = list[0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        // The seed's keys, plus the caller's read state (CONTRACT §6).
        [
            "created_at",
            "id",
            "last_message",
            "last_read_seq",
            "last_seq",
            "lesson_id",
            "mentor_id",
            "other_last_read_seq",
            "student_id",
            "unread_count",
            "waiting_since"
        ]
    );
    assert_eq!(list[0]["id"], f.conversation.as_str());
    assert_eq!(
        (
            list[0]["lesson_id"].as_i64(),
            list[0]["mentor_id"].as_i64(),
            list[0]["student_id"].as_i64()
        ),
        (Some(100), Some(10), Some(25))
    );

    let mentor = f
        .server
        .get("/conversations?mentor_id=10", Some("tok-m10"), Some(10))
        .await;
    assert_eq!(
        mentor.json.as_array().unwrap().len(),
        2,
        "both students, oldest first"
    );
    assert_eq!(mentor.json[0]["student_id"], 25);
    assert_eq!(mentor.json[1]["student_id"], 26);
    let both = f
        .server
        .get(
            "/conversations?mentor_id=10&student_id=26",
            Some("tok-m10"),
            Some(10),
        )
        .await;
    assert_eq!(both.json.as_array().unwrap().len(), 1);
    assert_eq!(both.json[0]["student_id"], 26);
    let none = f
        .server
        .get("/conversations?student_id=25", Some("tok-s25"), Some(25))
        .await;
    assert_eq!(none.json.as_array().unwrap().len(), 1);

    let forbidden = f
        .server
        .get("/conversations?student_id=26", Some("tok-s25"), Some(25))
        .await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json["error"]["code"], "forbidden");
    assert_eq!(
        f.server
            .get("/conversations?mentor_id=abc", Some("tok-m10"), Some(10))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn an_empty_list_is_an_empty_array() {
    let f = fixture().await;
    f.django.add_user("tok-m12", 12, true);
    let reply = f
        .server
        .get("/conversations", Some("tok-m12"), Some(12))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json, json!([]));
}

#[tokio::test]
async fn one_conversation_by_id() {
    let f = fixture().await;
    let reply = f
        .server
        .get(
            &format!("/conversations/{}", f.conversation),
            Some("tok-m10"),
            Some(10),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["id"], f.conversation.as_str());
    assert_eq!(
        f.server
            .get("/conversations/not-an-id", Some("tok-m10"), Some(10))
            .await
            .status,
        400
    );
    assert_eq!(
        f.server
            .get(
                "/conversations/663af8129dde123456789def",
                Some("tok-m10"),
                Some(10)
            )
            .await
            .status,
        404
    );
    assert_eq!(
        f.server
            .get(
                &format!("/conversations/{}", f.conversation),
                Some("tok-s26"),
                Some(26)
            )
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn presence_endpoint() {
    let f = fixture().await;
    let reply = f
        .server
        .get("/presence?user_id=26", Some("tok-m10"), Some(10))
        .await;
    assert_eq!(reply.json, json!({"user_id": 26, "online": true}));
    // No oracle: a user the caller shares no conversation with is 404,
    // online or not (26 is online, but shares nothing with student 25).
    let reply = f
        .server
        .get("/presence?user_id=99", Some("tok-m10"), Some(10))
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json["error"]["code"], "not_found");
    let reply = f
        .server
        .get("/presence?user_id=26", Some("tok-s25"), Some(25))
        .await;
    assert_eq!(reply.status, 404, "{:?}", reply.json);
    // The caller may always ask about themselves.
    let reply = f
        .server
        .get("/presence?user_id=25", Some("tok-s25"), Some(25))
        .await;
    assert_eq!(reply.json, json!({"user_id": 25, "online": true}));
    // And about the other participant of a conversation, offline too.
    let reply = f
        .server
        .get("/presence?user_id=10", Some("tok-s25"), Some(25))
        .await;
    assert_eq!(reply.json, json!({"user_id": 10, "online": false}));
    assert_eq!(
        f.server
            .get("/presence", Some("tok-m10"), Some(10))
            .await
            .status,
        400
    );
    assert_eq!(
        f.server
            .get("/presence?user_id=x", Some("tok-m10"), Some(10))
            .await
            .status,
        400
    );
    assert_eq!(
        f.server
            .get("/presence?user_id=26", None, None)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn cors_headers_and_preflight_without_authentication() {
    let f = fixture().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let preflight = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, f.server.http_url("/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(
        headers["access-control-allow-methods"],
        "GET, POST, OPTIONS"
    );
    assert_eq!(
        headers["access-control-allow-headers"],
        "Content-Type, Authorization, X-User-Id"
    );
    let error = f.server.get("/messages", None, None).await;
    assert_eq!(
        error.headers["access-control-allow-origin"], "*",
        "errors carry CORS headers too"
    );
}

#[tokio::test]
async fn health_readiness_and_unknown_paths() {
    let f = fixture().await;
    let health = f.server.get("/healthz", None, None).await;
    assert_eq!(
        (health.status, health.json.clone()),
        (200, json!({"status": "ok"}))
    );
    let ready = f.server.get("/readyz", None, None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json["status"], "ok");
    assert_eq!(ready.json["detail"]["django_reachable"], true);
    let store = if common::postgres::binary_tests_use_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(ready.json["detail"]["store"], store);
    assert!(ready.json["detail"]["closed_connections"]["slow_consumer"].is_u64());
    f.django.set_outage(Outage::Refuse);
    let ready = f.server.get("/readyz", None, None).await;
    assert_eq!(ready.status, 200, "Django is reported, not required");
    assert_eq!(ready.json["detail"]["django_reachable"], false);

    let unknown = f.server.get("/nope", None, None).await;
    assert_eq!(
        (unknown.status, unknown.json["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let post = reqwest::Client::new()
        .post(f.server.http_url("/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
}

#[tokio::test]
async fn a_django_outage_is_503_on_rest() {
    let f = fixture().await;
    f.django.set_outage(Outage::Status503);
    let reply = f
        .server
        .get("/conversations", Some("tok-s25"), Some(25))
        .await;
    // The caller may be cached from the fixture's connect: an uncached caller shows the outage.
    let reply = if reply.status == 200 {
        f.server
            .get("/conversations", Some("tok-m10"), Some(10))
            .await
    } else {
        reply
    };
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json["error"]["code"], "unavailable");
}
