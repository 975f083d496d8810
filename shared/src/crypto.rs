//! Envelope encryption of connection secrets: a KMS data key per write, AES-256-GCM locally.
//!
//! The KMS encryption context binds the ciphertext to the table and connection id, and the
//! same pairs are the AES-GCM associated data, so a sealed blob copied to another connection
//! neither unwraps at KMS nor authenticates locally.
//!
//! A connection's tokens are sealed under a key derived from the KMS data key *and* a key
//! share ([`Share`]): 32 random bytes made at sign-in and kept in a table of their own,
//! which has no backups. The main table (and every backup of it) holds the ciphertext and
//! the KMS-wrapped data key, never the share. A disconnect deletes the share
//! ([`KeyShares::shred`]), after which no copy of the tokens can be opened, KMS access or
//! not: crypto-shredding.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The algorithm recorded with every sealed value.
pub const ALGORITHM: &str = "AES-256-GCM";
const NONCE_LEN: usize = 12;

/// Failures of envelope encryption.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("KMS request failed")]
    Kms(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("KMS returned a data key of the wrong size")]
    BadDataKey,
    #[error("sealed value is malformed or was tampered with")]
    Integrity,
    #[error("the system random generator failed")]
    Random,
    #[error("the key share table failed")]
    Shares(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The value's key share was deleted (the connection was disconnected): it can never be
    /// opened again.
    #[error("the key share of this value was destroyed")]
    Shredded,
}

/// Key/value pairs that bind a ciphertext to where it is stored.
pub type EncryptionContext = BTreeMap<String, String>;

/// The logical name of the token store in every encryption context. Not the table's name:
/// a point-in-time restore (or any copy) always makes a new table, and tokens bound to the
/// old name could never be opened there.
pub const TOKEN_STORE: &str = "autokitteh-microsoft-oauth";

/// How a [`Sealed`] value's context was formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextScheme {
    /// `{table: <physical table name>, connection_id}`: values sealed before the logical
    /// name; opened until their next refresh re-seals them.
    #[default]
    Table,
    /// `{store: TOKEN_STORE, connection_id}`.
    Store,
}

/// The context every new seal of a connection's secrets uses.
pub fn connection_context(connection_id: &str) -> EncryptionContext {
    BTreeMap::from([
        ("store".to_owned(), TOKEN_STORE.to_owned()),
        ("connection_id".to_owned(), connection_id.to_owned()),
    ])
}

/// The context `sealed` was made with, for a connection in `table`.
pub fn context_of(sealed: &Sealed, table: &str, connection_id: &str) -> EncryptionContext {
    match sealed.scheme {
        ContextScheme::Store => connection_context(connection_id),
        ContextScheme::Table => BTreeMap::from([
            ("table".to_owned(), table.to_owned()),
            ("connection_id".to_owned(), connection_id.to_owned()),
        ]),
    }
}

/// A fresh data key: the plaintext for local use, the KMS-wrapped copy for storage.
#[derive(Debug)]
pub struct DataKey {
    pub key_id: String,
    pub plaintext: SecretSlice<u8>,
    pub wrapped: Vec<u8>,
}

/// The part of KMS this crate needs; a seam so unit tests can run without KMS.
#[async_trait]
pub trait DataKeys: Send + Sync + std::fmt::Debug {
    /// A new 256-bit data key bound to `context`.
    async fn generate(&self, context: &EncryptionContext) -> Result<DataKey, CryptoError>;
    /// Unwraps a data key that [`DataKeys::generate`] made under `key_id` with the same
    /// `context`. Naming the key makes KMS refuse a ciphertext of any other key (and lets a
    /// key policy be checked against the call).
    async fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<SecretSlice<u8>, CryptoError>;
}

