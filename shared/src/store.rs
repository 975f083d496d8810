//! The DynamoDB table: one-time flow state items and connection items.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::crypto::Sealed;
use crate::domain::{ConnectionId, Origin};
use crate::state::StateKey;

/// Attribute holding the partition key of every item.
pub const KEY_ATTRIBUTE: &str = "pk";
/// Attribute DynamoDB TTL is configured on (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// `auth_type` of connections made with the server-wide app.
pub const AUTH_TYPE_DEFAULT: &str = "oauthDefault";
/// Name of the sparse index of connections by refresh time.
pub const REFRESH_INDEX: &str = "refresh-due";
/// The one partition of the refresh index.
pub const REFRESH_QUEUE: &str = "due";
/// `status` of a usable connection.
pub const STATUS_OK: &str = "ok";
/// `status` of a connection whose grant is dead until the user signs in again.
pub const STATUS_NEEDS_REAUTH: &str = "needs_reauth";

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
}

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
    /// Partition key of the refresh index; present only while the connection can refresh.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refresh_queue: Option<String>,
}

/// A connection as read back, with the fields the store maintains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConnection {
    #[serde(flatten)]
    pub connection: Connection,
    pub version: u64,
    pub created_at: String,
}

/// The persistence the flow needs. A seam so handlers can be unit-tested without DynamoDB.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records that the start grant with id `grant_id` was used; `Ok(false)` if it had been
    /// used before. The record lasts until `expires_at`, after which the grant is refused
    /// as expired anyway. Safe to retry after a lost answer.
    async fn spend_grant(&self, grant_id: &str, expires_at: i64) -> Result<bool, StoreError>;
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
    /// Gives the lease back without writing tokens.
    async fn release_lease(&self, id: &ConnectionId, owner: &str) -> Result<(), StoreError>;
    /// Deletes the connection (tokens and all vars). `Ok(None)` if there was none.
    async fn delete_connection(&self, id: &ConnectionId) -> Result<Option<Removed>, StoreError>;
    /// Connections whose refresh is due at `now`, oldest first, at most `limit`.
    async fn due_connections(&self, now: i64, limit: i32) -> Result<Vec<ConnectionId>, StoreError>;
}

/// What is still needed of a deleted connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Removed {
    /// Set for a connection made inside AutoKitteh (see [`Connection::autokitteh_user_id`]).
    #[serde(default)]
    pub autokitteh_user_id: Option<String>,
}

/// What a refresh writes.
#[derive(Debug, Clone)]
pub struct RefreshUpdate {
    pub secrets: Sealed,
    pub oauth_expiry: String,
    pub token_expires_at: i64,
    pub last_refresh_at: String,
    pub refresh_due_at: i64,
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

#[derive(Debug, Serialize, Deserialize)]
struct StateItem {
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
    /// Set once, by the consume that spent the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consumed_by: Option<String>,
}

impl StateItem {
    fn new(key: &StateKey, flow: &PendingFlow) -> Self {
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
            consumed_by: None,
        }
    }

    fn into_flow(self) -> PendingFlow {
        PendingFlow {
            connection_id: self.connection_id,
            origin: self.origin,
            pkce_verifier: SecretString::from(self.pkce_verifier),
            browser_hash: self.browser_hash,
            created_at: self.created_at,
            expires_at: self.expires_at,
            ak_user_id: self.ak_user_id,
            platform_user: self.platform_user,
            connection_name: self.connection_name,
        }
    }
}

/// [`Store`] on a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    /// The table this store writes to.
    pub fn table(&self) -> &str {
        &self.table
    }
}

fn unavailable<E>(operation: &'static str) -> impl FnOnce(E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| StoreError::Unavailable { operation, source: Box::new(e) }
}

