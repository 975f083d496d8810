//! A strict local stand-in for the Microsoft identity platform and the two Graph reads.
//!
//! It enforces what the real platform enforces and what our tests rely on: registered client
//! id, exact redirect URI, PKCE S256, client authentication, one-time and expiring codes,
//! codes bound to their tenant path. Besides the server-wide app it holds the registrations
//! of connections' own apps (tenants, secrets, certificates, redirect URIs, admin consent),
//! verifies certificate client assertions (signature, thumbprint, audience, lifetime, one use
//! per `jti`), issues client-credentials tokens and runs the admin-consent endpoint. Its pages
//! say plainly that they are not Microsoft.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// Tenant id of personal Microsoft accounts.
pub const PERSONAL_TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";
/// Tenant of the work account when the flow uses `common` or `organizations`.
pub const WORK_TENANT: &str = "2f6a3d1c-5b4e-4c8a-9f17-0a1b2c3d4e5f";
/// Another organization's tenant, where private apps of other organizations live.
pub const OTHER_TENANT: &str = "7c1e9b2a-3d4f-4a5b-8c6d-9e0f1a2b3c4d";
/// The tenants the stand-in knows (client credentials and admin consent need a real one).
pub const KNOWN_TENANTS: [&str; 2] = [WORK_TENANT, OTHER_TENANT];

/// A connection's own app as registered in Entra: where it lives, what authenticates it,
/// where it may return, and whether its tenants' administrators consented.
#[derive(Debug, Clone, Default)]
pub struct AppRegistration {
    pub client_id: String,
    /// The tenant GUID the app is registered in.
    pub home_tenant: String,
    /// Accepts accounts of other organizations (and is provisioned there by consent).
    pub multi_tenant: bool,
    /// Client secrets that work.
    pub secrets: Vec<String>,
    /// Client secrets past their end date (refused with AADSTS7000222).
    pub expired_secrets: Vec<String>,
    /// Certificates (PEM, public part) whose keys may sign assertions.
    pub certificates: Vec<String>,
    /// Certificates uploaded but past their end date (refused with AADSTS700027).
    pub expired_certificates: Vec<String>,
    pub redirect_uris: Vec<String>,
    /// Tenants whose administrator consented to the app's application permissions.
    pub consented_tenants: Vec<String>,
    /// External identities the app trusts (workload identity federation).
    pub federated_credentials: Vec<FederatedCredential>,
}

/// A federated identity credential of an app: tokens from `issuer` about `subject`, for
/// `audience`, are accepted as the app's client assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedCredential {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
}

/// An app-only access token the stand-in issued.
#[derive(Debug, Clone)]
struct IssuedAppToken {
    client_id: String,
    tenant: String,
    /// Whether it carries application permissions (an administrator consented to the app's);
    /// the server-wide app's carry none.
    roles: bool,
}

/// What the stand-in accepts as a registered app.
#[derive(Debug, Clone)]
pub struct Registration {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
}

/// A sign-in identity the consent page offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub kind: AccountKind,
    pub oid: String,
    pub tid: String,
    pub upn: String,
    pub display_name: String,
    pub given_name: String,
    pub surname: String,
}

/// Work/school (organization) or personal Microsoft account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    Work,
    Personal,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Work => "work",
            AccountKind::Personal => "personal",
        }
    }
}

/// A failure the token endpoint or Graph should simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and an HTML body.
    Status(u16),
    /// Wait this long before answering (longer than the client's timeout).
    Delay(Duration),
    /// Answer 200 with a body that is not JSON.
    Malformed,
}

/// Faults drawn at random for a fraction of token and Graph requests (load runs).
#[derive(Debug, Clone, PartialEq)]
pub struct RandomFaults {
    /// Share of requests that get a fault, 0.0–1.0.
    pub fraction: f64,
    /// Drawn from uniformly.
    pub faults: Vec<Fault>,
}

/// Calls the stand-in received, for assertions.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    pub authorize_tenants: Vec<String>,
    pub token_tenants: Vec<String>,
    pub token_requests: usize,
    pub graph_me: usize,
    pub graph_organization: usize,
    /// Token requests with `grant_type=refresh_token` that reached the grant checks.
    pub refreshes: usize,
    /// Every token request with `grant_type=refresh_token`, faulted ones included.
    pub refresh_requests: usize,
    /// How many times each authorization code was presented at the token endpoint,
    /// faulted requests included, requests refused for their client credential not (the
    /// code is not looked at before the client is authenticated).
    pub code_presentations: HashMap<String, usize>,
    /// Requests answered with a randomly drawn fault.
    pub random_faults: usize,
    /// Token requests of the server-wide app refused for its client secret.
    pub refused_client_secrets: usize,
}

#[derive(Debug)]
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    tenant: String,
    scope: String,
    account: Account,
    /// The `state` of the authorize request the code answered.
    state: String,
    issued: Instant,
    used: bool,
}

#[derive(Debug)]
struct RefreshGrant {
    client_id: String,
    tenant: String,
    scope: String,
    account: Account,
    state: String,
    used: bool,
}

/// What a valid code or refresh token grants.
struct Grant {
    account: Account,
    /// What the user consented to (a refresh token carries it on).
    scope: String,
    /// The scopes of the tokens issued now (the response's `scope`): what was asked for,
    /// within the consent, without `offline_access` (Entra never returns that one).
    granted: String,
    /// Issue a refresh token.
    rotate: bool,
    /// The authorize `state` the grant descends from.
    state: String,
}

#[derive(Debug, Default)]
struct Inner {
    codes: HashMap<String, Code>,
    refresh_tokens: HashMap<String, RefreshGrant>,
    /// Reject a refresh token presented a second time (Microsoft keeps old ones valid; this
    /// mode makes refresh races visible).
    strict_rotation: bool,
    /// Answer refreshes without a new refresh token.
    omit_rotated_refresh_token: bool,
    /// Reject every refresh token with `invalid_grant` and this AADSTS code.
    revoked: Option<u32>,
    access_tokens: HashMap<String, Account>,
    /// The authorize `state` each access token descends from.
    token_states: HashMap<String, String>,
    random_faults: Option<RandomFaults>,
    issued_secrets: Vec<String>,
    /// Secrets of the server-wide app accepted besides the registration's (an app holds
    /// more than one while a secret is rotated).
    also_accepted: Vec<String>,
    /// The server-wide app's federated identity credentials.
    federated: Vec<FederatedCredential>,
    /// Key sets of external issuers, as their discovery documents name them.
    issuer_keys: HashMap<String, serde_json::Value>,
    calls: Calls,
    token_fault: Option<Fault>,
    /// A fault for refresh-token requests only (a refresh outage; sign-ins still work).
    refresh_fault: Option<Fault>,
    me_fault: Option<Fault>,
    organization_fault: Option<Fault>,
    code_ttl: Option<Duration>,
    /// Make access tokens at least this long (large tokens: many groups or scopes).
    access_token_len: usize,
    /// Put this tenant in every id_token instead of the account's (a misbehaving or
    /// misconfigured tenant, for the client's `tid` check).
    id_token_tenant: Option<String>,
    /// Apps whose delegated permissions need an administrator's consent per tenant.
    admin_consent_required: std::collections::HashSet<String>,
    /// Where authorize sends the browser first (another origin, as Entra hands personal
    /// accounts to login.live.com or a domain to its federated identity provider), before its
    /// sign-in page at `/login`.
    authorize_hop: Option<String>,
    /// Administrators' consents: (client id, tenant).
    consents: std::collections::HashSet<(String, String)>,
}

