//! What every [`Store`] must do, as one suite run against DynamoDB (on the emulator, from the
//! integration tests) and against [`super::MemoryStore`] (here): where the double drifts from
//! DynamoDB, unit tests built on it would prove nothing.
//!
//! Each check uses fresh ids, so the suite can share a table with other tests. A check that
//! fails panics with what the store did.

#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use secrecy::SecretString;

use crate::crypto::{ContextScheme, Sealed};
use crate::domain::{ConnectionId, Origin};
use crate::state::StateKey;
use crate::store::{
    AUTH_TYPE_DEFAULT, Connection, ConnectionVars, ConsumeError, PendingFlow, REFRESH_QUEUE,
    RefreshFailureMark, RefreshUpdate, STATUS_NEEDS_REAUTH, STATUS_OK, Store, StoreError,
};

const NOW: i64 = 1_800_000_000;

fn fresh_id(tag: &str) -> String {
    let id = crate::state::attempt_id().expect("randomness");
    format!("{tag}-{id}")
}

fn fresh_connection_id() -> ConnectionId {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut bytes = [0u8; 26];
    getrandom::fill(&mut bytes).expect("randomness");
    let tail: String = bytes.iter().map(|b| ALPHABET[*b as usize % 32] as char).collect();
    format!("con_{tail}").parse().expect("a connection id")
}

fn sealed(mark: u8) -> Sealed {
    Sealed {
        alg: crate::crypto::ALGORITHM.into(),
        key_id: "contract-key".into(),
        wrapped_key: vec![mark; 8],
        nonce: vec![mark; 12],
        ciphertext: vec![mark; 24],
        scheme: ContextScheme::Store,
        share_id: Some(format!("share-{mark}")),
    }
}

/// A connection as a sign-in saves it, due for refresh at `due`.
pub fn connection(id: &ConnectionId, due: i64) -> Connection {
    Connection {
        connection_id: id.clone(),
        auth_type: AUTH_TYPE_DEFAULT.into(),
        status: STATUS_OK.into(),
        tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
        object_id: "00000000-0000-0000-0000-00000000a11e".into(),
        vars: ConnectionVars {
            oauth_token_type: "Bearer".into(),
            oauth_expiry: "2027-01-15T10:00:00Z".into(),
            user_principal_name: Some("adele@contoso.example".into()),
            ..ConnectionVars::default()
        },
        secrets: sealed(1),
        updated_at: "2027-01-15T09:00:00Z".into(),
        status_reason: None,
        token_expires_at: NOW + 3600,
        last_refresh_at: "2027-01-15T09:00:00Z".into(),
        refresh_due_at: due,
        autokitteh_user_id: None,
        refresh_failures: 0,
        refresh_queue: Some(REFRESH_QUEUE.into()),
        app_client_id: None,
        granted_scopes: Some("Mail.Read openid User.Read profile email".into()),
        refresh_failed_at: None,
        refresh_failure: None,
    }
}

fn flow(id: &ConnectionId, browser_hash: &str, expires_at: i64) -> PendingFlow {
    PendingFlow {
        connection_id: id.clone(),
        origin: Origin::Web,
        pkce_verifier: SecretString::from("contract-verifier".to_owned()),
        browser_hash: browser_hash.into(),
        created_at: NOW - 10,
        expires_at,
        ak_user_id: None,
        platform_user: Some("user".into()),
        connection_name: Some("name".into()),
        app_client_id: Some("0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3".into()),
        admin_consent: Some("contoso.com".into()),
    }
}

fn update(mark: u8, due: i64) -> RefreshUpdate {
    RefreshUpdate {
        secrets: sealed(mark),
        oauth_expiry: "2027-01-15T11:00:00Z".into(),
        token_expires_at: NOW + 7200,
        last_refresh_at: "2027-01-15T10:00:00Z".into(),
        refresh_due_at: due,
        // Mark 2's refresh names its scopes; the others' do not.
        granted_scopes: (mark == 2).then(|| "Mail.Read User.Read".into()),
    }
}

