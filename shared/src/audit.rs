//! The audit trail: one structured event per security-relevant act (a sign-in started or
//! finished, a token served, a refresh, a disconnect, an administrator's consent). Each is
//! printed as one JSON line in the function's log (on Lambda) and put on the audit bus
//! (`AUDIT_BUS_NAME`) when one is configured. An event carries a stable id (the same act
//! always has the same id, so a consumer drops repeats) and the connection's version (so a
//! consumer orders a connection's acts); never a secret: no token, code, state, verifier or
//! credential, only ids, names and outcomes.

use std::io::Write as _;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::domain::ConnectionId;
use crate::metrics::{Metrics, record_dependency_failure};

/// `source` of every audit event on the bus.
pub const AUDIT_SOURCE: &str = "autokitteh.oauth.microsoft.audit";

/// The act an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    /// A browser was sent to Microsoft (or an administrator's consent link was opened).
    FlowStarted,
    /// A sign-in ended: a connection saved, or an error page.
    FlowFinished,
    /// The connection API served an access token.
    TokenServed,
    /// A token renewal, asked by a token request or by the refresher.
    Refreshed,
    /// The connection's tokens were removed.
    Disconnected,
    /// An administrator's consent came back.
    AdminConsent,
}

impl Act {
    /// The EventBridge `detail-type`.
    pub fn detail_type(self) -> &'static str {
        match self {
            Act::FlowStarted => "Audit Flow Started",
            Act::FlowFinished => "Audit Flow Finished",
            Act::TokenServed => "Audit Token Served",
            Act::Refreshed => "Audit Token Refreshed",
            Act::Disconnected => "Audit Connection Disconnected",
            Act::AdminConsent => "Audit Admin Consent",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Act::FlowStarted => "flow_started",
            Act::FlowFinished => "flow_finished",
            Act::TokenServed => "token_served",
            Act::Refreshed => "refreshed",
            Act::Disconnected => "disconnected",
            Act::AdminConsent => "admin_consent",
        }
    }
}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Actor {
    /// An AutoKitteh user (inside AutoKitteh), by user id.
    AutokittehUser(String),
    /// The platform user a start grant named (standalone), or `None` when it named none.
    PlatformUser(Option<String>),
    /// An IAM principal calling the connection API, by the ARN API Gateway verified.
    Iam(String),
    /// The scheduled refresher.
    Refresher,
    /// An operator's tool (`akoauth`) working on the table directly.
    Operator,
}

impl Actor {
    /// Who started `flow`: the AutoKitteh user inside AutoKitteh, else the platform user its
    /// start grant named.
    pub fn of_flow(flow: &crate::store::PendingFlow) -> Self {
        match &flow.ak_user_id {
            Some(user) => Actor::AutokittehUser(user.clone()),
            None => Actor::PlatformUser(flow.platform_user.clone()),
        }
    }
}

/// Who asks, and the id of the request they asked in (so an act publishes with the same id
/// however often it is published).
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
    pub request_id: String,
}

impl Caller {
    pub fn new(actor: Actor, request_id: impl Into<String>) -> Self {
        Self { actor, request_id: request_id.into() }
    }

    /// An operator's tool; each call its own request.
    pub fn operator() -> Self {
        Self::new(Actor::Operator, fresh_request_id())
    }

    /// The refresher's run; each renewal its own request.
    pub fn refresher() -> Self {
        Self::new(Actor::Refresher, fresh_request_id())
    }
}

/// A new random request id, where the platform gave none.
pub fn fresh_request_id() -> String {
    crate::state::attempt_id().unwrap_or_else(|_| "unidentified".to_owned())
}

/// One audit event (the bus event's `detail`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// The same for every publication of the same act.
    pub event_id: String,
    pub act: Act,
    /// RFC 3339.
    pub at: String,
    pub connection_id: ConnectionId,
    /// The connection's version the act read or wrote (absent before there is one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_version: Option<u64>,
    pub actor: Actor,
    /// Ties a sign-in's start and finish (derived from the state; not the state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<String>,
    /// The Microsoft account (user principal name, or object id when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// `started`, `completed`, `failed`, `served`, `refreshed`, `stale`, `needs_reauth`,
    /// `app_misconfigured`, `removed`, `granted`.
    pub outcome: String,
    /// The failure class, for failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Microsoft's AADSTS code, when Microsoft gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aadsts: Option<u32>,
    /// `request` or `schedule`, for refreshes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

impl AuditEvent {
    /// An event of `act` on `cid` by `actor` with `outcome`; the id is derived from `act` and
    /// `identity` (what makes this act this act: a flow's state key, a connection version, a
    /// request id), so publishing it again gives the same id.
    pub fn new(
        act: Act,
        identity: &[&str],
        at: time::OffsetDateTime,
        cid: &ConnectionId,
        actor: Actor,
        outcome: &str,
    ) -> Self {
        let mut hash = Sha256::new();
        hash.update(act.as_str());
        for part in identity {
            hash.update([0u8]);
            hash.update(part.as_bytes());
        }
        let digest = hash.finalize();
        let event_id = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            event_id,
            act,
            at: at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            connection_id: cid.clone(),
            connection_version: None,
            actor,
            flow_id: None,
            origin: None,
            auth_type: None,
            account: None,
            tenant_id: None,
            outcome: outcome.to_owned(),
            class: None,
            aadsts: None,
            trigger: None,
        }
    }
}

