//! Tokens survive a point-in-time restore: a restore always creates a new table, and the
//! tokens' encryption context names the logical store, not the physical table.

use std::sync::Arc;

use ms_oauth::crypto::{ContextScheme, seal};
use ms_oauth::domain::Origin;
use ms_oauth::store::{DynamoStore, Store};
use ms_oauth::tokens::TokenService;
use ms_oauth_tests::aws;
use secrecy::ExposeSecret;

use crate::helpers::*;

/// Copies every item of `app`'s table into a new table, as a restore would; its name.
async fn restored_copy(app: &TestApp) -> String {
    let restored = format!("{}-restored", app.table);
    aws::ensure_table(&app.dynamodb, &restored).await.expect("table");
    for item in app.items().await {
        app.dynamodb
            .put_item()
            .table_name(&restored)
            .set_item(Some(item))
            .send()
            .await
            .expect("copy item");
    }
    restored
}

fn tokens_on(app: &TestApp, table: &str) -> TokenService {
    TokenService {
        store: Arc::new(DynamoStore::new(app.dynamodb.clone(), table.to_owned())),
        table: table.to_owned(),
        ..app.refresher.tokens.clone()
    }
}

#[tokio::test]
async fn tokens_read_back_from_a_restored_copy_of_the_table() {
    let app = spawn_app().await;
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    let stored = app.connection(&cid).await.unwrap();
    assert_eq!(stored.connection.secrets.scheme, ContextScheme::Store);
    let original = app.secret_vars(&stored).await;

    let restored = restored_copy(&app).await;
    let tokens = tokens_on(&app, &restored);
    let served = tokens.token(&cid, false).await.expect("token from the restored table");
    assert_eq!(
        served.access_token.expose_secret(),
        original["oauth_access_token"].as_str().unwrap()
    );
    // And it refreshes there: the refresh token opens too.
    assert!(tokens.token(&cid, true).await.expect("refresh in the restored table").refreshed);
}

#[tokio::test]
async fn tokens_sealed_the_earlier_way_still_open_and_are_resealed_on_refresh() {
    let app = spawn_app().await;
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200);
    let stored = app.connection(&cid).await.unwrap();
    let secrets = app.secret_vars(&stored).await;

    // Re-seal the same secrets bound to the physical table name, as earlier versions did.
    let keys = app.refresher.tokens.keys.clone();
    let legacy = std::collections::BTreeMap::from([
        ("table".to_owned(), app.table.clone()),
        ("connection_id".to_owned(), cid.to_string()),
    ]);
    let key = keys.generate(&legacy).await.unwrap();
    let mut old = seal(&key, &legacy, secrets.to_string().as_bytes()).unwrap();
    old.scheme = ContextScheme::Table;
    let mut connection = stored.connection.clone();
    connection.secrets = old;
    let store = DynamoStore::new(app.dynamodb.clone(), app.table.clone());
    store.save_connection(&connection).await.unwrap();
    // What a stored item of the earlier format looks like: no scheme attribute at all.
    app.dynamodb
        .update_item()
        .table_name(&app.table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("conn#{cid}")))
        .update_expression("REMOVE secrets.scheme")
        .send()
        .await
        .unwrap();

    let tokens = &app.refresher.tokens;
    let served = tokens.token(&cid, false).await.expect("the earlier format opens");
    assert_eq!(
        served.access_token.expose_secret(),
        secrets["oauth_access_token"].as_str().unwrap()
    );
    assert!(tokens.token(&cid, true).await.unwrap().refreshed);
    let resealed = app.connection(&cid).await.unwrap();
    assert_eq!(
        resealed.connection.secrets.scheme,
        ContextScheme::Store,
        "re-sealed by the refresh"
    );
}
