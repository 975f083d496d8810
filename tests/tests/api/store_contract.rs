//! The store contract (`ms_oauth::testing::store_contract`) against DynamoDB on the emulator:
//! the same suite the in-memory double passes in the library's unit tests.

use ms_oauth::store::DynamoStore;

use crate::helpers::*;

#[tokio::test]
async fn dynamodb_keeps_the_store_contract() {
    let app = spawn_app().await;
    let store = DynamoStore::new(app.dynamodb.clone(), app.table.clone());
    ms_oauth::testing::store_contract::check(&store).await;
}
