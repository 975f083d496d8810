//! Background write-back to AutoKitteh (`AUTOKITTEH_API_TOKEN_ARN`): what the connection API
//! and the refresher learn about a connection made inside AutoKitteh reaches its vars there,
//! written as a service user with an API token.
//!
//! - after a refresh: the new access token, its expiry and the (possibly rotated) refresh
//!   token, so workflows never read an expired token;
//! - when the grant is dead (`needs_reauth`): the token vars are deleted, so AutoKitteh shows
//!   the connection as needing initialisation;
//! - on disconnect: every var the flow wrote is deleted.
//!
//! A failed write-back never fails the refresh or the disconnect it follows (those are done
//! and saved); it is logged with its cause, and the next refresh writes again. The service
//! user must be an active member of every org whose connections are made here.

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::autokitteh::{AkError, AkToken, AutoKitteh, DISCONNECT_VARS, TOKEN_VARS, Var, VarLimit};
use crate::domain::ConnectionId;
use crate::secrets::{CachedSecret, SecretError};

/// Why a write-back did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    #[error("the AutoKitteh API token is unavailable")]
    Secret(#[from] SecretError),
    #[error("the AutoKitteh API token is not a usable bearer token")]
    UnusableToken,
    #[error("AutoKitteh refused or failed the write")]
    AutoKitteh(#[from] AkError),
    #[error("the tokens exceed AutoKitteh's limits")]
    Limit(#[from] VarLimit),
    #[error("AutoKitteh did not finish within {} s", WRITE_BACK_TIMEOUT.as_secs())]
    TimedOut,
}

/// The longest a write-back may hold up the refresh or disconnect it follows (a `Set` may
/// be repeated and read back, each call bounded by the HTTP timeout).
pub const WRITE_BACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn bounded<T>(
    work: impl std::future::Future<Output = Result<T, WriteBackError>>,
) -> Result<T, WriteBackError> {
    tokio::time::timeout(WRITE_BACK_TIMEOUT, work).await.unwrap_or(Err(WriteBackError::TimedOut))
}

/// The tokens a refresh produced, as AutoKitteh stores them.
pub struct RefreshedVars<'a> {
    pub access_token: &'a SecretString,
    pub refresh_token: &'a str,
    pub token_type: &'a str,
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for RefreshedVars<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshedVars")
            .field("tokens", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Writes to AutoKitteh as the service user whose API token `token` holds.
#[derive(Debug)]
pub struct WriteBack {
    autokitteh: AutoKitteh,
    token: CachedSecret,
}

impl WriteBack {
    pub fn new(autokitteh: AutoKitteh, token: CachedSecret) -> Self {
        Self { autokitteh, token }
    }

    async fn bearer(&self) -> Result<AkToken, WriteBackError> {
        let secret = self.token.get().await?;
        AkToken::new(secret.expose_secret()).ok_or(WriteBackError::UnusableToken)
    }

    /// Writes a refresh's tokens and expiry (whole seconds, UTC, as AutoKitteh formats it).
    pub async fn refreshed(
        &self,
        cid: &ConnectionId,
        tokens: &RefreshedVars<'_>,
    ) -> Result<(), WriteBackError> {
        let expiry = tokens
            .expires_at
            .replace_nanosecond(0)
            .unwrap_or(tokens.expires_at)
            .to_offset(time::UtcOffset::UTC)
            .format(&Rfc3339)
            .unwrap_or_default();
        let vars = [
            Var::secret(TOKEN_VARS[0], tokens.access_token.expose_secret()),
            Var::secret(TOKEN_VARS[1], tokens.refresh_token),
            Var::plain("oauth_token_type", tokens.token_type),
            Var::plain("oauth_expiry", expiry),
        ];
        crate::autokitteh::check_vars(&vars)?;
        bounded(async {
            let token = self.bearer().await?;
            self.autokitteh.write_vars(&token, cid, &vars, tokens.access_token).await?;
            Ok(())
        })
        .await
    }

    /// Deletes the token vars: AutoKitteh then shows that a new sign-in is needed.
    pub async fn needs_reauth(&self, cid: &ConnectionId) -> Result<(), WriteBackError> {
        self.delete(cid, &TOKEN_VARS).await
    }

    /// Deletes every var the flow wrote but `auth_type` (and nothing the user set, such as a
    /// private app).
    pub async fn disconnected(&self, cid: &ConnectionId) -> Result<(), WriteBackError> {
        self.delete(cid, &DISCONNECT_VARS).await
    }

    async fn delete(&self, cid: &ConnectionId, names: &[&str]) -> Result<(), WriteBackError> {
        bounded(async {
            let token = self.bearer().await?;
            self.autokitteh.delete_vars(&token, cid, names).await?;
            Ok(())
        })
        .await
    }
}