/// Runs every check against `store`.
pub async fn check(store: &dyn Store) {
    grants_are_spent_once(store).await;
    a_sign_in_withdraws_only_its_own_save(store).await;
    flows_are_consumed_once_by_their_browser_before_they_expire(store).await;
    connections_are_saved_whole_and_versioned(store).await;
    a_new_sign_in_clears_what_the_previous_grant_left(store).await;
    leases_are_exclusive_and_end_with_the_write(store).await;
    a_dead_grant_leaves_the_refresh_queue(store).await;
    failed_refreshes_are_postponed_and_counted_until_one_succeeds(store).await;
    a_failed_refresh_holds_the_lease_through_its_cooldown(store).await;
    deletes_report_what_was_removed_once(store).await;
    apps_are_replaced_whole_and_kept_apart_from_tokens(store).await;
    a_walk_sees_every_connection_once_and_nothing_else(store).await;
    incidents_count_each_connection_once_and_are_declared_once(store).await;
    a_reseal_replaces_the_secrets_of_an_unchanged_connection_no_refresh_holds(store).await;
    apps_are_walked_and_resealed_only_when_unchanged(store).await;
}

async fn apps_are_walked_and_resealed_only_when_unchanged(store: &dyn Store) {
    use crate::apps::AppSummary;
    use crate::store::AppRecord;
    let id = fresh_connection_id();
    let record = AppRecord {
        connection_id: id.clone(),
        summary: AppSummary {
            auth_type: "oauthPrivate".into(),
            private_client_id: "0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3".into(),
            private_tenant_id: "common".into(),
            credential: "secret".into(),
            certificate_thumbprint: None,
            certificate_thumbprint_sha256: None,
            certificate_expires_at: None,
        },
        credential_sealed: sealed(3),
        updated_at: "2027-01-15T10:00:00Z".into(),
        previous_credential_sealed: None,
        previous_until: None,
    };
    let version = store.save_app(&record).await.unwrap();
    assert_eq!(store.reseal_app(&id, version + 1, &sealed(4)).await.unwrap(), None);
    assert_eq!(store.reseal_app(&id, version, &sealed(4)).await.unwrap(), Some(version + 1));
    let stored = store.get_app(&id).await.unwrap().unwrap();
    assert_eq!(stored.app.credential_sealed, sealed(4));
    assert_eq!(stored.app.summary, record.summary);
    assert_eq!(store.reseal_app(&fresh_connection_id(), 1, &sealed(4)).await.unwrap(), None);
    // The walk finds it, and nothing that is not an app.
    let mut found = 0;
    let mut after: Option<String> = None;
    loop {
        let page = store.app_page(after.as_deref(), 3).await.unwrap();
        found += page.apps.iter().filter(|a| a.app.connection_id == id).count();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(found, 1);
}

async fn a_reseal_replaces_the_secrets_of_an_unchanged_connection_no_refresh_holds(
    store: &dyn Store,
) {
    let id = fresh_connection_id();
    let version = store.save_connection(&connection(&id, NOW)).await.unwrap();
    // A stale version is refused: the connection changed since it was read.
    assert_eq!(store.reseal_connection(&id, version + 1, &sealed(5), NOW).await.unwrap(), None);
    // A refresh holding the lease wins; once its lease has run out, the reseal goes through.
    assert!(store.acquire_lease(&id, version, "refresher", NOW + 30, NOW).await.unwrap());
    assert_eq!(store.reseal_connection(&id, version, &sealed(5), NOW).await.unwrap(), None);
    let after_lease = NOW + 31;
    let resealed = store.reseal_connection(&id, version, &sealed(5), after_lease).await.unwrap();
    assert_eq!(resealed, Some(version + 1));
    let stored = store.get_connection(&id).await.unwrap().unwrap();
    assert_eq!(stored.connection.secrets, sealed(5));
    assert_eq!(stored.version, version + 1);
    // Nothing else changed.
    assert_eq!(stored.connection.vars, connection(&id, NOW).vars);
    // A connection that is gone is not recreated.
    let gone = fresh_connection_id();
    assert_eq!(store.reseal_connection(&gone, 1, &sealed(5), NOW).await.unwrap(), None);
    assert!(store.get_connection(&gone).await.unwrap().is_none());
}

async fn incidents_count_each_connection_once_and_are_declared_once(store: &dyn Store) {
    let signature = fresh_id("tenant#sign_in_again#50173");
    let ids: Vec<ConnectionId> = (0..4).map(|_| fresh_connection_id()).collect();
    assert!(!store.declare_incident(&signature, NOW).await.unwrap(), "nothing to declare yet");
    assert_eq!(store.count_failure(&signature, &ids[0], 3, NOW + 60).await.unwrap(), 1);
    // A repeat (a retry after a lost answer, or the same connection failing again) counts once.
    assert_eq!(store.count_failure(&signature, &ids[0], 3, NOW + 60).await.unwrap(), 1);
    assert_eq!(store.count_failure(&signature, &ids[1], 3, NOW + 60).await.unwrap(), 2);
    assert_eq!(store.count_failure(&signature, &ids[2], 3, NOW + 60).await.unwrap(), 3);
    // Full: more connections are not stored, the count stays at the cap.
    assert_eq!(store.count_failure(&signature, &ids[3], 3, NOW + 60).await.unwrap(), 3);
    assert_eq!(store.count_failure(&signature, &ids[1], 3, NOW + 60).await.unwrap(), 3);
    assert!(store.declare_incident(&signature, NOW).await.unwrap(), "the first declares");
    assert!(!store.declare_incident(&signature, NOW).await.unwrap(), "and only the first");
    // Another signature is another incident.
    let other = fresh_id("tenant#admin_consent#65001");
    assert_eq!(store.count_failure(&other, &ids[0], 3, NOW + 60).await.unwrap(), 1);
}

async fn a_walk_sees_every_connection_once_and_nothing_else(store: &dyn Store) {
    let ours: Vec<ConnectionId> = (0..5).map(|_| fresh_connection_id()).collect();
    for id in &ours {
        store.save_connection(&connection(id, NOW)).await.unwrap();
    }
    // Other kinds of items in the table are not connections and must not be walked.
    store
        .put_state(&StateKey::from_state(&fresh_id("walk")), &flow(&ours[0], "h", NOW + 60))
        .await
        .unwrap();
    assert!(store.spend_grant(&fresh_id("walk"), NOW + 60).await.unwrap());
    let mut seen = std::collections::BTreeMap::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.connection_page(after.as_deref(), 2).await.unwrap();
        pages += 1;
        assert!(page.connections.len() <= 2, "a page holds at most its limit");
        for stored in page.connections {
            *seen.entry(stored.connection.connection_id.to_string()).or_insert(0) += 1;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 10_000, "the walk does not end");
    }
    for id in &ours {
        let times = seen.get(id.as_str());
        assert_eq!(times, Some(&1), "{id} seen {times:?} times");
    }
    assert!(pages >= 3, "5 connections in pages of 2 take at least 3 pages");
}

