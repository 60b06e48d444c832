//! `DjangoClient` against the Django stand-in over real loopback HTTP.

mod common;

use std::time::Duration;

use chat_service::auth::django::{DjangoClient, DjangoSettings};
use chat_service::auth::{AuthError, Lesson, User};
use common::django::{DjangoStandin, Outage};

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.SECRET-TOKEN.c2ln";

fn settings(base_url: &str) -> DjangoSettings {
    DjangoSettings {
        base_url: base_url.to_string(),
        user_path: "/api/content/chat-service/users/{user_id}/".into(),
        lesson_path: "/api/content/chat-service/lesson/{lesson_id}/detail/".into(),
        timeout: Duration::from_secs(5),
        cache_ttl: Duration::from_secs(60),
    }
}

fn client(django: &DjangoStandin) -> DjangoClient {
    DjangoClient::new(settings(&django.base_url())).unwrap()
}

fn client_with(django: &DjangoStandin, timeout: Duration, cache_ttl: Duration) -> DjangoClient {
    DjangoClient::new(DjangoSettings {
        timeout,
        cache_ttl,
        ..settings(&django.base_url())
    })
    .unwrap()
}

fn assert_outage_without_token(result: Result<impl std::fmt::Debug, AuthError>) {
    match result {
        Err(AuthError::Outage(reason)) => {
            assert!(!reason.contains("SECRET"), "token leaked into {reason:?}");
        }
        other => panic!("expected an outage, got {other:?}"),
    }
}

#[tokio::test]
async fn confirms_a_user_and_reads_a_lesson() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, true);
    django.add_lesson(7, 3, 15, None);
    let client = client(&django);

    assert_eq!(
        client.user(TOKEN, 15).await,
        Ok(User {
            id: 15,
            is_mentor: true
        })
    );
    assert_eq!(
        client.lesson(TOKEN, 7).await,
        Ok(Lesson {
            id: 7,
            course_id: 3,
            teacher_id: 15,
            student_ids: None,
        })
    );
}

#[tokio::test]
async fn reads_student_ids_when_django_sends_them() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 25, false);
    django.add_lesson(7, 3, 15, Some(vec![25, 26]));
    django.add_lesson(8, 3, 15, Some(vec![]));
    let client = client(&django);

    assert_eq!(
        client.lesson(TOKEN, 7).await.unwrap().student_ids,
        Some(vec![25, 26])
    );
    assert_eq!(
        client.lesson(TOKEN, 8).await.unwrap().student_ids,
        Some(vec![])
    );
}

#[tokio::test]
async fn a_second_look_up_is_served_from_the_cache() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, false);
    django.add_lesson(7, 3, 10, None);
    let client = client(&django);

    for _ in 0..3 {
        client.user(TOKEN, 15).await.unwrap();
        client.lesson(TOKEN, 7).await.unwrap();
    }
    assert_eq!(django.user_requests(), 1);
    assert_eq!(django.lesson_requests(), 1);
}

#[tokio::test]
async fn clones_share_the_cache() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, false);
    let client = client(&django);
    let clone = client.clone();

    client.user(TOKEN, 15).await.unwrap();
    clone.user(TOKEN, 15).await.unwrap();
    assert_eq!(django.user_requests(), 1);
}

#[tokio::test]
async fn only_200_answers_are_cached() {
    let django = DjangoStandin::start().await;
    django.add_lesson(7, 3, 10, None);
    let client = client(&django);

    assert_eq!(client.user(TOKEN, 15).await, Err(AuthError::Unauthorized));
    assert_eq!(
        client.lesson(TOKEN, 7).await,
        Err(AuthError::LessonNotFound)
    );
    django.add_user(TOKEN, 15, false);
    assert_eq!(
        client.user(TOKEN, 15).await,
        Ok(User {
            id: 15,
            is_mentor: false
        })
    );
    assert!(client.lesson(TOKEN, 7).await.is_ok());
    assert_eq!(django.user_requests(), 2);
    assert_eq!(django.lesson_requests(), 2);
}

