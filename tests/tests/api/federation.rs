//! Secretless client authentication: the functions prove themselves to Microsoft with a JWT
//! AWS STS signs about their role (the STS stand-in), which the Microsoft stand-in verifies
//! as Entra does against the app's federated identity credential, fetching the issuer's keys
//! through its discovery document. No client secret works at Microsoft in these tests.

use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::metrics::name;

use crate::helpers::*;

async fn federated_app() -> TestApp {
    spawn_app_with(AppOptions { aws_federation: true, ..AppOptions::default() }).await
}

#[tokio::test]
async fn sign_ins_and_refreshes_authenticate_with_the_functions_aws_identity_and_no_secret() {
    let app = federated_app().await;
    let sts = app.sts.clone().unwrap();
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_page(&flow.finish, 200, "connected");
    let forced = format!("{}/connections/{cid}/token?force_refresh=true", app.api_address);
    for _ in 0..3 {
        assert_eq!(reqwest::get(&forced).await.unwrap().status(), 200);
    }
    app.make_due(&cid).await;
    assert_eq!(app.refresher.run().await.unwrap().refreshed, 1);
    // A token is reused until shortly before it ends: one per function (each its own
    // instance, as on Lambda: the redirect, the connection API, the refresher) for a
    // sign-in, four refreshes and a refresher run.
    assert_eq!(sts.issued(), [FEDERATED_ROLE; 3]);
    // No client secret was ever sent.
    assert_eq!(app.standin.calls().refused_client_secrets, 0);
}

#[tokio::test]
async fn an_identity_the_app_does_not_trust_is_refused_with_a_page_that_says_what_to_add() {
    let app = federated_app().await;
    // The functions run as another role than the one the credential names.
    app.sts.as_ref().unwrap().add_role("testing", "arn:aws:iam::000000000000:role/someone-else");
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_page(&flow.finish, 502, "federated identity credential");
    assert!(flow.finish.body.contains("AADSTS700213"), "{}", flow.finish.body);
    assert!(app.connection(&cid).await.is_none());
    assert_eq!(app.metrics.count(name::SIGN_IN_FAILED, &[("Class", "app_misconfigured")]), 1);
}

#[tokio::test]
async fn federation_off_in_the_account_or_sts_down_end_on_pages_that_say_so() {
    let app = federated_app().await;
    let sts = app.sts.clone().unwrap();
    sts.set_enabled(false);
    let flow = app.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await;
    assert_page(&flow.finish, 502, "outbound identity federation");
    assert_eq!(app.metrics.count(name::SIGN_IN_FAILED, &[("Class", "app_misconfigured")]), 1);

    sts.set_enabled(true);
    sts.set_failing(true);
    let flow = app.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await;
    assert_page(&flow.finish, 503, "temporarily unavailable");
    assert_eq!(app.metrics.count(name::DEPENDENCY_FAILURE, &[("Dependency", "sts")]), 1);

    // Back: the next sign-in works.
    sts.set_failing(false);
    let flow = app.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await;
    assert_page(&flow.finish, 200, "connected");
}

