//! `GET /oauth/redirect/microsoft?code=…&state=…` (or `?error=…`): consumes the one-time
//! flow state, redeems the code, reads the user's identity and saves the connection.
//!
//! Inside an AutoKitteh deployment (`AUTOKITTEH_API_URL`) the browser must also carry the
//! AutoKitteh session of the user who started the flow (checked while the state is
//! consumed, before the code is redeemed), and the connection's vars are written into
//! AutoKitteh as that user, alongside the save to DynamoDB.

// The handlers' futures (a refresh with its retries, KMS, DynamoDB and the AutoKitteh
// write-back inside the deadline guard) are deeper than the compiler lays out by default.
#![recursion_limit = "256"]

use std::sync::Arc;

use lambda_http::{Body, Request, Response};
use ms_oauth::apps::{
    AK_APP_VARS, AK_CREDENTIAL_VARS, AUTH_TYPE_PRIVATE, App, AppKind, Credential, OpenAppError,
    app_from_vars, open_app,
};
use ms_oauth::audit::{Act, Actor, AuditEvent, AuditTrail, NoAudit};
use ms_oauth::autokitteh::{self, AkError, AkToken, AutoKitteh, Var};
use ms_oauth::clock::Clock;
use ms_oauth::config::{self, Config, ConfigError};
use ms_oauth::crypto::{DataKeys, KeyShares, connection_context, new_share, retire_shares, seal};
use ms_oauth::domain::Tenant;
use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::error::{FlowError, PageContext};
use ms_oauth::events::{ConnectionEvent, EventKind, Events};
use ms_oauth::metrics::{Metric, Metrics, NoMetrics, name as metric};
use ms_oauth::microsoft::{
    ClientAuth, Endpoints, FailureClass, GraphOrganization, GraphUser, IdClaims, Microsoft,
    MicrosoftError, TokenError, Tokens,
};
use ms_oauth::pages::{self, Page};
use ms_oauth::registration::{AppFailure, app_record, daemon_connection, save_daemon_connection};
use ms_oauth::request::{Query, ak_session, clear_cookie, cookie};
use ms_oauth::secrets::CachedSecret;
use ms_oauth::state::FlowSecrets;
use ms_oauth::state::{MAX_STATE_LEN, StateKey, browser_hash, constant_time_eq};
use ms_oauth::store::{
    AUTH_TYPE_DEFAULT, Connection, ConnectionVars, PendingFlow, REFRESH_QUEUE, STATUS_OK, Store,
};
use ms_oauth::tokens::TokenFailure;
use ms_oauth::tokens::{Keep, refresh_due_at};
use ms_oauth::wiring::Wiring;
use oauth2::{AuthorizationCode, PkceCodeVerifier};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use time::format_description::well_known::Rfc3339;

/// Longest authorization code we accept (Microsoft's are around 1–2 KB).
pub const MAX_CODE_LEN: usize = 8 * 1024;

/// Everything the redirect function builds once per instance.
#[derive(Debug)]
pub struct RedirectService {
    pub config: Config,
    pub microsoft: Microsoft,
    pub store: Arc<dyn Store>,
    pub keys: Arc<dyn DataKeys>,
    /// The key shares mixed into the keys of connections' tokens (`KEY_SHARES_TABLE_NAME`).
    pub shares: Arc<dyn KeyShares>,
    pub clock: Arc<dyn Clock>,
    pub client_secret: CachedSecret,
    pub events: Arc<dyn Events>,
    /// The AutoKitteh deployment the vars are written to (AutoKitteh mode).
    pub autokitteh: Option<AutoKitteh>,
    /// Sign-ins completed and failed, and the function's latency.
    pub metrics: Arc<dyn Metrics>,
    /// Flows finished and administrators' consents, on the audit trail.
    pub audit: Arc<dyn AuditTrail>,
    /// With `MICROSOFT_CLIENT_AUTH=aws_federation`: the server-wide app's credential (and
    /// `client_secret` is never read).
    pub federation: Option<Arc<ms_oauth::federation::FederatedAssertions>>,
    page_context: PageContext,
}

impl RedirectService {
    pub fn new(
        config: Config,
        microsoft: Microsoft,
        store: Arc<dyn Store>,
        keys: Arc<dyn DataKeys>,
        shares: Arc<dyn KeyShares>,
        clock: Arc<dyn Clock>,
        client_secret: CachedSecret,
    ) -> Self {
        let page_context = PageContext::new(&config);
        Self {
            config,
            microsoft,
            store,
            keys,
            shares,
            clock,
            client_secret,
            events: Arc::new(ms_oauth::events::NoEvents),
            autokitteh: None,
            metrics: Arc::new(NoMetrics),
            audit: Arc::new(NoAudit),
            federation: None,
            page_context,
        }
    }

    /// The same service authenticating the server-wide app with this function's AWS
    /// identity instead of a client secret.
    pub fn with_federation(
        mut self,
        federation: Option<Arc<ms_oauth::federation::FederatedAssertions>>,
    ) -> Self {
        self.federation = federation;
        self
    }