#[tokio::test]
async fn cached_answers_expire_after_the_ttl() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, false);
    let client = client_with(&django, Duration::from_secs(5), Duration::from_millis(50));

    client.user(TOKEN, 15).await.unwrap();
    client.user(TOKEN, 15).await.unwrap();
    // Sleeping longer only makes the entry staler, so this cannot flake.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Revoked meanwhile: the expired answer must not be reused.
    django.remove_user(TOKEN);
    assert_eq!(client.user(TOKEN, 15).await, Err(AuthError::Unauthorized));
    assert!(django.user_requests() >= 2);
}

#[tokio::test]
async fn a_zero_ttl_asks_django_every_time() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, false);
    let client = client_with(&django, Duration::from_secs(5), Duration::ZERO);

    for _ in 0..3 {
        client.user(TOKEN, 15).await.unwrap();
    }
    assert_eq!(django.user_requests(), 3);
}

#[tokio::test]
async fn concurrent_identical_look_ups_share_one_request() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, true);
    django.add_lesson(7, 3, 15, None);
    django.set_delay(Duration::from_millis(300));
    let client = client(&django);

    let users = futures_util::future::join_all((0..20).map(|_| client.user(TOKEN, 15))).await;
    let lessons = futures_util::future::join_all((0..20).map(|_| client.lesson(TOKEN, 7))).await;
    assert!(
        users.iter().all(|u| *u
            == Ok(User {
                id: 15,
                is_mentor: true
            })),
        "{users:?}"
    );
    assert!(
        lessons.iter().all(|l| l.as_ref().is_ok_and(|l| l.id == 7)),
        "{lessons:?}"
    );
    assert_eq!(django.user_requests(), 1);
    assert_eq!(django.lesson_requests(), 1);
}

#[tokio::test]
async fn concurrent_failing_look_ups_share_one_request_and_are_not_cached() {
    let django = DjangoStandin::start().await;
    django.set_delay(Duration::from_millis(300));
    let client = client(&django);

    let users = futures_util::future::join_all((0..20).map(|_| client.user(TOKEN, 15))).await;
    assert!(
        users.iter().all(|u| *u == Err(AuthError::Unauthorized)),
        "{users:?}"
    );
    assert_eq!(django.user_requests(), 1);

    django.set_delay(Duration::ZERO);
    django.add_user(TOKEN, 15, false);
    assert!(client.user(TOKEN, 15).await.is_ok());
    assert_eq!(django.user_requests(), 2);
}

#[tokio::test]
async fn a_look_up_outlives_its_first_caller_and_is_cleared_when_done() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, false);
    django.set_delay(Duration::from_secs(1));
    // No cache: whatever a later call finds must come from the flight map.
    let client = client_with(&django, Duration::from_secs(5), Duration::ZERO);

    let first = tokio::spawn({
        let client = client.clone();
        async move { client.user(TOKEN, 15).await }
    });
    while django.user_requests() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());

    // Joins the request the cancelled caller started.
    assert_eq!(
        client.user(TOKEN, 15).await,
        Ok(User {
            id: 15,
            is_mentor: false
        })
    );
    assert_eq!(django.user_requests(), 1);

    // The finished flight is gone: the next call asks again.
    django.set_delay(Duration::ZERO);
    assert!(client.user(TOKEN, 15).await.is_ok());
    assert_eq!(django.user_requests(), 2);
}

#[tokio::test]
async fn different_tokens_are_different_cache_entries() {
    let django = DjangoStandin::start().await;
    django.add_user("token-a", 15, false);
    django.add_user("token-b", 15, false);
    let client = client(&django);

    client.user("token-a", 15).await.unwrap();
    client.user("token-b", 15).await.unwrap();
    assert_eq!(django.user_requests(), 2);
    // A cached answer for one token never vouches for another.
    assert_eq!(
        client.user("token-c", 15).await,
        Err(AuthError::Unauthorized)
    );
    assert_eq!(django.user_requests(), 3);
}

