//! A strict local stand-in for an AutoKitteh deployment's API host: sign-in with its two
//! cookies, orgs and memberships, the Microsoft connection form's `/microsoft/save`, the
//! success page, and the five Connect RPCs the flow uses, with AutoKitteh's authorization,
//! plain-text 401s, `{}` for unknown-or-forbidden connections and its var limits. Its pages
//! say plainly that they are not AutoKitteh.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ms_oauth::autokitteh::{
    Integration, LOGGED_IN_COOKIE, MAX_VAR_VALUE_LEN, MAX_VARS_PER_CONNECTION, SESSION_COOKIE,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::random_base32;

/// A failure an RPC should simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AkFault {
    /// Answer with this status and a Connect error (`unavailable` or `unknown`).
    Status(u16),
    /// Wait this long before answering.
    Delay(Duration),
    /// `VarsService/Set` only: write the vars, then fail the status refresh `times` times
    /// (AutoKitteh then answers 500 although the vars were written).
    FailAfterWrite { times: usize },
}

/// RPC method names, as the stand-in counts them.
pub const WHO_AM_I: &str = "autokitteh.auth.v1.AuthService/WhoAmI";
pub const CONNECTIONS_GET: &str = "autokitteh.connections.v1.ConnectionsService/Get";
pub const VARS_SET: &str = "autokitteh.vars.v1.VarsService/Set";
pub const VARS_GET: &str = "autokitteh.vars.v1.VarsService/Get";
pub const VARS_DELETE: &str = "autokitteh.vars.v1.VarsService/Delete";

#[derive(Debug, Clone)]
struct User {
    email: String,
    active: bool,
}

#[derive(Debug, Clone)]
struct Org {
    name: String,
    /// Member user ids and whether their membership is active.
    members: HashMap<String, bool>,
}

/// A connection as the stand-in stores it.
#[derive(Debug, Clone)]
struct Conn {
    integration_id: String,
    org_id: String,
    project_id: String,
    name: String,
}

/// One stored var.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVar {
    pub value: String,
    pub is_secret: bool,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<String, User>,
    orgs: HashMap<String, Org>,
    connections: HashMap<String, Conn>,
    vars: HashMap<String, BTreeMap<String, StoredVar>>,
    faults: HashMap<String, AkFault>,
    calls: HashMap<String, usize>,
    /// Every request line and header value the stand-in received, for leak checks.
    authorizations: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    key: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running stand-in AutoKitteh. Lives as long as its runtime.
#[derive(Debug, Clone)]
pub struct AkStandin {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Serialize, Deserialize)]
struct SessionClaims {
    sub: String,
    iat: i64,
}

