//! The template's IAM roles and KMS key policies hold against what the code really does.
//! The emulator enforces neither, so each function is built from the environment the template
//! gives it and reaches AWS through a recorder of its own; after a scenario that takes every
//! AWS code path, every recorded call (action, resource, encryption context) must be allowed
//! to that function's role as AWS would decide it, every permission a role or key policy
//! grants must have been used, and calls no code path makes must be refused.

use std::collections::{BTreeMap, BTreeSet};

use ms_oauth::autokitteh::Integration;
use ms_oauth::config;
use ms_oauth::crypto::{ContextScheme, DataKeys, KmsDataKeys, seal};
use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::store::{DynamoStore, Store};
use ms_oauth_tests::iam::{Decision, assert_unique_sids, authorize, unused_grants};
use ms_oauth_tests::recorder::{ACCOUNT, AwsCall, REGION};
use token_refresher::Report;

use crate::apps::{PRIVATE_CLIENT, set_app};
use crate::helpers::*;

/// Gives `cid` a private app (registered at the stand-in) and signs it in through that app
/// in `browser` (a start link, or AutoKitteh's start when `ak_start` is set).
async fn connect_private(
    app: &TestApp,
    cid: &ConnectionId,
    browser: &Browser,
    ak_start: bool,
) -> String {
    let secret = format!("pv~{}", ms_oauth_tests::random_base32(30));
    app.standin.register_app(ms_oauth_tests::standin::AppRegistration {
        client_id: PRIVATE_CLIENT.into(),
        home_tenant: ms_oauth_tests::standin::OTHER_TENANT.into(),
        secrets: vec![secret.clone()],
        redirect_uris: vec![format!("{}{}", app.address, config::REDIRECT_PATH)],
        ..Default::default()
    });
    let body = serde_json::json!({"auth_type": "oauthPrivate", "client_id": PRIVATE_CLIENT, "tenant_id": ms_oauth_tests::standin::OTHER_TENANT, "client_secret": secret});
    let (status, answer) = set_app(app, cid, body).await;
    assert_eq!(status, 200, "{answer}");
    let start = if ak_start {
        // An own app is confirmed first, inside AutoKitteh too.
        let link = format!("{}{}?cid={cid}&origin=web", app.address, config::START_PATH);
        app.start(browser, &link).await
    } else {
        app.start(browser, &app.start_link(cid, Origin::Web)).await
    };
    assert_eq!(start.status, 302, "start: {}", start.body);
    let callback = app.consent(browser, start.location.as_deref().unwrap(), "work").await;
    let finish = browser.get(&callback).await;
    assert!(matches!(finish.status, 200 | 302), "finish: {}", finish.body);
    assert_eq!(app.connection(cid).await.unwrap().connection.auth_type, "oauthPrivate");
    secret
}

async fn api(app: &TestApp, method: reqwest::Method, path: &str) -> u16 {
    let response = reqwest::Client::new()
        .request(method, format!("{}{path}", app.api_address))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

fn env_of<'a>(app: &'a TestApp, function: &str, var: &str) -> &'a str {
    let (set_up, _) = &app.deployed.as_ref().unwrap().functions[function];
    set_up.environment.get(var).map(String::as_str).unwrap_or_default()
}

/// Re-seals `cid`'s secrets bound to the table's name, as earlier versions stored them
/// (the test's own KMS client: not a call of any function).
pub(crate) async fn seal_the_earlier_way(app: &TestApp, cid: &ConnectionId) {
    let stored = app.connection(cid).await.unwrap();
    let secrets = app.secret_vars(&stored).await;
    let key_arn = env_of(app, "ConnectionApiFunction", config::TOKEN_KMS_KEY_ID);
    let keys = KmsDataKeys::new(app.kms.clone(), key_arn);
    let legacy = BTreeMap::from([
        ("table".to_owned(), app.table.clone()),
        ("connection_id".to_owned(), cid.to_string()),
    ]);
    let key = keys.generate(&legacy).await.unwrap();
    let mut connection = stored.connection.clone();
    connection.secrets = seal(&key, None, &legacy, secrets.to_string().as_bytes()).unwrap();
    connection.secrets.scheme = ContextScheme::Table;
    DynamoStore::new(app.dynamodb.clone(), app.table.clone())
        .save_connection(&connection)
        .await
        .unwrap();
}