#[derive(Debug)]
struct Shared {
    registration: Mutex<Registration>,
    inner: Mutex<Inner>,
    apps: Mutex<HashMap<String, AppRegistration>>,
    /// `jti`s of the client assertions already presented.
    assertion_ids: Mutex<std::collections::HashSet<String>>,
    /// App-only access tokens.
    app_tokens: Mutex<HashMap<String, IssuedAppToken>>,
    /// Where this stand-in is reached (the audience of assertions).
    base: String,
    /// The Graph resource of this cloud, whose `.default` scope is the only one known:
    /// `base` unless a national cloud's Graph host is set (`Standin::set_graph_resource`).
    graph_resource: Mutex<String>,
}

impl Shared {
    /// `<graph resource>/.default`, the one `.default` scope this cloud knows.
    fn graph_default_scope(&self) -> String {
        let resource =
            self.graph_resource.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        format!("{}/.default", resource.trim_end_matches('/'))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn registration(&self) -> Registration {
        self.registration.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn app(&self, client_id: &str) -> Option<AppRegistration> {
        self.apps.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(client_id).cloned()
    }

    fn with_app(&self, client_id: &str, change: impl FnOnce(&mut AppRegistration)) {
        let mut apps = self.apps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(app) = apps.get_mut(client_id) {
            change(app);
        }
    }
}

/// A running stand-in. Dropping it does not stop the server; it lives as long as its runtime.
#[derive(Debug, Clone)]
pub struct Standin {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

/// How long codes live at the real platform.
pub const CODE_TTL: Duration = Duration::from_secs(600);

impl Standin {
    /// Serves on `listener` in the background.
    pub fn spawn(listener: TcpListener, registration: Registration) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            registration: Mutex::new(registration),
            inner: Mutex::default(),
            apps: Mutex::default(),
            assertion_ids: Mutex::default(),
            app_tokens: Mutex::default(),
            base: format!("http://{addr}"),
            graph_resource: Mutex::new(format!("http://{addr}")),
        });
        let app = Router::new()
            .route("/", get(index))
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize_page).post(authorize_decision))
            .route("/{tenant}/oauth2/v2.0/login", get(login_page).post(authorize_decision))
            .route("/{tenant}/oauth2/v2.0/token", axum::routing::post(token))
            .route(
                "/{tenant}/v2.0/adminconsent",
                get(admin_consent_page).post(admin_consent_decision),
            )
            .route("/v1.0/me", get(me))
            .route("/v1.0/organization", get(organization))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    /// From now on, authorize sends the browser through another origin (served on
    /// `listener`: `GET /hop?next=…` redirects back) before its sign-in page, as Entra does
    /// for personal accounts (login.live.com) or a federated domain.
    pub fn pass_authorize_through(&self, listener: TcpListener) -> std::io::Result<String> {
        let hop = format!("http://{}", listener.local_addr()?);
        let base = self.shared.base.clone();
        let app = Router::new().route(
            "/hop",
            get(move |Query(q): Query<HashMap<String, String>>| async move {
                match q.get("next") {
                    Some(next) if next.starts_with(&format!("{base}/")) => {
                        (StatusCode::FOUND, [(header::LOCATION, next.clone())]).into_response()
                    }
                    _ => (StatusCode::BAD_REQUEST, "stand-in hop: no next").into_response(),
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.shared.inner().authorize_hop = Some(hop.clone());
        Ok(hop)
    }

    /// Serves Graph as the cloud whose Graph host is `resource` (a national cloud's, say
    /// `http://localhost:PORT` of this same server): its `.default` scope is then the only
    /// one known, and the global cloud's is refused as a resource this cloud has not.
    pub fn set_graph_resource(&self, resource: &str) {
        *self.shared.graph_resource.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            resource.to_owned();
    }

    /// `http://127.0.0.1:PORT`, usable as both authority host and Graph URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the client secret the stand-in accepts (simulates rotation in Entra ID); any
    /// other secret stops working.
    pub fn rotate_secret(&self, secret: &str) {
        if let Ok(mut r) = self.shared.registration.lock() {
            r.client_secret = secret.to_owned();
        }
        self.shared.inner().also_accepted.clear();
    }

    /// Asks this stand-in's token endpoint for an app token as `client_id`, authenticated by
    /// `assertion`; the answer's body.
    pub async fn client_credentials_with_assertion(
        &self,
        client_id: &str,
        assertion: &str,
    ) -> String {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
            ("scope", "https://graph.microsoft.com/.default"),
        ];
        let url = format!("{}/organizations/oauth2/v2.0/token", self.url());
        match reqwest::Client::new().post(url).form(&form).send().await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        }
    }

    /// Trusts an external identity as the server-wide app's credential.
    pub fn add_federated_credential(&self, credential: FederatedCredential) {
        self.shared.inner().federated.push(credential);
    }

    /// Accepts `secret` too, besides the current one (a second secret added in Entra ID).
    pub fn accept_secret_too(&self, secret: &str) {
        self.shared.inner().also_accepted.push(secret.to_owned());
    }

    /// Registers (or replaces) a connection's own app.
    pub fn register_app(&self, app: AppRegistration) {
        let mut apps = self.shared.apps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        apps.insert(app.client_id.clone(), app);
    }

    /// Replaces an app's working secrets (a rotation in Entra); the old ones stop working.
    pub fn set_app_secrets(&self, client_id: &str, secrets: &[&str]) {
        self.shared.with_app(client_id, |app| {
            app.secrets = secrets.iter().map(|s| (*s).to_owned()).collect();
        });
    }

    /// Issues id_tokens naming `tenant` instead of the account's tenant.
    pub fn set_id_token_tenant(&self, tenant: Option<&str>) {
        self.shared.inner().id_token_tenant = tenant.map(str::to_owned);
    }

    /// Makes users' sign-ins to `client_id` need an administrator's consent in their tenant
    /// (AADSTS65001 until it is given).
    pub fn require_admin_consent(&self, client_id: &str) {
        self.shared.inner().admin_consent_required.insert(client_id.to_owned());
    }

    /// Deletes an app registration (its tokens and codes then stop working).
    pub fn remove_app(&self, client_id: &str) {
        if let Ok(mut apps) = self.shared.apps.lock() {
            apps.remove(client_id);
        }
    }

    /// Records an administrator's consent for `client_id` in `tenant`.
    pub fn grant_admin_consent(&self, client_id: &str, tenant: &str) {
        self.shared.with_app(client_id, |app| app.consented_tenants.push(tenant.to_owned()));
    }

    /// True when `tenant`'s administrator consented to `client_id`.
    pub fn has_admin_consent(&self, client_id: &str, tenant: &str) -> bool {
        self.shared.app(client_id).is_some_and(|a| a.consented_tenants.iter().any(|t| t == tenant))
    }

    /// App-only tokens issued so far.
    pub fn app_tokens_issued(&self) -> usize {
        self.shared.app_tokens.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// App-only tokens issued so far to `client_id` in `tenant`.
    pub fn app_tokens_issued_to(&self, client_id: &str, tenant: &str) -> usize {
        self.shared
            .app_tokens
            .lock()
            .map(|t| t.values().filter(|a| a.client_id == client_id && a.tenant == tenant).count())
            .unwrap_or(0)
    }

    pub fn set_token_fault(&self, fault: Option<Fault>) {
        self.shared.inner().token_fault = fault;
    }

    /// Answers every refresh-token request with `fault` (sign-ins are unaffected).
    pub fn set_refresh_fault(&self, fault: Option<Fault>) {
        self.shared.inner().refresh_fault = fault;
    }

    pub fn set_me_fault(&self, fault: Option<Fault>) {
        self.shared.inner().me_fault = fault;
    }

    pub fn set_organization_fault(&self, fault: Option<Fault>) {
        self.shared.inner().organization_fault = fault;
    }

    /// Answers a random fraction of token and Graph requests with a fault (where no fixed
    /// fault is set).
    pub fn set_random_faults(&self, faults: Option<RandomFaults>) {
        self.shared.inner().random_faults = faults;
    }

    /// Makes every code issued from now on expire after `ttl`.
    pub fn set_code_ttl(&self, ttl: Duration) {
        self.shared.inner().code_ttl = Some(ttl);
    }

    /// Issues access tokens of at least `len` characters from now on.
    pub fn set_access_token_len(&self, len: usize) {
        self.shared.inner().access_token_len = len;
    }

    pub fn set_strict_rotation(&self, on: bool) {
        self.shared.inner().strict_rotation = on;
    }

    pub fn set_omit_rotated_refresh_token(&self, on: bool) {
        self.shared.inner().omit_rotated_refresh_token = on;
    }

    /// Makes every refresh token invalid, as after a revocation (50173) or 90 days of
    /// inactivity (700082).
    pub fn revoke_refresh_tokens(&self, aadsts: u32) {
        self.shared.inner().revoked = Some(aadsts);
    }

    /// True if `refresh_token` was issued and not yet presented.
    pub fn refresh_token_is_fresh(&self, refresh_token: &str) -> bool {
        self.shared.inner().refresh_tokens.get(refresh_token).is_some_and(|g| !g.used)
    }

    pub fn calls(&self) -> Calls {
        self.shared.inner().calls.clone()
    }

    /// Every code, access token and refresh token the stand-in has issued.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.shared.inner().issued_secrets.clone()
    }

    /// The `state` of the sign-in an access token descends from (through its code and any
    /// refreshes), to check that tokens reached the connection that asked for them.
    pub fn state_for(&self, access_token: &str) -> Option<String> {
        self.shared.inner().token_states.get(access_token).cloned()
    }

    /// The account an access token was issued to.
    pub fn account_for(&self, access_token: &str) -> Option<Account> {
        self.shared.inner().access_tokens.get(access_token).cloned()
    }
}

/// The accounts offered for a tenant path, as the real platform would allow them.
pub fn accounts_for(tenant: &str) -> Vec<Account> {
    let work_tid = match tenant {
        "common" | "organizations" | "consumers" => WORK_TENANT.to_owned(),
        other => other.to_owned(),
    };
    let work = Account {
        kind: AccountKind::Work,
        oid: "6f1d2c3b-4a59-4e68-8f70-91a2b3c4d5e6".into(),
        tid: work_tid,
        upn: "adele.vance@contoso.example".into(),
        display_name: "Adele Vance".into(),
        given_name: "Adele".into(),
        surname: "Vance".into(),
    };
    let personal = Account {
        kind: AccountKind::Personal,
        oid: "00000000-0000-0000-66f3-3332eca7ea81".into(),
        tid: PERSONAL_TENANT.into(),
        upn: "sam.taylor@outlook.example".into(),
        display_name: "Sam Taylor".into(),
        given_name: "Sam".into(),
        surname: "Taylor".into(),
    };
    match tenant {
        "common" => vec![work, personal],
        "consumers" => vec![personal],
        _ => vec![work],
    }
}

fn random(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // The stand-in is test code; a failing OS generator should fail loudly.
    getrandom::fill(&mut bytes).unwrap_or_else(|e| panic!("getrandom: {e}"));
    URL_SAFE_NO_PAD.encode(bytes)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

async fn index() -> Html<&'static str> {
    Html("<h1>Local stand-in for the Microsoft identity platform</h1><p>This is not Microsoft.</p>")
}

fn stand_in_error(status: StatusCode, aadsts: &str, message: &str) -> Response {
    let body = format!(
        "<!doctype html><title>Stand-in error</title><p><strong>Local stand-in — not Microsoft.</strong></p>\
         <h1>Sign-in failed</h1><p id=\"error\">{aadsts}: {}</p>",
        escape(message)
    );
    (status, Html(body)).into_response()
}

fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let mut url = match url::Url::parse(redirect_uri) {
        Ok(u) => u,
        Err(_) => {
            return stand_in_error(StatusCode::BAD_REQUEST, "AADSTS50011", "bad redirect URI");
        }
    };
    url.query_pairs_mut().extend_pairs(params);
    Redirect::to(url.as_str()).into_response()
}