#[async_trait]
impl Store for DynamoStore {
    async fn spend_grant(&self, grant_id: &str, expires_at: i64) -> Result<bool, StoreError> {
        // The item carries a mark unique to this call: if the answer is lost and the SDK
        // sends the same request again, the retry matches its own mark and succeeds, where a
        // bare `attribute_not_exists` would call a first use a second one.
        let attempt = crate::state::attempt_id().map_err(|_| StoreError::Unavailable {
            operation: "PutItem",
            source: "no randomness for the grant mark".into(),
        })?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY_ATTRIBUTE, AttributeValue::S(grant_key(grant_id)))
            .item("kind", AttributeValue::S("grant".into()))
            .item("spent_by", AttributeValue::S(attempt.clone()))
            .item(TTL_ATTRIBUTE, AttributeValue::N(expires_at.to_string()))
            .condition_expression("attribute_not_exists(#pk) OR #by = :attempt")
            .expression_attribute_names("#pk", KEY_ATTRIBUTE)
            .expression_attribute_names("#by", "spent_by")
            .expression_attribute_values(":attempt", AttributeValue::S(attempt))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) => match e.into_service_error() {
                e if e.is_conditional_check_failed_exception() => Ok(false),
                e => Err(unavailable("PutItem")(e)),
            },
        }
    }

    async fn put_state(&self, key: &StateKey, flow: &PendingFlow) -> Result<(), StoreError> {
        let item = serde_dynamo::to_item(StateItem::new(key, flow))?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", KEY_ATTRIBUTE)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match e.into_service_error() {
                // The state is 256 random bits: an item already there is this very write,
                // applied by an attempt whose answer was lost and retried by the SDK.
                aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(failed)
                    if failed.item.as_ref().and_then(|i| i.get("browser_hash")).and_then(|v| v.as_s().ok())
                        == Some(&flow.browser_hash) =>
                {
                    Ok(())
                }
                e if e.is_conditional_check_failed_exception() => Err(StoreError::Duplicate),
                e => Err(unavailable("PutItem")(e)),
            },
        }
    }

    async fn consume_state(
        &self,
        key: &StateKey,
        browser_hash: &str,
        now: i64,
    ) -> Result<PendingFlow, ConsumeError> {
        // One request decides everything: a second consumer of the same state, a late
        // arrival after expiry (TTL deletion is lazy) or another browser all fail the
        // condition and leave the item as it was. The flow is marked spent rather than
        // deleted, with a mark unique to this call: if the answer is lost and the SDK sends
        // the same request again, the retry matches its own mark and gets the flow, where a
        // delete would have found nothing and failed a sign-in that had succeeded.
        let attempt = crate::state::attempt_id().map_err(|_| StoreError::Unavailable {
            operation: "UpdateItem",
            source: "no randomness for the consume mark".into(),
        })?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(state_key(key)))
            .update_expression("SET #by = :attempt, #exp = :now")
            .condition_expression(
                "attribute_exists(#pk) AND (#by = :attempt OR \
                 (attribute_not_exists(#by) AND #exp > :now AND #bh = :bh))",
            )
            .expression_attribute_names("#pk", KEY_ATTRIBUTE)
            .expression_attribute_names("#exp", TTL_ATTRIBUTE)
            .expression_attribute_names("#bh", "browser_hash")
            .expression_attribute_names("#by", "consumed_by")
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":bh", AttributeValue::S(browser_hash.to_owned()))
            .expression_attribute_values(":attempt", AttributeValue::S(attempt))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item = out.attributes.ok_or(ConsumeError::NotFound)?;
                let item: StateItem = serde_dynamo::from_item(item).map_err(StoreError::from)?;
                Ok(item.into_flow())
            }
            Err(e) => {
                let e = e.into_service_error();
                let aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(failed) = e else {
                    return Err(unavailable("UpdateItem")(e).into());
                };
                match failed.item {
                    None => Err(ConsumeError::NotFound),
                    Some(item) => {
                        let item: StateItem =
                            serde_dynamo::from_item(item).map_err(StoreError::from)?;
                        if item.consumed_by.is_some() {
                            return Err(ConsumeError::NotFound);
                        }
                        Err(classify_failed_consume(&item.into_flow(), now))
                    }
                }
            }
        }
    }

    async fn discard_state(&self, key: &StateKey) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(state_key(key)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("DeleteItem")(e.into_service_error()))
    }

    async fn save_connection(&self, connection: &Connection) -> Result<u64, StoreError> {
        let values: HashMap<String, AttributeValue> = serde_dynamo::to_item(connection)?;
        let mut names = HashMap::from([("#version".to_owned(), "version".to_owned())]);
        let mut attribute_values = HashMap::from([
            (":zero".to_owned(), AttributeValue::N("0".into())),
            (":one".to_owned(), AttributeValue::N("1".into())),
            (":kind".to_owned(), AttributeValue::S("connection".into())),
            (":created".to_owned(), AttributeValue::S(connection.updated_at.clone())),
        ]);
        // Every field is SET as a whole (vars included), so a reconnect with another account
        // leaves no stale value of the previous one behind.
        let mut sets = vec![
            "#version = if_not_exists(#version, :zero) + :one".to_owned(),
            "#kind = :kind".to_owned(),
            "#created = if_not_exists(#created, :created)".to_owned(),
        ];
        names.insert("#kind".into(), "kind".into());
        names.insert("#created".into(), "created_at".into());
        for (i, (name, value)) in values.into_iter().enumerate() {
            names.insert(format!("#a{i}"), name);
            attribute_values.insert(format!(":a{i}"), value);
            sets.push(format!("#a{i} = :a{i}"));
        }
        // A new sign-in clears what the previous grant left: a re-auth reason and any lease.
        let mut removes = vec!["#lease_owner".to_owned(), "#lease_until".to_owned()];
        names.insert("#lease_owner".into(), "lease_owner".into());
        names.insert("#lease_until".into(), "lease_until".into());
        if connection.status_reason.is_none() {
            removes.push("#status_reason".into());
            names.insert("#status_reason".into(), "status_reason".into());
        }
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(connection_key(&connection.connection_id)))
            .update_expression(format!("SET {} REMOVE {}", sets.join(", "), removes.join(", ")))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(attribute_values))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| unavailable("UpdateItem")(e.into_service_error()))?;
        let version = out
            .attributes
            .and_then(|a| a.get("version").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()))
            .unwrap_or(1);
        Ok(version)
    }

    async fn get_connection(
        &self,
        id: &ConnectionId,
    ) -> Result<Option<StoredConnection>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(connection_key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem")(e.into_service_error()))?;
        out.item.map(serde_dynamo::from_item).transpose().map_err(StoreError::from)
    }

    async fn acquire_lease(
        &self,
        id: &ConnectionId,
        version: u64,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(connection_key(id)))
            .update_expression("SET lease_owner = :owner, lease_until = :until")
            // The owner is unique to this call: a repeat of it after a lost answer finds its
            // own lease and gets it, instead of waiting out a lease nobody holds.
            .condition_expression(
                "version = :version AND (attribute_not_exists(lease_until) OR lease_until < :now \
                 OR lease_owner = :owner)",
            )
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(":until", AttributeValue::N(until.to_string()))
            .expression_attribute_values(":version", AttributeValue::N(version.to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .send()
            .await;
        conditional(result.map(drop), "UpdateItem")
    }

    async fn save_refresh(
        &self,
        id: &ConnectionId,
        version: u64,
        owner: &str,
        update: &RefreshUpdate,
    ) -> Result<Option<u64>, StoreError> {
        let secrets = serde_dynamo::to_attribute_value(&update.secrets)?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(connection_key(id)))
            .update_expression(
                "SET secrets = :secrets, vars.oauth_expiry = :expiry, token_expires_at = :exp, \
                 last_refresh_at = :at, updated_at = :at, refresh_due_at = :due, \
                 version = version + :one, written_by = :owner REMOVE lease_owner, lease_until",
            )
            .condition_expression("lease_owner = :owner AND version = :version")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .expression_attribute_values(":secrets", secrets)
            .expression_attribute_values(":expiry", AttributeValue::S(update.oauth_expiry.clone()))
            .expression_attribute_values(
                ":exp",
                AttributeValue::N(update.token_expires_at.to_string()),
            )
            .expression_attribute_values(":at", AttributeValue::S(update.last_refresh_at.clone()))
            .expression_attribute_values(
                ":due",
                AttributeValue::N(update.refresh_due_at.to_string()),
            )
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(":version", AttributeValue::N(version.to_string()))
            .send()
            .await;
        Ok(written_by_us(result, owner, version + 1, "UpdateItem")?.then_some(version + 1))
    }

    async fn mark_needs_reauth(
        &self,
        id: &ConnectionId,
        owner: &str,
        reason: &str,
        now: &str,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(connection_key(id)))
            .update_expression(
                "SET #status = :status, status_reason = :reason, updated_at = :now, \
                 version = version + :one, written_by = :owner \
                 REMOVE refresh_queue, lease_owner, lease_until",
            )
            .condition_expression("lease_owner = :owner")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", AttributeValue::S(STATUS_NEEDS_REAUTH.into()))
            .expression_attribute_values(":reason", AttributeValue::S(reason.to_owned()))
            .expression_attribute_values(":now", AttributeValue::S(now.to_owned()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_owned()))
            .send()
            .await;
        written_by_us(result, owner, 0, "UpdateItem")
    }

    async fn release_lease(&self, id: &ConnectionId, owner: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(connection_key(id)))
            .update_expression("REMOVE lease_owner, lease_until")
            .condition_expression("lease_owner = :owner")
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_owned()))
            .send()
            .await;
        conditional(result.map(drop), "UpdateItem").map(drop)
    }

    async fn delete_connection(&self, id: &ConnectionId) -> Result<Option<Removed>, StoreError> {
        // Read first: if the delete's answer is lost and the SDK repeats it, the repeat finds
        // nothing, and without this read the disconnect would look like one of a connection
        // that never existed (no event, no write-back).
        let before = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(connection_key(id)))
            .projection_expression("#pk, autokitteh_user_id")
            .expression_attribute_names("#pk", KEY_ATTRIBUTE)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem")(e.into_service_error()))?
            .item
            .map(|item| serde_dynamo::from_item::<_, Removed>(item).unwrap_or_default());
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(connection_key(id)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| unavailable("DeleteItem")(e.into_service_error()))?;
        // The item is gone either way: an old item we cannot read is still a removal.
        let deleted = out.attributes.map(|item| serde_dynamo::from_item(item).unwrap_or_default());
        Ok(deleted.or(before))
    }

    async fn due_connections(&self, now: i64, limit: i32) -> Result<Vec<ConnectionId>, StoreError> {
        #[derive(Deserialize)]
        struct Due {
            connection_id: ConnectionId,
        }
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(REFRESH_INDEX)
            .key_condition_expression("refresh_queue = :queue AND refresh_due_at <= :now")
            .expression_attribute_values(":queue", AttributeValue::S(REFRESH_QUEUE.into()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .limit(limit)
            .send()
            .await
            .map_err(|e| unavailable("Query")(e.into_service_error()))?;
        let items: Vec<Due> = serde_dynamo::from_items(out.items.unwrap_or_default())?;
        Ok(items.into_iter().map(|d| d.connection_id).collect())
    }
}

/// Like [`conditional`] for a write that records `written_by = owner`: when its condition
/// fails because an earlier attempt of the same call was applied (its answer lost, the SDK
/// repeating it), the item shows our mark, and the write counts as done. `version`, when
/// not 0, must also match what that write left.
fn written_by_us(
    result: Result<
        aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
        aws_sdk_dynamodb::error::SdkError<
            aws_sdk_dynamodb::operation::update_item::UpdateItemError,
            aws_sdk_dynamodb::config::http::HttpResponse,
        >,
    >,
    owner: &str,
    version: u64,
    operation: &'static str,
) -> Result<bool, StoreError> {
    match result {
        Ok(_) => Ok(true),
        Err(e) => match e.into_service_error() {
            aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(failed) => {
                let item = failed.item.unwrap_or_default();
                let ours = item.get("written_by").and_then(|v| v.as_s().ok()).is_some_and(|by| by == owner);
                let same_version = version == 0
                    || item.get("version").and_then(|v| v.as_n().ok()).is_some_and(|n| *n == version.to_string());
                Ok(ours && same_version)
            }
            e => Err(unavailable(operation)(e)),
        },
    }
}

/// `Ok(true)` on success, `Ok(false)` when the condition failed, an error otherwise.
fn conditional(
    result: Result<
        (),
        aws_sdk_dynamodb::error::SdkError<
            aws_sdk_dynamodb::operation::update_item::UpdateItemError,
            aws_sdk_dynamodb::config::http::HttpResponse,
        >,
    >,
    operation: &'static str,
) -> Result<bool, StoreError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) => {
            let e = e.into_service_error();
            if e.is_conditional_check_failed_exception() {
                Ok(false)
            } else {
                Err(unavailable(operation)(e))
            }
        }
    }
}

