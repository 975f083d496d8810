//! `GET /oauth/start/microsoft?cid=…&origin=…&grant=…`: checks the platform's start grant,
//! spends it and shows who and what is being connected; `POST /oauth/start/microsoft` (the
//! confirm button, from that page in that browser) records a one-time flow state and sends
//! the browser to Microsoft.
//!
//! Inside an AutoKitteh deployment (`AUTOKITTEH_API_URL`) it takes AutoKitteh's own start
//! URLs instead, `GET /oauth/start/microsoft[_teams]?cid=…&origin=…`, and the user's
//! AutoKitteh session decides: the connection must be one this user may use, of the
//! integration the path names, and the flow remembers who started it.

// The handlers' futures (a refresh with its retries, KMS, DynamoDB and the AutoKitteh
// write-back inside the deadline guard) are deeper than the compiler lays out by default.
#![recursion_limit = "256"]

use std::sync::Arc;

use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use ms_oauth::apps::{
    AK_APP_VARS, AUTH_TYPE_DEFAULT, AUTH_TYPE_PRIVATE, AppKind, AppRef, app_ref_from_vars,
};
use ms_oauth::audit::{Act, Actor, AuditEvent, AuditTrail, NoAudit};
use ms_oauth::autokitteh::{AutoKitteh, Integration};
use ms_oauth::clock::Clock;
use ms_oauth::config::{self, Config, ConfigError};
use ms_oauth::domain::{ConnectionId, Origin, Tenant};
use ms_oauth::error::{FlowError, PageContext};
use ms_oauth::grant::{
    CLOCK_SKEW_SECS, GrantError, GrantKey, MAX_GRANT_LEN, MAX_GRANT_LIFETIME_SECS,
};
use ms_oauth::metrics::{Metric, Metrics, NoMetrics, name as metric};
use ms_oauth::microsoft::Endpoints;
use ms_oauth::pages::{self, Page, PageForm};
use ms_oauth::request::{Query, ak_session, binding_cookie, confirm_cookie, cookie, posted_from};
use ms_oauth::secrets::CachedSecret;
use ms_oauth::state::{
    CONFIRM_COOKIE_PREFIX, FlowSecrets, StateKey, browser_hash, constant_time_eq, random_nonce,
};
use ms_oauth::store::{PendingFlow, Store};
use ms_oauth::wiring::Wiring;
use secrecy::{ExposeSecret, SecretString};

/// Everything the start function builds once per instance.
#[derive(Debug)]
pub struct StartService {
    pub config: Config,
    pub endpoints: Endpoints,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// The start-link key (standalone mode).
    pub start_key: Option<CachedSecret>,
    /// The AutoKitteh deployment whose sessions decide (AutoKitteh mode).
    pub autokitteh: Option<AutoKitteh>,
    /// Sign-ins started.
    pub metrics: Arc<dyn Metrics>,
    /// Flows started, on the audit trail.
    pub audit: Arc<dyn AuditTrail>,
    page_context: PageContext,
}

impl StartService {
    pub fn new(
        config: Config,
        endpoints: Endpoints,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        start_key: CachedSecret,
    ) -> Self {
        Self::assemble(config, endpoints, store, clock, Some(start_key), None)
    }

    /// The same service inside an AutoKitteh deployment: AutoKitteh's session decides who
    /// may start, and no start grant is read.
    pub fn in_autokitteh(
        config: Config,
        endpoints: Endpoints,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        autokitteh: AutoKitteh,
    ) -> Self {
        Self::assemble(config, endpoints, store, clock, None, Some(autokitteh))
    }

    fn assemble(
        config: Config,
        endpoints: Endpoints,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        start_key: Option<CachedSecret>,
        autokitteh: Option<AutoKitteh>,
    ) -> Self {
        let page_context = PageContext::new(&config);
        let metrics: Arc<dyn Metrics> = Arc::new(NoMetrics);
        let audit: Arc<dyn AuditTrail> = Arc::new(NoAudit);
        Self {
            config,
            endpoints,
            store,
            clock,
            start_key,
            autokitteh,
            metrics,
            audit,
            page_context,
        }
    }

    /// The same service recording metrics to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The same service recording its acts on `audit`.
    pub fn with_audit(mut self, audit: Arc<dyn AuditTrail>) -> Self {
        self.audit = audit;
        self
    }