impl AkStandin {
    /// Serves on `listener` in the background.
    pub fn spawn(listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared =
            Arc::new(Shared { key: random_base32(40), inner: Mutex::new(Inner::default()) });
        let app = Router::new()
            .route("/", get(home))
            .route("/login", post(login))
            .route("/logout", get(logout))
            .route("/microsoft/save", get(microsoft_save))
            .route(TOKEN_URL_FINISH, get(microsoft_oauth))
            .route("/microsoft_teams/oauth", get(microsoft_oauth))
            .route("/connections/{cid}/success", get(success))
            .route("/{service}/{method}", post(rpc))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds an org; returns its id.
    pub fn add_org(&self, name: &str) -> String {
        let id = format!("org_{}", random_base32(26));
        let org = Org { name: name.to_owned(), members: HashMap::new() };
        self.shared.inner().orgs.insert(id.clone(), org);
        id
    }

    /// Adds an active user, an active member of `orgs`; returns the user id.
    pub fn add_user(&self, email: &str, orgs: &[&str]) -> String {
        let id = format!("usr_{}", random_base32(26));
        let mut inner = self.shared.inner();
        inner.users.insert(id.clone(), User { email: email.to_owned(), active: true });
        for org in orgs {
            if let Some(o) = inner.orgs.get_mut(*org) {
                o.members.insert(id.clone(), true);
            }
        }
        id
    }

    /// Makes `user_id` an active or inactive member of `org_id`.
    pub fn set_membership(&self, org_id: &str, user_id: &str, active: bool) {
        if let Some(o) = self.shared.inner().orgs.get_mut(org_id) {
            o.members.insert(user_id.to_owned(), active);
        }
    }

    /// Disables a user (their sessions stop working).
    pub fn disable_user(&self, user_id: &str) {
        if let Some(u) = self.shared.inner().users.get_mut(user_id) {
            u.active = false;
        }
    }

    /// Adds a connection of `integration` owned by `org_id`; returns its id.
    pub fn add_connection(&self, org_id: &str, integration: Integration, name: &str) -> String {
        self.add_connection_of(org_id, integration.id(), name)
    }

    /// Adds a connection of an integration that is not Microsoft's (Slack's); returns its id.
    pub fn add_other_connection(&self, org_id: &str) -> String {
        self.add_connection_of(org_id, OTHER_INTEGRATION, "slack")
    }

    fn add_connection_of(&self, org_id: &str, integration_id: &str, name: &str) -> String {
        let id = format!("con_{}", random_base32(26));
        let conn = Conn {
            integration_id: integration_id.to_owned(),
            org_id: org_id.to_owned(),
            project_id: format!("prj_{}", random_base32(26)),
            name: name.to_owned(),
        };
        self.shared.inner().connections.insert(id.clone(), conn);
        id
    }

    /// A session token (the `ak_user_session` cookie's value) for `user_id`.
    pub fn session_for(&self, user_id: &str) -> String {
        mint(&self.shared.key, user_id)
    }

    /// The connection's vars.
    pub fn vars(&self, cid: &str) -> BTreeMap<String, StoredVar> {
        self.shared.inner().vars.get(cid).cloned().unwrap_or_default()
    }

    /// Sets a var the way a user would in AutoKitteh's UI.
    pub fn set_var(&self, cid: &str, name: &str, value: &str, is_secret: bool) {
        self.shared
            .inner()
            .vars
            .entry(cid.to_owned())
            .or_default()
            .insert(name.to_owned(), StoredVar { value: value.to_owned(), is_secret });
    }

    /// The connection's status as AutoKitteh computes it: code and message.
    pub fn status(&self, cid: &str) -> (String, String) {
        let inner = self.shared.inner();
        status_of(inner.vars.get(cid))
    }

    /// Sets or clears a fault for one RPC method (see the constants above).
    pub fn set_fault(&self, method: &str, fault: Option<AkFault>) {
        let mut inner = self.shared.inner();
        match fault {
            Some(f) => inner.faults.insert(method.to_owned(), f),
            None => inner.faults.remove(method),
        };
    }

    /// How many times `method` was called (including refused calls).
    pub fn calls(&self, method: &str) -> usize {
        self.shared.inner().calls.get(method).copied().unwrap_or(0)
    }

    /// Every `Authorization` header value received.
    pub fn authorizations(&self) -> Vec<String> {
        self.shared.inner().authorizations.clone()
    }
}

const OTHER_INTEGRATION: &str = "int_3kthslackd9ba2b0c2a4c1e7f3";

fn mint(key: &str, user_id: &str) -> String {
    let claims = SessionClaims {
        sub: user_id.to_owned(),
        iat: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap_or_default()
}

/// AutoKitteh's plain-text 401.
fn unauthorized(text: &'static str) -> Response {
    (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text)
        .into_response()
}

/// The user a credential belongs to, or the text of AutoKitteh's 401.
fn authenticate(shared: &Shared, credential: Option<&str>) -> Result<String, &'static str> {
    let token = credential.ok_or("unauthenticated")?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<SessionClaims>(
        token,
        &DecodingKey::from_secret(shared.key.as_bytes()),
        &validation,
    )
    .map_err(|_| "invalid token")?
    .claims;
    let inner = shared.inner();
    match inner.users.get(&claims.sub) {
        None => Err("unknown user"),
        Some(u) if !u.active => Err("user is not active"),
        Some(_) => Ok(claims.sub),
    }
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The browser's session: both cookies, as AutoKitteh requires.
fn browser_user(shared: &Shared, headers: &HeaderMap) -> Result<String, &'static str> {
    if cookie(headers, LOGGED_IN_COOKIE) != Some("true") {
        return authenticate(shared, None);
    }
    authenticate(shared, cookie(headers, SESSION_COOKIE))
}

/// True when `user_id` is an active member of the connection's org.
fn may_use(inner: &Inner, user_id: &str, cid: &str) -> bool {
    inner.connections.get(cid).is_some_and(|c| {
        inner.orgs.get(&c.org_id).and_then(|o| o.members.get(user_id)).copied().unwrap_or(false)
    })
}

fn status_of(vars: Option<&BTreeMap<String, StoredVar>>) -> (String, String) {
    let get = |n: &str| vars.and_then(|v| v.get(n)).map(|v| v.value.as_str()).unwrap_or("");
    match get("auth_type") {
        "" => ("CODE_INIT_REQUIRED".into(), "Init required".into()),
        "oauthDefault" | "oauthPrivate" if !get("oauth_access_token").is_empty() => {
            ("CODE_OK".into(), "Using OAuth 2.0".into())
        }
        "daemonApp" => ("CODE_OK".into(), "Using daemon app".into()),
        _ => ("CODE_INIT_REQUIRED".into(), "Init required".into()),
    }
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title} · AutoKitteh stand-in</title></head>\
         <body><p><strong>Local AutoKitteh stand-in — NOT AutoKitteh.</strong></p><h1>{title}</h1>{body}</body></html>"
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

async fn home(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Ok(user_id) = browser_user(&shared, &headers) else {
        let inner = shared.inner();
        let mut users: Vec<_> = inner.users.iter().collect();
        users.sort_by(|a, b| a.1.email.cmp(&b.1.email));
        let buttons: String = users
            .iter()
            .map(|(id, u)| {
                format!(
                    "<form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"user_id\" value=\"{}\">\
                     <button type=\"submit\">Sign in as {}</button></form>",
                    escape(id),
                    escape(&u.email)
                )
            })
            .collect();
        return page("Sign in", &buttons).into_response();
    };
    let inner = shared.inner();
    let email = inner.users.get(&user_id).map(|u| u.email.clone()).unwrap_or_default();
    let mut rows: Vec<(String, String)> = inner
        .connections
        .iter()
        .filter(|(cid, _)| may_use(&inner, &user_id, cid))
        .map(|(cid, c)| {
            let org = inner.orgs.get(&c.org_id).map(|o| o.name.clone()).unwrap_or_default();
            let scopes = if c.integration_id == Integration::MicrosoftTeams.id() {
                "&amp;auth_scopes=teams"
            } else {
                ""
            };
            let (code, _) = status_of(inner.vars.get(cid.as_str()));
            let row = format!(
                "<li>{} ({}, {org}) — <span class=\"status\" data-cid=\"{cid}\">{code}</span> — \
                 <a href=\"/microsoft/save?cid={cid}&amp;origin=web&amp;auth_type=oauthDefault{scopes}\">Connect</a></li>",
                escape(&c.name),
                c.integration_id,
            );
            (c.name.clone(), row)
        })
        .collect();
    rows.sort();
    let list: String = rows.into_iter().map(|(_, r)| r).collect();
    page(
        "Connections",
        &format!(
            "<p>Signed in as <span id=\"user\">{}</span>. <a href=\"/logout\">Sign out</a></p><ul>{list}</ul>",
            escape(&email)
        ),
    )
    .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    user_id: String,
}

async fn login(State(shared): State<Arc<Shared>>, Form(form): Form<LoginForm>) -> Response {
    if !shared.inner().users.get(&form.user_id).is_some_and(|u| u.active) {
        return (StatusCode::UNAUTHORIZED, "unknown user").into_response();
    }
    let token = mint(&shared.key, &form.user_id);
    // A dev server's cookies: not Secure (plain HTTP on loopback), SameSite=Lax.
    (
        StatusCode::SEE_OTHER,
        AppendHeaders([
            (header::LOCATION, "/".to_owned()),
            (
                header::SET_COOKIE,
                format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax"),
            ),
            (header::SET_COOKIE, format!("{LOGGED_IN_COOKIE}=true; Path=/; SameSite=Lax")),
        ]),
    )
        .into_response()
}

async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        AppendHeaders([
            (header::LOCATION, "/".to_owned()),
            (header::SET_COOKIE, format!("{SESSION_COOKIE}=; Path=/; Max-Age=0")),
            (header::SET_COOKIE, format!("{LOGGED_IN_COOKIE}=; Path=/; Max-Age=0")),
        ]),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SaveQuery {
    #[serde(default)]
    cid: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    auth_type: String,
    #[serde(default)]
    auth_scopes: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
    #[serde(default)]
    tenant_id: String,
}

/// AutoKitteh's own finish that takes a token blob in the web address; counted in
/// [`AkStandin::calls`] under this path.
pub const TOKEN_URL_FINISH: &str = "/microsoft/oauth";

/// AutoKitteh's `/microsoft/oauth`: as upstream (U1 of the reference), it writes the tokens the
/// address carries into the connection it names for any signed-in user, as the system user.
/// This stand-in writes a marker instead of decoding the blob; a test shows it is never reached.
async fn microsoft_oauth(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    *shared.inner().calls.entry(TOKEN_URL_FINISH.to_owned()).or_default() += 1;
    if let Err(text) = browser_user(&shared, &headers) {
        return unauthorized(text);
    }
    let cid = q.get("cid").cloned().unwrap_or_default();
    let mut inner = shared.inner();
    if !inner.connections.contains_key(&cid) {
        return (StatusCode::BAD_REQUEST, "invalid connection ID").into_response();
    }
    let vars = inner.vars.entry(cid.clone()).or_default();
    for name in ["oauth_access_token", "oauth_refresh_token"] {
        vars.insert(
            name.into(),
            StoredVar { value: "written-through-the-address".into(), is_secret: true },
        );
    }
    (StatusCode::FOUND, [(header::LOCATION, format!("/connections/{cid}/success"))]).into_response()
}

/// The connection form's target, as upstream: it saves `auth_type` (and, for `oauthPrivate`,
/// the private app's vars) **as the system user** for any signed-in user who names the
/// connection, without checking membership (U1 of the reference), then redirects (relative)
/// to `/oauth/start/microsoft` with `_<auth_scopes>` appended (the edit form sends `teams`,
/// the web UI's create form `microsoft_teams`, U2).
async fn microsoft_save(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<SaveQuery>,
) -> Response {
    if let Err(text) = browser_user(&shared, &headers) {
        return unauthorized(text);
    }
    let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_owned()).into_response();
    let valid_cid = q.cid.len() == 30
        && q.cid.starts_with("con_")
        && q.cid[4..].bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    if !valid_cid {
        return bad("invalid connection ID");
    }
    let word = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let private = match q.auth_type.as_str() {
        "oauthDefault" => false,
        "oauthPrivate" => {
            if q.client_id.is_empty() || q.client_secret.is_empty() {
                return bad("missing private app details");
            }
            true
        }
        other => return bad(&format!("unexpected auth type {other:?}")),
    };
    if !word(&q.cid) || !word(&q.origin) || !word(&q.auth_scopes) {
        return bad("bad redirect URL");
    }
    let mut path = "/oauth/start/microsoft".to_owned();
    if !q.auth_scopes.is_empty() {
        path = format!("{path}_{}", q.auth_scopes);
    }
    let mut inner = shared.inner();
    let vars = inner.vars.entry(q.cid.clone()).or_default();
    let plain = |value: &str| StoredVar { value: value.to_owned(), is_secret: false };
    vars.insert("auth_type".into(), plain(&q.auth_type));
    if private {
        let tenant = if q.tenant_id.is_empty() { "common" } else { q.tenant_id.as_str() };
        vars.insert("private_client_id".into(), plain(&q.client_id));
        vars.insert("private_tenant_id".into(), plain(tenant));
        vars.insert(
            "private_client_secret".into(),
            StoredVar { value: q.client_secret.clone(), is_secret: true },
        );
    }
    (StatusCode::FOUND, [(header::LOCATION, format!("{path}?cid={}&origin={}", q.cid, q.origin))])
        .into_response()
}

