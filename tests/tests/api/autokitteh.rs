//! Inside an AutoKitteh deployment: the stand-in AutoKitteh behind a front door on the
//! public address, its sign-in deciding who may connect, and the vars landing in AutoKitteh.

use std::time::Duration;

use ms_oauth::autokitteh::{Integration, LOGGED_IN_COOKIE, SESSION_COOKIE};
use ms_oauth::config;
use ms_oauth_tests::autokitteh::{
    AkFault, AkStandin, CONNECTIONS_GET, VARS_DELETE, VARS_GET, VARS_SET, WHO_AM_I,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::*;

/// A deployment with one org, its member, and a Microsoft connection of that org.
pub(crate) struct Deployment {
    pub(crate) app: TestApp,
    pub(crate) org: String,
    pub(crate) user: String,
    pub(crate) cid: String,
}

async fn deployment() -> Deployment {
    deployment_with(AppOptions::default()).await
}

pub(crate) async fn deployment_with(options: AppOptions) -> Deployment {
    let app = spawn_app_with(AppOptions { autokitteh: true, ..options }).await;
    let ak = app.autokitteh.clone().expect("AutoKitteh stand-in");
    let org = ak.add_org("Contoso automation");
    let user = ak.add_user("adele@contoso.example", &[&org]);
    let cid = ak.add_connection(&org, Integration::Microsoft, "my_teams");
    Deployment { app, org, user, cid }
}

impl Deployment {
    pub(crate) fn ak(&self) -> &AkStandin {
        self.app.autokitteh.as_ref().expect("AutoKitteh stand-in")
    }

    /// A browser signed in to AutoKitteh as `user` through its sign-in page, navigating from
    /// AutoKitteh's own pages (the web UI's popup).
    pub(crate) async fn signed_in(&self, user: &str) -> Browser {
        let browser = Browser::new().navigating_from("same-site");
        self.sign_in(&browser, user).await;
        browser
    }

    async fn sign_in(&self, browser: &Browser, user: &str) {
        let page = browser
            .post_form(
                &format!("{}/login", self.app.address),
                &[("user_id".to_owned(), user.to_owned())],
            )
            .await;
        assert_eq!(page.status, 303, "sign-in: {}", page.body);
        let cookies = browser.cookies();
        assert_eq!(cookies.get(LOGGED_IN_COOKIE).map(String::as_str), Some("true"));
        assert!(cookies.contains_key(SESSION_COOKIE));
    }

    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.app.address)
    }

    /// AutoKitteh's start URL for a connection, as `/microsoft/save` redirects to it.
    fn start_url(&self, cid: &str, origin: &str) -> String {
        self.url(&format!("{}?cid={cid}&origin={origin}", config::START_PATH))
    }

    /// The popup from AutoKitteh's connection form up to Microsoft's consent: returns the
    /// callback URL the consent sends the browser to.
    async fn popup_to_callback(&self, browser: &Browser, cid: &str, teams: bool) -> String {
        let scopes = if teams { "&auth_scopes=teams" } else { "" };
        let save = browser
            .get(&self.url(&format!(
                "/microsoft/save?cid={cid}&origin=web&auth_type=oauthDefault{scopes}"
            )))
            .await;
        assert_eq!(save.status, 302, "save: {}", save.body);
        let relative = save.location.clone().expect("relative start location");
        assert!(relative.starts_with("/oauth/start/microsoft"), "{relative}");
        let start = browser.get(&self.url(&relative)).await;
        assert_eq!(start.status, 302, "start: {}", start.body);
        let authorize = start.location.clone().expect("authorize location");
        assert!(authorize.starts_with(&self.app.standin.url()), "{authorize}");
        self.app.consent(browser, &authorize, "work").await
    }
}

#[tokio::test]
async fn the_autokitteh_popup_flow_connects_and_autokitteh_shows_the_connection_ok() {
    let d = deployment().await;
    let browser = d.signed_in(&d.user).await;
    assert_eq!(d.ak().status(&d.cid).0, "CODE_INIT_REQUIRED");

    let callback = d.popup_to_callback(&browser, &d.cid, false).await;
    assert!(callback.starts_with(&d.url(config::REDIRECT_PATH)), "{callback}");
    let finish = browser.get(&callback).await;
    assert_redirects_to(&finish, &d.url(&format!("/connections/{}/success", d.cid)));
    let success = browser.get(finish.location.as_deref().unwrap()).await;
    assert_eq!(success.status, 200);
    assert!(success.body.contains("is ready"), "{}", success.body);

    // AutoKitteh now holds the connection's vars and computes it as OK.
    assert_eq!(d.ak().status(&d.cid), ("CODE_OK".into(), "Using OAuth 2.0".into()));
    let vars = d.ak().vars(&d.cid);
    let names: Vec<&str> = vars.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "auth_type",
            "oauth_access_token",
            "oauth_expiry",
            "oauth_refresh_token",
            "oauth_token_type",
            "org_display_name",
            "org_id",
            "org_tenant_type",
            "user_display_name",
            "user_given_name",
            "user_id",
            "user_language",
            "user_mail",
            "user_mobile_phone",
            "user_principal_name",
            "user_surname",
        ]
    );
    let var = |n: &str| vars[n].clone();
    assert_eq!(var("auth_type").value, "oauthDefault");
    assert!(var("oauth_access_token").is_secret && var("oauth_refresh_token").is_secret);
    assert!(!var("oauth_token_type").is_secret && !var("user_id").is_secret);
    assert_eq!(var("oauth_token_type").value, "Bearer");
    let expiry = var("oauth_expiry").value;
    assert!(expiry.ends_with('Z') && !expiry.contains('.'), "{expiry}");
    let expiry = OffsetDateTime::parse(&expiry, &Rfc3339).expect("RFC 3339");
    let in_an_hour = OffsetDateTime::now_utc() + Duration::from_secs(3599);
    assert!((expiry - in_an_hour).abs() < time::Duration::seconds(30), "{expiry}");
    assert_eq!(var("user_principal_name").value, "adele.vance@contoso.example");
    assert!(!var("org_id").value.is_empty());

    // The same sign-in in DynamoDB, with the same tokens.
    let cid = d.cid.parse().unwrap();
    let stored = d.app.connection(&cid).await.expect("saved in DynamoDB");
    // AutoKitteh reads the access token from its vars: the refresh is due before it expires.
    let c = &stored.connection;
    assert_eq!(c.refresh_due_at, c.token_expires_at - 300);
    let secrets = d.app.secret_vars(&stored).await;
    assert_eq!(secrets["oauth_access_token"], var("oauth_access_token").value);
    assert_eq!(secrets["oauth_refresh_token"], var("oauth_refresh_token").value);
    assert_eq!(d.app.pending_states().await, 0);

    // WhoAmI at both ends, the connection read once, the vars written once.
    assert_eq!(d.ak().calls(WHO_AM_I), 2);
    assert_eq!(d.ak().calls(CONNECTIONS_GET), 1);
    assert_eq!(d.ak().calls(VARS_SET), 1);
}

