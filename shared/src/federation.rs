//! Secretless client authentication: the function's own AWS identity, as a JWT that AWS STS
//! signs (`sts:GetWebIdentityToken`, IAM outbound identity federation), sent to Microsoft as
//! the client assertion of an app with a federated identity credential trusting it. No client
//! secret exists anywhere.
//!
//! A token is asked for with RS256 and a short lifetime, and reused until shortly before it
//! ends. Its audience says which app may take it:
//! - the server-wide app's tokens carry the audience Entra proposes (`api://AzureADTokenExchange`);
//! - a connection's own app gets tokens whose audience names that connection
//!   ([`own_app_audience`]), so an app owner's federated identity credential trusts this
//!   deployment for one connection only. With the plain audience, anyone able to set an app on
//!   their own connection could borrow any app that trusts the deployment (another customer's
//!   daemon app) and be given its tokens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::domain::ConnectionId;

/// `aud` of every token: what an Entra federated identity credential requires.
pub const ENTRA_AUDIENCE: &str = "api://AzureADTokenExchange";
/// What every connection's own-app audience starts with (the IAM condition allows exactly
/// [`ENTRA_AUDIENCE`] and this prefix).
pub const OWN_APP_AUDIENCE_PREFIX: &str = "api://AzureADTokenExchange/connections/";
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

/// Which federated identity an app's assertions prove: this function's AWS identity, for
/// one audience.
#[derive(Debug, Clone)]
pub struct FederatedIdentity {
    source: Arc<FederatedAssertions>,
    audience: String,
}

impl FederatedIdentity {
    /// The server-wide app's: the audience Entra proposes.
    pub fn server_wide(source: Arc<FederatedAssertions>) -> Self {
        Self { source, audience: ENTRA_AUDIENCE.to_owned() }
    }

    /// A connection's own app's: an audience that names the connection.
    pub fn own_app(source: Arc<FederatedAssertions>, cid: &ConnectionId) -> Self {
        Self { source, audience: own_app_audience(cid) }
    }

    /// The `aud` of its assertions.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// A current assertion.
    pub async fn assertion(&self) -> Result<SecretString, FederationError> {
        self.source.assertion(&self.audience).await
    }
}

impl FederationError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, FederationError::Unavailable(_))
    }
}

/// The audience of the tokens a connection's own app is given: it names the connection.
/// The app owner puts exactly this in the app's federated identity credential.
pub fn own_app_audience(cid: &ConnectionId) -> String {
    format!("{OWN_APP_AUDIENCE_PREFIX}{cid}")
}

/// How many audiences keep a cached token at once; past it the cache starts again (a
/// refresher run touches one audience per own-app connection).
const CACHED_AUDIENCES: usize = 512;

/// One audience's cached token.
type Slot = Arc<Mutex<Option<(SecretString, OffsetDateTime)>>>;

/// Tokens of this function's AWS identity for Entra, cached per instance and audience.
#[derive(Debug)]
pub struct FederatedAssertions {
    client: aws_sdk_sts::Client,
    cached: std::sync::Mutex<HashMap<String, Slot>>,
}

impl FederatedAssertions {
    pub fn new(client: aws_sdk_sts::Client) -> Self {
        Self { client, cached: std::sync::Mutex::new(HashMap::new()) }
    }

    fn slot(&self, audience: &str) -> Slot {
        let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !cached.contains_key(audience) && cached.len() >= CACHED_AUDIENCES {
            cached.clear();
        }
        cached.entry(audience.to_owned()).or_default().clone()
    }

    /// A token for `audience` with at least [`RENEW_BEFORE`] left: the cached one, or a new
    /// one from STS. Concurrent callers for one audience share one STS call.
    pub async fn assertion(&self, audience: &str) -> Result<SecretString, FederationError> {
        let slot = self.slot(audience);
        let mut cached = slot.lock().await;
        let now = OffsetDateTime::now_utc();
        if let Some((token, until)) = cached.as_ref()
            && *until - now > RENEW_BEFORE
        {
            return Ok(token.clone());
        }
        let (token, until) = self.fetch(audience, now).await?;
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    async fn fetch(
        &self,
        audience: &str,
        now: OffsetDateTime,
    ) -> Result<(SecretString, OffsetDateTime), FederationError> {
        let lifetime = i32::try_from(TOKEN_LIFETIME.as_secs()).unwrap_or(300);
        let result = self
            .client
            .get_web_identity_token()
            .audience(audience)
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

    #[test]
    fn an_own_apps_audience_names_its_connection_under_the_allowed_prefix() {
        let cid: ConnectionId = "con_0123456789abcdefghijklmnop".parse().unwrap();
        let audience = own_app_audience(&cid);
        assert_eq!(
            audience,
            "api://AzureADTokenExchange/connections/con_0123456789abcdefghijklmnop"
        );
        assert!(audience.starts_with(OWN_APP_AUDIENCE_PREFIX));
        assert!(OWN_APP_AUDIENCE_PREFIX.starts_with(ENTRA_AUDIENCE));
    }
}
