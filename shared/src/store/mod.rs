//! The DynamoDB table: one-time flow state items (and used start grants) and connection
//! items. One module per aggregate, the DynamoDB store and its in-memory double apart.

use async_trait::async_trait;

use crate::domain::ConnectionId;
use crate::state::StateKey;

mod app;
mod connection;
mod dynamo;
mod flow;
mod shares;

#[cfg(any(test, feature = "testing"))]
pub use crate::testing::MemoryStore;
pub use app::{AppRecord, StoredApp};
pub use connection::{
    Connection, ConnectionVars, RefreshFailureMark, RefreshUpdate, Removed, StoredConnection,
};
pub use dynamo::DynamoStore;
pub use flow::PendingFlow;
pub use shares::{DynamoKeyShares, SHARE_PARTITION_KEY, SHARE_SORT_KEY};

/// Top-level attributes of a connection item that are absent when unset: a save that does
/// not set one must remove it, or a re-sign-in would keep the previous grant's value.
pub(crate) const OPTIONAL_CONNECTION_ATTRIBUTES: [&str; 7] = [
    "status_reason",
    "autokitteh_user_id",
    "refresh_queue",
    "app_client_id",
    "granted_scopes",
    "refresh_failed_at",
    "refresh_failure",
];

/// Attributes of an app item that are absent when unset (a certificate's facts, the
/// credential a new one replaced).
pub(crate) const OPTIONAL_APP_ATTRIBUTES: [&str; 5] = [
    "certificate_thumbprint",
    "certificate_thumbprint_sha256",
    "certificate_expires_at",
    "previous_credential_sealed",
    "previous_until",
];

/// Attribute holding the partition key of every item.
pub const KEY_ATTRIBUTE: &str = "pk";
/// Attribute DynamoDB TTL is configured on (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// `auth_type` of connections made with the server-wide app.
pub use crate::apps::AUTH_TYPE_DEFAULT;
/// Name of the sparse index of connections by refresh time.
pub const REFRESH_INDEX: &str = "refresh-due";
/// The one partition of the refresh index.
pub const REFRESH_QUEUE: &str = "due";
/// `status` of a usable connection.
pub const STATUS_OK: &str = "ok";
/// `status` of a connection whose grant is dead until the user signs in again.
pub const STATUS_NEEDS_REAUTH: &str = "needs_reauth";

/// Why a state could not be consumed. Only `Store` is a server fault.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("no pending sign-in matches this state")]
    NotFound,
    #[error("the pending sign-in expired")]
    Expired,
    #[error("the sign-in was started in a different browser")]
    WrongBrowser,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// DynamoDB failed or returned something we cannot read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DynamoDB {operation} failed")]
    Unavailable {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("DynamoDB item could not be mapped")]
    Mapping(#[from] serde_dynamo::Error),
    #[error("a pending sign-in with this state already exists")]
    Duplicate,
}