    /// The same service announcing connections on `events`.
    pub fn with_events(mut self, events: Arc<dyn Events>) -> Self {
        self.events = events;
        self
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

    /// The same service inside an AutoKitteh deployment.
    pub fn with_autokitteh(mut self, autokitteh: AutoKitteh) -> Self {
        self.autokitteh = Some(autokitteh);
        self
    }

    /// Builds the service from `lookup` with AWS clients made from `sdk`.
    pub fn from_sdk(
        lookup: &dyn Fn(&str) -> Option<String>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, ConfigError> {
        Self::wire(&Wiring::new(config::Role::Redirect, lookup, sdk))
    }

    /// Builds the service through `wiring`.
    pub fn wire(wiring: &Wiring<'_>) -> Result<Self, ConfigError> {
        let config = wiring.config()?;
        let (client_secret, federation) = wiring.client_credential()?;
        let http = wiring.http(&config)?;
        let autokitteh = wiring.autokitteh(&config, &http);
        let microsoft = Microsoft::new(Endpoints::new(&config), http);
        let dynamodb = wiring.dynamodb();
        let shares = wiring.key_shares(&dynamodb)?;
        let store = wiring.store(&config, &dynamodb);
        let keys = wiring.data_keys()?;
        let (metrics, audit) = wiring.observability();
        let service =
            Self::new(config, microsoft, store, keys, shares, wiring.clock(), client_secret)
                .with_events(wiring.events())
                .with_metrics(metrics)
                .with_audit(audit)
                .with_federation(federation);
        Ok(match autokitteh {
            Some(ak) => service.with_autokitteh(ak),
            None => service,
        })
    }
}

/// Handles one request; every outcome is a response (errors are pages).
pub async fn handle(service: &RedirectService, req: Request) -> Response<Body> {
    let limit = ms_oauth::runtime::time_left(&req);
    let too_late = || FlowError::TimedOut.into_response(&service.page_context, &[]);
    ms_oauth::runtime::in_time(limit, Box::pin(answer(service, req)), too_late).await
}

async fn answer(service: &RedirectService, req: Request) -> Response<Body> {
    let began = std::time::Instant::now();
    let mut cookies = Vec::new();
    let mut spent = None;
    let (response, outcome) = match finish(service, &req, &mut cookies, &mut spent).await {
        Ok(response) => (response, "completed"),
        Err(e) => {
            let class = e.metric_class();
            if let Some(spent) = &spent {
                let mut event = spent.event(service.clock.now(), "failed");
                event.class = Some(class.to_owned());
                event.aadsts = e.aadsts();
                service.audit.record(event).await;
            }
            service.metrics.record(Metric::count(metric::SIGN_IN_FAILED, &[("Class", class)]));
            ms_oauth::metrics::record_dependency_failure(&*service.metrics, e.failed_dependency());
            (e.into_response(&service.page_context, &cookies), "failed")
        }
    };
    let latency =
        Metric::millis(metric::REDIRECT_LATENCY, began.elapsed(), &[("Outcome", outcome)]);
    service.metrics.record(latency);
    response
}

/// What the audit trail says of a flow whose state was spent (nothing secret of it).
struct Spent {
    key_hex: String,
    connection_id: ConnectionId,
    actor: Actor,
    origin: String,
    auth_type: &'static str,
    admin_consent: Option<String>,
}

impl Spent {
    fn new(key: &StateKey, flow: &PendingFlow) -> Self {
        let actor = Actor::of_flow(flow);
        let auth_type = match (&flow.admin_consent, &flow.app_client_id) {
            (Some(_), Some(_)) => "own_app",
            (None, Some(_)) => AUTH_TYPE_PRIVATE,
            (_, None) => AUTH_TYPE_DEFAULT,
        };
        Self {
            key_hex: key.as_hex(),
            connection_id: flow.connection_id.clone(),
            actor,
            origin: flow.origin.as_str().to_owned(),
            auth_type,
            admin_consent: flow.admin_consent.clone(),
        }
    }

    /// The flow's one finishing event (the same id for success or failure: a flow ends once).
    fn event(&self, now: time::OffsetDateTime, outcome: &str) -> AuditEvent {
        let act = if self.admin_consent.is_some() { Act::AdminConsent } else { Act::FlowFinished };
        let cid = &self.connection_id;
        let mut event =
            AuditEvent::new(act, &[&self.key_hex], now, cid, self.actor.clone(), outcome);
        event.flow_id = Some(ms_oauth::audit::flow_id(&self.key_hex));
        event.origin = Some(self.origin.clone());
        event.auth_type = Some(self.auth_type.to_owned());
        event.tenant_id = self.admin_consent.clone();
        event
    }
}

async fn finish(
    service: &RedirectService,
    req: &Request,
    cookies: &mut Vec<String>,
    spent: &mut Option<Spent>,
) -> Result<Response<Body>, FlowError> {
    if !ms_oauth::runtime::is_navigation(req.method()) {
        return Err(FlowError::Method);
    }
    if ms_oauth::runtime::is_unreadable(req) {
        return Err(FlowError::BadQuery("it contains characters a web address may not hold"));
    }
    let query = Query::from_request(req)?;
    let state = query.single("state", MAX_STATE_LEN)?.filter(|s| !s.is_empty());
    let code = query.single("code", MAX_CODE_LEN)?;
    let error = query.single("error", 256)?;
    let error_description = query.single("error_description", 4096)?;
    let state = state.ok_or(FlowError::BadQuery("the state is missing"))?;

    let key = StateKey::from_state(state);
    let cookie_name = key.cookie_name();
    // Whatever happens next, this flow is over for this browser.
    cookies.push(clear_cookie(&cookie_name));
    // Without the cookie the consume still runs, with a hash no nonce has: the answer then
    // tells a used or unknown state (a reload) from a live one opened in another browser.
    let nonce = cookie(req, &cookie_name)?.unwrap_or_default();

    let now = service.clock.now();
    // The client secret is read alongside the consume (it is cached after the first
    // request), so a cold instance adds no sequential Secrets Manager hop.
    let browser = browser_hash(nonce);
    // Inside AutoKitteh, who this browser is signed in as is asked at the same time.
    let session = match service.autokitteh {
        Some(_) => ak_session(req)?,
        None => None,
    };
    let who = async {
        match (&service.autokitteh, &session) {
            (Some(ak), Some(token)) => Some(ak.who_am_i(token).await),
            _ => None,
        }
    };
    let (flow, secret, who) = tokio::join!(
        service.store.consume_state(&key, &browser, now.unix_timestamp()),
        service.client_secret.get(),
        who,
    );
    let flow = flow?;
    *spent = Some(Spent::new(&key, &flow));

    // The flow is spent: its item (with the PKCE verifier) is deleted while the code is
    // redeemed, so this adds no sequential hop. A failed delete only leaves it to TTL.
    let discard = async {
        if let Err(e) = service.store.discard_state(&key).await {
            tracing::warn!(cid = %flow.connection_id, error = %ms_oauth::error::chain(&e), "spent flow not deleted; TTL will remove it");
        }
    };
    if let Some(asked) = &flow.admin_consent {
        let (answer, ()) = tokio::join!(
            consent_finished(
                service,
                &flow,
                asked,
                &query,
                (error, error_description),
                session.as_ref()
            ),
            discard
        );
        if answer.is_ok()
            && let Some(spent) = spent
        {
            // "granted" only when proven with Microsoft (a daemon app's first token);
            // otherwise the browser's return reported it.
            let proven = answer.as_ref().is_ok_and(|(_, proven)| *proven);
            let mut event = spent.event(now, if proven { "granted" } else { "reported" });
            // The tenant Microsoft reports the consent for.
            if let Ok(Some(reported)) = query.single("tenant", 256) {
                event.tenant_id = Some(reported.to_owned());
            }
            service.audit.record(event).await;
        }
        return answer.map(|(page, _)| page);
    }
    let redeem = async {
        if let Some(error) = error {
            let error = MicrosoftError::from_callback(error, error_description);
            tracing::info!(cid = %flow.connection_id, error = %error, "Microsoft ended the flow with an error");
            return Err(FlowError::Microsoft(Box::new(error)));
        }
        let code =
            code.filter(|c| !c.is_empty()).ok_or(FlowError::BadQuery("the code is missing"))?;
        if service.autokitteh.is_some() {
            same_user(&flow, who)?;
        }
        let (auth, from_vars) = match &flow.app_client_id {
            None => {
                let endpoints = service.microsoft.endpoints();
                let auth = match &service.federation {
                    Some(federation) => ClientAuth::federated(endpoints, federation.clone()),
                    None => ClientAuth::default_app(endpoints, secret?),
                };
                (AppUse::Default(auth), None)
            }
            Some(client_id) => {
                let (auth, from_vars) =
                    own_app(service, &flow, client_id, session.as_ref()).await?;
                let from_table = from_vars.is_none();
                (AppUse::Own(auth, from_table), from_vars)
            }
        };
        Ok((exchange(service, code, &flow, auth).await?, from_vars))
    };
    let (tokens, ()) = tokio::join!(redeem, discard);
    let (tokens, from_vars) = match tokens {
        Ok(tokens) => tokens,
        Err(e) => return Err(offer_admin_consent(service, &flow, e).await),
    };

    let context = connection_context(flow.connection_id.as_str());
    let personal = tokens.claims.is_personal_account();
    // The new tokens get a new key share: the previous sign-in's goes once they are saved.
    let (user, organization, data_key, share) = tokio::join!(
        service.microsoft.me(&tokens.access_token),
        async {
            if personal {
                Ok(None)
            } else {
                service.microsoft.organization(&tokens.access_token).await
            }
        },
        service.keys.generate(&context),
        new_share(service.shares.as_ref(), flow.connection_id.as_str()),
    );
    let user = user?;
    // The organization only adds descriptive vars; a failure to read it must not fail the flow.
    let organization = organization.unwrap_or_else(|e| {
        tracing::warn!(cid = %flow.connection_id, error = %ms_oauth::error::chain(&e), "organization not read");
        None
    });
    let (data_key, share) = (data_key?, share?);

    let secrets = secret_vars(&tokens)?;
    let sealed = seal(&data_key, Some(&share), &context, secrets.expose_secret())?;
    let expiry = ms_oauth::microsoft::expiry_after(now, tokens.expires_in);
    let auth_type =
        if flow.app_client_id.is_some() { AUTH_TYPE_PRIVATE } else { AUTH_TYPE_DEFAULT };
    let connection = Connection {
        connection_id: flow.connection_id.clone(),
        auth_type: auth_type.to_owned(),
        status: STATUS_OK.to_owned(),
        tenant_id: tokens.claims.tid.clone(),
        object_id: tokens.claims.oid.clone(),
        vars: vars(&tokens, &user, organization.as_ref(), expiry),
        secrets: sealed,
        updated_at: rfc3339(now),
        status_reason: None,
        token_expires_at: expiry.unix_timestamp(),
        last_refresh_at: rfc3339(now),
        // Inside AutoKitteh its vars hold the access token: keep it fresh (written back when
        // that is configured); standalone, the token API refreshes on read.
        refresh_due_at: refresh_due_at(
            if flow.ak_user_id.is_some() { Keep::AccessToken } else { Keep::RefreshToken },
            &flow.connection_id,
            expiry.unix_timestamp(),
            now.unix_timestamp(),
            service.config.refresh_margin,
        ),
        autokitteh_user_id: flow.ak_user_id.clone(),
        refresh_failures: 0,
        refresh_queue: Some(REFRESH_QUEUE.to_owned()),
        app_client_id: flow.app_client_id.clone(),
        granted_scopes: tokens.granted_scopes.clone(),
        refresh_failed_at: None,
        refresh_failure: None,
    };
    // AutoKitteh's copy: every var checked against its limits before anything is written.
    let pushed = match (&service.autokitteh, &session) {
        (Some(ak), Some(token)) => {
            let ak_vars = autokitteh_vars(&tokens, &connection)?;
            autokitteh::check_vars(&ak_vars)?;
            Some((ak, token, ak_vars))
        }
        (Some(_), None) => return Err(FlowError::AkSignedOut),
        (None, _) => None,
    };
    // An app AutoKitteh's vars named is kept sealed, so refreshes can use it.
    let kept_app = match &from_vars {
        Some(app) => Some(
            app_record(service.keys.as_ref(), &flow.connection_id, app, now)
                .await
                .map_err(app_failure)?,
        ),
        None => None,
    };
    // The table first, AutoKitteh second (as every writer does, so that a refresh's
    // write-back that lands after this sign-in's sees it; see the token service), the app
    // record beside the table. A failure of either shows a page; the next sign-in overwrites.
    let save_app = async {
        match &kept_app {
            Some(record) => service.store.save_app(record).await.map(Some),
            None => Ok(None),
        }
    };
    let (saved, app_saved) = tokio::join!(service.store.save_connection(&connection), save_app);
    let version = saved?;
    app_saved?;
    if let Some((ak, token, vars)) = &pushed {
        let access = SecretString::from(tokens.access_token.secret().to_owned());
        if let Err(e) = ak.write_vars(token, &flow.connection_id, vars, &access).await {
            // AutoKitteh did not take this sign-in (membership removed meanwhile, say): it
            // must not stay saved as connected, or a later write-back would put it into
            // AutoKitteh with the service user's authority instead.
            withdraw(service, &connection, version).await;
            return Err(FlowError::from(e));
        }
    }
    let authorized = ConnectionEvent {
        kind: EventKind::Authorized,
        connection_id: flow.connection_id.clone(),
        tenant_id: Some(tokens.claims.tid.clone()),
        reason: None,
        connections: None,
        verified: None,
        at: rfc3339(now),
    };
    // After the save, and all at once: the announcement, the audit event, and the end of the
    // replaced tokens' key share (one more DynamoDB call beside the two PutEvents). A first
    // sign-in (version 1) replaced none; what a failed attempt left, the disconnect destroys.
    let announced = service.events.publish(&authorized);
    let retired = async {
        if version > 1 {
            retire_shares(
                service.shares.as_ref(),
                flow.connection_id.as_str(),
                &connection.secrets,
            )
            .await;
        }
    };
    let audited = async {
        if let Some(spent) = spent {
            let mut event = spent.event(now, "completed");
            event.connection_version = Some(version);
            event.tenant_id = Some(tokens.claims.tid.clone());
            event.account = Some(
                connection
                    .vars
                    .user_principal_name
                    .clone()
                    .unwrap_or_else(|| tokens.claims.oid.clone()),
            );
            service.audit.record(event).await;
        }
    };
    tokio::join!(announced, retired, audited);
    service.metrics.record(Metric::count(
        metric::SIGN_IN_COMPLETED,
        &[("Origin", flow.origin.as_str()), ("AuthType", auth_type)],
    ));
    tracing::info!(
        cid = %flow.connection_id,
        origin = %flow.origin,
        tenant = %tokens.claims.tid,
        personal,
        version,
        "connection authorized"
    );
    if service.autokitteh.is_some() {
        return Ok(finish_in_autokitteh(service, &flow.connection_id, flow.origin, cookies));
    }
    let dashboard = service.config.dashboard_url.as_ref();
    Ok(finish_browser(&flow, &account_name(&tokens.claims, &user), dashboard, cookies))
}

/// How long the admin-consent link offered to a user who needs one stays usable: long
/// enough to reach an administrator.
const CONSENT_LINK_TTL_SECS: i64 = 24 * 3600;

/// When Microsoft said an administrator must consent, records a one-time admin-consent
/// state for the app of the flow and adds its link to the page, for the user to pass on.
async fn offer_admin_consent(
    service: &RedirectService,
    flow: &PendingFlow,
    e: FlowError,
) -> FlowError {
    let needs_admin = match &e {
        FlowError::Microsoft(m) | FlowError::OwnApp(_, m) => {
            m.class() == FailureClass::AdminConsent
        }
        FlowError::Token(TokenError::Rejected(m)) => m.class() == FailureClass::AdminConsent,
        _ => false,
    };
    if !needs_admin {
        return e;
    }
    let (client_id, tenant) = match &flow.app_client_id {
        Some(client_id) => match service.store.get_app(&flow.connection_id).await {
            Ok(Some(app)) => {
                (client_id.clone(), app.app.summary.private_tenant_id.parse().unwrap_or_default())
            }
            _ => return e,
        },
        None => (
            service.microsoft.endpoints().client_id().to_owned(),
            service.microsoft.endpoints().tenant().clone(),
        ),
    };
    // The user's own organization is the administrator's when the app names none.
    let tenant: Tenant = if ms_oauth::apps::is_multi_tenant_alias(&tenant) {
        "organizations".parse().unwrap_or_default()
    } else {
        tenant
    };
    let Ok(secrets) = FlowSecrets::generate() else { return e };
    let now = service.clock.now().unix_timestamp();
    let consent = PendingFlow {
        connection_id: flow.connection_id.clone(),
        origin: flow.origin,
        pkce_verifier: SecretString::from(secrets.pkce_verifier.secret().to_owned()),
        browser_hash: browser_hash(""),
        created_at: now,
        expires_at: now + CONSENT_LINK_TTL_SECS,
        ak_user_id: flow.ak_user_id.clone(),
        platform_user: flow.platform_user.clone(),
        connection_name: flow.connection_name.clone(),
        app_client_id: flow.app_client_id.clone(),
        admin_consent: Some(tenant.to_string()),
    };
    let key = StateKey::from_state(secrets.state.secret());
    if let Err(put) = service.store.put_state(&key, &consent).await {
        tracing::warn!(cid = %flow.connection_id, error = %ms_oauth::error::chain(&put), "admin-consent link not recorded");
        return e;
    }
    let link = service.microsoft.endpoints().admin_consent_url(
        &client_id,
        &tenant,
        secrets.state.secret(),
    );
    tracing::info!(cid = %flow.connection_id, tenant = %tenant, app = %client_id, "admin consent needed; link offered");
    FlowError::NeedsAdminConsent { cause: Box::new(e), link: link.to_string() }
}

/// An administrator came back from Microsoft's admin consent. For a daemon app the consent
/// is proven with a token from the app's own tenant (the `tenant` Microsoft reports is only
/// shown), and the connection is then ready. Otherwise nothing proves it: the answer's
/// `bool` says whether it was proven, and the page, event and audit say which.
async fn consent_finished(
    service: &RedirectService,
    flow: &PendingFlow,
    asked: &str,
    query: &Query<'_>,
    (error, description): (Option<&str>, Option<&str>),
    session: Option<&AkToken>,
) -> Result<(Response<Body>, bool), FlowError> {
    let cid = &flow.connection_id;
    if let Some(error) = error {
        let e = Box::new(MicrosoftError::from_callback(error, description));
        tracing::info!(cid = %cid, error = %e, "admin consent not granted");
        return Err(match &flow.app_client_id {
            Some(client_id) => FlowError::OwnApp(client_id.clone(), e),
            None => FlowError::Microsoft(e),
        });
    }
    let granted = query.single("admin_consent", 16)?.unwrap_or_default();
    if !granted.eq_ignore_ascii_case("true") {
        return Err(FlowError::BadQuery(
            "Microsoft's answer does not say that consent was granted",
        ));
    }
    let reported = query.single("tenant", 256)?.unwrap_or(asked);
    let reported: Tenant = reported
        .parse()
        .map_err(|_| FlowError::BadQuery("the tenant Microsoft reports is not a tenant id"))?;
    let now = service.clock.now();
    let mut ready = false;
    let daemon = match &flow.app_client_id {
        Some(client_id) => consented_daemon(service, flow, client_id, session).await?,
        None => None,
    };
    if let Some((auth, from_vars)) = daemon {
        let connection = match daemon_connection(
            &service.microsoft,
            service.keys.as_ref(),
            service.shares.as_ref(),
            cid,
            &auth,
            now,
        )
        .await
        {
            Ok(connection) => connection,
            Err(AppFailure::Refused(e)) if e.class() == FailureClass::AdminConsent => {
                return Err(FlowError::ConsentPending(e));
            }
            Err(AppFailure::Refused(e)) => return Err(FlowError::OwnApp(auth.client_id, e)),
            Err(e) => return Err(app_failure(e)),
        };
        // A daemon app AutoKitteh's vars named is kept sealed, so the token API can renew.
        if let Some(app) = from_vars {
            let record =
                app_record(service.keys.as_ref(), cid, &app, now).await.map_err(app_failure)?;
            service.store.save_app(&record).await?;
        }
        save_daemon_connection(
            service.store.as_ref(),
            service.shares.as_ref(),
            service.events.as_ref(),
            &connection,
        )
        .await?;
        ready = true;
    }
    service
        .events
        .publish(&ConnectionEvent {
            kind: EventKind::AdminConsentGranted,
            connection_id: cid.clone(),
            tenant_id: Some(reported.to_string()),
            reason: None,
            connections: None,
            // Only a daemon app's first token proves the consent; otherwise the tenant is the
            // one the browser's return names.
            verified: Some(ready),
            at: rfc3339(now),
        })
        .await;
    tracing::info!(cid = %cid, tenant = %reported, asked, verified = ready, "admin consent granted");
    let page = Page::consent_granted(reported.as_str(), ready)
        .with_fact("Connection id", cid.to_string())
        .with_fact("Organization (tenant)", reported.to_string())
        .into_response(&[]);
    Ok((page, ready))
}

/// The daemon app an administrator consented to, when the connection's app is one: from
/// AutoKitteh's vars (read as the signed-in user, and returned to be kept) or from the app
/// set through the API. `None` for a private app, or when neither names the app the consent
/// was for (the consent is then shown, not proven).
async fn consented_daemon(
    service: &RedirectService,
    flow: &PendingFlow,
    client_id: &str,
    session: Option<&AkToken>,
) -> Result<Option<(ClientAuth, Option<App>)>, FlowError> {
    if let (Some(ak), Some(session)) = (&service.autokitteh, session) {
        let names: Vec<&str> = AK_APP_VARS.iter().chain(&AK_CREDENTIAL_VARS).copied().collect();
        let vars = ak.get_vars(session, &flow.connection_id, &names).await?;
        if let Some(app) = app_from_vars(&vars)?.filter(|a| a.client_id == client_id) {
            if app.kind != AppKind::Daemon {
                return Ok(None);
            }
            let auth = ClientAuth {
                client_id: app.client_id.clone(),
                tenant: app.tenant.clone(),
                credential: app.credential.clone(),
            };
            return Ok(Some((auth, Some(app))));
        }
    }
    let opened = stored_app(service, &flow.connection_id).await?;
    Ok(opened
        .filter(|app| app.kind == AppKind::Daemon && app.auth.client_id == client_id)
        .map(|app| (app.auth, None)))
}

fn app_failure(e: AppFailure) -> FlowError {
    match e {
        AppFailure::Invalid(e) => FlowError::AppCredential(e),
        AppFailure::Refused(e) => FlowError::Microsoft(e),
        AppFailure::Unavailable(e) => token_failure(e),
    }
}

/// The connection's own app as the table keeps it, its credential opened.
async fn stored_app(
    service: &RedirectService,
    cid: &ConnectionId,
) -> Result<Option<ms_oauth::apps::OpenedApp>, FlowError> {
    let store = service.store.as_ref();
    let opened = open_app(store, service.keys.as_ref(), cid, service.federation.as_ref()).await;
    opened.map_err(open_failure)
}

fn open_failure(e: OpenAppError) -> FlowError {
    match e {
        OpenAppError::Store(e) => FlowError::Store(e),
        OpenAppError::Crypto(e) => FlowError::Crypto(e),
        OpenAppError::Corrupt => FlowError::Internal("the stored app is unreadable"),
        OpenAppError::NoFederation => {
            FlowError::AppCredential(ms_oauth::apps::AppError::NoFederation)
        }
    }
}

fn token_failure(e: TokenFailure) -> FlowError {
    match e {
        TokenFailure::Token(e) => FlowError::Token(e),
        TokenFailure::Store(e) => FlowError::Store(e),
        TokenFailure::Crypto(e) => FlowError::Crypto(e),
        TokenFailure::Secret(e) => FlowError::Secret(e),
        _ => FlowError::Internal("the daemon app's token could not be saved"),
    }
}

/// Refuses a flow finished by anyone but the AutoKitteh user who started it.
fn same_user(
    flow: &PendingFlow,
    who: Option<Result<autokitteh::AkUser, AkError>>,
) -> Result<(), FlowError> {
    let expected = flow.ak_user_id.as_deref().ok_or(FlowError::AkNotStartedHere)?;
    let user = who.ok_or(FlowError::AkSignedOut)??;
    if !constant_time_eq(&user.user_id, expected) {
        tracing::warn!(
            cid = %flow.connection_id,
            started_by = expected,
            finished_by = %user.user_id,
            "sign-in finished by another AutoKitteh user; refused"
        );
        return Err(FlowError::AkOtherUser);
    }
    Ok(())
}

/// AutoKitteh's var set for a Microsoft connection made with the default app, the way its
/// Takes back a sign-in's save (while it is still the latest) and destroys the key share
/// its tokens were sealed with.
async fn withdraw(service: &RedirectService, connection: &Connection, version: u64) {
    let cid = &connection.connection_id;
    match service.store.withdraw_connection(cid, version).await {
        Ok(true) => {
            if let Some(share) = connection.secrets.share_id.as_deref()
                && let Err(e) = service.shares.destroy(cid.as_str(), share).await
            {
                tracing::warn!(cid = %cid, error = %ms_oauth::error::chain(&e), "withdrawn sign-in's key share not destroyed; the next sign-in or disconnect does it");
            }
            tracing::warn!(cid = %cid, version, "sign-in withdrawn: AutoKitteh did not take its vars");
        }
        Ok(false) => {
            tracing::info!(cid = %cid, version, "sign-in not withdrawn: a newer one replaced it");
        }
        Err(e) => {
            tracing::error!(cid = %cid, version, error = %ms_oauth::error::chain(&e), "sign-in AutoKitteh refused could not be withdrawn");
        }
    }
}

/// own handler writes it: every user and org var, empty when Microsoft has no value.
fn autokitteh_vars(tokens: &Tokens, connection: &Connection) -> Result<Vec<Var>, FlowError> {
    let v = &connection.vars;
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    // Whole seconds and `Z`, as AutoKitteh's Go side formats it.
    let expiry = time::OffsetDateTime::from_unix_timestamp(connection.token_expires_at)
        .map_err(|_| FlowError::Internal("token expiry out of range"))?;
    Ok(vec![
        Var::plain("auth_type", connection.auth_type.as_str()),
        Var::secret("oauth_access_token", tokens.access_token.secret().as_str()),
        Var::secret(
            "oauth_refresh_token",
            tokens.refresh_token.as_ref().map(|t| t.secret().to_owned()).unwrap_or_default(),
        ),
        Var::plain("oauth_token_type", v.oauth_token_type.as_str()),
        Var::plain("oauth_expiry", rfc3339(expiry)),
        Var::plain("user_principal_name", text(&v.user_principal_name)),
        Var::plain("user_id", text(&v.user_id)),
        Var::plain("user_display_name", text(&v.user_display_name)),
        Var::plain("user_surname", text(&v.user_surname)),
        Var::plain("user_given_name", text(&v.user_given_name)),
        Var::plain("user_language", text(&v.user_language)),
        Var::plain("user_mail", text(&v.user_mail)),
        Var::plain("user_mobile_phone", text(&v.user_mobile_phone)),
        Var::plain("org_id", text(&v.org_id)),
        Var::plain("org_display_name", text(&v.org_display_name)),
        Var::plain("org_tenant_type", text(&v.org_tenant_type)),
    ])
}

/// Sends the browser to AutoKitteh's own finish for the origin, on the public address (the
/// AutoKitteh API host the front door serves).
fn finish_in_autokitteh(
    service: &RedirectService,
    cid: &ConnectionId,
    origin: Origin,
    cookies: &[String],
) -> Response<Body> {
    let public = service.config.public_address.origin();
    let location = match origin {
        Origin::Web | Origin::Cli => format!("{public}/connections/{cid}/success"),
        Origin::Vscode => format!("vscode://autokitteh.autokitteh?cid={cid}"),
        // The dashboard is AutoKitteh's own, on its host (the API host unless configured).
        Origin::Dash => dashboard_finish(service.config.dashboard_url.as_ref(), cid)
            .unwrap_or_else(|| {
                format!("{public}/internal/dashboard/connections/{cid}?msg=Success")
            }),
    };
    pages::redirect(&location, cookies)
}

/// Which app redeems the code.
enum AppUse {
    /// The server-wide app: its secret is read again once when refused (rotation).
    Default(ClientAuth),
    /// The connection's own app; `true` when it came from the table (which keeps the
    /// credential a new one replaced, tried once when Microsoft refuses the new one).
    Own(ClientAuth, bool),
}

/// Opens the connection's own app the flow was started with; refuses one replaced since.
/// Inside AutoKitteh its vars name it, read as the signed-in user (the app is then also
/// returned, to be kept sealed for refreshes); otherwise the app set through the API.
async fn own_app(
    service: &RedirectService,
    flow: &PendingFlow,
    client_id: &str,
    session: Option<&AkToken>,
) -> Result<(ClientAuth, Option<App>), FlowError> {
    if let (Some(ak), Some(session)) = (&service.autokitteh, session) {
        let names: Vec<&str> = AK_APP_VARS.iter().chain(&AK_CREDENTIAL_VARS).copied().collect();
        let vars = ak.get_vars(session, &flow.connection_id, &names).await?;
        if let Some(app) = app_from_vars(&vars)? {
            if app.kind != AppKind::Private || app.client_id != client_id {
                return Err(FlowError::AppChanged);
            }
            let auth = ClientAuth {
                client_id: app.client_id.clone(),
                tenant: app.tenant.clone(),
                credential: app.credential.clone(),
            };
            return Ok((auth, Some(app)));
        }
    }
    let opened = stored_app(service, &flow.connection_id).await?;
    match opened {
        Some(app) if app.kind == AppKind::Private && app.auth.client_id == client_id => {
            Ok((app.auth, None))
        }
        _ => Err(FlowError::AppChanged),
    }
}

/// Redeems the code. A refused client secret of the server-wide app is read again once, so
/// a rotation reaches warm instances at once; the code is still unused then, as Microsoft
/// checks the client before the grant.
async fn exchange(
    service: &RedirectService,
    code: &str,
    flow: &PendingFlow,
    app: AppUse,
) -> Result<Tokens, FlowError> {
    let verifier = || PkceCodeVerifier::new(flow.pkce_verifier.expose_secret().to_owned());
    let code = AuthorizationCode::new(code.to_owned());
    let mut auth = match app {
        AppUse::Own(mut auth, from_table) => {
            let mut answer = service.microsoft.exchange_code(code.clone(), verifier(), &auth).await;
            if from_table && matches!(&answer, Err(e) if e.is_invalid_client()) {
                let previous = ms_oauth::apps::previous_credential(
                    service.store.as_ref(),
                    service.keys.as_ref(),
                    &flow.connection_id,
                    service.federation.as_ref(),
                    service.clock.now(),
                )
                .await
                .map_err(open_failure)?;
                if let Some(previous) = previous {
                    tracing::warn!(cid = %flow.connection_id, "the app's credential was refused; retrying with the one it replaced");
                    auth.credential = previous;
                    answer = service.microsoft.exchange_code(code, verifier(), &auth).await;
                    let worked = !matches!(&answer, Err(e) if e.is_invalid_client());
                    let version = ms_oauth::secrets::SecretVersion::Previous;
                    ms_oauth::metrics::record_secret_retry(
                        service.metrics.as_ref(),
                        version,
                        worked,
                    );
                }
            }
            return match answer {
                Err(TokenError::Rejected(e)) => Err(FlowError::OwnApp(auth.client_id, e)),
                other => Ok(other?),
            };
        }
        AppUse::Default(auth) => auth,
    };
    match service.microsoft.exchange_code(code.clone(), verifier(), &auth).await {
        Err(e) if e.is_invalid_client() => {
            let Credential::Secret(stale) = &auth.credential else { return Err(e.into()) };
            match service.client_secret.alternative(stale).await? {
                Some((other, version)) => {
                    tracing::warn!(cid = %flow.connection_id, version = version.as_str(), "client secret refused; retrying with the other version");
                    auth.credential = Credential::Secret(other);
                    let retried = service.microsoft.exchange_code(code, verifier(), &auth).await;
                    let worked = !matches!(&retried, Err(e) if e.is_invalid_client());
                    ms_oauth::metrics::record_secret_retry(
                        service.metrics.as_ref(),
                        version,
                        worked,
                    );
                    Ok(retried?)
                }
                None => Err(e.into()),
            }
        }
        other => Ok(other?),
    }
}

#[derive(serde::Serialize)]
struct SecretVars<'a> {
    oauth_access_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    oauth_refresh_token: Option<&'a str>,
}

fn secret_vars(tokens: &Tokens) -> Result<SecretSlice<u8>, FlowError> {
    let vars = SecretVars {
        oauth_access_token: tokens.access_token.secret(),
        oauth_refresh_token: tokens.refresh_token.as_ref().map(|t| t.secret().as_str()),
    };
    serde_json::to_vec(&vars)
        .map(SecretSlice::from)
        .map_err(|_| FlowError::Internal("cannot encode tokens"))
}

fn vars(
    tokens: &Tokens,
    user: &GraphUser,
    organization: Option<&GraphOrganization>,
    expiry: time::OffsetDateTime,
) -> ConnectionVars {
    ConnectionVars {
        oauth_token_type: tokens.token_type.clone(),
        oauth_expiry: rfc3339(expiry),
        user_principal_name: user.user_principal_name.clone(),
        user_id: user.id.clone().or_else(|| Some(tokens.claims.oid.clone())),
        user_display_name: user.display_name.clone(),
        user_given_name: user.given_name.clone(),
        user_surname: user.surname.clone(),
        user_mail: user.mail.clone(),
        user_language: user.preferred_language.clone(),
        user_mobile_phone: user.mobile_phone.clone(),
        org_id: organization.and_then(|o| o.id.clone()),
        org_display_name: organization.and_then(|o| o.display_name.clone()),
        org_tenant_type: organization.and_then(|o| o.tenant_type.clone()),
    }
}

fn account_name(claims: &IdClaims, user: &GraphUser) -> String {
    [
        &claims.preferred_username,
        &user.user_principal_name,
        &user.mail,
        &user.display_name,
        &claims.name,
    ]
    .into_iter()
    .find_map(|v| v.clone().filter(|v| !v.is_empty()))
    .unwrap_or_else(|| "your Microsoft account".to_owned())
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Sends the browser where AutoKitteh expects it for each origin. None of these URLs carries
/// a token.
fn finish_browser(
    flow: &PendingFlow,
    account: &str,
    dashboard: Option<&oauth2::url::Url>,
    cookies: &[String],
) -> Response<Body> {
    let cid = &flow.connection_id;
    let dashboard = match flow.origin {
        Origin::Dash => dashboard_finish(dashboard, cid),
        _ => None,
    };
    match (flow.origin, dashboard) {
        (Origin::Dash, Some(location)) => pages::redirect(&location, cookies),
        // Standalone without a configured dashboard there is nowhere to send the browser
        // back to: it gets the success page, as the web UI's popup does.
        (Origin::Web | Origin::Cli | Origin::Dash, _) => {
            // What the confirmation page showed, repeated with the account that was chosen.
            let mut page = Page::connected(account);
            if let Some(name) = &flow.connection_name {
                page = page.with_fact("Connection", name.as_str());
            }
            page = page.with_fact("Connection id", cid.to_string());
            if let Some(user) = &flow.platform_user {
                page = page.with_fact("AutoKitteh user", user.as_str());
            }
            page.with_fact("Microsoft account", account).into_response(cookies)
        }
        (Origin::Vscode, _) => {
            pages::redirect(&format!("vscode://autokitteh.autokitteh?cid={cid}"), cookies)
        }
    }
}

/// AutoKitteh's dashboard page for the connection, on the configured dashboard host.
fn dashboard_finish(dashboard: Option<&oauth2::url::Url>, cid: &ConnectionId) -> Option<String> {
    let base = dashboard?.as_str().trim_end_matches('/');
    Some(format!("{base}/internal/dashboard/connections/{cid}?msg=Success"))
}

#[cfg(test)]
mod tests {
    use ms_oauth::config::SecretSource;
    use ms_oauth::crypto::{FakeDataKeys, MemoryKeyShares};
    use ms_oauth::store::MemoryStore;
    use ms_oauth::testing::{parse_event, proptest_cases, query_pair, set_query};
    use proptest::prelude::*;

    use super::*;

    const STATE: &str = "live-state-0123456789abcdefghijklmnopqrstuv";

    /// A service whose store holds one live flow (state `STATE`) and whose Microsoft client
    /// points at a closed port: nothing in these tests may get as far as calling it.
    fn service(store: Arc<MemoryStore>) -> RedirectService {
        let vars = [
            (config::WEBHOOK_ADDRESS, "api.example.com"),
            (config::MICROSOFT_CLIENT_ID, "11111111-2222-3333-4444-555555555555"),
            (config::MICROSOFT_AUTHORITY_HOST, "http://127.0.0.1:9"),
            (config::MICROSOFT_GRAPH_URL, "http://127.0.0.1:9"),
            (config::OAUTH_TABLE_NAME, "t"),
        ];
        let config = Config::from_lookup(&|k| {
            vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        })
        .unwrap();
        let http = ms_oauth::http::build_client(config.http_timeout).unwrap();
        let microsoft = Microsoft::new(Endpoints::new(&config), http);
        RedirectService::new(
            config,
            microsoft,
            store,
            Arc::new(FakeDataKeys),
            Arc::new(MemoryKeyShares::default()),
            Arc::new(ms_oauth::clock::SystemClock),
            CachedSecret::new(SecretSource::Value("s".to_owned().into()), None),
        )
    }

    fn live_flow() -> PendingFlow {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        PendingFlow {
            connection_id: "con_01h9x3k6rtv2d9yb3pfcw6qz7m".parse().unwrap(),
            origin: Origin::Web,
            pkce_verifier: SecretString::from("v".repeat(43)),
            browser_hash: browser_hash("the-real-browser"),
            created_at: now,
            expires_at: now + 600,
            ak_user_id: None,
            platform_user: None,
            connection_name: None,
            app_client_id: None,
            admin_consent: None,
        }
    }

    fn pair() -> impl Strategy<Value = String> {
        (
            "(state|code|error|error_description|session_state|x|)",
            "\\PC{0,80}|live-state-0123456789abcdefghijklmnopqrstuv|access_denied|[A-Za-z0-9._-]{0,300}",
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

        /// Any query and any cookies from a browser other than the one that started the live
        /// flow get a page and leave that flow untouched.
        #[test]
        fn any_query_and_cookie_get_a_page_and_leave_the_live_flow_alone(
            pairs in proptest::collection::vec(pair(), 0..6),
            raw in "\\PC{0,200}",
            use_raw in any::<bool>(),
            cookie in "\\PC{0,120}|__Secure-ms_oauth_[0-9a-f]{16}=[A-Za-z0-9_-]{0,60}",
            method in "(GET|HEAD|POST)",
            with_map in any::<bool>(),
        ) {
            let query = if use_raw { raw } else { pairs.join("&") };
            let mut event: serde_json::Value = serde_json::from_str(include_str!(
                "../../oauth-start/tests/data/apigw-v2-start.json"
            ))
            .unwrap();
            event["rawPath"] = serde_json::json!(config::REDIRECT_PATH);
            event["requestContext"]["http"]["path"] = serde_json::json!(config::REDIRECT_PATH);
            event["requestContext"]["http"]["method"] = serde_json::json!(method);
            set_query(&mut event, &query, with_map);
            event["cookies"] = serde_json::json!([cookie]);
            let request = parse_event(&event);
            prop_assume!(request.is_some());
            let Some(request) = request else { unreachable!() };

            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let store = Arc::new(MemoryStore::default());
            let key = StateKey::from_state(STATE);
            runtime.block_on(store.put_state(&key, &live_flow())).unwrap();
            let service = service(store.clone());
            let response = runtime.block_on(handle(&service, request));
            let status = response.status().as_u16();
            prop_assert!([400, 405].contains(&status), "status {status}");
            prop_assert_eq!(store.pending(), 1, "the live flow was consumed");
            let body = match response.body() {
                Body::Text(t) => t.clone(),
                _ => String::new(),
            };
            prop_assert!(body.contains("<h1>"), "no page");
        }
    }
}
