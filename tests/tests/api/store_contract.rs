//! The store contract (`ms_oauth::testing::store_contract`) against DynamoDB on the emulator:
//! the same suite the in-memory double passes in the library's unit tests.

use ms_oauth::store::{DynamoKeyShares, DynamoStore};

use crate::helpers::*;

#[tokio::test]
async fn dynamodb_keeps_the_store_contract() {
    let app = spawn_app().await;
    let store = DynamoStore::new(app.dynamodb.clone(), app.table.clone());
    ms_oauth::testing::store_contract::check(&store).await;
}

#[tokio::test]
async fn dynamodb_keeps_the_key_share_contract() {
    let app = spawn_app().await;
    let shares = DynamoKeyShares::new(app.dynamodb.clone(), app.shares_table.clone());
    ms_oauth::testing::store_contract::check_key_shares(&shares).await;
}
