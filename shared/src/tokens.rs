//! Serving valid access tokens: refresh before expiry, one refresh at a time across every
//! instance (a lease on the connection item), rotated refresh tokens always kept, dead grants
//! reported as `needs_reauth`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth2::RefreshToken;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::apps::{AppKind, Credential, OpenAppError};
use crate::audit::{Act, AuditEvent, AuditTrail, Caller};
use crate::clock::Clock;
use crate::crypto::{
    CryptoError, DataKeys, KeyShares, Share, connection_context, context_of, open_keeping_share,
    seal, share_of,
};
use crate::domain::ConnectionId;
use crate::events::{ConnectionEvent, EventKind, Events};
use crate::metrics::{Metric, Metrics};
use crate::microsoft::{ClientAuth, FailureClass, Microsoft, Refreshed, TokenError};
use crate::secrets::{CachedSecret, SecretError};
use crate::store::{
    RefreshFailureMark, RefreshUpdate, STATUS_NEEDS_REAUTH, Store, StoreError, StoredConnection,
};
use crate::writeback::{RefreshedVars, WriteBack};

/// Refresh when the access token expires within this margin (unless configured).
pub use crate::config::DEFAULT_REFRESH_MARGIN;
/// How often a connection is refreshed only to keep its refresh token alive (Microsoft's
/// end after 90 days unused, and each use starts the 90 days again).
/// What a write-back put into AutoKitteh, to check it against the table afterwards.
#[derive(Debug, Clone, Copy)]
enum Written {
    /// The tokens of this version of the connection.
    Version(u64),
    /// The token vars were deleted (the grant is dead).
    NeedsReauth,
}

pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How widely keep-alive refreshes are spread around the interval.
pub const KEEPALIVE_SPREAD: Duration = Duration::from_secs(24 * 3600);
/// The first wait after a failed scheduled refresh; it doubles per failure in a row.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// The longest wait between retries of a failing connection.
pub const MAX_BACKOFF: Duration = Duration::from_secs(12 * 3600);
/// Failures in a row after which a connection is reported as stuck (an error line and a
/// failed refresher run, which the function's error alarm sees).
pub const STUCK_AFTER: u32 = 6;
/// How long a refresh lease is held at most. Longer than a refresh can take (three attempts
/// of at most 10 s plus backoff), so a lease never lapses under a working holder.
pub const LEASE_SECS: i64 = 60;
/// How long a request waits for another instance's refresh before giving up.
pub const WAIT_FOR_OTHER_REFRESH: Duration = Duration::from_secs(8);
/// Attempts at the token endpoint for transient failures (one retry: a longer outage is
/// shared through [`REFRESH_COOLDOWN`] rather than retried by each request).
pub const REFRESH_ATTEMPTS: u32 = 2;
/// How long after a failed refresh every reader shares that failure instead of calling
/// Microsoft again: a burst of requests during an outage makes one refresh call, not one
/// per request (the lease stays taken that long).
pub const REFRESH_COOLDOWN: Duration = Duration::from_secs(30);

/// The decrypted secret vars of a connection.
#[derive(Serialize, Deserialize)]
pub struct SecretVars {
    pub oauth_access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_refresh_token: Option<String>,
}

impl std::fmt::Debug for SecretVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretVars([redacted])")
    }
}

/// A valid access token.
#[derive(Debug)]
pub struct AccessGrant {
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_at: OffsetDateTime,
    /// True if this request caused (or waited for) a refresh.
    pub refreshed: bool,
    /// True if a due refresh failed transiently and the older, still valid token is served.
    pub stale: bool,
    /// The connection's version the token came from (or was saved as).
    pub version: u64,
}

/// Why no token could be served.
#[derive(Debug, thiserror::Error)]
pub enum TokenFailure {
    #[error("the connection is not initialized")]
    NotConnected,
    #[error("the connection needs a new sign-in: {reason}")]
    NeedsReauth { reason: String },
    #[error("the token could not be refreshed now: {0}")]
    Unavailable(&'static str),
    /// A refresh failed moments ago (this request's, or one it shares): no new token.
    #[error("the token could not be refreshed ({failure}); try again in {retry_after_secs} s")]
    RefreshFailed {
        /// The failure class, with Microsoft's AADSTS code when it gave one.
        failure: String,
        retry_after_secs: u64,
        /// The dependency that failed, for the request that called it (none for those that
        /// shared its outcome and called nothing).
        dependency: Option<&'static str>,
    },
    #[error("token endpoint failed")]
    Token(#[source] TokenError),
    #[error("store failed")]
    Store(#[from] StoreError),
    #[error("decryption failed")]
    Crypto(#[from] CryptoError),
    #[error("client secret unavailable")]
    Secret(#[from] SecretError),
    #[error("the stored secrets are unreadable")]
    Corrupt,
}

impl TokenFailure {
    /// The `Outcome` of a failed refresh in [`crate::metrics::name::REFRESH`].
    pub fn metric_outcome(&self) -> &'static str {
        match self {
            TokenFailure::NeedsReauth { .. } => "needs_reauth",
            TokenFailure::Token(e) if e.class() == FailureClass::AppMisconfigured => {
                "app_misconfigured"
            }
            TokenFailure::RefreshFailed { dependency: None, .. } => "cooldown",
            _ => "failed",
        }
    }

    /// The failure class of a refusal or outage; `None` when there is none to give.
    pub fn failure_class(&self) -> Option<&'static str> {
        match self {
            TokenFailure::NeedsReauth { reason } => Some(
                crate::microsoft::class_of_reason(reason)
                    .unwrap_or(FailureClass::SignInAgain)
                    .as_str(),
            ),
            TokenFailure::Token(e) => Some(e.class().as_str()),
            TokenFailure::Store(_) | TokenFailure::Crypto(_) | TokenFailure::Secret(_) => {
                Some(FailureClass::Transient.as_str())
            }
            TokenFailure::RefreshFailed { failure, .. } => {
                let class = failure.split(' ').next().unwrap_or_default();
                crate::metrics::dimension_values("Class")?.iter().copied().find(|c| *c == class)
            }
            _ => None,
        }
    }

    /// What a failed refresh leaves on the connection for readers to share: its class and
    /// Microsoft's code, e.g. `transient` or `app_misconfigured (AADSTS7000215)`.
    pub fn failure_text(&self) -> String {
        if let TokenFailure::RefreshFailed { failure, .. } = self {
            return failure.clone();
        }
        let class = self.failure_class().unwrap_or(FailureClass::Transient.as_str());
        match self.aadsts() {
            Some(code) => format!("{class} (AADSTS{code})"),
            None => class.to_owned(),
        }
    }

    /// Microsoft's AADSTS code, when Microsoft refused with one.
    pub fn aadsts(&self) -> Option<u32> {
        match self {
            TokenFailure::Token(TokenError::Rejected(m)) => m.error_codes.first().copied(),
            TokenFailure::NeedsReauth { reason } => crate::microsoft::code_of_reason(reason),
            _ => None,
        }
    }

    /// The dependency whose outage this is, if any.
    pub fn failed_dependency(&self) -> Option<&'static str> {
        use crate::metrics as m;
        match self {
            TokenFailure::Token(e) => m::token_dependency(e),
            TokenFailure::Store(e) => m::store_dependency(e),
            TokenFailure::Crypto(e) => m::crypto_dependency(e),
            TokenFailure::Secret(SecretError::Unavailable { .. }) => Some("secrets_manager"),
            TokenFailure::RefreshFailed { dependency, .. } => *dependency,
            _ => None,
        }
    }
}

/// Failures of one tenant are counted in windows of this many seconds.
pub const INCIDENT_WINDOW_SECS: i64 = 600;
/// Connections of one tenant refused the same way within a window that make an incident.
pub const INCIDENT_THRESHOLD: u32 = 5;

/// Days before an own app's certificate ends from which each use logs a warning naming the
/// connection (the alarm's threshold is the operator's `CredentialWarningDays`).
const CERTIFICATE_WARNING_DAYS: f64 = 60.0;

/// Where a refused credential's replacement for one more try comes from.
#[derive(Debug, Clone, Copy)]
enum Fallback<'a> {
    /// The other version of the server-wide secret in Secrets Manager.
    ServerSecret,
    /// The credential the connection's own app had before its last change.
    OwnApp(&'a ConnectionId),
}

/// What [`TokenService::reseal`] did with one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResealOutcome {
    /// Sealed anew under the current key.
    Resealed,
    /// Already sealed under the current key, the current way.
    Current,
    /// Being refreshed, or changed meanwhile: try it again later.
    Busy,
}

/// What a new token for a connection comes from: a refresh token (default and private
/// user-delegated apps) or the app's own credential (daemon apps).
enum Renewal {
    Refreshed(Refreshed),
    AppToken(crate::microsoft::AppToken),
}

/// What the refresher did with one connection.
#[derive(Debug)]
pub enum RenewOutcome {
    Refreshed,
    NeedsReauth,
    /// Not due any more, refreshing elsewhere, or gone.
    Skipped,
    /// Failed; retried after a backoff.
    Failed(TokenFailure),
    /// Failed [`STUCK_AFTER`] or more times in a row.
    Stuck(TokenFailure),
}

/// What the scheduled refresh of a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// A fresh access token where it is read without us: AutoKitteh's vars, written back
    /// after every refresh. Due shortly before the access token expires.
    AccessToken,
    /// A live refresh token: readers get fresh access tokens from the token API, which
    /// refreshes on read. Due every [`KEEPALIVE_INTERVAL`] (spread by a day), far inside
    /// Microsoft's 90 days of inactivity after which a refresh token ends.
    RefreshToken,
}

