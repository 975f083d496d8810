//! [`Store`] on a DynamoDB table.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use serde::Deserialize;

use super::flow::StateItem;
use super::*;

/// [`Store`] on a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoStore {
    /// Leaves `mark` on a connection whose lease `owner` holds, the lease held until the
    /// cooldown ends, with `also` set beside it. The owner is unique to the call, so a repeat
    /// after a lost answer writes the same values again.
    async fn mark_failure(
        &self,
        id: &ConnectionId,
        owner: &str,
        mark: &RefreshFailureMark,
        also: &[(&str, AttributeValue)],
    ) -> Result<bool, StoreError> {
        let extra: String = also.iter().map(|(name, _)| format!(", {name} = :{name}")).collect();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(connection_key(id)))
            .update_expression(format!(
                "SET lease_until = :until, refresh_failed_at = :at, refresh_failure = :failure{extra}"
            ))
            .condition_expression("lease_owner = :owner")
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(
                ":until",
                AttributeValue::N(mark.cooldown_until.to_string()),
            )
            .expression_attribute_values(":at", AttributeValue::S(mark.failed_at.clone()))
            .expression_attribute_values(":failure", AttributeValue::S(mark.failure.clone()));
        for (name, value) in also {
            request = request.expression_attribute_values(format!(":{name}"), value.clone());
        }
        conditional(request.send().await.map(drop), "UpdateItem")
    }
    /// Replaces the sealed value `attribute` of the item `key` if it is still at `version`
    /// (and, with `unleased_at`, no refresh holds its lease then), bumping the version. The
    /// write carries a mark of this call, so its own repeat after a lost answer succeeds.
    async fn reseal_item(
        &self,
        key: String,
        attribute: &str,
        sealed: &crate::crypto::Sealed,
        version: u64,
        unleased_at: Option<i64>,
    ) -> Result<Option<u64>, StoreError> {
        let attempt = crate::state::attempt_id().map_err(|_| StoreError::Unavailable {
            operation: "UpdateItem",
            source: "no randomness for the reseal mark".into(),
        })?;
        let mut condition = "version = :version".to_owned();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(key))
            .update_expression("SET #sealed = :sealed, version = version + :one, written_by = :by")
            .expression_attribute_names("#sealed", attribute)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .expression_attribute_values(":sealed", serde_dynamo::to_attribute_value(sealed)?)
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":by", AttributeValue::S(attempt.clone()))
            .expression_attribute_values(":version", AttributeValue::N(version.to_string()));
        if let Some(now) = unleased_at {
            condition.push_str(" AND (attribute_not_exists(lease_until) OR lease_until < :now)");
            update = update.expression_attribute_values(":now", AttributeValue::N(now.to_string()));
        }
        let result = update.condition_expression(condition).send().await;
        Ok(written_by_us(result, &attempt, version + 1, "UpdateItem")?.then_some(version + 1))
    }

    /// One page of a scan over the items whose key starts with `prefix`, read as `T`, and
    /// the key to resume after.
    async fn scan_page<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: i32,
    ) -> Result<(Vec<T>, Option<String>), StoreError> {
        let mut scan = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(#pk, :prefix)")
            .expression_attribute_names("#pk", KEY_ATTRIBUTE)
            .expression_attribute_values(":prefix", AttributeValue::S(prefix.into()))
            .limit(limit);
        if let Some(after) = after {
            scan = scan.exclusive_start_key(KEY_ATTRIBUTE, AttributeValue::S(after.to_owned()));
        }
        let out = scan.send().await.map_err(|e| unavailable("Scan")(e.into_service_error()))?;
        let items = serde_dynamo::from_items(out.items.unwrap_or_default())?;
        let next = out
            .last_evaluated_key
            .and_then(|mut key| key.remove(KEY_ATTRIBUTE))
            .and_then(|key| key.as_s().ok().cloned());
        Ok((items, next))
    }

    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    /// The table this store writes to.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Applies `upsert` to the item `key`; the item's new version.
    async fn write(&self, key: String, upsert: Upsert) -> Result<u64, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(key))
            .update_expression(upsert.expression())
            .set_expression_attribute_names(Some(upsert.names))
            .set_expression_attribute_values(Some(upsert.values))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| unavailable("UpdateItem")(e.into_service_error()))?;
        Ok(out
            .attributes
            .and_then(|a| a.get("version").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()))
            .unwrap_or(1))
    }

    /// One item by its key, read consistently.
    async fn read_item<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
    ) -> Result<Option<T>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem")(e.into_service_error()))?;
        out.item.map(serde_dynamo::from_item).transpose().map_err(StoreError::from)
    }
}

/// A whole-item save as one `UpdateItem`: every attribute of a record SET, its `kind`, its
/// `version` incremented, and the optional attributes the record leaves unset REMOVEd, so a
/// save is the same whether the item existed or not, and safe to repeat.
struct Upsert {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    sets: Vec<String>,
    removes: Vec<String>,
}