async fn success(Path(cid): Path<String>) -> Response {
    page(
        "Connection initialized",
        &format!(
            "<p id=\"done\">Connection <code>{}</code> is ready. You may close this tab.</p>",
            escape(&cid)
        ),
    )
    .into_response()
}

fn connect_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

#[derive(Deserialize)]
struct WireVar {
    #[serde(alias = "scopeId")]
    scope_id: String,
    name: String,
    #[serde(default)]
    value: String,
    #[serde(default, alias = "isSecret")]
    is_secret: bool,
}

#[derive(Deserialize)]
struct SetRequest {
    #[serde(default)]
    vars: Vec<WireVar>,
}

#[derive(Deserialize)]
struct ScopeRequest {
    #[serde(default, alias = "scopeId")]
    scope_id: String,
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Deserialize)]
struct ConnectionRequest {
    #[serde(default, alias = "connectionId")]
    connection_id: String,
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

async fn rpc(
    State(shared): State<Arc<Shared>>,
    Path((service, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = format!("{service}/{method}");
    let fault = {
        let mut inner = shared.inner();
        *inner.calls.entry(name.clone()).or_default() += 1;
        if let Some(a) = headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()) {
            inner.authorizations.push(a.to_owned());
        }
        inner.faults.get(&name).cloned()
    };
    match &fault {
        Some(AkFault::Delay(d)) => tokio::time::sleep(*d).await,
        Some(AkFault::Status(s)) => {
            let status = StatusCode::from_u16(*s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return connect_error(status, "unavailable", "stand-in fault");
        }
        _ => {}
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.strip_prefix("Bearer ").ok_or(()));
    let user_id = match bearer {
        Some(Err(())) => {
            return unauthorized("invalid authorization header");
        }
        Some(Ok(token)) => match authenticate(&shared, Some(token)) {
            Ok(u) => u,
            Err(text) => return unauthorized(text),
        },
        None => return unauthorized("unauthenticated"),
    };
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !json_type {
        return connect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unknown", "content type");
    }
    if body.is_empty() {
        return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", "empty body");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", "malformed JSON");
    };
    match name.as_str() {
        WHO_AM_I => {
            let inner = shared.inner();
            let email = inner.users.get(&user_id).map(|u| u.email.clone()).unwrap_or_default();
            Json(json!({ "user": { "userId": user_id, "email": email, "status": "USER_STATUS_ACTIVE" } }))
                .into_response()
        }
        CONNECTIONS_GET => {
            let Ok(req) = serde_json::from_value::<ConnectionRequest>(request) else {
                return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", "bad request");
            };
            let inner = shared.inner();
            match inner.connections.get(&req.connection_id) {
                Some(c) if may_use(&inner, &user_id, &req.connection_id) => {
                    let (code, message) = status_of(inner.vars.get(&req.connection_id));
                    Json(json!({ "connection": {
                        "connectionId": req.connection_id,
                        "integrationId": c.integration_id,
                        "projectId": c.project_id,
                        "orgId": c.org_id,
                        "name": c.name,
                        "status": { "code": code, "message": message },
                    }}))
                    .into_response()
                }
                // Unknown and forbidden look the same.
                _ => Json(json!({})).into_response(),
            }
        }
        VARS_SET => set_vars(&shared, &user_id, request, fault.as_ref()),
        VARS_GET | VARS_DELETE => {
            let Ok(req) = serde_json::from_value::<ScopeRequest>(request) else {
                return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", "bad request");
            };
            let mut inner = shared.inner();
            if !may_use(&inner, &user_id, &req.scope_id) {
                return connect_error(StatusCode::FORBIDDEN, "permission_denied", "not allowed");
            }
            let vars = inner.vars.entry(req.scope_id.clone()).or_default();
            let wanted = |n: &str| req.names.is_empty() || req.names.iter().any(|w| w == n);
            if name == VARS_DELETE {
                vars.retain(|n, _| !wanted(n));
                return Json(json!({})).into_response();
            }
            let out: Vec<Value> = vars
                .iter()
                .filter(|(n, _)| wanted(n))
                .map(|(n, v)| {
                    let mut var = json!({ "scopeId": req.scope_id, "name": n, "value": v.value });
                    if v.is_secret {
                        var["isSecret"] = json!(true);
                    }
                    var
                })
                .collect();
            Json(json!({ "vars": out })).into_response()
        }
        _ => connect_error(StatusCode::NOT_FOUND, "unimplemented", "no such method"),
    }
}

fn set_vars(shared: &Shared, user_id: &str, request: Value, fault: Option<&AkFault>) -> Response {
    let Ok(req) = serde_json::from_value::<SetRequest>(request) else {
        return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", "bad request");
    };
    let mut inner = shared.inner();
    for var in &req.vars {
        if !inner.connections.contains_key(&var.scope_id) {
            return connect_error(StatusCode::NOT_FOUND, "not_found", "scope not found");
        }
        if !may_use(&inner, user_id, &var.scope_id) {
            return connect_error(StatusCode::FORBIDDEN, "permission_denied", "not allowed");
        }
        if !valid_name(&var.name) {
            return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", "invalid var name");
        }
        if var.value.len() > MAX_VAR_VALUE_LEN {
            return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", "value too long");
        }
    }
    // The count limit holds after the upsert; nothing is written when it would not.
    let mut after: HashMap<&str, BTreeMap<&str, ()>> = HashMap::new();
    for var in &req.vars {
        let entry = after.entry(var.scope_id.as_str()).or_insert_with(|| {
            inner
                .vars
                .get(&var.scope_id)
                .map(|v| v.keys().map(|k| (k.as_str(), ())).collect())
                .unwrap_or_default()
        });
        entry.insert(var.name.as_str(), ());
        if entry.len() > MAX_VARS_PER_CONNECTION {
            return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", "too many vars");
        }
    }
    for var in req.vars {
        inner
            .vars
            .entry(var.scope_id)
            .or_default()
            .insert(var.name, StoredVar { value: var.value, is_secret: var.is_secret });
    }
    if let Some(AkFault::FailAfterWrite { times }) = fault
        && *times > 0
    {
        let remaining = times - 1;
        if remaining == 0 {
            inner.faults.remove(VARS_SET);
        } else {
            inner.faults.insert(VARS_SET.into(), AkFault::FailAfterWrite { times: remaining });
        }
        return connect_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unknown",
            "refresh connection status: stand-in fault",
        );
    }
    Json(json!({})).into_response()
}