/// When a connection refreshed at `refreshed_at`, whose access token expires at
/// `token_expires_at`, is due again.
pub fn refresh_due_at(
    keep: Keep,
    cid: &ConnectionId,
    token_expires_at: i64,
    refreshed_at: i64,
    margin: Duration,
) -> i64 {
    match keep {
        Keep::AccessToken => {
            token_expires_at.saturating_sub(i64::try_from(margin.as_secs()).unwrap_or(i64::MAX))
        }
        Keep::RefreshToken => {
            let interval = i64::try_from(KEEPALIVE_INTERVAL.as_secs()).unwrap_or(i64::MAX);
            let spread = i64::try_from(KEEPALIVE_SPREAD.as_secs()).unwrap_or(1).max(1);
            // Spread by connection and time, so connections made together do not all come
            // due in the same run.
            use sha2::{Digest, Sha256};
            let digest = Sha256::digest(format!("{cid}/{refreshed_at}").as_bytes());
            let draw = u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]));
            let offset = i64::try_from(draw % spread.unsigned_abs()).unwrap_or(0);
            refreshed_at.saturating_add(interval - spread / 2 + offset)
        }
    }
}

/// The wait before retrying a connection whose refresh failed `failures` times in a row.
pub fn backoff_after(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1))).min(MAX_BACKOFF)
}