impl Upsert {
    fn new<T: serde::Serialize>(
        kind: &str,
        record: &T,
        optional: &[&str],
    ) -> Result<Self, StoreError> {
        let item: HashMap<String, AttributeValue> = serde_dynamo::to_item(record)?;
        let mut upsert = Self {
            names: HashMap::from([
                ("#version".to_owned(), "version".to_owned()),
                ("#kind".to_owned(), "kind".to_owned()),
            ]),
            values: HashMap::from([
                (":zero".to_owned(), AttributeValue::N("0".into())),
                (":one".to_owned(), AttributeValue::N("1".into())),
                (":kind".to_owned(), AttributeValue::S(kind.to_owned())),
            ]),
            sets: vec![
                "#version = if_not_exists(#version, :zero) + :one".to_owned(),
                "#kind = :kind".to_owned(),
            ],
            removes: Vec::new(),
        };
        for name in optional.iter().filter(|name| !item.contains_key(**name)) {
            upsert.remove(name);
        }
        for (i, (name, value)) in item.into_iter().enumerate() {
            upsert.names.insert(format!("#a{i}"), name);
            upsert.values.insert(format!(":a{i}"), value);
            upsert.sets.push(format!("#a{i} = :a{i}"));
        }
        Ok(upsert)
    }

    /// Sets `name` only when the item has no value for it yet.
    fn set_once(&mut self, name: &str, value: AttributeValue) {
        let n = self.sets.len();
        self.names.insert(format!("#s{n}"), name.to_owned());
        self.values.insert(format!(":s{n}"), value);
        self.sets.push(format!("#s{n} = if_not_exists(#s{n}, :s{n})"));
    }

    fn remove(&mut self, name: &str) {
        let n = self.removes.len();
        self.names.insert(format!("#r{n}"), name.to_owned());
        self.removes.push(format!("#r{n}"));
    }

    fn expression(&self) -> String {
        match self.removes.is_empty() {
            true => format!("SET {}", self.sets.join(", ")),
            false => format!("SET {} REMOVE {}", self.sets.join(", "), self.removes.join(", ")),
        }
    }
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