async fn apps_are_replaced_whole_and_kept_apart_from_tokens(store: &dyn Store) {
    use crate::apps::AppSummary;
    use crate::store::AppRecord;
    let id = fresh_connection_id();
    assert!(store.get_app(&id).await.unwrap().is_none());
    let with_certificate = AppRecord {
        connection_id: id.clone(),
        summary: AppSummary {
            auth_type: "daemonApp".into(),
            private_client_id: "0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3".into(),
            private_tenant_id: "contoso.com".into(),
            credential: "certificate".into(),
            certificate_thumbprint: Some("AB".repeat(20)),
            certificate_thumbprint_sha256: Some("x".repeat(43)),
            certificate_expires_at: Some("2027-12-01T00:00:00Z".into()),
        },
        credential_sealed: sealed(7),
        updated_at: "2027-01-15T10:00:00Z".into(),
        previous_credential_sealed: None,
        previous_until: None,
    };
    assert_eq!(store.save_app(&with_certificate).await.unwrap(), 1);
    // Saving the same again (a retry after a lost answer) leaves the same app.
    assert_eq!(store.save_app(&with_certificate).await.unwrap(), 2);
    let mut with_secret = with_certificate.clone();
    with_secret.summary.credential = "secret".into();
    with_secret.summary.certificate_thumbprint = None;
    with_secret.summary.certificate_thumbprint_sha256 = None;
    with_secret.summary.certificate_expires_at = None;
    with_secret.credential_sealed = sealed(8);
    assert_eq!(store.save_app(&with_secret).await.unwrap(), 3);
    let read = store.get_app(&id).await.unwrap().unwrap();
    assert_eq!(read.app, with_secret, "no certificate fact outlives the certificate");
    assert_eq!(read.version, 3);
    // The app is not a connection: no tokens appear, and a disconnect leaves the app.
    assert!(store.get_connection(&id).await.unwrap().is_none());
    store.save_connection(&connection(&id, NOW + 60)).await.unwrap();
    store.delete_connection(&id).await.unwrap();
    assert!(store.get_app(&id).await.unwrap().is_some());
    assert!(store.delete_app(&id).await.unwrap());
    assert!(!store.delete_app(&id).await.unwrap(), "a second delete finds nothing");
    assert!(store.get_app(&id).await.unwrap().is_none());
}