#[tokio::test]
async fn teams_connections_start_at_their_own_path_and_only_there() {
    let d = deployment().await;
    let teams = d.ak().add_connection(&d.org, Integration::MicrosoftTeams, "teams");
    let browser = d.signed_in(&d.user).await;
    let callback = d.popup_to_callback(&browser, &teams, true).await;
    let finish = browser.get(&callback).await;
    assert_redirects_to(&finish, &d.url(&format!("/connections/{teams}/success")));
    assert_eq!(d.ak().status(&teams).0, "CODE_OK");

    // A Teams connection at the Microsoft path, a Microsoft one at the Teams path, and a
    // connection of another integration: refused, nothing stored.
    let wrong = [
        d.start_url(&teams, "web"),
        d.url(&format!("{}?cid={}&origin=web", config::START_PATH_TEAMS, d.cid)),
        d.start_url(&d.ak().add_other_connection(&d.org), "web"),
    ];
    for url in wrong {
        let page = browser.get(&url).await;
        assert_page(&page, 400, "This is not a Microsoft connection");
    }
    assert_eq!(d.app.pending_states().await, 0);
}

#[tokio::test]
async fn starting_without_an_autokitteh_sign_in_says_to_sign_in_and_stores_nothing() {
    let d = deployment().await;
    let page = Browser::new().get(&d.start_url(&d.cid, "web")).await;
    assert_page(&page, 401, "Sign in to AutoKitteh first");
    assert!(page.body.contains(&format!("<a href=\"{}/\">Open AutoKitteh</a>", d.app.address)));
    assert!(page.header("set-cookie").is_empty());
    // Only the session without its companion cookie (or a forged one) is no better.
    let browser = d.signed_in(&d.user).await;
    let session = browser.cookies()[SESSION_COOKIE].clone();
    let page = Browser::new()
        .get_with_cookie(&d.start_url(&d.cid, "web"), &format!("{SESSION_COOKIE}={session}"))
        .await;
    assert_page(&page, 401, "Sign in to AutoKitteh first");
    let page = Browser::new()
        .get_with_cookie(
            &d.start_url(&d.cid, "web"),
            &format!("{SESSION_COOKIE}={session}x; {LOGGED_IN_COOKIE}=true"),
        )
        .await;
    assert_page(&page, 401, "Your AutoKitteh sign-in is not valid");
    assert_eq!(d.ak().calls(CONNECTIONS_GET), 1, "only the forged session reached AutoKitteh");
    assert_eq!(d.app.pending_states().await, 0);
}

#[tokio::test]
async fn another_orgs_user_and_unknown_connections_get_one_page_and_nothing_is_stored() {
    let d = deployment().await;
    let other_org = d.ak().add_org("Fabrikam");
    let outsider = d.ak().add_user("mallory@fabrikam.example", &[&other_org]);
    let browser = d.signed_in(&outsider).await;
    let theirs = browser.get(&d.start_url(&d.cid, "web")).await;
    assert_page(&theirs, 404, "This connection was not found");
    let unknown = browser.get(&d.start_url(new_cid().as_str(), "web")).await;
    assert_page(&unknown, 404, "This connection was not found");
    assert_eq!(theirs.body, unknown.body);
    // A former member of the right org is an outsider too.
    d.ak().set_membership(&d.org, &d.user, false);
    let former = d.signed_in(&d.user).await.get(&d.start_url(&d.cid, "web")).await;
    assert_page(&former, 404, "This connection was not found");
    // A disabled user's session no longer works at all.
    d.ak().disable_user(&outsider);
    let disabled = browser.get(&d.start_url(&d.cid, "web")).await;
    assert_page(&disabled, 401, "Your AutoKitteh sign-in is not valid");
    assert_eq!(d.app.pending_states().await, 0);
    assert!(d.ak().vars(&d.cid).is_empty());
}

#[tokio::test]
async fn a_different_autokitteh_user_finishing_the_flow_is_refused_before_the_code_exchange() {
    let d = deployment().await;
    let colleague = d.ak().add_user("megan@contoso.example", &[&d.org]);
    let browser = d.signed_in(&d.user).await;
    let callback = d.popup_to_callback(&browser, &d.cid, false).await;
    // The same browser is now signed in to AutoKitteh as someone else.
    d.sign_in(&browser, &colleague).await;
    let page = browser.get(&callback).await;
    assert_page(&page, 403, "Finish as the AutoKitteh user who started");
    assert_eq!(d.app.standin.calls().token_requests, 0, "the code was redeemed");
    assert_eq!(d.app.connections().await, 0);
    assert_eq!(d.ak().calls(VARS_SET), 0);
    assert_eq!(d.ak().vars(&d.cid).len(), 1, "only the form's auth_type");
    // The flow is over: the rightful user cannot reuse that callback either.
    d.sign_in(&browser, &d.user).await;
    let again = browser.get(&callback).await;
    assert_eq!(again.status, 400, "{}", again.body);
}

#[tokio::test]
async fn finishing_after_signing_out_of_autokitteh_is_refused_before_the_code_exchange() {
    let d = deployment().await;
    let browser = d.signed_in(&d.user).await;
    let callback = d.popup_to_callback(&browser, &d.cid, false).await;
    browser.forget(SESSION_COOKIE);
    let page = browser.get(&callback).await;
    assert_page(&page, 401, "Sign in to AutoKitteh first");
    assert_eq!(d.app.standin.calls().token_requests, 0);
    assert_eq!(d.app.connections().await, 0);
}