/// Serves and refreshes tokens; shared by the API, the refresher and `akoauth`.
#[derive(Debug, Clone)]
pub struct TokenService {
    pub store: Arc<dyn Store>,
    pub keys: Arc<dyn DataKeys>,
    /// The key shares mixed into the keys of connections' tokens (`KEY_SHARES_TABLE_NAME`).
    pub shares: Arc<dyn KeyShares>,
    pub microsoft: Microsoft,
    pub client_secret: Arc<CachedSecret>,
    pub clock: Arc<dyn Clock>,
    pub events: Arc<dyn Events>,
    pub table: String,
    pub margin: Duration,
    /// First backoff between attempts; doubles each time.
    pub backoff: Duration,
    /// Writes refreshes and removals of connections made inside AutoKitteh back to it
    /// (`AUTOKITTEH_API_TOKEN_ARN`).
    pub write_back: Option<Arc<WriteBack>>,
    /// Refresh outcomes and write-backs.
    pub metrics: Arc<dyn Metrics>,
    /// Where the audit trail goes (tokens served, refreshes, disconnects).
    pub audit: Arc<dyn AuditTrail>,
    /// With `MICROSOFT_CLIENT_AUTH=aws_federation`: the server-wide app authenticates with
    /// this function's AWS identity, and `client_secret` is never read.
    pub federation: Option<Arc<crate::federation::FederatedAssertions>>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn parse_time(rfc: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(rfc, &Rfc3339).ok()
}

impl TokenService {
    /// Builds the service from the environment as `role` reads it (the variables of the
    /// redirect function that concern tokens, plus `EVENT_BUS_NAME` and
    /// `TOKEN_REFRESH_MARGIN_SECONDS`).
    pub fn from_sdk(
        role: crate::config::Role,
        lookup: &dyn Fn(&str) -> Option<String>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, crate::config::ConfigError> {
        Self::wire(&crate::wiring::Wiring::new(role, lookup, sdk))
    }

    /// Builds the service through `wiring`.
    pub fn wire(wiring: &crate::wiring::Wiring<'_>) -> Result<Self, crate::config::ConfigError> {
        let config = wiring.config()?;
        let (client_secret, federation) = wiring.client_credential()?;
        let http = wiring.http(&config)?;
        let write_back = wiring.write_back(&config, &http)?;
        let (metrics, audit) = wiring.observability();
        let dynamodb = wiring.dynamodb();
        Ok(Self {
            shares: wiring.key_shares(&dynamodb)?,
            store: wiring.store(&config, &dynamodb),
            keys: wiring.data_keys()?,
            microsoft: Microsoft::new(crate::microsoft::Endpoints::new(&config), http),
            client_secret: Arc::new(client_secret),
            clock: wiring.clock(),
            events: wiring.events(),
            table: config.table_name,
            margin: config.refresh_margin,
            backoff: wiring.retry_backoff(),
            write_back,
            metrics,
            audit,
            federation,
        })
    }

    /// A valid access token for `cid`, refreshed first when it expires within the margin or
    /// when `force` is set; asked by an operator's tool.
    pub async fn token(
        &self,
        cid: &ConnectionId,
        force: bool,
    ) -> Result<AccessGrant, TokenFailure> {
        self.token_by(cid, force, &Caller::operator()).await
    }

    /// The same, asked by `caller` (whom the audit trail names).
    pub async fn token_by(
        &self,
        cid: &ConnectionId,
        force: bool,
        caller: &Caller,
    ) -> Result<AccessGrant, TokenFailure> {
        let result = self.current_token(cid, force, caller).await;
        if let Ok(grant) = &result {
            let mut event = AuditEvent::new(
                Act::TokenServed,
                &[&caller.request_id],
                self.clock.now(),
                cid,
                caller.actor.clone(),
                if grant.stale { "stale" } else { "served" },
            );
            event.connection_version = Some(grant.version);
            self.audit.record(event).await;
        }
        result
    }

    async fn current_token(
        &self,
        cid: &ConnectionId,
        force: bool,
        caller: &Caller,
    ) -> Result<AccessGrant, TokenFailure> {
        let asked_at = self.clock.now();
        let deadline = Instant::now() + WAIT_FOR_OTHER_REFRESH;
        let mut poll = Duration::from_millis(40);
        // A new sign-in destroys the share of the tokens it replaces: a read that raced it
        // reads the connection again, once.
        let mut reread = false;
        loop {
            let stored = self.store.get_connection(cid).await?.ok_or(TokenFailure::NotConnected)?;
            let c = &stored.connection;
            if c.status == STATUS_NEEDS_REAUTH {
                return Err(TokenFailure::NeedsReauth {
                    reason: c.status_reason.clone().unwrap_or_default(),
                });
            }
            let now = self.clock.now().unix_timestamp();
            let margin = i64::try_from(self.margin.as_secs()).unwrap_or(0);
            let fresh = c.token_expires_at > now + margin;
            // A forced refresh is satisfied by any refresh that finished after it was asked
            // (one already in flight included: concurrent forced requests share it).
            let refreshed_since = parse_time(&c.last_refresh_at) > Some(asked_at);
            if (!force && fresh) || refreshed_since {
                match self.serve(&stored, refreshed_since, false).await {
                    Err(TokenFailure::NeedsReauth { .. }) if !reread => {
                        reread = true;
                        continue;
                    }
                    served => return served,
                }
            }
            // A refresh failed moments ago: share its outcome rather than call again.
            if let Some(failure) = self.recent_failure(c, asked_at) {
                self.record_refresh("request", "cooldown");
                if !force && c.token_expires_at > now {
                    return self.serve(&stored, false, true).await;
                }
                return Err(failure);
            }
            let owner = lease_owner();
            if self.store.acquire_lease(cid, stored.version, &owner, now + LEASE_SECS, now).await? {
                let result = self.refresh_with_lease(&stored, &owner, force).await;
                let outcome = match &result {
                    Ok(grant) if grant.stale => "stale",
                    Ok(_) => "refreshed",
                    Err(e) => e.metric_outcome(),
                };
                self.record_refresh("request", outcome);
                self.audit_refresh(&stored, &result, "request", caller).await;
                self.watch_tenant(&stored, &result).await;
                return result;
            }
            // Another instance is refreshing (or just wrote): wait for its result.
            if Instant::now() >= deadline {
                if c.token_expires_at > now {
                    return self.serve(&stored, false, true).await;
                }
                return Err(TokenFailure::Unavailable("another refresh did not finish in time"));
            }
            tokio::time::sleep(poll + Duration::from_millis(u64::from(jitter_ms()))).await;
            poll = (poll * 2).min(Duration::from_millis(400));
        }
    }

    /// Decrypts and returns the stored access token.
    async fn serve(
        &self,
        stored: &StoredConnection,
        refreshed: bool,
        stale: bool,
    ) -> Result<AccessGrant, TokenFailure> {
        let secrets = self.open_secrets(stored).await?;
        Ok(AccessGrant {
            access_token: SecretString::from(secrets.oauth_access_token),
            token_type: stored.connection.vars.oauth_token_type.clone(),
            expires_at: OffsetDateTime::from_unix_timestamp(stored.connection.token_expires_at)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            refreshed,
            stale,
            version: stored.version,
        })
    }

    /// Decrypts a connection's tokens; a destroyed key share means a new sign-in is needed.
    async fn open_secrets(&self, stored: &StoredConnection) -> Result<SecretVars, TokenFailure> {
        Ok(self.open_with_share(stored).await?.0)
    }

    /// The same, with the key share the tokens were sealed with (none for tokens sealed
    /// before shares).
    async fn open_with_share(
        &self,
        stored: &StoredConnection,
    ) -> Result<(SecretVars, Option<Share>), TokenFailure> {
        let c = &stored.connection;
        let cid = c.connection_id.as_str();
        let context = context_of(&c.secrets, &self.table, cid);
        let (plaintext, share) =
            open_keeping_share(self.keys.as_ref(), self.shares.as_ref(), cid, &context, &c.secrets)
                .await
                .map_err(shredded_needs_reauth)?;
        let secrets =
            serde_json::from_slice(plaintext.expose_secret()).map_err(|_| TokenFailure::Corrupt)?;
        Ok((secrets, share))
    }

    /// The share a connection's new tokens are sealed with: `known` (read with its tokens),
    /// else the one its tokens have, or, for tokens sealed before shares, a new one (stored
    /// first).
    async fn share_for(
        &self,
        stored: &StoredConnection,
        known: Option<Share>,
    ) -> Result<Share, TokenFailure> {
        if let Some(share) = known {
            return Ok(share);
        }
        let c = &stored.connection;
        let cid = c.connection_id.as_str();
        if c.secrets.share_id.is_some() {
            return share_of(self.shares.as_ref(), cid, &c.secrets)
                .await
                .map_err(shredded_needs_reauth);
        }
        Ok(crate::crypto::new_share(self.shares.as_ref(), cid).await?)
    }

    /// The failure a reader asking at `asked_at` shares instead of refreshing: one that
    /// happened after it asked, or within [`REFRESH_COOLDOWN`].
    fn recent_failure(
        &self,
        c: &crate::store::Connection,
        asked_at: OffsetDateTime,
    ) -> Option<TokenFailure> {
        let failed_at = parse_time(c.refresh_failed_at.as_deref()?)?;
        let now = self.clock.now();
        let ends = failed_at + REFRESH_COOLDOWN;
        if now >= ends && failed_at <= asked_at {
            return None;
        }
        Some(TokenFailure::RefreshFailed {
            failure: c.refresh_failure.clone().unwrap_or_else(|| "transient".to_owned()),
            retry_after_secs: u64::try_from((ends - now).whole_seconds()).unwrap_or(0).max(1),
            dependency: None,
        })
    }

    /// The mark a failed refresh leaves, holding the lease through the cooldown.
    fn failure_mark(&self, failure: &TokenFailure) -> RefreshFailureMark {
        let now = self.clock.now();
        RefreshFailureMark {
            failed_at: rfc3339(now),
            failure: failure.failure_text(),
            // A lease is free once its end has passed (`lease_until < now`): free by the
            // time the cooldown ends, when readers stop sharing the failure.
            cooldown_until: (now + REFRESH_COOLDOWN).unix_timestamp() - 1,
        }
    }

    async fn refresh_with_lease(
        &self,
        stored: &StoredConnection,
        owner: &str,
        force: bool,
    ) -> Result<AccessGrant, TokenFailure> {
        let cid = &stored.connection.connection_id;
        let e = match self.refresh_locked(stored, owner).await {
            Err(e @ (TokenFailure::NeedsReauth { .. } | TokenFailure::NotConnected)) => {
                return Err(e);
            }
            Err(e @ TokenFailure::Store(_)) => {
                // Nothing can be marked: give the lease back so the next request can try.
                if let Err(release) = self.store.release_lease(cid, owner).await {
                    tracing::warn!(cid = %cid, error = %crate::error::chain(&release), "lease not released");
                }
                return Err(e);
            }
            Err(e) => e,
            ok => return ok,
        };
        // A refused app credential is no outage: whoever fixes the app must see the next
        // request work, so nothing is shared; the lease is given back.
        let refused_app =
            matches!(&e, TokenFailure::Token(t) if t.class() == FailureClass::AppMisconfigured);
        let mark = self.failure_mark(&e);
        let recorded = if refused_app {
            self.store.release_lease(cid, owner).await.map(|()| true)
        } else {
            // Readers within the cooldown share this failure instead of calling again.
            self.store.hold_after_failure(cid, owner, &mark).await
        };
        if let Err(write) = recorded {
            tracing::warn!(cid = %cid, error = %crate::error::chain(&write), "refresh failure not recorded");
        }
        let valid = stored.connection.token_expires_at > self.clock.now().unix_timestamp();
        if !force && valid {
            tracing::warn!(cid = %cid, error = %crate::error::chain(&e), "refresh failed; serving the still valid token");
            return self.serve(stored, false, true).await;
        }
        tracing::warn!(cid = %cid, error = %crate::error::chain(&e), "refresh failed; no token refreshed");
        if refused_app {
            return Err(e);
        }
        Err(TokenFailure::RefreshFailed {
            failure: mark.failure,
            retry_after_secs: REFRESH_COOLDOWN.as_secs(),
            dependency: e.failed_dependency(),
        })
    }

    /// The app a connection's tokens belong to: the server-wide app, or the connection's
    /// own (its credential opened from the table). `Err(reason)` when the connection's own
    /// app is gone or is no longer the one its tokens were issued to.
    pub async fn client_auth(
        &self,
        c: &crate::store::Connection,
    ) -> Result<Result<ClientAuth, String>, TokenFailure> {
        let Some(kind) = AppKind::from_auth_type(&c.auth_type) else {
            if let Some(federation) = &self.federation {
                return Ok(Ok(ClientAuth::federated(
                    self.microsoft.endpoints(),
                    federation.clone(),
                )));
            }
            let secret = self.client_secret.get().await?;
            return Ok(Ok(ClientAuth::default_app(self.microsoft.endpoints(), secret)));
        };
        let cid = &c.connection_id;
        let federation = self.federation.as_ref();
        let opened = match crate::apps::open_app(
            self.store.as_ref(),
            self.keys.as_ref(),
            cid,
            federation,
        )
        .await
        {
            Ok(opened) => opened,
            Err(OpenAppError::NoFederation) => {
                return Ok(Err(format!(
                    "{}: the connection's own app authenticates with AWS federation, which this deployment no longer uses",
                    FailureClass::AppMisconfigured.as_str()
                )));
            }
            Err(OpenAppError::Store(e)) => return Err(e.into()),
            Err(OpenAppError::Crypto(e)) => return Err(e.into()),
            Err(OpenAppError::Corrupt) => return Err(TokenFailure::Corrupt),
        };
        let Some(app) = opened else {
            return Ok(Err(format!(
                "{}: the connection's own app was removed",
                FailureClass::AppMisconfigured.as_str()
            )));
        };
        if app.kind != kind || c.app_client_id.as_deref() != Some(app.auth.client_id.as_str()) {
            return Ok(Err(format!(
                "{}: the connection's own app changed since the sign-in",
                FailureClass::AppMisconfigured.as_str()
            )));
        }
        if let Credential::Certificate(cert) = &app.auth.credential {
            // The alarm before an own app's certificate ends watches the smallest value.
            let left = (cert.not_after - self.clock.now()).as_seconds_f64() / 86_400.0;
            let days = Metric::gauge(
                crate::metrics::name::CREDENTIAL_DAYS_LEFT,
                left,
                &[("Credential", "app_certificate")],
            );
            self.metrics.record(days);
            if left < CERTIFICATE_WARNING_DAYS {
                tracing::warn!(cid = %cid, days_left = left.floor(), thumbprint = %cert.thumbprint, "the connection's app certificate ends soon; its owner should set a new one");
            }
        }
        Ok(Ok(app.auth))
    }

    async fn refresh_locked(
        &self,
        stored: &StoredConnection,
        owner: &str,
    ) -> Result<AccessGrant, TokenFailure> {
        let c = &stored.connection;
        let cid = &c.connection_id;
        let daemon = AppKind::from_auth_type(&c.auth_type) == Some(AppKind::Daemon);
        let (refresh_token, share) = if daemon {
            (None, None)
        } else {
            let (secrets, share) = match self.open_with_share(stored).await {
                Err(TokenFailure::NeedsReauth { reason }) => {
                    return self.needs_reauth(stored, owner, &reason).await;
                }
                opened => opened?,
            };
            let Some(refresh_token) = secrets.oauth_refresh_token.clone() else {
                return self
                    .needs_reauth(stored, owner, "no refresh token (offline_access not granted)")
                    .await;
            };
            (Some(RefreshToken::new(refresh_token)), share)
        };
        let auth = match self.client_auth(c).await? {
            Ok(auth) => auth,
            Err(reason) => return self.needs_reauth(stored, owner, &reason).await,
        };
        // The server-wide secret rotates in Secrets Manager; a connection's own app keeps the
        // credential a new one replaced for a while.
        let fallback = match AppKind::from_auth_type(&c.auth_type) {
            None => Fallback::ServerSecret,
            Some(_) => Fallback::OwnApp(cid),
        };
        let context = connection_context(cid.as_str());
        // Exactly what the sign-in was granted, whatever the deployment asks for today.
        let scopes = crate::microsoft::refresh_scopes(
            c.granted_scopes.as_deref(),
            &self.microsoft.endpoints().graph_default_scope(),
        );
        let scopes = &scopes;
        // The data key and share for the new tokens are ready while Microsoft answers.
        let (renewed, data_key, share) = tokio::join!(
            async {
                match &refresh_token {
                    Some(rt) => self
                        .with_retries(auth, fallback, |auth| async move {
                            self.microsoft.refresh(rt, &auth, scopes).await
                        })
                        .await
                        .map(Renewal::Refreshed),
                    None => self
                        .with_retries(auth, fallback, |auth| async move {
                            self.microsoft.app_token(&auth).await
                        })
                        .await
                        .map(Renewal::AppToken),
                }
            },
            self.keys.generate(&context),
            self.share_for(stored, share),
        );
        let share = match share {
            Err(TokenFailure::NeedsReauth { reason }) => {
                return self.needs_reauth(stored, owner, &reason).await;
            }
            share => share?,
        };
        let renewed = match renewed {
            Ok(r) => r,
            Err(TokenFailure::Token(e)) if needs_new_grant(&e) => {
                let reason = match &e {
                    TokenError::Rejected(m) => m.reason(),
                    other => format!("{}: {other}", e.class().as_str()),
                };
                return self.needs_reauth(stored, owner, &reason).await;
            }
            Err(e) => return Err(e),
        };
        let data_key = data_key?;
        let (access_token, new_refresh_token, expires_in, granted_scopes) = match renewed {
            Renewal::Refreshed(r) => {
                (r.access_token, r.refresh_token, r.expires_in, r.granted_scopes)
            }
            Renewal::AppToken(t) => (t.access_token, None, t.expires_in, None),
        };

        // Microsoft rotates refresh tokens; when a response has none, the old one stays.
        let kept =
            new_refresh_token.as_ref().or(refresh_token.as_ref()).map(|t| t.secret().clone());
        let plaintext = serde_json::to_vec(&SecretVars {
            oauth_access_token: access_token.secret().clone(),
            oauth_refresh_token: kept.clone(),
        })
        .map_err(|_| TokenFailure::Corrupt)?;
        let sealed = seal(&data_key, Some(&share), &context, &plaintext)?;
        let now = self.clock.now();
        let expires_at = crate::microsoft::expiry_after(now, expires_in);
        let update = RefreshUpdate {
            secrets: sealed,
            oauth_expiry: rfc3339(expires_at),
            token_expires_at: expires_at.unix_timestamp(),
            last_refresh_at: rfc3339(now),
            refresh_due_at: refresh_due_at(
                self.keep(c.autokitteh_user_id.as_ref()),
                cid,
                expires_at.unix_timestamp(),
                now.unix_timestamp(),
                self.margin,
            ),
            granted_scopes,
        };
        let saved_as = match self.store.save_refresh(cid, stored.version, owner, &update).await? {
            Some(version) => {
                tracing::info!(cid = %cid, version, auth_type = %c.auth_type, rotated = new_refresh_token.is_some(), "tokens refreshed");
                // Only the refresh that was saved is written back, so AutoKitteh never gets a
                // token this table does not hold.
                if let (Some(write_back), Some(kept)) =
                    (self.write_back_for(stored.connection.autokitteh_user_id.as_ref()), &kept)
                {
                    let access = SecretString::from(access_token.secret().clone());
                    let vars = RefreshedVars {
                        access_token: &access,
                        refresh_token: kept,
                        token_type: &c.vars.oauth_token_type,
                        expires_at,
                    };
                    let written = write_back.refreshed(cid, &vars).await;
                    self.record_write_back("refreshed", written.is_ok());
                    match written {
                        Ok(()) => {
                            tracing::info!(cid = %cid, version, "refreshed tokens written to AutoKitteh");
                            self.reconcile_write_back(write_back, cid, Written::Version(version))
                                .await;
                        }
                        Err(e) => {
                            tracing::warn!(cid = %cid, version, error = %crate::error::chain(&e), "refreshed tokens not written to AutoKitteh; the next refresh writes them")
                        }
                    }
                }
                version
            }
            // The lease outlives any refresh; losing it means the item changed under us
            // (a disconnect or a new sign-in), whose tokens must win.
            None => {
                tracing::warn!(cid = %cid, "refreshed tokens not saved: the connection changed meanwhile");
                stored.version
            }
        };
        Ok(AccessGrant {
            access_token: SecretString::from(access_token.secret().clone()),
            token_type: c.vars.oauth_token_type.clone(),
            expires_at,
            refreshed: true,
            stale: false,
            version: saved_as,
        })
    }

    /// Calls the token endpoint as `auth`, retrying transient failures with a doubling
    /// backoff; a refused credential is tried once more with the other one `fallback` names.
    async fn with_retries<T, F, Fut>(
        &self,
        mut auth: ClientAuth,
        fallback: Fallback<'_>,
        call: F,
    ) -> Result<T, TokenFailure>
    where
        F: Fn(ClientAuth) -> Fut,
        Fut: std::future::Future<Output = Result<T, TokenError>>,
    {
        let mut secret_reread = false;
        let mut retried_with = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = call(auth.clone()).await;
            if let Some(version) = retried_with.take() {
                let worked = !matches!(&result, Err(e) if e.is_invalid_client());
                crate::metrics::record_secret_retry(self.metrics.as_ref(), version, worked);
            }
            match result {
                Ok(r) => return Ok(r),
                Err(e) if e.is_invalid_client() && !secret_reread => {
                    secret_reread = true;
                    match self.other_credential(&auth, fallback).await? {
                        Some((other, version)) => {
                            tracing::warn!(
                                version = version.as_str(),
                                "credential refused; retrying with the other one"
                            );
                            retried_with = Some(version);
                            auth.credential = other;
                        }
                        None => return Err(TokenFailure::Token(e)),
                    }
                }
                Err(e) if e.is_transient() && attempt < REFRESH_ATTEMPTS => {
                    let backoff = self.backoff * 2u32.pow(attempt - 1);
                    tracing::warn!(attempt, error = %crate::error::chain(&e), "token request failed; retrying");
                    tokio::time::sleep(backoff + Duration::from_millis(u64::from(jitter_ms())))
                        .await;
                }
                Err(e) => return Err(TokenFailure::Token(e)),
            }
        }
    }

