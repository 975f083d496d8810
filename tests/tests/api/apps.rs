//! Connections' own Entra apps: private user-delegated apps (secret or certificate) signing
//! in through their own client id and tenant, daemon apps proven when set and served by the
//! token API, rotation, removal, and the errors their owners can act on.

use ms_oauth::config;
use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::testing::certs::{self, TestCertificate};
use ms_oauth_tests::standin::{AppRegistration, OTHER_TENANT, WORK_TENANT};
use serde_json::{Value, json};

use crate::helpers::*;

pub const PRIVATE_CLIENT: &str = "5d0c4b3a-2e1f-4a6b-9c8d-7e6f5a4b3c2d";
pub const DAEMON_CLIENT: &str = "8a7b6c5d-4e3f-4a2b-8c1d-0e9f8a7b6c5d";

/// A call to the connection API, its answer checked against the OpenAPI document.
pub async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().request(method.clone(), format!("{}{path}", app.api_address));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    crate::openapi::assert_documented(method.as_str(), path, status, &body);
    (status, body)
}

/// Sets `cid`'s own app.
pub async fn set_app(app: &TestApp, cid: &ConnectionId, body: Value) -> (u16, Value) {
    call(app, reqwest::Method::PUT, &format!("/connections/{cid}/app"), Some(body)).await
}

/// A private app registered in `OTHER_TENANT` (single-tenant) with `secret` and our
/// redirect URI.
fn private_app(app: &TestApp, secret: &str) -> AppRegistration {
    AppRegistration {
        client_id: PRIVATE_CLIENT.into(),
        home_tenant: OTHER_TENANT.into(),
        secrets: vec![secret.into()],
        redirect_uris: vec![format!("{}{}", app.address, config::REDIRECT_PATH)],
        ..AppRegistration::default()
    }
}

/// Signs `cid` in with a work account; the finish page.
async fn sign_in(app: &TestApp, cid: &ConnectionId) -> Flow {
    app.connect(&Browser::new(), cid, Origin::Web, "work").await
}

/// No secret appears in the logs or, in plaintext, in any table item.
async fn assert_nowhere(app: &TestApp, secrets: &[&str]) {
    let logs = captured_logs();
    let items = format!("{:?}", app.items().await);
    for secret in secrets {
        assert!(!logs.contains(secret), "a secret reached the logs");
        assert!(!items.contains(secret), "a secret is stored in plaintext");
    }
}

#[tokio::test]
async fn a_private_app_signs_in_and_refreshes_through_its_own_client_and_tenant() {
    let app = spawn_app().await;
    let cid = new_cid();
    let secret = format!("pv~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(private_app(&app, &secret));

    let (status, body) = set_app(
        &app,
        &cid,
        json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "tenant_id": OTHER_TENANT, "client_secret": secret}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app"]["private_client_id"], PRIVATE_CLIENT);
    assert_eq!(body["app"]["credential"], "secret");
    let (status, shown) =
        call(&app, reqwest::Method::GET, &format!("/connections/{cid}/app"), None).await;
    assert_eq!(status, 200);
    assert_eq!(shown["app"]["private_tenant_id"], OTHER_TENANT);
    assert!(!shown.to_string().contains(&secret), "the credential is never read back");

    let flow = sign_in(&app, &cid).await;
    assert!(
        flow.authorize_url.contains(&format!("/{OTHER_TENANT}/oauth2/v2.0/authorize?")),
        "{}",
        flow.authorize_url
    );
    assert!(flow.authorize_url.contains(&format!("client_id={PRIVATE_CLIENT}")));
    assert_page(&flow.finish, 200, "adele.vance@contoso.example");
    let stored = app.connection(&cid).await.unwrap().connection;
    assert_eq!(stored.auth_type, "oauthPrivate");
    assert_eq!(stored.tenant_id, OTHER_TENANT);
    assert_eq!(stored.app_client_id.as_deref(), Some(PRIVATE_CLIENT));

    // A forced refresh goes to the app's tenant as the app (the stand-in binds refresh
    // tokens to both).
    let (status, token) = call(
        &app,
        reqwest::Method::GET,
        &format!("/connections/{cid}/token?force_refresh=true"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["refreshed"], true);
    assert!(app.standin.calls().token_tenants.iter().all(|t| t == OTHER_TENANT));
    let (_, status_body) =
        call(&app, reqwest::Method::GET, &format!("/connections/{cid}"), None).await;
    assert_eq!(status_body["auth_type"], "oauthPrivate");
    assert_nowhere(&app, &[&secret]).await;
}

#[tokio::test]
async fn a_single_tenant_app_refuses_tokens_of_another_tenant() {
    let app = spawn_app().await;
    let cid = new_cid();
    let secret = format!("pv~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(private_app(&app, &secret));
    let body = json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "tenant_id": OTHER_TENANT, "client_secret": secret});
    assert_eq!(set_app(&app, &cid, body).await.0, 200);
    app.standin.set_id_token_tenant(Some(WORK_TENANT));
    let flow = sign_in(&app, &cid).await;
    assert_page(&flow.finish, 403, "belongs to another organization");
    assert!(app.connection(&cid).await.is_none(), "nothing saved");
    // The same account through the server-wide app (multi-tenant `common`) is fine.
    assert_eq!(
        call(&app, reqwest::Method::DELETE, &format!("/connections/{cid}/app"), None).await.0,
        200
    );
    assert_eq!(sign_in(&app, &cid).await.finish.status, 200);
}

/// The `PUT /connections/{cid}/app` body of the private app with client secret `secret`.
fn private_body(secret: &str) -> serde_json::Value {
    json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "tenant_id": OTHER_TENANT, "client_secret": secret})
}