/// [`DataKeys`] backed by AWS KMS.
#[derive(Debug, Clone)]
pub struct KmsDataKeys {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl KmsDataKeys {
    pub fn new(client: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Self { client, key_id: key_id.into() }
    }
}

#[async_trait]
impl DataKeys for KmsDataKeys {
    async fn generate(&self, context: &EncryptionContext) -> Result<DataKey, CryptoError> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context.clone().into_iter().collect()))
            .send()
            .await
            .map_err(|e| CryptoError::Kms(Box::new(e.into_service_error())))?;
        let plaintext = out.plaintext.map(Blob::into_inner).ok_or(CryptoError::BadDataKey)?;
        let wrapped = out.ciphertext_blob.map(Blob::into_inner).ok_or(CryptoError::BadDataKey)?;
        if plaintext.len() != 32 {
            return Err(CryptoError::BadDataKey);
        }
        Ok(DataKey {
            key_id: out.key_id.unwrap_or_else(|| self.key_id.clone()),
            plaintext: plaintext.into(),
            wrapped,
        })
    }

    async fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<SecretSlice<u8>, CryptoError> {
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(wrapped))
            .set_encryption_context(Some(context.clone().into_iter().collect()))
            .send()
            .await
            .map_err(|e| CryptoError::Kms(Box::new(e.into_service_error())))?;
        let plaintext = out.plaintext.map(Blob::into_inner).ok_or(CryptoError::BadDataKey)?;
        Ok(plaintext.into())
    }
}

/// A sealed value as stored in DynamoDB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub alg: String,
    pub key_id: String,
    #[serde(with = "serde_bytes")]
    pub wrapped_key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// How the context was formed (absent in values sealed before the logical store name).
    #[serde(default)]
    pub scheme: ContextScheme,
    /// The [`Share`] mixed into the key, for values that can be shredded (absent in values
    /// sealed with the data key alone: app credentials, and tokens sealed before shares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
}

/// Length of a share's secret and of its id's random part.
const SHARE_LEN: usize = 32;
const SHARE_ID_LEN: usize = 16;
/// What the share-derived key is for (HKDF info, followed by the share's id).
const SHARE_KEY_INFO: &[u8] = b"autokitteh-microsoft-oauth/connection-secrets/v1\0";

/// One connection's key share: a random secret kept apart from the sealed values (see the
/// module documentation). Debug output shows the id only.
#[derive(Clone)]
pub struct Share {
    pub id: String,
    secret: SecretSlice<u8>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Share {
    /// A new random share.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut id = [0u8; SHARE_ID_LEN];
        let mut secret = vec![0u8; SHARE_LEN];
        getrandom::fill(&mut id).map_err(|_| CryptoError::Random)?;
        getrandom::fill(&mut secret).map_err(|_| CryptoError::Random)?;
        Ok(Self { id: crate::state::hex(&id), secret: secret.into() })
    }

    /// A share read back from its table.
    pub fn from_parts(id: String, secret: Vec<u8>) -> Result<Self, CryptoError> {
        if secret.len() != SHARE_LEN {
            return Err(CryptoError::Integrity);
        }
        Ok(Self { id, secret: secret.into() })
    }

    /// The secret, for the share table only.
    pub fn secret(&self) -> &[u8] {
        self.secret.expose_secret()
    }

    /// The AES key of a value sealed with data key `data_key` and this share:
    /// HKDF-SHA256 with the share as salt and the data key as input keying material.
    fn derive(&self, data_key: &SecretSlice<u8>) -> Result<SecretSlice<u8>, CryptoError> {
        let data_key = data_key.expose_secret();
        if data_key.len() != 32 {
            return Err(CryptoError::BadDataKey);
        }
        let hkdf = Hkdf::<Sha256>::new(Some(self.secret.expose_secret()), data_key);
        let mut info = SHARE_KEY_INFO.to_vec();
        info.extend_from_slice(self.id.as_bytes());
        let mut key = vec![0u8; 32];
        hkdf.expand(&info, &mut key).map_err(|_| CryptoError::BadDataKey)?;
        Ok(key.into())
    }
}

