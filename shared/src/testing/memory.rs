//! In-memory double of the store, for unit tests.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::ConnectionId;
use crate::state::StateKey;
use crate::store::classify_failed_consume;
use crate::store::*;

/// In-memory [`Store`] with DynamoDB's semantics (the store contract,
/// [`super::store_contract`], holds both to it), for unit tests. Leases live with their
/// connection: a new sign-in or a delete ends them.
#[derive(Debug, Default)]
pub struct MemoryStore {
    grants: Mutex<HashMap<String, i64>>,
    states: Mutex<HashMap<String, PendingFlow>>,
    connections: Mutex<HashMap<String, StoredConnection>>,
    leases: Mutex<HashMap<String, (String, i64)>>,
    apps: Mutex<HashMap<String, StoredApp>>,
    /// Incident items: the connections counted, and whether it was declared.
    incidents: Mutex<HashMap<String, (std::collections::BTreeSet<String>, bool)>>,
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

    async fn grant_spent(&self, grant_id: &str) -> Result<bool, StoreError> {
        let grants = self.grants.lock().map_err(|_| poisoned())?;
        Ok(grants.contains_key(&grant_key(grant_id)))
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
        self.leases.lock().map_err(|_| poisoned())?.remove(&key);
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
                c.refresh_failures = 0;
                if let Some(granted) = &update.granted_scopes {
                    c.granted_scopes = Some(granted.clone());
                }
                c.refresh_failed_at = None;
                c.refresh_failure = None;
                stored.version += 1;
                leases.remove(&key);
                Ok(Some(stored.version))
            }
            _ => Ok(None),
        }
    }

    async fn reseal_connection(
        &self,
        id: &ConnectionId,
        version: u64,
        secrets: &crate::crypto::Sealed,
        now: i64,
    ) -> Result<Option<u64>, StoreError> {
        let mut connections = self.connections.lock().map_err(|_| poisoned())?;
        let leases = self.leases.lock().map_err(|_| poisoned())?;
        let key = connection_key(id);
        let leased = leases.get(&key).is_some_and(|(_, until)| *until >= now);
        match connections.get_mut(&key) {
            Some(stored) if stored.version == version && !leased => {
                stored.connection.secrets = secrets.clone();
                stored.version += 1;
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

    async fn postpone_refresh(
        &self,
        id: &ConnectionId,
        owner: &str,
        due_at: i64,
        failures: u32,
        mark: &RefreshFailureMark,
    ) -> Result<bool, StoreError> {
        if !self.hold_after_failure(id, owner, mark).await? {
            return Ok(false);
        }
        let mut connections = self.connections.lock().map_err(|_| poisoned())?;
        if let Some(stored) = connections.get_mut(&connection_key(id)) {
            stored.connection.refresh_due_at = due_at;
            stored.connection.refresh_failures = failures;
        }
        Ok(true)
    }

    async fn hold_after_failure(
        &self,
        id: &ConnectionId,
        owner: &str,
        mark: &RefreshFailureMark,
    ) -> Result<bool, StoreError> {
        let mut connections = self.connections.lock().map_err(|_| poisoned())?;
        let mut leases = self.leases.lock().map_err(|_| poisoned())?;
        let key = connection_key(id);
        if leases.get(&key).is_none_or(|(holder, _)| holder != owner) {
            return Ok(false);
        }
        leases.insert(key.clone(), (owner.to_owned(), mark.cooldown_until));
        if let Some(stored) = connections.get_mut(&key) {
            stored.connection.refresh_failed_at = Some(mark.failed_at.clone());
            stored.connection.refresh_failure = Some(mark.failure.clone());
        }
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
        self.leases.lock().map_err(|_| poisoned())?.remove(&connection_key(id));
        Ok(connections.remove(&connection_key(id)).map(|old| Removed {
            autokitteh_user_id: old.connection.autokitteh_user_id,
            version: Some(old.version),
        }))
    }

    async fn withdraw_connection(
        &self,
        id: &ConnectionId,
        version: u64,
    ) -> Result<bool, StoreError> {
        let mut connections = self.connections.lock().map_err(|_| poisoned())?;
        match connections.get(&connection_key(id)) {
            Some(c) if c.version != version => Ok(false),
            _ => {
                connections.remove(&connection_key(id));
                self.leases.lock().map_err(|_| poisoned())?.remove(&connection_key(id));
                Ok(true)
            }
        }
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

    async fn connection_page(
        &self,
        after: Option<&str>,
        limit: i32,
    ) -> Result<ConnectionPage, StoreError> {
        let connections = self.connections.lock().map_err(|_| poisoned())?;
        let (connections, next) = page_of(&connections, after, limit);
        Ok(ConnectionPage { connections, next })
    }

    async fn app_page(&self, after: Option<&str>, limit: i32) -> Result<AppPage, StoreError> {
        let apps = self.apps.lock().map_err(|_| poisoned())?;
        let (apps, next) = page_of(&apps, after, limit);
        Ok(AppPage { apps, next })
    }

    async fn reseal_app(
        &self,
        id: &ConnectionId,
        version: u64,
        credential: &crate::crypto::Sealed,
    ) -> Result<Option<u64>, StoreError> {
        let mut apps = self.apps.lock().map_err(|_| poisoned())?;
        match apps.get_mut(&app_key(id)) {
            Some(stored) if stored.version == version => {
                stored.app.credential_sealed = credential.clone();
                stored.version += 1;
                Ok(Some(stored.version))
            }
            _ => Ok(None),
        }
    }

    async fn count_failure(
        &self,
        signature: &str,
        connection: &ConnectionId,
        cap: u32,
        _expires_at: i64,
    ) -> Result<u32, StoreError> {
        let mut incidents = self.incidents.lock().map_err(|_| poisoned())?;
        let (held, _) = incidents.entry(incident_key(signature)).or_default();
        let id = connection.to_string();
        if held.contains(&id) || held.len() < usize::try_from(cap).unwrap_or(usize::MAX) {
            held.insert(id);
            return Ok(u32::try_from(held.len()).unwrap_or(u32::MAX));
        }
        Ok(cap)
    }

    async fn declare_incident(&self, signature: &str, _at: i64) -> Result<bool, StoreError> {
        let mut incidents = self.incidents.lock().map_err(|_| poisoned())?;
        match incidents.get_mut(&incident_key(signature)) {
            Some((_, declared @ false)) => {
                *declared = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn save_app(&self, app: &AppRecord) -> Result<u64, StoreError> {
        let mut apps = self.apps.lock().map_err(|_| poisoned())?;
        let version = apps.get(&app_key(&app.connection_id)).map_or(0, |a| a.version) + 1;
        apps.insert(app_key(&app.connection_id), StoredApp { app: app.clone(), version });
        Ok(version)
    }

    async fn get_app(&self, id: &ConnectionId) -> Result<Option<StoredApp>, StoreError> {
        Ok(self.apps.lock().map_err(|_| poisoned())?.get(&app_key(id)).cloned())
    }

    async fn delete_app(&self, id: &ConnectionId) -> Result<bool, StoreError> {
        Ok(self.apps.lock().map_err(|_| poisoned())?.remove(&app_key(id)).is_some())
    }
}

/// The items of `items` after the key `after`, in key order, at most `limit`, and the key
/// to resume after when more follow.
fn page_of<T: Clone>(
    items: &HashMap<String, T>,
    after: Option<&str>,
    limit: i32,
) -> (Vec<T>, Option<String>) {
    let mut keys: Vec<&String> =
        items.keys().filter(|k| after.is_none_or(|a| k.as_str() > a)).collect();
    keys.sort();
    let limit = usize::try_from(limit).unwrap_or(0).max(1);
    let page: Vec<T> = keys.iter().take(limit).filter_map(|k| items.get(*k).cloned()).collect();
    let next = (keys.len() > limit).then(|| keys[limit - 1].clone());
    (page, next)
}

fn poisoned() -> StoreError {
    StoreError::Unavailable { operation: "memory", source: "lock poisoned".into() }
}
