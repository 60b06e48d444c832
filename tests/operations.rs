//! Operations (issue 15) on the real binary: `/metrics` moves by exactly
//! what a scripted session did, JSON logs carry the connection's span and
//! never a token, `/` names the endpoints.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::django::DjangoStandin;
use common::server::Server;
use common::ws::{join_pair, Client};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Samples of an OpenMetrics text: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(server: &Server) -> (String, HashMap<String, f64>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::get(server.http_url("/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("metrics text");
    assert!(text.ends_with("# EOF\n"), "not closed by # EOF");
    let parsed = samples(&text);
    (text, parsed)
}

/// How much `key` grew between two scrapes (absent counts as 0). A key
/// ending in `{` sums every series of that name (e.g. over shards).
fn grew(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    let total = |samples: &HashMap<String, f64>| -> f64 {
        match key.strip_suffix('{') {
            Some(name) => samples
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("{name}{{")))
                .map(|(_, v)| v)
                .sum(),
            None => samples.get(key).copied().unwrap_or(0.0),
        }
    };
    total(after) - total(before)
}

async fn wait_for(server: &Server, key: &str, want: f64) -> HashMap<String, f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, now) = scrape(server).await;
        if now.get(key).copied().unwrap_or(0.0) == want {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} stayed {:?}, want {want}",
            now.get(key)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_move_by_what_a_scripted_session_did() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[]);
    let (_, before) = scrape(&server).await;
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
        "chat_connections_max",
        "chat_writer_healthy",
    ] {
        assert!(
            before.get(name).is_some_and(|v| *v > 0.0),
            "{name} missing or 0"
        );
    }

    // Refused before the upgrade: a wrong token (401), no lesson (400).
    let wrong = "token=nope&user_id=25&lesson_id=100";
    assert_eq!(Client::refused_status(&server.ws_url(wrong)).await, 401);
    assert_eq!(
        Client::refused_status(&server.ws_url("token=x&user_id=25")).await,
        400
    );

    let (mut student, mut mentor) = join_pair(
        &server.ws_url(common::django::PAIR_STUDENT),
        &server.ws_url(common::django::PAIR_MENTOR),
    )
    .await;
    let (_, open) = scrape(&server).await;
    assert_eq!(open["chat_connections_open{role=\"mentor\"}"], 1.0);
    assert_eq!(open["chat_connections_open{role=\"student\"}"], 1.0);

    for n in 0..3 {
        student
            .send(
                json!({"type":"message","text":format!("hello {n}"),"client_id":format!("c-{n}")}),
            )
            .await;
        assert_eq!(
            student.expect("message").await["text"],
            format!("hello {n}")
        );
        student.expect("ack").await;
        assert_eq!(mentor.expect("message").await["text"], format!("hello {n}"));
    }
    // A resend of a stored client_id: acknowledged, not stored again.
    student
        .send(json!({"type":"message","text":"hello 0","client_id":"c-0"}))
        .await;
    student.expect("ack").await;
    // Refused frames, by code.
    student.send_raw(Message::text("{not json")).await;
    assert_eq!(student.expect("error").await["code"], "bad_json");
    student.send(json!({"type":"message","text":""})).await;
    assert_eq!(student.expect("error").await["code"], "empty_text");

    let history = server
        .get(
            &format!(
                "/messages?conversation_id={}",
                open_conversation(&server).await
            ),
            Some("tok-s25"),
            Some(25),
        )
        .await;
    assert_eq!(history.status, 200);
    assert_eq!(history.json.as_array().map(Vec::len), Some(3));

    student.close().await;
    mentor.close().await;
    // The student's gauge cannot rise again once at 0: wait for it, then
    // for the mentor's.
    wait_for(&server, "chat_connections_open{role=\"student\"}", 0.0).await;
    let after = wait_for(&server, "chat_connections_open{role=\"mentor\"}", 0.0).await;

    let expect = [
        ("chat_messages_received_total", 4.0),
        ("chat_messages_stored_total", 3.0),
        ("chat_messages_duplicate_total", 1.0),
        ("chat_messages_relayed_total", 3.0),
        ("chat_delivery_seconds_count{", 3.0),
        ("chat_ws_errors_total{code=\"bad_json\"}", 1.0),
        ("chat_ws_errors_total{code=\"empty_text\"}", 1.0),
        ("chat_connections_opened_total{role=\"mentor\"}", 1.0),
        ("chat_connections_opened_total{role=\"student\"}", 1.0),
        (
            "chat_connections_refused_total{status=\"401\",code=\"unauthorized\"}",
            1.0,
        ),
        (
            "chat_connections_refused_total{status=\"400\",code=\"bad_request\"}",
            1.0,
        ),
        (
            "chat_connections_closed_total{reason=\"normal\",code=\"1000\"}",
            2.0,
        ),
        (
            "chat_http_requests_total{route=\"/messages\",status=\"200\"}",
            1.0,
        ),
        (
            "chat_http_requests_total{route=\"/ws\",status=\"101\"}",
            2.0,
        ),
        (
            "chat_http_requests_total{route=\"/ws\",status=\"401\"}",
            1.0,
        ),
        // Django: the wrong token was denied once; each of the pair's
        // tokens was looked up once (the REST call hit the cache).
        (
            "chat_django_request_seconds_count{endpoint=\"users\",outcome=\"denied\"}",
            1.0,
        ),
        (
            "chat_django_request_seconds_count{endpoint=\"users\",outcome=\"ok\"}",
            2.0,
        ),
    ];
    let mut wrong = Vec::new();
    for (key, want) in expect {
        let got = grew(&before, &after, key);
        if got != want {
            wrong.push(format!("{key}: grew by {got}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Every op the writer completed went through a batch of at least one
    // op; the 3 inserts, the duplicate and the new conversation at least.
    assert!(grew(&before, &after, "chat_writer_batch_ops_sum") >= 4.0);
    assert!(grew(&before, &after, "chat_writer_commit_seconds_count") >= 1.0);
    // The REST call's user look-up was answered from the cache.
    assert!(
        grew(
            &before,
            &after,
            "chat_django_cache_total{endpoint=\"users\",result=\"hit\"}"
        ) >= 1.0
    );
    assert_eq!(after.get("chat_writer_queue_depth"), Some(&0.0));
    assert!(after.contains_key("chat_shard_queue_depth{shard=\"0\"}"));
    assert!(after.contains_key("chat_shard_busy_seconds_total{shard=\"0\"}"));
}

/// The pair's conversation id, from the student's inbox.
async fn open_conversation(server: &Server) -> String {
    let inbox = server
        .get("/conversations", Some("tok-s25"), Some(25))
        .await;
    inbox.json[0]["id"]
        .as_str()
        .expect("the pair's conversation")
        .to_string()
}

#[tokio::test]
async fn metrics_count_django_outages_as_refusals() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[]);
    let (_, before) = scrape(&server).await;
    django.set_outage(common::django::Outage::Status503);
    assert_eq!(
        Client::refused_status(&server.ws_url(common::django::PAIR_STUDENT)).await,
        503
    );
    let (_, after) = scrape(&server).await;
    assert_eq!(
        grew(
            &before,
            &after,
            "chat_django_outages_total{endpoint=\"users\"}"
        ),
        1.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "chat_connections_refused_total{status=\"503\",code=\"unavailable\"}"
        ),
        1.0
    );
}

