//! Successful flows.

use ms_oauth::domain::Origin;
use ms_oauth::store::AUTH_TYPE_DEFAULT;
use ms_oauth_tests::standin::{PERSONAL_TENANT, WORK_TENANT};

use crate::helpers::*;

#[tokio::test]
async fn every_origin_connects_and_finishes_where_autokitteh_expects() {
    let app = spawn_app().await;
    for origin in Origin::ALL {
        let browser = Browser::new();
        let cid = new_cid();
        let flow = app.connect(&browser, &cid, origin, "work").await;

        match origin {
            Origin::Web | Origin::Cli => {
                assert_page(&flow.finish, 200, "adele.vance@contoso.example");
                assert!(flow.finish.body.contains("window.close"));
            }
            Origin::Vscode => {
                assert_redirects_to(
                    &flow.finish,
                    &format!("vscode://autokitteh.autokitteh?cid={cid}"),
                );
                assert_eq!(
                    flow.finish.location.as_deref(),
                    Some(format!("vscode://autokitteh.autokitteh?cid={cid}").as_str())
                );
            }
            // No dashboard configured: the success page, not a 404 on this host.
            Origin::Dash => assert_page(&flow.finish, 200, "adele.vance@contoso.example"),
        }
        // The browser-binding cookie is cleared once the flow is over.
        assert!(browser.cookies().is_empty(), "{origin}: {:?}", browser.cookies());

        let stored = app.connection(&cid).await.expect("connection saved");
        let c = &stored.connection;
        assert_eq!(c.auth_type, AUTH_TYPE_DEFAULT);
        assert_eq!(c.status, "ok");
        assert_eq!(stored.version, 1);
        assert_eq!(c.tenant_id, WORK_TENANT);
        assert_eq!(c.vars.oauth_token_type, "Bearer");
        assert_eq!(c.vars.user_principal_name.as_deref(), Some("adele.vance@contoso.example"));
        assert_eq!(c.vars.user_display_name.as_deref(), Some("Adele Vance"));
        assert_eq!(c.vars.user_given_name.as_deref(), Some("Adele"));
        assert_eq!(c.vars.user_surname.as_deref(), Some("Vance"));
        assert_eq!(c.vars.user_language.as_deref(), Some("en-US"));
        assert_eq!(c.vars.org_id.as_deref(), Some(WORK_TENANT));
        assert_eq!(c.vars.org_display_name.as_deref(), Some("Contoso (stand-in)"));
        assert_eq!(c.vars.org_tenant_type.as_deref(), Some("AAD"));
        let expiry = time::OffsetDateTime::parse(
            &c.vars.oauth_expiry,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let lifetime = expiry - time::OffsetDateTime::now_utc();
        assert!(
            lifetime > time::Duration::minutes(55) && lifetime <= time::Duration::minutes(60),
            "{lifetime}"
        );

        // The sealed tokens are exactly what the identity platform issued to this account.
        let secrets = app.secret_vars(&stored).await;
        let access = secrets["oauth_access_token"].as_str().unwrap();
        assert_eq!(
            app.standin.account_for(access).map(|a| a.upn).as_deref(),
            Some("adele.vance@contoso.example")
        );
        assert!(
            secrets["oauth_refresh_token"].as_str().unwrap().starts_with("0.stand-in-refresh.")
        );
    }
    assert_eq!(app.pending_states().await, 0);
    assert_eq!(app.connections().await, 4);
}

#[tokio::test]
async fn the_authorize_request_carries_pkce_exact_redirect_and_required_scopes() {
    let app = spawn_app().await;
    let browser = Browser::new();
    let start = app.start(&browser, &app.start_link(&new_cid(), Origin::Web)).await;
    let url = url::Url::parse(start.location.as_deref().unwrap()).unwrap();
    assert_eq!(url.path(), "/common/oauth2/v2.0/authorize");
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["response_mode"], "query");
    assert_eq!(q["prompt"], "select_account");
    assert_eq!(q["redirect_uri"], format!("{}/oauth/redirect/microsoft", app.address));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 43);
    let scopes: Vec<&str> = q["scope"].split(' ').collect();
    for required in
        ["offline_access", "openid", "profile", "email", "User.Read", "Chat.ReadWrite.All"]
    {
        assert!(scopes.contains(&required), "{required} missing from {scopes:?}");
    }
    // One binding cookie, locked down (the other Set-Cookie clears the used confirm cookie).
    let cookies: Vec<&str> =
        start.headers.get_all("set-cookie").iter().map(|c| c.to_str().unwrap()).collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(
        cookies[0].starts_with("__Secure-ms_oauth_confirm_") && cookies[0].contains("Max-Age=0")
    );
    let cookie = cookies[1];
    assert!(cookie.starts_with("__Secure-ms_oauth_"), "{cookie}");
    // Only the redirect path gets it, not AutoKitteh's other /oauth/* routes on the host.
    for attr in
        ["HttpOnly", "; Secure", "SameSite=Lax", "Path=/oauth/redirect/microsoft;", "Max-Age=600"]
    {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    assert_eq!(start.header("cache-control"), "no-store");
    assert_eq!(start.header("referrer-policy"), "no-referrer");
    // The state is stored only as a hash.
    let items = app.flow_items().await;
    assert_eq!(items.len(), 1);
    let item = format!("{:?}", items[0]);
    assert!(!item.contains(q["state"].as_str()));
}