async fn a_sign_in_withdraws_only_its_own_save(store: &dyn Store) {
    let id: ConnectionId = fresh_connection_id();
    let first = store.save_connection(&connection(&id, NOW)).await.unwrap();
    let second = store.save_connection(&connection(&id, NOW)).await.unwrap();
    assert!(!store.withdraw_connection(&id, first).await.unwrap(), "a newer save stays");
    assert!(store.get_connection(&id).await.unwrap().is_some());
    assert!(store.withdraw_connection(&id, second).await.unwrap());
    assert!(store.get_connection(&id).await.unwrap().is_none());
    assert!(store.withdraw_connection(&id, second).await.unwrap(), "a repeat finds it gone");
}

async fn grants_are_spent_once(store: &dyn Store) {
    let grant = fresh_id("grant");
    assert!(!store.grant_spent(&grant).await.unwrap(), "a new grant is not spent");
    assert!(!store.grant_spent(&grant).await.unwrap(), "looking spends nothing");
    assert!(store.spend_grant(&grant, NOW + 60).await.unwrap(), "a new grant is spent");
    assert!(store.grant_spent(&grant).await.unwrap(), "a spent grant shows as spent");
    assert!(!store.spend_grant(&grant, NOW + 60).await.unwrap(), "a grant is spent once");
    assert!(store.spend_grant(&fresh_id("grant"), NOW + 60).await.unwrap());
}

async fn flows_are_consumed_once_by_their_browser_before_they_expire(store: &dyn Store) {
    let id = fresh_connection_id();
    let key = StateKey::from_state(&fresh_id("state"));
    store.put_state(&key, &flow(&id, "browser-a", NOW + 600)).await.unwrap();
    assert!(matches!(
        store.put_state(&key, &flow(&id, "browser-b", NOW + 600)).await,
        Err(StoreError::Duplicate)
    ));
    assert!(matches!(
        store.consume_state(&key, "browser-b", NOW).await,
        Err(ConsumeError::WrongBrowser)
    ));
    assert!(matches!(
        store.consume_state(&key, "browser-a", NOW + 600).await,
        Err(ConsumeError::Expired)
    ));
    let consumed = store.consume_state(&key, "browser-a", NOW).await.unwrap();
    assert_eq!(consumed.connection_id, id);
    assert_eq!(consumed.browser_hash, "browser-a");
    assert_eq!(consumed.platform_user.as_deref(), Some("user"));
    assert_eq!(consumed.app_client_id.as_deref(), Some("0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3"));
    assert_eq!(consumed.admin_consent.as_deref(), Some("contoso.com"));
    use secrecy::ExposeSecret;
    assert_eq!(consumed.pkce_verifier.expose_secret(), "contract-verifier");
    // Spent: another consume finds nothing, whoever asks; discarding it twice is fine.
    assert!(matches!(
        store.consume_state(&key, "browser-a", NOW).await,
        Err(ConsumeError::NotFound)
    ));
    store.discard_state(&key).await.unwrap();
    store.discard_state(&key).await.unwrap();
    assert!(matches!(
        store.consume_state(&key, "browser-a", NOW).await,
        Err(ConsumeError::NotFound)
    ));
    let unknown = StateKey::from_state(&fresh_id("state"));
    assert!(matches!(
        store.consume_state(&unknown, "browser-a", NOW).await,
        Err(ConsumeError::NotFound)
    ));
}