/// Tokens with a shape no other log text has, so a leak cannot hide.
const STUDENT_TOKEN: &str = "tok-SECRET-student-7f3a9";
const MENTOR_TOKEN: &str = "tok-SECRET-mentor-c41e2";
const WRONG_TOKEN: &str = "tok-SECRET-wrong-88d0b";

#[tokio::test]
async fn json_logs_carry_the_connection_and_never_a_token() {
    let django = DjangoStandin::start().await;
    django.add_user(STUDENT_TOKEN, 25, false);
    django.add_user(MENTOR_TOKEN, 10, true);
    django.add_lesson(100, 1, 10, None);
    // Debug: every line the service and its libraries would ever write.
    let mut server = Server::start(
        &django.base_url(),
        &[("CHAT_LOG_FORMAT", "json"), ("CHAT_LOG", "debug")],
    );
    let student_query = format!("token={STUDENT_TOKEN}&user_id=25&lesson_id=100");
    let mentor_query = format!("token={MENTOR_TOKEN}&user_id=10&lesson_id=100&student_id=25");
    let (mut student, mut mentor) = join_pair(
        &server.ws_url(&student_query),
        &server.ws_url(&mentor_query),
    )
    .await;
    student
        .send(json!({"type":"message","text":"hi","client_id":"a"}))
        .await;
    mentor.expect("message").await;
    student.send_raw(Message::text("{broken")).await;
    student.expect("message").await;
    // Refusals: a wrong token on /ws and on REST, a token for another user.
    let wrong = format!("token={WRONG_TOKEN}&user_id=25&lesson_id=100");
    assert_eq!(Client::refused_status(&server.ws_url(&wrong)).await, 401);
    assert_eq!(
        server
            .get("/conversations", Some(WRONG_TOKEN), Some(25))
            .await
            .status,
        401
    );
    assert_eq!(
        server
            .get("/conversations", Some(STUDENT_TOKEN), Some(10))
            .await
            .status,
        401
    );
    assert_eq!(
        server
            .get("/conversations", Some(STUDENT_TOKEN), Some(25))
            .await
            .status,
        200
    );
    // A Django outage while a token is being checked.
    django.set_outage(common::django::Outage::Status503);
    let fresh = format!("token={WRONG_TOKEN}x&user_id=26&lesson_id=100");
    assert_eq!(Client::refused_status(&server.ws_url(&fresh)).await, 503);
    student.close().await;
    mentor.close().await;
    assert!(server.terminate().success());

    let logs = server.logs.lock().clone();
    assert!(logs.len() > 10, "too few lines to judge: {logs:#?}");
    let mut closed_spans = Vec::new();
    for line in &logs {
        for token in [STUDENT_TOKEN, MENTOR_TOKEN, WRONG_TOKEN] {
            assert!(!line.contains(token), "a token in the log: {line}");
        }
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
        assert!(event["timestamp"].is_string() && event["level"].is_string());
        if event["fields"]["message"] == "connection closed" {
            closed_spans.push(event["span"].clone());
        }
    }
    // Each session's lines carry who and where.
    let mut roles: Vec<(i64, String)> = closed_spans
        .iter()
        .map(|span| {
            assert_eq!(span["name"], "conn", "{span}");
            assert_eq!(span["lesson"], 100, "{span}");
            assert_eq!(
                span["conversation"].as_str().map(str::len),
                Some(24),
                "{span}"
            );
            (
                span["user"].as_i64().unwrap_or_default(),
                span["role"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        vec![(10, "mentor".to_string()), (25, "student".to_string())]
    );
}

#[tokio::test]
async fn the_root_names_the_endpoints() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::get(server.http_url("/")).await.expect("GET /");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/html"));
    let page = response.text().await.expect("page");
    for endpoint in [
        "/ws",
        "/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
        "/messages",
    ] {
        assert!(page.contains(endpoint), "{endpoint} not named");
    }
    let other = server.get("/nothing-here", None, None).await;
    assert_eq!(other.status, 404);
    assert_eq!(other.json["error"]["code"], "not_found");
}

/// The names a dashboard query or the README's table uses, each served.
/// Families whose labels are known in advance are there from the start;
/// the open-ended ones (refusal statuses, HTTP routes) after one event.
#[tokio::test]
async fn every_metric_the_dashboard_and_the_readme_name_is_served() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[]);
    let wrong = "token=nope&user_id=25&lesson_id=100";
    assert_eq!(Client::refused_status(&server.ws_url(wrong)).await, 401);
    let (text, _) = scrape(&server).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let mut named = Vec::new();
    for file in ["deploy/grafana-dashboard.json", "README.md"] {
        let body = std::fs::read_to_string(format!("{root}/{file}")).expect(file);
        let mut rest = body.as_str();
        while let Some(at) = ["chat_", "process_"]
            .iter()
            .filter_map(|prefix| rest.find(prefix))
            .min()
        {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rest = &rest[at + name.len().max(1)..];
            // `process_*` (the family) and prose like `chat_service`.
            if name.ends_with('_') || name == "chat_service" || name.starts_with("chat_service") {
                continue;
            }
            named.push((file, name));
        }
    }
    assert!(named.len() > 40, "too few names found: {named:?}");
    let mut unknown = Vec::new();
    for (file, name) in named {
        // The suffix a sample name carries is the type's: `_total` only on
        // counters, `_bucket`/`_sum`/`_count` on histograms, `_info` on info.
        let (base, types) = [
            ("_total", &["counter"][..]),
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram"][..]),
            ("_count", &["histogram"][..]),
            ("_info", &["info"][..]),
        ]
        .iter()
        .find_map(|(suffix, types)| Some((name.strip_suffix(suffix)?, *types)))
        .unwrap_or((&name, &["gauge", "counter", "histogram", "info"][..]));
        if !types
            .iter()
            .any(|kind| text.contains(&format!("# TYPE {base} {kind}\n")))
        {
            unknown.push(format!("{file}: {name}"));
        }
    }
    unknown.dedup();
    assert!(unknown.is_empty(), "named but not served: {unknown:#?}");
}