#[tokio::test]
async fn autokitteh_down_or_slow_at_the_start_gets_a_try_again_page() {
    let d = deployment_with(AppOptions {
        http_timeout: Duration::from_millis(500),
        ..AppOptions::default()
    })
    .await;
    let browser = d.signed_in(&d.user).await;
    for (method, fault) in [
        (CONNECTIONS_GET, AkFault::Status(503)),
        (WHO_AM_I, AkFault::Status(500)),
        (CONNECTIONS_GET, AkFault::Delay(Duration::from_secs(2))),
    ] {
        d.ak().set_fault(method, Some(fault.clone()));
        let page = browser.get(&d.start_url(&d.cid, "web")).await;
        assert_page(&page, 503, "AutoKitteh is not responding");
        d.ak().set_fault(method, None);
    }
    assert_eq!(d.app.pending_states().await, 0);
    // Once it is back, the same start works.
    let page = browser.get(&d.start_url(&d.cid, "web")).await;
    assert_eq!(page.status, 302, "{}", page.body);
}

#[tokio::test]
async fn autokitteh_down_at_the_finish_refuses_before_the_code_exchange() {
    let d = deployment().await;
    let browser = d.signed_in(&d.user).await;
    let callback = d.popup_to_callback(&browser, &d.cid, false).await;
    d.ak().set_fault(WHO_AM_I, Some(AkFault::Status(503)));
    let page = browser.get(&callback).await;
    assert_page(&page, 503, "AutoKitteh is not responding");
    assert_eq!(d.app.standin.calls().token_requests, 0);
    assert_eq!(d.app.connections().await, 0);
}

#[tokio::test]
async fn a_failed_vars_write_gets_a_page_and_the_next_sign_in_completes_it() {
    let d = deployment().await;
    let browser = d.signed_in(&d.user).await;
    let callback = d.popup_to_callback(&browser, &d.cid, false).await;
    d.ak().set_fault(VARS_SET, Some(AkFault::Status(503)));
    let page = browser.get(&callback).await;
    assert_page(&page, 503, "AutoKitteh is not responding");
    assert_eq!(d.ak().calls(VARS_SET), 2, "one repeat");
    assert_ne!(d.ak().status(&d.cid).0, "CODE_OK");

    d.ak().set_fault(VARS_SET, None);
    let callback = d.popup_to_callback(&browser, &d.cid, false).await;
    let finish = browser.get(&callback).await;
    assert_redirects_to(&finish, &d.url(&format!("/connections/{}/success", d.cid)));
    assert_eq!(d.ak().status(&d.cid).0, "CODE_OK");
}

#[tokio::test]
async fn a_vars_write_that_fails_after_writing_is_repeated_or_confirmed_by_reading_back() {
    let d = deployment().await;
    let browser = d.signed_in(&d.user).await;
    // Fails once after writing: the repeat succeeds.
    d.ak().set_fault(VARS_SET, Some(AkFault::FailAfterWrite { times: 1 }));
    let finish = browser.get(&d.popup_to_callback(&browser, &d.cid, false).await).await;
    assert_redirects_to(&finish, &d.url(&format!("/connections/{}/success", d.cid)));
    assert_eq!(d.ak().calls(VARS_SET), 2);
    // Only the start read vars (the connection's own app, if any): no read-back.
    assert_eq!(d.ak().calls(VARS_GET), 1);

    // Fails twice after writing: the vars are read back and hold this sign-in's token.
    d.ak().set_fault(VARS_SET, Some(AkFault::FailAfterWrite { times: 2 }));
    let finish = browser.get(&d.popup_to_callback(&browser, &d.cid, false).await).await;
    assert_redirects_to(&finish, &d.url(&format!("/connections/{}/success", d.cid)));
    assert_eq!(d.ak().calls(VARS_SET), 4);
    assert_eq!(d.ak().calls(VARS_GET), 3, "the second start's read and one read-back");
    let cid = d.cid.parse().unwrap();
    let stored = d.app.connection(&cid).await.unwrap();
    let secrets = d.app.secret_vars(&stored).await;
    assert_eq!(secrets["oauth_access_token"], d.ak().vars(&d.cid)["oauth_access_token"].value);
}

#[tokio::test]
async fn losing_the_org_membership_before_the_finish_gets_a_clear_refusal() {
    let d = deployment().await;
    let browser = d.signed_in(&d.user).await;
    let callback = d.popup_to_callback(&browser, &d.cid, false).await;
    d.ak().set_membership(&d.org, &d.user, false);
    let page = browser.get(&callback).await;
    assert_page(&page, 403, "AutoKitteh did not let you save this connection");
    assert_eq!(d.ak().calls(VARS_SET), 1, "a refusal is not repeated");
}

#[tokio::test]
async fn a_token_longer_than_autokitteh_stores_is_refused_whole_not_cut() {
    let d = deployment().await;
    d.app.standin.set_access_token_len(9000);
    let browser = d.signed_in(&d.user).await;
    let page = browser.get(&d.popup_to_callback(&browser, &d.cid, false).await).await;
    assert_page(&page, 502, "too large for AutoKitteh");
    assert_eq!(d.ak().calls(VARS_SET), 0);
    assert_eq!(d.app.connections().await, 0, "nothing half-written");
}

#[tokio::test]
async fn vscode_and_dashboard_origins_finish_where_autokitteh_expects() {
    let d = deployment().await;
    let browser = d.signed_in(&d.user).await;
    for (origin, expected) in [
        ("vscode", format!("vscode://autokitteh.autokitteh?cid={}", d.cid)),
        ("dash", d.url(&format!("/internal/dashboard/connections/{}?msg=Success", d.cid))),
        ("cli", d.url(&format!("/connections/{}/success", d.cid))),
    ] {
        let start = browser.get(&d.start_url(&d.cid, origin)).await;
        let callback =
            d.app.consent(&browser, start.location.as_deref().expect("authorize"), "work").await;
        let finish = browser.get(&callback).await;
        assert_eq!(finish.location.as_deref(), Some(expected.as_str()), "{origin}");
    }
}