#[tokio::test]
async fn an_answer_for_another_user_is_unauthorized() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, true);
    django.set_lax_user_ids(true);
    let client = client(&django);

    // Django says 200 for user 15 when asked about 16.
    assert_eq!(client.user(TOKEN, 16).await, Err(AuthError::Unauthorized));
    assert_eq!(
        client.user(TOKEN, 15).await,
        Ok(User {
            id: 15,
            is_mentor: true
        })
    );
    // The mismatch was not cached as a success for 16.
    assert_eq!(client.user(TOKEN, 16).await, Err(AuthError::Unauthorized));
    assert_eq!(django.user_requests(), 3);
}

#[tokio::test]
async fn denials_map_to_unauthorized_and_lesson_not_found() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, false);
    django.add_lesson(7, 3, 10, None);
    let client = client(&django);

    // 401: unknown token; strict stand-in: a known token asking for another id.
    assert_eq!(
        client.user("unknown", 15).await,
        Err(AuthError::Unauthorized)
    );
    assert_eq!(client.user(TOKEN, 16).await, Err(AuthError::Unauthorized));
    // 401 (unknown token) and 404 (unknown lesson).
    assert_eq!(
        client.lesson("unknown", 7).await,
        Err(AuthError::LessonNotFound)
    );
    assert_eq!(
        client.lesson(TOKEN, 8).await,
        Err(AuthError::LessonNotFound)
    );
}

#[tokio::test]
async fn a_503_is_an_outage_and_is_not_cached() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, false);
    django.add_lesson(7, 3, 10, None);
    django.set_outage(Outage::Status503);
    let client = client(&django);

    assert_outage_without_token(client.user(TOKEN, 15).await);
    assert_outage_without_token(client.lesson(TOKEN, 7).await);
    django.set_outage(Outage::None);
    assert!(client.user(TOKEN, 15).await.is_ok());
    assert!(client.lesson(TOKEN, 7).await.is_ok());
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_an_outage() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, false);
    django.add_lesson(7, 3, 10, None);
    django.set_outage(Outage::Refuse);
    let client = client(&django);

    assert_outage_without_token(client.user(TOKEN, 15).await);
    assert_outage_without_token(client.lesson(TOKEN, 7).await);
    assert!(django.requests() >= 2);
    django.set_outage(Outage::None);
    assert!(client.user(TOKEN, 15).await.is_ok());
}

#[tokio::test]
async fn a_django_that_never_answers_times_out_as_an_outage() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, false);
    django.add_lesson(7, 3, 10, None);
    django.set_outage(Outage::Hang);
    let client = client_with(&django, Duration::from_millis(300), Duration::from_secs(60));

    assert_outage_without_token(client.user(TOKEN, 15).await);
    assert_outage_without_token(client.lesson(TOKEN, 7).await);
    assert!(!client.reachable().await);
}

#[tokio::test]
async fn a_django_that_is_gone_is_an_outage() {
    let django = DjangoStandin::start().await;
    let client = client(&django);
    drop(django);

    assert_outage_without_token(client.user(TOKEN, 15).await);
    assert_outage_without_token(client.lesson(TOKEN, 7).await);
    assert!(!client.reachable().await);
}

#[tokio::test]
async fn an_unreadable_200_is_an_outage() {
    let django = DjangoStandin::start().await;
    django.add_user(TOKEN, 15, false);
    django.add_lesson(7, 3, 10, None);
    django.set_outage(Outage::BrokenBody);
    let client = client(&django);

    assert_outage_without_token(client.user(TOKEN, 15).await);
    assert_outage_without_token(client.lesson(TOKEN, 7).await);
}

/// 100,000 nested levels, the depth that overflowed simd-json's stack.
fn deep(open: &str, close: &str) -> String {
    const DEPTH: usize = 100_000;
    format!("{}1{}", open.repeat(DEPTH), close.repeat(DEPTH))
}

