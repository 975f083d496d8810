//! The app aggregate: a connection's own Entra app (`oauthPrivate`, `daemonApp`), its
//! non-secret part in the clear and its credential sealed.

use serde::{Deserialize, Serialize};

use crate::apps::AppSummary;
use crate::crypto::Sealed;
use crate::domain::ConnectionId;

/// A connection's own app, ready to be saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub connection_id: ConnectionId,
    #[serde(flatten)]
    pub summary: AppSummary,
    /// The client secret or certificate with its key, sealed under the credential purpose.
    pub credential_sealed: Sealed,
    pub updated_at: String,
    /// The credential this one replaced (same app), kept for a day: while Microsoft does not
    /// take a new secret or certificate yet, a refused sign-in or refresh tries it once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_credential_sealed: Option<Sealed>,
    /// Until when (RFC 3339) the previous credential may be tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_until: Option<String>,
}

/// An app as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredApp {
    #[serde(flatten)]
    pub app: AppRecord,
    pub version: u64,
}
