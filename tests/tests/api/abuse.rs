//! Every attempt to misuse the flow fails with a clear page and leaves nothing behind.

use ms_oauth::domain::Origin;
use ms_oauth::grant::GRANT_AUDIENCE;
use std::time::Duration;

use crate::helpers::*;
use ms_oauth_tests::startlink;

#[tokio::test]
async fn missing_or_garbled_start_parameters_are_refused() {
    let app = spawn_app().await;
    let cid = new_cid();
    let good = app.start_link(&cid, Origin::Web);
    let grant = good.split("grant=").nth(1).unwrap().to_owned();
    let base = format!("{}/oauth/start/microsoft", app.address);
    let long = "a".repeat(20_000);
    let cases = [
        (base.clone(), 400, "connection id is missing"),
        (format!("{base}?origin=web&grant={grant}"), 400, "connection id is missing"),
        (
            format!("{base}?cid=con_NOTVALID&origin=web&grant={grant}"),
            400,
            "not a valid AutoKitteh connection id",
        ),
        (format!("{base}?cid={cid}&origin=evil&grant={grant}"), 400, "origin must be one of"),
        (format!("{base}?cid={cid}&grant={grant}"), 400, "origin is missing"),
        (
            format!("{base}?cid={cid}&cid={cid}&origin=web&grant={grant}"),
            400,
            "given more than once",
        ),
        (format!("{base}?cid={cid}&origin=web"), 403, "not issued by AutoKitteh"),
        (format!("{base}?cid={cid}&origin=web&grant=%00%ff"), 403, "not issued by AutoKitteh"),
        (
            format!("{base}?cid={cid}&origin=web&grant={}", "x".repeat(3000)),
            400,
            "start grant is too long",
        ),
        (format!("{base}?cid={cid}&origin=web&grant={grant}&x={long}"), 400, "too long"),
    ];
    for (url, status, words) in cases {
        let page = Browser::new().get(&url).await;
        assert_page(&page, status, words);
        assert!(page.header("set-cookie").is_empty(), "{url}");
    }
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE, reqwest::Method::PATCH] {
        let page = Browser::new().request(method, &good).await;
        assert_page(&page, 405, "only takes links");
    }
    // A post is the confirm button's; without its form it starts nothing.
    let post = Browser::new().request(reqwest::Method::POST, &good).await;
    assert_page(&post, 400, "not a form post");
    let head = Browser::new().request(reqwest::Method::HEAD, &good).await;
    assert_eq!(head.status, 405);
    assert_eq!(app.items().await.len(), 0, "nothing may be stored for refused requests");
}

#[tokio::test]
async fn forged_expired_and_mismatched_grants_are_refused() {
    let app = spawn_app().await;
    let cid = new_cid();
    let other = new_cid();

    // Signed with another key.
    let forged_key = ms_oauth::grant::GrantKey::new("f".repeat(40).into()).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let forged = forged_key.sign(&startlink::grant(&cid, Origin::Web, 300), now).unwrap();
    let url = |cid: &ms_oauth::domain::ConnectionId, origin: &str, grant: &str| {
        format!("{}/oauth/start/microsoft?cid={cid}&origin={origin}&grant={grant}", app.address)
    };
    assert_page(
        &Browser::new().get(&url(&cid, "web", &forged)).await,
        403,
        "not issued by AutoKitteh",
    );

    // Issued for another connection, or another origin.
    let link = app.start_link(&other, Origin::Web);
    let grant = link.split("grant=").nth(1).unwrap();
    assert_page(
        &Browser::new().get(&url(&cid, "web", grant)).await,
        403,
        "belongs to another connection",
    );
    assert_page(
        &Browser::new().get(&url(&other, "cli", grant)).await,
        403,
        "belongs to another connection",
    );

    // Expired: the link is opened 2 minutes after a grant of the default minute was minted
    // (30 s of clock skew are allowed).
    let link = app.start_link(&cid, Origin::Web);
    app.clock.advance(Duration::from_secs(120));
    assert_page(&Browser::new().get(&link).await, 403, "expired");

    // An audience other than ours (a token minted for something else with the same key).
    let claims = serde_json::json!({"aud": format!("{GRANT_AUDIENCE}x"), "cid": cid.to_string(), "origin": "web", "sub": "u", "name": "n", "jti": "0123456789abcdef", "iat": now, "exp": now + 60});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(app.start_key.as_bytes()),
    )
    .unwrap();
    assert_page(
        &Browser::new().get(&url(&cid, "web", &token)).await,
        403,
        "not issued by AutoKitteh",
    );

    assert_eq!(app.items().await.len(), 0);
}