/// An app with a connection signed in through its private app, and that app's secret.
async fn signed_in_with_private_secret() -> (TestApp, ConnectionId, String) {
    let app = spawn_app().await;
    let cid = new_cid();
    let secret = format!("pv~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(private_app(&app, &secret));
    assert_eq!(set_app(&app, &cid, private_body(&secret)).await.0, 200);
    assert_eq!(sign_in(&app, &cid).await.finish.status, 200);
    (app, cid, secret)
}

#[tokio::test]
async fn a_rotated_private_secret_is_set_again_without_a_new_sign_in() {
    let (app, cid, old) = signed_in_with_private_secret().await;

    // The owner rotates the secret in Entra: refreshes are refused as the app's fault, and
    // the connection does not lose its grant. A forced refresh says so (never the old token
    // as new); a plain read still gets the valid token.
    let new = format!("pv~{}", ms_oauth_tests::random_base32(30));
    app.standin.set_app_secrets(PRIVATE_CLIENT, &[&new]);
    let token_path = format!("/connections/{cid}/token?force_refresh=true");
    let (status, refused) = call(&app, reqwest::Method::GET, &token_path, None).await;
    assert_eq!((status, &refused["error"]), (502, &json!("app_misconfigured")), "{refused}");
    let plain = format!("/connections/{cid}/token");
    let (status, stored) = call(&app, reqwest::Method::GET, &plain, None).await;
    assert_eq!((status, &stored["refreshed"]), (200, &json!(false)), "{stored}");
    app.clock.advance(std::time::Duration::from_secs(3600));
    let (status, refused) = call(&app, reqwest::Method::GET, &token_path, None).await;
    assert_eq!(status, 502, "{refused}");
    assert_eq!(refused["error"], "app_misconfigured");
    assert!(refused["reason"].as_str().unwrap().contains("7000215"), "{refused}");
    let (_, connection) =
        call(&app, reqwest::Method::GET, &format!("/connections/{cid}"), None).await;
    assert_eq!(connection["status"], "ok");

    let (status, saved) = set_app(&app, &cid, private_body(&new)).await;
    assert_eq!(status, 200);
    assert_eq!(saved["version"], 2);
    let (status, token) = call(&app, reqwest::Method::GET, &token_path, None).await;
    assert_eq!(status, 200, "{token}");
    assert_nowhere(&app, &[&old, &new]).await;
}

#[tokio::test]
async fn a_new_private_secret_microsoft_does_not_take_yet_falls_back_to_the_one_it_replaced() {
    use ms_oauth::metrics::name;
    let (app, cid, old) = signed_in_with_private_secret().await;

    // The owner sets a new secret here before Entra ID takes it: refreshes and sign-ins try
    // the one it replaced, and go on.
    let new = format!("pv~{}", ms_oauth_tests::random_base32(30));
    assert_eq!(set_app(&app, &cid, private_body(&new)).await.0, 200);
    let token_path = format!("/connections/{cid}/token?force_refresh=true");
    let (status, token) = call(&app, reqwest::Method::GET, &token_path, None).await;
    assert_eq!((status, &token["stale"]), (200, &json!(false)), "{token}");
    assert_eq!(sign_in(&app, &cid).await.finish.status, 200);
    let fell_back = [("Version", "previous"), ("Outcome", "ok")];
    assert_eq!(app.metrics.count(name::CLIENT_SECRET_RETRY, &fell_back), 2);

    // Entra ID takes the new one: no retry.
    app.standin.set_app_secrets(PRIVATE_CLIENT, &[&new]);
    assert_eq!(call(&app, reqwest::Method::GET, &token_path, None).await.0, 200);
    assert_eq!(app.metrics.count(name::CLIENT_SECRET_RETRY, &[]), 2);

    // The replaced one is tried for a day only.
    app.standin.set_app_secrets(PRIVATE_CLIENT, &[&old]);
    app.clock.advance(std::time::Duration::from_secs(25 * 3600));
    let (status, refused) = call(&app, reqwest::Method::GET, &token_path, None).await;
    assert_eq!(status, 502, "{refused}");
    assert_eq!(app.metrics.count(name::CLIENT_SECRET_RETRY, &[]), 2);
    assert_nowhere(&app, &[&old, &new]).await;
}

/// The key's base64 body, which must never be stored or logged.
fn key_body(cert: &TestCertificate) -> String {
    cert.key_pem.lines().filter(|l| !l.starts_with("-----")).collect::<Vec<_>>().join("")
}

#[tokio::test]
async fn a_private_app_with_a_certificate_signs_assertions_the_platform_verifies() {
    let app = spawn_app().await;
    let cid = new_cid();
    let cert = certs::valid_certificate("private-app.fabrikam.example");
    app.standin.register_app(AppRegistration {
        secrets: vec![],
        certificates: vec![cert.certificate_pem.clone()],
        ..private_app(&app, "unused")
    });
    let (status, body) = set_app(
        &app,
        &cid,
        json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "tenant_id": OTHER_TENANT, "certificate": cert.bundle()}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app"]["credential"], "certificate");
    assert_eq!(body["app"]["certificate_thumbprint"].as_str().unwrap().len(), 40);
    assert!(body["app"]["certificate_expires_at"].is_string());

    assert_page(&sign_in(&app, &cid).await.finish, 200, "adele.vance@contoso.example");
    for _ in 0..2 {
        // Each refresh signs a new assertion (the stand-in refuses a reused jti).
        let (status, token) = call(
            &app,
            reqwest::Method::GET,
            &format!("/connections/{cid}/token?force_refresh=true"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{token}");
    }
    // Each use reports how long the certificate has left, for the alarm before it ends.
    let days_left: Vec<f64> = app
        .metrics
        .all()
        .iter()
        .filter(|m| m.name == ms_oauth::metrics::name::CREDENTIAL_DAYS_LEFT)
        .filter(|m| m.dimensions == [("Credential", "app_certificate")])
        .map(|m| m.value)
        .collect();
    assert!(
        !days_left.is_empty() && days_left.iter().all(|d| *d > 1.0 && *d < 3700.0),
        "{days_left:?}"
    );
    assert_nowhere(&app, &[&key_body(&cert)]).await;
}

#[tokio::test]
async fn expired_certificates_are_refused_when_set_and_when_microsoft_says_so() {
    let app = spawn_app().await;
    let cid = new_cid();
    let expired = certs::expired_certificate("old.fabrikam.example");
    let (status, body) = set_app(
        &app,
        &cid,
        json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "certificate": expired.bundle()}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_app");
    assert!(body["message"].as_str().unwrap().contains("expired"), "{body}");
    assert_eq!(
        call(&app, reqwest::Method::GET, &format!("/connections/{cid}/app"), None).await.0,
        404
    );

    // Valid by its own dates, but ended in the app registration (its end date passed there).
    let cert = certs::valid_certificate("ended.fabrikam.example");
    app.standin.register_app(AppRegistration {
        expired_certificates: vec![cert.certificate_pem.clone()],
        ..private_app(&app, "unused")
    });
    let body = json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "tenant_id": OTHER_TENANT, "certificate": cert.bundle()});
    assert_eq!(set_app(&app, &cid, body).await.0, 200);
    let flow = sign_in(&app, &cid).await;
    assert_page(&flow.finish, 502, "credential was refused");
    assert!(flow.finish.body.contains(PRIVATE_CLIENT), "the page names the app");
    assert!(flow.finish.body.contains("700027"), "the page's reference has the code");
    assert!(app.connection(&cid).await.is_none(), "nothing saved");
}

#[tokio::test]
async fn a_private_app_missing_from_the_tenant_or_replaced_gets_pages_that_say_so() {
    let app = spawn_app().await;
    let secret = format!("pv~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(private_app(&app, &secret));
    let body = json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "tenant_id": OTHER_TENANT, "client_secret": secret});

    // The app is deleted in Entra between the consent and the code exchange.
    let cid = new_cid();
    assert_eq!(set_app(&app, &cid, body.clone()).await.0, 200);
    let browser = Browser::new();
    let start = app.start(&browser, &app.start_link(&cid, Origin::Web)).await;
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    app.standin.remove_app(PRIVATE_CLIENT);
    let finish = browser.get(&callback).await;
    assert_page(&finish, 400, "The connection&#39;s Microsoft app was not found");
    app.standin.register_app(private_app(&app, &secret));

    // The connection's app is removed while the user is at Microsoft.
    let cid = new_cid();
    assert_eq!(set_app(&app, &cid, body).await.0, 200);
    let browser = Browser::new();
    let start = app.start(&browser, &app.start_link(&cid, Origin::Web)).await;
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    assert_eq!(
        call(&app, reqwest::Method::DELETE, &format!("/connections/{cid}/app"), None).await.0,
        200
    );
    assert_page(&browser.get(&callback).await, 409, "changed during the sign-in");
    assert!(app.connection(&cid).await.is_none());
}

