//! Failures of Microsoft and of each AWS dependency: a clear page, the right status, and
//! nothing half-written.

use std::time::Duration;

use ms_oauth::domain::Origin;
use ms_oauth_tests::standin::Fault;

use crate::helpers::*;

/// Runs a flow up to the callback, applies `fault`, and returns the final page.
async fn callback_with(app: &TestApp, cid: &ms_oauth::domain::ConnectionId) -> Page {
    let browser = Browser::new();
    let start = app.start(&browser, &app.start_link(cid, Origin::Web)).await;
    assert_eq!(start.status, 302, "{}", start.body);
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    browser.get(&callback).await
}

async fn assert_nothing_saved(app: &TestApp, cid: &ms_oauth::domain::ConnectionId) {
    assert!(app.connection(cid).await.is_none(), "no connection may be saved");
    assert_eq!(
        app.flow_items().await.len(),
        0,
        "the state is consumed and nothing else is written"
    );
}

#[tokio::test]
async fn an_expired_code_asks_the_user_to_start_again() {
    let app = spawn_app().await;
    app.standin.set_code_ttl(Duration::ZERO);
    let cid = new_cid();
    let page = callback_with(&app, &cid).await;
    assert_page(&page, 400, "can no longer be completed");
    assert!(page.body.contains("AADSTS70008"));
    assert_nothing_saved(&app, &cid).await;
}

#[tokio::test]
async fn a_refused_client_secret_tells_the_operator_to_rotate_it() {
    let app = spawn_app().await;
    app.standin.rotate_secret("a-secret-the-deployment-does-not-have");
    let cid = new_cid();
    let page = callback_with(&app, &cid).await;
    assert_page(&page, 502, "client secret");
    assert!(page.body.contains("AADSTS7000215"));
    // The secret was re-read once; it had not changed, so no second exchange was tried.
    assert_eq!(app.standin.calls().token_requests, 1);
    assert_nothing_saved(&app, &cid).await;
}

#[tokio::test]
async fn token_endpoint_outages_and_garbage_end_on_a_try_again_page() {
    let cases = [
        (Fault::Status(500), 503, "not responding"),
        (Fault::Status(503), 503, "not responding"),
        (Fault::Delay(Duration::from_secs(3)), 503, "not responding"),
        (Fault::Malformed, 502, "unexpected answer"),
    ];
    for (fault, status, words) in cases {
        let app = spawn_app_with(AppOptions {
            http_timeout: Duration::from_secs(1),
            ..AppOptions::default()
        })
        .await;
        app.standin.set_token_fault(Some(fault.clone()));
        let cid = new_cid();
        let page = callback_with(&app, &cid).await;
        assert_page(&page, status, words);
        assert!(page.body.contains("Nothing was saved"), "{fault:?}");
        assert_nothing_saved(&app, &cid).await;
    }
}

#[tokio::test]
async fn a_graph_failure_saves_nothing() {
    let app = spawn_app().await;
    app.standin.set_me_fault(Some(Fault::Status(500)));
    let cid = new_cid();
    assert_page(&callback_with(&app, &cid).await, 503, "not responding");
    assert_nothing_saved(&app, &cid).await;

    app.standin.set_me_fault(Some(Fault::Malformed));
    let cid = new_cid();
    assert_page(&callback_with(&app, &cid).await, 502, "unexpected answer");
    assert_nothing_saved(&app, &cid).await;
}

#[tokio::test]
async fn an_unreadable_organization_does_not_fail_the_connection() {
    let app = spawn_app().await;
    app.standin.set_organization_fault(Some(Fault::Status(403)));
    let cid = new_cid();
    assert_page(&callback_with(&app, &cid).await, 200, "connected");
    let stored = app.connection(&cid).await.unwrap();
    assert_eq!(stored.connection.vars.org_id, None);
    assert!(stored.connection.vars.user_principal_name.is_some());
}

#[tokio::test]
async fn dynamodb_unavailable_at_start_is_a_try_again_page() {
    let app = spawn_app_with(AppOptions { dead_dynamodb: true, ..AppOptions::default() }).await;
    let page = Browser::new().get(&app.start_link(&new_cid(), Origin::Web)).await;
    assert_page(&page, 503, "temporarily unavailable");
    assert!(page.header("set-cookie").is_empty(), "no cookie for a flow that was not recorded");
    assert!(!page.body.contains("127.0.0.1:9"), "the page must not reveal internals");
    assert_eq!(app.standin.calls().authorize_tenants.len(), 0);
}

#[tokio::test]
async fn a_stalled_dynamodb_ends_on_our_page_not_the_lambda_timeout() {
    let app = spawn_app_with(AppOptions { stalled_dynamodb: true, ..AppOptions::default() }).await;
    // The start function has 10 s on Lambda; its AWS calls give up well before. (The guard
    // only stops this test from hanging if they never do.)
    let page = tokio::time::timeout(
        Duration::from_secs(30),
        Browser::new().get(&app.start_link(&new_cid(), Origin::Web)),
    )
    .await
    .expect("an answer, not a hang");
    assert_page(&page, 503, "temporarily unavailable");
    let callback = tokio::time::timeout(
        Duration::from_secs(30),
        app.callback_for_unknown_state(&"s".repeat(43)),
    )
    .await
    .expect("an answer, not a hang");
    assert_page(&callback, 503, "temporarily unavailable");
}

#[tokio::test]
async fn kms_unavailable_saves_nothing() {
    let app = spawn_app_with(AppOptions { dead_kms: true, ..AppOptions::default() }).await;
    let cid = new_cid();
    assert_page(&callback_with(&app, &cid).await, 503, "temporarily unavailable");
    assert_nothing_saved(&app, &cid).await;
}

#[tokio::test]
async fn secrets_manager_unavailable_saves_nothing_and_spends_no_code() {
    let app =
        spawn_app_with(AppOptions { dead_secrets_manager: true, ..AppOptions::default() }).await;
    let cid = new_cid();
    assert_page(&callback_with(&app, &cid).await, 503, "temporarily unavailable");
    assert_eq!(app.standin.calls().token_requests, 0);
    assert_nothing_saved(&app, &cid).await;
}

#[tokio::test]
async fn dynamodb_unavailable_at_the_callback_is_a_try_again_page() {
    let app = spawn_app_with(AppOptions { dead_dynamodb: true, ..AppOptions::default() }).await;
    let page = app.callback_for_unknown_state(&"s".repeat(43)).await;
    assert_page(&page, 503, "temporarily unavailable");
    assert_eq!(app.standin.calls().token_requests, 0);
}