#[tokio::test]
async fn the_autokitteh_session_never_leaves_the_autokitteh_api() {
    let d = deployment().await;
    let browser = d.signed_in(&d.user).await;
    let session = browser.cookies()[SESSION_COOKIE].clone();
    let start = browser.get(&d.start_url(&d.cid, "web")).await;
    let authorize = start.location.clone().unwrap();
    // The pending flow records who started it, never the session.
    let pending = format!("{:?}", d.app.items().await);
    assert!(pending.contains(&d.user), "{pending}");
    assert!(!pending.contains(&session));
    let callback = d.app.consent(&browser, &authorize, "work").await;
    let finish = browser.get(&callback).await;
    assert_eq!(finish.status, 302);
    // Refusals too.
    let refused = Browser::new()
        .get_with_cookie(
            &d.start_url(new_cid().as_str(), "web"),
            &format!("{SESSION_COOKIE}={session}; {LOGGED_IN_COOKIE}=true"),
        )
        .await;
    assert_eq!(refused.status, 404);

    for (what, text) in [
        ("authorize URL", authorize.clone()),
        ("callback URL", callback.clone()),
        ("finish location", finish.location.clone().unwrap_or_default()),
        ("refusal page", refused.body.clone()),
        ("logs", captured_logs()),
        ("table", format!("{:?}", d.app.items().await)),
    ] {
        assert!(!text.contains(&session), "the AutoKitteh session is in the {what}");
    }
    // It reached AutoKitteh, as a Bearer token and nowhere else.
    assert!(d.ak().authorizations().iter().all(|a| *a == format!("Bearer {session}")));
    assert!(d.ak().authorizations().len() >= 3);
}

/// The Python of the virtualenv holding AutoKitteh's SDK (`make deps-sdk`).
fn sdk_python() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("AK_SDK_PYTHON") {
        return path.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv-sdk/bin/python");
    assert!(
        python.exists(),
        "AutoKitteh's Python SDK is not installed: run `make deps-sdk` (or set AK_SDK_PYTHON)"
    );
    python
}

/// Runs the workflow-side check on connection `name` with exactly `vars` as its environment.
async fn run_sdk(name: &str, vars: &[(String, String)]) -> std::process::Output {
    let mut command = tokio::process::Command::new(sdk_python());
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/workflow_credential.py"))
        .arg(name)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (var, value) in vars {
        command.env(format!("{name}__{var}"), value);
    }
    command.output().await.expect("run the SDK")
}

#[tokio::test]
async fn autokittehs_own_python_sdk_gets_a_working_credential_from_the_vars() {
    let d = deployment().await;
    let browser = d.signed_in(&d.user).await;
    let finish = browser.get(&d.popup_to_callback(&browser, &d.cid, false).await).await;
    assert_eq!(finish.status, 302, "{}", finish.body);

    // What a workflow session sees: every var as `<connection name>__<var>`.
    let name = "my_teams";
    let mut vars: Vec<(String, String)> =
        d.ak().vars(&d.cid).into_iter().map(|(k, v)| (k, v.value)).collect();
    vars.push(("connection_id".into(), d.cid.clone()));
    let output = run_sdk(name, &vars).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "SDK failed: {stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");

    let cid = d.cid.parse().unwrap();
    let stored = d.app.connection(&cid).await.unwrap();
    let token = d.app.secret_vars(&stored).await["oauth_access_token"].as_str().unwrap().to_owned();
    use sha2::Digest as _;
    let expected = sha2::Sha256::digest(token.as_bytes());
    let expected: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(report["token_sha256"], expected, "the SDK hands Graph this sign-in's token");
    assert_eq!(report["expires_on"], stored.connection.token_expires_at, "expiry read back");
    assert_eq!(report["client"], "GraphServiceClient");
    assert!(!stdout.contains(&token) && !stderr.contains(&token));

    // Without the token var (a connection not yet initialised) the SDK refuses, so the
    // check above is not vacuous.
    let refused = run_sdk(name, &[("auth_type".into(), "oauthDefault".into())]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("ConnectionInitError"));
}

/// A deployment whose connection API and refresher write back to AutoKitteh, with the
/// connection already made through the popup.
pub(crate) async fn connected_with_write_back() -> Deployment {
    let d = deployment_with(AppOptions { ak_write_back: true, ..AppOptions::default() }).await;
    let (service_user, _) = d.app.ak_service_user.clone().expect("service user");
    d.ak().set_membership(&d.org, &service_user, true);
    let browser = d.signed_in(&d.user).await;
    let callback = d.popup_to_callback(&browser, &d.cid, false).await;
    let finish = browser.get(&callback).await;
    assert_eq!(finish.status, 302, "{}", finish.body);
    assert_eq!(d.ak().status(&d.cid).0, "CODE_OK");
    d
}

#[tokio::test]
async fn refreshes_are_written_back_to_autokitteh_as_the_service_user() {
    let d = connected_with_write_back().await;
    let cid: ms_oauth::domain::ConnectionId = d.cid.parse().unwrap();
    let before = d.ak().vars(&d.cid);
    d.app.standin.set_strict_rotation(true);

    // An hour later the connection API refreshes on read; the refresher does the same later.
    d.app.clock.advance(Duration::from_secs(3600));
    let grant = d.app.refresher.tokens.token(&cid, false).await.expect("token");
    assert!(grant.refreshed);
    let after = d.ak().vars(&d.cid);
    let stored = d.app.connection(&cid).await.unwrap();
    let secrets = d.app.secret_vars(&stored).await;
    use secrecy::ExposeSecret as _;
    assert_eq!(after["oauth_access_token"].value, grant.access_token.expose_secret());
    assert_ne!(after["oauth_access_token"].value, before["oauth_access_token"].value);
    assert!(after["oauth_access_token"].is_secret && after["oauth_refresh_token"].is_secret);
    // The rotated refresh token, as this table holds it, and the new expiry in AutoKitteh's format.
    assert_eq!(secrets["oauth_refresh_token"], after["oauth_refresh_token"].value);
    assert_ne!(after["oauth_refresh_token"].value, before["oauth_refresh_token"].value);
    let expiry = OffsetDateTime::parse(&after["oauth_expiry"].value, &Rfc3339).unwrap();
    assert_eq!(expiry.unix_timestamp(), stored.connection.token_expires_at);
    assert!(after["oauth_expiry"].value.ends_with('Z'));
    // Everything else is left as the sign-in wrote it.
    assert_eq!(after["user_principal_name"], before["user_principal_name"]);
    assert_eq!(after.len(), before.len());
    assert_eq!(d.ak().status(&d.cid).0, "CODE_OK");
    // Counted: one refresh on request, one write-back that worked.
    use ms_oauth::metrics::name;
    let written = [("Kind", "refreshed"), ("Outcome", "ok")];
    assert_eq!(d.app.metrics.count(name::WRITE_BACK, &written), 1);
    let refreshed = [("Trigger", "request"), ("Outcome", "refreshed")];
    assert_eq!(d.app.metrics.count(name::REFRESH, &refreshed), 1);

    // The write went out with the service user's API token, never a user's session.
    let (_, service_token) = d.app.ak_service_user.clone().unwrap();
    let last = d.ak().authorizations().last().cloned().unwrap();
    assert_eq!(last, format!("Bearer {service_token}"));
    assert!(!captured_logs().contains(&service_token), "the API token reached the logs");
    let items = format!("{:?}", d.app.items().await);
    assert!(!items.contains(&service_token), "the API token reached the table");
    assert!(!format!("{:?}", d.app.refresher.tokens).contains(&service_token));
}

