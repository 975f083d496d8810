//! The Microsoft identity platform (authorize, token) and the two Graph reads we need.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{
    BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet,
    EndpointSet, ErrorResponse, ExtraTokenFields, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::apps::{ASSERTION_TYPE, AppError, Credential};
use crate::config::Config;
use crate::domain::{PERSONAL_ACCOUNT_TENANT, Tenant};
use crate::http::{HttpError, OAuthHttp, Transport};
use crate::state::FlowSecrets;

/// Fields of Microsoft's token response that the basic `oauth2` response drops.
#[derive(Clone, Serialize, Deserialize)]
pub struct MicrosoftTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_expires_in: Option<u64>,
}

impl fmt::Debug for MicrosoftTokenFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MicrosoftTokenFields")
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .field("ext_expires_in", &self.ext_expires_in)
            .finish()
    }
}

impl ExtraTokenFields for MicrosoftTokenFields {}

/// Microsoft's token response.
pub type MicrosoftTokenResponse = StandardTokenResponse<MicrosoftTokenFields, BasicTokenType>;

/// An error from Microsoft, from the callback or the token endpoint. Branch on `error`; the
/// AADSTS `codes` only refine the hint shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MicrosoftError {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_codes: Vec<u32>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
}

impl MicrosoftError {
    /// From the `error` and `error_description` of a callback; the AADSTS code is parsed
    /// from the description, where Microsoft puts it.
    pub fn from_callback(error: &str, description: Option<&str>) -> Self {
        Self {
            error: error.to_owned(),
            error_description: description.map(str::to_owned),
            error_codes: description.and_then(aadsts_code).into_iter().collect(),
            trace_id: None,
            correlation_id: None,
        }
    }

    /// True if any of the AADSTS codes is `code`.
    pub fn has_code(&self, code: u32) -> bool {
        self.error_codes.contains(&code)
    }

    /// The first AADSTS code, if any.
    pub fn code(&self) -> Option<u32> {
        self.error_codes.first().copied()
    }

    /// Who must act, from the AADSTS codes where one is known and `error` otherwise.
    pub fn class(&self) -> FailureClass {
        let known = self.error_codes.iter().find_map(|&c| class_of_code(c));
        known.unwrap_or(match self.error.as_str() {
            "temporarily_unavailable" | "server_error" => FailureClass::Transient,
            "invalid_client"
            | "unauthorized_client"
            | "invalid_request"
            | "invalid_scope"
            | "invalid_resource"
            | "unsupported_grant_type" => FailureClass::AppMisconfigured,
            _ => FailureClass::SignInAgain,
        })
    }

    /// `<class>: <error> (AADSTS<code>)`: what a connection's status and events carry.
    pub fn reason(&self) -> String {
        match self.code() {
            Some(code) => format!("{}: {} (AADSTS{code})", self.class().as_str(), self.error),
            None => format!("{}: {}", self.class().as_str(), self.error),
        }
    }
}

/// Who must act on a failure from Microsoft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The user must sign in again (declined, expired or revoked grant, MFA or policy).
    SignInAgain,
    /// A tenant administrator must grant consent to the app.
    AdminConsent,
    /// The app's registration or credential is wrong: secret, certificate, redirect URI,
    /// audience, tenant, unknown app. An operator (or the app's owner) must fix it.
    AppMisconfigured,
    /// Trying again later may succeed.
    Transient,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::SignInAgain => "sign_in_again",
            FailureClass::AdminConsent => "admin_consent",
            FailureClass::AppMisconfigured => "app_misconfigured",
            FailureClass::Transient => "transient",
        }
    }
}

/// The class a stored reason (`<class>: <error> (AADSTS<code>)`) starts with.
pub fn class_of_reason(reason: &str) -> Option<FailureClass> {
    let prefix = reason.split(':').next().unwrap_or_default().trim();
    [
        FailureClass::SignInAgain,
        FailureClass::AdminConsent,
        FailureClass::AppMisconfigured,
        FailureClass::Transient,
    ]
    .into_iter()
    .find(|class| class.as_str() == prefix)
}