/// Every recorded call allowed, every grant used, every probe refused.
fn assert_policies_hold(app: &TestApp, probes: &[(&str, AwsCall)]) {
    let deployed = app.deployed.as_ref().expect("a deployment of the template");
    let key_policies = deployed.deployment.key_policies();
    let mut refused = Vec::new();
    let mut unused = BTreeSet::new();
    for (key, policy) in &key_policies {
        assert_unique_sids(key, policy);
    }
    for (id, (set_up, recorder)) in &deployed.functions {
        assert_eq!(
            recorder.unreadable(),
            Vec::<String>::new(),
            "{id}: calls the recorder could not read"
        );
        let calls: BTreeSet<AwsCall> = recorder.calls().into_iter().collect();
        assert!(!calls.is_empty(), "{id} made no AWS call: the scenario did not reach it");
        let iam = deployed.deployment.role_statements(&set_up.role);
        assert_unique_sids(&set_up.role, &iam);
        let decided: Vec<(AwsCall, Decision)> = calls
            .into_iter()
            .map(|call| {
                let decision = authorize(&set_up.role_arn, &iam, &key_policies, &call);
                (call, decision)
            })
            .collect();
        for (call, decision) in &decided {
            if let Decision::Denied(why) = decision {
                refused.push(format!(
                    "{id}: {} on {} {:?}: {why}",
                    call.action, call.resource, call.context
                ));
            }
        }
        unused.extend(unused_grants(&set_up.role, &iam, &decided, "role", &set_up.role_arn));
        for (key, policy) in &key_policies {
            let on_key: Vec<(AwsCall, Decision)> =
                decided.iter().filter(|(c, _)| &c.resource == key).cloned().collect();
            let who = format!("{} on {key}", set_up.role);
            unused.extend(unused_grants(&who, policy, &on_key, "key", &set_up.role_arn));
        }
    }
    assert_eq!(refused, Vec::<String>::new(), "calls the template does not allow");
    assert_eq!(unused, BTreeSet::new(), "grants no code path uses");
    for (id, probe) in probes {
        let (set_up, _) = &deployed.functions[*id];
        let iam = deployed.deployment.role_statements(&set_up.role);
        let decision = authorize(&set_up.role_arn, &iam, &key_policies, probe);
        assert!(matches!(decision, Decision::Denied(_)), "{id} may {probe:?}: {decision:?}");
    }
}

