//! A connection's own Entra app (AutoKitteh's `oauthPrivate` and `daemonApp` kinds): its
//! client id, tenant and one credential, a client secret or a certificate with its private
//! key. The credential is sealed at rest under its own encryption-context purpose and never
//! leaves the service; what may be shown is [`AppSummary`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::{RsaPrivateKey, RsaPublicKey};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_cert::der::{Decode, Encode};

use crate::crypto::{EncryptionContext, TOKEN_STORE};
use crate::domain::Tenant;

/// `auth_type` of a connection made with the server-wide app.
pub const AUTH_TYPE_DEFAULT: &str = "oauthDefault";
/// `auth_type` of a connection with its own user-delegated app.
pub const AUTH_TYPE_PRIVATE: &str = "oauthPrivate";
/// `auth_type` of a connection with its own daemon app (client credentials, no user).
pub const AUTH_TYPE_DAEMON: &str = "daemonApp";
/// The encryption-context purpose of sealed app credentials; tokens have none, so neither
/// kind of value opens where the other is expected, and a key policy can tell them apart.
pub const CREDENTIAL_PURPOSE: &str = "app_credential";
/// How long a client assertion is valid. Microsoft accepts up to 10 minutes; each request
/// signs a fresh one.
pub const ASSERTION_LIFETIME_SECS: i64 = 300;
/// The `client_assertion_type` of a signed JWT (RFC 7523).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest credential accepted (a certificate chain with its key is a few KB).
pub const MAX_CREDENTIAL_LEN: usize = 32 * 1024;

/// The two kinds of a connection's own app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AppKind {
    /// A user signs in through the connection's own app.
    #[serde(rename = "oauthPrivate")]
    Private,
    /// The app itself gets tokens (client credentials) with application permissions an
    /// administrator granted.
    #[serde(rename = "daemonApp")]
    Daemon,
}

impl AppKind {
    /// AutoKitteh's `auth_type` value.
    pub fn auth_type(self) -> &'static str {
        match self {
            AppKind::Private => AUTH_TYPE_PRIVATE,
            AppKind::Daemon => AUTH_TYPE_DAEMON,
        }
    }

    /// From an `auth_type` value; `None` for the default app or anything else.
    pub fn from_auth_type(value: &str) -> Option<Self> {
        match value {
            AUTH_TYPE_PRIVATE => Some(AppKind::Private),
            AUTH_TYPE_DAEMON => Some(AppKind::Daemon),
            _ => None,
        }
    }
}

/// Why an app registration was refused. The messages are safe to show: none carries a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    #[error("auth_type must be oauthPrivate or daemonApp")]
    AuthType,
    #[error("client_id must be the app's Application (client) ID, a GUID")]
    ClientId,
    #[error("tenant_id {0}")]
    Tenant(&'static str),
    #[error(
        "a daemon app needs its own tenant (its Directory (tenant) ID or a verified domain), not common, organizations or consumers"
    )]
    DaemonTenant,
    #[error("give exactly one credential: client_secret, certificate or aws_federation: true")]
    Credential,
    #[error(
        "aws_federation needs a deployment that authenticates with its AWS identity (MicrosoftClientAuth=aws_federation); give a client_secret or certificate"
    )]
    NoFederation,
    #[error("the client secret is empty or longer than {MAX_CREDENTIAL_LEN} bytes")]
    Secret,
    #[error("the certificate {0}")]
    Certificate(&'static str),
    #[error("the certificate expired on {0}; upload a new one to the app and here")]
    CertificateExpired(String),
    #[error("the certificate is not valid before {0}")]
    CertificateNotYetValid(String),
    #[error("the client assertion could not be signed")]
    Signing,
    #[error(
        "client_id is this deployment's own server-wide app; a connection's own app must be an app registration of its own"
    )]
    ServerWideApp,
}

/// Refuses the deployment's own server-wide app as a connection's own app: with it a user
/// would have the deployment's credential (or AWS identity) act for an app that is not theirs.
pub fn refuse_server_wide(client_id: &str, server_wide: &str) -> Result<(), AppError> {
    if client_id.eq_ignore_ascii_case(server_wide) {
        return Err(AppError::ServerWideApp);
    }
    Ok(())
}