    /// Builds the service from `lookup` with AWS clients made from `sdk`. Never touches the
    /// client secret.
    pub fn from_sdk(
        lookup: &dyn Fn(&str) -> Option<String>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, ConfigError> {
        Self::wire(&Wiring::new(config::Role::Start, lookup, sdk))
    }

    /// Builds the service through `wiring`.
    pub fn wire(wiring: &Wiring<'_>) -> Result<Self, ConfigError> {
        let config = wiring.config()?;
        let store = wiring.store(&config, &wiring.dynamodb());
        let endpoints = Endpoints::new(&config);
        let (metrics, audit) = wiring.observability();
        // Inside AutoKitteh its API is the one outbound peer; standalone needs no HTTP client.
        let http = match &config.autokitteh {
            Some(_) => Some(wiring.http(&config)?),
            None => None,
        };
        if let Some(autokitteh) = http.as_ref().and_then(|http| wiring.autokitteh(&config, http)) {
            let service = Self::in_autokitteh(config, endpoints, store, wiring.clock(), autokitteh);
            return Ok(service.with_metrics(metrics).with_audit(audit));
        }
        let start_key = wiring.secret(config::START_LINK_KEY, config::START_LINK_KEY_ARN)?;
        if let Some(value) = start_key.local_value() {
            GrantKey::new(value)
                .map_err(|e| ConfigError { var: config::START_LINK_KEY, problem: e.to_string() })?;
        }
        // No HTTP client: the start function makes no outbound call to Microsoft.
        Ok(Self::new(config, endpoints, store, wiring.clock(), start_key)
            .with_metrics(metrics)
            .with_audit(audit))
    }

    /// `check` with the start-link key; when it finds a signature it cannot verify, with a
    /// key rotated in since this instance read it, then with the key before the rotation
    /// while a link or confirmation signed with it may still be valid.
    async fn with_key<T>(
        &self,
        check: impl Fn(&GrantKey) -> Result<T, GrantError>,
    ) -> Result<T, FlowError> {
        let start_key =
            self.start_key.as_ref().ok_or(FlowError::Config("no start-link key".into()))?;
        let key = |secret: SecretString| {
            GrantKey::new(secret).map_err(|e| FlowError::Config(e.to_string()))
        };
        let refused = match check(&key(start_key.get().await?)?) {
            Err(e @ (GrantError::Invalid | GrantError::ConfirmationInvalid)) => e,
            other => return Ok(other?),
        };
        if let Some(newer) = start_key.newer().await? {
            return Ok(check(&key(newer)?)?);
        }
        if let Some(previous) = start_key.previous().await? {
            let since = self.clock.now() - time::OffsetDateTime::from(previous.replaced_at);
            if since <= ROTATION_OVERLAP
                && let Ok(checked) = check(&key(previous.value)?)
            {
                tracing::info!("accepted a signature of the start-link key before its rotation");
                return Ok(checked);
            }
        }
        Err(refused.into())
    }
}

/// Handles one request; every outcome is a response (errors are pages).
pub async fn handle(service: &StartService, req: Request) -> Response<Body> {
    let limit = ms_oauth::runtime::time_left(&req);
    let too_late = || FlowError::TimedOut.into_response(&service.page_context, &[]);
    ms_oauth::runtime::in_time(limit, Box::pin(answer(service, req)), too_late).await
}

async fn answer(service: &StartService, req: Request) -> Response<Body> {
    let outcome = match (req.method(), service.autokitteh.as_ref()) {
        _ if is_token_in_address(&req) => Err(FlowError::TokensInAddress),
        _ if ms_oauth::runtime::is_unreadable(&req) => Err(FlowError::BadQuery(UNREADABLE)),
        (&Method::GET, _) if is_admin_consent(&req) => admin_consent(service, &req).await,
        (&Method::GET, Some(autokitteh)) => start_in_autokitteh(service, autokitteh, &req).await,
        (&Method::GET, None) => show_confirmation(service, &req).await,
        (&Method::POST, Some(autokitteh)) => ak_confirmed(service, autokitteh, &req).await,
        (&Method::POST, None) => confirmed(service, &req).await,
        _ => Err(FlowError::Method),
    };
    outcome.unwrap_or_else(|e| {
        ms_oauth::metrics::record_dependency_failure(&*service.metrics, e.failed_dependency());
        e.into_response(&service.page_context, &[])
    })
}

/// How long after a rotation of the start-link key links and confirmations signed with the
/// key before it are still accepted: a grant's longest life plus the clock skew, and a
/// confirmation's life (both 10 minutes).
const ROTATION_OVERLAP: time::Duration =
    time::Duration::seconds(MAX_GRANT_LIFETIME_SECS + CLOCK_SKEW_SECS);

/// What a link lambda_http could not read gets told.
const UNREADABLE: &str = "it contains characters a web address may not hold";

/// `cid` and `origin` from the start link.
fn link_target(query: &Query<'_>) -> Result<(ConnectionId, Origin), FlowError> {
    let cid = query.single("cid", 64)?.unwrap_or_default().parse()?;
    let origin = query.single("origin", 16)?.unwrap_or_default().parse()?;
    Ok((cid, origin))
}

/// True for AutoKitteh's own finish handlers that take tokens in the web address (any
/// method: nothing of such a request reaches AutoKitteh, and its query is never read).
fn is_token_in_address(req: &Request) -> bool {
    let path = req.uri().path().trim_end_matches('/');
    config::AUTOKITTEH_TOKEN_URL_PATHS.iter().any(|p| path.ends_with(p))
}

/// True for `GET /oauth/adminconsent/microsoft`.
fn is_admin_consent(req: &Request) -> bool {
    req.uri().path().trim_end_matches('/').ends_with(config::ADMIN_CONSENT_PATH)
}

/// How long an admin-consent link, once opened, may take at Microsoft.
const ADMIN_CONSENT_TTL_SECS: i64 = 3600;

/// `GET /oauth/adminconsent/microsoft?cid=…&origin=…[&tenant=…]`, with a start grant
/// (standalone) or the AutoKitteh session of a user of the connection: sends an
/// administrator to Microsoft's admin consent for the connection's app (its own, or the
/// server-wide one), in the tenant given, else the app's own tenant, else the
/// administrator's (`organizations`). Standalone, the link is meant to be mailed to an
/// administrator: opening it shows a confirmation and spends nothing (mail scanners open
/// links first); the confirmation's post spends the grant and goes on to Microsoft.
async fn admin_consent(service: &StartService, req: &Request) -> Result<Response<Body>, FlowError> {
    let query = Query::from_request(req)?;
    let (cid, origin) = link_target(&query)?;
    let asked_tenant = query.single("tenant", 256)?.filter(|t| !t.is_empty());
    let tenant = consent_tenant(asked_tenant)?;
    match &service.autokitteh {
        Some(autokitteh) => {
            // Meant to be sent to an administrator: always confirmed first, so that neither
            // a scanner nor another site's link starts anything.
            let starter = autokitteh_user_and_app(service, autokitteh, req, &cid, None).await?;
            ak_confirmation(service, cid, origin, AkPurpose::AdminConsent, starter, tenant)
        }
        None => {
            let consent = Some(tenant.map(|t| t.to_string()).unwrap_or_default());
            show_confirmation_for(service, &query, cid, origin, consent).await
        }
    }
}

/// The tenant an admin-consent link asks for, when it names one.
fn consent_tenant(asked: Option<&str>) -> Result<Option<Tenant>, FlowError> {
    let Some(t) = asked else { return Ok(None) };
    let tenant: Tenant =
        t.parse().map_err(|_| FlowError::BadQuery("the tenant is not a tenant id or domain"))?;
    if matches!(tenant.as_str(), "common" | "consumers") {
        return Err(FlowError::BadQuery(
            "admin consent needs an organization's tenant, not common or consumers",
        ));
    }
    Ok(Some(tenant))
}

/// Records the one-time state of an admin consent for `who` and sends the browser to
/// Microsoft's admin consent. The state tells the redirect function that this is a consent,
/// not a sign-in.
async fn start_admin_consent(
    service: &StartService,
    cid: ConnectionId,
    origin: Origin,
    who: String,
    app: Option<AppRef>,
    asked_tenant: Option<Tenant>,
) -> Result<Response<Body>, FlowError> {
    let now = service.clock.now().unix_timestamp();
    let (client_id, app_tenant, own) = match app {
        Some(app) => (app.client_id, app.tenant, true),
        None => {
            (service.endpoints.client_id().to_owned(), service.endpoints.tenant().clone(), false)
        }
    };
    let tenant = asked_tenant.unwrap_or_else(|| {
        if ms_oauth::apps::is_multi_tenant_alias(&app_tenant) {
            "organizations".parse().unwrap_or_default()
        } else {
            app_tenant
        }
    });
    let secrets = FlowSecrets::generate().map_err(|_| FlowError::Internal("no randomness"))?;
    let key = StateKey::from_state(secrets.state.secret());
    let flow = PendingFlow {
        connection_id: cid.clone(),
        origin,
        pkce_verifier: SecretString::from(secrets.pkce_verifier.secret().to_owned()),
        // Not bound to a browser: whoever holds the link may be the administrator.
        browser_hash: browser_hash(""),
        created_at: now,
        expires_at: now + ADMIN_CONSENT_TTL_SECS,
        ak_user_id: service.autokitteh.as_ref().map(|_| who.clone()),
        platform_user: service.autokitteh.is_none().then(|| who.clone()),
        connection_name: None,
        app_client_id: own.then(|| client_id.clone()),
        admin_consent: Some(tenant.to_string()),
    };
    service.store.put_state(&key, &flow).await?;
    tracing::info!(cid = %cid, tenant = %tenant, app = %client_id, user = %who, "admin consent started");
    let auth_type = if own { "own_app" } else { AUTH_TYPE_DEFAULT };
    let mut event = flow_started(service, &key, &flow, auth_type);
    event.outcome = "admin_consent_started".to_owned();
    service.audit.record(event).await;
    let location = service.endpoints.admin_consent_url(&client_id, &tenant, secrets.state.secret());
    Ok(pages::redirect(location.as_str(), &[]))
}

/// Inside AutoKitteh: the user's session decides. A start that came from AutoKitteh's own
/// pages (the web UI's popup, `ak connection init`: `Sec-Fetch-Site` same-origin or
/// same-site) for the server-wide app goes straight on to Microsoft, since AutoKitteh's UI
/// showed what is being connected. Any other start (a link from mail or chat, another site,
/// a browser that does not say) or one through a connection's own app (which AutoKitteh lets
/// any signed-in user set) first shows a confirmation naming the connection and the app.
async fn start_in_autokitteh(
    service: &StartService,
    autokitteh: &AutoKitteh,
    req: &Request,
) -> Result<Response<Body>, FlowError> {
    let query = Query::from_request(req)?;
    let (cid, origin) = link_target(&query)?;
    let integration = Integration::from_start_path(req.uri().path());
    let starter =
        autokitteh_user_and_app(service, autokitteh, req, &cid, Some(integration)).await?;
    if came_from_autokitteh(req) && starter.app.is_none() {
        return begin(service, cid, origin, Starter::AutoKitteh(starter.user_id), None, None).await;
    }
    ak_confirmation(service, cid, origin, AkPurpose::SignIn(integration), starter, None)
}

/// Whether the browser says the request comes from a page of this site (AutoKitteh's UI on
/// the same site, or this host).
fn came_from_autokitteh(req: &Request) -> bool {
    let site = req.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok());
    matches!(site, Some("same-origin" | "same-site"))
}