    /// The credential to try once more after Microsoft refused `auth`'s: the other version
    /// of the server-wide secret, or the one a connection's own app had before its last
    /// change.
    async fn other_credential(
        &self,
        auth: &ClientAuth,
        fallback: Fallback<'_>,
    ) -> Result<Option<(Credential, crate::secrets::SecretVersion)>, TokenFailure> {
        use crate::secrets::SecretVersion;
        match (fallback, &auth.credential) {
            (Fallback::ServerSecret, Credential::Secret(stale)) => Ok(self
                .client_secret
                .alternative(stale)
                .await?
                .map(|(other, version)| (Credential::Secret(other), version))),
            (Fallback::OwnApp(cid), Credential::Secret(_) | Credential::Certificate(_)) => {
                let now = self.clock.now();
                let previous = crate::apps::previous_credential(
                    self.store.as_ref(),
                    self.keys.as_ref(),
                    cid,
                    self.federation.as_ref(),
                    now,
                )
                .await;
                match previous {
                    Ok(previous) => Ok(previous.map(|c| (c, SecretVersion::Previous))),
                    Err(OpenAppError::Store(e)) => Err(e.into()),
                    Err(OpenAppError::Crypto(e)) => Err(e.into()),
                    Err(_) => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }

    async fn needs_reauth(
        &self,
        stored: &StoredConnection,
        owner: &str,
        reason: &str,
    ) -> Result<AccessGrant, TokenFailure> {
        let cid = &stored.connection.connection_id;
        let now = rfc3339(self.clock.now());
        if self.store.mark_needs_reauth(cid, owner, reason, &now).await? {
            tracing::warn!(cid = %cid, reason, "connection needs a new sign-in");
            if let Some(write_back) =
                self.write_back_for(stored.connection.autokitteh_user_id.as_ref())
            {
                let written = write_back.needs_reauth(cid).await;
                self.record_write_back("needs_reauth", written.is_ok());
                match written {
                    Ok(()) => {
                        tracing::info!(cid = %cid, "token vars removed from AutoKitteh");
                        self.reconcile_write_back(write_back, cid, Written::NeedsReauth).await;
                    }
                    Err(e) => {
                        tracing::warn!(cid = %cid, error = %crate::error::chain(&e), "token vars not removed from AutoKitteh")
                    }
                }
            }
            self.events
                .publish(&ConnectionEvent {
                    kind: EventKind::NeedsReauth,
                    connection_id: cid.clone(),
                    tenant_id: Some(stored.connection.tenant_id.clone()),
                    reason: Some(reason.to_owned()),
                    connections: None,
                    verified: None,
                    at: now,
                })
                .await;
        }
        Err(TokenFailure::NeedsReauth { reason: reason.to_owned() })
    }

    /// Renews a connection's tokens if its refresh is due (the refresher's unit of work).
    pub async fn renew_if_due(&self, cid: &ConnectionId) -> RenewOutcome {
        let stored = match self.store.get_connection(cid).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return RenewOutcome::Skipped,
            Err(e) => return RenewOutcome::Failed(e.into()),
        };
        let now = self.clock.now().unix_timestamp();
        let c = &stored.connection;
        if c.status == STATUS_NEEDS_REAUTH || c.refresh_due_at > now {
            return RenewOutcome::Skipped;
        }
        let owner = lease_owner();
        match self.store.acquire_lease(cid, stored.version, &owner, now + LEASE_SECS, now).await {
            Ok(true) => {}
            // Someone else is refreshing it, or it just changed: nothing to do.
            Ok(false) => return RenewOutcome::Skipped,
            Err(e) => return RenewOutcome::Failed(e.into()),
        }
        let result = self.refresh_locked(&stored, &owner).await;
        let outcome = match &result {
            Ok(_) => "refreshed",
            Err(e) => e.metric_outcome(),
        };
        self.record_refresh("schedule", outcome);
        self.audit_refresh(&stored, &result, "schedule", &Caller::refresher()).await;
        self.watch_tenant(&stored, &result).await;
        match result {
            Ok(_) => RenewOutcome::Refreshed,
            Err(TokenFailure::NeedsReauth { .. }) => RenewOutcome::NeedsReauth,
            Err(e) => {
                // Not again every run: back off, doubling, and report a connection that
                // keeps failing.
                let failures = c.refresh_failures.saturating_add(1);
                let backoff = i64::try_from(backoff_after(failures).as_secs()).unwrap_or(i64::MAX);
                let due = now.saturating_add(backoff);
                let mark = self.failure_mark(&e);
                match self.store.postpone_refresh(cid, &owner, due, failures, &mark).await {
                    Ok(_) => {}
                    Err(postpone) => {
                        tracing::warn!(cid = %cid, error = %crate::error::chain(&postpone), "failed refresh not postponed; retried next run");
                    }
                }
                if failures >= STUCK_AFTER {
                    tracing::error!(cid = %cid, failures, error = %crate::error::chain(&e), "refresh keeps failing");
                    return RenewOutcome::Stuck(e);
                }
                RenewOutcome::Failed(e)
            }
        }
    }

    /// After a refused renewal: counts the connection among its tenant's connections refused
    /// the same way (class and AADSTS code) in the same [`INCIDENT_WINDOW_SECS`]; the call
    /// that brings the count to [`INCIDENT_THRESHOLD`] reports the tenant once, as an event
    /// and a metric. Best effort: the connection's own state is saved already.
    async fn watch_tenant(
        &self,
        stored: &StoredConnection,
        result: &Result<AccessGrant, TokenFailure>,
    ) {
        let Err(e) = result else { return };
        let class = match e.failure_class() {
            Some(class) if class != FailureClass::Transient.as_str() => class,
            _ => return,
        };
        let c = &stored.connection;
        // Personal accounts share one tenant: their failures say nothing about an organization.
        if c.tenant_id.is_empty() || c.tenant_id == crate::domain::PERSONAL_ACCOUNT_TENANT {
            return;
        }
        let code = e.aadsts().map_or_else(|| "none".to_owned(), |code| code.to_string());
        let now = self.clock.now().unix_timestamp();
        let window = now.div_euclid(INCIDENT_WINDOW_SECS);
        let signature = format!("{}#{class}#{code}#{window}", c.tenant_id);
        let expires = (window + 1) * INCIDENT_WINDOW_SECS + 86_400;
        let cap = INCIDENT_THRESHOLD * 4;
        let count = match self.store.count_failure(&signature, &c.connection_id, cap, expires).await
        {
            Ok(count) => count,
            Err(error) => {
                tracing::warn!(cid = %c.connection_id, error = %crate::error::chain(&error), "tenant failure not counted");
                return;
            }
        };
        if count < INCIDENT_THRESHOLD {
            return;
        }
        match self.store.declare_incident(&signature, now).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "tenant incident not recorded");
                return;
            }
        }
        let reason = format!(
            "{class}: {} connections refused (AADSTS{code}) within {} minutes",
            count,
            INCIDENT_WINDOW_SECS / 60
        );
        tracing::error!(tenant = %c.tenant_id, class, aadsts = %code, connections = count, "many connections of one tenant fail the same way");
        let class: &'static str = crate::metrics::dimension_values("Class")
            .and_then(|classes| classes.iter().find(|k| **k == class).copied())
            .unwrap_or("internal");
        self.metrics
            .record(Metric::count(crate::metrics::name::TENANT_INCIDENT, &[("Class", class)]));
        self.events
            .publish(&ConnectionEvent {
                kind: EventKind::TenantFailing,
                connection_id: c.connection_id.clone(),
                tenant_id: Some(c.tenant_id.clone()),
                reason: Some(reason),
                connections: Some(count),
                verified: None,
                at: rfc3339(self.clock.now()),
            })
            .await;
    }

