//! The audit trail: one event per security-relevant act, with stable ids and the
//! connection's version, naming who acted, never carrying a secret; and the trail kept on
//! EventBridge reaches a log group.

use ms_oauth::audit::{Act, Actor, AuditEvent, Caller, LambdaAudit};
use ms_oauth::domain::Origin;
use ms_oauth::metrics::NoMetrics;
use ms_oauth_tests::local::LOCAL_CALLER_ARN;
use std::sync::Arc;

use crate::helpers::*;

async fn api(app: &TestApp, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
    let url = format!("{}{path}", app.api_address);
    let response = reqwest::Client::new().request(method, url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn every_act_on_a_connection_is_on_the_trail_in_order_and_without_secrets() {
    let app = spawn_app().await;
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Cli, "work").await;
    assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    let (status, served) =
        api(&app, reqwest::Method::GET, &format!("/connections/{cid}/token")).await;
    assert_eq!(status, 200);
    let forced = format!("/connections/{cid}/token?force_refresh=true");
    let (status, refreshed) = api(&app, reqwest::Method::GET, &forced).await;
    assert_eq!(status, 200);
    app.make_due(&cid).await;
    assert_eq!(app.refresher.run().await.unwrap().refreshed, 1);
    let stored = app.connection(&cid).await.unwrap();
    let secrets = app.secret_vars(&stored).await;
    assert_eq!(api(&app, reqwest::Method::DELETE, &format!("/connections/{cid}")).await.0, 200);

    let trail = app.audit.of(&cid);
    let acts: Vec<(Act, &str)> = trail.iter().map(|e| (e.act, e.outcome.as_str())).collect();
    assert_eq!(
        acts,
        [
            (Act::FlowStarted, "started"),
            (Act::FlowFinished, "completed"),
            (Act::TokenServed, "served"),
            (Act::Refreshed, "refreshed"),
            (Act::TokenServed, "served"),
            (Act::Refreshed, "refreshed"),
            (Act::Disconnected, "removed"),
        ]
    );
    let [started, finished, first_served, on_request, second_served, scheduled, removed] =
        <[AuditEvent; 7]>::try_from(trail.clone()).unwrap();
    // Start and finish of one sign-in share a flow id; the platform user the grant named
    // started it.
    assert_eq!(started.flow_id, finished.flow_id);
    assert!(started.flow_id.is_some());
    assert_eq!(started.origin.as_deref(), Some("cli"));
    assert_eq!(started.auth_type.as_deref(), Some("oauthDefault"));
    assert!(matches!(&started.actor, Actor::PlatformUser(Some(user)) if !user.is_empty()));
    assert_eq!(finished.actor, started.actor);
    assert_eq!(finished.account.as_deref(), Some("adele.vance@contoso.example"));
    assert_eq!(finished.tenant_id.as_deref(), Some(stored.connection.tenant_id.as_str()));
    // The API's acts name the IAM principal API Gateway authorized; the refresher its own.
    let platform = Actor::Iam(LOCAL_CALLER_ARN.to_owned());
    for event in [&first_served, &on_request, &second_served, &removed] {
        assert_eq!(event.actor, platform, "{:?}", event.act);
    }
    assert_eq!(on_request.trigger.as_deref(), Some("request"));
    assert_eq!(scheduled.trigger.as_deref(), Some("schedule"));
    assert_eq!(scheduled.actor, Actor::Refresher);
    // Versions order a connection's acts: each refresh writes a newer one, served tokens
    // name the one they came from, the removal the last.
    let version = |e: &AuditEvent| e.connection_version.unwrap();
    assert_eq!(version(&first_served), version(&finished));
    assert!(version(&on_request) > version(&first_served));
    assert_eq!(version(&second_served), version(&on_request));
    assert!(version(&scheduled) > version(&on_request));
    assert_eq!(version(&removed), version(&scheduled));
    assert_eq!(version(&removed), stored.version);
    // Every act its own id.
    let ids: std::collections::BTreeSet<&str> = trail.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), trail.len());

    let all = serde_json::to_string(&trail).unwrap();
    for secret in [
        served["access_token"].as_str().unwrap(),
        refreshed["access_token"].as_str().unwrap(),
        secrets["oauth_access_token"].as_str().unwrap(),
        secrets["oauth_refresh_token"].as_str().unwrap(),
        app.client_secret.as_str(),
    ] {
        assert!(!all.contains(secret), "a secret is on the audit trail");
    }
    let query = url::Url::parse(&flow.authorize_url).unwrap();
    for (name, value) in query.query_pairs() {
        if ["state", "code_challenge", "nonce"].contains(&name.as_ref()) {
            assert!(!all.contains(value.as_ref()), "the flow's {name} is on the audit trail");
        }
    }
}