/// What an AutoKitteh-mode confirmation goes on to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AkPurpose {
    /// A sign-in for this integration.
    SignIn(Integration),
    /// An administrator's consent (for either Microsoft integration).
    AdminConsent,
}

impl AkPurpose {
    fn as_str(self) -> &'static str {
        match self {
            AkPurpose::SignIn(Integration::Microsoft) => "microsoft",
            AkPurpose::SignIn(Integration::MicrosoftTeams) => "microsoft_teams",
            AkPurpose::AdminConsent => "admin_consent",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "microsoft" => Some(AkPurpose::SignIn(Integration::Microsoft)),
            "microsoft_teams" => Some(AkPurpose::SignIn(Integration::MicrosoftTeams)),
            "admin_consent" => Some(AkPurpose::AdminConsent),
            _ => None,
        }
    }

    fn integration(self) -> Option<Integration> {
        match self {
            AkPurpose::SignIn(integration) => Some(integration),
            AkPurpose::AdminConsent => None,
        }
    }
}

/// Inside AutoKitteh, the confirmation page: who (as AutoKitteh knows them), which connection
/// and which app, with a button whose post is bound to a cookie nonce of this browser (the
/// form carries its hash) and re-checked with AutoKitteh as the user.
fn ak_confirmation(
    service: &StartService,
    cid: ConnectionId,
    origin: Origin,
    purpose: AkPurpose,
    starter: AkStarter,
    tenant: Option<Tenant>,
) -> Result<Response<Body>, FlowError> {
    let nonce = random_nonce().map_err(|_| FlowError::Internal("no randomness"))?;
    let nonce_hash = browser_hash(nonce.expose_secret());
    let ttl = service.config.state_ttl.as_secs() as i64;
    let cookie = confirm_cookie(&confirm_cookie_name(&nonce_hash), nonce.expose_secret(), ttl);
    let mut facts = vec![
        ("Connection".to_owned(), starter.connection_name),
        ("Connection id".to_owned(), cid.to_string()),
        (
            "AutoKitteh user".to_owned(),
            starter.email.filter(|e| !e.is_empty()).unwrap_or(starter.user_id),
        ),
        ("Started from".to_owned(), origin.describe().to_owned()),
    ];
    match &starter.app {
        Some(app) => {
            facts.push((
                "App (client id)".to_owned(),
                format!("{} (the connection's own)", app.client_id),
            ));
            facts.push(("App's tenant".to_owned(), app.tenant.to_string()));
        }
        None => facts.push((
            "App (client id)".to_owned(),
            format!("{} (this deployment's)", service.endpoints.client_id()),
        )),
    }
    let form = PageForm {
        action: config::START_PATH.to_owned(),
        fields: vec![
            ("cid".to_owned(), cid.to_string()),
            ("origin".to_owned(), origin.as_str().to_owned()),
            ("purpose".to_owned(), purpose.as_str().to_owned()),
            ("confirm".to_owned(), nonce_hash),
        ]
        .into_iter()
        .chain(tenant.as_ref().map(|t| ("tenant".to_owned(), t.to_string())))
        .collect(),
        button: "Continue to Microsoft".to_owned(),
    };
    if let Some(tenant) = &tenant {
        facts.push(("Organization (tenant)".to_owned(), tenant.to_string()));
    }
    tracing::info!(cid = %cid, origin = %origin, purpose = purpose.as_str(), own_app = starter.app.is_some(), "AutoKitteh start waiting for confirmation");
    let page = match purpose {
        AkPurpose::SignIn(_) => Page::confirm(facts, form),
        AkPurpose::AdminConsent => Page::confirm_admin_consent(facts, form),
    };
    Ok(page.into_response(&[cookie]))
}

