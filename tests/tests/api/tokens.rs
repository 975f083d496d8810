//! The connection API: valid tokens, single-flight refresh, rotation, dead grants, outages,
//! disconnect.

use std::time::Duration;

use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::events::EventKind;
use ms_oauth::tokens::{REFRESH_ATTEMPTS, REFRESH_COOLDOWN};
use ms_oauth_tests::standin::Fault;
use serde_json::Value;

use crate::helpers::*;

/// Connects `cid` with a work account and returns the tokens the identity platform issued.
async fn connected(app: &TestApp, cid: &ConnectionId) -> Value {
    let flow = app.connect(&Browser::new(), cid, Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    app.secret_vars(&app.connection(cid).await.unwrap()).await
}

async fn api(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let response = reqwest::Client::new()
        .request(method.clone(), format!("{}{path}", app.address))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    crate::openapi::assert_documented(method.as_str(), path, status, &body);
    (status, body, headers)
}

async fn token(app: &TestApp, cid: &ConnectionId, force: bool) -> (u16, Value) {
    let path =
        format!("/connections/{cid}/token{}", if force { "?force_refresh=true" } else { "" });
    let (status, body, _) = api(app, reqwest::Method::GET, &path).await;
    (status, body)
}

/// Moves time to 4 minutes before the access token expires: inside the refresh margin.
fn near_expiry(app: &TestApp) {
    app.clock.advance(Duration::from_secs(3599 - 240));
}

#[tokio::test]
async fn a_fresh_token_is_served_as_stored() {
    let app = spawn_app().await;
    let cid = new_cid();
    let issued = connected(&app, &cid).await;
    let (status, body) = token(&app, &cid, false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], issued["oauth_access_token"]);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["refreshed"], false);
    assert_eq!(app.standin.calls().refreshes, 0);
    assert!(body.get("refresh_token").is_none());
    let events = app.events.take();
    assert!(events.iter().any(|e| e.kind == EventKind::Authorized && e.connection_id == cid));
}

#[tokio::test]
async fn fifty_concurrent_requests_on_an_expiring_connection_refresh_once() {
    // Microsoft's own timeout: on a loaded machine a refresh answered after the tests' 2 s
    // would be a lost answer, retried with a refresh token strict rotation already spent.
    let app = spawn_app_with(AppOptions {
        http_timeout: Duration::from_secs(10),
        ..AppOptions::default()
    })
    .await;
    app.standin.set_strict_rotation(true);
    let cid = new_cid();
    let issued = connected(&app, &cid).await;
    near_expiry(&app);

    let requests = (0..50).map(|_| token(&app, &cid, false));
    let responses = futures::future::join_all(requests).await;
    let tokens: std::collections::BTreeSet<String> = responses
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["access_token"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        app.standin.calls().refreshes,
        1,
        "exactly one refresh reached the identity platform"
    );
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_ne!(tokens.first().map(String::as_str), issued["oauth_access_token"].as_str());

    // The stored refresh token is the newest one: the identity platform still accepts it.
    let stored = app.secret_vars(&app.connection(&cid).await.unwrap()).await;
    let newest = stored["oauth_refresh_token"].as_str().unwrap();
    assert_ne!(newest, issued["oauth_refresh_token"].as_str().unwrap());
    assert!(app.standin.refresh_token_is_fresh(newest));
    assert_eq!(stored["oauth_access_token"].as_str(), tokens.first().map(String::as_str));
}

#[tokio::test]
async fn a_forced_refresh_without_a_new_refresh_token_keeps_the_old_one() {
    let app = spawn_app().await;
    app.standin.set_omit_rotated_refresh_token(true);
    let cid = new_cid();
    let issued = connected(&app, &cid).await;
    let (status, body) = token(&app, &cid, true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["refreshed"], true);
    assert_ne!(body["access_token"], issued["oauth_access_token"]);
    let stored = app.secret_vars(&app.connection(&cid).await.unwrap()).await;
    assert_eq!(stored["oauth_refresh_token"], issued["oauth_refresh_token"]);
    assert_eq!(stored["oauth_access_token"], body["access_token"]);
    let connection = app.connection(&cid).await.unwrap();
    assert_eq!(connection.version, 2);
}

#[tokio::test]
async fn a_dead_grant_marks_the_connection_for_reauth_once_and_says_why() {
    let app = spawn_app().await;
    let cid = new_cid();
    connected(&app, &cid).await;
    app.events.take();
    app.standin.revoke_refresh_tokens(700_082);

    let (status, body) = token(&app, &cid, true).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "needs_reauth");
    assert!(body["reason"].as_str().unwrap().contains("700082"), "{body}");

    let (status, body, _) = api(&app, reqwest::Method::GET, &format!("/connections/{cid}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "needs_reauth");
    assert!(body["reason"].as_str().unwrap().contains("invalid_grant"));

    // No retries against a dead grant, now or later.
    let (status, _) = token(&app, &cid, false).await;
    assert_eq!(status, 409);
    assert_eq!(app.standin.calls().refreshes, 1);
    let events = app.events.take();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::NeedsReauth);
    assert!(events[0].reason.as_deref().unwrap().contains("700082"));

    // Signing in again brings the connection back.
    connected(&app, &cid).await;
    let (_, body, _) = api(&app, reqwest::Method::GET, &format!("/connections/{cid}")).await;
    assert_eq!(body["status"], "ok");
    assert!(body.get("reason").is_none(), "{body}");
}