/// The id tying a flow's events together, from its state key's hex (itself a hash).
pub fn flow_id(state_key_hex: &str) -> String {
    let digest = Sha256::digest(format!("flow\0{state_key_hex}").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Where audit events go. Recording never fails the act: it is done (saved, served) already.
#[async_trait]
pub trait AuditTrail: Send + Sync + std::fmt::Debug {
    async fn record(&self, event: AuditEvent);
}

/// No trail (local runs and tools).
#[derive(Debug, Default)]
pub struct NoAudit;

#[async_trait]
impl AuditTrail for NoAudit {
    async fn record(&self, _event: AuditEvent) {}
}

/// The audit line of an event in the function's log.
pub fn audit_line(event: &AuditEvent) -> String {
    serde_json::json!({ "audit": event }).to_string()
}

/// On Lambda: a line in the log, and the event on the audit bus when one is named.
#[derive(Debug)]
pub struct LambdaAudit {
    lines: bool,
    bus: Option<(aws_sdk_eventbridge::Client, String)>,
    metrics: std::sync::Arc<dyn Metrics>,
}

impl LambdaAudit {
    pub fn new(
        lines: bool,
        bus: Option<(aws_sdk_eventbridge::Client, String)>,
        metrics: std::sync::Arc<dyn Metrics>,
    ) -> Self {
        Self { lines, bus, metrics }
    }

    /// Puts the event on the bus; an error says why it was not accepted.
    pub async fn send(
        client: &aws_sdk_eventbridge::Client,
        bus: &str,
        event: &AuditEvent,
    ) -> Result<(), String> {
        let detail = serde_json::to_string(event).map_err(|e| e.to_string())?;
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(bus)
            .source(AUDIT_SOURCE)
            .detail_type(event.act.detail_type())
            .resources(format!("autokitteh:connection/{}", event.connection_id))
            .detail(detail)
            .build();
        crate::events::put_event(client, entry).await
    }
}

#[async_trait]
impl AuditTrail for LambdaAudit {
    async fn record(&self, event: AuditEvent) {
        if self.lines {
            let mut line = audit_line(&event);
            line.push('\n');
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
        if let Some((client, bus)) = &self.bus
            && let Err(error) = Self::send(client, bus, &event).await
        {
            // The line above (in the log) still holds the act.
            tracing::error!(cid = %event.connection_id, event_id = %event.event_id, error, "audit event not published");
            record_dependency_failure(self.metrics.as_ref(), Some("eventbridge"));
        }
    }
}

/// The trail from the environment: lines on Lambda (`AWS_LAMBDA_FUNCTION_NAME` set), the
/// bus `AUDIT_BUS_NAME` when set; none of either elsewhere.
pub fn from_env(
    eventbridge: impl FnOnce() -> aws_sdk_eventbridge::Client,
    lookup: &dyn Fn(&str) -> Option<String>,
    metrics: std::sync::Arc<dyn Metrics>,
) -> std::sync::Arc<dyn AuditTrail> {
    // The client is built only for a bus: nothing at init that no request needs.
    let bus = lookup(crate::config::AUDIT_BUS_NAME)
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .map(|b| (eventbridge(), b));
    let lines = lookup(crate::metrics::LAMBDA_FUNCTION_NAME).is_some_and(|n| !n.trim().is_empty());
    if !lines && bus.is_none() {
        return std::sync::Arc::new(NoAudit);
    }
    std::sync::Arc::new(LambdaAudit::new(lines, bus, metrics))
}

/// Keeps events in memory, for tests.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct RecordedAudit(Mutex<Vec<AuditEvent>>);

impl RecordedAudit {
    pub fn all(&self) -> Vec<AuditEvent> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The events about `cid`, in the order recorded.
    pub fn of(&self, cid: &ConnectionId) -> Vec<AuditEvent> {
        self.all().into_iter().filter(|e| &e.connection_id == cid).collect()
    }
}

#[async_trait]
impl AuditTrail for RecordedAudit {
    async fn record(&self, event: AuditEvent) {
        if let Ok(mut events) = self.0.lock() {
            events.push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_act_has_the_same_id_and_another_act_another() {
        let cid: ConnectionId = "con_0123456789abcdefghjkmnpqrs".parse().unwrap();
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let event = |act, identity: &[&str]| {
            AuditEvent::new(act, identity, at, &cid, Actor::Refresher, "refreshed").event_id
        };
        let id = event(Act::Refreshed, &[cid.as_str(), "7"]);
        assert_eq!(id.len(), 32);
        assert_eq!(id, event(Act::Refreshed, &[cid.as_str(), "7"]));
        assert_ne!(id, event(Act::Refreshed, &[cid.as_str(), "8"]));
        assert_ne!(id, event(Act::Disconnected, &[cid.as_str(), "7"]));
        // Parts are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(event(Act::TokenServed, &["ab", "c"]), event(Act::TokenServed, &["a", "bc"]));
    }

    #[test]
    fn a_line_holds_the_event_under_audit() {
        let cid: ConnectionId = "con_0123456789abcdefghjkmnpqrs".parse().unwrap();
        let mut event = AuditEvent::new(
            Act::TokenServed,
            &["req-1"],
            time::OffsetDateTime::UNIX_EPOCH,
            &cid,
            Actor::Iam("arn:aws:iam::123456789012:role/platform".into()),
            "served",
        );
        event.connection_version = Some(3);
        let line: serde_json::Value = serde_json::from_str(&audit_line(&event)).unwrap();
        assert_eq!(line["audit"]["act"], "token_served");
        assert_eq!(line["audit"]["actor"]["kind"], "iam");
        assert_eq!(line["audit"]["actor"]["id"], "arn:aws:iam::123456789012:role/platform");
        assert_eq!(line["audit"]["connection_version"], 3);
        assert_eq!(line["audit"]["at"], "1970-01-01T00:00:00Z");
        assert!(line["audit"].get("account").is_none());
    }
}