/// Inside AutoKitteh, the confirmation's post: from our page, in the browser that showed
/// it, and still allowed by AutoKitteh for the signed-in user.
async fn ak_confirmed(
    service: &StartService,
    autokitteh: &AutoKitteh,
    req: &Request,
) -> Result<Response<Body>, FlowError> {
    if !posted_from(req, &service.config.public_address.origin()) {
        return Err(GrantError::CrossSite.into());
    }
    let form = Query::from_form(req)?;
    let cid: ConnectionId = form.single("cid", 64)?.unwrap_or_default().parse()?;
    let origin: Origin = form.single("origin", 16)?.unwrap_or_default().parse()?;
    let purpose = form
        .single("purpose", 32)?
        .and_then(AkPurpose::parse)
        .ok_or(FlowError::BadQuery("the confirmation is damaged"))?;
    let nonce_hash = form.single("confirm", 64)?.unwrap_or_default();
    let tenant = consent_tenant(form.single("tenant", 256)?.filter(|t| !t.is_empty()))?;
    let nonce = match cookie(req, &confirm_cookie_name(nonce_hash))? {
        Some(nonce) if nonce_hash.len() == 64 => nonce,
        _ => return Err(GrantError::OtherBrowser.into()),
    };
    if !constant_time_eq(&browser_hash(nonce), nonce_hash) {
        return Err(GrantError::OtherBrowser.into());
    }
    let used = confirm_cookie(&confirm_cookie_name(nonce_hash), "", 0);
    let starter =
        autokitteh_user_and_app(service, autokitteh, req, &cid, purpose.integration()).await?;
    match purpose {
        AkPurpose::SignIn(_) => {
            let starter_user = Starter::AutoKitteh(starter.user_id);
            begin(service, cid, origin, starter_user, Some(used), starter.app).await
        }
        AkPurpose::AdminConsent => {
            let mut answer =
                start_admin_consent(service, cid, origin, starter.user_id, starter.app, tenant)
                    .await?;
            if let Ok(value) = lambda_http::http::HeaderValue::from_str(&used) {
                answer.headers_mut().append(lambda_http::http::header::SET_COOKIE, value);
            }
            Ok(answer)
        }
    }
}

/// Standalone, the link's first step: checks the grant and shows who and what is being
/// connected, with a button that carries a confirmation bound to this browser. Opening the
/// link spends nothing: mail and chat scanners fetch links before people do, and the person
/// the link was sent to must still find it usable.
async fn show_confirmation(
    service: &StartService,
    req: &Request,
) -> Result<Response<Body>, FlowError> {
    let query = Query::from_request(req)?;
    let (cid, origin) = link_target(&query)?;
    show_confirmation_for(service, &query, cid, origin, None).await
}