/// Where the key shares of connections are kept: a table apart from the sealed values, with
/// no backups (DynamoDB in production, memory in unit tests).
#[async_trait]
pub trait KeyShares: Send + Sync + std::fmt::Debug {
    /// Stores `share` for `connection_id`. Safe to repeat after a lost answer.
    async fn put(&self, connection_id: &str, share: &Share) -> Result<(), CryptoError>;
    /// Reads a share back; `Ok(None)` once it was shredded (or never stored).
    async fn get(&self, connection_id: &str, share_id: &str) -> Result<Option<Share>, CryptoError>;
    /// Deletes every share of `connection_id` but `keep`; returns how many it deleted.
    /// Idempotent.
    async fn shred(&self, connection_id: &str, keep: Option<&str>) -> Result<usize, CryptoError>;
    /// Deletes one share (the one a sign-in that was withdrawn sealed with). Idempotent.
    async fn destroy(&self, connection_id: &str, share_id: &str) -> Result<(), CryptoError>;
}

/// A new share for `connection_id`, stored before anything is sealed with it.
pub async fn new_share(shares: &dyn KeyShares, connection_id: &str) -> Result<Share, CryptoError> {
    let share = Share::generate()?;
    shares.put(connection_id, &share).await?;
    Ok(share)
}

/// Once a connection's new tokens (`current`) are written: destroys the shares of the tokens
/// they replaced. Best effort: what it misses, the next sign-in or the disconnect destroys.
pub async fn retire_shares(shares: &dyn KeyShares, connection_id: &str, current: &Sealed) {
    let Some(keep) = current.share_id.as_deref() else { return };
    match shares.shred(connection_id, Some(keep)).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(cid = %connection_id, shares = n, "replaced tokens' key shares destroyed")
        }
        Err(e) => {
            tracing::warn!(cid = %connection_id, error = %crate::error::chain(&e), "replaced tokens' key shares not destroyed; the next sign-in or disconnect does it")
        }
    }
}

/// The share `sealed` names, read from `shares`; [`CryptoError::Shredded`] when it is gone.
pub async fn share_of(
    shares: &dyn KeyShares,
    connection_id: &str,
    sealed: &Sealed,
) -> Result<Share, CryptoError> {
    let id = sealed.share_id.as_deref().ok_or(CryptoError::Integrity)?;
    shares.get(connection_id, id).await?.ok_or(CryptoError::Shredded)
}

/// Encrypts `plaintext` under `key` (mixed with `share`, when given), authenticating
/// `context` with it.
pub fn seal(
    key: &DataKey,
    share: Option<&Share>,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Sealed, CryptoError> {
    let cipher = match share {
        Some(share) => cipher(&share.derive(&key.plaintext)?)?,
        None => cipher(&key.plaintext)?,
    };
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    let aad = associated_data(context);
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
        .map_err(|_| CryptoError::Integrity)?;
    Ok(Sealed {
        alg: ALGORITHM.to_owned(),
        key_id: key.key_id.clone(),
        wrapped_key: key.wrapped.clone(),
        nonce: nonce.to_vec(),
        ciphertext,
        scheme: if context.contains_key("store") {
            ContextScheme::Store
        } else {
            ContextScheme::Table
        },
        share_id: share.map(|s| s.id.clone()),
    })
}

/// Decrypts a [`Sealed`] value sealed without a share; fails if it was moved to another
/// context or altered.
pub async fn open(
    keys: &dyn DataKeys,
    context: &EncryptionContext,
    sealed: &Sealed,
) -> Result<SecretSlice<u8>, CryptoError> {
    if sealed.share_id.is_some() {
        return Err(CryptoError::Integrity);
    }
    check_form(sealed)?;
    let key = keys.unwrap(&sealed.key_id, &sealed.wrapped_key, context).await?;
    decrypt(&key, context, sealed)
}

/// Decrypts a connection's [`Sealed`] value, with its share when it names one (read while
/// KMS unwraps the data key); [`CryptoError::Shredded`] when the share was destroyed.
pub async fn open_shared(
    keys: &dyn DataKeys,
    shares: &dyn KeyShares,
    connection_id: &str,
    context: &EncryptionContext,
    sealed: &Sealed,
) -> Result<SecretSlice<u8>, CryptoError> {
    Ok(open_keeping_share(keys, shares, connection_id, context, sealed).await?.0)
}

/// [`open_shared`], also returning the share it used (`None` for a value sealed without
/// one), for sealing the value's successor with it.
pub async fn open_keeping_share(
    keys: &dyn DataKeys,
    shares: &dyn KeyShares,
    connection_id: &str,
    context: &EncryptionContext,
    sealed: &Sealed,
) -> Result<(SecretSlice<u8>, Option<Share>), CryptoError> {
    if sealed.share_id.is_none() {
        return Ok((open(keys, context, sealed).await?, None));
    }
    check_form(sealed)?;
    let (key, share) = tokio::join!(
        keys.unwrap(&sealed.key_id, &sealed.wrapped_key, context),
        share_of(shares, connection_id, sealed),
    );
    let share = share?;
    let plaintext = decrypt(&share.derive(&key?)?, context, sealed)?;
    Ok((plaintext, Some(share)))
}

fn check_form(sealed: &Sealed) -> Result<(), CryptoError> {
    if sealed.alg != ALGORITHM || sealed.nonce.len() != NONCE_LEN {
        return Err(CryptoError::Integrity);
    }
    Ok(())
}

fn decrypt(
    key: &SecretSlice<u8>,
    context: &EncryptionContext,
    sealed: &Sealed,
) -> Result<SecretSlice<u8>, CryptoError> {
    let cipher = cipher(key)?;
    let aad = associated_data(context);
    let plaintext = cipher
        .decrypt(Nonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: &aad })
        .map_err(|_| CryptoError::Integrity)?;
    Ok(plaintext.into())
}