#[tokio::test]
async fn a_dead_grant_removes_the_token_vars_and_disconnect_removes_every_var() {
    let d = connected_with_write_back().await;
    let cid: ms_oauth::domain::ConnectionId = d.cid.parse().unwrap();
    d.ak().set_var(&d.cid, "private_note", "set by the user", false);

    d.app.standin.revoke_refresh_tokens(70043);
    let failure = d.app.refresher.tokens.token(&cid, true).await.unwrap_err();
    assert!(failure.to_string().contains("needs a new sign-in"), "{failure}");
    let vars = d.ak().vars(&d.cid);
    assert!(!vars.contains_key("oauth_access_token") && !vars.contains_key("oauth_refresh_token"));
    assert_eq!(
        d.ak().status(&d.cid).0,
        "CODE_INIT_REQUIRED",
        "AutoKitteh shows a sign-in is needed"
    );
    assert!(vars.contains_key("user_principal_name"), "identity vars stay until disconnect");

    assert!(d.app.refresher.tokens.disconnect(&cid).await.unwrap());
    let vars = d.ak().vars(&d.cid);
    // What the user set is left, and `auth_type`, which names the app they chose; AutoKitteh
    // shows the connection as needing a sign-in.
    assert_eq!(vars.keys().collect::<Vec<_>>(), ["auth_type", "private_note"]);
    assert_eq!(d.ak().status(&d.cid).0, "CODE_INIT_REQUIRED");
    // Disconnecting again changes nothing and calls nobody.
    let deletes = d.ak().calls(VARS_DELETE);
    assert!(!d.app.refresher.tokens.disconnect(&cid).await.unwrap());
    assert_eq!(d.ak().calls(VARS_DELETE), deletes);
}

#[tokio::test]
async fn autokitteh_failing_a_write_back_never_fails_the_refresh() {
    let d = connected_with_write_back().await;
    let cid: ms_oauth::domain::ConnectionId = d.cid.parse().unwrap();
    let before = d.ak().vars(&d.cid)["oauth_access_token"].clone();

    // Down: the refreshed token is still served and saved; AutoKitteh keeps the old one.
    d.ak().set_fault(VARS_SET, Some(AkFault::Status(503)));
    let grant = d.app.refresher.tokens.token(&cid, true).await.expect("token despite AutoKitteh");
    assert!(grant.refreshed);
    assert_eq!(d.ak().vars(&d.cid)["oauth_access_token"], before);
    assert!(captured_logs().contains("refreshed tokens not written to AutoKitteh"));

    // AutoKitteh's "error after writing": the write counts once the read-back matches.
    d.ak().set_fault(VARS_SET, Some(AkFault::FailAfterWrite { times: 2 }));
    let grant = d.app.refresher.tokens.token(&cid, true).await.expect("token");
    use secrecy::ExposeSecret as _;
    assert_eq!(d.ak().vars(&d.cid)["oauth_access_token"].value, grant.access_token.expose_secret());

    // The service user removed from the org: refused, and the refresh still succeeds.
    d.ak().set_fault(VARS_SET, None);
    let (service_user, _) = d.app.ak_service_user.clone().unwrap();
    d.ak().set_membership(&d.org, &service_user, false);
    assert!(d.app.refresher.tokens.token(&cid, true).await.expect("token").refreshed);
}

#[tokio::test]
async fn connections_made_outside_autokitteh_are_not_written_back() {
    let d = connected_with_write_back().await;
    let cid: ms_oauth::domain::ConnectionId = d.cid.parse().unwrap();
    // The same item as a standalone sign-in leaves it: no AutoKitteh user.
    d.app
        .dynamodb
        .update_item()
        .table_name(&d.app.table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("conn#{cid}")))
        .update_expression("REMOVE autokitteh_user_id")
        .send()
        .await
        .unwrap();
    let before = d.ak().calls(VARS_SET) + d.ak().calls(VARS_DELETE);
    assert!(d.app.refresher.tokens.token(&cid, true).await.expect("token").refreshed);
    assert!(d.app.refresher.tokens.disconnect(&cid).await.unwrap());
    assert_eq!(d.ak().calls(VARS_SET) + d.ak().calls(VARS_DELETE), before);
}