/// A client secret, or a certificate with its private key.
#[derive(Clone)]
pub enum Credential {
    Secret(SecretString),
    Certificate(Box<Certificate>),
    /// This function's AWS identity, trusted by the app's federated identity credential.
    /// Its assertions name the connection (`federation::own_app_audience`).
    AwsFederation(crate::federation::FederatedIdentity),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Credential::Secret([redacted])"),
            Credential::Certificate(c) => write!(f, "Credential::Certificate({c:?})"),
            Credential::AwsFederation(_) => f.write_str("Credential::AwsFederation"),
        }
    }
}

impl Credential {
    /// `secret` or `certificate`, as the summary names the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Secret(_) => "secret",
            Credential::Certificate(_) => "certificate",
            Credential::AwsFederation(_) => "aws_federation",
        }
    }

    /// The sealed form: a small JSON object with the secret or the PEM.
    pub fn to_plaintext(&self) -> Result<Vec<u8>, AppError> {
        let stored = match self {
            Credential::Secret(s) => StoredCredential {
                client_secret: Some(s.expose_secret()),
                certificate: None,
                aws_federation: false,
            },
            Credential::Certificate(c) => StoredCredential {
                client_secret: None,
                certificate: Some(c.pem.expose_secret()),
                aws_federation: false,
            },
            Credential::AwsFederation(_) => {
                StoredCredential { client_secret: None, certificate: None, aws_federation: true }
            }
        };
        serde_json::to_vec(&stored).map_err(|_| AppError::Credential)
    }

    /// Reads back [`Credential::to_plaintext`]. An expired certificate still opens: whether
    /// it may be used is decided where it is used. An app trusting the functions' AWS
    /// identity opens with `federation`, this deployment's identity for the app's connection.
    pub fn from_plaintext(
        bytes: &[u8],
        federation: Option<crate::federation::FederatedIdentity>,
    ) -> Result<Self, AppError> {
        let stored: OwnedCredential =
            serde_json::from_slice(bytes).map_err(|_| AppError::Credential)?;
        match (stored.client_secret, stored.certificate, stored.aws_federation) {
            (Some(s), None, false) => Ok(Credential::Secret(SecretString::from(s))),
            (None, Some(pem), false) => {
                Ok(Credential::Certificate(Box::new(Certificate::from_pem(&pem)?)))
            }
            (None, None, true) => Self::federated(federation),
            _ => Err(AppError::Credential),
        }
    }

    /// The functions' AWS identity as an app's credential, when this deployment has one.
    pub fn federated(
        federation: Option<crate::federation::FederatedIdentity>,
    ) -> Result<Self, AppError> {
        federation.map(Credential::AwsFederation).ok_or(AppError::NoFederation)
    }
}

#[derive(Serialize)]
struct StoredCredential<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    aws_federation: bool,
}

#[derive(Deserialize)]
struct OwnedCredential {
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    certificate: Option<String>,
    #[serde(default)]
    aws_federation: bool,
}

/// An X.509 certificate with its RSA private key, as uploaded to the Entra app ("Certificates
/// & secrets"), ready to sign client assertions.
#[derive(Clone)]
pub struct Certificate {
    pem: SecretString,
    key: EncodingKey,
    /// Base64url SHA-256 of the certificate's DER (`x5t#S256`).
    pub thumbprint_sha256: String,
    /// Upper-case hex SHA-1 of the DER: the "Thumbprint" the Entra portal lists.
    pub thumbprint: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("thumbprint", &self.thumbprint)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The RSA key sizes accepted for certificate credentials.
const MIN_KEY_BITS: usize = 2048;
const MAX_KEY_BITS: usize = 8192;

/// The DER of one PEM block, if it is well formed and carries `label`.
fn pem_der(block: &str, label: &str) -> Option<Vec<u8>> {
    let (found, der) = x509_cert::der::pem::decode_vec(block.as_bytes()).ok()?;
    (found == label).then_some(der)
}

/// The PEM blocks of `text` with the given label.
fn pem_blocks<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let Some(len) = rest[start..].find(&end) else { break };
        let stop = start + len + end.len();
        out.push(&rest[start..stop]);
        rest = &rest[stop..];
    }
    out
}