/// The admin-consent link of `path` (as the API answers it), signed like a start link.
pub fn admin_consent_link(
    app: &TestApp,
    cid: &ConnectionId,
    path: &str,
    tenant: Option<&str>,
) -> String {
    let start = app.start_link(cid, Origin::Web);
    let grant = start.split("&grant=").nth(1).expect("a grant");
    let tenant = tenant.map(|t| format!("&tenant={t}")).unwrap_or_default();
    format!("{}{path}&origin=web&grant={grant}{tenant}", app.address)
}

/// An administrator's answer at the stand-in's admin-consent page (`accept` or `cancel`),
/// followed back to the redirect function.
pub async fn admin_decides(
    app: &TestApp,
    admin: &Browser,
    consent_url: &str,
    decision: &str,
) -> Page {
    let page = admin.get(consent_url).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let url = url::Url::parse(consent_url).unwrap();
    let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    form.push(("decision".into(), decision.into()));
    let post = format!("{}{}", url.origin().ascii_serialization(), url.path());
    let back = admin.post_form(&post, &form).await;
    assert_eq!(back.status, 303, "{}", back.body);
    let callback = back.location.unwrap();
    assert!(callback.starts_with(&format!("{}{}", app.address, config::REDIRECT_PATH)));
    admin.get(&callback).await
}