    /// Seals a connection's tokens anew under this service's key (`key_arn`, the ARN of
    /// `TOKEN_KMS_KEY_ID`) when they are sealed under another key or the earlier way: the
    /// same tokens, opened with the key they name and sealed with the current one, written
    /// only if nothing changed and no refresh holds the connection meanwhile.
    pub async fn reseal(
        &self,
        stored: &StoredConnection,
        key_arn: &str,
    ) -> Result<ResealOutcome, TokenFailure> {
        let c = &stored.connection;
        if c.secrets.key_id == key_arn
            && c.secrets.scheme == crate::crypto::ContextScheme::Store
            && c.secrets.share_id.is_some()
        {
            return Ok(ResealOutcome::Current);
        }
        let (secrets, share) = self.open_with_share(stored).await?;
        let plaintext = serde_json::to_vec(&secrets).map_err(|_| TokenFailure::Corrupt)?;
        let context = connection_context(c.connection_id.as_str());
        let (key, share) =
            tokio::join!(self.keys.generate(&context), self.share_for(stored, share));
        let sealed = seal(&key?, Some(&share?), &context, &plaintext)?;
        let now = self.clock.now().unix_timestamp();
        let written =
            self.store.reseal_connection(&c.connection_id, stored.version, &sealed, now).await?;
        Ok(match written {
            Some(version) => {
                tracing::info!(cid = %c.connection_id, version, from = %c.secrets.key_id, "tokens sealed under the current key");
                ResealOutcome::Resealed
            }
            None => ResealOutcome::Busy,
        })
    }