#[tokio::test]
async fn a_refused_sign_in_is_on_the_trail_with_its_class_and_microsofts_code() {
    let app = spawn_app().await;
    app.standin.rotate_secret("a-secret-the-deployment-does-not-have");
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 502);
    let trail = app.audit.of(&cid);
    assert_eq!(trail.len(), 2, "{trail:?}");
    let finished = &trail[1];
    assert_eq!((finished.act, finished.outcome.as_str()), (Act::FlowFinished, "failed"));
    assert_eq!(finished.class.as_deref(), Some("app_misconfigured"));
    assert_eq!(finished.aadsts, Some(7_000_215));
    assert_eq!(finished.connection_version, None);
    assert_eq!(finished.flow_id, trail[0].flow_id);

    // A callback with no live flow behind it names no connection: it is counted, not
    // audited.
    let before = app.audit.all().len();
    assert_eq!(app.callback_for_unknown_state(&"s".repeat(43)).await.status, 400);
    assert_eq!(app.audit.all().len(), before);
}

#[tokio::test]
async fn the_trail_on_eventbridge_reaches_a_log_group_once_per_act() {
    let endpoint = ms_oauth_tests::aws::shared_endpoint().unwrap();
    let sdk = ms_oauth_tests::aws::sdk_config(&endpoint).await;
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk);
    let suffix = new_cid().as_str().trim_start_matches("con_").to_owned();
    let bus = format!("oauth-audit-{suffix}");
    let group = format!("/aws/events/oauth-audit-{suffix}");
    let bus_arn = events.create_event_bus().name(&bus).send().await.unwrap().event_bus_arn.unwrap();
    logs.create_log_group().log_group_name(&group).send().await.unwrap();
    // What the template's AuditLogRetentionDays option makes: every audit event of the bus
    // to the log group.
    events
        .put_rule()
        .name("audit-to-logs")
        .event_bus_name(&bus)
        .event_pattern(r#"{"source": ["autokitteh.oauth.microsoft.audit"]}"#)
        .send()
        .await
        .unwrap();
    let region_account = bus_arn
        .trim_start_matches("arn:aws:events:")
        .split(":event-bus")
        .next()
        .unwrap()
        .to_owned();
    let target = aws_sdk_eventbridge::types::Target::builder()
        .id("log-group")
        .arn(format!("arn:aws:logs:{region_account}:log-group:{group}"))
        .build()
        .unwrap();
    events
        .put_targets()
        .rule("audit-to-logs")
        .event_bus_name(&bus)
        .targets(target)
        .send()
        .await
        .unwrap();

    let trail = LambdaAudit::new(false, Some((events.clone(), bus.clone())), Arc::new(NoMetrics));
    let cid = new_cid();
    let caller = Caller::new(Actor::Iam(LOCAL_CALLER_ARN.into()), "req-1");
    let mut event = AuditEvent::new(
        Act::TokenServed,
        &[&caller.request_id],
        time::OffsetDateTime::now_utc(),
        &cid,
        caller.actor.clone(),
        "served",
    );
    event.connection_version = Some(4);
    LambdaAudit::send(&events, &bus, &event).await.unwrap();
    ms_oauth::audit::AuditTrail::record(&trail, event.clone()).await;

    // Read with a plain call: the emulator writes rule-delivered events with fractional
    // millisecond timestamps, which the SDK's strict parser refuses (CloudWatch Logs itself
    // answers whole numbers).
    let found: serde_json::Value = reqwest::Client::new()
        .post(&endpoint)
        .header("x-amz-target", "Logs_20140328.FilterLogEvents")
        .header("content-type", "application/x-amz-json-1.1")
        .header("authorization", "AWS4-HMAC-SHA256 Credential=test/20261206/us-east-1/logs/aws4_request, SignedHeaders=host, Signature=0")
        .body(serde_json::json!({"logGroupName": group}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let details: Vec<serde_json::Value> = found["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str(e["message"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(details.len(), 2, "published twice");
    for detail in &details {
        assert_eq!(detail["source"], "autokitteh.oauth.microsoft.audit");
        assert_eq!(detail["detail-type"], "Audit Token Served");
        assert_eq!(detail["detail"]["connection_id"], cid.as_str());
        assert_eq!(detail["detail"]["connection_version"], 4);
        assert_eq!(detail["detail"]["actor"]["id"], LOCAL_CALLER_ARN);
    }
    // The same act twice: one id, so a consumer keeps one.
    assert_eq!(details[0]["detail"]["event_id"], details[1]["detail"]["event_id"]);

    // A bus that does not exist is reported, not silently ignored.
    assert!(LambdaAudit::send(&events, "no-such-bus", &event).await.is_err());
}
