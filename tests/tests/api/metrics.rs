//! Metrics the functions record: sign-ins started, completed and failed by class, redirect
//! latency, refreshes by trigger and outcome, API answers, the refresher's backlog — with
//! dimensions from closed sets only.

use ms_oauth::clock::Clock;
use ms_oauth::domain::Origin;
use ms_oauth::metrics::{Metric, name};

use crate::helpers::*;

/// Every dimension's value is one of a known, small set: never an id, a user or a tenant.
fn assert_low_cardinality(metrics: &[Metric]) {
    for metric in metrics {
        for (key, value) in &metric.dimensions {
            let allowed = ms_oauth::metrics::dimension_values(key).unwrap_or_default();
            assert!(
                allowed.contains(value),
                "{}: {key}={value} is not from a closed set",
                metric.name
            );
        }
        assert!(name::ALL.contains(&metric.name), "{} is not in metrics::name::ALL", metric.name);
    }
}

#[tokio::test]
async fn sign_ins_are_counted_by_origin_auth_type_and_failure_class() {
    let app = spawn_app().await;
    let flow = app.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200);
    let web_default = [("Origin", "web"), ("AuthType", "oauthDefault")];
    assert_eq!(app.metrics.count(name::SIGN_IN_STARTED, &web_default), 1);
    assert_eq!(app.metrics.count(name::SIGN_IN_COMPLETED, &web_default), 1);
    assert_eq!(app.metrics.count(name::REDIRECT_LATENCY, &[("Outcome", "completed")]), 1);

    // Declined at Microsoft: a user's decision. The same callback again: refused by us.
    let declined = app.connect(&Browser::new(), &new_cid(), Origin::Cli, "cancel").await;
    assert_eq!(declined.finish.status, 403);
    let again = Browser::new().get(&declined.finish.url).await;
    assert_eq!(again.status, 400);
    assert_eq!(app.metrics.count(name::SIGN_IN_STARTED, &[("Origin", "cli")]), 1);
    assert_eq!(app.metrics.count(name::SIGN_IN_FAILED, &[("Class", "sign_in_again")]), 1);
    assert_eq!(app.metrics.count(name::SIGN_IN_FAILED, &[("Class", "refused")]), 1);
    assert_eq!(app.metrics.count(name::REDIRECT_LATENCY, &[("Outcome", "failed")]), 2);
    let latencies: Vec<f64> = app
        .metrics
        .all()
        .iter()
        .filter(|m| m.name == name::REDIRECT_LATENCY)
        .map(|m| m.value)
        .collect();
    assert!(latencies.iter().all(|ms| *ms > 0.0 && *ms < 60_000.0), "{latencies:?}");
    assert_low_cardinality(&app.metrics.all());
}

#[tokio::test]
async fn refreshes_and_api_answers_are_counted_and_the_refresher_reports_its_backlog() {
    let app = spawn_app().await;
    let cid = new_cid();
    assert_eq!(app.connect(&Browser::new(), &cid, Origin::Web, "work").await.finish.status, 200);
    let base = app.api_address.clone();
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move { reqwest::Client::new().get(url).send().await.unwrap().status() }
    };
    assert_eq!(get(format!("/connections/{cid}/token?force_refresh=true")).await, 200);
    assert_eq!(get(format!("/connections/{}/token", new_cid())).await, 409);
    assert_eq!(get("/connections/nope".to_owned()).await, 400);
    let token_ok = [("Operation", "get_token"), ("Status", "200")];
    assert_eq!(app.metrics.count(name::API_ANSWER, &token_ok), 1);
    assert_eq!(
        app.metrics.count(name::API_ANSWER, &[("Operation", "get_token"), ("Status", "409")]),
        1
    );
    assert_eq!(
        app.metrics.count(name::API_ANSWER, &[("Operation", "get_connection"), ("Status", "400")]),
        1
    );
    let on_request = [("Trigger", "request"), ("Outcome", "refreshed")];
    assert_eq!(app.metrics.count(name::REFRESH, &on_request), 1);

    // Due now: the scheduled run renews it and reports a backlog of one.
    app.make_due(&cid).await;
    let report = app.refresher.run().await.unwrap();
    assert_eq!(report.refreshed, 1);
    assert_eq!(
        app.metrics.count(name::REFRESH, &[("Trigger", "schedule"), ("Outcome", "refreshed")]),
        1
    );
    let backlog: Vec<f64> = app
        .metrics
        .all()
        .iter()
        .filter(|m| m.name == name::REFRESHER_DUE)
        .map(|m| m.value)
        .collect();
    assert_eq!(backlog, [1.0]);
    assert_eq!(app.metrics.count(name::REFRESHER_RUN_DURATION, &[]), 1);
    assert_low_cardinality(&app.metrics.all());
}