impl Certificate {
    /// From PEM text holding the certificate (the first `CERTIFICATE` block; any further
    /// ones are its chain) and its unencrypted RSA private key (`PRIVATE KEY` or
    /// `RSA PRIVATE KEY`). The key must belong to the certificate.
    pub fn from_pem(text: &str) -> Result<Self, AppError> {
        if text.len() > MAX_CREDENTIAL_LEN {
            return Err(AppError::Certificate("is too long"));
        }
        if text.contains("ENCRYPTED PRIVATE KEY") {
            return Err(AppError::Certificate(
                "has an encrypted private key; export the key without a password",
            ));
        }
        let cert_pem = pem_blocks(text, "CERTIFICATE")
            .into_iter()
            .next()
            .ok_or(AppError::Certificate("must hold a PEM CERTIFICATE block"))?;
        // PEM to DER first, then DER: der's PEM reader loops forever on a truncated body.
        let cert = pem_der(cert_pem, "CERTIFICATE")
            .and_then(|der| x509_cert::Certificate::from_der(&der).ok())
            .ok_or(AppError::Certificate("is not a readable X.509 certificate"))?;
        let der = cert.to_der().map_err(|_| AppError::Certificate("cannot be encoded"))?;
        let key = if let Some(block) = pem_blocks(text, "PRIVATE KEY").into_iter().next() {
            pem_der(block, "PRIVATE KEY")
                .and_then(|der| RsaPrivateKey::from_pkcs8_der(&der).ok())
                .ok_or(AppError::Certificate("has a private key that is not RSA"))?
        } else if let Some(block) = pem_blocks(text, "RSA PRIVATE KEY").into_iter().next() {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            pem_der(block, "RSA PRIVATE KEY")
                .and_then(|der| RsaPrivateKey::from_pkcs1_der(&der).ok())
                .ok_or(AppError::Certificate("has an unreadable RSA private key"))?
        } else {
            return Err(AppError::Certificate(
                "must come with its private key (a PEM PRIVATE KEY block)",
            ));
        };
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|_| AppError::Certificate("has an unreadable public key"))?;
        let public = RsaPublicKey::from_public_key_der(&spki)
            .map_err(|_| AppError::Certificate("does not hold an RSA public key"))?;
        if public != key.to_public_key() {
            return Err(AppError::Certificate("and the private key do not belong together"));
        }
        // Entra takes 2048-bit keys and up; a huge one would make every signature slow.
        use rsa::traits::PublicKeyParts;
        let bits = key.size() * 8;
        if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) {
            return Err(AppError::Certificate("must have an RSA key of 2048 to 8192 bits"));
        }
        let pkcs1 = key.to_pkcs1_der().map_err(|_| AppError::Certificate("key cannot be used"))?;
        let validity = &cert.tbs_certificate.validity;
        let time = |t: &x509_cert::time::Time| {
            OffsetDateTime::from_unix_timestamp(
                i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX),
            )
            .map_err(|_| AppError::Certificate("has a validity out of range"))
        };
        use sha1::Sha1;
        Ok(Self {
            pem: SecretString::from(text.trim().to_owned()),
            key: EncodingKey::from_rsa_der(pkcs1.as_bytes()),
            thumbprint_sha256: URL_SAFE_NO_PAD.encode(Sha256::digest(&der)),
            thumbprint: crate::state::hex(&Sha1::digest(&der)).to_ascii_uppercase(),
            not_before: time(&validity.not_before)?,
            not_after: time(&validity.not_after)?,
        })
    }

    /// Refuses a certificate outside its validity at `now`.
    pub fn check_valid_at(&self, now: OffsetDateTime) -> Result<(), AppError> {
        if now >= self.not_after {
            return Err(AppError::CertificateExpired(rfc3339(self.not_after)));
        }
        if now < self.not_before {
            return Err(AppError::CertificateNotYetValid(rfc3339(self.not_before)));
        }
        Ok(())
    }

    /// A client assertion for `client_id` at the token endpoint `audience`, as Microsoft
    /// specifies it: PS256, `x5t#S256` naming this certificate, issuer and subject the
    /// client id, a unique `jti`, valid for [`ASSERTION_LIFETIME_SECS`].
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: OffsetDateTime,
    ) -> Result<SecretString, AppError> {
        let mut header = Header::new(Algorithm::PS256);
        header.x5t_s256 = Some(self.thumbprint_sha256.clone());
        let now = now.unix_timestamp();
        let jti = crate::state::attempt_id().map_err(|_| AppError::Signing)?;
        let claims = AssertionClaims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: &jti,
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(SecretString::from)
            .map_err(|_| AppError::Signing)
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: &'a str,
    nbf: i64,
    iat: i64,
    exp: i64,
}

