//! Envelope encryption of connection secrets: a KMS data key per write, AES-256-GCM locally.
//!
//! The KMS encryption context binds the ciphertext to the table and connection id, and the
//! same pairs are the AES-GCM associated data, so a sealed blob copied to another connection
//! neither unwraps at KMS nor authenticates locally.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};

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
}

/// Encrypts `plaintext` under `key`, authenticating `context` with it.
pub fn seal(
    key: &DataKey,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Sealed, CryptoError> {
    let cipher = cipher(&key.plaintext)?;
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
    })
}

/// Decrypts a [`Sealed`] value; fails if it was moved to another context or altered.
pub async fn open(
    keys: &dyn DataKeys,
    context: &EncryptionContext,
    sealed: &Sealed,
) -> Result<SecretSlice<u8>, CryptoError> {
    if sealed.alg != ALGORITHM || sealed.nonce.len() != NONCE_LEN {
        return Err(CryptoError::Integrity);
    }
    let key = keys.unwrap(&sealed.key_id, &sealed.wrapped_key, context).await?;
    let cipher = cipher(&key)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sealed_values_round_trip_and_hide_the_plaintext() {
        let keys = FakeDataKeys;
        let ctx = connection_context("con_a");
        let key = keys.generate(&ctx).await.unwrap();
        let sealed = seal(&key, &ctx, b"secret-token-value").unwrap();
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"secret"));
        let opened = open(&keys, &ctx, &sealed).await.unwrap();
        assert_eq!(opened.expose_secret(), b"secret-token-value");
    }

    #[tokio::test]
    async fn sealed_values_do_not_open_under_another_connection() {
        let keys = FakeDataKeys;
        let ctx = connection_context("con_a");
        let key = keys.generate(&ctx).await.unwrap();
        let sealed = seal(&key, &ctx, b"x").unwrap();
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
        let mut sealed = seal(&key, &ctx, b"x").unwrap();
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
        let sealed = seal(&key, &ctx, b"x").unwrap();
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
        let mut old = seal(&key, &legacy, b"y").unwrap();
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