#[tokio::test]
async fn a_private_app_named_by_autokitteh_vars_signs_in_through_it_and_is_kept_for_refreshes() {
    use crate::apps::{PRIVATE_CLIENT, call};
    use ms_oauth_tests::standin::{AppRegistration, OTHER_TENANT};
    let d = deployment().await;
    let secret = format!("pv~{}", ms_oauth_tests::random_base32(30));
    d.app.standin.register_app(AppRegistration {
        client_id: PRIVATE_CLIENT.into(),
        home_tenant: OTHER_TENANT.into(),
        secrets: vec![secret.clone()],
        redirect_uris: vec![format!("{}{}", d.app.address, config::REDIRECT_PATH)],
        ..AppRegistration::default()
    });
    // What AutoKitteh's connection form saves for a private app.
    let ak = d.ak();
    ak.set_var(&d.cid, "auth_type", "oauthPrivate", false);
    ak.set_var(&d.cid, "private_client_id", PRIVATE_CLIENT, false);
    ak.set_var(&d.cid, "private_tenant_id", OTHER_TENANT, false);
    ak.set_var(&d.cid, "private_client_secret", &secret, true);

    let browser = d.signed_in(&d.user).await;
    // AutoKitteh lets any signed-in user set these vars (its /microsoft/save writes them as
    // its system user): the start shows which app the sign-in goes through before it does.
    let asked = browser.get(&d.start_url(&d.cid, "web")).await;
    assert_page(&asked, 200, "Connect a Microsoft account?");
    assert!(
        asked.body.contains(&format!("{PRIVATE_CLIENT} (the connection&#39;s own)"))
            || asked.body.contains(&format!("{PRIVATE_CLIENT} (the connection")),
        "{}",
        asked.body
    );
    assert_eq!(d.app.pending_states().await, 0);
    let start = d.app.confirm(&browser, &asked).await;
    let authorize = format!("{}/{OTHER_TENANT}/oauth2/v2.0/authorize?", d.app.standin.url());
    assert_redirects_to(&start, &authorize);
    assert!(start.location.as_deref().unwrap().contains(&format!("client_id={PRIVATE_CLIENT}")));
    let callback = d.app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    let finish = browser.get(&callback).await;
    assert_redirects_to(&finish, &d.url(&format!("/connections/{}/success", d.cid)));
    let cid: ms_oauth::domain::ConnectionId = d.cid.parse().unwrap();
    let stored = d.app.connection(&cid).await.unwrap().connection;
    assert_eq!(stored.auth_type, "oauthPrivate");
    assert_eq!(stored.app_client_id.as_deref(), Some(PRIVATE_CLIENT));
    assert_eq!(ak.vars(&d.cid)["auth_type"].value, "oauthPrivate");
    assert_eq!(ak.status(&d.cid).0, "CODE_OK");

    // The app the vars named is kept sealed: the token API refreshes through it.
    let (status, app) =
        call(&d.app, reqwest::Method::GET, &format!("/connections/{cid}/app"), None).await;
    assert_eq!(status, 200, "{app}");
    assert_eq!(app["app"]["private_client_id"], PRIVATE_CLIENT);
    let path = format!("/connections/{cid}/token?force_refresh=true");
    let (status, token) = call(&d.app, reqwest::Method::GET, &path, None).await;
    assert_eq!((status, &token["refreshed"]), (200, &serde_json::json!(true)), "{token}");
    let items = format!("{:?}", d.app.items().await);
    assert!(!items.contains(&secret) && !captured_logs().contains(&secret));

    // A connection whose vars name a daemon app has no sign-in.
    ak.set_var(&d.cid, "auth_type", "daemonApp", false);
    let page = browser.get(&d.start_url(&d.cid, "web")).await;
    let page = if page.status == 200 { d.app.confirm(&browser, &page).await } else { page };
    assert_page(&page, 400, "This connection signs in as an app");
}

#[tokio::test]
async fn a_daemon_app_named_by_autokitteh_vars_gets_admin_consent_from_a_member() {
    use crate::apps::{DAEMON_CLIENT, admin_decides};
    use ms_oauth_tests::standin::{AppRegistration, OTHER_TENANT};
    let d = deployment().await;
    let secret = format!("dm~{}", ms_oauth_tests::random_base32(30));
    d.app.standin.register_app(AppRegistration {
        client_id: DAEMON_CLIENT.into(),
        home_tenant: OTHER_TENANT.into(),
        secrets: vec![secret.clone()],
        redirect_uris: vec![format!("{}{}", d.app.address, config::REDIRECT_PATH)],
        ..AppRegistration::default()
    });
    let ak = d.ak();
    ak.set_var(&d.cid, "auth_type", "daemonApp", false);
    ak.set_var(&d.cid, "private_client_id", DAEMON_CLIENT, false);
    ak.set_var(&d.cid, "private_tenant_id", OTHER_TENANT, false);
    ak.set_var(&d.cid, "private_client_secret", &secret, true);

    // Without an AutoKitteh sign-in the link asks for one.
    let link = d.url(&format!("{}?cid={}&origin=web", config::ADMIN_CONSENT_PATH, d.cid));
    assert_page(&Browser::new().get(&link).await, 401, "Sign in to AutoKitteh first");
    // A member of the connection's org, who administers the Microsoft tenant too.
    let browser = d.signed_in(&d.user).await;
    // The link is meant to be sent to an administrator: it always asks first, and opening it
    // starts nothing.
    let asked = browser.get(&link).await;
    assert_page(&asked, 200, "Grant admin consent?");
    assert!(asked.body.contains(DAEMON_CLIENT), "{}", asked.body);
    assert_eq!(d.app.pending_states().await, 0);
    let to_microsoft = d.app.confirm(&browser, &asked).await;
    let consent = format!("{}/{OTHER_TENANT}/v2.0/adminconsent?", d.app.standin.url());
    assert_redirects_to(&to_microsoft, &consent);
    assert!(
        to_microsoft.location.as_deref().unwrap().contains(&format!("client_id={DAEMON_CLIENT}"))
    );
    let finish =
        admin_decides(&d.app, &browser, to_microsoft.location.as_deref().unwrap(), "accept").await;
    assert_page(&finish, 200, "the connection is ready");
    let cid: ms_oauth::domain::ConnectionId = d.cid.parse().unwrap();
    let stored = d.app.connection(&cid).await.unwrap().connection;
    assert_eq!(stored.auth_type, "daemonApp");
    assert_eq!(stored.vars.org_id.as_deref(), Some(OTHER_TENANT));
    // The app the vars named is kept sealed, for the token API's renewals.
    let (status, token) =
        crate::apps::call(&d.app, reqwest::Method::GET, &format!("/connections/{cid}/token"), None)
            .await;
    assert_eq!(status, 200, "{token}");
    let items = format!("{:?}", d.app.items().await);
    assert!(!items.contains(&secret) && !captured_logs().contains(&secret));
}

#[tokio::test]
async fn vars_that_name_the_deployments_own_app_as_the_connections_app_are_refused_at_the_start() {
    let d = deployment().await;
    let ak = d.ak();
    ak.set_var(&d.cid, "auth_type", "oauthPrivate", false);
    ak.set_var(&d.cid, "private_client_id", CLIENT_ID, false);
    ak.set_var(&d.cid, "private_tenant_id", "common", false);
    ak.set_var(&d.cid, "private_client_secret", "anything", true);
    let browser = d.signed_in(&d.user).await;
    let page = browser.get(&d.start_url(&d.cid, "web")).await;
    assert_page(&page, 502, "server-wide app");
    assert!(page.location.is_none(), "not sent to Microsoft");
    assert_eq!(d.app.pending_states().await, 0, "no flow was started");
}