    /// The same for a connection's own app: its credential sealed anew under `key_arn`.
    pub async fn reseal_app(
        &self,
        stored: &crate::store::StoredApp,
        key_arn: &str,
    ) -> Result<ResealOutcome, TokenFailure> {
        let sealed = &stored.app.credential_sealed;
        if sealed.key_id == key_arn && sealed.scheme == crate::crypto::ContextScheme::Store {
            return Ok(ResealOutcome::Current);
        }
        let cid = &stored.app.connection_id;
        let context = crate::apps::credential_context(cid.as_str());
        let plaintext = crate::crypto::open(self.keys.as_ref(), &context, sealed).await?;
        let key = self.keys.generate(&context).await?;
        let resealed = seal(&key, None, &context, plaintext.expose_secret())?;
        Ok(match self.store.reseal_app(cid, stored.version, &resealed).await? {
            Some(_) => ResealOutcome::Resealed,
            None => ResealOutcome::Busy,
        })
    }

    /// The audit event of a renewal of `stored` (the connection as it was before).
    async fn audit_refresh(
        &self,
        stored: &StoredConnection,
        result: &Result<AccessGrant, TokenFailure>,
        trigger: &str,
        caller: &Caller,
    ) {
        let cid = &stored.connection.connection_id;
        let old = stored.version.to_string();
        let (identity, outcome, version) = match result {
            Ok(grant) => {
                let outcome = if grant.stale { "stale" } else { "refreshed" };
                (vec![cid.to_string(), grant.version.to_string()], outcome, grant.version)
            }
            Err(e) => {
                let attempt = vec![cid.to_string(), old, caller.request_id.clone()];
                (attempt, e.metric_outcome(), stored.version)
            }
        };
        let identity: Vec<&str> = identity.iter().map(String::as_str).collect();
        let now = self.clock.now();
        let mut event =
            AuditEvent::new(Act::Refreshed, &identity, now, cid, caller.actor.clone(), outcome);
        event.connection_version = Some(version);
        event.trigger = Some(trigger.to_owned());
        event.auth_type = Some(stored.connection.auth_type.clone());
        event.tenant_id = Some(stored.connection.tenant_id.clone());
        if let Err(e) = result {
            event.class = e.failure_class().map(str::to_owned);
            event.aadsts = e.aadsts();
        }
        self.audit.record(event).await;
    }

