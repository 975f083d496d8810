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
}

/// An app as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredApp {
    #[serde(flatten)]
    pub app: AppRecord,
    pub version: u64,
}