/// Calls no function makes: each must be refused to the function named.
fn probes(app: &TestApp) -> Vec<(&'static str, AwsCall)> {
    let table = format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{}", app.table);
    let index = format!("{table}/index/{}", ms_oauth::store::REFRESH_INDEX);
    let key = env_of(app, "ConnectionApiFunction", config::TOKEN_KMS_KEY_ID).to_owned();
    let cid = "con_0123456789abcdefghjkmnpqrs";
    let store = ms_oauth::crypto::TOKEN_STORE;
    let sealed = [("store", store), ("connection_id", cid)];
    let credential = [("store", store), ("connection_id", cid), ("purpose", "app_credential")];
    let leading = ms_oauth_tests::recorder::LEADING_KEYS;
    let get_item = |pk: &str| AwsCall::new("dynamodb:GetItem", &table, &[(leading, pk)]);
    let connection_item = format!("conn#{cid}");
    let kms = |action: &str, context: &[(&str, &str)]| AwsCall::new(action, &key, context);
    let shares = format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{}", app.shares_table);
    let on_shares = |action: &str| AwsCall::new(action, &shares, &[]);
    let client_secret = app.client_secret_arn.clone();
    let other_secret = format!("arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:other-AbCdEf");
    vec![
        ("StartFunction", kms("kms:Decrypt", &sealed)),
        ("StartFunction", kms("kms:GenerateDataKey", &sealed)),
        ("StartFunction", AwsCall::new("secretsmanager:GetSecretValue", &client_secret, &[])),
        ("StartFunction", AwsCall::new("dynamodb:GetItem", &table, &[])),
        ("StartFunction", get_item(&connection_item)),
        // The start writes flow states and spent grants, never a connection or an app.
        ("StartFunction", AwsCall::new("dynamodb:PutItem", &table, &[(leading, &connection_item)])),
        (
            "StartFunction",
            AwsCall::new("dynamodb:PutItem", &table, &[(leading, &format!("app#{cid}"))]),
        ),
        ("StartFunction", AwsCall::new("dynamodb:PutItem", &table, &[])),
        // The redirect deletes states and withdrawn sign-ins, never an app or a grant.
        (
            "RedirectFunction",
            AwsCall::new("dynamodb:DeleteItem", &table, &[(leading, &format!("app#{cid}"))]),
        ),
        ("RedirectFunction", AwsCall::new("dynamodb:DeleteItem", &table, &[(leading, "grant#00")])),
        ("RedirectFunction", AwsCall::new("dynamodb:UpdateItem", &table, &[(leading, "grant#00")])),
        (
            "RedirectFunction",
            AwsCall::new("dynamodb:PutItem", &table, &[(leading, &connection_item)]),
        ),
        ("StartFunction", kms("kms:Decrypt", &credential)),
        ("RedirectFunction", get_item(&connection_item)),
        ("RedirectFunction", kms("kms:GenerateDataKey", &credential)),
        ("TokenRefresherFunction", kms("kms:GenerateDataKey", &credential)),
        (
            "ConnectionApiFunction",
            kms(
                "kms:Decrypt",
                &[("store", store), ("connection_id", cid), ("purpose", "something_else")],
            ),
        ),
        ("RedirectFunction", kms("kms:Decrypt", &sealed)),
        ("RedirectFunction", kms("kms:GenerateDataKey", &[("store", store)])),
        ("RedirectFunction", AwsCall::new("dynamodb:Query", &index, &[])),
        ("RedirectFunction", AwsCall::new("secretsmanager:GetSecretValue", &other_secret, &[])),
        ("ConnectionApiFunction", kms("kms:Decrypt", &[("store", store)])),
        (
            "ConnectionApiFunction",
            kms("kms:Decrypt", &[("store", "another-store"), ("connection_id", cid)]),
        ),
        (
            "ConnectionApiFunction",
            kms("kms:Decrypt", &[("store", store), ("connection_id", cid), ("x", "y")]),
        ),
        (
            "ConnectionApiFunction",
            kms("kms:GenerateDataKey", &[("table", &app.table), ("connection_id", cid)]),
        ),
        ("ConnectionApiFunction", AwsCall::new("dynamodb:Query", &index, &[])),
        ("TokenRefresherFunction", AwsCall::new("dynamodb:DeleteItem", &table, &[])),
        ("TokenRefresherFunction", AwsCall::new("dynamodb:Scan", &table, &[])),
        ("TokenRefresherFunction", kms("kms:Encrypt", &sealed)),
        // Key shares: the start function never touches them, the redirect never reads one,
        // the refresher never destroys one, and nobody scans them.
        ("StartFunction", on_shares("dynamodb:GetItem")),
        ("StartFunction", on_shares("dynamodb:PutItem")),
        ("RedirectFunction", on_shares("dynamodb:GetItem")),
        ("TokenRefresherFunction", on_shares("dynamodb:DeleteItem")),
        ("TokenRefresherFunction", on_shares("dynamodb:Query")),
        ("ConnectionApiFunction", on_shares("dynamodb:Scan")),
        ("RedirectFunction", on_shares("dynamodb:Scan")),
    ]
}

/// A proper token request of the functions' AWS identity for Entra, and variants of it.
fn sts_call(audience: &str, algorithm: &str, seconds: &str) -> AwsCall {
    use ms_oauth_tests::recorder::{STS_AUDIENCE, STS_DURATION, STS_SIGNING_ALGORITHM};
    AwsCall::new(
        "sts:GetWebIdentityToken",
        "*",
        &[(STS_AUDIENCE, audience), (STS_SIGNING_ALGORITHM, algorithm), (STS_DURATION, seconds)],
    )
}

const ENTRA: &str = ms_oauth::federation::ENTRA_AUDIENCE;

#[tokio::test]
async fn standalone_every_aws_call_is_allowed_by_the_template_and_every_grant_is_used() {
    let app = spawn_app_with(AppOptions { from_template: true, ..AppOptions::default() }).await;
    standalone_scenario(&app).await;
    let mut probes = probes(&app);
    // With a client secret, no function may ask STS for tokens.
    probes.push(("RedirectFunction", sts_call(ENTRA, "RS256", "300")));
    assert_policies_hold(&app, &probes);
}

