//! Events reach a real EventBridge API (moto) in the shape the platform consumes.

use ms_oauth::events::{ConnectionEvent, EventBridgeEvents, EventKind};

use crate::helpers::*;

#[tokio::test]
async fn events_are_accepted_by_eventbridge_and_carry_no_secret() {
    let endpoint = ms_oauth_tests::aws::shared_endpoint().unwrap();
    let sdk = ms_oauth_tests::aws::sdk_config(&endpoint).await;
    let client = aws_sdk_eventbridge::Client::new(&sdk);
    let bus = format!("oauth-test-{}", new_cid().as_str().trim_start_matches("con_"));
    client.create_event_bus().name(&bus).send().await.unwrap();

    let event = ConnectionEvent {
        kind: EventKind::NeedsReauth,
        connection_id: new_cid(),
        tenant_id: Some("2f6a3d1c-5b4e-4c8a-9f17-0a1b2c3d4e5f".into()),
        reason: Some("invalid_grant (AADSTS[700082])".into()),
        connections: None,
        verified: None,
        at: "2026-11-27T18:00:00Z".into(),
    };
    EventBridgeEvents::new(client.clone(), &bus).send(&event).await.unwrap();

    let detail = serde_json::to_value(&event).unwrap();
    assert_eq!(detail["kind"], "needs_reauth");
    assert_eq!(detail["connection_id"], event.connection_id.as_str());
    let keys: Vec<&str> = detail.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["at", "connection_id", "kind", "reason", "tenant_id"]);

    // A bus that does not exist is reported, not silently ignored.
    let missing = EventBridgeEvents::new(client, "no-such-bus").send(&event).await;
    assert!(missing.is_err());
}
