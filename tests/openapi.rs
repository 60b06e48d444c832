//! The OpenAPI document (docs/openapi.json): served at `/openapi.json` byte
//! for byte as kept in the repository, and listing exactly the paths the
//! router serves, so a route added, renamed or dropped without the document
//! fails here. What each path answers is checked against the document by
//! schemathesis and scripts/e2e/protocol/test_openapi_statuses.py.

mod common;

use std::collections::BTreeSet;

use common::django::DjangoStandin;
use common::server::Server;
use serde_json::Value;

const DOCUMENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
const ROUTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/router.rs");

/// The prefix route of the router (`starts_with("/conversations/")`) and
/// the templated path the document gives it.
const PREFIX_ROUTES: &[(&str, &str)] = &[("/conversations/", "/conversations/{id}")];

fn document() -> Value {
    let text = std::fs::read_to_string(DOCUMENT).expect("docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

fn documented_paths(document: &Value) -> BTreeSet<String> {
    document["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect()
}

/// Every path literal of the router's `route` function, prefix routes
/// turned into their templated path: what the service answers on.
fn routed_paths() -> BTreeSet<String> {
    let source = std::fs::read_to_string(ROUTER).expect("src/http/router.rs");
    let start = source
        .find("async fn route(")
        .expect("fn route in router.rs");
    let body = &source[start..];
    let body = &body[..body.find("\n}\n").expect("end of fn route")];
    let mut paths = BTreeSet::new();
    for literal in body.split('"').skip(1).step_by(2) {
        if !literal.starts_with('/') {
            continue;
        }
        let path = PREFIX_ROUTES
            .iter()
            .find(|(prefix, _)| *prefix == literal)
            .map_or(literal, |(_, templated)| templated);
        paths.insert(path.to_string());
    }
    paths
}

fn client() -> reqwest::Client {
    // reqwest is built without a default crypto provider (the service
    // installs ring itself); plain-HTTP tests still need one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test]
async fn the_served_document_is_the_repositorys_byte_for_byte() {
    let django = DjangoStandin::start().await;
    let server = Server::start(&django.base_url(), &[]);
    let response = client()
        .get(server.http_url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200, "no authentication needed");
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let served = response.bytes().await.expect("body");
    let kept = std::fs::read(DOCUMENT).expect("docs/openapi.json");
    assert!(
        served.as_ref() == kept.as_slice(),
        "/openapi.json ({} bytes) differs from docs/openapi.json ({} bytes): rebuild the binary",
        served.len(),
        kept.len()
    );
    let parsed: Value = serde_json::from_slice(&served).expect("the served document is JSON");
    assert_eq!(parsed["openapi"], "3.1.0");
    assert_eq!(
        parsed["info"]["version"],
        env!("CARGO_PKG_VERSION"),
        "info.version follows Cargo.toml"
    );
}

#[test]
fn the_document_lists_exactly_the_paths_the_router_serves() {
    let routed = routed_paths();
    assert!(
        routed.contains("/messages") && routed.contains("/conversations/{id}"),
        "router.rs was not read right: {routed:?}"
    );
    let documented = documented_paths(&document());
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "served but not in docs/openapi.json: {undocumented:?}; \
         in docs/openapi.json but not served: {unrouted:?}"
    );
}

/// Each documented path is served (not the router's catch-all 404), and
/// its undocumented methods are 405 with `Allow` and the error body, as
/// the document's description says.
#[tokio::test]
async fn every_documented_path_is_served_and_refuses_other_methods() {
    let django = DjangoStandin::start().await;
    let server = Server::start(&django.base_url(), &[]);
    let document = document();
    let client = client();
    for path in documented_paths(&document) {
        let concrete = path.replace("{id}", "663af8129dde123456789def");
        let methods: BTreeSet<&str> = document["paths"][&path]
            .as_object()
            .expect("path item")
            .keys()
            .map(String::as_str)
            .filter(|key| *key != "parameters")
            .collect();
        assert_eq!(
            methods,
            BTreeSet::from(["get", "options"]),
            "{path}: the router answers GET and OPTIONS"
        );
        let get = client
            .get(server.http_url(&concrete))
            .send()
            .await
            .expect("GET");
        let status = get.status().as_u16();
        let body: Value =
            serde_json::from_slice(&get.bytes().await.expect("body")).unwrap_or(Value::Null);
        assert!(
            body["error"]["message"] != "no such endpoint",
            "{path}: GET fell through to the catch-all ({status})"
        );
        for method in [reqwest::Method::POST, reqwest::Method::DELETE] {
            let refused = client
                .request(method.clone(), server.http_url(&concrete))
                .send()
                .await
                .expect("request");
            assert_eq!(refused.status(), 405, "{method} {path}");
            assert_eq!(
                refused.headers()["allow"],
                "GET, OPTIONS",
                "{method} {path}"
            );
            let body: Value =
                serde_json::from_slice(&refused.bytes().await.expect("body")).expect("JSON");
            assert_eq!(
                body["error"]["code"], "method_not_allowed",
                "{method} {path}"
            );
        }
        let preflight = client
            .request(reqwest::Method::OPTIONS, server.http_url(&concrete))
            .send()
            .await
            .expect("OPTIONS");
        assert_eq!(preflight.status(), 200, "OPTIONS {path}");
    }
}