/// Whether the server-wide app lists `redirect_uri`; an error page when `client_id` is not
/// that app either.
fn redirect_registered(
    registration: &Registration,
    client_id: &str,
    redirect_uri: &str,
) -> Result<bool, Box<Response>> {
    if client_id != registration.client_id {
        return Err(Box::new(stand_in_error(
            StatusCode::BAD_REQUEST,
            "AADSTS700016",
            "Application with the given identifier was not found in the directory.",
        )));
    }
    Ok(redirect_uri == registration.redirect_uri)
}

/// True for the aliases that name no one tenant.
fn is_alias(tenant: &str) -> bool {
    matches!(tenant, "common" | "organizations" | "consumers")
}

/// Checks that `tenant` may use the own app `app`: the app must live there, or be
/// multi-tenant; a single-tenant app cannot use the aliases.
fn app_tenant_refusal(app: &AppRegistration, tenant: &str) -> Option<(u32, &'static str)> {
    if app.multi_tenant || tenant == app.home_tenant {
        return None;
    }
    if is_alias(tenant) {
        return Some((50194, "Application is not configured as a multi-tenant application."));
    }
    Some((700_016, "Application with the given identifier was not found in the directory."))
}

/// Checks an authorize request the way the platform does before showing any page.
fn check_authorize(
    shared: &Shared,
    tenant: &str,
    params: &HashMap<String, String>,
) -> Result<(), Box<Response>> {
    let registration = shared.registration();
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let redirect_ok = match shared.app(get("client_id")) {
        Some(app) => {
            if let Some((code, message)) = app_tenant_refusal(&app, tenant) {
                return Err(Box::new(stand_in_error(
                    StatusCode::BAD_REQUEST,
                    &format!("AADSTS{code}"),
                    message,
                )));
            }
            app.redirect_uris.iter().any(|u| u == get("redirect_uri"))
        }
        None => redirect_registered(&registration, get("client_id"), get("redirect_uri"))?,
    };
    if !redirect_ok {
        // The platform never redirects to an unregistered URI.
        return Err(Box::new(stand_in_error(
            StatusCode::BAD_REQUEST,
            "AADSTS50011",
            "The redirect URI specified in the request does not match the redirect URIs configured for the application.",
        )));
    }
    let problem = if get("response_type") != "code" {
        Some("AADSTS900144: response_type must be code")
    } else if get("code_challenge").len() < 43 || get("code_challenge_method") != "S256" {
        Some("AADSTS9002325: Proof Key for Code Exchange with S256 is required")
    } else if !get("scope").split(' ').any(|s| s == "openid") {
        Some("AADSTS900144: scope must include openid")
    } else if get("state").is_empty() {
        Some("AADSTS900144: state is required by this stand-in")
    } else {
        None
    };
    match problem {
        Some(p) => Err(Box::new(redirect_with(
            get("redirect_uri"),
            &[("error", "invalid_request"), ("error_description", p), ("state", get("state"))],
        ))),
        None => Ok(()),
    }
}

