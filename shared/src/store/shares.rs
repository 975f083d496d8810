//! [`KeyShares`] on a DynamoDB table of their own (`KEY_SHARES_TABLE_NAME`): partition key
//! `connection_id`, sort key `share_id`. The table has no point-in-time recovery and is
//! kept out of backups, so a deleted share is gone for good (see [`crate::crypto`]).

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, KeyShares, Share};

/// Partition key of the share table.
pub const SHARE_PARTITION_KEY: &str = "connection_id";
/// Sort key of the share table.
pub const SHARE_SORT_KEY: &str = "share_id";

/// One item of the share table.
#[derive(Serialize, Deserialize)]
struct ShareItem {
    connection_id: String,
    share_id: String,
    #[serde(with = "serde_bytes")]
    share: Vec<u8>,
}

/// [`KeyShares`] on DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoKeyShares {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoKeyShares {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    fn key(connection_id: &str, share_id: &str) -> [(String, AttributeValue); 2] {
        [
            (SHARE_PARTITION_KEY.to_owned(), AttributeValue::S(connection_id.to_owned())),
            (SHARE_SORT_KEY.to_owned(), AttributeValue::S(share_id.to_owned())),
        ]
    }
}

fn failed<E>(operation: &'static str) -> impl FnOnce(E) -> CryptoError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| {
        CryptoError::Shares(format!("DynamoDB {operation}: {}", crate::error::chain(&e)).into())
    }
}

#[async_trait]
impl KeyShares for DynamoKeyShares {
    async fn put(&self, connection_id: &str, share: &Share) -> Result<(), CryptoError> {
        let item = ShareItem {
            connection_id: connection_id.to_owned(),
            share_id: share.id.clone(),
            share: share.secret().to_vec(),
        };
        let item = serde_dynamo::to_item(item).map_err(failed("PutItem"))?;
        // The same share written twice is the same item: a repeat after a lost answer is safe.
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| failed("PutItem")(e.into_service_error()))?;
        Ok(())
    }

    async fn get(&self, connection_id: &str, share_id: &str) -> Result<Option<Share>, CryptoError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(connection_id, share_id).into_iter().collect()))
            // A share is written just before the value that names it.
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed("GetItem")(e.into_service_error()))?;
        let Some(item) = out.item else { return Ok(None) };
        let item: ShareItem = serde_dynamo::from_item(item).map_err(failed("GetItem"))?;
        if item.connection_id != connection_id || item.share_id != share_id {
            return Err(CryptoError::Integrity);
        }
        Share::from_parts(item.share_id, item.share).map(Some)
    }

    async fn destroy(&self, connection_id: &str, share_id: &str) -> Result<(), CryptoError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(connection_id, share_id).into_iter().collect()))
            .send()
            .await
            .map_err(|e| failed("DeleteItem")(e.into_service_error()))?;
        Ok(())
    }

    async fn shred(&self, connection_id: &str, keep: Option<&str>) -> Result<usize, CryptoError> {
        let mut ids = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#c = :c")
                .expression_attribute_names("#c", SHARE_PARTITION_KEY)
                .expression_attribute_names("#s", SHARE_SORT_KEY)
                .expression_attribute_values(":c", AttributeValue::S(connection_id.to_owned()))
                .projection_expression("#s")
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| failed("Query")(e.into_service_error()))?;
            for item in out.items.unwrap_or_default() {
                if let Some(AttributeValue::S(id)) = item.get(SHARE_SORT_KEY)
                    && Some(id.as_str()) != keep
                {
                    ids.push(id.clone());
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        // A connection has one share, two for a moment after a new sign-in, a few more only
        // after sign-ins that failed before their write: deleted one by one, at once.
        let deletes = ids.iter().map(|id| async move {
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(Self::key(connection_id, id).into_iter().collect()))
                .send()
                .await
                .map_err(|e| failed("DeleteItem")(e.into_service_error()))
        });
        for result in futures::future::join_all(deletes).await {
            result?;
        }
        Ok(ids.len())
    }
}
