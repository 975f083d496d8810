//! Deployments as the template wires them (each function from the environment the resolved
//! template gives it), with settings users change: the scopes a sign-in asks for, and what a
//! refresh then asks for; a refresh outage met by a burst of readers.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::tokens::REFRESH_COOLDOWN;
use ms_oauth_tests::standin::Fault;
use serde_json::Value;
use token_refresher::Report;

use crate::helpers::*;

/// What a deployment that reads mail and calendars asks for (`MicrosoftScopes`).
const OWN_SCOPES: &str = "User.Read Mail.Read Calendars.Read";

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", app.api_address))
        .send()
        .await
        .expect("connection API");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("JSON");
    crate::openapi::assert_documented("GET", path, status, &body);
    (status, body)
}

/// Makes `cid` look like an item saved before grants were recorded.
async fn forget_the_grant(app: &TestApp, cid: &ConnectionId) {
    app.dynamodb
        .update_item()
        .table_name(&app.table)
        .key("pk", AttributeValue::S(format!("conn#{cid}")))
        .update_expression("REMOVE granted_scopes")
        .send()
        .await
        .unwrap();
}

fn scopes_of(authorize_url: &str) -> Vec<String> {
    let url = url::Url::parse(authorize_url).unwrap();
    let scope = url.query_pairs().find(|(k, _)| k == "scope").map(|(_, v)| v.into_owned());
    scope.unwrap_or_default().split(' ').map(str::to_owned).collect()
}

/// A deployment with [`OWN_SCOPES`] (each function from its environment, through a
/// recorder) and a connection signed in there; the sign-in's flow.
async fn own_scopes_connection() -> (TestApp, ConnectionId, Flow) {
    let app = spawn_app_with(AppOptions {
        from_template: true,
        parameters: vec![("MicrosoftScopes", OWN_SCOPES.to_owned())],
        ..AppOptions::default()
    })
    .await;
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    (app, cid, flow)
}

#[tokio::test]
async fn a_deployment_with_its_own_scopes_refreshes_from_the_api_and_from_the_refresher() {
    let (app, cid, flow) = own_scopes_connection().await;
    let asked = scopes_of(&flow.authorize_url);
    assert!(asked.contains(&"Mail.Read".to_owned()), "{asked:?}");
    assert!(!asked.iter().any(|s| s.starts_with("Channel")), "the default list: {asked:?}");

    // What Microsoft granted is kept with the connection (offline_access is never named).
    let stored = app.connection(&cid).await.unwrap().connection;
    let granted = stored.granted_scopes.clone().expect("granted scopes recorded");
    assert!(granted.split(' ').any(|s| s == "Calendars.Read"), "{granted}");
    assert!(!granted.split(' ').any(|s| s == "offline_access"), "{granted}");

    // The connection API refreshes with exactly that grant, which Microsoft accepts.
    let refreshes = app.standin.calls().refreshes;
    let (status, body) = get(&app, &format!("/connections/{cid}/token?force_refresh=true")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["refreshed"], true, "{body}");
    assert_eq!(body["stale"], false, "{body}");
    assert_eq!(app.standin.calls().refreshes, refreshes + 1);

    // So does the refresher.
    app.make_due(&cid).await;
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 1, refreshed: 1, ..Report::default() });
    let stored = app.connection(&cid).await.unwrap().connection;
    assert_eq!(stored.status, "ok", "{:?}", stored.status_reason);
    assert_eq!(stored.granted_scopes.as_deref(), Some(granted.as_str()));
    let (status, body) = get(&app, &format!("/connections/{cid}")).await;
    assert_eq!((status, &body["status"]), (200, &Value::from("ok")), "{body}");
}

#[tokio::test]
async fn a_connection_saved_before_grants_were_recorded_refreshes_with_what_was_consented() {
    let (app, cid, _) = own_scopes_connection().await;
    let granted = app.connection(&cid).await.unwrap().connection.granted_scopes.unwrap();
    // As an item saved by an earlier version: no record of the grant.
    forget_the_grant(&app, &cid).await;
    assert_eq!(app.connection(&cid).await.unwrap().connection.granted_scopes, None);

    let (status, body) = get(&app, &format!("/connections/{cid}/token?force_refresh=true")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["refreshed"], true, "{body}");
    // Microsoft named the consented scopes in its answer: from now on they are the grant.
    let stored = app.connection(&cid).await.unwrap().connection;
    assert_eq!(stored.granted_scopes.as_deref(), Some(granted.as_str()));
    assert_eq!(stored.status, "ok");
}