/// A connection's own app, validated.
#[derive(Debug, Clone)]
pub struct App {
    pub kind: AppKind,
    pub client_id: String,
    pub tenant: Tenant,
    pub credential: Credential,
}

/// True for the app ids Entra issues: a GUID.
fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// True for the tenant aliases that name no one tenant.
pub fn is_multi_tenant_alias(tenant: &Tenant) -> bool {
    matches!(tenant.as_str(), "common" | "organizations" | "consumers")
}

impl App {
    /// Validates the parts of an app registration.
    pub fn new(
        kind: AppKind,
        client_id: &str,
        tenant: &str,
        credential: Credential,
    ) -> Result<Self, AppError> {
        let client_id = client_id.trim();
        if !is_guid(client_id) {
            return Err(AppError::ClientId);
        }
        let tenant: Tenant = if tenant.trim().is_empty() {
            Tenant::default()
        } else {
            tenant.parse().map_err(AppError::Tenant)?
        };
        if kind == AppKind::Daemon && is_multi_tenant_alias(&tenant) {
            return Err(AppError::DaemonTenant);
        }
        if let Credential::Secret(s) = &credential {
            let len = s.expose_secret().trim().len();
            if len == 0 || len > MAX_CREDENTIAL_LEN {
                return Err(AppError::Secret);
            }
        }
        Ok(Self { kind, client_id: client_id.to_ascii_lowercase(), tenant, credential })
    }

    /// What may be shown of the app (AutoKitteh's var names for the ids).
    pub fn summary(&self) -> AppSummary {
        let cert = match &self.credential {
            Credential::Certificate(c) => Some(c.as_ref()),
            Credential::Secret(_) | Credential::AwsFederation(_) => None,
        };
        AppSummary {
            auth_type: self.kind.auth_type().to_owned(),
            private_client_id: self.client_id.clone(),
            private_tenant_id: self.tenant.to_string(),
            credential: self.credential.kind().to_owned(),
            certificate_thumbprint: cert.map(|c| c.thumbprint.clone()),
            certificate_thumbprint_sha256: cert.map(|c| c.thumbprint_sha256.clone()),
            certificate_expires_at: cert.map(|c| rfc3339(c.not_after)),
        }
    }

    /// When the tenant is one tenant's GUID, the only `tid` its tokens may carry.
    pub fn single_tenant_id(&self) -> Option<&str> {
        let t = self.tenant.as_str();
        is_guid(t).then_some(t)
    }
}

/// The non-secret part of an app registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSummary {
    pub auth_type: String,
    pub private_client_id: String,
    pub private_tenant_id: String,
    /// `secret` or `certificate`.
    pub credential: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_thumbprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_thumbprint_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires_at: Option<String>,
}

impl AppSummary {
    /// What the connection API and `akoauth` show of the app of `cid`: the summary, and for an
    /// app that trusts the functions' AWS identity the audience its federated identity
    /// credential must name (one connection's).
    pub fn answer(&self, cid: &crate::domain::ConnectionId) -> serde_json::Value {
        let mut answer = serde_json::to_value(self).unwrap_or_default();
        if self.credential == "aws_federation" {
            answer["federation_audience"] =
                serde_json::Value::String(crate::federation::own_app_audience(cid));
        }
        answer
    }
}