/// The first link of a page, its HTML escapes undone.
fn first_link(body: &str) -> String {
    let href = body.split("href=\"").nth(1).and_then(|rest| rest.split('"').next());
    href.expect("a link on the page").replace("&#38;", "&").replace("&#34;", "\"")
}

#[tokio::test]
async fn a_user_who_needs_admin_approval_gets_a_link_for_their_administrator() {
    let app = spawn_app().await;
    app.standin.require_admin_consent(CLIENT_ID);
    let cid = new_cid();
    let flow = sign_in(&app, &cid).await;
    assert_page(&flow.finish, 403, "An administrator must approve this app");
    assert!(flow.finish.body.contains("65001"), "{}", flow.finish.body);
    assert!(app.connection(&cid).await.is_none());
    let link = first_link(&flow.finish.body);
    assert!(
        link.starts_with(&format!("{}/organizations/v2.0/adminconsent?", app.standin.url())),
        "{link}"
    );
    assert!(link.contains(&format!("client_id={CLIENT_ID}")));

    // The administrator, in another browser, declines.
    let admin = Browser::new();
    assert_page(&admin_decides(&app, &admin, &link, "cancel").await, 403, "declined");

    // A new attempt gets a new link; this time the administrator accepts. The link works
    // once: opened again it finds its sign-in finished.
    let flow = sign_in(&app, &cid).await;
    assert_eq!(flow.finish.status, 403);
    let link = first_link(&flow.finish.body);
    let granted = admin_decides(&app, &admin, &link, "accept").await;
    // Nothing proves a consent to the server-wide app (anyone holding the link could send
    // this return, naming any tenant): the page, the event and the audit trail say it was
    // reported by the browser, not granted.
    assert_page(&granted, 200, "Admin consent reported");
    assert!(granted.body.contains("This was not checked with Microsoft"), "{}", granted.body);
    assert!(granted.body.contains(WORK_TENANT), "the tenant the return names is shown");
    assert!(granted.body.contains("start the connection again"));
    let consent = app
        .events
        .take()
        .into_iter()
        .find(|e| e.kind == ms_oauth::events::EventKind::AdminConsentGranted)
        .expect("the consent's event");
    assert_eq!(consent.verified, Some(false));
    assert_eq!(consent.tenant_id.as_deref(), Some(WORK_TENANT));
    let outcomes: Vec<String> = app
        .audit
        .of(&cid)
        .into_iter()
        .filter(|e| e.act == ms_oauth::audit::Act::AdminConsent)
        .map(|e| e.outcome)
        .collect();
    assert!(outcomes.contains(&"reported".to_owned()), "{outcomes:?}");
    assert!(!outcomes.contains(&"granted".to_owned()), "{outcomes:?}");
    assert_page(
        &admin_decides(&app, &admin, &link, "accept").await,
        400,
        "unknown or already finished",
    );
    // The user signs in again and it works.
    assert_eq!(sign_in(&app, &cid).await.finish.status, 200);
    assert!(app.connection(&cid).await.is_some());
}