#[tokio::test]
async fn during_a_refresh_outage_a_burst_of_forced_refreshes_makes_one_refresh_and_no_old_token() {
    let app = spawn_app().await;
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    let stored = app.secret_vars(&app.connection(&cid).await.unwrap()).await;
    let old_token = stored["oauth_access_token"].as_str().unwrap().to_owned();
    app.standin.set_refresh_fault(Some(Fault::Status(503)));
    let before = app.standin.calls().refresh_requests;

    let path = format!("/connections/{cid}/token?force_refresh=true");
    let burst = (0..12).map(|_| get(&app, &path));
    let answers = futures::future::join_all(burst).await;
    let calls = app.standin.calls().refresh_requests - before;
    // One refresh, tried at most twice: the other readers shared its outcome.
    assert!((1..=2).contains(&calls), "{calls} refresh calls for 12 readers");
    for (status, body) in &answers {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["error"], "refresh_failed", "{body}");
        assert_eq!(body["reason"], "transient", "{body}");
        assert!(!body.to_string().contains(&old_token), "the old token is never served as new");
    }
    let shared = app.metrics.count(
        ms_oauth::metrics::name::REFRESH,
        &[("Trigger", "request"), ("Outcome", "cooldown")],
    );
    assert_eq!(shared, 11, "every reader but the one that called shared its failure");

    // A plain read meanwhile still gets the valid token, said to be stale.
    let (status, body) = get(&app, &format!("/connections/{cid}/token")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["refreshed"], false);
    // Fresh (not within the margin): served as stored, not stale.
    assert_eq!(body["access_token"], old_token);

    // After the cooldown, with Microsoft back, a forced refresh refreshes.
    app.standin.set_refresh_fault(None);
    app.clock.advance(REFRESH_COOLDOWN + Duration::from_secs(1));
    let (status, body) = get(&app, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["refreshed"], true);
    assert_ne!(body["access_token"], old_token);
}

#[tokio::test]
async fn a_plain_read_of_a_due_token_during_an_outage_says_it_is_stale() {
    let app = spawn_app().await;
    let cid: ConnectionId = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    app.standin.set_refresh_fault(Some(Fault::Status(500)));
    // Four minutes before expiry: due, still valid.
    app.clock.advance(Duration::from_secs(3599 - 240));
    let before = app.standin.calls().refresh_requests;
    let path = format!("/connections/{cid}/token");
    let readers = (0..6).map(|_| get(&app, &path));
    for (status, body) in futures::future::join_all(readers).await {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["stale"], true, "{body}");
    }
    let calls = app.standin.calls().refresh_requests - before;
    assert!((1..=2).contains(&calls), "{calls} refresh calls for 6 readers");
}

/// Standalone deployments users run, each as the template wires it.
fn standalone_deployments() -> Vec<(&'static str, AppOptions)> {
    let with = |parameters: Vec<(&'static str, String)>| AppOptions {
        parameters,
        ..AppOptions::default()
    };
    vec![
        ("default", AppOptions::default()),
        ("own scopes", with(vec![("MicrosoftScopes", OWN_SCOPES.to_owned())])),
        // A national cloud: Graph on a host of its own, whose `.default` is the only one.
        ("national cloud", AppOptions { national_cloud_graph: true, ..AppOptions::default() }),
        ("aws_federation", AppOptions { aws_federation: true, ..AppOptions::default() }),
    ]
}