#[tokio::test]
async fn with_aws_federation_every_aws_call_is_allowed_and_no_secret_is_readable() {
    let app = spawn_app_with(AppOptions {
        from_template: true,
        aws_federation: true,
        ..AppOptions::default()
    })
    .await;
    standalone_scenario(&app).await;
    // Each function that talks to Microsoft asked STS (and only those).
    let deployed = app.deployed.as_ref().unwrap();
    for (id, (_, recorder)) in &deployed.functions {
        let asked = recorder.calls().iter().any(|c| c.action == "sts:GetWebIdentityToken");
        assert_eq!(asked, id != "StartFunction", "{id}");
    }
    let mut probes = probes(&app);
    probes.extend([
        ("RedirectFunction", sts_call("api://SomeoneElse", "RS256", "300")),
        // Own-app audiences name a connection, and nothing else under Entra's audience.
        ("ConnectionApiFunction", sts_call("api://AzureADTokenExchange/anything", "RS256", "300")),
        (
            "TokenRefresherFunction",
            sts_call("api://AzureADTokenExchange/connections/", "RS256", "300"),
        ),
        ("ConnectionApiFunction", sts_call(ENTRA, "RS256", "3600")),
        ("TokenRefresherFunction", sts_call(ENTRA, "ES384", "300")),
        ("StartFunction", sts_call(ENTRA, "RS256", "300")),
        (
            "RedirectFunction",
            AwsCall::new("secretsmanager:GetSecretValue", &app.client_secret_arn, &[]),
        ),
    ]);
    assert_policies_hold(&app, &probes);
}

/// Sign-ins, the connection API, an own app, values sealed the earlier way, refresher runs,
/// a dead grant, a disconnect and a consent requirement: every AWS code path standalone.
async fn standalone_scenario(app: &TestApp) {
    let cids: Vec<ConnectionId> = (0..5).map(|_| new_cid()).collect();
    for (i, cid) in cids.iter().enumerate() {
        let account = if i % 2 == 0 { "work" } else { "personal" };
        let flow = app.connect(&Browser::new(), cid, Origin::Web, account).await;
        assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    }
    // The connection API: status, a stored token, a forced refresh.
    let path = |cid: &ConnectionId, tail: &str| format!("/connections/{cid}{tail}");
    assert_eq!(api(app, reqwest::Method::GET, &path(&cids[0], "")).await, 200);
    assert_eq!(api(app, reqwest::Method::GET, &path(&cids[0], "/token")).await, 200);
    let forced = path(&cids[0], "/token?force_refresh=true");
    assert_eq!(api(app, reqwest::Method::GET, &forced).await, 200);
    // A connection's own app: set through the API, signed in and refreshed through it.
    let private = new_cid();
    let _ = connect_private(app, &private, &Browser::new(), false).await;
    let forced = path(&private, "/token?force_refresh=true");
    assert_eq!(api(app, reqwest::Method::GET, &forced).await, 200);
    app.make_due(&private).await;
    // Values sealed the earlier way, opened and re-sealed by the API and by the refresher.
    seal_the_earlier_way(app, &cids[1]).await;
    let forced = path(&cids[1], "/token?force_refresh=true");
    assert_eq!(api(app, reqwest::Method::GET, &forced).await, 200);
    seal_the_earlier_way(app, &cids[2]).await;
    app.make_due(&cids[2]).await;
    app.make_due(&cids[3]).await;
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 3, refreshed: 3, ..Report::default() });
    // A dead grant found by the refresher; a disconnect through the API.
    app.standin.revoke_refresh_tokens(700_082);
    app.make_due(&cids[4]).await;
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report, Report { due: 1, needs_reauth: 1, ..Report::default() });
    // The user signs in again: the new sign-in destroys the dead tokens' key share.
    let flow = app.connect(&Browser::new(), &cids[4], Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    assert_eq!(api(app, reqwest::Method::DELETE, &path(&cids[0], "")).await, 200);
    // A sign-in that needs an administrator's consent: the redirect records a consent link.
    app.standin.require_admin_consent(CLIENT_ID);
    let flow = app.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 403, "{}", flow.finish.body);
}