#[tokio::test]
async fn admin_consent_links_check_their_grant_and_tenant() {
    let app = spawn_app().await;
    let cid = new_cid();
    let path = format!("{}?cid={cid}", config::ADMIN_CONSENT_PATH);
    // No grant, a forged one, a tenant that is no organization.
    assert_page(
        &Browser::new().get(&format!("{}{path}&origin=web", app.address)).await,
        403,
        "not issued by AutoKitteh",
    );
    let forged = format!("{}{path}&origin=web&grant=eyJhbGciOiJIUzI1NiJ9.e30.AAAA", app.address);
    assert_page(&Browser::new().get(&forged).await, 403, "not issued by AutoKitteh");
    let common = admin_consent_link(&app, &cid, &path, Some("common"));
    assert_page(&Browser::new().get(&common).await, 400, "not common or consumers");
    // The server-wide app, in the tenant given.
    let given = admin_consent_link(&app, &cid, &path, Some(OTHER_TENANT));
    // Opening it shows what an administrator is asked to grant and spends nothing (a mail
    // scanner opens it first); the confirmation goes on to Microsoft.
    let scanner = Browser::new().get(&given).await;
    assert_page(&scanner, 200, "Grant admin consent?");
    assert!(
        scanner.body.contains(CLIENT_ID) && scanner.body.contains(OTHER_TENANT),
        "{}",
        scanner.body
    );
    let admin = Browser::new();
    let page = app.start(&admin, &given).await;
    assert_redirects_to(&page, &format!("{}/{OTHER_TENANT}/v2.0/adminconsent?", app.standin.url()));
    // Once confirmed, the link is spent: opening or confirming it again is refused.
    assert_page(&Browser::new().get(&given).await, 403, "already used");
    assert_page(&app.confirm(&Browser::new(), &scanner).await, 403, "");
    assert!(page.location.as_deref().unwrap().contains(&format!("client_id={CLIENT_ID}")));
    assert!(page.location.as_deref().unwrap().contains("scope=http"), "the Graph .default scope");
}

/// A daemon app in `OTHER_TENANT` with `secret`, not yet consented to.
pub fn daemon_app(app: &TestApp, secret: &str) -> AppRegistration {
    AppRegistration {
        client_id: DAEMON_CLIENT.into(),
        home_tenant: OTHER_TENANT.into(),
        secrets: vec![secret.into()],
        // Admin consent comes back to a registered redirect URI only.
        redirect_uris: vec![format!("{}{}", app.address, config::REDIRECT_PATH)],
        ..AppRegistration::default()
    }
}