async fn authorize_page(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    shared.inner().calls.authorize_tenants.push(tenant.clone());
    if let Err(r) = check_authorize(&shared, &tenant, &params) {
        return *r;
    }
    let hop = shared.inner().authorize_hop.clone();
    if let Some(hop) = hop {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish();
        let next = format!("{}/{tenant}/oauth2/v2.0/login?{query}", shared.base);
        let location = url::Url::parse_with_params(&format!("{hop}/hop"), [("next", next)])
            .map(String::from)
            .unwrap_or_default();
        return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
    }
    consent_page(&tenant, &params)
}

/// The sign-in page after the hop of [`Standin::pass_authorize_through`].
async fn login_page(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_authorize(&shared, &tenant, &params) {
        return *r;
    }
    consent_page(&tenant, &params)
}

/// The account picker and consent of an authorize request already checked.
fn consent_page(tenant: &str, params: &HashMap<String, String>) -> Response {
    let hidden: String = params
        .iter()
        .map(|(k, v)| {
            format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(k), escape(v))
        })
        .collect();
    let buttons: String = accounts_for(tenant)
        .iter()
        .map(|a| {
            format!(
                "<button type=\"submit\" name=\"account\" value=\"{}\" id=\"accept-{}\">Accept as {} ({}, {} account)</button><br>",
                a.kind.as_str(),
                a.kind.as_str(),
                escape(&a.display_name),
                escape(&a.upn),
                a.kind.as_str()
            )
        })
        .collect();
    let scopes = escape(params.get("scope").map(String::as_str).unwrap_or(""));
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Stand-in sign-in (not Microsoft)</title></head><body>\
         <p style=\"background:#fde68a;padding:8px\"><strong>Local stand-in for the Microsoft identity platform. This is not Microsoft;\
         no real account is used.</strong></p>\
         <h1>Let this app access your data?</h1><p>Tenant: <code>{}</code></p><p>Permissions: <code>{scopes}</code></p>\
         <form method=\"post\">{hidden}{buttons}\
         <button type=\"submit\" name=\"account\" value=\"cancel\" id=\"cancel\">Cancel</button></form></body></html>",
        escape(tenant)
    ))
    .into_response()
}

async fn authorize_decision(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_authorize(&shared, &tenant, &params) {
        return *r;
    }
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let state = get("state");
    let choice = get("account");
    if choice == "cancel" {
        return redirect_with(
            get("redirect_uri"),
            &[
                ("error", "access_denied"),
                ("error_description", "AADSTS65004: User declined to consent to access the app."),
                ("state", state),
            ],
        );
    }
    let Some(account) = accounts_for(&tenant).into_iter().find(|a| a.kind.as_str() == choice)
    else {
        return stand_in_error(
            StatusCode::BAD_REQUEST,
            "AADSTS50020",
            "This account cannot sign in to this tenant.",
        );
    };
    let client_id = get("client_id");
    let consented = |inner: &Inner| {
        inner.consents.contains(&(client_id.to_owned(), account.tid.clone()))
            || shared.app(client_id).is_some_and(|a| a.consented_tenants.contains(&account.tid))
    };
    {
        let inner = shared.inner();
        if inner.admin_consent_required.contains(client_id) && !consented(&inner) {
            drop(inner);
            return redirect_with(
                get("redirect_uri"),
                &[
                    ("error", "consent_required"),
                    (
                        "error_description",
                        "AADSTS65001: The user or administrator has not consented to use the application. An administrator of the organization must grant consent.",
                    ),
                    ("state", state),
                ],
            );
        }
    }
    let code = format!("M.C5_{}", random(96));
    let mut inner = shared.inner();
    inner.issued_secrets.push(code.clone());
    inner.codes.insert(
        code.clone(),
        Code {
            client_id: get("client_id").to_owned(),
            redirect_uri: get("redirect_uri").to_owned(),
            challenge: get("code_challenge").to_owned(),
            tenant,
            scope: get("scope").to_owned(),
            account,
            state: state.to_owned(),
            issued: Instant::now(),
            used: false,
        },
    );
    drop(inner);
    redirect_with(get("redirect_uri"), &[("code", &code), ("state", state)])
}

/// A refused token request, boxed to keep `Result`s small.
/// The token endpoint's answer for a client id no registration has.
fn app_not_found() -> Box<Response> {
    refuse(StatusCode::BAD_REQUEST, "unauthorized_client", 700_016, "Application not found.")
}

fn refuse(status: StatusCode, error: &str, code: u32, description: &str) -> Box<Response> {
    Box::new(token_error(status, error, code, description))
}

fn token_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description} Trace ID: 0000 Correlation ID: 0000"),
        "error_codes": [code],
        "timestamp": "2026-01-01 00:00:00Z",
        "trace_id": "00000000-0000-0000-0000-000000000000",
        "correlation_id": "00000000-0000-0000-0000-000000000001",
    });
    (status, Json(body)).into_response()
}

