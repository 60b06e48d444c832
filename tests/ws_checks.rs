//! The checks before the upgrade (CONTRACT §3), each row's status, against
//! the real binary and a Django stand-in.

mod common;

use common::django::{DjangoStandin, Outage};
use common::server::Server;
use common::ws::Client;

/// Mentor 10 teaches lessons 100 (no roster) and 200 (roster: student 25).
async fn django() -> DjangoStandin {
    let django = DjangoStandin::start().await;
    django.add_user("tok-m10", 10, true);
    django.add_user("tok-m11", 11, true);
    django.add_user("tok-s25", 25, false);
    django.add_user("tok-s26", 26, false);
    django.add_lesson(100, 1, 10, None);
    django.add_lesson(200, 1, 10, Some(vec![25]));
    django
}

#[tokio::test]
async fn row_1_missing_parameters_are_400() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    for query in [
        "user_id=25&lesson_id=100",
        "token=tok-s25&lesson_id=100",
        "token=tok-s25&user_id=25",
        "token=&user_id=25&lesson_id=100",
        "",
    ] {
        assert_eq!(
            Client::refused_status(&server.ws_url(query)).await,
            400,
            "{query}"
        );
    }
    assert_eq!(django.requests(), 0, "refused before asking Django");
}

#[tokio::test]
async fn row_2_ids_that_are_not_positive_integers_are_400() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    for query in [
        "token=tok-s25&user_id=abc&lesson_id=100",
        "token=tok-s25&user_id=0&lesson_id=100",
        "token=tok-s25&user_id=25&lesson_id=-100",
        "token=tok-s25&user_id=25&lesson_id=1.5",
        "token=tok-m10&user_id=10&lesson_id=100&student_id=x",
    ] {
        assert_eq!(
            Client::refused_status(&server.ws_url(query)).await,
            400,
            "{query}"
        );
    }
}

#[tokio::test]
async fn row_3_origin_not_allowed_is_403_and_missing_origin_passes() {
    let django = django().await;
    let server = Server::start(
        &django.base_url(),
        &[("CHAT_ALLOWED_ORIGINS", "https://app.example")],
    );
    let url = server.ws_url("token=tok-s25&user_id=25&lesson_id=100");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://app.example".parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(request).await.is_ok(),
        "allowed origin"
    );
    Client::connect(&url).await; // no Origin header at all
}

#[tokio::test]
async fn row_4_at_capacity_is_503_before_the_upgrade() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[("CHAT_MAX_CONNECTIONS", "1")]);
    let url = server.ws_url("token=tok-s25&user_id=25&lesson_id=100");
    let first = Client::connect(&url).await;
    assert_eq!(Client::refused_status(&url).await, 503);
    first.close().await;
    // The slot is freed when the session ends.
    let mut admitted = false;
    for _ in 0..50 {
        if tokio_tungstenite::connect_async(url.as_str()).await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(admitted, "a freed slot admits the next connection");
}

#[tokio::test]
async fn row_5_unknown_token_or_id_mismatch_is_401() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    assert_eq!(
        Client::refused_status(&server.ws_url("token=nope&user_id=25&lesson_id=100")).await,
        401
    );
    assert_eq!(
        Client::refused_status(&server.ws_url("token=tok-s25&user_id=26&lesson_id=100")).await,
        401
    );
    // A lax Django answers 200 with the token owner's id: our id check refuses it.
    django.set_lax_user_ids(true);
    assert_eq!(
        Client::refused_status(&server.ws_url("token=tok-s25&user_id=26&lesson_id=100")).await,
        401
    );
}

#[tokio::test]
async fn row_6_unknown_lesson_is_404() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    assert_eq!(
        Client::refused_status(&server.ws_url("token=tok-s25&user_id=25&lesson_id=999")).await,
        404
    );
}

#[tokio::test]
async fn row_7_mentor_without_student_id_is_400() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    assert_eq!(
        Client::refused_status(&server.ws_url("token=tok-m10&user_id=10&lesson_id=100")).await,
        400
    );
}

#[tokio::test]
async fn row_8_mentor_who_is_not_the_teacher_is_403() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    assert_eq!(
        Client::refused_status(
            &server.ws_url("token=tok-m11&user_id=11&lesson_id=100&student_id=25")
        )
        .await,
        403
    );
}

#[tokio::test]
async fn row_9_not_on_the_roster_is_403() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    assert_eq!(
        Client::refused_status(&server.ws_url("token=tok-s26&user_id=26&lesson_id=200")).await,
        403
    );
    assert_eq!(
        Client::refused_status(
            &server.ws_url("token=tok-m10&user_id=10&lesson_id=200&student_id=26")
        )
        .await,
        403
    );
    Client::connect(&server.ws_url("token=tok-s25&user_id=25&lesson_id=200")).await;
    Client::connect(&server.ws_url("token=tok-m10&user_id=10&lesson_id=200&student_id=25")).await;
}

#[tokio::test]
async fn row_10_django_outage_is_503_and_open_sessions_keep_chatting() {
    let django = django().await;
    let server = Server::start(
        &django.base_url(),
        &[
            ("CHAT_DJANGO_TIMEOUT_MS", "300"),
            ("CHAT_AUTH_CACHE_TTL_S", "0"),
        ],
    );
    let (mut student, mut mentor) = common::ws::join_pair(
        &server.ws_url("token=tok-s25&user_id=25&lesson_id=100"),
        &server.ws_url("token=tok-m10&user_id=10&lesson_id=100&student_id=25"),
    )
    .await;

    for outage in [Outage::Status503, Outage::Refuse, Outage::Hang] {
        django.set_outage(outage);
        assert_eq!(
            Client::refused_status(&server.ws_url("token=tok-s26&user_id=26&lesson_id=100")).await,
            503,
            "{outage:?}"
        );
    }
    student
        .send(serde_json::json!({"type": "message", "text": "still here?"}))
        .await;
    assert_eq!(mentor.expect("message").await["text"], "still here?");
    assert_eq!(student.expect("message").await["text"], "still here?");
    student.expect("ack").await;
    django.set_outage(Outage::None);
}

#[tokio::test]
async fn a_deeply_nested_django_answer_is_503_and_the_server_lives_on() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    const DEPTH: usize = 100_000;
    let deep = format!(
        r#"{{"id":{}25{},"is_mentor":false}}"#,
        "[".repeat(DEPTH),
        "]".repeat(DEPTH)
    );
    django.set_answer_body(Some(&deep));
    let url = server.ws_url("token=tok-s25&user_id=25&lesson_id=100");
    assert_eq!(Client::refused_status(&url).await, 503);
    django.set_answer_body(None);
    let mut student = Client::connect(&url).await;
    student.expect("presence").await;
}

#[tokio::test]
async fn the_student_id_of_a_student_is_ignored() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    let mut student =
        Client::connect(&server.ws_url("token=tok-s25&user_id=25&lesson_id=100&student_id=26"))
            .await;
    student.expect("presence").await;
    student
        .send(serde_json::json!({"type": "message", "text": "hi"}))
        .await;
    let event = student.expect("message").await;
    let conversation = event["conversation_id"].as_str().unwrap().to_string();
    let reply = server
        .get(
            &format!("/conversations/{conversation}"),
            Some("tok-s25"),
            Some(25),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["student_id"], 25);
    assert_eq!(reply.json["mentor_id"], 10);
}

#[tokio::test]
async fn a_plain_get_of_ws_is_400() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    let reply = server
        .get("/ws?token=tok-s25&user_id=25&lesson_id=100", None, None)
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["error"]["code"], "bad_request");
}