fn classify_failed_consume(flow: &PendingFlow, now: i64) -> ConsumeError {
    if flow.expires_at <= now { ConsumeError::Expired } else { ConsumeError::WrongBrowser }
}

/// In-memory [`Store`] with the same semantics, for unit tests.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct MemoryStore {
    grants: Mutex<HashMap<String, i64>>,
    states: Mutex<HashMap<String, PendingFlow>>,
    connections: Mutex<HashMap<String, StoredConnection>>,
    leases: Mutex<HashMap<String, (String, i64)>>,
}

impl MemoryStore {
    /// Number of pending flows.
    pub fn pending(&self) -> usize {
        self.states.lock().map(|s| s.len()).unwrap_or(0)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn spend_grant(&self, grant_id: &str, expires_at: i64) -> Result<bool, StoreError> {
        let mut grants = self.grants.lock().map_err(|_| poisoned())?;
        Ok(grants.insert(grant_key(grant_id), expires_at).is_none())
    }

    async fn put_state(&self, key: &StateKey, flow: &PendingFlow) -> Result<(), StoreError> {
        let mut states = self.states.lock().map_err(|_| poisoned())?;
        if states.contains_key(&state_key(key)) {
            return Err(StoreError::Duplicate);
        }
        states.insert(state_key(key), flow.clone());
        Ok(())
    }

    async fn consume_state(
        &self,
        key: &StateKey,
        browser_hash: &str,
        now: i64,
    ) -> Result<PendingFlow, ConsumeError> {
        let mut states = self.states.lock().map_err(|_| poisoned())?;
        let flow = states.get(&state_key(key)).ok_or(ConsumeError::NotFound)?;
        if flow.expires_at <= now
            || !crate::state::constant_time_eq(&flow.browser_hash, browser_hash)
        {
            return Err(classify_failed_consume(flow, now));
        }
        states.remove(&state_key(key)).ok_or(ConsumeError::NotFound)
    }

    async fn discard_state(&self, key: &StateKey) -> Result<(), StoreError> {
        // `consume_state` already removed it: nothing here retries a lost answer.
        self.states.lock().map_err(|_| poisoned())?.remove(&state_key(key));
        Ok(())
    }

    async fn save_connection(&self, connection: &Connection) -> Result<u64, StoreError> {
        let mut connections = self.connections.lock().map_err(|_| poisoned())?;
        let key = connection_key(&connection.connection_id);
        let (version, created_at) = match connections.get(&key) {
            Some(old) => (old.version + 1, old.created_at.clone()),
            None => (1, connection.updated_at.clone()),
        };
        connections
            .insert(key, StoredConnection { connection: connection.clone(), version, created_at });
        Ok(version)
    }

    async fn get_connection(
        &self,
        id: &ConnectionId,
    ) -> Result<Option<StoredConnection>, StoreError> {
        let connections = self.connections.lock().map_err(|_| poisoned())?;
        Ok(connections.get(&connection_key(id)).cloned())
    }

    async fn acquire_lease(
        &self,
        id: &ConnectionId,
        version: u64,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let connections = self.connections.lock().map_err(|_| poisoned())?;
        let mut leases = self.leases.lock().map_err(|_| poisoned())?;
        let key = connection_key(id);
        let current = connections.get(&key).map(|c| c.version);
        let free = leases
            .get(&key)
            .is_none_or(|(holder, held_until)| *held_until < now || holder == owner);
        if current == Some(version) && free {
            leases.insert(key, (owner.to_owned(), until));
            return Ok(true);
        }
        Ok(false)
    }

    async fn save_refresh(
        &self,
        id: &ConnectionId,
        version: u64,
        owner: &str,
        update: &RefreshUpdate,
    ) -> Result<Option<u64>, StoreError> {
        let mut connections = self.connections.lock().map_err(|_| poisoned())?;
        let mut leases = self.leases.lock().map_err(|_| poisoned())?;
        let key = connection_key(id);
        let holds = leases.get(&key).is_some_and(|(o, _)| o == owner);
        match connections.get_mut(&key) {
            Some(stored) if holds && stored.version == version => {
                let c = &mut stored.connection;
                c.secrets = update.secrets.clone();
                c.vars.oauth_expiry = update.oauth_expiry.clone();
                c.token_expires_at = update.token_expires_at;
                c.last_refresh_at = update.last_refresh_at.clone();
                c.updated_at = update.last_refresh_at.clone();
                c.refresh_due_at = update.refresh_due_at;
                stored.version += 1;
                leases.remove(&key);
                Ok(Some(stored.version))
            }
            _ => Ok(None),
        }
    }

    async fn mark_needs_reauth(
        &self,
        id: &ConnectionId,
        owner: &str,
        reason: &str,
        now: &str,
    ) -> Result<bool, StoreError> {
        let mut connections = self.connections.lock().map_err(|_| poisoned())?;
        let mut leases = self.leases.lock().map_err(|_| poisoned())?;
        let key = connection_key(id);
        if leases.get(&key).is_none_or(|(o, _)| o != owner) {
            return Ok(false);
        }
        let Some(stored) = connections.get_mut(&key) else { return Ok(false) };
        stored.connection.status = STATUS_NEEDS_REAUTH.to_owned();
        stored.connection.status_reason = Some(reason.to_owned());
        stored.connection.refresh_queue = None;
        stored.connection.updated_at = now.to_owned();
        stored.version += 1;
        leases.remove(&key);
        Ok(true)
    }

    async fn release_lease(&self, id: &ConnectionId, owner: &str) -> Result<(), StoreError> {
        let mut leases = self.leases.lock().map_err(|_| poisoned())?;
        let key = connection_key(id);
        if leases.get(&key).is_some_and(|(o, _)| o == owner) {
            leases.remove(&key);
        }
        Ok(())
    }

    async fn delete_connection(&self, id: &ConnectionId) -> Result<Option<Removed>, StoreError> {
        let mut connections = self.connections.lock().map_err(|_| poisoned())?;
        Ok(connections
            .remove(&connection_key(id))
            .map(|old| Removed { autokitteh_user_id: old.connection.autokitteh_user_id }))
    }

    async fn due_connections(&self, now: i64, limit: i32) -> Result<Vec<ConnectionId>, StoreError> {
        let connections = self.connections.lock().map_err(|_| poisoned())?;
        let mut due: Vec<_> = connections
            .values()
            .filter(|c| c.connection.refresh_queue.is_some() && c.connection.refresh_due_at <= now)
            .map(|c| (c.connection.refresh_due_at, c.connection.connection_id.clone()))
            .collect();
        due.sort_by_key(|(at, _)| *at);
        Ok(due.into_iter().take(usize::try_from(limit).unwrap_or(0)).map(|(_, id)| id).collect())
    }
}

fn poisoned() -> StoreError {
    StoreError::Unavailable { operation: "memory", source: "lock poisoned".into() }
}