/// A fault for this request, if the random plan draws one.
fn draw_fault(inner: &mut Inner) -> Option<Fault> {
    let plan = inner.random_faults.as_ref()?;
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).ok()?;
    let draw = u64::from_le_bytes(bytes);
    if (draw >> 11) as f64 / (1u64 << 53) as f64 >= plan.fraction || plan.faults.is_empty() {
        return None;
    }
    let fault = plan.faults[(draw % plan.faults.len() as u64) as usize].clone();
    inner.calls.random_faults += 1;
    Some(fault)
}

async fn apply_fault(fault: Option<Fault>) -> Option<Response> {
    match fault? {
        Fault::Status(status) => Some(
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                Html("<html><body>Service unavailable (stand-in fault)</body></html>"),
            )
                .into_response(),
        ),
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::Malformed => Some(
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"access_token\": ")
                .into_response(),
        ),
    }
}

/// Client id and secret from HTTP Basic or the form body (never both).
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, String)> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "));
    match (basic, form.get("client_secret")) {
        (Some(_), Some(_)) => None,
        (Some(b), None) => {
            let decoded = String::from_utf8(STANDARD.decode(b).ok()?).ok()?;
            let (id, secret) = decoded.split_once(':')?;
            let dec = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((dec(id)?, dec(secret)?))
        }
        (None, Some(secret)) => Some((form.get("client_id")?.clone(), secret.clone())),
        (None, None) => None,
    }
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let fault = {
        let mut inner = shared.inner();
        inner.calls.token_requests += 1;
        inner.calls.token_tenants.push(tenant.clone());
        if form.get("grant_type").is_some_and(|g| g == "authorization_code") {
            let code = form.get("code").cloned().unwrap_or_default();
            *inner.calls.code_presentations.entry(code).or_default() += 1;
        }
        let refresh = form.get("grant_type").is_some_and(|g| g == "refresh_token");
        if refresh {
            inner.calls.refresh_requests += 1;
        }
        let fixed = inner
            .token_fault
            .clone()
            .or_else(|| if refresh { inner.refresh_fault.clone() } else { None });
        fixed.or_else(|| draw_fault(&mut inner))
    };
    if let Some(response) = apply_fault(fault).await {
        return response;
    }
    if let Some(assertion) = form.get("client_assertion") {
        fetch_issuer_keys(&shared, assertion).await;
    }
    let client_id = match authenticate(&shared, &tenant, &headers, &form) {
        Ok(client_id) => client_id,
        Err(response) => {
            // The client is authenticated before the code is looked at (as Entra does): a
            // request refused for its credential did not present the code, and the code
            // stays redeemable by a retry with the right credential.
            if let Some(code) = form.get("code")
                && form.get("grant_type").is_some_and(|g| g == "authorization_code")
                && let Some(n) = shared.inner().calls.code_presentations.get_mut(code)
            {
                *n = n.saturating_sub(1);
            }
            return *response;
        }
    };
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let grant = match get("grant_type") {
        "authorization_code" => redeem_code(&shared, &client_id, &tenant, &form),
        "refresh_token" => redeem_refresh_token(&shared, &client_id, &tenant, &form),
        "client_credentials" => {
            return client_credentials_grant(&shared, &client_id, &tenant, &form);
        }
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "Unsupported grant type.",
        )),
    };
    match grant {
        Ok(grant) => issue_tokens(&shared, &client_id, &tenant, grant),
        Err(response) => *response,
    }
}

/// Authenticates the client of a token request (a secret, or a certificate's signed
/// assertion) and checks it may use `tenant`; returns its client id.
fn authenticate(
    shared: &Shared,
    tenant: &str,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<String, Box<Response>> {
    let invalid_client = |code: u32, message: &str| {
        refuse(StatusCode::UNAUTHORIZED, "invalid_client", code, message)
    };
    let assertion = form.get("client_assertion");
    let client_id = if let Some(assertion) = assertion {
        if form.get("client_assertion_type").map(String::as_str) != Some(ASSERTION_TYPE)
            || form.contains_key("client_secret")
            || headers.contains_key(header::AUTHORIZATION)
        {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                90014,
                "Give exactly one client credential, with client_assertion_type jwt-bearer.",
            ));
        }
        let client_id = match form.get("client_id") {
            Some(claimed) if is_federated(assertion) => {
                verify_federated_assertion(shared, claimed, assertion)?
            }
            _ => verify_assertion(shared, tenant, assertion)?,
        };
        if form.get("client_id").is_some_and(|id| *id != client_id) {
            return Err(invalid_client(
                700_021,
                "client_id does not match the assertion's subject.",
            ));
        }
        client_id
    } else {
        let registration = shared.registration();
        let Some((client_id, secret)) = client_credentials(headers, form) else {
            return Err(invalid_client(7_000_215, "Invalid client secret provided."));
        };
        match shared.app(&client_id) {
            Some(app) => {
                if app.expired_secrets.contains(&secret) {
                    return Err(invalid_client(
                        7_000_222,
                        "The provided client secret keys are expired.",
                    ));
                }
                if !app.secrets.contains(&secret) {
                    return Err(invalid_client(7_000_215, "Invalid client secret provided."));
                }
            }
            None if client_id == registration.client_id => {
                let mut inner = shared.inner();
                if secret != registration.client_secret && !inner.also_accepted.contains(&secret) {
                    inner.calls.refused_client_secrets += 1;
                    return Err(invalid_client(7_000_215, "Invalid client secret provided."));
                }
            }
            None => {
                return Err(app_not_found());
            }
        }
        client_id
    };
    if shared.app(&client_id).is_some() && !is_alias(tenant) && !KNOWN_TENANTS.contains(&tenant) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        ));
    }
    if let Some(app) = shared.app(&client_id)
        && let Some((code, message)) = app_tenant_refusal(&app, tenant)
    {
        let error = if code == 700_016 { "unauthorized_client" } else { "invalid_request" };
        return Err(refuse(StatusCode::BAD_REQUEST, error, code, message));
    }
    Ok(client_id)
}

/// The `client_assertion_type` of a signed JWT.
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Base64url SHA-256 of a PEM certificate's DER, and its RSA public key as PKCS#1 DER.
fn certificate_key(pem: &str) -> Option<(String, Vec<u8>)> {
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    use x509_cert::der::{Decode, Encode};
    // PEM to DER, then DER: der's PEM reader does not end on a truncated body.
    let (_, der) = x509_cert::der::pem::decode_vec(pem.trim().as_bytes()).ok()?;
    let cert = x509_cert::Certificate::from_der(&der).ok()?;
    let der = cert.to_der().ok()?;
    let spki = cert.tbs_certificate.subject_public_key_info.to_der().ok()?;
    let public = rsa::RsaPublicKey::from_public_key_der(&spki).ok()?;
    let pkcs1 = public.to_pkcs1_der().ok()?;
    Some((URL_SAFE_NO_PAD.encode(Sha256::digest(&der)), pkcs1.as_bytes().to_vec()))
}