/// Sign-in, a token, a forced refresh (and one of a connection saved before grants were
/// recorded), a refresher run, an administrator's consent for a daemon app and its token.
async fn journey(name: &str, app: &TestApp) {
    use crate::apps::{DAEMON_CLIENT, admin_consent_link, admin_decides, daemon_app, set_app};
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{name}: {}", flow.finish.body);
    let (status, body) = get(app, &format!("/connections/{cid}/token")).await;
    assert_eq!(status, 200, "{name}: {body}");
    let (status, body) = get(app, &format!("/connections/{cid}/token?force_refresh=true")).await;
    assert_eq!((status, &body["refreshed"]), (200, &Value::Bool(true)), "{name}: {body}");

    let legacy = new_cid();
    let flow = app.connect(&Browser::new(), &legacy, Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{name}: {}", flow.finish.body);
    forget_the_grant(app, &legacy).await;
    let (status, body) = get(app, &format!("/connections/{legacy}/token?force_refresh=true")).await;
    assert_eq!(status, 200, "{name}: a connection saved before grants were recorded: {body}");

    app.make_due(&cid).await;
    app.make_due(&legacy).await;
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 2, refreshed: 2, ..Report::default() }, "{name}");

    // A daemon app: an administrator consents through the start function's link, then the
    // connection API mints its app-only tokens.
    let daemon = new_cid();
    let secret = format!("dm~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(daemon_app(app, &secret));
    let body = serde_json::json!({"auth_type": "daemonApp", "client_id": DAEMON_CLIENT, "tenant_id": ms_oauth_tests::standin::OTHER_TENANT, "client_secret": secret});
    let (status, refused) = set_app(app, &daemon, body).await;
    assert_eq!(status, 409, "{name}: {refused}");
    let path = refused["admin_consent_path"].as_str().unwrap();
    let admin = Browser::new();
    let to_microsoft = app.start(&admin, &admin_consent_link(app, &daemon, path, None)).await;
    assert_eq!(to_microsoft.status, 302, "{name}: {}", to_microsoft.body);
    let consent_url = to_microsoft.location.clone().unwrap();
    let finish = admin_decides(app, &admin, &consent_url, "accept").await;
    assert_page(&finish, 200, "Admin consent granted");
    let (status, body) = get(app, &format!("/connections/{daemon}/token?force_refresh=true")).await;
    assert_eq!(status, 200, "{name}: a daemon token: {body}");
}

#[tokio::test]
async fn every_standalone_deployment_signs_in_refreshes_and_gets_admin_consent_as_wired() {
    for (name, options) in standalone_deployments() {
        let app = spawn_app_with(options).await;
        journey(name, &app).await;
    }
}

#[tokio::test]
async fn inside_autokitteh_with_write_back_signs_in_refreshes_writes_back_and_gets_admin_consent() {
    use crate::apps::{DAEMON_CLIENT, admin_decides, daemon_app};
    use ms_oauth_tests::standin::OTHER_TENANT;
    // Signed in from AutoKitteh's own connection form; the vars are written, CODE_OK.
    let d = crate::autokitteh::connected_with_write_back().await;
    let app = &d.app;
    let cid: ConnectionId = d.cid.parse().unwrap();
    let (status, body) = get(app, &format!("/connections/{cid}/token")).await;
    assert_eq!(status, 200, "{body}");
    let (status, forced) = get(app, &format!("/connections/{cid}/token?force_refresh=true")).await;
    assert_eq!((status, &forced["refreshed"]), (200, &Value::Bool(true)), "{forced}");
    assert_eq!(d.ak().vars(&d.cid)["oauth_access_token"].value, forced["access_token"]);
    app.make_due(&cid).await;
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 1, refreshed: 1, ..Report::default() });
    let written = d.ak().vars(&d.cid)["oauth_access_token"].value.clone();
    assert_ne!(written, forced["access_token"].as_str().unwrap(), "the refresher wrote it back");
    assert_eq!(d.ak().status(&d.cid).0, "CODE_OK");

    // A daemon app named by AutoKitteh's vars: a member consents as the tenant's admin.
    let daemon =
        d.ak().add_connection(&d.org, ms_oauth::autokitteh::Integration::Microsoft, "daemon");
    let secret = format!("dm~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(daemon_app(app, &secret));
    for (name, value, secret_var) in [
        ("auth_type", "daemonApp", false),
        ("private_client_id", DAEMON_CLIENT, false),
        ("private_tenant_id", OTHER_TENANT, false),
        ("private_client_secret", secret.as_str(), true),
    ] {
        d.ak().set_var(&daemon, name, value, secret_var);
    }
    let browser = d.signed_in(&d.user).await;
    let link = d.url(&format!("{}?cid={daemon}&origin=web", ms_oauth::config::ADMIN_CONSENT_PATH));
    let to_microsoft = app.start(&browser, &link).await;
    assert_eq!(to_microsoft.status, 302, "{}", to_microsoft.body);
    let finish =
        admin_decides(app, &browser, to_microsoft.location.as_deref().unwrap(), "accept").await;
    assert_page(&finish, 200, "the connection is ready");
    let (status, body) = get(app, &format!("/connections/{daemon}/token?force_refresh=true")).await;
    assert_eq!(status, 200, "a daemon token: {body}");
}