    fn record_refresh(&self, trigger: &'static str, outcome: &'static str) {
        let dimensions = [("Trigger", trigger), ("Outcome", outcome)];
        self.metrics.record(Metric::count(crate::metrics::name::REFRESH, &dimensions));
    }

    /// After a write-back landed: makes AutoKitteh agree with the table again if the
    /// connection changed while the write was on its way. A write to AutoKitteh cannot be
    /// conditioned on the table, so it is checked after it landed: every writer of the table
    /// writes the table first and AutoKitteh second, so whichever of two writes reached
    /// AutoKitteh last sees, when it reads the table afterwards, everything the other did.
    /// - the connection is gone (a disconnect): the vars written are deleted again;
    /// - it was signed in or refreshed anew: what the table now holds is written;
    /// - it needs a new sign-in: the token vars are deleted again.
    async fn reconcile_write_back(
        &self,
        write_back: &WriteBack,
        cid: &ConnectionId,
        written: Written,
    ) {
        let current = match self.store.get_connection(cid).await {
            Ok(current) => current,
            Err(e) => {
                tracing::warn!(cid = %cid, error = %crate::error::chain(&e), "write-back not checked against the table");
                return;
            }
        };
        let (kind, result) = match (current, written) {
            (None, _) => ("withdrawn", write_back.disconnected(cid).await),
            (Some(now), Written::Version(v)) if now.version == v => return,
            (Some(now), _) if now.connection.status != crate::store::STATUS_OK => {
                if matches!(written, Written::NeedsReauth) {
                    return;
                }
                ("withdrawn", write_back.needs_reauth(cid).await)
            }
            (Some(now), _) => match self.current_vars(&now).await {
                Some((access, refresh, expires_at)) => {
                    let vars = RefreshedVars {
                        access_token: &access,
                        refresh_token: &refresh,
                        token_type: &now.connection.vars.oauth_token_type,
                        expires_at,
                    };
                    ("rewritten", write_back.refreshed(cid, &vars).await)
                }
                None => return,
            },
        };
        self.record_write_back(kind, result.is_ok());
        match result {
            Ok(()) => {
                tracing::info!(cid = %cid, kind, "AutoKitteh's vars made to agree with the table after a change during the write-back")
            }
            Err(e) => {
                tracing::warn!(cid = %cid, kind, error = %crate::error::chain(&e), "AutoKitteh's vars may not agree with the table")
            }
        }
    }

    /// The tokens the table holds for a connection, to write to AutoKitteh.
    async fn current_vars(
        &self,
        stored: &StoredConnection,
    ) -> Option<(SecretString, String, OffsetDateTime)> {
        let secrets = match self.open_secrets(stored).await {
            Ok(secrets) => secrets,
            Err(e) => {
                tracing::warn!(cid = %stored.connection.connection_id, error = %crate::error::chain(&e), "current tokens not readable for AutoKitteh");
                return None;
            }
        };
        let refresh = secrets.oauth_refresh_token?;
        let expires_at =
            OffsetDateTime::from_unix_timestamp(stored.connection.token_expires_at).ok()?;
        Some((SecretString::from(secrets.oauth_access_token), refresh, expires_at))
    }

    fn record_write_back(&self, kind: &'static str, ok: bool) {
        let dimensions = [("Kind", kind), ("Outcome", if ok { "ok" } else { "failed" })];
        self.metrics.record(Metric::count(crate::metrics::name::WRITE_BACK, &dimensions));
    }

    /// What a connection's scheduled refreshes are for: its access token when it is written
    /// back to AutoKitteh, its refresh token otherwise.
    fn keep(&self, autokitteh_user_id: Option<&String>) -> Keep {
        match self.write_back_for(autokitteh_user_id) {
            Some(_) => Keep::AccessToken,
            None => Keep::RefreshToken,
        }
    }

    /// The write-back for a connection made inside AutoKitteh (by `autokitteh_user_id`),
    /// when one is configured.
    fn write_back_for(&self, autokitteh_user_id: Option<&String>) -> Option<&WriteBack> {
        autokitteh_user_id?;
        self.write_back.as_deref()
    }

    /// Deletes a connection's tokens and vars (in AutoKitteh too, with a write-back), key
    /// shares first: once they are gone no copy of the tokens opens (backups included).
    /// Idempotent; `true` if there was one.
    pub async fn disconnect(&self, cid: &ConnectionId) -> Result<bool, TokenFailure> {
        self.disconnect_by(cid, &Caller::operator()).await
    }