/// The confirmation of a standalone sign-in (`consent` `None`) or admin consent
/// (`Some(tenant)`, empty for the app's own).
async fn show_confirmation_for(
    service: &StartService,
    query: &Query<'_>,
    cid: ConnectionId,
    origin: Origin,
    consent: Option<String>,
) -> Result<Response<Body>, FlowError> {
    let grant = query.single("grant", MAX_GRANT_LEN)?.unwrap_or_default();
    let now = service.clock.now().unix_timestamp();
    let (key, claims) = service
        .with_key(|key| key.verify(grant, &cid, origin, now).map(|claims| (key.clone(), claims)))
        .await?;
    // A link already confirmed (passed on after use, a replay) says so at once.
    if service.store.grant_spent(&claims.jti).await? {
        tracing::warn!(cid = %cid, origin = %origin, user = %claims.sub, "start grant used again; refused");
        return Err(GrantError::Used.into());
    }

    let nonce = random_nonce().map_err(|_| FlowError::Internal("no randomness"))?;
    let nonce_hash = browser_hash(nonce.expose_secret());
    let ttl = service.config.state_ttl.as_secs() as i64;
    let ticket = key
        .sign_confirmation(&claims, &nonce_hash, consent.clone(), now, ttl)
        .map_err(|_| FlowError::Internal("confirmation not signed"))?;
    let cookie = confirm_cookie(&confirm_cookie_name(&nonce_hash), nonce.expose_secret(), ttl);
    tracing::info!(cid = %cid, origin = %origin, user = %claims.sub, admin_consent = consent.is_some(), "start link opened; waiting for confirmation");
    let mut facts = vec![
        ("Connection".to_owned(), claims.name),
        ("Connection id".to_owned(), cid.to_string()),
        ("AutoKitteh user".to_owned(), claims.sub),
        ("Started from".to_owned(), origin.describe().to_owned()),
    ];
    let form = PageForm {
        action: config::START_PATH.to_owned(),
        fields: vec![("ticket".to_owned(), ticket)],
        button: "Continue to Microsoft".to_owned(),
    };
    let page = match consent {
        None => Page::confirm(facts, form),
        Some(tenant) => {
            let app = table_app(service, &cid).await?;
            let client_id =
                app.map_or_else(|| service.endpoints.client_id().to_owned(), |a| a.client_id);
            facts.push(("App (client id)".to_owned(), client_id));
            if !tenant.is_empty() {
                facts.push(("Organization (tenant)".to_owned(), tenant));
            }
            Page::confirm_admin_consent(facts, form)
        }
    };
    Ok(page.into_response(&[cookie]))
}

/// Standalone, the second step: the confirm button was pressed on our page, in the browser
/// the page was shown in. The grant is spent here: of several browsers confirming one link,
/// exactly one goes on.
async fn confirmed(service: &StartService, req: &Request) -> Result<Response<Body>, FlowError> {
    if !posted_from(req, &service.config.public_address.origin()) {
        return Err(GrantError::CrossSite.into());
    }
    let form = Query::from_form(req)?;
    let ticket = form.single("ticket", MAX_GRANT_LEN)?.unwrap_or_default();
    let now = service.clock.now().unix_timestamp();
    let confirmation = service.with_key(|key| key.verify_confirmation(ticket, now)).await?;
    let nonce = cookie(req, &confirm_cookie_name(&confirmation.nh))?.unwrap_or_default();
    if !constant_time_eq(&browser_hash(nonce), &confirmation.nh) {
        return Err(GrantError::OtherBrowser.into());
    }
    let cid: ConnectionId = confirmation.cid.parse()?;
    let origin: Origin = confirmation.origin.parse()?;
    // The spent-grant record lasts as long as any confirmation of the grant can.
    if !service.store.spend_grant(&confirmation.jti, confirmation.exp + CLOCK_SKEW_SECS).await? {
        tracing::warn!(cid = %cid, origin = %origin, user = %confirmation.sub, "start grant confirmed again; refused");
        return Err(GrantError::Used.into());
    }
    // The confirmation is used up with its cookie; the flow's own cookie takes over.
    let used = confirm_cookie(&confirm_cookie_name(&confirmation.nh), "", 0);
    let app = table_app(service, &cid).await?;
    if let Some(tenant) = confirmation.consent {
        let tenant = consent_tenant(Some(tenant.as_str()).filter(|t| !t.is_empty()))?;
        let mut answer =
            start_admin_consent(service, cid, origin, confirmation.sub, app, tenant).await?;
        if let Ok(value) = lambda_http::http::HeaderValue::from_str(&used) {
            answer.headers_mut().append(lambda_http::http::header::SET_COOKIE, value);
        }
        return Ok(answer);
    }
    let starter = Starter::Platform { user: confirmation.sub, connection_name: confirmation.name };
    begin(service, cid, origin, starter, Some(used), app).await
}

/// Who a flow is started for.
enum Starter {
    /// The AutoKitteh user id (AutoKitteh mode).
    AutoKitteh(String),
    /// The platform user and connection name a start grant named (standalone).
    Platform { user: String, connection_name: String },
}

/// The name of the confirm cookie for the nonce hashing to `nonce_hash`: one per opened link,
/// so several can wait in one browser.
fn confirm_cookie_name(nonce_hash: &str) -> String {
    format!("{CONFIRM_COOKIE_PREFIX}{}", nonce_hash.get(..16).unwrap_or(nonce_hash))
}