#[tokio::test]
async fn a_daemon_app_needs_consent_then_serves_app_tokens_and_renews_them() {
    let app = spawn_app().await;
    let cid = new_cid();
    let secret = format!("dm~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(daemon_app(&app, &secret));
    let body = json!({"auth_type": "daemonApp", "client_id": DAEMON_CLIENT, "tenant_id": OTHER_TENANT, "client_secret": secret});

    let (status, refused) = set_app(&app, &cid, body).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "admin_consent_required");
    assert_eq!(refused["admin_consent_path"], format!("{}?cid={cid}", config::ADMIN_CONSENT_PATH));
    assert!(refused["reason"].as_str().unwrap().starts_with("admin_consent:"), "{refused}");
    // The app is kept for the consent link; there is no connection yet.
    assert_eq!(
        call(&app, reqwest::Method::GET, &format!("/connections/{cid}/app"), None).await.0,
        200
    );
    assert!(app.connection(&cid).await.is_none());

    // An administrator opens the link (signed like a start link) in their own browser.
    let link =
        admin_consent_link(&app, &cid, refused["admin_consent_path"].as_str().unwrap(), None);
    let admin = Browser::new();
    let to_microsoft = app.start(&admin, &link).await;
    assert_eq!(to_microsoft.status, 302, "{}", to_microsoft.body);
    let consent_url = to_microsoft.location.clone().unwrap();
    assert!(
        consent_url
            .starts_with(&format!("{}/{OTHER_TENANT}/v2.0/adminconsent?", app.standin.url())),
        "{consent_url}"
    );
    assert!(consent_url.contains(&format!("client_id={DAEMON_CLIENT}")));
    let finish = admin_decides(&app, &admin, &consent_url, "accept").await;
    assert_page(&finish, 200, "Admin consent granted");
    assert!(finish.body.contains("the connection is ready"), "{}", finish.body);
    assert!(app.standin.has_admin_consent(DAEMON_CLIENT, OTHER_TENANT));
    let events = app.events.take();
    let consent = events
        .iter()
        .find(|e| e.kind == ms_oauth::events::EventKind::AdminConsentGranted)
        .expect("the consent's event");
    assert_eq!(consent.verified, Some(true), "a daemon app's first token proves the consent");
    // The link worked once.
    assert_page(&admin.get(&link).await, 403, "already used");
    assert_eq!(app.standin.app_tokens_issued(), 1);
    let (_, connection) =
        call(&app, reqwest::Method::GET, &format!("/connections/{cid}"), None).await;
    assert_eq!(connection["status"], "ok");
    assert_eq!(connection["auth_type"], "daemonApp");
    assert_eq!(connection["vars"]["org_id"], OTHER_TENANT);

    let token_path = format!("/connections/{cid}/token");
    let (status, first) = call(&app, reqwest::Method::GET, &token_path, None).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["refreshed"], false);
    assert_eq!(app.standin.app_tokens_issued(), 1);
    // Near its expiry the token API mints the next one under the lease.
    app.clock.advance(std::time::Duration::from_secs(3599 - 120));
    let (status, second) = call(&app, reqwest::Method::GET, &token_path, None).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["refreshed"], true);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(app.standin.app_tokens_issued(), 2);
    // Nothing to keep alive: the refresher never picks a daemon connection.
    app.clock.advance(std::time::Duration::from_secs(30 * 24 * 3600));
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report.due, 0, "{report:?}");

    // A sign-in link for it explains that no one signs in.
    let page = app.start(&Browser::new(), &app.start_link(&cid, Origin::Web)).await;
    assert_page(&page, 400, "This connection signs in as an app");
    assert_nowhere(&app, &[&secret]).await;
}