async fn connections_are_saved_whole_and_versioned(store: &dyn Store) {
    let id = fresh_connection_id();
    assert!(store.get_connection(&id).await.unwrap().is_none());
    let first = connection(&id, NOW + 100);
    assert_eq!(store.save_connection(&first).await.unwrap(), 1);
    let stored = store.get_connection(&id).await.unwrap().unwrap();
    assert_eq!(stored.connection, first);
    assert_eq!(stored.version, 1);
    assert_eq!(stored.created_at, first.updated_at);
    let mut again = connection(&id, NOW + 200);
    again.vars.user_principal_name = None;
    again.vars.user_mail = Some("other@contoso.example".into());
    again.updated_at = "2027-01-16T09:00:00Z".into();
    assert_eq!(store.save_connection(&again).await.unwrap(), 2);
    let stored = store.get_connection(&id).await.unwrap().unwrap();
    assert_eq!(stored.connection, again, "the vars are replaced whole");
    assert_eq!(stored.created_at, first.updated_at, "created once");
}

async fn a_new_sign_in_clears_what_the_previous_grant_left(store: &dyn Store) {
    let id = fresh_connection_id();
    let mut inside = connection(&id, NOW + 100);
    inside.autokitteh_user_id = Some("u-123".into());
    store.save_connection(&inside).await.unwrap();
    assert!(store.acquire_lease(&id, 1, "owner", NOW + 60, NOW).await.unwrap());
    assert!(store.mark_needs_reauth(&id, "owner", "invalid_grant", "2027").await.unwrap());
    // Signed in again, now outside AutoKitteh and not refreshable.
    let mut outside = connection(&id, NOW + 100);
    outside.refresh_queue = None;
    store.save_connection(&outside).await.unwrap();
    let stored = store.get_connection(&id).await.unwrap().unwrap();
    assert_eq!(stored.connection, outside, "no stale user, reason or queue");
    assert!(!store.due_connections(NOW + 1000, 1000).await.unwrap().contains(&id));
    // And no lease of the earlier grant survives it.
    assert!(store.acquire_lease(&id, stored.version, "new-owner", NOW + 60, NOW).await.unwrap());
}

async fn leases_are_exclusive_and_end_with_the_write(store: &dyn Store) {
    let id = fresh_connection_id();
    store.save_connection(&connection(&id, NOW + 100)).await.unwrap();
    assert!(!store.acquire_lease(&id, 2, "a", NOW + 60, NOW).await.unwrap(), "stale version");
    assert!(store.acquire_lease(&id, 1, "a", NOW + 60, NOW).await.unwrap());
    assert!(store.acquire_lease(&id, 1, "a", NOW + 60, NOW).await.unwrap(), "its own again");
    assert!(!store.acquire_lease(&id, 1, "b", NOW + 60, NOW).await.unwrap(), "held");
    assert!(store.save_refresh(&id, 1, "b", &update(2, NOW + 500)).await.unwrap().is_none());
    assert_eq!(store.save_refresh(&id, 1, "a", &update(2, NOW + 500)).await.unwrap(), Some(2));
    let stored = store.get_connection(&id).await.unwrap().unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(stored.connection.secrets, sealed(2));
    assert_eq!(stored.connection.refresh_due_at, NOW + 500);
    assert_eq!(stored.connection.token_expires_at, NOW + 7200);
    assert_eq!(stored.connection.vars.oauth_expiry, "2027-01-15T11:00:00Z");
    assert_eq!(stored.connection.granted_scopes.as_deref(), Some("Mail.Read User.Read"));
    // Released by the write: the next holder takes it at the new version only.
    assert!(!store.acquire_lease(&id, 1, "b", NOW + 60, NOW).await.unwrap());
    assert!(store.acquire_lease(&id, 2, "b", NOW + 60, NOW).await.unwrap());
    store.release_lease(&id, "a").await.unwrap();
    assert!(!store.acquire_lease(&id, 2, "c", NOW + 60, NOW).await.unwrap(), "not a's to give");
    store.release_lease(&id, "b").await.unwrap();
    assert!(store.acquire_lease(&id, 2, "c", NOW + 60, NOW).await.unwrap());
    // An expired lease is anyone's.
    assert!(store.acquire_lease(&id, 2, "d", NOW + 200, NOW + 61).await.unwrap());
}

