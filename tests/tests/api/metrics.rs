//! Metrics the functions record: sign-ins started, completed and failed by class, redirect
//! latency, refreshes by trigger and outcome, API answers, the refresher's backlog — with
//! dimensions from closed sets only.

use ms_oauth::domain::Origin;
use ms_oauth::metrics::{Metric, name};

use crate::helpers::*;

/// Every dimension's value is one of a known, small set: never an id, a user or a tenant.
fn assert_low_cardinality(metrics: &[Metric]) {
    let allowed = [
        "web",
        "cli",
        "vscode",
        "dash",
        "oauthDefault",
        "oauthPrivate",
        "daemonApp",
        "sign_in_again",
        "admin_consent",
        "app_misconfigured",
        "transient",
        "refused",
        "internal",
        "completed",
        "failed",
        "request",
        "schedule",
        "refreshed",
        "stale",
        "needs_reauth",
        "ok",
        "disconnected",
        "get_token",
        "get_app",
        "set_app",
        "remove_app",
        "get_connection",
        "disconnect",
        "other",
        "200",
        "400",
        "404",
        "405",
        "409",
        "413",
        "422",
        "500",
        "502",
        "503",
    ];
    for metric in metrics {
        for (key, value) in &metric.dimensions {
            assert!(
                allowed.contains(value),
                "{}: {key}={value} is not from a closed set",
                metric.name
            );
        }
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
