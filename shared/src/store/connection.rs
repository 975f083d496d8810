//! The connection aggregate: tokens (sealed) and vars of one AutoKitteh connection.

use serde::{Deserialize, Serialize};

use crate::crypto::Sealed;
use crate::domain::ConnectionId;

/// A connection's identity and vars, as AutoKitteh names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConnectionVars {
    pub oauth_token_type: String,
    pub oauth_expiry: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_principal_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_given_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_surname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_mail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_mobile_phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub org_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub org_display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub org_tenant_type: Option<String>,
}

/// A connection authorised through the flow, ready to be saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub connection_id: ConnectionId,
    pub auth_type: String,
    pub status: String,
    /// The Microsoft account's stable key: tenant id and object id.
    pub tenant_id: String,
    pub object_id: String,
    pub vars: ConnectionVars,
    /// `oauth_access_token` and `oauth_refresh_token`, sealed together.
    pub secrets: Sealed,
    pub updated_at: String,
    /// Why the connection needs a new sign-in (with `status = needs_reauth`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status_reason: Option<String>,
    /// Access-token expiry in epoch seconds. Not `expires_at`: that is the table's TTL
    /// attribute, and a connection must never expire.
    pub token_expires_at: i64,
    /// When the tokens were last obtained (sign-in or refresh), RFC 3339.
    pub last_refresh_at: String,
    /// When the refresher should renew the tokens next, epoch seconds.
    pub refresh_due_at: i64,
    /// The AutoKitteh user who made the connection inside an AutoKitteh deployment (its vars
    /// live there too, so refreshes and removals are written back).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub autokitteh_user_id: Option<String>,
    /// Scheduled refreshes failed in a row (0 after a success).
    #[serde(default)]
    pub refresh_failures: u32,
    /// Partition key of the refresh index; present only while the connection can refresh.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refresh_queue: Option<String>,
    /// The client id of the connection's own app (`oauthPrivate`, `daemonApp`) its tokens
    /// were issued to: refreshes must use that app.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub app_client_id: Option<String>,
    /// The scopes Microsoft granted the connection's tokens, space-separated, as its token
    /// response named them; every refresh asks for exactly these. Absent for connections
    /// saved before grants were recorded, and for daemon apps.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub granted_scopes: Option<String>,
    /// When the last refresh failed (RFC 3339), while no refresh has succeeded since; set by
    /// the store, never by a save. Readers within [`crate::tokens::REFRESH_COOLDOWN`] of it
    /// share that failure instead of calling Microsoft again.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refresh_failed_at: Option<String>,
    /// The failure class (and AADSTS code) of that failure, e.g. `transient` or
    /// `transient (AADSTS50000)`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refresh_failure: Option<String>,
}

/// A connection as read back, with the fields the store maintains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConnection {
    #[serde(flatten)]
    pub connection: Connection,
    pub version: u64,
    pub created_at: String,
}

/// What is still needed of a deleted connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Removed {
    /// Set for a connection made inside AutoKitteh (see [`Connection::autokitteh_user_id`]).
    #[serde(default)]
    pub autokitteh_user_id: Option<String>,
    /// The version the connection had when it was removed (for the audit trail).
    #[serde(default)]
    pub version: Option<u64>,
}

/// What a refresh writes.
#[derive(Debug, Clone)]
pub struct RefreshUpdate {
    pub secrets: Sealed,
    pub oauth_expiry: String,
    pub token_expires_at: i64,
    pub last_refresh_at: String,
    pub refresh_due_at: i64,
    /// The scopes of the new tokens, when Microsoft named them (else the stored ones stay).
    pub granted_scopes: Option<String>,
}

/// What a refresh that failed without ending the grant leaves on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshFailureMark {
    /// When it failed, RFC 3339.
    pub failed_at: String,
    /// Its failure class and code (see [`Connection::refresh_failure`]).
    pub failure: String,
    /// Until when (epoch seconds) the lease stays taken, so no other reader refreshes.
    pub cooldown_until: i64,
}
