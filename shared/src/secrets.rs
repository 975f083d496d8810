//! Secrets read from the environment or from AWS Secrets Manager, cached per warm instance.

use std::time::{Duration, Instant, SystemTime};

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
    /// When the current version was made (Secrets Manager's `CreatedDate`): a rotation.
    current_since: Mutex<Option<SystemTime>>,
    /// The version before it (`AWSPREVIOUS`), and when it was read.
    previous: Mutex<Option<(Option<SecretString>, Instant)>>,
    ttl: Duration,
}

/// The value a secret held before its last rotation.
#[derive(Debug, Clone)]
pub struct Previous {
    pub value: SecretString,
    /// When the current value replaced it.
    pub replaced_at: SystemTime,
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
        Self {
            source,
            client,
            cached: Mutex::new(None),
            current_since: Mutex::new(None),
            previous: Mutex::new(None),
            ttl,
        }
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

    /// Reads the secret again if the cached value is older than a tenth of the cache's
    /// lifetime, at most [`STALE_RETRY_AFTER`] (so a stream of bad requests cannot turn into
    /// a stream of Secrets Manager calls); `Some` with the new value when it changed.
    pub async fn newer(&self) -> Result<Option<SecretString>, SecretError> {
        let SecretSource::SecretsManager { arn } = &self.source else {
            return Ok(None);
        };
        let mut cached = self.cached.lock().await;
        let reread_after = (self.ttl / 10).min(STALE_RETRY_AFTER);
        let old = match cached.as_ref() {
            Some((_, fetched)) if fetched.elapsed() < reread_after => return Ok(None),
            Some((value, _)) => Some(value.clone()),
            None => None,
        };
        let value = self.fetch(arn).await?;
        *cached = Some((value.clone(), Instant::now()));
        let changed = old.is_none_or(|old| old.expose_secret() != value.expose_secret());
        Ok(changed.then_some(value))
    }

    /// The value before the last rotation (`AWSPREVIOUS`) and when it was replaced; `None`
    /// for values given directly or when there is no previous version. Cached like the
    /// current value.
    pub async fn previous(&self) -> Result<Option<Previous>, SecretError> {
        let SecretSource::SecretsManager { arn } = &self.source else {
            return Ok(None);
        };
        let mut previous = self.previous.lock().await;
        let value = match previous.as_ref() {
            Some((value, fetched)) if fetched.elapsed() < self.ttl => value.clone(),
            _ => {
                let value = self.fetch_stage(arn, "AWSPREVIOUS").await?.map(|(v, _)| v);
                *previous = Some((value.clone(), Instant::now()));
                value
            }
        };
        let replaced_at = *self.current_since.lock().await;
        Ok(value.zip(replaced_at).map(|(value, replaced_at)| Previous { value, replaced_at }))
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
        let (value, created) = self
            .fetch_stage(arn, "AWSCURRENT")
            .await?
            .ok_or_else(|| SecretError::Empty { arn: arn.to_owned() })?;
        *self.current_since.lock().await = created;
        Ok(value)
    }

