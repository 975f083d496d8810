//! Secrets read from the environment or from AWS Secrets Manager, cached per warm instance.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use crate::config::SecretSource;

/// How long a fetched secret is trusted before it is read again, so rotation reaches warm
/// instances without a redeploy.
pub const SECRET_CACHE_TTL: Duration = Duration::from_secs(300);
/// When Secrets Manager fails after the cache went stale, the stale value keeps being
/// served and Secrets Manager is asked again after this long (not on every request).
pub const STALE_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Secrets Manager could not give us the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Secrets Manager request for {arn} failed")]
    Unavailable {
        arn: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("secret {arn} has no string value")]
    Empty { arn: String },
    #[error(
        "secret {arn} holds a JSON object with {keys} keys; store the value alone or as one key"
    )]
    Shape { arn: String, keys: usize },
}

/// A secret with a per-instance cache. Values given directly are returned as they are.
#[derive(Debug)]
pub struct CachedSecret {
    source: SecretSource,
    client: Option<aws_sdk_secretsmanager::Client>,
    cached: Mutex<Option<(SecretString, Instant)>>,
    ttl: Duration,
}

impl CachedSecret {
    /// `client` is needed only when `source` is a Secrets Manager ARN.
    pub fn new(source: SecretSource, client: Option<aws_sdk_secretsmanager::Client>) -> Self {
        Self::with_ttl(source, client, SECRET_CACHE_TTL)
    }

    /// The same with another cache lifetime (tests).
    pub fn with_ttl(
        source: SecretSource,
        client: Option<aws_sdk_secretsmanager::Client>,
        ttl: Duration,
    ) -> Self {
        Self { source, client, cached: Mutex::new(None), ttl }
    }

    /// The secret, from the cache while it is fresh.
    pub async fn get(&self) -> Result<SecretString, SecretError> {
        let arn = match &self.source {
            SecretSource::Value(value) => return Ok(value.clone()),
            SecretSource::SecretsManager { arn } => arn,
        };
        let mut cached = self.cached.lock().await;
        if let Some((value, fetched)) = cached.as_ref()
            && fetched.elapsed() < self.ttl
        {
            return Ok(value.clone());
        }
        match self.fetch(arn).await {
            Ok(value) => {
                *cached = Some((value.clone(), Instant::now()));
                Ok(value)
            }
            // Secrets Manager failing must not fail requests a value read minutes ago serves
            // as well: keep it, and ask again a little later.
            Err(e) if matches!(e, SecretError::Unavailable { .. }) && cached.is_some() => {
                let Some((value, fetched)) = cached.as_mut() else { return Err(e) };
                tracing::warn!(error = %crate::error::chain(&e), "Secrets Manager failed; serving the cached value");
                let retry_at = self.ttl.saturating_sub(STALE_RETRY_AFTER);
                *fetched = Instant::now().checked_sub(retry_at).unwrap_or_else(Instant::now);
                Ok(value.clone())
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the secret again, bypassing the cache. Returns `None` when the value did not
    /// change (so a caller retrying after a rejected secret knows a retry is pointless).
    pub async fn refresh_if_changed(
        &self,
        stale: &SecretString,
    ) -> Result<Option<SecretString>, SecretError> {
        let SecretSource::SecretsManager { arn } = &self.source else {
            return Ok(None);
        };
        let mut cached = self.cached.lock().await;
        let value = self.fetch(arn).await?;
        *cached = Some((value.clone(), Instant::now()));
        Ok((value.expose_secret() != stale.expose_secret()).then_some(value))
    }

    async fn fetch(&self, arn: &str) -> Result<SecretString, SecretError> {
        let client = self.client.as_ref().ok_or_else(|| SecretError::Unavailable {
            arn: arn.to_owned(),
            source: "no Secrets Manager client configured".into(),
        })?;
        let output = client.get_secret_value().secret_id(arn).send().await.map_err(|e| {
            SecretError::Unavailable {
                arn: arn.to_owned(),
                source: Box::new(e.into_service_error()),
            }
        })?;
        let raw = output
            .secret_string
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| SecretError::Empty { arn: arn.to_owned() })?;
        secret_value(arn, raw.trim())
    }
}

/// The value a secret string holds: the string itself, or, when it is the console's
/// key/value form (a JSON object), its one value.
fn secret_value(arn: &str, raw: &str) -> Result<SecretString, SecretError> {
    if raw.starts_with('{')
        && let Ok(object) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw)
    {
        return match object.values().collect::<Vec<_>>().as_slice() {
            [serde_json::Value::String(value)] if !value.trim().is_empty() => {
                Ok(SecretString::from(value.trim().to_owned()))
            }
            [_] => Err(SecretError::Empty { arn: arn.to_owned() }),
            values => Err(SecretError::Shape { arn: arn.to_owned(), keys: values.len() }),
        };
    }
    Ok(SecretString::from(raw.to_owned()))
}

impl CachedSecret {
    /// The value when it was given directly (so it can be validated at init); `None` for
    /// Secrets Manager sources, which are read on first use.
    pub fn local_value(&self) -> Option<SecretString> {
        match &self.source {
            SecretSource::Value(value) => Some(value.clone()),
            SecretSource::SecretsManager { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_its_string_or_the_one_value_of_the_consoles_key_value_form() {
        let value = |raw: &str| secret_value("arn", raw).map(|s| s.expose_secret().to_owned());
        assert_eq!(value("cs~abc.DEF_123").unwrap(), "cs~abc.DEF_123");
        assert_eq!(value(r#"{"client_secret":"cs~abc"}"#).unwrap(), "cs~abc");
        assert_eq!(value(r#"{"MICROSOFT_CLIENT_SECRET": " cs~abc "}"#).unwrap(), "cs~abc");
        assert!(matches!(value(r#"{"a":"1","b":"2"}"#), Err(SecretError::Shape { keys: 2, .. })));
        assert!(matches!(value(r#"{}"#), Err(SecretError::Shape { keys: 0, .. })));
        assert!(matches!(value(r#"{"a":1}"#), Err(SecretError::Empty { .. })));
        // Not JSON after all: the string itself.
        assert_eq!(value("{not json").unwrap(), "{not json");
        // The error never carries the value.
        let e = value(r#"{"a":"secret-1","b":"secret-2"}"#).unwrap_err().to_string();
        assert!(!e.contains("secret-1") && !e.contains("secret-2"), "{e}");
    }
}