/// The unverified claims of a JWT (to choose how to verify it).
fn unverified_claims(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// An assertion from an external issuer (workload identity federation), not one the app
/// signed with its own certificate: its issuer is a URL, not a client id.
fn is_federated(assertion: &str) -> bool {
    unverified_claims(assertion)
        .and_then(|c| c.get("iss").and_then(|i| i.as_str()).map(str::to_owned))
        .is_some_and(|iss| iss.starts_with("https://") || iss.starts_with("http://"))
}

/// Fetches (once) the key set of a federated assertion's issuer through its OIDC discovery
/// document, as Entra does before verifying it.
async fn fetch_issuer_keys(shared: &Shared, assertion: &str) {
    if !is_federated(assertion) {
        return;
    }
    let Some(issuer) = unverified_claims(assertion)
        .and_then(|c| c.get("iss").and_then(|i| i.as_str()).map(str::to_owned))
    else {
        return;
    };
    if shared.inner().issuer_keys.contains_key(&issuer) {
        return;
    }
    let discovery = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let Ok(document) = reqwest::get(&discovery).await else { return };
    let Ok(document) = document.json::<serde_json::Value>().await else { return };
    if document.get("issuer").and_then(|i| i.as_str()) != Some(issuer.as_str()) {
        return;
    }
    let Some(jwks_uri) = document.get("jwks_uri").and_then(|u| u.as_str()) else { return };
    let Ok(keys) = reqwest::get(jwks_uri).await else { return };
    if let Ok(keys) = keys.json::<serde_json::Value>().await {
        shared.inner().issuer_keys.insert(issuer, keys);
    }
}

/// Verifies a federated assertion for `client_id` as Entra does: a federated identity
/// credential of the app must name its issuer, subject and audience, and the issuer's
/// published key must have signed it while it is valid.
fn verify_federated_assertion(
    shared: &Shared,
    client_id: &str,
    assertion: &str,
) -> Result<String, Box<Response>> {
    let refuse_with = |code: u32, message: &str| {
        refuse(StatusCode::UNAUTHORIZED, "invalid_client", code, message)
    };
    let credentials = if client_id == shared.registration().client_id {
        shared.inner().federated.clone()
    } else {
        match shared.app(client_id) {
            Some(app) => app.federated_credentials,
            None => {
                return Err(app_not_found());
            }
        }
    };
    let claims = unverified_claims(assertion).unwrap_or_default();
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let (iss, sub) = (text("iss"), text("sub"));
    let audiences: Vec<String> = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.clone()],
        Some(serde_json::Value::Array(list)) => {
            list.iter().filter_map(|a| a.as_str().map(str::to_owned)).collect()
        }
        _ => Vec::new(),
    };
    let by_issuer: Vec<&FederatedCredential> =
        credentials.iter().filter(|c| c.issuer == iss).collect();
    if by_issuer.is_empty() {
        return Err(refuse_with(
            700_211,
            "No matching federated identity record found for presented assertion issuer.",
        ));
    }
    let Some(credential) = by_issuer.iter().find(|c| c.subject == sub) else {
        return Err(refuse_with(
            700_213,
            "No matching federated identity record found for presented assertion subject.",
        ));
    };
    if !audiences.contains(&credential.audience) {
        return Err(refuse_with(
            700_212,
            "No matching federated identity record found for presented assertion audience.",
        ));
    }
    let signature = || refuse_with(700_027, "Client assertion failed signature validation.");
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| signature())?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err(signature());
    }
    let keys = shared.inner().issuer_keys.get(&iss).cloned().unwrap_or_default();
    let key = keys
        .get("keys")
        .and_then(|k| k.as_array())
        .into_iter()
        .flatten()
        .find(|k| k.get("kid").and_then(|v| v.as_str()) == header.kid.as_deref())
        .and_then(|k| {
            let part = |name: &str| k.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            jsonwebtoken::DecodingKey::from_rsa_components(&part("n")?, &part("e")?).ok()
        })
        .ok_or_else(signature)?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[credential.audience.as_str()]);
    validation.set_issuer(&[credential.issuer.as_str()]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.leeway = 0;
    jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation).map_err(|e| match e
        .kind()
    {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature
        | jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
            refuse_with(700_024, "Client assertion is not within its valid time range.")
        }
        _ => signature(),
    })?;
    Ok(client_id.to_owned())
}

/// Verifies a certificate client assertion as Entra does; returns the client id it proves.
fn verify_assertion(
    shared: &Shared,
    tenant: &str,
    assertion: &str,
) -> Result<String, Box<Response>> {
    let signature = |reason: &str| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_027,
            &format!("Client assertion failed signature validation. [Reason - {reason}]"),
        )
    };
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| signature("The assertion is not a JWT."))?;
    if !matches!(header.alg, jsonwebtoken::Algorithm::PS256 | jsonwebtoken::Algorithm::RS256) {
        return Err(signature("The algorithm is not accepted."));
    }
    let thumbprint = header.x5t_s256.ok_or_else(|| signature("The key was not found."))?;
    let apps: Vec<AppRegistration> =
        shared.apps.lock().map(|apps| apps.values().cloned().collect()).unwrap_or_default();
    let mut found = None;
    for app in &apps {
        for (pem, expired) in app
            .certificates
            .iter()
            .map(|c| (c, false))
            .chain(app.expired_certificates.iter().map(|c| (c, true)))
        {
            if let Some((print, key)) = certificate_key(pem)
                && print == thumbprint
            {
                found = Some((app.client_id.clone(), key, expired));
            }
        }
    }
    let (client_id, key, expired) = found.ok_or_else(|| signature("The key was not found."))?;
    if expired {
        return Err(signature("The key used is expired."));
    }
    let audience = format!("{}/{tenant}/oauth2/v2.0/token", shared.base);
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[audience.as_str()]);
    validation.set_issuer(&[client_id.as_str()]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    validation.validate_nbf = true;
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        assertion,
        &jsonwebtoken::DecodingKey::from_rsa_der(&key),
        &validation,
    )
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature
        | jsonwebtoken::errors::ErrorKind::ImmatureSignature => refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_024,
            "Client assertion is not within its valid time range.",
        ),
        jsonwebtoken::errors::ErrorKind::InvalidAudience => refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_027,
            "Client assertion audience is not this token endpoint.",
        ),
        _ => signature("The signature or claims are invalid."),
    })?
    .claims;
    let number = |k: &str| claims.get(k).and_then(serde_json::Value::as_i64).unwrap_or(0);
    if claims.get("sub").and_then(serde_json::Value::as_str) != Some(client_id.as_str())
        || number("exp") - number("nbf") > 600
    {
        return Err(signature("The subject or lifetime is invalid."));
    }
    let jti = claims.get("jti").and_then(serde_json::Value::as_str).unwrap_or("").to_owned();
    let fresh = !jti.is_empty()
        && shared.assertion_ids.lock().map(|mut ids| ids.insert(jti)).unwrap_or(false);
    if !fresh {
        return Err(signature("The assertion has no jti or was used before."));
    }
    Ok(client_id)
}