    async fn grant_spent(&self, grant_id: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(grant_key(grant_id)))
            .consistent_read(true)
            .projection_expression("#pk")
            .expression_attribute_names("#pk", KEY_ATTRIBUTE)
            .send()
            .await
            .map_err(|e| unavailable("GetItem")(e.into_service_error()))?;
        Ok(out.item.is_some_and(|item| !item.is_empty()))
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
        // Every field is SET as a whole (vars included), so a reconnect with another account
        // leaves no stale value of the previous one behind; and whatever optional attribute
        // this save does not set (a re-auth reason, the AutoKitteh user of a connection now
        // made outside AutoKitteh, a refresh queue) is removed.
        let mut upsert = Upsert::new("connection", connection, &OPTIONAL_CONNECTION_ATTRIBUTES)?;
        upsert.set_once("created_at", AttributeValue::S(connection.updated_at.clone()));
        // A new sign-in clears what the previous grant left: any lease.
        upsert.remove("lease_owner");
        upsert.remove("lease_until");
        self.write(connection_key(&connection.connection_id), upsert).await
    }

    async fn get_connection(
        &self,
        id: &ConnectionId,
    ) -> Result<Option<StoredConnection>, StoreError> {
        self.read_item(connection_key(id)).await
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
        // A refresh that names its scopes records them; one that does not keeps the grant's.
        let scopes =
            if update.granted_scopes.is_some() { ", granted_scopes = :scopes" } else { "" };
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(connection_key(id)))
            .update_expression(format!(
                "SET secrets = :secrets, vars.oauth_expiry = :expiry, token_expires_at = :exp, \
                 last_refresh_at = :at, updated_at = :at, refresh_due_at = :due, \
                 refresh_failures = :zero, version = version + :one, written_by = :owner{scopes} \
                 REMOVE lease_owner, lease_until, refresh_failed_at, refresh_failure"
            ))
            .condition_expression("lease_owner = :owner AND version = :version")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
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
            .expression_attribute_values(":version", AttributeValue::N(version.to_string()));
        if let Some(granted) = &update.granted_scopes {
            request =
                request.expression_attribute_values(":scopes", AttributeValue::S(granted.clone()));
        }
        let result = request.send().await;
        Ok(written_by_us(result, owner, version + 1, "UpdateItem")?.then_some(version + 1))
    }

    async fn reseal_connection(
        &self,
        id: &ConnectionId,
        version: u64,
        secrets: &crate::crypto::Sealed,
        now: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.reseal_item(connection_key(id), "secrets", secrets, version, Some(now)).await
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

    async fn postpone_refresh(
        &self,
        id: &ConnectionId,
        owner: &str,
        due_at: i64,
        failures: u32,
        mark: &RefreshFailureMark,
    ) -> Result<bool, StoreError> {
        let schedule = [
            ("refresh_due_at", AttributeValue::N(due_at.to_string())),
            ("refresh_failures", AttributeValue::N(failures.to_string())),
        ];
        self.mark_failure(id, owner, mark, &schedule).await
    }

    async fn hold_after_failure(
        &self,
        id: &ConnectionId,
        owner: &str,
        mark: &RefreshFailureMark,
    ) -> Result<bool, StoreError> {
        self.mark_failure(id, owner, mark, &[]).await
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
            .projection_expression("#pk, autokitteh_user_id, version")
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

    async fn withdraw_connection(
        &self,
        id: &ConnectionId,
        version: u64,
    ) -> Result<bool, StoreError> {
        // Gone already counts as withdrawn: a repeat after a lost answer finds nothing.
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(connection_key(id)))
            .condition_expression("attribute_not_exists(#pk) OR #v = :v")
            .expression_attribute_names("#pk", KEY_ATTRIBUTE)
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) => match e.into_service_error() {
                e if e.is_conditional_check_failed_exception() => Ok(false),
                e => Err(unavailable("DeleteItem")(e)),
            },
        }
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

    async fn connection_page(
        &self,
        after: Option<&str>,
        limit: i32,
    ) -> Result<ConnectionPage, StoreError> {
        let (connections, next) = self.scan_page("conn#", after, limit).await?;
        Ok(ConnectionPage { connections, next })
    }

    async fn app_page(&self, after: Option<&str>, limit: i32) -> Result<AppPage, StoreError> {
        let (apps, next) = self.scan_page("app#", after, limit).await?;
        Ok(AppPage { apps, next })
    }

    async fn reseal_app(
        &self,
        id: &ConnectionId,
        version: u64,
        credential: &crate::crypto::Sealed,
    ) -> Result<Option<u64>, StoreError> {
        self.reseal_item(app_key(id), "credential_sealed", credential, version, None).await
    }

    async fn count_failure(
        &self,
        signature: &str,
        connection: &ConnectionId,
        cap: u32,
        expires_at: i64,
    ) -> Result<u32, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(incident_key(signature)))
            .update_expression(
                "ADD #conns :one SET #kind = :kind, #exp = if_not_exists(#exp, :exp)",
            )
            .condition_expression(
                "attribute_not_exists(#conns) OR size(#conns) < :cap OR contains(#conns, :id)",
            )
            .expression_attribute_names("#conns", "connections")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#exp", TTL_ATTRIBUTE)
            .expression_attribute_values(":one", AttributeValue::Ss(vec![connection.to_string()]))
            .expression_attribute_values(":id", AttributeValue::S(connection.to_string()))
            .expression_attribute_values(":kind", AttributeValue::S("incident".into()))
            .expression_attribute_values(":exp", AttributeValue::N(expires_at.to_string()))
            .expression_attribute_values(":cap", AttributeValue::N(cap.to_string()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                let held = out.attributes.as_ref().and_then(|a| a.get("connections"));
                let count = held.and_then(|c| c.as_ss().ok()).map_or(0, Vec::len);
                Ok(u32::try_from(count).unwrap_or(u32::MAX))
            }
            Err(e) => match e.into_service_error() {
                // Full: the incident holds `cap` connections already.
                e if e.is_conditional_check_failed_exception() => Ok(cap),
                e => Err(unavailable("UpdateItem")(e)),
            },
        }
    }

    async fn declare_incident(&self, signature: &str, at: i64) -> Result<bool, StoreError> {
        // As with grants: a mark of this call lets its own repeat succeed, and no other.
        let attempt = crate::state::attempt_id().map_err(|_| StoreError::Unavailable {
            operation: "UpdateItem",
            source: "no randomness for the incident mark".into(),
        })?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(incident_key(signature)))
            .update_expression("SET #by = :attempt, declared_at = :at")
            .condition_expression(
                "attribute_exists(#pk) AND (attribute_not_exists(#by) OR #by = :attempt)",
            )
            .expression_attribute_names("#pk", KEY_ATTRIBUTE)
            .expression_attribute_names("#by", "declared_by")
            .expression_attribute_values(":attempt", AttributeValue::S(attempt))
            .expression_attribute_values(":at", AttributeValue::N(at.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) => match e.into_service_error() {
                e if e.is_conditional_check_failed_exception() => Ok(false),
                e => Err(unavailable("UpdateItem")(e)),
            },
        }
    }

    async fn save_app(&self, app: &AppRecord) -> Result<u64, StoreError> {
        // A secret replacing a certificate leaves none of the certificate's facts behind.
        let upsert = Upsert::new("app", app, &OPTIONAL_APP_ATTRIBUTES)?;
        self.write(app_key(&app.connection_id), upsert).await
    }

    async fn get_app(&self, id: &ConnectionId) -> Result<Option<StoredApp>, StoreError> {
        self.read_item(app_key(id)).await
    }

    async fn delete_app(&self, id: &ConnectionId) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(app_key(id)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| unavailable("DeleteItem")(e.into_service_error()))?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
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