/// The persistence the flow needs. A seam so handlers can be unit-tested without DynamoDB.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records that the start grant with id `grant_id` was used; `Ok(false)` if it had been
    /// used before. The record lasts until `expires_at`, after which the grant is refused
    /// as expired anyway. Safe to retry after a lost answer.
    async fn spend_grant(&self, grant_id: &str, expires_at: i64) -> Result<bool, StoreError>;
    /// Whether the start grant with id `grant_id` was spent (a consistent read; it spends
    /// nothing, so a link scanner opening a link leaves it usable).
    async fn grant_spent(&self, grant_id: &str) -> Result<bool, StoreError>;
    /// Saves a new pending flow; fails if one already exists under `key`.
    async fn put_state(&self, key: &StateKey, flow: &PendingFlow) -> Result<(), StoreError>;
    /// Atomically spends and returns the pending flow, if it exists, has not expired at `now`,
    /// was started by the browser holding `browser_hash` and was not spent before. Safe to
    /// retry: a repeat of the same call (the SDK retrying after a lost answer) gets the flow
    /// again; any other call finds it spent.
    async fn consume_state(
        &self,
        key: &StateKey,
        browser_hash: &str,
        now: i64,
    ) -> Result<PendingFlow, ConsumeError>;
    /// Deletes a spent flow (its PKCE verifier is no longer needed); what it misses, TTL
    /// removes.
    async fn discard_state(&self, key: &StateKey) -> Result<(), StoreError>;
    /// Creates or replaces a connection's tokens and vars in one write.
    async fn save_connection(&self, connection: &Connection) -> Result<u64, StoreError>;
    /// Reads a connection.
    async fn get_connection(
        &self,
        id: &ConnectionId,
    ) -> Result<Option<StoredConnection>, StoreError>;
    /// Takes the refresh lease of a connection still at `version`, unless another holder's
    /// lease runs past `now`. `Ok(false)` when someone else holds it or the item changed.
    async fn acquire_lease(
        &self,
        id: &ConnectionId,
        version: u64,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Writes refreshed tokens if `owner` still holds the lease on `version`; releases the
    /// lease. `Ok(None)` when the lease was lost (nothing written).
    async fn save_refresh(
        &self,
        id: &ConnectionId,
        version: u64,
        owner: &str,
        update: &RefreshUpdate,
    ) -> Result<Option<u64>, StoreError>;
    /// Marks the connection as needing a new sign-in (if `owner` holds the lease) and takes
    /// it off the refresh index.
    async fn mark_needs_reauth(
        &self,
        id: &ConnectionId,
        owner: &str,
        reason: &str,
        now: &str,
    ) -> Result<bool, StoreError>;
    /// After a failed scheduled refresh: moves the next attempt to `due_at`, counting
    /// `failures` in a row, and leaves `mark` (the lease stays taken until its cooldown
    /// ends). `Ok(false)` when `owner` no longer held the lease.
    async fn postpone_refresh(
        &self,
        id: &ConnectionId,
        owner: &str,
        due_at: i64,
        failures: u32,
        mark: &RefreshFailureMark,
    ) -> Result<bool, StoreError>;
    /// After a refresh that failed without ending the grant: leaves `mark` on the connection
    /// and keeps the lease until its cooldown ends, so readers share the failure instead of
    /// each calling Microsoft. `Ok(false)` when `owner` no longer held the lease. Safe to
    /// repeat.
    async fn hold_after_failure(
        &self,
        id: &ConnectionId,
        owner: &str,
        mark: &RefreshFailureMark,
    ) -> Result<bool, StoreError>;
    /// Gives the lease back without writing tokens.
    async fn release_lease(&self, id: &ConnectionId, owner: &str) -> Result<(), StoreError>;
    /// Deletes the connection (tokens and all vars). `Ok(None)` if there was none.
    async fn delete_connection(&self, id: &ConnectionId) -> Result<Option<Removed>, StoreError>;
    /// Deletes a connection only while it is still at `version` (a sign-in taking back its
    /// own save after AutoKitteh refused its vars); `Ok(false)` when something newer is
    /// there. Safe to repeat after a lost answer.
    async fn withdraw_connection(
        &self,
        id: &ConnectionId,
        version: u64,
    ) -> Result<bool, StoreError>;
    /// Connections whose refresh is due at `now`, oldest first, at most `limit`.
    async fn due_connections(&self, now: i64, limit: i32) -> Result<Vec<ConnectionId>, StoreError>;
    /// Replaces a connection's sealed secrets (the same tokens sealed anew, under another key)
    /// if it is still at `version` and no refresh holds its lease at `now`: `Ok(Some(new
    /// version))`, or `Ok(None)` when it changed or is being refreshed (try it again later).
    /// Safe to repeat after a lost answer.
    async fn reseal_connection(
        &self,
        id: &ConnectionId,
        version: u64,
        secrets: &crate::crypto::Sealed,
        now: i64,
    ) -> Result<Option<u64>, StoreError>;
    /// One page of a walk over every connection, for operators (statistics, re-sealing):
    /// `after` is the cursor the page before returned (`None` to begin). The walk reads
    /// whole items; a page may hold fewer than `limit` (even none) and still not be the last.
    async fn connection_page(
        &self,
        after: Option<&str>,
        limit: i32,
    ) -> Result<ConnectionPage, StoreError>;
    /// Counts `connection` among the connections that failed one way (`signature`: tenant,
    /// class, code and time window) in the item `incident#<signature>`, kept until
    /// `expires_at`; returns how many distinct connections it holds, counting at most `cap`.
    /// Safe to repeat: a connection counts once.
    async fn count_failure(
        &self,
        signature: &str,
        connection: &ConnectionId,
        cap: u32,
        expires_at: i64,
    ) -> Result<u32, StoreError>;
    /// Marks the incident `signature` as reported; `true` for the one caller that did (a
    /// repeat of that same call after a lost answer included).
    async fn declare_incident(&self, signature: &str, at: i64) -> Result<bool, StoreError>;
    /// One page of a walk over every connection's own app, like [`Store::connection_page`].
    async fn app_page(&self, after: Option<&str>, limit: i32) -> Result<AppPage, StoreError>;
    /// Replaces an app's sealed credential (the same credential sealed anew) if the app is
    /// still at `version`: `Ok(Some(new version))`, or `Ok(None)` when it changed or is gone.
    /// Safe to repeat after a lost answer.
    async fn reseal_app(
        &self,
        id: &ConnectionId,
        version: u64,
        credential: &crate::crypto::Sealed,
    ) -> Result<Option<u64>, StoreError>;
    /// Creates or replaces a connection's own app; returns its new version.
    async fn save_app(&self, app: &AppRecord) -> Result<u64, StoreError>;
    /// Reads a connection's own app.
    async fn get_app(&self, id: &ConnectionId) -> Result<Option<StoredApp>, StoreError>;
    /// Deletes a connection's own app; `true` if there was one. Idempotent.
    async fn delete_app(&self, id: &ConnectionId) -> Result<bool, StoreError>;
}

/// A page of [`Store::connection_page`].
#[derive(Debug, Default)]
pub struct ConnectionPage {
    pub connections: Vec<StoredConnection>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<String>,
}

/// A page of [`Store::app_page`].
#[derive(Debug, Default)]
pub struct AppPage {
    pub apps: Vec<StoredApp>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<String>,
}

/// Key of a connection's app item.
pub fn app_key(id: &ConnectionId) -> String {
    format!("app#{id}")
}

/// Key of an incident item (see [`Store::count_failure`]).
pub fn incident_key(signature: &str) -> String {
    format!("incident#{signature}")
}

/// Key of a connection item.
pub fn connection_key(id: &ConnectionId) -> String {
    format!("conn#{id}")
}

/// Key of the item recording a used start grant: the hash of its id, so the key space is
/// uniform whatever ids the platform picks.
pub fn grant_key(grant_id: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("grant#{}", crate::state::hex(&Sha256::digest(grant_id.as_bytes())))
}

/// Key of a state item.
pub fn state_key(key: &StateKey) -> String {
    format!("state#{}", key.as_hex())
}

fn unavailable<E>(operation: &'static str) -> impl FnOnce(E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| StoreError::Unavailable { operation, source: Box::new(e) }
}

pub(crate) fn classify_failed_consume(flow: &PendingFlow, now: i64) -> ConsumeError {
    if flow.expires_at <= now { ConsumeError::Expired } else { ConsumeError::WrongBrowser }
}