#[tokio::test]
async fn daemon_apps_microsoft_refuses_get_answers_that_say_what_to_fix() {
    let app = spawn_app().await;
    let good = format!("dm~{}", ms_oauth_tests::random_base32(30));
    let expired = format!("dm~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(AppRegistration {
        expired_secrets: vec![expired.clone()],
        consented_tenants: vec![OTHER_TENANT.into()],
        ..daemon_app(&app, &good)
    });
    let cases = [
        (json!({"client_secret": "wrong", "tenant_id": OTHER_TENANT}), 422, "7000215", "Value"),
        (json!({"client_secret": expired, "tenant_id": OTHER_TENANT}), 422, "7000222", "expired"),
        (
            json!({"client_secret": good, "tenant_id": WORK_TENANT}),
            422,
            "700016",
            "not registered in this tenant",
        ),
        (
            json!({"client_secret": good, "tenant_id": "00000000-1111-2222-3333-444444444444"}),
            422,
            "90002",
            "tenant is unknown",
        ),
        (json!({"client_secret": good, "tenant_id": "common"}), 400, "", "own tenant"),
    ];
    for (extra, status, code, advice) in cases {
        let mut body = json!({"auth_type": "daemonApp", "client_id": DAEMON_CLIENT});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let cid = new_cid();
        let (got, answer) = set_app(&app, &cid, body).await;
        assert_eq!(got, status, "{answer}");
        assert!(answer["reason"].as_str().unwrap_or("").contains(code), "{answer}");
        assert!(answer["message"].as_str().unwrap().contains(advice), "{answer}");
        assert!(app.connection(&cid).await.is_none());
    }
}

#[tokio::test]
async fn removing_the_app_goes_back_to_the_server_wide_app() {
    let app = spawn_app().await;
    let cid = new_cid();
    let secret = format!("pv~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(private_app(&app, &secret));
    let body = json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "tenant_id": OTHER_TENANT, "client_secret": secret});
    assert_eq!(set_app(&app, &cid, body).await.0, 200);
    assert_eq!(sign_in(&app, &cid).await.finish.status, 200);

    let path = format!("/connections/{cid}/app");
    let (status, removed) = call(&app, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(removed["removed"], true);
    assert!(app.connection(&cid).await.is_none(), "tokens of the removed app are gone");
    assert_eq!(call(&app, reqwest::Method::DELETE, &path, None).await.1["removed"], false);

    let flow = sign_in(&app, &cid).await;
    assert!(flow.authorize_url.contains(&format!("client_id={CLIENT_ID}")));
    assert_eq!(app.connection(&cid).await.unwrap().connection.auth_type, "oauthDefault");
}

#[tokio::test]
async fn app_requests_are_checked_and_never_echoed() {
    let app = spawn_app().await;
    let cid = new_cid();
    let path = format!("/connections/{cid}/app");
    let bad = [
        json!({"auth_type": "oauthPrivate", "client_id": "not-a-guid", "client_secret": "s3cr3t-x"}),
        json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT}),
        json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "client_secret": "s3cr3t-x", "certificate": "x"}),
        json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "certificate": "s3cr3t-x"}),
        // A DER length longer than the body (found by the app fuzz target: it must not hang).
        json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"}),
        json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "client_secret": "s3cr3t-x", "extra": 1}),
        json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "client_secret": 7}),
        json!(["s3cr3t-x"]),
    ];
    for body in bad {
        let (status, answer) = call(&app, reqwest::Method::PUT, &path, Some(body)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(!answer.to_string().contains("s3cr3t-x"), "{answer}");
    }
    let response = reqwest::Client::new()
        .put(format!("{}{path}", app.api_address))
        .body("x".repeat(70 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let (status, _) = call(&app, reqwest::Method::POST, &path, Some(json!({}))).await;
    assert_eq!(status, 405);
    assert!(app.items().await.is_empty(), "nothing written");
}

#[tokio::test]
async fn the_deployments_own_app_is_refused_as_a_connections_own_app_and_nothing_reaches_microsoft()
{
    let app = spawn_app().await;
    let cid = new_cid();
    let before = app.standin.calls().token_requests;
    for (auth_type, tenant) in [("daemonApp", OTHER_TENANT), ("oauthPrivate", "common")] {
        // The server-wide app's client id, in any case, with any credential.
        for client_id in [CLIENT_ID.to_owned(), CLIENT_ID.to_uppercase()] {
            let body = json!({"auth_type": auth_type, "client_id": client_id, "tenant_id": tenant, "client_secret": "anything"});
            let (status, refused) = set_app(&app, &cid, body).await;
            assert_eq!(status, 400, "{auth_type}: {refused}");
            assert_eq!(refused["error"], "invalid_app");
            assert!(refused["message"].as_str().unwrap().contains("server-wide"), "{refused}");
        }
    }
    assert_eq!(app.standin.calls().token_requests, before, "nothing was asked of Microsoft");
    assert!(app.connection(&cid).await.is_none());
    let (status, _) =
        call(&app, reqwest::Method::GET, &format!("/connections/{cid}/app"), None).await;
    assert_eq!(status, 404, "no app was kept");
}