    /// The same, asked by `caller` (whom the audit trail names).
    pub async fn disconnect_by(
        &self,
        cid: &ConnectionId,
        caller: &Caller,
    ) -> Result<bool, TokenFailure> {
        let shredded = self.shares.shred(cid.as_str(), None).await?;
        if shredded > 0 {
            tracing::info!(cid = %cid, shares = shredded, "key shares destroyed");
        }
        let removed = self.store.delete_connection(cid).await?;
        let existed = removed.is_some();
        if let Some(write_back) =
            removed.as_ref().and_then(|old| self.write_back_for(old.autokitteh_user_id.as_ref()))
        {
            let written = write_back.disconnected(cid).await;
            self.record_write_back("disconnected", written.is_ok());
            match written {
                Ok(()) => tracing::info!(cid = %cid, "connection vars removed from AutoKitteh"),
                Err(e) => {
                    tracing::warn!(cid = %cid, error = %crate::error::chain(&e), "connection vars not removed from AutoKitteh")
                }
            }
        }
        if let Some(removed) = &removed {
            // The id comes from the removed version: one removal, one id, however reported.
            let version = removed.version.map(|v| v.to_string()).unwrap_or_default();
            let now = self.clock.now();
            let mut event = AuditEvent::new(
                Act::Disconnected,
                &[cid.as_str(), &version],
                now,
                cid,
                caller.actor.clone(),
                "removed",
            );
            event.connection_version = removed.version;
            self.audit.record(event).await;
        }
        if existed {
            tracing::info!(cid = %cid, "connection disconnected");
            self.events
                .publish(&ConnectionEvent {
                    kind: EventKind::Disconnected,
                    connection_id: cid.clone(),
                    tenant_id: None,
                    reason: None,
                    connections: None,
                    verified: None,
                    at: rfc3339(self.clock.now()),
                })
                .await;
        }
        Ok(existed)
    }
}

/// Why a connection whose key share was destroyed cannot serve tokens.
pub const SHREDDED_REASON: &str =
    "the connection's tokens were destroyed (it was disconnected): sign in again";

fn shredded_needs_reauth(e: CryptoError) -> TokenFailure {
    match e {
        CryptoError::Shredded => TokenFailure::NeedsReauth { reason: SHREDDED_REASON.to_owned() },
        other => TokenFailure::Crypto(other),
    }
}

/// True when a refused renewal cannot succeed until someone acts: the user signs in again
/// or an administrator consents (the grant is dead until then).
fn needs_new_grant(e: &TokenError) -> bool {
    match e {
        TokenError::Rejected(m) => {
            matches!(m.class(), FailureClass::SignInAgain | FailureClass::AdminConsent)
        }
        _ => false,
    }
}

/// A unique lease holder id.
fn lease_owner() -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn jitter_ms() -> u8 {
    let mut b = [0u8; 1];
    let _ = getrandom::fill(&mut b);
    b[0] % 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk() -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build()
    }

    fn service(extra: &[(&str, &str)]) -> Result<TokenService, crate::config::ConfigError> {
        use crate::config::*;
        let mut vars = vec![
            (WEBHOOK_ADDRESS, "api.example.com"),
            (MICROSOFT_CLIENT_ID, "11111111-2222-3333-4444-555555555555"),
            (MICROSOFT_CLIENT_SECRET, "s"),
            (OAUTH_TABLE_NAME, "t"),
            (KEY_SHARES_TABLE_NAME, "t-key-shares"),
            (TOKEN_KMS_KEY_ID, "alias/k"),
        ];
        vars.extend_from_slice(extra);
        let lookup = |k: &str| vars.iter().rfind(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned());
        TokenService::from_sdk(crate::config::Role::ConnectionApi, &lookup, &sdk())
    }

    #[test]
    fn the_key_share_table_is_required() {
        use crate::config::*;
        assert!(service(&[]).is_ok());
        let err = service(&[(KEY_SHARES_TABLE_NAME, " ")]).unwrap_err();
        assert_eq!(err.var, KEY_SHARES_TABLE_NAME);
    }

    #[test]
    fn write_back_needs_autokitteh_and_exactly_one_token_source() {
        use crate::config::*;
        assert!(service(&[]).unwrap().write_back.is_none());
        assert!(
            service(&[(AUTOKITTEH_API_URL, "https://api.autokitteh.example")])
                .unwrap()
                .write_back
                .is_none()
        );
        let on = service(&[
            (AUTOKITTEH_API_URL, "https://api.autokitteh.example"),
            (AUTOKITTEH_API_TOKEN_ARN, "arn:aws:secretsmanager:us-east-1:123456789012:secret:t"),
        ])
        .unwrap();
        assert!(on.write_back.is_some());
        let orphan = service(&[(AUTOKITTEH_API_TOKEN, "t")]).unwrap_err();
        assert_eq!(orphan.var, AUTOKITTEH_API_TOKEN);
        assert!(orphan.to_string().contains(AUTOKITTEH_API_URL), "{orphan}");
        let both = service(&[
            (AUTOKITTEH_API_URL, "https://api.autokitteh.example"),
            (AUTOKITTEH_API_TOKEN, "t"),
            (AUTOKITTEH_API_TOKEN_ARN, "arn:aws:secretsmanager:us-east-1:123456789012:secret:t"),
        ])
        .unwrap_err();
        assert!(both.to_string().contains("both set"), "{both}");
    }

    #[test]
    fn scheduled_refreshes_keep_what_is_read_fresh() {
        let hour = 3600;
        let day = 24 * hour;
        let cid: ConnectionId = "con_01h9x3k6rtv2d9yb3pfcw6qz7m".parse().unwrap();
        // Written back to AutoKitteh: due 5 minutes before the access token expires.
        assert_eq!(
            refresh_due_at(Keep::AccessToken, &cid, 10 * hour, 9 * hour, DEFAULT_REFRESH_MARGIN),
            10 * hour - 300
        );
        // Otherwise a week after the refresh, spread over a day, whatever the token's expiry.
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..200 {
            let cid: ConnectionId = format!("con_{n:026}").parse().unwrap();
            let due =
                refresh_due_at(Keep::RefreshToken, &cid, 10 * hour, 0, DEFAULT_REFRESH_MARGIN);
            assert!((7 * day - day / 2..7 * day + day / 2).contains(&due), "{due}");
            seen.insert(due / hour);
        }
        assert!(seen.len() > 12, "spread over the day: {} distinct hours", seen.len());
        // The same connection and time give the same answer (a retried write agrees).
        assert_eq!(
            refresh_due_at(Keep::RefreshToken, &cid, 1, 5, DEFAULT_REFRESH_MARGIN),
            refresh_due_at(Keep::RefreshToken, &cid, 2, 5, DEFAULT_REFRESH_MARGIN)
        );
    }

    #[test]
    fn failing_connections_back_off_doubling_to_half_a_day() {
        assert_eq!(backoff_after(1), Duration::from_secs(300));
        assert_eq!(backoff_after(2), Duration::from_secs(600));
        assert_eq!(backoff_after(4), Duration::from_secs(2400));
        assert_eq!(backoff_after(9), MAX_BACKOFF);
        assert_eq!(backoff_after(u32::MAX), MAX_BACKOFF);
    }
}