/// A connection's own app, opened for use: its kind, what may be shown, and how it
/// authenticates.
#[derive(Debug, Clone)]
pub struct OpenedApp {
    pub kind: AppKind,
    pub summary: AppSummary,
    pub auth: crate::microsoft::ClientAuth,
}

/// Why a stored app could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenAppError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("the stored app is unreadable")]
    Corrupt,
    /// The app trusts the functions' AWS identity, and this deployment no longer has one.
    #[error("the app authenticates with AWS federation, which this deployment no longer uses")]
    NoFederation,
}

/// Reads a connection's own app and opens its credential; `None` when it has none.
pub async fn open_app(
    store: &dyn crate::store::Store,
    keys: &dyn crate::crypto::DataKeys,
    cid: &crate::domain::ConnectionId,
    federation: Option<&std::sync::Arc<crate::federation::FederatedAssertions>>,
) -> Result<Option<OpenedApp>, OpenAppError> {
    let Some(stored) = store.get_app(cid).await? else { return Ok(None) };
    let summary = stored.app.summary;
    let kind = AppKind::from_auth_type(&summary.auth_type).ok_or(OpenAppError::Corrupt)?;
    let plaintext =
        crate::crypto::open(keys, &credential_context(cid.as_str()), &stored.app.credential_sealed)
            .await?;
    let federation =
        federation.map(|f| crate::federation::FederatedIdentity::own_app(f.clone(), cid));
    let credential =
        Credential::from_plaintext(plaintext.expose_secret(), federation).map_err(|e| match e {
            AppError::NoFederation => OpenAppError::NoFederation,
            _ => OpenAppError::Corrupt,
        })?;
    let tenant = summary.private_tenant_id.parse().map_err(|_| OpenAppError::Corrupt)?;
    let auth = crate::microsoft::ClientAuth {
        client_id: summary.private_client_id.clone(),
        tenant,
        credential,
    };
    Ok(Some(OpenedApp { kind, summary, auth }))
}

/// The credential a connection's own app had before its last change, while it may still be
/// tried (see `registration::PREVIOUS_CREDENTIAL_GRACE`); `None` when there is none.
pub async fn previous_credential(
    store: &dyn crate::store::Store,
    keys: &dyn crate::crypto::DataKeys,
    cid: &crate::domain::ConnectionId,
    federation: Option<&std::sync::Arc<crate::federation::FederatedAssertions>>,
    now: OffsetDateTime,
) -> Result<Option<Credential>, OpenAppError> {
    let Some(stored) = store.get_app(cid).await? else { return Ok(None) };
    let (Some(sealed), Some(until)) =
        (stored.app.previous_credential_sealed, stored.app.previous_until)
    else {
        return Ok(None);
    };
    let until = OffsetDateTime::parse(&until, &time::format_description::well_known::Rfc3339)
        .map_err(|_| OpenAppError::Corrupt)?;
    if now >= until {
        return Ok(None);
    }
    let plaintext = crate::crypto::open(keys, &credential_context(cid.as_str()), &sealed).await?;
    let federation =
        federation.map(|f| crate::federation::FederatedIdentity::own_app(f.clone(), cid));
    Credential::from_plaintext(plaintext.expose_secret(), federation)
        .map(Some)
        .map_err(|_| OpenAppError::Corrupt)
}

/// AutoKitteh's names of a connection's own app (non-secret).
pub const AK_APP_VARS: [&str; 3] = ["auth_type", "private_client_id", "private_tenant_id"];
/// AutoKitteh's names of a connection's own app credential (secret vars).
pub const AK_CREDENTIAL_VARS: [&str; 2] = ["private_client_secret", "private_certificate"];

/// A connection's own app as AutoKitteh's vars name it, without its credential: what a
/// sign-in is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRef {
    pub kind: AppKind,
    pub client_id: String,
    pub tenant: Tenant,
}

