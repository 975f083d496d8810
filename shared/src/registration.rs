//! Setting, showing and removing a connection's own app (the connection API's
//! `/connections/{cid}/app` and `akoauth app`). A daemon app is proven when it is saved: a
//! client-credentials token is minted and the tenant's organization read with it, so a
//! wrong secret, an expired certificate, an app missing from the tenant or missing admin
//! consent is reported at once, not at the first workflow run.

use std::fmt;

use secrecy::SecretString;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;

use crate::apps::{
    App, AppError, AppKind, AppSummary, Certificate, Credential, credential_context,
};
use crate::crypto::{connection_context, seal};
use crate::domain::ConnectionId;
use crate::events::{ConnectionEvent, EventKind};
use crate::microsoft::{ClientAuth, FailureClass, MicrosoftError, TokenError};
use crate::store::{AppRecord, Connection, ConnectionVars, STATUS_OK};
use crate::tokens::{SecretVars, TokenFailure, TokenService};

/// The body of `PUT /connections/{cid}/app`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRequest {
    pub auth_type: String,
    pub client_id: String,
    #[serde(default, deserialize_with = "present")]
    pub tenant_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub client_secret: Option<String>,
    /// PEM: the certificate and its unencrypted private key.
    #[serde(default, deserialize_with = "present")]
    pub certificate: Option<String>,
    /// `true`: the app trusts the functions' AWS identity (a federated identity credential);
    /// no secret or certificate.
    #[serde(default, deserialize_with = "present_bool")]
    pub aws_federation: Option<bool>,
}

/// An optional boolean that, when given, is a boolean (`null` is refused).
fn present_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    bool::deserialize(d).map(Some)
}

/// An optional field that, when given, is a string (`null` is refused, not taken as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