#[tokio::test]
async fn transient_failures_retry_then_serve_the_valid_token_or_a_clear_503() {
    let app = spawn_app().await;
    let cid = new_cid();
    let issued = connected(&app, &cid).await;
    app.standin.set_token_fault(Some(Fault::Status(503)));
    let before = app.standin.calls().token_requests;

    // Due for refresh but still valid: two attempts, then the old token, marked stale.
    near_expiry(&app);
    let (status, body) = token(&app, &cid, false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], issued["oauth_access_token"]);
    assert_eq!(body["stale"], true);
    assert_eq!(app.standin.calls().token_requests - before, REFRESH_ATTEMPTS as usize);

    // Within the cooldown the next reader shares that failure: no call.
    let (status, body) = token(&app, &cid, false).await;
    assert_eq!((status, &body["stale"]), (200, &Value::Bool(true)), "{body}");
    assert_eq!(app.standin.calls().token_requests - before, REFRESH_ATTEMPTS as usize);

    // Expired: nothing valid to serve; the answer says the refresh failed, and when to retry.
    app.clock.advance(Duration::from_secs(600));
    let (status, body, headers) =
        api(&app, reqwest::Method::GET, &format!("/connections/{cid}/token")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "refresh_failed");
    assert_eq!(body["reason"], "transient");
    assert_eq!(headers["retry-after"], REFRESH_COOLDOWN.as_secs().to_string());
    assert!(body.get("access_token").is_none());

    // Once Microsoft is back and the cooldown is over, the next request refreshes.
    app.standin.set_token_fault(None);
    app.clock.advance(REFRESH_COOLDOWN);
    let (status, body) = token(&app, &cid, false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["refreshed"], true);
    let stored = app.connection(&cid).await.unwrap().connection;
    assert_eq!((stored.refresh_failed_at, stored.refresh_failure), (None, None));
}

#[tokio::test]
async fn disconnect_removes_every_secret_and_is_idempotent() {
    let app = spawn_app().await;
    let cid = new_cid();
    connected(&app, &cid).await;
    app.events.take();
    let other = new_cid();
    connected(&app, &other).await;

    for _ in 0..2 {
        let (status, body, _) =
            api(&app, reqwest::Method::DELETE, &format!("/connections/{cid}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "init_required");
    }
    assert!(app.connection(&cid).await.is_none());
    let raw = format!("{:?}", app.items().await);
    assert!(!raw.contains(cid.as_str()), "nothing of the connection is left in the table");
    assert!(app.connection(&other).await.is_some(), "other connections are untouched");

    let (status, body) = token(&app, &cid, false).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "init_required");
    let (_, body, _) = api(&app, reqwest::Method::GET, &format!("/connections/{cid}")).await;
    assert_eq!(body["status"], "init_required");
    let events: Vec<_> = app.events.take().into_iter().filter(|e| e.connection_id == cid).collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Disconnected);
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let app = spawn_app().await;
    let (status, body, _) = api(&app, reqwest::Method::GET, "/connections/not-a-cid").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    let (status, body, _) =
        api(&app, reqwest::Method::GET, &format!("/connections/{}/other", new_cid())).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body, headers) =
        api(&app, reqwest::Method::POST, &format!("/connections/{}", new_cid())).await;
    assert_eq!((status, body["error"].as_str()), (405, Some("method_not_allowed")));
    assert_eq!(headers["allow"], "GET, DELETE");
    let (status, _, headers) =
        api(&app, reqwest::Method::DELETE, &format!("/connections/{}/token", new_cid())).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET");
    let path = format!("/connections/{}/token?force_refresh=yes", new_cid());
    let (status, body, _) = api(&app, reqwest::Method::GET, &path).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test]
async fn the_api_never_returns_or_logs_a_refresh_token() {
    let app = spawn_app().await;
    let cid = new_cid();
    connected(&app, &cid).await;
    near_expiry(&app);
    let mut bodies = Vec::new();
    bodies.push(token(&app, &cid, false).await.1.to_string());
    bodies.push(token(&app, &cid, true).await.1.to_string());
    bodies
        .push(api(&app, reqwest::Method::GET, &format!("/connections/{cid}")).await.1.to_string());
    assert_eq!(app.standin.calls().refreshes, 2);

    let logs = captured_logs();
    for secret in app.standin.issued_secrets() {
        assert!(!logs.contains(&secret), "an issued token or code reached the logs");
        if secret.starts_with("0.stand-in-refresh.") {
            for body in &bodies {
                assert!(!body.contains(&secret), "a refresh token left the API");
            }
        }
    }
}