fn var<'a>(vars: &'a [crate::autokitteh::Var], name: &str) -> Option<&'a str> {
    vars.iter()
        .find(|v| v.name == name)
        .map(|v| v.value.expose_secret().trim())
        .filter(|v| !v.is_empty())
}

/// The connection's own app named by AutoKitteh vars (`auth_type` `oauthPrivate` or
/// `daemonApp`, `private_client_id`, `private_tenant_id` defaulting to `common`); `None`
/// for the server-wide app.
pub fn app_ref_from_vars(vars: &[crate::autokitteh::Var]) -> Result<Option<AppRef>, AppError> {
    let Some(kind) = var(vars, "auth_type").and_then(AppKind::from_auth_type) else {
        return Ok(None);
    };
    let client_id = var(vars, "private_client_id").ok_or(AppError::ClientId)?;
    if !is_guid(client_id) {
        return Err(AppError::ClientId);
    }
    let tenant: Tenant = match var(vars, "private_tenant_id") {
        Some(t) => t.parse().map_err(AppError::Tenant)?,
        None => Tenant::default(),
    };
    Ok(Some(AppRef { kind, client_id: client_id.to_ascii_lowercase(), tenant }))
}

/// The whole app named by AutoKitteh vars, credential included (`private_certificate` when
/// set, else `private_client_secret`), validated as an app set through the API is.
pub fn app_from_vars(vars: &[crate::autokitteh::Var]) -> Result<Option<App>, AppError> {
    let Some(found) = app_ref_from_vars(vars)? else { return Ok(None) };
    let credential = match (var(vars, "private_certificate"), var(vars, "private_client_secret")) {
        (Some(pem), _) => Credential::Certificate(Box::new(Certificate::from_pem(pem)?)),
        (None, Some(secret)) => Credential::Secret(SecretString::from(secret.to_owned())),
        (None, None) => return Err(AppError::Credential),
    };
    App::new(found.kind, &found.client_id, found.tenant.as_str(), credential).map(Some)
}