fn cipher(key: &SecretSlice<u8>) -> Result<Aes256Gcm, CryptoError> {
    let bytes = key.expose_secret();
    if bytes.len() != 32 {
        return Err(CryptoError::BadDataKey);
    }
    Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)))
}

/// A canonical, unambiguous encoding of the context (sorted; lengths prefixed).
fn associated_data(context: &EncryptionContext) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in context {
        for part in [k, v] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out
}

/// In-memory [`DataKeys`] for unit tests: "wraps" a key by XOR with a fixed master key and
/// refuses to unwrap under a different context or key, like KMS.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct FakeDataKeys;

#[cfg(any(test, feature = "testing"))]
#[async_trait]
impl DataKeys for FakeDataKeys {
    async fn generate(&self, context: &EncryptionContext) -> Result<DataKey, CryptoError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| CryptoError::Random)?;
        let mut wrapped: Vec<u8> = key.iter().map(|b| b ^ 0x5a).collect();
        wrapped.extend_from_slice(&associated_data(context));
        Ok(DataKey { key_id: "fake-key".into(), plaintext: key.to_vec().into(), wrapped })
    }

    async fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<SecretSlice<u8>, CryptoError> {
        if key_id != "fake-key" {
            return Err(CryptoError::Kms("the ciphertext was made under another key".into()));
        }
        let (key, bound) = wrapped.split_at_checked(32).ok_or(CryptoError::Integrity)?;
        if bound != associated_data(context).as_slice() {
            return Err(CryptoError::Kms("invalid ciphertext for this context".into()));
        }
        Ok(key.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>().into())
    }
}

/// In-memory [`KeyShares`] for unit tests, with the DynamoDB table's semantics.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct MemoryKeyShares {
    shares: std::sync::Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

#[cfg(any(test, feature = "testing"))]
impl MemoryKeyShares {
    /// The ids of the shares held for `connection_id`.
    pub fn ids(&self, connection_id: &str) -> Vec<String> {
        let shares = self.shares.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        shares.keys().filter(|(c, _)| c == connection_id).map(|(_, id)| id.clone()).collect()
    }
}

#[cfg(any(test, feature = "testing"))]
#[async_trait]
impl KeyShares for MemoryKeyShares {
    async fn put(&self, connection_id: &str, share: &Share) -> Result<(), CryptoError> {
        let mut shares = self.shares.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        shares.insert((connection_id.to_owned(), share.id.clone()), share.secret().to_vec());
        Ok(())
    }

    async fn get(&self, connection_id: &str, share_id: &str) -> Result<Option<Share>, CryptoError> {
        let shares = self.shares.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match shares.get(&(connection_id.to_owned(), share_id.to_owned())) {
            Some(secret) => Share::from_parts(share_id.to_owned(), secret.clone()).map(Some),
            None => Ok(None),
        }
    }

