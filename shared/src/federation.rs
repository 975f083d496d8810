//! Secretless client authentication: the function's own AWS identity, as a JWT that AWS STS
//! signs (`sts:GetWebIdentityToken`, IAM outbound identity federation), sent to Microsoft as
//! the client assertion of an app with a federated identity credential trusting it. No client
//! secret exists anywhere.
//!
//! A token is asked for with the audience Entra expects (`api://AzureADTokenExchange`),
//! RS256 and a short lifetime, and reused until shortly before it ends.

use std::time::Duration;

use secrecy::SecretString;
use time::OffsetDateTime;
use tokio::sync::Mutex;

/// `aud` of every token: what an Entra federated identity credential requires.
pub const ENTRA_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The one algorithm Entra verifies for these tokens.
pub const SIGNING_ALGORITHM: &str = "RS256";
/// How long a token is asked for.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// A cached token is replaced when it has less than this left, so one never expires on its
/// way to Microsoft.
pub const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// What `MICROSOFT_CLIENT_AUTH` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// A client secret from Secrets Manager (or the environment, locally).
    Secret,
    /// Tokens from `sts:GetWebIdentityToken`; no secret.
    AwsFederation,
}

impl ClientAuthMode {
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("" | "secret") => Ok(ClientAuthMode::Secret),
            Some("aws_federation") => Ok(ClientAuthMode::AwsFederation),
            Some(_) => Err("must be secret or aws_federation".to_owned()),
        }
    }
}

/// No token could be had from STS.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The account has not enabled IAM outbound identity federation.
    #[error(
        "outbound identity federation is not enabled for this AWS account (aws iam enable-outbound-web-identity-federation)"
    )]
    Disabled,
    /// The role may not ask for such a token (its policy, or an SCP).
    #[error("AWS STS refused the token request: {0}")]
    Refused(String),
    /// STS could not be reached or failed.
    #[error("AWS STS GetWebIdentityToken failed")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl FederationError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, FederationError::Unavailable(_))
    }
}

/// Tokens of this function's AWS identity for Entra, cached per instance.
#[derive(Debug)]
pub struct FederatedAssertions {
    client: aws_sdk_sts::Client,
    cached: Mutex<Option<(SecretString, OffsetDateTime)>>,
}

impl FederatedAssertions {
    pub fn new(client: aws_sdk_sts::Client) -> Self {
        Self { client, cached: Mutex::new(None) }
    }

    /// A token with at least [`RENEW_BEFORE`] left: the cached one, or a new one from STS.
    /// Concurrent callers share one STS call.
    pub async fn assertion(&self) -> Result<SecretString, FederationError> {
        let mut cached = self.cached.lock().await;
        let now = OffsetDateTime::now_utc();
        if let Some((token, until)) = cached.as_ref()
            && *until - now > RENEW_BEFORE
        {
            return Ok(token.clone());
        }
        let (token, until) = self.fetch(now).await?;
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    /// Forgets the cached token (after Microsoft refused it).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(
        &self,
        now: OffsetDateTime,
    ) -> Result<(SecretString, OffsetDateTime), FederationError> {
        let lifetime = i32::try_from(TOKEN_LIFETIME.as_secs()).unwrap_or(300);
        let result = self
            .client
            .get_web_identity_token()
            .audience(ENTRA_AUDIENCE)
            .signing_algorithm(SIGNING_ALGORITHM)
            .duration_seconds(lifetime)
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(e) => {
                let e = e.into_service_error();
                if e.is_outbound_web_identity_federation_disabled_exception() {
                    return Err(FederationError::Disabled);
                }
                let code = aws_smithy_types::error::metadata::ProvideErrorMetadata::code(&e);
                return match code {
                    Some(code @ ("AccessDenied" | "AccessDeniedException" | "ValidationError")) => {
                        Err(FederationError::Refused(code.to_owned()))
                    }
                    _ => Err(FederationError::Unavailable(Box::new(e))),
                };
            }
        };
        let token = output
            .web_identity_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| FederationError::Unavailable("STS answered without a token".into()))?;
        // Trust our own lifetime when STS's expiration is missing or unreadable.
        let until = output
            .expiration
            .and_then(|e| OffsetDateTime::from_unix_timestamp(e.secs()).ok())
            .unwrap_or(now + TOKEN_LIFETIME);
        Ok((SecretString::from(token), until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_is_a_secret_unless_federation_is_asked_for() {
        assert_eq!(ClientAuthMode::parse(None), Ok(ClientAuthMode::Secret));
        assert_eq!(ClientAuthMode::parse(Some(" secret ")), Ok(ClientAuthMode::Secret));
        assert_eq!(
            ClientAuthMode::parse(Some("aws_federation")),
            Ok(ClientAuthMode::AwsFederation)
        );
        assert!(ClientAuthMode::parse(Some("federated")).is_err());
    }
}
