//! Connection lifecycle events on EventBridge, so the platform need not poll. Events never
//! carry a secret.

use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde::Serialize;

use crate::domain::ConnectionId;

/// `source` of every event.
pub const EVENT_SOURCE: &str = "autokitteh.oauth.microsoft";

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Authorized,
    NeedsReauth,
    Disconnected,
    AdminConsentGranted,
    /// Many connections of one tenant failed the same way within minutes.
    TenantFailing,
}

impl EventKind {
    /// The EventBridge `detail-type`.
    pub fn detail_type(self) -> &'static str {
        match self {
            EventKind::Authorized => "Connection Authorized",
            EventKind::NeedsReauth => "Connection Needs Reauthorization",
            EventKind::Disconnected => "Connection Disconnected",
            EventKind::AdminConsentGranted => "Admin Consent Granted",
            EventKind::TenantFailing => "Tenant Connections Failing",
        }
    }
}

/// The event's `detail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionEvent {
    pub kind: EventKind,
    pub connection_id: ConnectionId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For [`EventKind::TenantFailing`]: how many connections failed so when it was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// For [`EventKind::AdminConsentGranted`]: `true` when the consent was proven with
    /// Microsoft (a daemon app got a token with it); `false` when only the browser's return
    /// says so (anyone holding the consent's state could have sent it, naming any tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// RFC 3339.
    pub at: String,
}

/// Where events go. Publishing is best effort: a failure is logged, never fatal, because the
/// state it reports is already saved and readable through the API.
#[async_trait]
pub trait Events: Send + Sync + std::fmt::Debug {
    async fn publish(&self, event: &ConnectionEvent);
}

/// No event bus configured.
#[derive(Debug, Default)]
pub struct NoEvents;

#[async_trait]
impl Events for NoEvents {
    async fn publish(&self, _event: &ConnectionEvent) {}
}

/// Events on an EventBridge bus.
#[derive(Debug, Clone)]
pub struct EventBridgeEvents {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventBridgeEvents {
    pub fn new(client: aws_sdk_eventbridge::Client, bus: impl Into<String>) -> Self {
        Self { client, bus: bus.into() }
    }
}

impl EventBridgeEvents {
    /// Puts one event on the bus; an error says why it was not accepted.
    pub async fn send(&self, event: &ConnectionEvent) -> Result<(), String> {
        let detail = serde_json::to_string(event).map_err(|e| e.to_string())?;
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(EVENT_SOURCE)
            .detail_type(event.kind.detail_type())
            .detail(detail)
            .build();
        put_event(&self.client, entry).await
    }
}

/// Puts one entry on EventBridge; an error says why it was not accepted.
pub async fn put_event(
    client: &aws_sdk_eventbridge::Client,
    entry: PutEventsRequestEntry,
) -> Result<(), String> {
    let out = client
        .put_events()
        .entries(entry)
        .send()
        .await
        .map_err(|e| crate::error::chain(&e.into_service_error()))?;
    match out.failed_entry_count() {
        0 => Ok(()),
        _ => Err(out
            .entries()
            .iter()
            .filter_map(|e| e.error_message())
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

#[async_trait]
impl Events for EventBridgeEvents {
    async fn publish(&self, event: &ConnectionEvent) {
        if let Err(error) = self.send(event).await {
            tracing::error!(cid = %event.connection_id, kind = ?event.kind, error, "event not published");
        }
    }
}

/// Keeps events in memory, for tests.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct RecordedEvents(Mutex<Vec<ConnectionEvent>>);

impl RecordedEvents {
    pub fn take(&self) -> Vec<ConnectionEvent> {
        self.0.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
    }
}

#[async_trait]
impl Events for RecordedEvents {
    async fn publish(&self, event: &ConnectionEvent) {
        if let Ok(mut events) = self.0.lock() {
            events.push(event.clone());
        }
    }
}