async fn a_dead_grant_leaves_the_refresh_queue(store: &dyn Store) {
    let id = fresh_connection_id();
    store.save_connection(&connection(&id, NOW - 5)).await.unwrap();
    assert!(store.due_connections(NOW, 1000).await.unwrap().contains(&id));
    assert!(!store.mark_needs_reauth(&id, "nobody", "r", "2027").await.unwrap(), "no lease");
    assert!(store.acquire_lease(&id, 1, "a", NOW + 60, NOW).await.unwrap());
    assert!(store.mark_needs_reauth(&id, "a", "invalid_grant", "2027-02").await.unwrap());
    let stored = store.get_connection(&id).await.unwrap().unwrap();
    assert_eq!(stored.connection.status, STATUS_NEEDS_REAUTH);
    assert_eq!(stored.connection.status_reason.as_deref(), Some("invalid_grant"));
    assert_eq!(stored.connection.refresh_queue, None);
    assert_eq!(stored.connection.updated_at, "2027-02");
    assert_eq!(stored.version, 2);
    assert!(!store.due_connections(NOW, 1000).await.unwrap().contains(&id));
    assert!(store.acquire_lease(&id, 2, "b", NOW + 60, NOW).await.unwrap(), "lease ended");
}

async fn failed_refreshes_are_postponed_and_counted_until_one_succeeds(store: &dyn Store) {
    let early = fresh_connection_id();
    let late = fresh_connection_id();
    store.save_connection(&connection(&late, NOW - 1)).await.unwrap();
    store.save_connection(&connection(&early, NOW - 2)).await.unwrap();
    let due = store.due_connections(NOW, 1000).await.unwrap();
    let position = |id: &ConnectionId| due.iter().position(|d| d == id).unwrap();
    assert!(position(&early) < position(&late), "oldest first");
    let mark = failure_mark(NOW + 30);
    assert!(!store.postpone_refresh(&early, "a", NOW + 300, 1, &mark).await.unwrap(), "no lease");
    assert!(store.acquire_lease(&early, 1, "a", NOW + 60, NOW).await.unwrap());
    assert!(store.postpone_refresh(&early, "a", NOW + 300, 1, &mark).await.unwrap());
    assert!(store.postpone_refresh(&early, "a", NOW + 300, 1, &mark).await.unwrap(), "repeat");
    let stored = store.get_connection(&early).await.unwrap().unwrap();
    assert_eq!(stored.connection.refresh_due_at, NOW + 300);
    assert_eq!(stored.connection.refresh_failures, 1);
    assert_eq!(stored.connection.refresh_failed_at.as_deref(), Some("2027-01-15T10:00:00Z"));
    assert_eq!(stored.connection.refresh_failure.as_deref(), Some("transient"));
    assert_eq!(stored.version, 1, "a postponement is not a new version");
    assert!(!store.due_connections(NOW, 1000).await.unwrap().contains(&early));
    // The lease stays taken through the cooldown, then anyone may refresh; a later refresh
    // succeeds, resets the count and clears the failure.
    assert!(!store.acquire_lease(&early, 1, "b", NOW + 60, NOW + 29).await.unwrap(), "cooldown");
    assert!(store.acquire_lease(&early, 1, "b", NOW + 91, NOW + 31).await.unwrap());
    assert_eq!(store.save_refresh(&early, 1, "b", &update(3, NOW + 900)).await.unwrap(), Some(2));
    let stored = store.get_connection(&early).await.unwrap().unwrap();
    assert_eq!(stored.connection.refresh_failures, 0);
    assert_eq!(stored.connection.refresh_failed_at, None);
    assert_eq!(stored.connection.refresh_failure, None);
    // A refresh that names no scopes keeps the grant's.
    assert_eq!(
        stored.connection.granted_scopes.as_deref(),
        Some("Mail.Read openid User.Read profile email")
    );
}

fn failure_mark(cooldown_until: i64) -> RefreshFailureMark {
    RefreshFailureMark {
        failed_at: "2027-01-15T10:00:00Z".into(),
        failure: "transient".into(),
        cooldown_until,
    }
}