#[tokio::test]
async fn callbacks_with_missing_garbled_or_unknown_state_are_refused() {
    let app = spawn_app().await;
    let base = format!("{}/oauth/redirect/microsoft", app.address);
    let cases = [
        (base.clone(), 400, "state is missing"),
        (format!("{base}?code=abc"), 400, "state is missing"),
        (format!("{base}?code=abc&state="), 400, "state is missing"),
        (format!("{base}?code=abc&state=a&state=b"), 400, "given more than once"),
        (format!("{base}?code=abc&state={}", "s".repeat(500)), 400, "state is too long"),
        (format!("{base}?code={}&state=abc", "c".repeat(9000)), 400, "code is too long"),
    ];
    for (url, status, words) in cases {
        assert_page(&Browser::new().get(&url).await, status, words);
    }
    // A well-formed but unknown state, with a cookie of the right name.
    let page = app.callback_for_unknown_state(&"u".repeat(43)).await;
    assert_page(&page, 400, "unknown or already finished");
    assert_eq!(app.standin.calls().token_requests, 0);
    assert_eq!(app.items().await.len(), 0);
}

#[tokio::test]
async fn an_expired_state_is_refused_before_any_code_exchange() {
    let app = spawn_app().await;
    let browser = Browser::new();
    let cid = new_cid();
    let start = app.start(&browser, &app.start_link(&cid, Origin::Web)).await;
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    app.clock.advance(Duration::from_secs(601));
    let page = browser.get(&callback).await;
    assert_page(&page, 400, "took too long");
    assert_eq!(app.standin.calls().token_requests, 0);
    assert!(app.connection(&cid).await.is_none());
}

#[tokio::test]
async fn a_replayed_callback_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let browser = Browser::new();
    let cid = new_cid();
    let start = app.start(&browser, &app.start_link(&cid, Origin::Web)).await;
    let cookies = browser.cookies();
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    assert_page(&browser.get(&callback).await, 200, "connected");
    let stored = app.connection(&cid).await.unwrap();

    // Replay with the original cookie restored (an attacker with the whole browser state).
    let replay = Browser::with_cookies(cookies);
    assert_page(&replay.get(&callback).await, 400, "unknown or already finished");
    assert_eq!(app.standin.calls().token_requests, 1);
    assert_eq!(app.connection(&cid).await.unwrap(), stored);
}

#[tokio::test]
async fn two_simultaneous_callbacks_redeem_the_code_once() {
    let app = spawn_app().await;
    let browser = Browser::new();
    let cid = new_cid();
    let start = app.start(&browser, &app.start_link(&cid, Origin::Web)).await;
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    let twin = Browser::with_cookies(browser.cookies());
    let (a, b) = tokio::join!(browser.get(&callback), twin.get(&callback));
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400], "{} / {}", a.body, b.body);
    assert_eq!(app.standin.calls().token_requests, 1);
    assert_eq!(app.connection(&cid).await.unwrap().version, 1);
}

#[tokio::test]
async fn a_callback_in_another_browser_is_refused_and_the_right_browser_can_still_finish() {
    let app = spawn_app().await;
    let browser = Browser::new();
    let cid = new_cid();
    let start = app.start(&browser, &app.start_link(&cid, Origin::Web)).await;
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;

    // No cookie at all, or a cookie with the right name and a wrong value.
    assert_page(&Browser::new().get(&callback).await, 400, "browser where you started");
    let mut wrong = browser.cookies();
    for value in wrong.values_mut() {
        *value = "attacker-nonce".into();
    }
    assert_page(
        &Browser::with_cookies(wrong).get(&callback).await,
        400,
        "browser where you started",
    );
    assert_eq!(app.standin.calls().token_requests, 0);
    assert_eq!(app.pending_states().await, 1, "the pending sign-in is untouched");

    assert_page(&browser.get(&callback).await, 200, "connected");
    assert!(app.connection(&cid).await.is_some());
}

#[tokio::test]
async fn declining_consent_shows_what_happened_and_stores_nothing() {
    let app = spawn_app().await;
    let browser = Browser::new();
    let cid = new_cid();
    let start = app.start(&browser, &app.start_link(&cid, Origin::Web)).await;
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "cancel").await;
    assert!(callback.contains("error=access_denied"));
    let page = browser.get(&callback).await;
    assert_page(&page, 403, "You declined the permissions");
    assert!(page.body.contains("AADSTS65004"));
    assert_eq!(
        app.flow_items().await.len(),
        0,
        "the state is consumed and nothing else is written"
    );
    assert!(browser.cookies().is_empty());
}

#[tokio::test]
async fn an_aadsts_error_callback_gets_its_specific_advice() {
    let app = spawn_app().await;
    let browser = Browser::new();
    let start = app.start(&browser, &app.start_link(&new_cid(), Origin::Web)).await;
    let authorize = url::Url::parse(start.location.as_deref().unwrap()).unwrap();
    let state = authorize.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let callback = format!(
        "{}/oauth/redirect/microsoft?error=invalid_request&error_description={}&state={state}",
        app.address, "AADSTS50194%3A+Application+is+not+configured+as+a+multi-tenant+application."
    );
    let page = browser.get(&callback).await;
    assert_page(&page, 400, "single-tenant");
    assert!(page.body.contains("MICROSOFT_TENANT_ID"));
    assert_eq!(app.flow_items().await.len(), 0);
}