#[tokio::test]
async fn a_token_from_another_issuer_or_for_another_audience_is_refused() {
    use ms_oauth_tests::standin::FederatedCredential;
    // The app trusts an issuer that is not this account's: nothing matches the token's.
    let app = federated_app().await;
    let sts = app.sts.clone().unwrap();
    let other_issuer = ms_oauth_tests::sts::StsStandin::spawn(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .unwrap();
    other_issuer.add_role("testing", FEDERATED_ROLE);
    let microsoft = ms_oauth_tests::standin::Standin::spawn(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ms_oauth_tests::standin::Registration {
            client_id: CLIENT_ID.into(),
            client_secret: "unused-secret".into(),
            redirect_uri: "http://127.0.0.1/oauth/redirect/microsoft".into(),
        },
    )
    .unwrap();
    microsoft.add_federated_credential(FederatedCredential {
        issuer: other_issuer.issuer(),
        subject: FEDERATED_ROLE.into(),
        audience: "api://AzureADTokenExchange".into(),
    });
    let assertion = ms_oauth::federation::FederatedAssertions::new(aws_sdk_sts::Client::new(
        &ms_oauth_tests::aws::sdk_config(&sts.url()).await,
    ));
    let token = assertion.assertion(ms_oauth::federation::ENTRA_AUDIENCE).await.unwrap();
    let refused = microsoft
        .client_credentials_with_assertion(CLIENT_ID, secrecy::ExposeSecret::expose_secret(&token))
        .await;
    assert!(refused.contains("AADSTS700211"), "{refused}");

    // Right issuer and subject, another audience.
    microsoft.add_federated_credential(FederatedCredential {
        issuer: sts.issuer(),
        subject: FEDERATED_ROLE.into(),
        audience: "api://SomethingElse".into(),
    });
    let refused = microsoft
        .client_credentials_with_assertion(CLIENT_ID, secrecy::ExposeSecret::expose_secret(&token))
        .await;
    assert!(refused.contains("AADSTS700212"), "{refused}");
}

#[tokio::test]
async fn a_private_app_that_trusts_the_functions_identity_signs_in_and_refreshes_without_a_secret()
{
    use ms_oauth_tests::standin::{AppRegistration, FederatedCredential, OTHER_TENANT};
    let app = federated_app().await;
    let sts = app.sts.clone().unwrap();
    let private = "6e1d5c4b-3f20-4b7c-8d9e-0f1a2b3c4d5e";
    let cid = new_cid();
    // The app trusts the deployment for this connection: the audience names it.
    app.standin.register_app(AppRegistration {
        client_id: private.into(),
        home_tenant: OTHER_TENANT.into(),
        multi_tenant: true,
        redirect_uris: vec![format!("{}{}", app.address, ms_oauth::config::REDIRECT_PATH)],
        federated_credentials: vec![FederatedCredential {
            issuer: sts.issuer(),
            subject: FEDERATED_ROLE.into(),
            audience: ms_oauth::federation::own_app_audience(&cid),
        }],
        ..AppRegistration::default()
    });
    let put = |body: serde_json::Value| {
        let url = format!("{}/connections/{cid}/app", app.api_address);
        async move {
            let answer = reqwest::Client::new().put(url).json(&body).send().await.unwrap();
            (answer.status().as_u16(), answer.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) =
        put(serde_json::json!({"auth_type": "oauthPrivate", "client_id": private, "aws_federation": true}))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app"]["credential"], "aws_federation");
    assert_eq!(
        body["app"]["federation_audience"],
        format!("api://AzureADTokenExchange/connections/{cid}")
    );
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_page(&flow.finish, 200, "connected");
    let forced = format!("{}/connections/{cid}/token?force_refresh=true", app.api_address);
    assert_eq!(reqwest::get(&forced).await.unwrap().status(), 200);

    // A credential and federation at once is refused.
    let (status, _) = put(serde_json::json!({
        "auth_type": "oauthPrivate", "client_id": private, "aws_federation": true, "client_secret": "x"
    }))
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_deployment_with_a_secret_refuses_an_app_that_asks_for_federation() {
    let app = spawn_app().await;
    let url = format!("{}/connections/{}/app", app.api_address, new_cid());
    let body = serde_json::json!({"auth_type": "oauthPrivate", "client_id": "6e1d5c4b-3f20-4b7c-8d9e-0f1a2b3c4d5e", "aws_federation": true});
    let answer = reqwest::Client::new().put(url).json(&body).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("MicrosoftClientAuth=aws_federation"),
        "{body}"
    );
}

/// Contoso's daemon app trusts the deployment's AWS identity for Contoso's connection. Mallory,
/// who may set an app on her own connection, names the same app (client and tenant ids are not
/// secrets): the assertion made for her connection names her connection, Microsoft finds no
/// credential for it, and she gets nothing. The server-wide app, which Entra gives a token
/// (without application permissions) in any tenant that consented to it, is refused before
/// Microsoft is asked.
#[tokio::test]
async fn an_app_trusted_for_one_connection_cannot_be_borrowed_through_another() {
    use ms_oauth_tests::standin::{AppRegistration, FederatedCredential, WORK_TENANT};
    let app = federated_app().await;
    let sts = app.sts.clone().unwrap();
    let daemon = "7f2e6d5c-4a31-4c8d-9eaf-1b2c3d4e5f60";
    let (contoso, mallory) = (new_cid(), new_cid());
    app.standin.register_app(AppRegistration {
        client_id: daemon.into(),
        home_tenant: WORK_TENANT.into(),
        consented_tenants: vec![WORK_TENANT.into()],
        federated_credentials: vec![FederatedCredential {
            issuer: sts.issuer(),
            subject: FEDERATED_ROLE.into(),
            audience: ms_oauth::federation::own_app_audience(&contoso),
        }],
        ..AppRegistration::default()
    });
    let put = |cid: &ConnectionId, client_id: &str| {
        let url = format!("{}/connections/{cid}/app", app.api_address);
        let body = serde_json::json!({"auth_type": "daemonApp", "client_id": client_id, "tenant_id": WORK_TENANT, "aws_federation": true});
        async move {
            let answer = reqwest::Client::new().put(url).json(&body).send().await.unwrap();
            (answer.status().as_u16(), answer.json::<serde_json::Value>().await.unwrap())
        }
    };
    let token = |cid: &ConnectionId| {
        let url = format!("{}/connections/{cid}/token", app.api_address);
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };

    let (status, body) = put(&contoso, daemon).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(token(&contoso).await, 200);
    assert_eq!(app.standin.app_tokens_issued_to(daemon, WORK_TENANT), 1);

    let (status, body) = put(&mallory, daemon).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "app_refused");
    assert!(body["reason"].as_str().unwrap().contains("AADSTS700212"), "{body}");
    assert_eq!(body["federation_audience"], ms_oauth::federation::own_app_audience(&mallory));
    assert!(body["message"].as_str().unwrap().contains("federated identity credential"), "{body}");
    assert_eq!(app.standin.app_tokens_issued_to(daemon, WORK_TENANT), 1, "no token for Mallory");
    assert_eq!(token(&mallory).await, 409, "no connection to serve");
    assert!(app.connection(&mallory).await.is_none());
    let mallorys_app = format!("{}/connections/{mallory}/app", app.api_address);
    assert_eq!(reqwest::get(&mallorys_app).await.unwrap().status(), 404);

    // The server-wide app: Entra would hand out a token; the deployment never asks.
    let (status, body) = put(&mallory, CLIENT_ID).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_app");
    assert_eq!(app.standin.app_tokens_issued_to(CLIENT_ID, WORK_TENANT), 0);
    assert!(app.connection(&mallory).await.is_none());
}

/// The stand-in is as generous as Entra with the server-wide app: client credentials give a
/// token in a tenant where the app has a service principal, and that token, carrying no
/// application permissions, is refused by Graph.
#[tokio::test]
async fn the_standin_gives_the_server_wide_app_a_token_without_permissions_as_entra_does() {
    use ms_oauth_tests::standin::WORK_TENANT;
    let app = spawn_app().await;
    let url = format!("{}/{WORK_TENANT}/oauth2/v2.0/token", app.standin.url());
    let scope = format!("{}/.default", app.standin.url());
    let answer: serde_json::Value = reqwest::Client::new()
        .post(url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", app.client_secret.as_str()),
            ("scope", scope.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("a token, as Entra gives: {answer}"));
    assert_eq!(app.standin.app_tokens_issued_to(CLIENT_ID, WORK_TENANT), 1);
    let organization = reqwest::Client::new()
        .get(format!("{}/v1.0/organization", app.standin.url()))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(organization.status(), 403);
}
