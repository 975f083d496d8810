//! Every conditional write on a connection is safe for the AWS SDK to repeat: with the answer
//! to the first attempt lost (the request applied, its response cut by the chaos proxy) the
//! repeat must report what the first attempt did, not a conflict.

use ms_oauth::crypto::Sealed;
use ms_oauth::domain::ConnectionId;
use ms_oauth::store::{
    AUTH_TYPE_DEFAULT, Connection, ConnectionVars, DynamoStore, REFRESH_QUEUE, RefreshUpdate,
    STATUS_NEEDS_REAUTH, STATUS_OK, Store,
};
use ms_oauth_tests::aws;
use ms_oauth_tests::chaos::ChaosProxy;
use tokio::net::TcpListener;

use crate::helpers::new_cid;

/// A store on its own table, reached through a chaos proxy in front of the AWS emulator.
async fn store_behind_proxy() -> (DynamoStore, ChaosProxy, String) {
    let endpoint = aws::shared_endpoint().expect("AWS emulator");
    let table = format!("oauth-retries-{}", ms_oauth_tests::random_base32(10));
    let setup = aws::sdk_config(&endpoint).await;
    aws::ensure_table(&aws_sdk_dynamodb::Client::new(&setup), &table).await.expect("table");
    let upstream = endpoint.trim_start_matches("http://").parse().expect("emulator address");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let proxy = ChaosProxy::spawn(listener, upstream).expect("proxy");
    let sdk = aws::sdk_config(&proxy.url()).await;
    (DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table.clone()), proxy, table)
}

fn connection(cid: &ConnectionId, autokitteh_user_id: Option<&str>) -> Connection {
    Connection {
        connection_id: cid.clone(),
        auth_type: AUTH_TYPE_DEFAULT.into(),
        status: STATUS_OK.into(),
        tenant_id: "t".into(),
        object_id: "o".into(),
        vars: ConnectionVars::default(),
        secrets: Sealed {
            alg: "A256GCM".into(),
            key_id: "k".into(),
            wrapped_key: vec![1; 8],
            nonce: vec![2; 12],
            ciphertext: vec![3; 16],
            scheme: ms_oauth::crypto::ContextScheme::Store,
            share_id: None,
        },
        updated_at: "2026-11-29T00:00:00Z".into(),
        status_reason: None,
        token_expires_at: 1,
        last_refresh_at: "2026-11-29T00:00:00Z".into(),
        refresh_due_at: 1,
        autokitteh_user_id: autokitteh_user_id.map(str::to_owned),
        refresh_failures: 0,
        refresh_queue: Some(REFRESH_QUEUE.into()),
        app_client_id: None,
        granted_scopes: None,
        refresh_failed_at: None,
        refresh_failure: None,
    }
}

/// Cuts the answer to the next request carrying `marker`, runs `write`, and checks the cut
/// happened (or the test would prove nothing).
async fn with_lost_answer<T>(
    proxy: &ChaosProxy,
    marker: &str,
    write: impl Future<Output = T>,
) -> T {
    let before = proxy.counts().cut;
    proxy.cut_next_answer_to(marker);
    let result = write.await;
    assert_eq!(proxy.counts().cut, before + 1, "the answer to {marker} was not cut");
    result
}

#[tokio::test]
async fn a_lost_answer_to_the_lease_still_gets_the_lease() {
    let (store, proxy, _) = store_behind_proxy().await;
    let cid = new_cid();
    let version = store.save_connection(&connection(&cid, None)).await.unwrap();
    let got = with_lost_answer(
        &proxy,
        "lease_until < :now",
        store.acquire_lease(&cid, version, "owner-a", 2_000_000_000, 1_900_000_000),
    )
    .await;
    assert!(got.unwrap(), "the repeat must find its own lease");
    // Someone else still cannot take it.
    assert!(
        !store.acquire_lease(&cid, version, "owner-b", 2_000_000_000, 1_900_000_000).await.unwrap()
    );
}

#[tokio::test]
async fn a_lost_answer_to_the_refresh_save_reports_it_saved() {
    let (store, proxy, _) = store_behind_proxy().await;
    let cid = new_cid();
    let version = store.save_connection(&connection(&cid, None)).await.unwrap();
    assert!(
        store.acquire_lease(&cid, version, "owner-a", 2_000_000_000, 1_900_000_000).await.unwrap()
    );
    let update = RefreshUpdate {
        secrets: connection(&cid, None).secrets,
        oauth_expiry: "2026-11-29T01:00:00Z".into(),
        token_expires_at: 1_900_003_600,
        last_refresh_at: "2026-11-29T00:00:00Z".into(),
        refresh_due_at: 1_900_003_300,
        granted_scopes: Some("User.Read openid profile".into()),
    };
    let saved = with_lost_answer(
        &proxy,
        "token_expires_at = :exp",
        store.save_refresh(&cid, version, "owner-a", &update),
    )
    .await;
    assert_eq!(saved.unwrap(), Some(version + 1), "the repeat must report the save");
    let stored = store.get_connection(&cid).await.unwrap().unwrap();
    assert_eq!(stored.version, version + 1, "applied once");
    assert_eq!(stored.connection.token_expires_at, 1_900_003_600);
    // A save by a holder that lost its lease is still refused.
    assert_eq!(store.save_refresh(&cid, version, "owner-b", &update).await.unwrap(), None);
}

#[tokio::test]
async fn a_lost_answer_to_needs_reauth_still_reports_the_change() {
    let (store, proxy, _) = store_behind_proxy().await;
    let cid = new_cid();
    let version = store.save_connection(&connection(&cid, None)).await.unwrap();
    assert!(
        store.acquire_lease(&cid, version, "owner-a", 2_000_000_000, 1_900_000_000).await.unwrap()
    );
    let marked = with_lost_answer(
        &proxy,
        STATUS_NEEDS_REAUTH,
        store.mark_needs_reauth(&cid, "owner-a", "revoked", "2026-11-29T00:00:00Z"),
    )
    .await;
    assert!(marked.unwrap(), "the repeat must report the change, so its event is sent");
    let stored = store.get_connection(&cid).await.unwrap().unwrap();
    assert_eq!(stored.connection.status, STATUS_NEEDS_REAUTH);
    assert!(!store.mark_needs_reauth(&cid, "owner-b", "x", "t").await.unwrap());
}

#[tokio::test]
async fn a_lost_answer_to_the_delete_still_reports_what_was_deleted() {
    let (store, proxy, _) = store_behind_proxy().await;
    let cid = new_cid();
    store.save_connection(&connection(&cid, Some("usr_1"))).await.unwrap();
    let removed =
        with_lost_answer(&proxy, "DynamoDB_20120810.DeleteItem", store.delete_connection(&cid))
            .await;
    let removed = removed.unwrap().expect("the repeat must report the connection as removed");
    assert_eq!(removed.autokitteh_user_id.as_deref(), Some("usr_1"));
    assert!(store.get_connection(&cid).await.unwrap().is_none());
    assert!(
        store.delete_connection(&cid).await.unwrap().is_none(),
        "a second disconnect finds none"
    );
}