/// The first AADSTS code a stored reason names.
pub fn code_of_reason(reason: &str) -> Option<u32> {
    let (_, after) = reason.split_once("AADSTS")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The AADSTS codes whose meaning decides the class (Microsoft's error-code reference).
fn class_of_code(code: u32) -> Option<FailureClass> {
    use FailureClass as C;
    Some(match code {
        // Consent required; admin consent required; admin approval required; the app has no
        // service principal in the tenant yet (what an administrator's consent creates).
        65001 | 90094 | 90095 | 900_941 | 7_000_229 => C::AdminConsent,
        // Client secret invalid or expired; assertion signature, time or audience; redirect
        // URI; single-tenant app on a multi-tenant endpoint; app not in the tenant; app
        // disabled; personal accounts not supported; resource not in the tenant; tenant
        // unknown; no credential; no federated identity credential matching the assertion's
        // issuer, audience or subject.
        7_000_215 | 7_000_222 | 700_027 | 700_024 | 700_023 | 50011 | 50194 | 700_016
        | 7_000_112 | 9_002_332 | 500_011 | 90002 | 900_023 | 7_000_218 | 50012 | 70021
        | 700_211 | 700_212 | 700_213 => C::AppMisconfigured,
        // Declined; code expired or reused; grant expired, revoked or needing MFA, a new
        // sign-in or Conditional Access; account not in the tenant.
        65004 | 70008 | 54005 | 700_082 | 50173 | 70043 | 50076 | 50079 | 53003 | 50020 | 50072
        | 50055 | 50058 => C::SignInAgain,
        // Service busy or failing.
        90033 | 50196 => C::Transient,
        _ => return None,
    })
}

impl fmt::Display for MicrosoftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if !self.error_codes.is_empty() {
            write!(f, " (AADSTS{:?})", self.error_codes)?;
        }
        if let Some(trace) = &self.trace_id {
            write!(f, " trace_id={trace}")?;
        }
        Ok(())
    }
}

impl ErrorResponse for MicrosoftError {}

/// The first `AADSTS<digits>` in a description.
pub(crate) fn aadsts_code(description: &str) -> Option<u32> {
    let rest = &description[description.find("AADSTS")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).take(9).collect();
    digits.parse().ok()
}