/// The client credentials grant of a daemon app: a real tenant, the `.default` scope of
/// this Graph, and an administrator's consent in that tenant.
fn client_credentials_grant(
    shared: &Shared,
    client_id: &str,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Response {
    let app = shared.app(client_id);
    if !KNOWN_TENANTS.contains(&tenant) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let scope = form.get("scope").map(String::as_str).unwrap_or("");
    if scope != shared.graph_default_scope() {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1_002_012,
            "The provided value for scope is not valid; client credentials need <resource>/.default.",
        );
    }
    // As Entra: the server-wide (multi-tenant) app has a service principal wherever its
    // users consented, and is given a token there, with no application permissions.
    let roles = match &app {
        Some(app) => {
            if !app.consented_tenants.iter().any(|t| t == tenant) {
                return token_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7_000_229,
                    "The client application is missing service principal in the tenant: an administrator must consent.",
                );
            }
            true
        }
        None => false,
    };
    let access_token = format!("eyJ0eXAi.stand-in-app.{}", random(48));
    shared.inner().issued_secrets.push(access_token.clone());
    if let Ok(mut tokens) = shared.app_tokens.lock() {
        tokens.insert(
            access_token.clone(),
            IssuedAppToken { client_id: client_id.to_owned(), tenant: tenant.to_owned(), roles },
        );
    }
    Json(json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": access_token,
    }))
    .into_response()
}

/// The admin-consent page: an administrator of `tenant` approves an app's permissions.
async fn admin_consent_page(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_admin_consent(&shared, &tenant, &params) {
        return *r;
    }
    let hidden: String = params
        .iter()
        .map(|(k, v)| {
            format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(k), escape(v))
        })
        .collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Stand-in admin consent (not Microsoft)</title></head><body>\
         <p style=\"background:#fde68a;padding:8px\"><strong>Local stand-in for the Microsoft identity platform. This is not Microsoft.</strong></p>\
         <h1>Grant admin consent for your organization?</h1><p>Tenant: <code>{}</code></p><p>App: <code>{}</code></p>\
         <form method=\"post\">{hidden}<button type=\"submit\" name=\"decision\" value=\"accept\" id=\"accept-admin\">Accept for the organization</button>\
         <button type=\"submit\" name=\"decision\" value=\"cancel\" id=\"cancel\">Cancel</button></form></body></html>",
        escape(&tenant),
        escape(params.get("client_id").map(String::as_str).unwrap_or(""))
    ))
    .into_response()
}

async fn admin_consent_decision(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_admin_consent(&shared, &tenant, &params) {
        return *r;
    }
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if get("decision") != "accept" {
        return redirect_with(
            get("redirect_uri"),
            &[
                ("error", "access_denied"),
                ("error_description", "AADSTS65004: The administrator declined to consent."),
                ("state", get("state")),
            ],
        );
    }
    // `organizations` is the signed-in administrator's own tenant.
    let tid = if tenant == "organizations" { WORK_TENANT.to_owned() } else { tenant };
    shared.with_app(get("client_id"), |app| app.consented_tenants.push(tid.clone()));
    shared.inner().consents.insert((get("client_id").to_owned(), tid.clone()));
    redirect_with(
        get("redirect_uri"),
        &[
            ("admin_consent", "True"),
            ("tenant", &tid),
            ("scope", get("scope")),
            ("state", get("state")),
        ],
    )
}

/// What the admin-consent endpoint checks before showing anything.
fn check_admin_consent(
    shared: &Shared,
    tenant: &str,
    params: &HashMap<String, String>,
) -> Result<(), Box<Response>> {
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if tenant != "organizations" && !KNOWN_TENANTS.contains(&tenant) {
        return Err(Box::new(stand_in_error(
            StatusCode::BAD_REQUEST,
            "AADSTS90002",
            "Admin consent needs a known tenant (or organizations), never common.",
        )));
    }
    let registration = shared.registration();
    let redirect_ok = match shared.app(get("client_id")) {
        Some(app) => app.redirect_uris.iter().any(|u| u == get("redirect_uri")),
        None => redirect_registered(&registration, get("client_id"), get("redirect_uri"))?,
    };
    if !redirect_ok {
        return Err(Box::new(stand_in_error(
            StatusCode::BAD_REQUEST,
            "AADSTS50011",
            "The redirect URI specified in the request does not match the redirect URIs configured for the application.",
        )));
    }
    if !get("scope").split(' ').any(|s| s.ends_with("/.default")) || get("state").is_empty() {
        return Err(Box::new(stand_in_error(
            StatusCode::BAD_REQUEST,
            "AADSTS900144",
            "Admin consent needs scope <resource>/.default and a state.",
        )));
    }
    if !get("scope").split(' ').any(|s| s == shared.graph_default_scope()) {
        return Err(Box::new(stand_in_error(
            StatusCode::BAD_REQUEST,
            "AADSTS500011",
            "The resource principal named in the scope was not found in the tenant (another cloud's Graph?).",
        )));
    }
    Ok(())
}

/// Checks an authorization code; returns its account and scope.
fn redeem_code(
    shared: &Shared,
    client_id: &str,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Result<Grant, Box<Response>> {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let mut inner = shared.inner();
    let code_ttl = inner.code_ttl.unwrap_or(CODE_TTL);
    let Some(code) = inner.codes.get_mut(get("code")) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            9_002_313,
            "Invalid request. Malformed or unknown code.",
        ));
    };
    // A presented code is spent, whatever happens next.
    let was_used = std::mem::replace(&mut code.used, true);
    if was_used {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            54005,
            "OAuth2 Authorization code was already redeemed.",
        ));
    }
    if code.issued.elapsed() > code_ttl {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            70008,
            "The provided authorization code has expired.",
        ));
    }
    if code.client_id != client_id || code.tenant != tenant {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            9_002_313,
            "The code was issued to another client or tenant.",
        ));
    }
    if get("redirect_uri") != code.redirect_uri {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            500_112,
            "The reply address does not match.",
        ));
    }
    let verifier = get("code_verifier");
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if verifier.len() < 43 || challenge != code.challenge {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            501_481,
            "The Code_Verifier does not match the code_challenge.",
        ));
    }
    Ok(Grant {
        account: code.account.clone(),
        scope: code.scope.clone(),
        granted: code.scope.clone(),
        rotate: true,
        state: code.state.clone(),
    })
}