async fn a_failed_refresh_holds_the_lease_through_its_cooldown(store: &dyn Store) {
    let id = fresh_connection_id();
    store.save_connection(&connection(&id, NOW + 100)).await.unwrap();
    let mark = failure_mark(NOW + 30);
    assert!(!store.hold_after_failure(&id, "a", &mark).await.unwrap(), "no lease");
    assert!(store.acquire_lease(&id, 1, "a", NOW + 60, NOW).await.unwrap());
    assert!(store.hold_after_failure(&id, "a", &mark).await.unwrap());
    assert!(store.hold_after_failure(&id, "a", &mark).await.unwrap(), "safe to repeat");
    assert!(!store.hold_after_failure(&id, "b", &mark).await.unwrap(), "not b's");
    let stored = store.get_connection(&id).await.unwrap().unwrap();
    assert_eq!(stored.version, 1, "a failure is not a new version");
    assert_eq!(stored.connection.refresh_failure.as_deref(), Some("transient"));
    assert!(!store.acquire_lease(&id, 1, "b", NOW + 60, NOW + 30).await.unwrap(), "cooldown");
    assert!(store.acquire_lease(&id, 1, "b", NOW + 91, NOW + 31).await.unwrap(), "after it");
    // A new sign-in clears the failure with everything else of the earlier grant.
    store.save_connection(&connection(&id, NOW + 100)).await.unwrap();
    let stored = store.get_connection(&id).await.unwrap().unwrap();
    assert_eq!(stored.connection.refresh_failed_at, None);
    assert_eq!(stored.connection.refresh_failure, None);
    assert!(store.acquire_lease(&id, 2, "c", NOW + 60, NOW).await.unwrap());
}

async fn deletes_report_what_was_removed_once(store: &dyn Store) {
    let id = fresh_connection_id();
    let mut inside = connection(&id, NOW + 100);
    inside.autokitteh_user_id = Some("u-9".into());
    store.save_connection(&inside).await.unwrap();
    assert!(store.acquire_lease(&id, 1, "a", NOW + 60, NOW).await.unwrap());
    let removed = store.delete_connection(&id).await.unwrap().expect("it existed");
    assert_eq!(removed.autokitteh_user_id.as_deref(), Some("u-9"));
    assert!(store.delete_connection(&id).await.unwrap().is_none());
    assert!(store.get_connection(&id).await.unwrap().is_none());
    // A connection made again starts over: version 1, no lease of the deleted one.
    assert_eq!(store.save_connection(&connection(&id, NOW + 100)).await.unwrap(), 1);
    assert!(store.acquire_lease(&id, 1, "b", NOW + 60, NOW).await.unwrap());
}

/// What every [`crate::crypto::KeyShares`] must do: shares read back whole, per connection,
/// repeated writes harmless, and a shred final, selective and idempotent.
pub async fn check_key_shares(shares: &dyn crate::crypto::KeyShares) {
    use crate::crypto::Share;
    let (a, b) = (fresh_connection_id(), fresh_connection_id());
    let (a, b) = (a.as_str(), b.as_str());
    let first = Share::generate().unwrap();
    let second = Share::generate().unwrap();
    let theirs = Share::generate().unwrap();
    assert!(shares.get(a, &first.id).await.unwrap().is_none(), "nothing before a put");
    shares.put(a, &first).await.unwrap();
    shares.put(a, &first).await.unwrap();
    shares.put(a, &second).await.unwrap();
    shares.put(b, &theirs).await.unwrap();
    let read = shares.get(a, &first.id).await.unwrap().expect("the share");
    assert_eq!((read.id.as_str(), read.secret()), (first.id.as_str(), first.secret()));
    assert!(shares.get(b, &first.id).await.unwrap().is_none(), "shares are per connection");

    assert_eq!(shares.shred(a, Some(&second.id)).await.unwrap(), 1, "all but the one kept");
    assert!(shares.get(a, &first.id).await.unwrap().is_none());
    assert!(shares.get(a, &second.id).await.unwrap().is_some());
    assert_eq!(shares.shred(a, None).await.unwrap(), 1);
    assert_eq!(shares.shred(a, None).await.unwrap(), 0, "a repeat finds nothing");
    assert!(shares.get(a, &second.id).await.unwrap().is_none());
    assert!(shares.get(b, &theirs.id).await.unwrap().is_some(), "other connections untouched");
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_in_memory_store_keeps_the_contract() {
        super::check(&super::super::MemoryStore::default()).await;
    }

    #[tokio::test]
    async fn the_in_memory_key_shares_keep_the_contract() {
        super::check_key_shares(&crate::crypto::MemoryKeyShares::default()).await;
    }
}