#[tokio::test]
async fn inside_autokitteh_every_aws_call_is_allowed_by_the_template_and_every_grant_is_used() {
    let app = spawn_app_with(AppOptions {
        from_template: true,
        autokitteh: true,
        ak_write_back: true,
        ..AppOptions::default()
    })
    .await;
    let ak = app.autokitteh.clone().unwrap();
    let org = ak.add_org("Contoso automation");
    let user = ak.add_user("adele@contoso.example", &[&org]);
    let (service_user, _) = app.ak_service_user.clone().unwrap();
    ak.set_membership(&org, &service_user, true);
    let browser = Browser::new().navigating_from("same-site");
    let login = browser
        .post_form(&format!("{}/login", app.address), &[("user_id".to_owned(), user.clone())])
        .await;
    assert_eq!(login.status, 303, "sign-in: {}", login.body);
    let mut cids = Vec::new();
    for _ in 0..3 {
        let cid: ConnectionId =
            ak.add_connection(&org, Integration::Microsoft, "teams").parse().unwrap();
        let start = browser
            .get(&format!("{}{}?cid={cid}&origin=web", app.address, config::START_PATH))
            .await;
        assert_eq!(start.status, 302, "start: {}", start.body);
        let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
        let finish = browser.get(&callback).await;
        assert!(matches!(finish.status, 200 | 302), "finish: {}", finish.body);
        assert!(app.connection(&cid).await.is_some());
        cids.push(cid);
    }
    // A connection with its own app.
    let private: ConnectionId =
        ak.add_connection(&org, Integration::Microsoft, "own app").parse().unwrap();
    let secret = connect_private(&app, &private, &browser, true).await;
    // A private app named by AutoKitteh's vars: the redirect keeps it sealed.
    let named: ConnectionId =
        ak.add_connection(&org, Integration::Microsoft, "vars app").parse().unwrap();
    let named_str = named.to_string();
    ak.set_var(&named_str, "auth_type", "oauthPrivate", false);
    ak.set_var(&named_str, "private_client_id", crate::apps::PRIVATE_CLIENT, false);
    ak.set_var(&named_str, "private_tenant_id", ms_oauth_tests::standin::OTHER_TENANT, false);
    ak.set_var(&named_str, "private_client_secret", &secret, true);
    let link = format!("{}{}?cid={named}&origin=web", app.address, config::START_PATH);
    let start = app.start(&browser, &link).await;
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    assert_eq!(browser.get(&callback).await.status, 302);
    assert!(app.connection(&named).await.is_some());
    let forced = format!("/connections/{private}/token?force_refresh=true");
    assert_eq!(api(&app, reqwest::Method::GET, &forced).await, 200);
    // Refreshes written back to AutoKitteh by the API and by the refresher; a dead grant.
    let forced = format!("/connections/{}/token?force_refresh=true", cids[0]);
    assert_eq!(api(&app, reqwest::Method::GET, &forced).await, 200);
    seal_the_earlier_way(&app, &cids[1]).await;
    app.make_due(&cids[1]).await;
    app.make_due(&private).await;
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report.refreshed, 2, "{report:?}");
    seal_the_earlier_way(&app, &cids[2]).await;
    let forced = format!("/connections/{}/token?force_refresh=true", cids[2]);
    assert_eq!(api(&app, reqwest::Method::GET, &forced).await, 200);
    app.standin.revoke_refresh_tokens(700_082);
    app.make_due(&cids[0]).await;
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report.needs_reauth, 1, "{report:?}");
    // The user signs in again: the new sign-in destroys the dead tokens' key share.
    let start = browser
        .get(&format!("{}{}?cid={}&origin=web", app.address, config::START_PATH, cids[0]))
        .await;
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    assert!(matches!(browser.get(&callback).await.status, 200 | 302));
    assert_eq!(api(&app, reqwest::Method::DELETE, &format!("/connections/{}", cids[1])).await, 200);
    // A sign-in that needs an administrator's consent: the redirect records a consent link.
    app.standin.require_admin_consent(CLIENT_ID);
    let cid: ConnectionId = ak.add_connection(&org, Integration::Microsoft, "x").parse().unwrap();
    let start =
        browser.get(&format!("{}{}?cid={cid}&origin=web", app.address, config::START_PATH)).await;
    let callback = app.consent(&browser, start.location.as_deref().unwrap(), "work").await;
    assert_eq!(browser.get(&callback).await.status, 403);

    let mut probes = probes(&app);
    // Inside AutoKitteh the redirect does seal the app its vars name.
    probes.retain(|(id, call)| {
        !(*id == "RedirectFunction"
            && call.action == "kms:GenerateDataKey"
            && call.context.contains_key("purpose"))
    });
    let start_key =
        format!("arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:start-link-key-AbCdEf");
    probes.push(("StartFunction", AwsCall::new("secretsmanager:GetSecretValue", &start_key, &[])));
    assert_policies_hold(&app, &probes);
}