    async fn shred(&self, connection_id: &str, keep: Option<&str>) -> Result<usize, CryptoError> {
        let mut shares = self.shares.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = shares.len();
        shares.retain(|(c, id), _| c != connection_id || Some(id.as_str()) == keep);
        Ok(before - shares.len())
    }

    async fn destroy(&self, connection_id: &str, share_id: &str) -> Result<(), CryptoError> {
        let mut shares = self.shares.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        shares.remove(&(connection_id.to_owned(), share_id.to_owned()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_values_open_with_their_share_and_never_after_it_is_shredded() {
        let keys = FakeDataKeys;
        let shares = MemoryKeyShares::default();
        let ctx = connection_context("con_a");
        let share = Share::generate().unwrap();
        shares.put("con_a", &share).await.unwrap();
        let key = keys.generate(&ctx).await.unwrap();
        let sealed = seal(&key, Some(&share), &ctx, b"refresh-token").unwrap();
        assert_eq!(sealed.share_id.as_deref(), Some(share.id.as_str()));
        let opened = open_shared(&keys, &shares, "con_a", &ctx, &sealed).await.unwrap();
        assert_eq!(opened.expose_secret(), b"refresh-token");
        // The data key alone (what KMS gives anyone who can call it) does not open it.
        let unwrapped = keys.unwrap(&sealed.key_id, &sealed.wrapped_key, &ctx).await.unwrap();
        assert!(matches!(decrypt(&unwrapped, &ctx, &sealed), Err(CryptoError::Integrity)));
        let mut unshared = sealed.clone();
        unshared.share_id = None;
        assert!(open_shared(&keys, &shares, "con_a", &ctx, &unshared).await.is_err());
        // Nor does another share, even one claiming the same id.
        let other = Share::from_parts(share.id.clone(), vec![7; SHARE_LEN]).unwrap();
        let derived = other.derive(&unwrapped).unwrap();
        assert!(decrypt(&derived, &ctx, &sealed).is_err());
        // Another connection's share table entry is not this one's.
        assert!(matches!(
            open_shared(&keys, &shares, "con_b", &connection_context("con_b"), &sealed).await,
            Err(CryptoError::Kms(_) | CryptoError::Shredded)
        ));

        assert_eq!(shares.shred("con_a", None).await.unwrap(), 1);
        assert!(matches!(
            open_shared(&keys, &shares, "con_a", &ctx, &sealed).await,
            Err(CryptoError::Shredded)
        ));
        assert_eq!(shares.shred("con_a", None).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn shredding_keeps_the_share_in_use_and_other_connections_shares() {
        let shares = MemoryKeyShares::default();
        let (old, new, theirs) =
            (Share::generate().unwrap(), Share::generate().unwrap(), Share::generate().unwrap());
        assert_ne!(old.id, new.id);
        shares.put("con_a", &old).await.unwrap();
        shares.put("con_a", &new).await.unwrap();
        shares.put("con_b", &theirs).await.unwrap();
        assert_eq!(shares.shred("con_a", Some(&new.id)).await.unwrap(), 1);
        assert_eq!(shares.ids("con_a"), vec![new.id.clone()]);
        assert_eq!(shares.ids("con_b"), vec![theirs.id.clone()]);
    }

    #[test]
    fn shares_stay_out_of_debug_output() {
        let share = Share::generate().unwrap();
        let shown = format!("{share:?}");
        assert!(shown.contains(&share.id));
        let hex = crate::state::hex(share.secret());
        assert!(!shown.contains(&hex) && !shown.contains(&format!("{:?}", share.secret())));
    }

    #[test]
    fn unshared_values_refuse_a_claimed_share() {
        let keys = FakeDataKeys;
        let ctx = connection_context("con_a");
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let key = runtime.block_on(keys.generate(&ctx)).unwrap();
        let mut sealed = seal(&key, None, &ctx, b"x").unwrap();
        sealed.share_id = Some("made-up".into());
        assert!(matches!(
            runtime.block_on(open(&keys, &ctx, &sealed)),
            Err(CryptoError::Integrity)
        ));
    }

    #[tokio::test]
    async fn sealed_values_round_trip_and_hide_the_plaintext() {
        let keys = FakeDataKeys;
        let ctx = connection_context("con_a");
        let key = keys.generate(&ctx).await.unwrap();
        let sealed = seal(&key, None, &ctx, b"secret-token-value").unwrap();
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"secret"));
        let opened = open(&keys, &ctx, &sealed).await.unwrap();
        assert_eq!(opened.expose_secret(), b"secret-token-value");
    }

    #[tokio::test]
    async fn sealed_values_do_not_open_under_another_connection() {
        let keys = FakeDataKeys;
        let ctx = connection_context("con_a");
        let key = keys.generate(&ctx).await.unwrap();
        let sealed = seal(&key, None, &ctx, b"x").unwrap();
        let other = connection_context("con_b");
        assert!(open(&keys, &other, &sealed).await.is_err());
        // Even with the right data key, the AES-GCM associated data catches the move.
        let cipher = cipher(&key.plaintext).unwrap();
        let moved = cipher.decrypt(
            Nonce::from_slice(&sealed.nonce),
            Payload { msg: &sealed.ciphertext, aad: &associated_data(&other) },
        );
        assert!(moved.is_err());
    }

    #[tokio::test]
    async fn tampering_is_detected() {
        let keys = FakeDataKeys;
        let ctx = connection_context("con_a");
        let key = keys.generate(&ctx).await.unwrap();
        let mut sealed = seal(&key, None, &ctx, b"x").unwrap();
        sealed.ciphertext[0] ^= 1;
        assert!(matches!(open(&keys, &ctx, &sealed).await, Err(CryptoError::Integrity)));
    }

    #[tokio::test]
    async fn new_seals_name_the_store_not_the_table_and_old_ones_still_open() {
        let keys = FakeDataKeys;
        let ctx = connection_context("con_a");
        assert_eq!(ctx.get("store").map(String::as_str), Some(TOKEN_STORE));
        assert!(!ctx.contains_key("table"));
        let key = keys.generate(&ctx).await.unwrap();
        let sealed = seal(&key, None, &ctx, b"x").unwrap();
        assert_eq!(sealed.scheme, ContextScheme::Store);
        // Read back from any table (a restored copy has another name).
        for table in ["oauth", "oauth-restored-2026-11-29"] {
            let opened = open(&keys, &context_of(&sealed, table, "con_a"), &sealed).await;
            assert_eq!(opened.unwrap().expose_secret(), b"x");
        }
        // A value sealed the earlier way (bound to the table's name) still opens in its table.
        let legacy = BTreeMap::from([
            ("table".to_owned(), "oauth".to_owned()),
            ("connection_id".to_owned(), "con_a".to_owned()),
        ]);
        let key = keys.generate(&legacy).await.unwrap();
        let mut old = seal(&key, None, &legacy, b"y").unwrap();
        assert_eq!(old.scheme, ContextScheme::Table);
        let opened = open(&keys, &context_of(&old, "oauth", "con_a"), &old).await.unwrap();
        assert_eq!(opened.expose_secret(), b"y");
        // Claiming the other scheme does not help a moved value.
        old.scheme = ContextScheme::Store;
        assert!(open(&keys, &context_of(&old, "oauth", "con_a"), &old).await.is_err());
    }

    #[test]
    fn sealed_values_without_a_scheme_are_the_table_kind() {
        let json =
            r#"{"alg":"A256GCM","key_id":"k","wrapped_key":[1],"nonce":[2],"ciphertext":[3]}"#;
        let sealed: Sealed = serde_json::from_str(json).unwrap();
        assert_eq!(sealed.scheme, ContextScheme::Table);
    }

    #[test]
    fn associated_data_is_unambiguous() {
        let a = BTreeMap::from([("ab".to_owned(), "c".to_owned())]);
        let b = BTreeMap::from([("a".to_owned(), "bc".to_owned())]);
        assert_ne!(associated_data(&a), associated_data(&b));
    }
}