/// Checks a refresh token; returns its account, scope and whether to issue a new one.
fn redeem_refresh_token(
    shared: &Shared,
    client_id: &str,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Result<Grant, Box<Response>> {
    let mut inner = shared.inner();
    inner.calls.refreshes += 1;
    let strict = inner.strict_rotation;
    let rotate = !inner.omit_rotated_refresh_token;
    if let Some(code) = inner.revoked {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            code,
            "The refresh token has expired or was revoked.",
        ));
    }
    let presented = form.get("refresh_token").map(String::as_str).unwrap_or("");
    let Some(grant) = inner.refresh_tokens.get_mut(presented) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            9_002_313,
            "Invalid request. Malformed or unknown refresh token.",
        ));
    };
    let was_used = std::mem::replace(&mut grant.used, true);
    if strict && was_used {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            70000,
            "The provided grant is invalid: this refresh token was already used (strict rotation).",
        ));
    }
    if grant.client_id != client_id || grant.tenant != tenant {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            9_002_313,
            "The refresh token was issued to another client or tenant.",
        ));
    }
    // Microsoft's v2 token endpoint wants the scopes again, within those consented to.
    let requested = form.get("scope").map(String::as_str).unwrap_or("").trim();
    if requested.is_empty() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900_144,
            "The request body must contain the following parameter: 'scope'.",
        ));
    }
    let consented: Vec<&str> = grant.scope.split(' ').collect();
    // `<resource>/.default` asks for everything consented to the app (and nothing more).
    let default_scope = shared.graph_default_scope();
    let granted = if requested.split(' ').any(|s| s == default_scope) {
        grant.scope.clone()
    } else if requested.split(' ').any(|s| !consented.contains(&s)) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            65_001,
            "The user or administrator has not consented to use the application for a requested scope.",
        ));
    } else {
        requested.to_owned()
    };
    Ok(Grant {
        account: grant.account.clone(),
        scope: grant.scope.clone(),
        granted,
        rotate,
        state: grant.state.clone(),
    })
}

fn issue_tokens(shared: &Shared, client_id: &str, tenant: &str, grant: Grant) -> Response {
    let Grant { account, scope, granted, rotate, state } = grant;
    let scope = scope.as_str();
    let granted: Vec<&str> =
        granted.split(' ').filter(|s| !s.is_empty() && *s != "offline_access").collect();
    let granted = granted.join(" ");
    let mut access_token = format!("eyJ0eXAi.stand-in-access.{}", random(48));
    let min_len = shared.inner().access_token_len;
    while access_token.len() < min_len {
        access_token.push_str(&random(48));
    }
    let offline = scope.split(' ').any(|s| s == "offline_access");
    let refresh_token = (offline && rotate).then(|| format!("0.stand-in-refresh.{}", random(48)));
    let mut inner = shared.inner();
    inner.access_tokens.insert(access_token.clone(), account.clone());
    inner.token_states.insert(access_token.clone(), state.clone());
    inner.issued_secrets.push(access_token.clone());
    if let Some(rt) = &refresh_token {
        inner.issued_secrets.push(rt.clone());
        inner.refresh_tokens.insert(
            rt.clone(),
            RefreshGrant {
                client_id: client_id.to_owned(),
                tenant: tenant.to_owned(),
                scope: scope.to_owned(),
                account: account.clone(),
                state,
                used: false,
            },
        );
    }
    let tid = inner.id_token_tenant.clone().unwrap_or_else(|| account.tid.clone());
    drop(inner);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({
        "aud": client_id,
        "iss": format!("https://login.microsoftonline.com/{}/v2.0", account.tid),
        "iat": now, "nbf": now, "exp": now + 3600,
        "tid": tid, "oid": account.oid,
        "preferred_username": account.upn, "name": account.display_name,
        "ver": "2.0",
    });
    let id_token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"stand-in id_token signing key, not Microsoft's"),
    )
    .unwrap_or_default();
    Json(json!({
        "token_type": "Bearer",
        "scope": granted,
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": access_token,
        "refresh_token": refresh_token,
        "id_token": id_token,
    }))
    .into_response()
}

fn bearer_account(shared: &Shared, headers: &HeaderMap) -> Option<Account> {
    let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?;
    shared.inner().access_tokens.get(token).cloned()
}

/// An app-only bearer token's record.
fn bearer_app(shared: &Shared, headers: &HeaderMap) -> Option<IssuedAppToken> {
    let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?;
    shared.app_tokens.lock().ok()?.get(token).cloned()
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// What every Graph call does first: count it, apply its fault, check the bearer token.
async fn graph_call(
    shared: &Shared,
    headers: &HeaderMap,
    record: fn(&mut Inner) -> Option<Fault>,
) -> Result<Account, Response> {
    let fault = {
        let mut inner = shared.inner();
        let fixed = record(&mut inner);
        fixed.or_else(|| draw_fault(&mut inner))
    };
    if let Some(response) = apply_fault(fault).await {
        return Err(response);
    }
    bearer_account(shared, headers).ok_or_else(|| {
        graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty or invalid.",
        )
    })
}

async fn me(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let record = |inner: &mut Inner| {
        inner.calls.graph_me += 1;
        inner.me_fault.clone()
    };
    if bearer_app(&shared, &headers).is_some() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "/me request is only valid with delegated authentication flow.",
        );
    }
    let a = match graph_call(&shared, &headers, record).await {
        Ok(a) => a,
        Err(response) => return response,
    };
    Json(json!({
        "id": a.oid,
        "displayName": a.display_name,
        "givenName": a.given_name,
        "surname": a.surname,
        "userPrincipalName": a.upn,
        "mail": if a.kind == AccountKind::Work { Some(a.upn.clone()) } else { None },
        "preferredLanguage": "en-US",
        "mobilePhone": if a.kind == AccountKind::Work { Some("+1 555 0100") } else { None },
        "businessPhones": [],
        "jobTitle": null,
        "officeLocation": null,
    }))
    .into_response()
}

async fn organization(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let record = |inner: &mut Inner| {
        inner.calls.graph_organization += 1;
        inner.organization_fault.clone()
    };
    if let Some(IssuedAppToken { tenant, roles, .. }) = bearer_app(&shared, &headers) {
        if !roles {
            return graph_error(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            );
        }
        let name = if tenant == WORK_TENANT { "Contoso (stand-in)" } else { "Fabrikam (stand-in)" };
        return Json(json!({"value": [{"id": tenant, "displayName": name, "tenantType": "AAD"}]}))
            .into_response();
    }
    let a = match graph_call(&shared, &headers, record).await {
        Ok(a) => a,
        Err(response) => return response,
    };
    if a.kind == AccountKind::Personal {
        return graph_error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Personal accounts have no organization.",
        );
    }
    Json(
        json!({"value": [{"id": a.tid, "displayName": "Contoso (stand-in)", "tenantType": "AAD"}]}),
    )
    .into_response()
}
