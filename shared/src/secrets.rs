//! Secrets read from the environment or from AWS Secrets Manager, cached per warm instance.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use crate::config::SecretSource;

/// How long a fetched secret is trusted before it is read again, so rotation reaches warm
/// instances without a redeploy.
pub const SECRET_CACHE_TTL: Duration = Duration::from_secs(300);

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
}

/// A secret with a per-instance cache. Values given directly are returned as they are.
#[derive(Debug)]
pub struct CachedSecret {
    source: SecretSource,
    client: Option<aws_sdk_secretsmanager::Client>,
    cached: Mutex<Option<(SecretString, Instant)>>,
}

impl CachedSecret {
    /// `client` is needed only when `source` is a Secrets Manager ARN.
    pub fn new(source: SecretSource, client: Option<aws_sdk_secretsmanager::Client>) -> Self {
        Self { source, client, cached: Mutex::new(None) }
    }

    /// The secret, from the cache while it is fresh.
    pub async fn get(&self) -> Result<SecretString, SecretError> {
        let arn = match &self.source {
            SecretSource::Value(value) => return Ok(value.clone()),
            SecretSource::SecretsManager { arn } => arn,
        };
        let mut cached = self.cached.lock().await;
        if let Some((value, fetched)) = cached.as_ref()
            && fetched.elapsed() < SECRET_CACHE_TTL
        {
            return Ok(value.clone());
        }
        let value = self.fetch(arn).await?;
        *cached = Some((value.clone(), Instant::now()));
        Ok(value)
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
        output
            .secret_string
            .filter(|s| !s.trim().is_empty())
            .map(|s| SecretString::from(s.trim().to_owned()))
            .ok_or_else(|| SecretError::Empty { arn: arn.to_owned() })
    }
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
