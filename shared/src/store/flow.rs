//! The flow aggregate: a started sign-in waiting for Microsoft's redirect, as the table
//! holds it.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::domain::{ConnectionId, Origin};
use crate::state::StateKey;

use super::state_key;

/// A started flow, waiting for Microsoft's redirect.
#[derive(Debug, Clone)]
pub struct PendingFlow {
    pub connection_id: ConnectionId,
    pub origin: Origin,
    pub pkce_verifier: SecretString,
    /// Hex SHA-256 of the browser-binding nonce held in the cookie.
    pub browser_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// The AutoKitteh user who started the flow (AutoKitteh mode): the same user must finish
    /// it. Only the user id is kept, never the session.
    pub ak_user_id: Option<String>,
    /// The platform user the start grant named and who confirmed (standalone mode).
    pub platform_user: Option<String>,
    /// The connection's display name, as the start grant gave it (standalone mode).
    pub connection_name: Option<String>,
    /// The client id of the connection's own app the flow signs in through; `None` for the
    /// server-wide app. The redirect redeems the code as that same app.
    pub app_client_id: Option<String>,
    /// Set for an administrator's consent instead of a sign-in: the tenant it was asked
    /// for. Such a flow carries no token, so it is not bound to a browser (the link is meant
    /// to be passed to an administrator).
    pub admin_consent: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StateItem {
    pk: String,
    kind: String,
    connection_id: ConnectionId,
    origin: Origin,
    pkce_verifier: String,
    browser_hash: String,
    created_at: i64,
    expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ak_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connection_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app_client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_consent: Option<String>,
    /// Set once, by the consume that spent the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) consumed_by: Option<String>,
}

impl StateItem {
    pub(super) fn new(key: &StateKey, flow: &PendingFlow) -> Self {
        use secrecy::ExposeSecret;
        Self {
            pk: state_key(key),
            kind: "state".into(),
            connection_id: flow.connection_id.clone(),
            origin: flow.origin,
            pkce_verifier: flow.pkce_verifier.expose_secret().to_owned(),
            browser_hash: flow.browser_hash.clone(),
            created_at: flow.created_at,
            expires_at: flow.expires_at,
            ak_user_id: flow.ak_user_id.clone(),
            platform_user: flow.platform_user.clone(),
            connection_name: flow.connection_name.clone(),
            app_client_id: flow.app_client_id.clone(),
            admin_consent: flow.admin_consent.clone(),
            consumed_by: None,
        }
    }

    pub(super) fn into_flow(self) -> PendingFlow {
        PendingFlow {
            connection_id: self.connection_id,
            origin: self.origin,
            pkce_verifier: SecretString::from(self.pkce_verifier),
            browser_hash: self.browser_hash,
            created_at: self.created_at,
            expires_at: self.expires_at,
            ak_user_id: self.ak_user_id,
            platform_user: self.platform_user,
            app_client_id: self.app_client_id,
            admin_consent: self.admin_consent,
            connection_name: self.connection_name,
        }
    }
}