#[tokio::test]
async fn a_personal_account_connects_without_an_organization() {
    let app = spawn_app().await;
    let browser = Browser::new();
    let cid = new_cid();
    let flow = app.connect(&browser, &cid, Origin::Web, "personal").await;
    assert_page(&flow.finish, 200, "sam.taylor@outlook.example");
    let stored = app.connection(&cid).await.unwrap();
    assert_eq!(stored.connection.tenant_id, PERSONAL_TENANT);
    assert_eq!(stored.connection.vars.org_id, None);
    assert_eq!(stored.connection.vars.org_display_name, None);
    assert_eq!(stored.connection.vars.user_mail, None);
    assert_eq!(
        app.standin.calls().graph_organization,
        0,
        "personal accounts have no organization to read"
    );
}

#[tokio::test]
async fn tenant_settings_reach_the_matching_endpoints() {
    let guid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    for tenant in ["common", "organizations", guid] {
        let app =
            spawn_app_with(AppOptions { tenant: Some(tenant.into()), ..AppOptions::default() })
                .await;
        let cid = new_cid();
        let flow = app.connect(&Browser::new(), &cid, Origin::Cli, "work").await;
        assert_page(&flow.finish, 200, "connected");
        assert!(flow.authorize_url.contains(&format!("/{tenant}/oauth2/v2.0/authorize?")));
        let calls = app.standin.calls();
        assert_eq!(calls.authorize_tenants.first().map(String::as_str), Some(tenant));
        assert_eq!(calls.token_tenants, [tenant]);
        let stored = app.connection(&cid).await.unwrap();
        let expected_tid = if tenant == guid { guid } else { WORK_TENANT };
        assert_eq!(stored.connection.tenant_id, expected_tid, "{tenant}");
    }
}

#[tokio::test]
async fn reconnecting_replaces_tokens_and_identity_in_one_write() {
    let app = spawn_app().await;
    let cid = new_cid();
    app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    let first = app.connection(&cid).await.unwrap();
    let first_tokens = app.secret_vars(&first).await;

    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "personal").await;
    assert_page(&flow.finish, 200, "sam.taylor@outlook.example");
    let second = app.connection(&cid).await.unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(second.created_at, first.created_at);
    assert_eq!(
        second.connection.vars.user_principal_name.as_deref(),
        Some("sam.taylor@outlook.example")
    );
    // Nothing of the previous account is left behind.
    assert_eq!(second.connection.vars.org_id, None);
    assert_eq!(second.connection.vars.user_mobile_phone, None);
    let second_tokens = app.secret_vars(&second).await;
    assert_ne!(first_tokens["oauth_access_token"], second_tokens["oauth_access_token"]);
    assert_ne!(first_tokens["oauth_refresh_token"], second_tokens["oauth_refresh_token"]);
    assert_eq!(app.connections().await, 1);
}