/// Records a one-time flow state and sends the browser to Microsoft.
async fn begin(
    service: &StartService,
    cid: ConnectionId,
    origin: Origin,
    starter: Starter,
    clear: Option<String>,
    app: Option<AppRef>,
) -> Result<Response<Body>, FlowError> {
    // The connection's own app, when it has one: the sign-in goes through that app.
    let own_app = match app {
        None => None,
        Some(AppRef { kind: AppKind::Private, client_id, tenant }) => Some((client_id, tenant)),
        Some(AppRef { kind: AppKind::Daemon, .. }) => return Err(FlowError::DaemonApp),
    };
    let now = service.clock.now().unix_timestamp();
    let secrets = FlowSecrets::generate().map_err(|_| FlowError::Internal("no randomness"))?;
    let key = StateKey::from_state(secrets.state.secret());
    let ttl = service.config.state_ttl.as_secs() as i64;
    let (ak_user_id, platform_user, connection_name) = match starter {
        Starter::AutoKitteh(user) => (Some(user), None, None),
        Starter::Platform { user, connection_name } => (None, Some(user), Some(connection_name)),
    };
    let flow = PendingFlow {
        connection_id: cid.clone(),
        origin,
        pkce_verifier: SecretString::from(secrets.pkce_verifier.secret().to_owned()),
        browser_hash: browser_hash(secrets.browser_nonce.expose_secret()),
        created_at: now,
        expires_at: now + ttl,
        ak_user_id,
        platform_user,
        connection_name,
        app_client_id: own_app.as_ref().map(|(client_id, _)| client_id.clone()),
        admin_consent: None,
    };
    service.store.put_state(&key, &flow).await?;

    let location = match &own_app {
        Some((client_id, tenant)) => {
            service.endpoints.authorize_url_for(&secrets, client_id, tenant)
        }
        None => service.endpoints.authorize_url(&secrets),
    };
    let cookie = binding_cookie(&key.cookie_name(), secrets.browser_nonce.expose_secret(), ttl);
    tracing::info!(
        cid = %cid,
        origin = %origin,
        tenant = %own_app.as_ref().map_or(&service.config.tenant, |(_, t)| t),
        app = own_app.as_ref().map_or("default", |(id, _)| id.as_str()),
        ak_user = flow.ak_user_id.as_deref().unwrap_or(""),
        user = flow.platform_user.as_deref().unwrap_or(""),
        "flow started"
    );
    let auth_type = if own_app.is_some() { AUTH_TYPE_PRIVATE } else { AUTH_TYPE_DEFAULT };
    service.metrics.record(Metric::count(
        metric::SIGN_IN_STARTED,
        &[("Origin", origin.as_str()), ("AuthType", auth_type)],
    ));
    service.audit.record(flow_started(service, &key, &flow, auth_type)).await;
    let cookies: Vec<String> = clear.into_iter().chain([cookie]).collect();
    Ok(pages::redirect(location.as_str(), &cookies))
}

/// Who starts a flow inside AutoKitteh, as AutoKitteh answered for their session.
struct AkStarter {
    user_id: String,
    email: Option<String>,
    connection_name: String,
    /// The connection's own app, named by its vars or set through the connection API.
    app: Option<AppRef>,
}

/// Inside AutoKitteh: the user (see [`autokitteh_user`]) and the connection's own app,
/// named by its vars or else set through the connection API; the table is read at the same
/// time as AutoKitteh, so a sign-in waits for neither after the other. `integration` is the
/// one the start names; `None` (an admin consent) takes either Microsoft integration.
async fn autokitteh_user_and_app(
    service: &StartService,
    autokitteh: &AutoKitteh,
    req: &Request,
    cid: &ConnectionId,
    integration: Option<Integration>,
) -> Result<AkStarter, FlowError> {
    // Nothing is read for a browser that is not signed in at all.
    ak_session(req)?.ok_or(FlowError::AkSignedOut)?;
    let (from_autokitteh, from_table) =
        tokio::join!(autokitteh_user(autokitteh, req, cid, integration), table_app(service, cid));
    let mut starter = from_autokitteh?;
    if starter.app.is_none() {
        starter.app = from_table?;
    }
    if let Some(app) = &starter.app {
        ms_oauth::apps::refuse_server_wide(&app.client_id, service.endpoints.client_id())?;
    }
    Ok(starter)
}

/// The connection's own app as set through the connection API.
async fn table_app(
    service: &StartService,
    cid: &ConnectionId,
) -> Result<Option<AppRef>, FlowError> {
    let Some(stored) = service.store.get_app(cid).await? else { return Ok(None) };
    let app = stored.app.summary;
    let kind = AppKind::from_auth_type(&app.auth_type)
        .ok_or(FlowError::Internal("stored auth type unreadable"))?;
    let tenant = app
        .private_tenant_id
        .parse()
        .map_err(|_| FlowError::Internal("stored tenant unreadable"))?;
    Ok(Some(AppRef { kind, client_id: app.private_client_id, tenant }))
}

/// The AutoKitteh user starting the flow, after checking that the connection is theirs and
/// of the integration the path names, and the connection's own app if its vars name one
/// (never its credential). The three calls run at once, as the signed-in user.
async fn autokitteh_user(
    autokitteh: &AutoKitteh,
    req: &Request,
    cid: &ConnectionId,
    integration: Option<Integration>,
) -> Result<AkStarter, FlowError> {
    let session = ak_session(req)?.ok_or(FlowError::AkSignedOut)?;
    let (connection, user, vars) = tokio::join!(
        autokitteh.connection(&session, cid),
        autokitteh.who_am_i(&session),
        autokitteh.get_vars(&session, cid, &AK_APP_VARS),
    );
    let user = user?;
    let connection = connection?.ok_or(FlowError::AkConnectionNotFound)?;
    let allowed = match integration {
        Some(integration) => connection.integration_id == integration.id(),
        // An admin consent serves either Microsoft integration.
        None => [Integration::Microsoft, Integration::MicrosoftTeams]
            .iter()
            .any(|i| i.id() == connection.integration_id),
    };
    if !allowed {
        return Err(FlowError::AkWrongIntegration(connection.integration_id));
    }
    tracing::debug!(
        cid = %cid,
        ak_user = %user.user_id,
        org = connection.org_id.as_deref().unwrap_or(""),
        integration = integration.map_or("any", Integration::name),
        "AutoKitteh user may connect"
    );
    let app = app_ref_from_vars(&vars?)?;
    Ok(AkStarter {
        user_id: user.user_id,
        email: user.email,
        connection_name: connection.name,
        app,
    })
}