/// AutoKitteh's own finish takes a token blob in the web address and writes it into any
/// connection it names, for any signed-in user. Behind the front door it never reaches
/// AutoKitteh: the start function answers every method of it with a refusal page, and the
/// blob is never logged.
#[tokio::test]
async fn autokittehs_token_in_the_address_finishes_are_refused_before_autokitteh() {
    use ms_oauth_tests::autokitteh::TOKEN_URL_FINISH;
    let d = deployment().await;
    let other_org = d.ak().add_org("Fabrikam");
    let mallory = d.ak().add_user("mallory@fabrikam.example", &[&other_org]);
    let browser = d.signed_in(&mallory).await;
    let blob = format!("eyJ0b2tlbiI6IHsiYWNjZXNzX3Rva2VuIjogIm1hbGxvcnkifX0{}", new_cid());
    for path in config::AUTOKITTEH_TOKEN_URL_PATHS {
        let url = d.url(&format!("{path}?cid={}&origin=web&oauth={blob}", d.cid));
        let page = browser.get(&url).await;
        assert_page(&page, 410, "This address is not used");
        assert!(page.header("set-cookie").is_empty());
        let posted = browser.post_form(&url, &[("oauth".to_owned(), blob.clone())]).await;
        assert_eq!(posted.status, 410, "{}", posted.body);
    }
    assert_eq!(d.ak().calls(TOKEN_URL_FINISH), 0, "AutoKitteh's handler was reached");
    assert!(d.ak().vars(&d.cid).is_empty());
    assert!(!captured_logs().contains(&blob), "the blob reached the logs");
}

/// The web UI's create form for Teams sends `auth_scopes=microsoft_teams`, and AutoKitteh's
/// `/microsoft/save` then redirects to `/oauth/start/microsoft_microsoft_teams`: that path
/// starts the Teams flow (and only for Teams connections).
#[tokio::test]
async fn the_web_uis_teams_create_path_starts_the_teams_flow() {
    let d = deployment().await;
    let teams = d.ak().add_connection(&d.org, Integration::MicrosoftTeams, "teams");
    let browser = d.signed_in(&d.user).await;
    let save = browser
        .get(&d.url(&format!(
            "/microsoft/save?cid={teams}&origin=web&auth_type=oauthDefault&auth_scopes=microsoft_teams"
        )))
        .await;
    let relative = save.location.clone().expect("relative start location");
    assert!(relative.starts_with(config::START_PATH_TEAMS_WEB_UI), "{relative}");
    let start = browser.get(&d.url(&relative)).await;
    assert_eq!(start.status, 302, "start: {}", start.body);
    let callback = d.app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    let finish = browser.get(&callback).await;
    assert_redirects_to(&finish, &d.url(&format!("/connections/{teams}/success")));
    assert_eq!(d.ak().status(&teams).0, "CODE_OK");

    // A Microsoft connection at the Teams path of the web UI: refused.
    let wrong = d.url(&format!("{}?cid={}&origin=web", config::START_PATH_TEAMS_WEB_UI, d.cid));
    assert_page(&browser.get(&wrong).await, 400, "This is not a Microsoft connection");
}

/// A start link forwarded by mail or chat (`Sec-Fetch-Site: none`), one another site's page
/// opens (`cross-site`), or one from a browser that does not say, asks the member first,
/// naming the connection, the user and the app; another site cannot press its button.
#[tokio::test]
async fn a_start_that_did_not_come_from_autokittehs_pages_asks_first() {
    let d = deployment().await;
    for (started, site) in [Some("none"), Some("cross-site"), None].into_iter().enumerate() {
        let browser = match site {
            Some(site) => Browser::new().navigating_from(site),
            None => Browser::new(),
        };
        d.sign_in(&browser, &d.user).await;
        let asked = browser.get(&d.start_url(&d.cid, "web")).await;
        assert_page(&asked, 200, "Connect a Microsoft account?");
        for shown in ["my_teams", d.cid.as_str(), "adele@contoso.example", "this deployment"] {
            assert!(asked.body.contains(shown), "{shown:?} not shown: {}", asked.body);
        }
        assert_eq!(d.app.pending_states().await, started, "nothing starts before the confirmation");

        // Another site's page posts the form in the member's browser: refused.
        let fields = ms_oauth_tests::startlink::confirm_fields(&asked.body);
        let post = d.url(config::START_PATH);
        let forged = browser
            .post_form_with(
                &post,
                &fields,
                &[("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")],
            )
            .await;
        assert_page(&forged, 403, "came from another site");
        // Without this browser's confirm cookie (a form from elsewhere, same hash): refused.
        let elsewhere = d.signed_in(&d.user).await;
        let other = d.app.confirm(&elsewhere, &asked).await;
        assert_page(&other, 403, "Confirm in the browser that opened");
        assert_eq!(d.app.pending_states().await, started);

        // The member confirms on the page: on to Microsoft.
        let start = d.app.confirm(&browser, &asked).await;
        assert_redirects_to(&start, &d.app.standin.url());
    }
}

/// AutoKitteh's `/microsoft/save` lets any signed-in user point a connection at another app
/// (it writes the vars as its system user). Mallory, of another org, points Adele's
/// connection at her own app: Adele's next start, even from AutoKitteh's own popup, shows
/// the app it would go through before anything goes to Microsoft.
#[tokio::test]
async fn an_app_swapped_in_through_autokittehs_save_is_shown_before_the_sign_in() {
    let d = deployment().await;
    let other_org = d.ak().add_org("Fabrikam");
    let mallory = d.ak().add_user("mallory@fabrikam.example", &[&other_org]);
    let malicious = "0badc0de-1111-4222-8333-444455556666";
    let swapped = d
        .signed_in(&mallory)
        .await
        .get(&d.url(&format!(
            "/microsoft/save?cid={}&origin=web&auth_type=oauthPrivate&client_id={malicious}&client_secret=s3cret&tenant_id=common",
            d.cid
        )))
        .await;
    assert_eq!(swapped.status, 302, "AutoKitteh's save writes for anyone: {}", swapped.body);
    assert_eq!(d.ak().vars(&d.cid)["private_client_id"].value, malicious);

    let adele = d.signed_in(&d.user).await;
    let asked = adele.get(&d.start_url(&d.cid, "web")).await;
    assert_page(&asked, 200, "Connect a Microsoft account?");
    assert!(asked.body.contains(malicious), "the swapped app is not named: {}", asked.body);
    assert_eq!(d.app.pending_states().await, 0);
    assert!(d.app.standin.calls().authorize_tenants.is_empty(), "nothing went to Microsoft");
}