type MicrosoftOAuthClient = oauth2::Client<
    MicrosoftError,
    MicrosoftTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Why the code exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Microsoft refused the request (`invalid_grant`, `invalid_client`, …).
    #[error("token endpoint refused the request: {0}")]
    Rejected(Box<MicrosoftError>),
    /// Microsoft could not be reached, timed out or failed (5xx).
    #[error("token endpoint unavailable")]
    Unavailable(#[source] HttpError),
    /// Microsoft answered with something that is not a token response. The body is dropped:
    /// it may hold tokens.
    #[error("token endpoint answered with an unreadable response")]
    Malformed,
    /// The response lacks what the flow needs (an id_token with `tid` and `oid`).
    #[error("token response is incomplete: {0}")]
    Incomplete(&'static str),
    /// A single-tenant app's sign-in came back from another tenant.
    #[error("the tokens were issued by tenant {0}, not the app's tenant")]
    OtherTenant(String),
    /// The app's credential cannot be used (an expired certificate, a failed signature).
    #[error("the app's credential cannot be used: {0}")]
    Credential(#[from] AppError),
    /// No AWS identity token for the client assertion.
    #[error("no client assertion from AWS STS")]
    Federation(#[source] crate::federation::FederationError),
}

impl TokenError {
    /// True when the client secret was refused (invalid or expired).
    pub fn is_invalid_client(&self) -> bool {
        matches!(self, TokenError::Rejected(e) if e.error == "invalid_client")
    }

    /// Who must act, for failures Microsoft reported or our credential caused.
    pub fn class(&self) -> FailureClass {
        match self {
            TokenError::Rejected(e) => e.class(),
            TokenError::Credential(_) => FailureClass::AppMisconfigured,
            TokenError::Federation(e) if e.is_transient() => FailureClass::Transient,
            TokenError::Federation(_) => FailureClass::AppMisconfigured,
            TokenError::OtherTenant(_) => FailureClass::SignInAgain,
            TokenError::Unavailable(_) | TokenError::Malformed | TokenError::Incomplete(_) => {
                FailureClass::Transient
            }
        }
    }

    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Unavailable(_) => true,
            TokenError::Federation(e) => e.is_transient(),
            TokenError::Rejected(e) => {
                e.error == "temporarily_unavailable" || e.error == "server_error"
            }
            TokenError::Malformed
            | TokenError::Incomplete(_)
            | TokenError::OtherTenant(_)
            | TokenError::Credential(_) => false,
        }
    }
}

/// The identity claims we read from the id_token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IdClaims {
    pub tid: String,
    pub oid: String,
    pub aud: String,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

impl IdClaims {
    /// Personal Microsoft accounts live in one fixed tenant and have no organization.
    pub fn is_personal_account(&self) -> bool {
        self.tid.eq_ignore_ascii_case(PERSONAL_ACCOUNT_TENANT)
    }
}

/// The longest access-token lifetime taken at its word. Microsoft issues 60 to 90 minutes
/// (up to 28 hours with continuous access evaluation); a longer `expires_in` is clamped, so
/// an absurd answer can neither overflow a date nor keep a token "valid" for years.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(2 * 24 * 3600);

/// When a token issued at `now` with `expires_in` expires (`now` when Microsoft gave none).
pub fn expiry_after(
    now: time::OffsetDateTime,
    expires_in: Option<Duration>,
) -> time::OffsetDateTime {
    expires_in.map_or(now, |d| now + d.min(MAX_TOKEN_LIFETIME))
}

/// Tokens and identity from a successful code exchange.
#[derive(Debug)]
pub struct Tokens {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub token_type: String,
    pub expires_in: Option<Duration>,
    pub claims: IdClaims,
    /// The scopes Microsoft granted (the response's `scope`), space-separated; what the
    /// connection's refreshes ask for. `None` when the response named none.
    pub granted_scopes: Option<String>,
}

/// Tokens from a refresh. Microsoft normally rotates the refresh token; when a response
/// carries none, the caller keeps the one it has.
#[derive(Debug)]
pub struct Refreshed {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub expires_in: Option<Duration>,
    /// The scopes of the new tokens, when Microsoft named them.
    pub granted_scopes: Option<String>,
}

/// The scope `offline_access`: asked for on every refresh, never returned in a response's
/// `scope` (it is no permission of the access token).
const OFFLINE_ACCESS: &str = "offline_access";

/// The scopes a refresh asks for. Microsoft refuses a refresh that asks for a scope the
/// sign-in was not granted (AADSTS65001), so a connection refreshes with exactly what it was
/// granted, whatever the deployment's `MICROSOFT_SCOPES` says now. A connection saved before
/// its grant was recorded asks for the resource's `.default` scope: everything consented to
/// the app for that user, never more.
pub fn refresh_scopes(granted: Option<&str>, graph_default_scope: &str) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    match granted.map(str::trim).filter(|g| !g.is_empty()) {
        Some(granted) => {
            for scope in granted.split_whitespace() {
                if !scopes.iter().any(|s| s.eq_ignore_ascii_case(scope)) {
                    scopes.push(scope.to_owned());
                }
            }
        }
        None => {
            scopes.extend([graph_default_scope, "openid", "profile"].into_iter().map(str::to_owned))
        }
    }
    if !scopes.iter().any(|s| s.eq_ignore_ascii_case(OFFLINE_ACCESS)) {
        scopes.push(OFFLINE_ACCESS.to_owned());
    }
    scopes
}

/// A token response's `scope` as stored: space-separated, as Microsoft sends it.
fn scope_text(response: &MicrosoftTokenResponse) -> Option<String> {
    let scopes = response.scopes()?;
    let text = scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
    (!text.trim().is_empty()).then_some(text)
}

/// A Graph read failed.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("Graph request failed")]
    Unavailable(#[source] HttpError),
    #[error("Graph answered HTTP {0}")]
    Status(u16),
    #[error("Graph answered with an unreadable response")]
    Malformed(#[source] serde_json::Error),
    /// The token endpoint issued an access token that cannot be sent in a header.
    #[error("the access token is not a valid header value")]
    UnusableToken,
}

/// The user, from Graph `/v1.0/me`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct GraphUser {
    pub id: Option<String>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub user_principal_name: Option<String>,
    pub mail: Option<String>,
    pub preferred_language: Option<String>,
    pub mobile_phone: Option<String>,
}

/// The user's organization, from Graph `/v1.0/organization`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct GraphOrganization {
    pub id: Option<String>,
    pub display_name: Option<String>,
    pub tenant_type: Option<String>,
}