#[tokio::test]
async fn a_rotated_client_secret_is_picked_up_without_a_restart() {
    let app = spawn_app().await;
    // Warm the instance's secret cache with the old secret.
    app.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await;

    let rotated = "rotated~secret~value~0123456789";
    app.standin.rotate_secret(rotated);
    ms_oauth_tests::aws::ensure_secret(&app.secretsmanager, &app.client_secret_arn, rotated)
        .await
        .unwrap();

    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_page(&flow.finish, 200, "connected");
    assert!(app.connection(&cid).await.is_some());
    // First flow: 1 call; second: refused with the cached secret, then accepted.
    assert_eq!(app.standin.calls().token_requests, 3);
}

#[tokio::test]
async fn a_secret_stored_before_microsoft_takes_it_falls_back_to_the_previous_version() {
    use ms_oauth::metrics::name;
    let app = spawn_app().await;
    let cid = new_cid();
    assert_eq!(app.connect(&Browser::new(), &cid, Origin::Web, "work").await.finish.status, 200);
    let base = app.api_address.clone();
    let forced = format!("{base}/connections/{cid}/token?force_refresh=true");
    // The token API's instance reads (and caches) the secret.
    assert_eq!(reqwest::get(&forced).await.unwrap().status(), 200);

    // The operator stores a new secret before Entra ID accepts it (or before it propagates).
    let early = "early~secret~value~not~yet~valid~0123";
    ms_oauth_tests::aws::ensure_secret(&app.secretsmanager, &app.client_secret_arn, early)
        .await
        .unwrap();
    // This instance's cache holds the old value; a fresh instance (the token API after its
    // cache lapsed) reads the new one first: Microsoft refuses it, the previous one works.
    let tokens = app.token_service("ConnectionApiFunction", &[], None);
    let refused_before = app.standin.calls().refused_client_secrets;
    let grant = tokens.token(&cid, true).await.expect("the previous version works");
    assert!(grant.refreshed);
    assert_eq!(app.standin.calls().refused_client_secrets, refused_before + 1);
    let worked = [("Version", "previous"), ("Outcome", "ok")];
    assert_eq!(app.metrics.count(name::CLIENT_SECRET_RETRY, &worked), 1);
    // The warm instances still hold the old value: nothing to retry.
    assert_eq!(reqwest::get(&forced).await.unwrap().status(), 200);
    assert_eq!(app.standin.calls().refused_client_secrets, refused_before + 1);

    // Entra ID takes the new secret and drops the old: the next refusal reads the current
    // version again, and sign-ins and refreshes go on.
    app.standin.rotate_secret(early);
    let again = app.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await;
    assert_eq!(again.finish.status, 200, "{}", again.finish.body);
    let reread = [("Version", "current"), ("Outcome", "ok")];
    assert_eq!(app.metrics.count(name::CLIENT_SECRET_RETRY, &reread), 1);
    // The token API's instance, too, still held the old value.
    assert_eq!(reqwest::get(&forced).await.unwrap().status(), 200);
    assert_eq!(app.metrics.count(name::CLIENT_SECRET_RETRY, &reread), 2);
    assert_eq!(app.metrics.count(name::CLIENT_SECRET_RETRY, &[("Outcome", "failed")]), 0);
}

#[tokio::test]
async fn a_standalone_sign_in_schedules_a_keep_alive_a_week_out() {
    let app =
        spawn_app_with(AppOptions { refresh_margin_secs: Some(1200), ..AppOptions::default() })
            .await;
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    let stored = app.connection(&cid).await.unwrap().connection;
    let now = ms_oauth::clock::Clock::now(app.clock.as_ref()).unix_timestamp();
    let day = 24 * 3600;
    // The token API refreshes on read (by the margin); the schedule only keeps the refresh
    // token alive.
    assert!((now + 6 * day + day / 2..now + 7 * day + day / 2).contains(&stored.refresh_due_at));
}

#[tokio::test]
async fn dashboard_sign_ins_finish_on_the_configured_dashboard() {
    let dashboard = "https://dash.autokitteh.example";
    let app = spawn_app_with(AppOptions {
        dashboard_url: Some(dashboard.into()),
        ..AppOptions::default()
    })
    .await;
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Dash, "work").await;
    assert_eq!(
        flow.finish.location.as_deref(),
        Some(format!("{dashboard}/internal/dashboard/connections/{cid}?msg=Success").as_str())
    );
    // The other origins are unchanged by it.
    let web = app.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await;
    assert_eq!(web.finish.status, 200);
}