/// A browser carrying two AutoKitteh sessions (one planted by a sibling subdomain with
/// `Domain=` the parent) cannot be told whose sign-in it is: refused before AutoKitteh is
/// asked, nothing stored. The same for two binding cookies of one flow at the redirect.
#[tokio::test]
async fn two_sessions_or_two_binding_cookies_are_refused_as_ambiguous() {
    use ms_oauth::autokitteh::{LOGGED_IN_COOKIE, SESSION_COOKIE};
    let d = deployment().await;
    let browser = d.signed_in(&d.user).await;
    let session = browser.cookies()[SESSION_COOKIE].clone();
    let planted = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.planted";
    let calls = d.ak().calls(WHO_AM_I);
    for header in [
        format!("{SESSION_COOKIE}={planted}; {SESSION_COOKIE}={session}; {LOGGED_IN_COOKIE}=true"),
        format!("{SESSION_COOKIE}={session}; {LOGGED_IN_COOKIE}=true; {LOGGED_IN_COOKIE}=true"),
    ] {
        let page = Browser::new().get_with_cookie(&d.start_url(&d.cid, "web"), &header).await;
        assert_page(&page, 400, "Your browser sent two sign-ins");
    }
    assert_eq!(d.ak().calls(WHO_AM_I), calls, "AutoKitteh was not asked");
    assert_eq!(d.app.pending_states().await, 0);

    // At the redirect: the flow's binding cookie twice.
    let start = browser.get(&d.start_url(&d.cid, "web")).await;
    assert_eq!(start.status, 302, "{}", start.body);
    let callback = d.app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    let binding: Vec<(String, String)> = browser
        .cookies()
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with(ms_oauth::state::COOKIE_PREFIX)
                && !name.starts_with(ms_oauth::state::CONFIRM_COOKIE_PREFIX)
        })
        .collect();
    assert_eq!(binding.len(), 1, "{binding:?}");
    let (name, value) = &binding[0];
    let header = format!(
        "{name}=planted; {name}={value}; {SESSION_COOKIE}={session}; {LOGGED_IN_COOKIE}=true"
    );
    let page = Browser::new().get_with_cookie(&callback, &header).await;
    assert_page(&page, 400, "Your browser sent two sign-ins");
    assert!(!d.ak().vars(&d.cid).contains_key("oauth_access_token"), "nothing was written");
}

/// A refresh's write-back that is still on its way when the user disconnects lands after the
/// disconnect deleted the vars: the refresh checks the table after its write, finds the
/// connection gone and deletes what it wrote, so AutoKitteh holds no token the table does not.
#[tokio::test]
async fn a_write_back_that_lands_after_a_disconnect_is_taken_back() {
    let d = connected_with_write_back().await;
    let cid: ms_oauth::domain::ConnectionId = d.cid.parse().unwrap();
    let before = d.app.connection(&cid).await.unwrap().version;
    d.ak().set_fault(VARS_SET, Some(AkFault::Delay(Duration::from_millis(1500))));
    d.app.clock.advance(Duration::from_secs(3600));
    let tokens = d.app.refresher.tokens.clone();
    let refresh = {
        let cid = cid.clone();
        tokio::spawn(async move { tokens.token(&cid, true).await.map(|g| g.refreshed) })
    };
    // The refresh is saved; its write to AutoKitteh is still on its way.
    let mut saved = false;
    for _ in 0..100 {
        if d.app.connection(&cid).await.is_some_and(|c| c.version > before) {
            saved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saved, "the refresh was not saved");
    assert!(d.app.refresher.tokens.disconnect(&cid).await.unwrap());
    assert!(
        !d.ak().vars(&d.cid).contains_key("oauth_access_token"),
        "the disconnect deleted the vars"
    );
    assert!(refresh.await.unwrap().unwrap(), "the refresh itself succeeded");
    let vars = d.ak().vars(&d.cid);
    assert!(
        !vars.contains_key("oauth_access_token") && !vars.contains_key("oauth_refresh_token"),
        "a disconnected connection's tokens came back into AutoKitteh: {:?}",
        vars.keys().collect::<Vec<_>>()
    );
    use ms_oauth::metrics::name;
    assert_eq!(
        d.app.metrics.count(name::WRITE_BACK, &[("Kind", "withdrawn"), ("Outcome", "ok")]),
        1
    );
}

/// AutoKitteh refuses the finishing user's vars (their membership ended while they were at
/// Microsoft): the sign-in is taken out of the table and its key share destroyed, so the
/// service user's write-back can never put it into AutoKitteh later.
#[tokio::test]
async fn a_sign_in_autokitteh_refused_is_not_left_saved() {
    let d = deployment_with(AppOptions { ak_write_back: true, ..AppOptions::default() }).await;
    let (service_user, _) = d.app.ak_service_user.clone().expect("service user");
    d.ak().set_membership(&d.org, &service_user, true);
    let cid: ms_oauth::domain::ConnectionId = d.cid.parse().unwrap();
    let browser = d.signed_in(&d.user).await;
    let callback = d.popup_to_callback(&browser, &d.cid, false).await;
    d.ak().set_membership(&d.org, &d.user, false);
    let page = browser.get(&callback).await;
    assert_page(&page, 403, "AutoKitteh did not let you save this connection");
    assert!(d.app.connection(&cid).await.is_none(), "the refused sign-in stayed saved");
    assert!(d.app.share_ids(&cid).await.is_empty(), "its key share survived");
    // Nothing for the refresher to write back later.
    d.app.clock.advance(Duration::from_secs(3600));
    d.app.refresher.run().await.unwrap();
    assert!(!d.ak().vars(&d.cid).contains_key("oauth_access_token"));
    assert_eq!(d.ak().calls(VARS_SET), 1, "only the refused write");
}
