//! Tokens survive a point-in-time restore: a restore always creates a new table, and the
//! tokens' encryption context names the logical store, not the physical table. And a
//! disconnected connection's tokens never come back from one: their key share is destroyed.

use ms_oauth::config;
use ms_oauth::crypto::{ContextScheme, CryptoError, seal};
use ms_oauth::domain::Origin;
use ms_oauth::store::{DynamoStore, Store};
use ms_oauth::tokens::{SHREDDED_REASON, TokenFailure, TokenService};
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

/// The connection API as a stack restored onto `table` runs it (its table variable changed).
fn tokens_on(app: &TestApp, table: &str) -> TokenService {
    app.token_service("ConnectionApiFunction", &[(config::OAUTH_TABLE_NAME, table)], None)
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
    let mut old = seal(&key, None, &legacy, secrets.to_string().as_bytes()).unwrap();
    old.scheme = ContextScheme::Table;
    let mut connection = stored.connection.clone();
    connection.secrets = old;
    let store = DynamoStore::new(app.dynamodb.clone(), app.table.clone());
    store.save_connection(&connection).await.unwrap();
    // Earlier versions made no key share.
    use ms_oauth::crypto::KeyShares;
    app.key_shares().shred(cid.as_str(), None).await.unwrap();
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
    // With a share of its own from now on, so a disconnect shreds it.
    let share = resealed.connection.secrets.share_id.clone().expect("a share");
    assert_eq!(app.share_ids(&cid).await, vec![share]);
}

#[tokio::test]
async fn a_disconnected_connections_tokens_never_open_from_a_backup_taken_before() {
    let app = spawn_app().await;
    let cid = new_cid();
    let flow = app.connect(&Browser::new(), &cid, Origin::Web, "work").await;
    assert_eq!(flow.finish.status, 200, "{}", flow.finish.body);
    let other = new_cid();
    assert_eq!(app.connect(&Browser::new(), &other, Origin::Web, "work").await.finish.status, 200);
    let stored = app.connection(&cid).await.unwrap();
    let share_id = stored.connection.secrets.share_id.clone().expect("sealed with a share");
    assert_eq!(app.share_ids(&cid).await, vec![share_id.clone()]);
    let original = app.secret_vars(&stored).await;
    let access_token = original["oauth_access_token"].as_str().unwrap().to_owned();

    // An on-demand backup of the token table while the connection is live.
    let backup = app
        .dynamodb
        .create_backup()
        .table_name(&app.table)
        .backup_name("before-disconnect")
        .send()
        .await
        .expect("CreateBackup")
        .backup_details
        .expect("backup details")
        .backup_arn;
    assert!(app.refresher.tokens.disconnect(&cid).await.unwrap());
    assert!(app.share_ids(&cid).await.is_empty(), "the disconnect destroyed the share");
    assert_eq!(app.share_ids(&other).await.len(), 1, "other connections keep theirs");

    let restored = format!("{}-from-backup", app.table);
    app.dynamodb
        .restore_table_from_backup()
        .target_table_name(&restored)
        .backup_arn(&backup)
        .send()
        .await
        .expect("RestoreTableFromBackup");
    let copy = DynamoStore::new(app.dynamodb.clone(), restored.clone())
        .get_connection(&cid)
        .await
        .unwrap()
        .expect("the backup holds the connection");
    assert_eq!(copy.connection.secrets, stored.connection.secrets, "the same sealed tokens");
    // KMS still unwraps the data key in the backup; without the share it opens nothing.
    let context = ms_oauth::crypto::context_of(&copy.connection.secrets, &restored, cid.as_str());
    let unwrapped = app
        .kms
        .decrypt()
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(
            copy.connection.secrets.wrapped_key.clone(),
        ))
        .set_encryption_context(Some(context.into_iter().collect()))
        .send()
        .await
        .expect("KMS still unwraps the data key");
    assert_eq!(unwrapped.plaintext.map(|p| p.into_inner().len()), Some(32));
    assert!(matches!(app.open_secrets(&copy).await, Err(CryptoError::Shredded)));
    let raw = format!("{:?}{:?}", app.items().await, copy.connection);
    assert!(!raw.contains(&access_token), "no token in the clear anywhere");

    // Functions pointed at the restored table ask for a new sign-in; nothing is served.
    let tokens = tokens_on(&app, &restored);
    match tokens.token(&cid, false).await {
        Err(TokenFailure::NeedsReauth { reason }) => assert_eq!(reason, SHREDDED_REASON),
        other => panic!("expected a new sign-in to be needed, got {other:?}"),
    }
    // A refresh there finds the share gone too, and marks the copy for a new sign-in.
    assert!(matches!(tokens.token(&cid, true).await, Err(TokenFailure::NeedsReauth { .. })));
    let marked = DynamoStore::new(app.dynamodb.clone(), restored.clone())
        .get_connection(&cid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(marked.connection.status, ms_oauth::store::STATUS_NEEDS_REAUTH);
    assert_eq!(marked.connection.status_reason.as_deref(), Some(SHREDDED_REASON));
    // The other connection, live, reads back from the same backup.
    let served = tokens.token(&other, false).await.expect("a live connection's token");
    assert!(!served.access_token.expose_secret().is_empty());
}

#[tokio::test]
async fn a_new_sign_in_destroys_the_share_of_the_tokens_it_replaces_and_refreshes_keep_theirs() {
    let app = spawn_app().await;
    let cid = new_cid();
    assert_eq!(app.connect(&Browser::new(), &cid, Origin::Web, "work").await.finish.status, 200);
    let first = app.connection(&cid).await.unwrap();
    assert_eq!(app.connect(&Browser::new(), &cid, Origin::Web, "work").await.finish.status, 200);
    let second = app.connection(&cid).await.unwrap();
    let share = second.connection.secrets.share_id.clone().unwrap();
    assert_ne!(first.connection.secrets.share_id.as_ref(), Some(&share));
    assert_eq!(app.share_ids(&cid).await, vec![share.clone()]);
    assert!(matches!(app.open_secrets(&first).await, Err(CryptoError::Shredded)));

    let tokens = &app.refresher.tokens;
    assert!(tokens.token(&cid, true).await.unwrap().refreshed);
    let refreshed = app.connection(&cid).await.unwrap();
    assert_ne!(refreshed.connection.secrets.wrapped_key, second.connection.secrets.wrapped_key);
    assert_eq!(refreshed.connection.secrets.share_id.as_ref(), Some(&share), "one share a grant");
    assert_eq!(app.share_ids(&cid).await, vec![share]);
}