/// The context a connection's app credential is sealed under.
pub fn credential_context(connection_id: &str) -> EncryptionContext {
    EncryptionContext::from([
        ("store".to_owned(), TOKEN_STORE.to_owned()),
        ("connection_id".to_owned(), connection_id.to_owned()),
        ("purpose".to_owned(), CREDENTIAL_PURPOSE.to_owned()),
    ])
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Reads a certificate's DER validity only (for tests and tools that have no key).
#[doc(hidden)]
pub fn certificate_not_after(der: &[u8]) -> Option<OffsetDateTime> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let secs = cert.tbs_certificate.validity.not_after.to_unix_duration().as_secs();
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3";

    #[test]
    fn app_ids_tenants_and_secrets_are_checked() {
        let secret = || Credential::Secret(SecretString::from("s3cr3t~value".to_owned()));
        let app = App::new(AppKind::Private, &CLIENT.to_uppercase(), "", secret()).unwrap();
        assert_eq!(app.client_id, CLIENT);
        assert_eq!(app.tenant.as_str(), "common");
        assert_eq!(app.single_tenant_id(), None);
        for bad in ["", "not-a-guid", "0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a", "{0b7c8d9e-1f20}"] {
            assert_eq!(
                App::new(AppKind::Private, bad, "", secret()).unwrap_err(),
                AppError::ClientId
            );
        }
        assert!(matches!(
            App::new(AppKind::Private, CLIENT, "a/b", secret()),
            Err(AppError::Tenant(_))
        ));
        for alias in ["common", "organizations", "consumers"] {
            assert_eq!(
                App::new(AppKind::Daemon, CLIENT, alias, secret()).unwrap_err(),
                AppError::DaemonTenant
            );
        }
        let tid = "2f6a3d1c-5b4e-4c8a-9f17-0a1b2c3d4e5f";
        let daemon = App::new(AppKind::Daemon, CLIENT, tid, secret()).unwrap();
        assert_eq!(daemon.single_tenant_id(), Some(tid));
        assert!(App::new(AppKind::Daemon, CLIENT, "contoso.com", secret()).is_ok());
        let empty = Credential::Secret(SecretString::from("  ".to_owned()));
        assert_eq!(App::new(AppKind::Private, CLIENT, "", empty).unwrap_err(), AppError::Secret);
    }

    #[test]
    fn a_secret_survives_sealing_and_never_shows() {
        let credential = Credential::Secret(SecretString::from("s3cr3t~value".to_owned()));
        assert!(!format!("{credential:?}").contains("s3cr3t"));
        let back = Credential::from_plaintext(&credential.to_plaintext().unwrap(), None).unwrap();
        let Credential::Secret(s) = back else { panic!("kind changed") };
        assert_eq!(s.expose_secret(), "s3cr3t~value");
        let app = App::new(AppKind::Private, CLIENT, "", credential).unwrap();
        let summary = serde_json::to_string(&app.summary()).unwrap();
        assert!(!summary.contains("s3cr3t"), "{summary}");
        assert!(summary.contains("\"credential\":\"secret\""), "{summary}");
        assert!(Credential::from_plaintext(b"{}", None).is_err());
        assert!(
            Credential::from_plaintext(br#"{"client_secret":"a","certificate":"b"}"#, None)
                .is_err()
        );
    }

    #[test]
    fn certificates_need_their_own_unencrypted_key() {
        assert_eq!(
            Certificate::from_pem("nothing here").unwrap_err(),
            AppError::Certificate("must hold a PEM CERTIFICATE block")
        );
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n-----END ENCRYPTED PRIVATE KEY-----";
        assert!(
            matches!(Certificate::from_pem(encrypted), Err(AppError::Certificate(m)) if m.contains("encrypted"))
        );
        // A truncated body (a DER length longer than what follows) is refused at once.
        let truncated = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----";
        assert_eq!(
            Certificate::from_pem(truncated).unwrap_err(),
            AppError::Certificate("is not a readable X.509 certificate")
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        assert_eq!(
            Certificate::from_pem(garbage).unwrap_err(),
            AppError::Certificate("is not a readable X.509 certificate")
        );
        assert_eq!(
            pem_blocks("-----BEGIN X-----a-----END X----------BEGIN X-----b-----END X-----", "X")
                .len(),
            2
        );
    }

    #[test]
    fn autokitteh_vars_name_the_app_and_its_credential() {
        use crate::autokitteh::Var;
        let plain = |n: &str, v: &str| Var::plain(n, v);
        assert_eq!(app_ref_from_vars(&[]).unwrap(), None);
        assert_eq!(app_ref_from_vars(&[plain("auth_type", "oauthDefault")]).unwrap(), None);
        let private = [plain("auth_type", "oauthPrivate"), plain("private_client_id", CLIENT)];
        let found = app_ref_from_vars(&private).unwrap().unwrap();
        assert_eq!((found.kind, found.tenant.as_str()), (AppKind::Private, "common"));
        assert_eq!(app_from_vars(&private).unwrap_err(), AppError::Credential);
        let mut with_secret = private.to_vec();
        with_secret.push(Var::secret("private_client_secret", "s3cr3t"));
        with_secret.push(plain("private_tenant_id", "contoso.com"));
        let app = app_from_vars(&with_secret).unwrap().unwrap();
        assert_eq!((app.credential.kind(), app.tenant.as_str()), ("secret", "contoso.com"));
        let bad = [plain("auth_type", "daemonApp"), plain("private_client_id", "x")];
        assert_eq!(app_ref_from_vars(&bad).unwrap_err(), AppError::ClientId);
        let daemon_common = [
            plain("auth_type", "daemonApp"),
            plain("private_client_id", CLIENT),
            Var::secret("private_client_secret", "s"),
        ];
        assert_eq!(app_from_vars(&daemon_common).unwrap_err(), AppError::DaemonTenant);
    }

    #[test]
    fn guids_are_five_hex_groups() {
        assert!(is_guid(CLIENT));
        assert!(!is_guid("0b7c8d9e1f204a3b8c4d5e6f708192a3"));
        assert!(!is_guid("zb7c8d9e-1f20-4a3b-8c4d-5e6f708192a3"));
    }
}

#[cfg(test)]
mod certificate_tests {
    use super::*;
    use crate::testing::certs;

    const CLIENT: &str = "0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3";

    #[test]
    fn a_certificate_signs_assertions_microsoft_can_check() {
        let made = certs::valid_certificate("private-app.example");
        let cert = Certificate::from_pem(&made.bundle()).unwrap();
        assert_eq!(cert.thumbprint.len(), 40);
        assert_eq!(URL_SAFE_NO_PAD.decode(&cert.thumbprint_sha256).unwrap().len(), 32);
        let now = OffsetDateTime::now_utc();
        cert.check_valid_at(now).unwrap();
        let audience = "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token";
        let assertion = cert.assertion(CLIENT, audience, now).unwrap();
        let second = cert.assertion(CLIENT, audience, now).unwrap();
        assert_ne!(assertion.expose_secret(), second.expose_secret(), "jti is unique");

        // Verified with the certificate's public key alone, as the token endpoint does.
        use x509_cert::der::DecodePem;
        let x509 = x509_cert::Certificate::from_pem(made.certificate_pem.as_bytes()).unwrap();
        let spki = x509.tbs_certificate.subject_public_key_info.to_der().unwrap();
        let public = RsaPublicKey::from_public_key_der(&spki).unwrap();
        use rsa::pkcs1::EncodeRsaPublicKey;
        let key =
            jsonwebtoken::DecodingKey::from_rsa_der(public.to_pkcs1_der().unwrap().as_bytes());
        let header = jsonwebtoken::decode_header(assertion.expose_secret()).unwrap();
        assert_eq!(header.alg, Algorithm::PS256);
        assert_eq!(header.x5t_s256.as_deref(), Some(cert.thumbprint_sha256.as_str()));
        let mut validation = jsonwebtoken::Validation::new(Algorithm::PS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[CLIENT]);
        let data =
            jsonwebtoken::decode::<serde_json::Value>(assertion.expose_secret(), &key, &validation)
                .unwrap();
        assert_eq!(data.claims["sub"], CLIENT);
        let lifetime = data.claims["exp"].as_i64().unwrap() - data.claims["iat"].as_i64().unwrap();
        assert_eq!(lifetime, ASSERTION_LIFETIME_SECS);

        // Sealed and opened again, the same certificate; shown, only the public part.
        let credential = Credential::Certificate(Box::new(cert.clone()));
        let opened = Credential::from_plaintext(&credential.to_plaintext().unwrap(), None).unwrap();
        let Credential::Certificate(opened) = opened else { panic!("kind changed") };
        assert_eq!(opened.thumbprint, cert.thumbprint);
        let app = App::new(AppKind::Daemon, CLIENT, "contoso.com", credential).unwrap();
        let summary = serde_json::to_string(&app.summary()).unwrap();
        assert!(summary.contains(&cert.thumbprint), "{summary}");
        assert!(!summary.contains("PRIVATE"), "{summary}");
        assert!(!format!("{app:?}").contains("PRIVATE"));
    }

    #[test]
    fn expired_and_mismatched_certificates_are_named() {
        let expired = certs::expired_certificate("old.example");
        let cert = Certificate::from_pem(&expired.bundle()).unwrap();
        assert!(matches!(
            cert.check_valid_at(OffsetDateTime::now_utc()),
            Err(AppError::CertificateExpired(_))
        ));
        let other = certs::valid_certificate("other.example");
        let mixed = format!("{}{}", expired.certificate_pem, other.key_pem);
        assert_eq!(
            Certificate::from_pem(&mixed).unwrap_err(),
            AppError::Certificate("and the private key do not belong together")
        );
        assert_eq!(
            Certificate::from_pem(&expired.certificate_pem).unwrap_err(),
            AppError::Certificate("must come with its private key (a PEM PRIVATE KEY block)")
        );
    }
}