/// The audit event of a flow whose state `key` was just saved.
fn flow_started(
    service: &StartService,
    key: &StateKey,
    flow: &PendingFlow,
    auth_type: &str,
) -> AuditEvent {
    let actor = Actor::of_flow(flow);
    let now = service.clock.now();
    let cid = &flow.connection_id;
    let mut event = AuditEvent::new(Act::FlowStarted, &[&key.as_hex()], now, cid, actor, "started");
    event.flow_id = Some(ms_oauth::audit::flow_id(&key.as_hex()));
    event.origin = Some(flow.origin.as_str().to_owned());
    event.auth_type = Some(auth_type.to_owned());
    event.tenant_id = flow.admin_consent.clone();
    event
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use ms_oauth::config::SecretSource;
    use ms_oauth::grant::StartGrant;
    use ms_oauth::store::MemoryStore;
    use ms_oauth::testing::{parse_event, proptest_cases, query_pair, set_query};

    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const CID: &str = "con_01h9x3k6rtv2d9yb3pfcw6qz7m";

    fn service(store: Arc<MemoryStore>) -> StartService {
        let vars = [
            (config::WEBHOOK_ADDRESS, "api.example.com"),
            (config::MICROSOFT_CLIENT_ID, "11111111-2222-3333-4444-555555555555"),
            (config::MICROSOFT_TENANT_ID, "organizations"),
            (config::OAUTH_TABLE_NAME, "t"),
        ];
        let config = Config::from_lookup(&|k| {
            vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        })
        .unwrap();
        let endpoints = Endpoints::new(&config);
        StartService::new(
            config,
            endpoints,
            store,
            Arc::new(ms_oauth::clock::SystemClock),
            CachedSecret::new(SecretSource::Value(KEY.to_owned().into()), None),
        )
    }

    fn event(fixture: &str, grant: &str) -> Request {
        lambda_http::request::from_str(&fixture.replace("GRANT", grant)).unwrap()
    }

    fn grant(origin: Origin) -> String {
        let key = GrantKey::new(KEY.to_owned().into()).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let grant =
            StartGrant::new(CID.parse().unwrap(), origin, "ada@example.com", "Ada <mail>").unwrap();
        key.sign(&grant, now).unwrap()
    }

    fn body(response: &Response<Body>) -> String {
        String::from_utf8_lossy(response.body().as_ref()).into_owned()
    }

    /// The confirm form's ticket and the cookie (name=value) set with the page.
    fn confirmation(response: &Response<Body>) -> (String, String) {
        let html = body(response);
        let ticket = html
            .split(r#"name="ticket" value=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("ticket field")
            .to_owned();
        let cookie = response.headers()["set-cookie"].to_str().unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
        (ticket, cookie.split(';').next().unwrap().to_owned())
    }

    fn confirm_post(ticket: &str, cookie: Option<&str>, origin: Option<&str>) -> Request {
        let mut builder = lambda_http::http::Request::builder()
            .method("POST")
            .uri("https://api.example.com/oauth/start/microsoft")
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            builder = builder.header("cookie", cookie);
        }
        if let Some(origin) = origin {
            builder = builder.header("origin", origin);
        }
        builder.body(Body::Text(format!("ticket={ticket}"))).unwrap()
    }

    async fn assert_starts(fixture: &str) {
        let store = Arc::new(MemoryStore::default());
        let service = service(store.clone());
        let shown = handle(&service, event(fixture, &grant(Origin::Vscode))).await;
        assert_eq!(shown.status(), 200, "{}", body(&shown));
        let html = body(&shown);
        for fact in ["Ada &#60;mail&#62;", CID, "ada@example.com", "VS Code extension"] {
            assert!(html.contains(fact), "{fact} not on the page");
        }
        assert_eq!(store.pending(), 0, "nothing starts before the user confirms");
        let (ticket, cookie) = confirmation(&shown);

        let response =
            handle(&service, confirm_post(&ticket, Some(&cookie), Some("https://api.example.com")))
                .await;
        assert_eq!(response.status(), 302, "{}", body(&response));
        let location = response.headers()["location"].to_str().unwrap();
        assert!(
            location.starts_with(
                "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize?"
            )
        );
        assert!(
            location.contains(
                "redirect_uri=https%3A%2F%2Fapi.example.com%2Foauth%2Fredirect%2Fmicrosoft"
            )
        );
        assert!(response.headers()["set-cookie"].to_str().unwrap().contains("HttpOnly"));
        assert_eq!(store.pending(), 1);
        assert_eq!(service.config.state_ttl, Duration::from_secs(600));
    }

    #[tokio::test]
    async fn an_http_api_event_starts_a_flow() {
        assert_starts(include_str!("../tests/data/apigw-v2-start.json")).await;
    }

    #[tokio::test]
    async fn a_rest_api_event_starts_a_flow() {
        assert_starts(include_str!("../tests/data/apigw-v1-start.json")).await;
    }

    #[tokio::test]
    async fn a_grant_for_another_origin_is_refused_and_stores_nothing() {
        let store = Arc::new(MemoryStore::default());
        let service = service(store.clone());
        let fixture = include_str!("../tests/data/apigw-v2-start.json");
        let response = handle(&service, event(fixture, &grant(Origin::Web))).await;
        assert_eq!(response.status(), 403);
        assert!(response.headers().get("set-cookie").is_none());
        assert_eq!(store.pending(), 0);
    }

    #[tokio::test]
    async fn a_link_opens_until_it_is_confirmed_once() {
        let store = Arc::new(MemoryStore::default());
        let service = service(store.clone());
        let fixture = include_str!("../tests/data/apigw-v2-start.json");
        let link = grant(Origin::Vscode);
        // Opening it (a scanner, the person) spends nothing.
        assert_eq!(handle(&service, event(fixture, &link)).await.status(), 200);
        let shown = handle(&service, event(fixture, &link)).await;
        assert_eq!(shown.status(), 200);
        let (ticket, cookie) = confirmation(&shown);
        let confirmed = handle(&service, confirm_post(&ticket, Some(&cookie), None)).await;
        assert_eq!(confirmed.status(), 302);
        // A second confirmation of the same link (another browser's, a replay) is refused.
        let replay = handle(&service, confirm_post(&ticket, Some(&cookie), None)).await;
        assert_eq!(replay.status(), 403);
        assert!(body(&replay).contains("already used"));
        let again = handle(&service, event(fixture, &link)).await;
        assert_eq!(again.status(), 403);
        assert!(body(&again).contains("already used"));
        assert!(again.headers().get("set-cookie").is_none());
    }

    #[tokio::test]
    async fn a_confirmation_without_its_cookie_or_from_another_site_starts_nothing() {
        let store = Arc::new(MemoryStore::default());
        let service = service(store.clone());
        let fixture = include_str!("../tests/data/apigw-v2-start.json");
        let shown = handle(&service, event(fixture, &grant(Origin::Vscode))).await;
        let (ticket, cookie) = confirmation(&shown);
        let other_nonce = format!("{}=other", cookie.split('=').next().unwrap());
        for (request, status, words) in [
            (confirm_post(&ticket, None, None), 403, "without the cookie"),
            (confirm_post(&ticket, Some(&other_nonce), None), 403, "without the cookie"),
            (
                confirm_post(&ticket, Some(&cookie), Some("https://evil.example")),
                403,
                "another site",
            ),
            (confirm_post("forged", Some(&cookie), None), 400, "not valid"),
        ] {
            let response = handle(&service, request).await;
            assert_eq!(response.status(), status, "{}", body(&response));
            assert!(body(&response).contains(words), "{words}: {}", body(&response));
        }
        let mut fetch_site = confirm_post(&ticket, Some(&cookie), None);
        fetch_site.headers_mut().insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert_eq!(handle(&service, fetch_site).await.status(), 403);
        let mut not_a_form = confirm_post(&ticket, Some(&cookie), None);
        not_a_form.headers_mut().insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(handle(&service, not_a_form).await.status(), 400);
        assert_eq!(store.pending(), 0);
        // The same post from the right page in the right browser goes on.
        let ok = handle(&service, confirm_post(&ticket, Some(&cookie), Some("null"))).await;
        assert_eq!(ok.status(), 302);
    }

    fn pair() -> impl Strategy<Value = String> {
        (
            "(cid|origin|grant|x|cid%00|)",
            "\\PC{0,80}|con_[0-9a-z]{26}|web|cli|[A-Za-z0-9._-]{0,300}",
        )
            .prop_map(|(k, v)| query_pair(&k, &v))
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: proptest_cases(500),
            // Many arbitrary queries are not valid URIs and are skipped (see parse_event).
            max_global_rejects: 2 * proptest_cases(500),
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_confirm_post_without_a_real_confirmation_starts_nothing(
            body in "\\PC{0,300}|ticket=[A-Za-z0-9._%-]{0,700}",
            content_type in "application/x-www-form-urlencoded|text/plain|multipart/form-data|",
            cookie in "\\PC{0,80}|__Secure-ms_oauth_confirm_[0-9a-f]{16}=[A-Za-z0-9_-]{0,50}",
            origin in "https://api.example.com|https://evil.example|null|",
            binary in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let store = Arc::new(MemoryStore::default());
            let service = service(store.clone());
            let mut request = lambda_http::http::Request::builder()
                .method("POST")
                .uri("https://api.example.com/oauth/start/microsoft");
            for (name, value) in [("content-type", &content_type), ("cookie", &cookie), ("origin", &origin)] {
                if !value.is_empty() && lambda_http::http::HeaderValue::from_str(value).is_ok() {
                    request = request.header(name, value.as_str());
                }
            }
            let body = if binary { Body::Binary(body.into_bytes()) } else { Body::Text(body) };
            let response = runtime.block_on(handle(&service, request.body(body).unwrap()));
            let status = response.status().as_u16();
            prop_assert!([400, 403].contains(&status), "status {status}");
            prop_assert_eq!(store.pending(), 0);
            prop_assert!(response.headers().get("set-cookie").is_none());
        }

        #[test]
        fn any_query_gets_a_page_and_stores_nothing_unless_it_starts_a_flow(
            pairs in proptest::collection::vec(pair(), 0..6),
            raw in "\\PC{0,200}",
            use_raw in any::<bool>(),
            with_map in any::<bool>(),
        ) {
            let query = if use_raw { raw } else { pairs.join("&") };
            let mut event: serde_json::Value =
                serde_json::from_str(include_str!("../tests/data/apigw-v2-start.json")).unwrap();
            set_query(&mut event, &query, with_map);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let store = Arc::new(MemoryStore::default());
            let service = service(store.clone());
            let request = parse_event(&event);
            prop_assume!(request.is_some());
            let Some(request) = request else { unreachable!() };
            let response = runtime.block_on(handle(&service, request));
            let status = response.status().as_u16();
            prop_assert!([400, 403].contains(&status), "status {status}");
            prop_assert_eq!(store.pending(), 0);
            prop_assert!(response.headers().get("set-cookie").is_none());
        }
    }
}