    /// The value of version stage `stage` and when that version was made; `None` when the
    /// secret has no such version.
    async fn fetch_stage(
        &self,
        arn: &str,
        stage: &str,
    ) -> Result<Option<(SecretString, Option<SystemTime>)>, SecretError> {
        let client = self.client.as_ref().ok_or_else(|| SecretError::Unavailable {
            arn: arn.to_owned(),
            source: "no Secrets Manager client configured".into(),
        })?;
        let result = client.get_secret_value().secret_id(arn).version_stage(stage).send().await;
        let output = match result {
            Ok(output) => output,
            Err(e) => {
                let e = e.into_service_error();
                if stage != "AWSCURRENT" && e.is_resource_not_found_exception() {
                    return Ok(None);
                }
                return Err(SecretError::Unavailable { arn: arn.to_owned(), source: Box::new(e) });
            }
        };
        let created = output.created_date.and_then(|d| SystemTime::try_from(d).ok());
        let Some(raw) = output.secret_string.filter(|s| !s.trim().is_empty()) else {
            return Err(SecretError::Empty { arn: arn.to_owned() });
        };
        Ok(Some((secret_value(arn, raw.trim())?, created)))
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

/// The tag on a Secrets Manager secret with the date its value stops working (the "Expires"
/// date Microsoft shows for a client secret): `YYYY-MM-DD` (the end of that day, UTC) or an
/// RFC 3339 time.
pub const EXPIRES_TAG: &str = "ExpiresOn";

/// The end date recorded with a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("tag {EXPIRES_TAG} of secret {arn} is neither YYYY-MM-DD nor an RFC 3339 time")]
    Unreadable { arn: String },
}

impl CachedSecret {
    /// When the secret's value stops working, from its [`EXPIRES_TAG`] tag; `None` for values
    /// given directly and for secrets without the tag. One `DescribeSecret`, never cached: the
    /// refresher asks once a run.
    pub async fn expires_at(&self) -> Result<Option<time::OffsetDateTime>, ExpiryError> {
        let SecretSource::SecretsManager { arn } = &self.source else {
            return Ok(None);
        };
        let client = self.client.as_ref().ok_or_else(|| SecretError::Unavailable {
            arn: arn.to_owned(),
            source: "no Secrets Manager client configured".into(),
        })?;
        let described = client.describe_secret().secret_id(arn).send().await.map_err(|e| {
            SecretError::Unavailable {
                arn: arn.to_owned(),
                source: Box::new(e.into_service_error()),
            }
        })?;
        let Some(tag) = described.tags().iter().find(|t| t.key() == Some(EXPIRES_TAG)) else {
            return Ok(None);
        };
        let value = tag.value().unwrap_or_default();
        parse_expiry(value).map(Some).ok_or_else(|| ExpiryError::Unreadable { arn: arn.to_owned() })
    }
}

/// `YYYY-MM-DD` as the end of that day (UTC), or an RFC 3339 time.
pub fn parse_expiry(value: &str) -> Option<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    let value = value.trim();
    if let Ok(at) = time::OffsetDateTime::parse(value, &Rfc3339) {
        return Some(at);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(value, &format).ok()?;
    Some(day.next_day()?.midnight().assume_utc())
}

/// Which version of a secret a retry used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretVersion {
    /// `AWSCURRENT`, read again: a rotation this instance had not seen.
    Current,
    /// `AWSPREVIOUS`: the value before the last rotation (a new secret Microsoft does not
    /// accept yet).
    Previous,
}

impl SecretVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretVersion::Current => "current",
            SecretVersion::Previous => "previous",
        }
    }
}

impl CachedSecret {
    /// After Microsoft refused `refused`: the other value worth one more try, and which
    /// version it is: the current version read again when it changed, else the previous
    /// version when it differs. `None` when there is no other (the refusal stands).
    pub async fn alternative(
        &self,
        refused: &SecretString,
    ) -> Result<Option<(SecretString, SecretVersion)>, SecretError> {
        if let Some(fresh) = self.refresh_if_changed(refused).await? {
            return Ok(Some((fresh, SecretVersion::Current)));
        }
        let previous = self.previous().await?;
        Ok(previous
            .filter(|p| p.value.expose_secret() != refused.expose_secret())
            .map(|p| (p.value, SecretVersion::Previous)))
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

    #[test]
    fn an_end_date_is_a_day_ending_at_midnight_utc_or_an_rfc3339_time() {
        let at = |v: &str| parse_expiry(v).map(|t| t.unix_timestamp());
        // 2027-03-01 ends at 2027-03-02T00:00:00Z.
        assert_eq!(at("2027-03-01"), Some(1_803_945_600));
        assert_eq!(at(" 2027-03-01T12:00:00+02:00 "), Some(1_803_895_200));
        assert_eq!(at("2027-02-30"), None);
        assert_eq!(at("01/03/2027"), None);
        assert_eq!(at(""), None);
    }
}