impl fmt::Debug for AppRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppRequest")
            .field("auth_type", &self.auth_type)
            .field("client_id", &self.client_id)
            .field("tenant_id", &self.tenant_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "[redacted]"))
            .field("certificate", &self.certificate.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl AppRequest {
    /// Validates the request into an app; a certificate must be valid now; an app trusting
    /// the functions' AWS identity needs `federation`, this deployment's identity for the
    /// app's connection.
    pub fn into_app(
        self,
        now: time::OffsetDateTime,
        federation: Option<crate::federation::FederatedIdentity>,
    ) -> Result<App, AppError> {
        let kind = AppKind::from_auth_type(&self.auth_type).ok_or(AppError::AuthType)?;
        let federated = self.aws_federation.unwrap_or(false);
        let credential = match (self.client_secret, self.certificate, federated) {
            (Some(secret), None, false) => Credential::Secret(SecretString::from(secret)),
            (None, Some(pem), false) => {
                let certificate = Certificate::from_pem(&pem)?;
                certificate.check_valid_at(now)?;
                Credential::Certificate(Box::new(certificate))
            }
            (None, None, true) => Credential::federated(federation)?,
            _ => return Err(AppError::Credential),
        };
        App::new(kind, &self.client_id, self.tenant_id.as_deref().unwrap_or(""), credential)
    }
}

/// Why an app was not saved. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum AppFailure {
    #[error("invalid app: {0}")]
    Invalid(#[from] AppError),
    /// Microsoft refused the daemon app's credential or grant.
    #[error("Microsoft refused the app: {0}")]
    Refused(Box<MicrosoftError>),
    #[error("the app could not be checked now")]
    Unavailable(#[source] TokenFailure),
}

impl AppFailure {
    /// Who must act.
    pub fn class(&self) -> FailureClass {
        match self {
            AppFailure::Invalid(_) => FailureClass::AppMisconfigured,
            AppFailure::Refused(e) => e.class(),
            AppFailure::Unavailable(_) => FailureClass::Transient,
        }
    }
}

impl From<TokenFailure> for AppFailure {
    fn from(e: TokenFailure) -> Self {
        AppFailure::Unavailable(e)
    }
}

/// What to do about a refused app, by its AADSTS code where one is known.
pub fn advice(e: &MicrosoftError) -> &'static str {
    match e.code() {
        Some(7_000_215) => {
            "the client secret is wrong: give the secret's Value from Certificates & secrets, not its Secret ID"
        }
        Some(7_000_222) => "the client secret expired: create a new one and set it here",
        Some(700_027 | 700_024 | 700_023) => {
            "the certificate was not accepted: upload its public part to the app registration, or set a certificate the app has"
        }
        Some(700_016) => {
            "the app is not registered in this tenant: check client_id and tenant_id, or make the app multi-tenant"
        }
        Some(90002 | 900_023) => "the tenant is unknown: give its Directory (tenant) ID",
        Some(70021 | 700_211 | 700_212 | 700_213) => {
            "the app does not trust this deployment for this connection: add a federated identity credential (Other issuer) with the deployment's issuer, one of its FederatedSubjects as subject, and federation_audience (api://AzureADTokenExchange/connections/<connection id>) as audience"
        }
        _ => match e.class() {
            FailureClass::AdminConsent => {
                "an administrator of the tenant must grant admin consent to the app's application permissions"
            }
            FailureClass::Transient => "Microsoft is temporarily unavailable; retry shortly",
            _ => "Microsoft refused the app; check its client id, tenant and credential",
        },
    }
}

/// What saving an app did.
#[derive(Debug)]
pub struct AppSaved {
    pub summary: AppSummary,
    pub version: u64,
    /// A daemon app's organization, read with its first token.
    pub organization: Option<String>,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl TokenService {
    /// Validates and saves a connection's own app. A daemon app is proven first (a token is
    /// minted and the organization read) and its connection saved with that token, so the
    /// token API serves it at once.
    pub async fn set_app(
        &self,
        cid: &ConnectionId,
        request: AppRequest,
    ) -> Result<AppSaved, AppFailure> {
        let now = self.clock.now();
        let federation = self
            .federation
            .as_ref()
            .map(|f| crate::federation::FederatedIdentity::own_app(f.clone(), cid));
        let app = request.into_app(now, federation)?;
        crate::apps::refuse_server_wide(&app.client_id, self.microsoft.endpoints().client_id())?;
        let auth = ClientAuth {
            client_id: app.client_id.clone(),
            tenant: app.tenant.clone(),
            credential: app.credential.clone(),
        };
        let daemon = match app.kind {
            AppKind::Daemon => match self.prove_daemon(cid, &auth, now).await {
                Ok(connection) => Some(connection),
                Err(AppFailure::Refused(e)) if e.class() == FailureClass::AdminConsent => {
                    // Kept, so an administrator's consent link finds the app; the connection
                    // is made when the consent comes back.
                    let version = self.save_app_record(cid, &app, now).await?;
                    tracing::info!(cid = %cid, client_id = %app.client_id, version, "daemon app saved; waiting for admin consent");
                    return Err(AppFailure::Refused(e));
                }
                Err(e) => return Err(e),
            },
            AppKind::Private => None,
        };
        let summary = app.summary();
        let version = self.save_app_record(cid, &app, now).await?;
        let organization = match daemon {
            Some(connection) => {
                let name = connection.vars.org_display_name.clone();
                save_daemon_connection(
                    self.store.as_ref(),
                    self.shares.as_ref(),
                    self.events.as_ref(),
                    &connection,
                )
                .await
                .map_err(TokenFailure::from)?;
                name
            }
            None => None,
        };
        tracing::info!(cid = %cid, auth_type = %summary.auth_type, client_id = %summary.private_client_id, tenant = %summary.private_tenant_id, credential = %summary.credential, version, "connection app saved");
        Ok(AppSaved { summary, version, organization })
    }

    /// Seals the app's credential and saves the app; its new version.
    async fn save_app_record(
        &self,
        cid: &ConnectionId,
        app: &App,
        now: time::OffsetDateTime,
    ) -> Result<u64, AppFailure> {
        let (record, existing) =
            tokio::join!(app_record(self.keys.as_ref(), cid, app, now), self.store.get_app(cid));
        let mut record = record?;
        // The same app with a new credential keeps the one it replaces, for a day.
        if let Some(existing) = existing.map_err(TokenFailure::from)?
            && existing.app.summary.private_client_id == record.summary.private_client_id
            && existing.app.summary.auth_type == record.summary.auth_type
            && existing.app.summary.credential != "aws_federation"
        {
            record.previous_credential_sealed = Some(existing.app.credential_sealed);
            record.previous_until = Some(rfc3339(now + PREVIOUS_CREDENTIAL_GRACE));
        }
        Ok(self.store.save_app(&record).await.map_err(TokenFailure::from)?)
    }

    /// Mints a daemon app's first token and reads its organization; the connection to save.
    async fn prove_daemon(
        &self,
        cid: &ConnectionId,
        auth: &ClientAuth,
        now: time::OffsetDateTime,
    ) -> Result<Connection, AppFailure> {
        daemon_connection(&self.microsoft, self.keys.as_ref(), self.shares.as_ref(), cid, auth, now)
            .await
    }

    /// The non-secret part of a connection's own app.
    pub async fn app_summary(
        &self,
        cid: &ConnectionId,
    ) -> Result<Option<AppSummary>, TokenFailure> {
        Ok(self.store.get_app(cid).await?.map(|stored| stored.app.summary))
    }

    /// Removes a connection's own app: the connection goes back to the server-wide app, and
    /// tokens its own app issued (useless to any other app) are removed with it. `true` if
    /// there was an app.
    pub async fn remove_app(
        &self,
        cid: &ConnectionId,
        caller: &crate::audit::Caller,
    ) -> Result<bool, TokenFailure> {
        let connection = self.store.get_connection(cid).await?;
        if connection.is_some_and(|c| c.connection.app_client_id.is_some()) {
            self.disconnect_by(cid, caller).await?;
        }
        let existed = self.store.delete_app(cid).await?;
        if existed {
            tracing::info!(cid = %cid, "connection app removed; back to the server-wide app");
        }
        Ok(existed)
    }
}

/// Saves a proven daemon app's connection and announces it.
pub async fn save_daemon_connection(
    store: &dyn crate::store::Store,
    shares: &dyn crate::crypto::KeyShares,
    events: &dyn crate::events::Events,
    connection: &Connection,
) -> Result<u64, crate::store::StoreError> {
    let version = store.save_connection(connection).await?;
    crate::crypto::retire_shares(shares, connection.connection_id.as_str(), &connection.secrets)
        .await;
    events
        .publish(&ConnectionEvent {
            kind: EventKind::Authorized,
            connection_id: connection.connection_id.clone(),
            tenant_id: Some(connection.tenant_id.clone()),
            reason: None,
            connections: None,
            verified: None,
            at: connection.updated_at.clone(),
        })
        .await;
    Ok(version)
}

/// The item of `app` for `cid`, its credential sealed under the credential purpose.
pub async fn app_record(
    keys: &dyn crate::crypto::DataKeys,
    cid: &ConnectionId,
    app: &App,
    now: time::OffsetDateTime,
) -> Result<AppRecord, AppFailure> {
    let plaintext = app.credential.to_plaintext()?;
    let context = credential_context(cid.as_str());
    let key = keys.generate(&context).await.map_err(TokenFailure::from)?;
    let sealed = seal(&key, None, &context, &plaintext).map_err(TokenFailure::from)?;
    Ok(AppRecord {
        connection_id: cid.clone(),
        summary: app.summary(),
        credential_sealed: sealed,
        updated_at: rfc3339(now),
        previous_credential_sealed: None,
        previous_until: None,
    })
}

/// How long a replaced credential of the same app is still tried when Microsoft refuses the
/// new one (a new secret or certificate can take minutes to work everywhere).
pub const PREVIOUS_CREDENTIAL_GRACE: time::Duration = time::Duration::hours(24);

/// Proves a daemon app: mints its first token (client credentials for the Graph `.default`
/// scope, in the app's own tenant) and reads the organization with it; the connection to
/// save. Used when an app is set and when an administrator's consent comes back.
pub async fn daemon_connection(
    microsoft: &crate::microsoft::Microsoft,
    keys: &dyn crate::crypto::DataKeys,
    shares: &dyn crate::crypto::KeyShares,
    cid: &ConnectionId,
    auth: &ClientAuth,
    now: time::OffsetDateTime,
) -> Result<Connection, AppFailure> {
    let token = match microsoft.app_token(auth).await {
        Ok(token) => token,
        Err(TokenError::Rejected(e)) => {
            tracing::warn!(cid = %cid, client_id = %auth.client_id, error = %e, class = e.class().as_str(), "daemon app refused");
            return Err(AppFailure::Refused(e));
        }
        Err(TokenError::Credential(e)) => return Err(AppFailure::Invalid(e)),
        Err(e) => return Err(TokenFailure::Token(e).into()),
    };
    // The organization only adds descriptive vars and needs Organization.Read.All; an app
    // without it still works.
    let organization = match microsoft.organization(&token.access_token).await {
        Ok(org) => org,
        Err(e) => {
            tracing::warn!(cid = %cid, error = %crate::error::chain(&e), "daemon app's organization not read");
            None
        }
    };
    let context = connection_context(cid.as_str());
    let (key, share) =
        tokio::join!(keys.generate(&context), crate::crypto::new_share(shares, cid.as_str()));
    let (key, share) = (key.map_err(TokenFailure::from)?, share.map_err(TokenFailure::from)?);
    let plaintext = serde_json::to_vec(&SecretVars {
        oauth_access_token: token.access_token.secret().clone(),
        oauth_refresh_token: None,
    })
    .map_err(|_| TokenFailure::Corrupt)?;
    let sealed = seal(&key, Some(&share), &context, &plaintext).map_err(TokenFailure::from)?;
    let expiry = crate::microsoft::expiry_after(now, token.expires_in);
    let org = organization.unwrap_or_default();
    Ok(Connection {
        connection_id: cid.clone(),
        auth_type: AppKind::Daemon.auth_type().to_owned(),
        status: STATUS_OK.to_owned(),
        tenant_id: org.id.clone().unwrap_or_else(|| auth.tenant.to_string()),
        object_id: String::new(),
        vars: ConnectionVars {
            oauth_token_type: "Bearer".to_owned(),
            oauth_expiry: rfc3339(expiry),
            org_id: org.id,
            org_display_name: org.display_name,
            org_tenant_type: org.tenant_type,
            ..ConnectionVars::default()
        },
        secrets: sealed,
        updated_at: rfc3339(now),
        status_reason: None,
        token_expires_at: expiry.unix_timestamp(),
        last_refresh_at: rfc3339(now),
        // Nothing to keep alive: the token API mints a new token when this one is due.
        refresh_due_at: expiry.unix_timestamp(),
        autokitteh_user_id: None,
        refresh_failures: 0,
        refresh_queue: None,
        app_client_id: Some(auth.client_id.clone()),
        granted_scopes: None,
        refresh_failed_at: None,
        refresh_failure: None,
    })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn requests_need_one_credential_and_hide_it() {
        let request: AppRequest = serde_json::from_str(
            r#"{"auth_type":"oauthPrivate","client_id":"0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3","client_secret":"cs~very-secret"}"#,
        )
        .unwrap();
        assert!(!format!("{request:?}").contains("very-secret"));
        let now = time::OffsetDateTime::now_utc();
        let app = request.into_app(now, None).unwrap();
        assert_eq!(app.tenant.as_str(), "common");
        let Credential::Secret(s) = &app.credential else { panic!("a secret") };
        assert_eq!(s.expose_secret(), "cs~very-secret");

        let both: AppRequest = serde_json::from_str(
            r#"{"auth_type":"daemonApp","client_id":"0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3","tenant_id":"contoso.com","client_secret":"a","certificate":"b"}"#,
        )
        .unwrap();
        assert_eq!(both.into_app(now, None).unwrap_err(), AppError::Credential);
        let null = serde_json::from_str::<AppRequest>(
            r#"{"auth_type":"daemonApp","client_id":"x","client_secret":"a","certificate":null}"#,
        );
        assert!(null.is_err(), "null is not an absent credential");
        let unknown = serde_json::from_str::<AppRequest>(
            r#"{"auth_type":"daemonApp","client_id":"x","secret":"a"}"#,
        );
        assert!(unknown.is_err(), "unknown fields are refused, not ignored");
        let kind: AppRequest = serde_json::from_str(
            r#"{"auth_type":"oauthDefault","client_id":"0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3","client_secret":"a"}"#,
        )
        .unwrap();
        assert_eq!(kind.into_app(now, None).unwrap_err(), AppError::AuthType);
    }

    #[test]
    fn an_expired_certificate_is_refused_when_set() {
        let expired = crate::testing::certs::expired_certificate("old.example");
        let request = AppRequest {
            auth_type: "oauthPrivate".into(),
            client_id: "0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3".into(),
            tenant_id: None,
            client_secret: None,
            certificate: Some(expired.bundle()),
            aws_federation: None,
        };
        assert!(matches!(
            request.into_app(time::OffsetDateTime::now_utc(), None),
            Err(AppError::CertificateExpired(_))
        ));
    }
}