/// The values `name` was recorded with, with `dimension`.
fn values(app: &TestApp, name: &str, dimension: (&str, &str)) -> Vec<f64> {
    let all = app.metrics.all();
    let with = all.iter().filter(|m| m.name == name && m.dimensions.contains(&dimension));
    with.map(|m| m.value).collect()
}

#[tokio::test]
async fn outages_are_counted_by_the_dependency_that_failed() {
    let dynamodb =
        spawn_app_with(AppOptions { dead_dynamodb: true, ..AppOptions::default() }).await;
    let page = Browser::new().get(&dynamodb.start_link(&new_cid(), Origin::Web)).await;
    assert_eq!(page.status, 503);
    let failures =
        |app: &TestApp, d| app.metrics.count(name::DEPENDENCY_FAILURE, &[("Dependency", d)]);
    assert_eq!(failures(&dynamodb, "dynamodb"), 1);
    let token = format!("{}/connections/{}/token", dynamodb.api_address, new_cid());
    assert_eq!(reqwest::get(token).await.unwrap().status(), 503);
    assert_eq!(failures(&dynamodb, "dynamodb"), 2);
    // The refresher cannot even look for due connections.
    assert!(dynamodb.refresher.run().await.is_err());
    assert_eq!(failures(&dynamodb, "dynamodb"), 3);

    let kms = spawn_app_with(AppOptions { dead_kms: true, ..AppOptions::default() }).await;
    assert_eq!(
        kms.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await.finish.status,
        503
    );
    assert_eq!(failures(&kms, "kms"), 1);

    let secrets =
        spawn_app_with(AppOptions { dead_secrets_manager: true, ..AppOptions::default() }).await;
    let flow = secrets.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 503);
    assert_eq!(failures(&secrets, "secrets_manager"), 1);

    // Microsoft down; a refusal by Microsoft is not an outage.
    let microsoft = spawn_app().await;
    microsoft.standin.set_token_fault(Some(ms_oauth_tests::standin::Fault::Status(503)));
    let flow = microsoft.connect(&Browser::new(), &new_cid(), Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 503);
    assert_eq!(failures(&microsoft, "microsoft"), 1);
    microsoft.standin.set_token_fault(None);
    let declined = microsoft.connect(&Browser::new(), &new_cid(), Origin::Web, "cancel").await;
    assert_eq!(declined.finish.status, 403);
    assert_eq!(microsoft.metrics.count(name::DEPENDENCY_FAILURE, &[]), 1);
    for app in [&dynamodb, &kms, &secrets, &microsoft] {
        assert_low_cardinality(&app.metrics.all());
    }
}

#[tokio::test]
async fn the_client_secrets_recorded_end_date_is_reported_in_days_left() {
    let app = spawn_app().await;
    // No date recorded: nothing to report.
    app.refresher.run().await.unwrap();
    assert!(values(&app, name::CREDENTIAL_DAYS_LEFT, ("Credential", "client_secret")).is_empty());

    let ends = app.clock.now() + time::Duration::days(10);
    let tag = |value: String| {
        aws_sdk_secretsmanager::types::Tag::builder()
            .key(ms_oauth::secrets::EXPIRES_TAG)
            .value(value)
            .build()
    };
    let format = time::format_description::well_known::Rfc3339;
    app.secretsmanager
        .tag_resource()
        .secret_id(&app.client_secret_arn)
        .tags(tag(ends.format(&format).unwrap()))
        .send()
        .await
        .unwrap();
    app.refresher.run().await.unwrap();
    let days = values(&app, name::CREDENTIAL_DAYS_LEFT, ("Credential", "client_secret"));
    assert_eq!(days.len(), 1);
    assert!((days[0] - 10.0).abs() < 0.01, "{days:?}");

    // A date that cannot be read is logged, not guessed.
    app.secretsmanager
        .tag_resource()
        .secret_id(&app.client_secret_arn)
        .tags(tag("next spring".to_owned()))
        .send()
        .await
        .unwrap();
    app.refresher.run().await.unwrap();
    assert_eq!(values(&app, name::CREDENTIAL_DAYS_LEFT, ("Credential", "client_secret")).len(), 1);
}