#[derive(Deserialize)]
struct OrganizationList {
    #[serde(default)]
    value: Vec<GraphOrganization>,
}

/// The app that authenticates at the token endpoint and the tenant it goes through: the
/// server-wide app or a connection's own.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub client_id: String,
    pub tenant: Tenant,
    pub credential: Credential,
}

impl ClientAuth {
    /// The server-wide app of `endpoints` with its client secret.
    pub fn default_app(endpoints: &Endpoints, secret: SecretString) -> Self {
        Self {
            client_id: endpoints.client_id.to_string(),
            tenant: endpoints.tenant.clone(),
            credential: Credential::Secret(secret),
        }
    }

    /// The server-wide app with this function's AWS identity as its credential.
    pub fn federated(
        endpoints: &Endpoints,
        source: std::sync::Arc<crate::federation::FederatedAssertions>,
    ) -> Self {
        Self {
            client_id: endpoints.client_id.to_string(),
            tenant: endpoints.tenant.clone(),
            credential: Credential::AwsFederation(
                crate::federation::FederatedIdentity::server_wide(source),
            ),
        }
    }

    /// The tenant id every token must come from, when the app names one tenant by GUID.
    fn single_tenant(&self) -> Option<&str> {
        let t = self.tenant.as_str();
        let guid = t.len() == 36 && t.bytes().filter(|b| *b == b'-').count() == 4;
        guid.then_some(t)
    }
}

/// An app-only access token (client credentials).
#[derive(Debug)]
pub struct AppToken {
    pub access_token: AccessToken,
    pub expires_in: Option<Duration>,
}

/// The app's endpoints and request parameters, validated once at init. Enough to send a
/// browser to Microsoft; makes no HTTP call itself (so the start function needs no client).
#[derive(Debug, Clone)]
pub struct Endpoints {
    client_id: ClientId,
    tenant: Tenant,
    authority_host: Url,
    redirect_url: RedirectUrl,
    scopes: Vec<Scope>,
    graph_url: Url,
}

impl Endpoints {
    pub fn new(config: &Config) -> Self {
        Self {
            client_id: config.client_id.clone(),
            tenant: config.tenant.clone(),
            authority_host: config.authority_host.clone(),
            redirect_url: config.redirect_url(),
            scopes: config.scopes.iter().cloned().map(Scope::new).collect(),
            graph_url: config.graph_url.clone(),
        }
    }