#[tokio::test]
async fn a_deeply_nested_answer_is_an_outage_not_a_crash() {
    let django = DjangoStandin::start().await;
    // No cache: every look-up reads the answer now set.
    let client = client_with(&django, Duration::from_secs(5), Duration::ZERO);
    let arrays = deep("[", "]");
    let objects = deep(r#"{"a":"#, "}");
    // Nesting where an answer has a number, a list of numbers, or instead
    // of the whole object: serde_json refuses at the first unexpected
    // level, and an unreadable 200 is an outage.
    for body in [
        arrays.clone(),
        objects.clone(),
        format!(r#"{{"id":{arrays},"is_mentor":false}}"#),
        format!(r#"{{"id":{objects},"is_mentor":false}}"#),
    ] {
        django.set_answer_body(Some(&body));
        assert_outage_without_token(client.user(TOKEN, 15).await);
    }
    for body in [
        format!(r#"{{"id":7,"course_id":3,"teacher_id":15,"student_ids":{arrays}}}"#),
        format!(r#"{{"id":7,"course_id":3,"teacher_id":{objects}}}"#),
    ] {
        django.set_answer_body(Some(&body));
        assert_outage_without_token(client.lesson(TOKEN, 7).await);
    }
}

#[tokio::test]
async fn deep_nesting_in_a_field_we_ignore_is_skipped_without_recursion() {
    let django = DjangoStandin::start().await;
    let client = client_with(&django, Duration::from_secs(5), Duration::ZERO);
    // serde_json skips an unknown field with a loop and its own heap stack
    // (bounded by the 4 MiB answer cap), so the rest of the answer stands.
    for extra in [deep("[", "]"), deep(r#"{"a":"#, "}")] {
        django.set_answer_body(Some(&format!(
            r#"{{"id":15,"is_mentor":true,"extra":{extra}}}"#
        )));
        assert_eq!(
            client.user(TOKEN, 15).await,
            Ok(User {
                id: 15,
                is_mentor: true
            })
        );
    }
}

#[tokio::test]
async fn a_path_prefix_in_the_base_url_is_kept() {
    let django = DjangoStandin::start_with_prefix("/backend").await;
    django.add_user(TOKEN, 15, false);
    django.add_lesson(7, 3, 10, None);
    assert!(django.base_url().ends_with("/backend"));

    let client = DjangoClient::new(settings(&format!("{}/", django.base_url()))).unwrap();
    assert!(client.user(TOKEN, 15).await.is_ok());
    assert!(client.lesson(TOKEN, 7).await.is_ok());

    // Control: without the prefix the stand-in answers 404.
    let unprefixed = DjangoClient::new(settings(&format!("http://{}", django.addr()))).unwrap();
    assert_eq!(
        unprefixed.user(TOKEN, 15).await,
        Err(AuthError::Unauthorized)
    );
    assert_eq!(
        unprefixed.lesson(TOKEN, 7).await,
        Err(AuthError::LessonNotFound)
    );
}

#[tokio::test]
async fn configured_path_templates_are_used() {
    let django = DjangoStandin::start_with_prefix("/api/content").await;
    django.add_user(TOKEN, 15, false);
    django.add_lesson(7, 3, 10, None);
    let base = format!("http://{}", django.addr());
    let client = DjangoClient::new(DjangoSettings {
        user_path: "/api/content/api/content/chat-service/users/{user_id}/".into(),
        lesson_path: "/api/content/api/content/chat-service/lesson/{lesson_id}/detail/".into(),
        ..settings(&base)
    })
    .unwrap();
    assert!(client.user(TOKEN, 15).await.is_ok());
    assert!(client.lesson(TOKEN, 7).await.is_ok());
}

#[tokio::test]
async fn reachable_counts_any_http_answer() {
    let django = DjangoStandin::start().await;
    let client = client(&django);
    assert!(client.reachable().await);
    django.set_outage(Outage::Status503);
    assert!(client.reachable().await);
}