    fn authority(&self, tenant: &Tenant, tail: &[&str]) -> Url {
        let mut url = self.authority_host.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(tenant.as_str()).extend(tail);
        }
        url
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`: also the audience of client assertions.
    pub fn token_url(&self, tenant: &Tenant) -> TokenUrl {
        TokenUrl::from_url(self.authority(tenant, &["oauth2", "v2.0", "token"]))
    }

    /// Where an administrator of `tenant` grants `client_id` the application and delegated
    /// permissions it was configured with (v2 admin consent: the Graph `.default` scope),
    /// coming back to the same redirect URI with `state`.
    pub fn admin_consent_url(&self, client_id: &str, tenant: &Tenant, state: &str) -> Url {
        let mut url = self.authority(tenant, &["v2.0", "adminconsent"]);
        url.query_pairs_mut()
            .append_pair("client_id", client_id)
            .append_pair("scope", &self.graph_default_scope())
            .append_pair("redirect_uri", self.redirect_url.as_str())
            .append_pair("state", state);
        url
    }

    /// The server-wide app's client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The server-wide app's tenant.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The Graph `.default` scope of the configured cloud (what application permissions are
    /// requested with).
    pub fn graph_default_scope(&self) -> String {
        format!("{}/.default", self.graph_url.as_str().trim_end_matches('/'))
    }

    /// The exact redirect URI.
    pub fn redirect_uri(&self) -> &str {
        self.redirect_url.as_str()
    }

    fn oauth(
        &self,
        client_id: &str,
        tenant: &Tenant,
        secret: Option<&SecretString>,
    ) -> MicrosoftOAuthClient {
        let client = oauth2::Client::new(ClientId::new(client_id.to_owned()))
            .set_auth_uri(AuthUrl::from_url(
                self.authority(tenant, &["oauth2", "v2.0", "authorize"]),
            ))
            .set_token_uri(self.token_url(tenant))
            .set_redirect_uri(self.redirect_url.clone())
            // MSAL sends the secret in the body; Basic auth with URL-encoded secrets is a known
            // source of `invalid_client` for secrets with special characters.
            .set_auth_type(AuthType::RequestBody);
        match secret {
            Some(s) => client.set_client_secret(ClientSecret::new(s.expose_secret().to_owned())),
            None => client,
        }
    }

    /// The URL the browser is sent to for the server-wide app.
    pub fn authorize_url(&self, secrets: &FlowSecrets) -> Url {
        self.authorize_url_for(secrets, &self.client_id, &self.tenant)
    }

    /// The URL the browser is sent to for the app `client_id` through `tenant`, with `state`
    /// and the PKCE challenge of `secrets`.
    pub fn authorize_url_for(
        &self,
        secrets: &FlowSecrets,
        client_id: &str,
        tenant: &Tenant,
    ) -> Url {
        let state = secrets.state.clone();
        let (url, _) = self
            .oauth(client_id, tenant, None)
            .authorize_url(move || state)
            .add_scopes(self.scopes.iter().cloned())
            .set_pkce_challenge(secrets.pkce_challenge.clone())
            .add_extra_param("response_mode", "query")
            .add_extra_param("prompt", "select_account")
            .url();
        url
    }
}

/// Adds a signed client assertion's parameters to a token request of any grant (each grant's
/// request is its own type in the oauth2 crate).
macro_rules! with_assertion {
    ($request:expr, $authn:expr) => {
        match $authn {
            Authn::Assertion(a) => $request
                .add_extra_param("client_assertion_type", ASSERTION_TYPE)
                .add_extra_param("client_assertion", a.expose_secret().to_owned()),
            Authn::Secret(_) => $request,
        }
    };
}

/// The client authentication of one token request: the secret for the oauth2 client, or a
/// freshly signed assertion sent as extra parameters.
enum Authn {
    Secret(SecretString),
    Assertion(SecretString),
}

/// Client of the token endpoint and Graph, built once per instance.
#[derive(Debug, Clone)]
pub struct Microsoft {
    endpoints: Endpoints,
    http: Arc<dyn Transport>,
}

impl Microsoft {
    pub fn new(endpoints: Endpoints, http: reqwest::Client) -> Self {
        Self::with_transport(endpoints, Arc::new(http))
    }

    /// A client whose requests go through `http` (benchmarks answer in-process).
    pub fn with_transport(endpoints: Endpoints, http: Arc<dyn Transport>) -> Self {
        Self { endpoints, http }
    }

    /// The endpoints this client talks to.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    async fn authn(&self, auth: &ClientAuth) -> Result<Authn, TokenError> {
        match &auth.credential {
            Credential::Secret(s) => Ok(Authn::Secret(s.clone())),
            Credential::AwsFederation(identity) => {
                Ok(Authn::Assertion(identity.assertion().await.map_err(TokenError::Federation)?))
            }
            Credential::Certificate(cert) => {
                let now = time::OffsetDateTime::now_utc();
                cert.check_valid_at(now)?;
                let audience = self.endpoints.token_url(&auth.tenant);
                Ok(Authn::Assertion(cert.assertion(&auth.client_id, audience.as_str(), now)?))
            }
        }
    }

    fn client(&self, auth: &ClientAuth, authn: &Authn) -> MicrosoftOAuthClient {
        let secret = match authn {
            Authn::Secret(s) => Some(s),
            Authn::Assertion(_) => None,
        };
        self.endpoints.oauth(&auth.client_id, &auth.tenant, secret)
    }

    /// Redeems an authorization code with its PKCE verifier, as the app of `auth`.
    pub async fn exchange_code(
        &self,
        code: AuthorizationCode,
        verifier: PkceCodeVerifier,
        auth: &ClientAuth,
    ) -> Result<Tokens, TokenError> {
        let authn = self.authn(auth).await?;
        let client = self.client(auth, &authn);
        let mut request = client.exchange_code(code).set_pkce_verifier(verifier);
        request = with_assertion!(request, &authn);
        let response =
            request.request_async(&OAuthHttp(self.http.as_ref())).await.map_err(token_error)?;
        let id_token = response
            .extra_fields()
            .id_token
            .as_deref()
            .ok_or(TokenError::Incomplete("no id_token"))?;
        let claims = read_id_token(id_token)?;
        if !claims.aud.eq_ignore_ascii_case(&auth.client_id) {
            return Err(TokenError::Incomplete("id_token was issued for another application"));
        }
        if let Some(tenant) = auth.single_tenant()
            && !claims.tid.eq_ignore_ascii_case(tenant)
        {
            return Err(TokenError::OtherTenant(claims.tid));
        }
        Ok(Tokens {
            access_token: response.access_token().clone(),
            refresh_token: response.refresh_token().cloned(),
            token_type: "Bearer".to_owned(),
            expires_in: response.expires_in(),
            claims,
            granted_scopes: scope_text(&response),
        })
    }

    /// Redeems a refresh token for new tokens, as the app that obtained it, asking for
    /// `scopes` (see [`refresh_scopes`]).
    pub async fn refresh(
        &self,
        refresh_token: &RefreshToken,
        auth: &ClientAuth,
        scopes: &[String],
    ) -> Result<Refreshed, TokenError> {
        let authn = self.authn(auth).await?;
        let client = self.client(auth, &authn);
        let mut request = client
            .exchange_refresh_token(refresh_token)
            // Microsoft's v2 endpoint documents `scope` as required on a refresh, within
            // what the sign-in was granted.
            .add_scopes(scopes.iter().cloned().map(Scope::new));
        request = with_assertion!(request, &authn);
        let response =
            request.request_async(&OAuthHttp(self.http.as_ref())).await.map_err(token_error)?;
        Ok(Refreshed {
            access_token: response.access_token().clone(),
            refresh_token: response.refresh_token().cloned(),
            expires_in: response.expires_in(),
            granted_scopes: scope_text(&response),
        })
    }

    /// An app-only token for the Graph `.default` scope (client credentials grant), as a
    /// daemon app gets one.
    pub async fn app_token(&self, auth: &ClientAuth) -> Result<AppToken, TokenError> {
        let authn = self.authn(auth).await?;
        let client = self.client(auth, &authn);
        let mut request = client
            .exchange_client_credentials()
            .add_scope(Scope::new(self.endpoints.graph_default_scope()));
        request = with_assertion!(request, &authn);
        let response =
            request.request_async(&OAuthHttp(self.http.as_ref())).await.map_err(token_error)?;
        Ok(AppToken {
            access_token: response.access_token().clone(),
            expires_in: response.expires_in(),
        })
    }

    /// Graph `/v1.0/me`.
    pub async fn me(&self, token: &AccessToken) -> Result<GraphUser, GraphError> {
        self.graph_get(token, "me").await
    }

    /// Graph `/v1.0/organization`; `None` when it lists nothing.
    pub async fn organization(
        &self,
        token: &AccessToken,
    ) -> Result<Option<GraphOrganization>, GraphError> {
        let list: OrganizationList = self.graph_get(token, "organization").await?;
        Ok(list.value.into_iter().next())
    }

    async fn graph_get<T: serde::de::DeserializeOwned>(
        &self,
        token: &AccessToken,
        resource: &str,
    ) -> Result<T, GraphError> {
        let mut url = self.endpoints.graph_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("v1.0").push(resource);
        }
        let mut bearer = http::HeaderValue::try_from(format!("Bearer {}", token.secret()))
            .map_err(|_| GraphError::UnusableToken)?;
        bearer.set_sensitive(true);
        let request = http::Request::get(url.as_str())
            .header(http::header::AUTHORIZATION, bearer)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|_| GraphError::UnusableToken)?;
        let response = self.http.send(request).await.map_err(GraphError::Unavailable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(GraphError::Status(status.as_u16()));
        }
        let body = response.into_body();
        serde_json::from_slice(&body).map_err(GraphError::Malformed)
    }
}

fn token_error(e: RequestTokenError<HttpError, MicrosoftError>) -> TokenError {
    match e {
        RequestTokenError::ServerResponse(err) => TokenError::Rejected(Box::new(err)),
        RequestTokenError::Request(err) => TokenError::Unavailable(err),
        // The body of an unreadable answer is dropped here: it may hold tokens.
        RequestTokenError::Parse(_, _) | RequestTokenError::Other(_) => TokenError::Malformed,
    }
}

/// Reads the id_token's claims. Its signature is not checked: it came straight from the
/// token endpoint over TLS, which OpenID Connect Core §3.1.3.7 accepts in place of one.
pub(crate) fn read_id_token(id_token: &str) -> Result<IdClaims, TokenError> {
    let data = jsonwebtoken::dangerous::insecure_decode::<IdClaims>(id_token)
        .map_err(|_| TokenError::Incomplete("id_token is unreadable or lacks tid/oid"))?;
    let claims = data.claims;
    if claims.tid.is_empty() || claims.oid.is_empty() {
        return Err(TokenError::Incomplete("id_token lacks tid/oid"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_asks_for_what_was_granted_and_a_refresh_token() {
        let graph = "https://graph.microsoft.us/.default";
        assert_eq!(
            refresh_scopes(Some("Mail.Read openid User.Read profile email mail.read"), graph),
            ["Mail.Read", "openid", "User.Read", "profile", "email", "offline_access"]
        );
        assert_eq!(
            refresh_scopes(Some("User.Read offline_access"), graph),
            ["User.Read", "offline_access"]
        );
        // Saved before grants were recorded: everything consented, never more.
        for legacy in [None, Some(""), Some("  ")] {
            assert_eq!(
                refresh_scopes(legacy, graph),
                [graph, "openid", "profile", "offline_access"]
            );
        }
    }

    #[test]
    fn a_stored_reason_gives_back_its_class_and_code() {
        let reason = "admin_consent: invalid_grant (AADSTS65001)";
        assert_eq!(class_of_reason(reason), Some(FailureClass::AdminConsent));
        assert_eq!(code_of_reason(reason), Some(65001));
        assert_eq!(class_of_reason("invalid_grant (AADSTS50173)"), None);
        assert_eq!(code_of_reason("sign_in_again: invalid_grant"), None);
        assert_eq!(code_of_reason("x (AADSTS)"), None);
    }

    #[test]
    fn an_absurd_token_lifetime_is_clamped_not_an_overflow() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert_eq!(expiry_after(now, None), now);
        assert_eq!(
            expiry_after(now, Some(Duration::from_secs(3599))).unix_timestamp(),
            1_800_003_599
        );
        let clamped = expiry_after(now, Some(Duration::from_secs(u64::MAX)));
        assert_eq!(clamped, now + MAX_TOKEN_LIFETIME);
    }

    #[test]
    fn aadsts_codes_are_read_from_descriptions() {
        assert_eq!(aadsts_code("AADSTS65004: User declined to consent."), Some(65004));
        assert_eq!(aadsts_code("xx AADSTS50011: The redirect URI"), Some(50011));
        assert_eq!(aadsts_code("no code here"), None);
        assert_eq!(aadsts_code("AADSTS"), None);
        assert_eq!(aadsts_code("AADSTS99999999999999"), Some(999_999_999));
    }

    #[test]
    fn callback_errors_carry_their_code() {
        let e = MicrosoftError::from_callback("access_denied", Some("AADSTS65004: declined"));
        assert!(e.has_code(65004));
        assert_eq!(e.to_string(), "access_denied (AADSTS[65004])");
    }

    #[test]
    fn token_errors_parse_microsoft_json() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215],"timestamp":"2026-01-01 00:00:00Z","trace_id":"t","correlation_id":"c"}"#;
        let e: MicrosoftError = serde_json::from_str(body).unwrap();
        assert!(e.has_code(7_000_215));
        assert!(TokenError::Rejected(Box::new(e)).is_invalid_client());
    }

    #[test]
    fn id_token_claims_are_read_without_a_signature_check() {
        use base64::Engine as _;
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256","typ":"JWT"}"#),
            enc(&format!(
                r#"{{"tid":"{PERSONAL_ACCOUNT_TENANT}","oid":"o1","aud":"app","preferred_username":"sam@outlook.com"}}"#
            ))
        );
        let claims = read_id_token(&token).unwrap();
        assert!(claims.is_personal_account());
        assert_eq!(claims.preferred_username.as_deref(), Some("sam@outlook.com"));
        assert!(read_id_token("not-a-jwt").is_err());
        let no_oid = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256"}"#),
            enc(r#"{"tid":"t","oid":"","aud":"a"}"#)
        );
        assert!(read_id_token(&no_oid).is_err());
    }
}
